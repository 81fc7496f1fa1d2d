"""Note-level vectors from sentence vectors (``applyInPandas`` per note).

Sentence vectors are decoded from whatever format they are stored in (``vector_format``:
float32, float16, int8; :mod:`clinicalbert_spark.vectors`), averaged in float64, and the
note vectors are stored in the sentence vectors' format: ``encode.vector_storage`` applies to
both tables, and a format change (part of the embeddings fingerprint, hence of the
note_embeddings one) recomputes both.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .. import schemas
from ..vectors import VECTOR_COLUMNS

#: Bumped when the aggregation changes; part of the note_embeddings fingerprint.
AGGREGATE_VERSION = "1"

_KEYS = ["note_id", "note_hash", "model", "model_revision", "pooling", "dim"]
_OUT = schemas.T.StructType([f for f in schemas.NOTE_EMBEDDINGS.fields
                             if f.name != "fingerprint"])
_HOLDERS = ("embedding", "embedding_f16", "embedding_i8")  # a row has a vector in one of them


def _mean(pdf):
    import numpy as np
    import pandas as pd

    from ..vectors import decode_vectors, encode_vectors, stored_format

    first = pdf.iloc[0]
    mat = np.stack(decode_vectors(pdf)).astype(np.float64)
    rows = [(None, mat.mean(axis=0), len(pdf))]  # the whole note
    for cat, idx in pdf.groupby(pdf["section_category"].fillna("other")).indices.items():
        rows.append((cat, mat[idx].mean(axis=0), len(idx)))
    fmt = stored_format(pdf["vector_format"].tolist())
    vectors = encode_vectors(np.stack([r[1] for r in rows]).astype(np.float32), fmt)
    return pd.DataFrame({
        "note_id": first.note_id, "section_category": [r[0] for r in rows],
        "model": first.model, "model_revision": first.model_revision,
        "pooling": first.pooling, "n_sentences": [r[2] for r in rows],
        "dim": int(first.dim), **vectors, "note_hash": first.note_hash,
    }, columns=_OUT.fieldNames())


def note_vectors(emb: DataFrame) -> DataFrame:
    """Mean of the sentence vectors per note (``section_category`` null) and per
    (note, section category). Rows without a vector (no usable text) are left out. ``emb``
    needs ``embedding``; the other vector columns (schema 2.2) are null when absent."""
    vec = [F.col(c) if c in emb.columns else F.lit(None).cast(schemas.EMBEDDINGS[c].dataType)
           .alias(c) for c in VECTOR_COLUMNS]
    has_vector = F.col(_HOLDERS[0]).isNotNull()
    for c in _HOLDERS[1:]:
        has_vector = has_vector | F.col(c).isNotNull()
    e = emb.select(*_KEYS, "section_category", *vec).where(has_vector)
    return e.groupBy(*_KEYS).applyInPandas(_mean, _OUT)
