"""Note-level vectors from sentence vectors (``applyInPandas`` per note)."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .. import schemas

#: Bumped when the aggregation changes; part of the note_embeddings fingerprint.
AGGREGATE_VERSION = "1"

_KEYS = ["note_id", "note_hash", "model", "model_revision", "pooling", "dim"]
_OUT = schemas.T.StructType([f for f in schemas.NOTE_EMBEDDINGS.fields
                             if f.name != "fingerprint"])


def _mean(pdf):
    import numpy as np
    import pandas as pd

    first = pdf.iloc[0]
    mat = np.stack(pdf["embedding"].to_numpy()).astype(np.float64)
    rows = [(None, mat.mean(axis=0), len(pdf))]  # the whole note
    for cat, idx in pdf.groupby(pdf["section_category"].fillna("other")).indices.items():
        rows.append((cat, mat[idx].mean(axis=0), len(idx)))
    return pd.DataFrame({
        "note_id": first.note_id, "section_category": [r[0] for r in rows],
        "model": first.model, "model_revision": first.model_revision,
        "pooling": first.pooling, "n_sentences": [r[2] for r in rows],
        "dim": int(first.dim), "embedding": [r[1].astype(np.float32) for r in rows],
        "note_hash": first.note_hash,
    }, columns=_OUT.fieldNames())


def note_vectors(emb: DataFrame) -> DataFrame:
    """Mean of the sentence vectors per note (``section_category`` null) and per
    (note, section category). Rows without a vector (no usable text) are left out."""
    e = emb.where(F.col("embedding").isNotNull()).select(*_KEYS, "section_category", "embedding")
    return e.groupBy(*_KEYS).applyInPandas(_mean, _OUT)
