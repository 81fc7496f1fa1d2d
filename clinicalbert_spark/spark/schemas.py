"""Output table schemas. SCHEMA_VERSION changes whenever a column is added, renamed or retyped."""
from __future__ import annotations

from pyspark.sql import types as T

SCHEMA_VERSION = "1.0"

S, I, L = T.StringType(), T.IntegerType(), T.LongType()


def _f(name, typ, nullable=True):
    return T.StructField(name, typ, nullable)


SENTENCES = T.StructType([
    _f("note_id", S, False), _f("subject_id", S), _f("hadm_id", S), _f("category", S),
    _f("section_index", I, False), _f("section_title", S), _f("section_category", S, False),
    _f("sentence_index", I, False), _f("start", I, False), _f("end", I, False),
    _f("text", S), _f("segmenter", S, False), _f("segmenter_version", S, False),
    _f("note_hash", S, False),
])

# What the segmentation UDF emits: sentences plus an error column for notes that failed.
SEGMENT_UDF_OUTPUT = T.StructType(
    [T.StructField(f.name, f.dataType, True) for f in SENTENCES.fields]
    + [_f("error", S), _f("source_row", L)]
)

EMBEDDINGS = T.StructType([
    _f("note_id", S, False), _f("sentence_index", I, False), _f("start", I, False),
    _f("end", I, False), _f("section_category", S), _f("model", S, False),
    _f("model_revision", S), _f("pooling", S, False), _f("dim", I, False),
    _f("n_tokens", I, False), _f("n_windows", I, False), _f("truncated", T.BooleanType(), False),
    _f("embedding", T.ArrayType(T.FloatType(), False)), _f("note_hash", S),
])
