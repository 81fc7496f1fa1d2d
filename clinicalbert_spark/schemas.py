"""Every output table's schema, key and lineage, in one place (documented in docs/tables.md).

A table holds exactly one row per ``key``. ``fingerprint`` (a hash of the settings that made
the row) and the lineage columns say whether a row is still current; see
:mod:`clinicalbert_spark.state`. ``SCHEMA_VERSION`` changes whenever a column is added,
renamed or retyped; ``runs.schema_version`` records what each run wrote.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import types as T

SCHEMA_VERSION = "2.2"
PARTITION_COLUMN = "run_id"

S, I, L, D = T.StringType(), T.IntegerType(), T.LongType(), T.DoubleType()


def _f(name, typ, nullable=True):
    return T.StructField(name, typ, nullable)


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: T.StructType  # the columns a stage produces (without run_id)
    key: tuple[str, ...]

    @property
    def stored_schema(self) -> T.StructType:
        """As stored: every column nullable (old versions lack new ones), plus run_id."""
        return T.StructType([_f(f.name, f.dataType) for f in self.schema.fields]
                            + [_f(PARTITION_COLUMN, S)])


SENTENCES = T.StructType([
    _f("note_id", S, False), _f("subject_id", S), _f("hadm_id", S), _f("category", S),
    _f("section_index", I, False), _f("section_title", S), _f("section_category", S, False),
    # Inside a container section (physical exam, review of systems, A&P...): the sub-section
    # (e.g. heent); null elsewhere. Added in 2.1.
    _f("subsection_index", I), _f("subsection_title", S), _f("subsection_category", S),
    _f("sentence_index", I, False), _f("start", I, False), _f("end", I, False),
    _f("text", S), _f("segmenter", S, False), _f("segmenter_version", S, False),
    _f("note_hash", S, False), _f("fingerprint", S),
])

# A vector, stored as encode.vector_storage says (clinicalbert_spark.vectors): float32 in
# `embedding` (null otherwise), float16 big-endian in `embedding_f16`, or int8 values times a
# per-vector scale. The last four were added in 2.2 (null in older rows: float32).
VECTOR_FIELDS = (
    _f("embedding", T.ArrayType(T.FloatType(), False)), _f("vector_format", S),
    _f("embedding_f16", T.BinaryType()), _f("embedding_i8", T.ArrayType(T.ByteType(), False)),
    _f("embedding_scale", T.FloatType()),
)

EMBEDDINGS = T.StructType([
    _f("note_id", S, False), _f("sentence_index", I, False), _f("start", I, False),
    _f("end", I, False), _f("section_category", S), _f("model", S, False),
    _f("model_revision", S), _f("pooling", S, False), _f("dim", I, False),
    _f("n_tokens", I, False), _f("n_windows", I, False), _f("truncated", T.BooleanType(), False),
    *VECTOR_FIELDS, _f("note_hash", S), _f("fingerprint", S),
])

_CANDIDATE = T.StructType([_f("token", S), _f("score", T.FloatType())])
_SPAN = T.StructType([
    _f("start", I), _f("end", I), _f("label", S), _f("score", T.FloatType()),
    # fill-mask: top-k candidate tokens for this [MASK]
    _f("candidates", T.ArrayType(_CANDIDATE)),
])
PREDICTIONS = T.StructType([
    _f("note_id", S), _f("sentence_index", I), _f("start", I), _f("end", I),
    _f("section_category", S), _f("model", S), _f("model_revision", S), _f("task", S),
    _f("label", S), _f("score", T.FloatType()),
    # Per-class probabilities (sequence classification): {"label": p, ...}
    _f("probabilities", T.MapType(S, T.FloatType())),
    # Token classification: entity spans as offsets into the NOTE; fill-mask: [MASK] spans.
    _f("spans", T.ArrayType(_SPAN)),
    _f("status", S), _f("note_hash", S), _f("fingerprint", S),
])

NOTE_EMBEDDINGS = T.StructType([
    _f("note_id", S), _f("section_category", S), _f("model", S), _f("model_revision", S),
    _f("pooling", S), _f("n_sentences", I), _f("dim", I),
    *VECTOR_FIELDS, _f("note_hash", S), _f("fingerprint", S),
])

REJECTS = T.StructType([
    _f("note_id", S), _f("reason", S), _f("source_row", L), _f("detail", S),
])

RUNS = T.StructType([
    _f("run_id", S, False), _f("run_id_given", S), _f("started_at", T.TimestampType()),
    _f("ended_at", T.TimestampType()), _f("status", S), _f("config_hash", S),
    _f("schema_version", S), _f("stages", S), _f("delivery", S), _f("full_refresh", T.BooleanType()),
    _f("model", S), _f("model_revision", S), _f("fingerprints", S),
    _f("input_records", L), _f("notes", L), _f("notes_segmented", L), _f("notes_unchanged", L),
    _f("notes_changed", L), _f("notes_deleted", L), _f("rejects", L), _f("rejects_new", L),
    _f("sentences", L), _f("sentences_removed", L), _f("sentences_embedded", L),
    _f("embeddings_removed", L), _f("tokens", L), _f("padded_tokens", L), _f("windows", L),
    _f("truncated", L), _f("predictions", L), _f("note_vectors", L), _f("oom_retries", L),
    _f("padding_efficiency", D), _f("sentences_per_s", D), _f("tokens_per_s", D),
    _f("seconds_total", D), _f("seconds_by_stage", S),
])

SPECS = {
    "sentences": TableSpec("sentences", SENTENCES, ("note_id", "sentence_index")),
    "embeddings": TableSpec("embeddings", EMBEDDINGS, ("note_id", "sentence_index")),
    "predictions": TableSpec("predictions", PREDICTIONS, ("note_id", "sentence_index")),
    "note_embeddings": TableSpec("note_embeddings", NOTE_EMBEDDINGS,
                                 ("note_id", "section_category")),
    # source_row is unique within one run's input; rows of one run share its partition.
    "rejects": TableSpec("rejects", REJECTS, ("run_id", "source_row")),
    "runs": TableSpec("runs", T.StructType([f for f in RUNS.fields if f.name != "run_id"]),
                      ("run_id", "stages")),
}
TABLES = tuple(SPECS)
