"""How the embeddings tables store a vector (``encode.vector_storage``), and the decoders.

Pure numpy: no Spark, no DuckDB. Columns (``schemas.EMBEDDINGS`` / ``NOTE_EMBEDDINGS``,
docs/tables.md; SQL decoders for DuckDB, Spark SQL and Trino in docs/sql.md):

``float32`` (default)
    ``embedding array<float>``: 4 bytes per value, as every version before schema 2.2 stored it.
``float16``
    ``embedding_f16 binary``: IEEE 754 half precision, **big-endian**, 2 bytes per value, so
    component ``i`` is the 16-bit integer of bytes ``2i, 2i+1`` in order (numpy dtype ``>f2``).
    Big-endian because every SQL engine can then read it with one slice: DuckDB
    ``b[2*i+1:2*i+2]::BIT::INTEGER``, Trino ``from_big_endian_32``, Spark
    ``conv(hex(substring(...)), 16, 10)``. A finite value beyond half precision's range
    (|x| > 65504) is an **error** (:class:`VectorRangeError`), never clipped: a clipped
    component would silently bend every cosine it takes part in; ``int8`` or ``float32``
    store such vectors.
``int8``
    ``embedding_i8 array<tinyint>`` and ``embedding_scale float``: component ``i`` is
    ``embedding_i8[i] * embedding_scale`` with ``scale = max|x| / 127`` per vector (symmetric,
    values -127..127). Every engine reads ``array<tinyint>`` natively and the decoder is a
    multiplication; Parquet dictionary-encodes the values to about one byte each.

Every row says which in ``vector_format`` (null in rows written before schema 2.2: float32).
A row with no vector (no usable text) has every vector column null. NaN and infinite values
are an error in every compact format (the encoder never produces them).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

FORMATS = ("float32", "float16", "int8")
DEFAULT_FORMAT = "float32"
#: The on-disk element type of ``embedding_f16``.
F16 = np.dtype(">f2")
F16_MAX = float(np.finfo(np.float16).max)  # 65504
#: The columns that hold a vector, in table order.
VECTOR_COLUMNS = ("embedding", "vector_format", "embedding_f16", "embedding_i8", "embedding_scale")


class VectorRangeError(ValueError):
    """A vector cannot be stored in the chosen format (counts only: never the values)."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown vector storage {fmt!r}; choose from {', '.join(FORMATS)}")
    return fmt


def quantize_int8(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(q int8 [n, dim], scale float32 [n])`` with ``q * scale`` ~ ``mat``, per row.

    A zero row (or one whose largest component is below ~1.8e-43, where the float32 scale
    underflows) gets scale 0 and decodes to zeros."""
    mat = np.asarray(mat, np.float32)
    scale = (np.abs(mat).max(axis=1, initial=0.0).astype(np.float64) / 127).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(mat / safe[:, None]), -127, 127).astype(np.int8)
    q[scale == 0] = 0
    return q, scale


def to_float16(mat: np.ndarray) -> np.ndarray:
    """``mat`` as big-endian half precision; :class:`VectorRangeError` beyond its range."""
    with np.errstate(over="ignore"):
        half = np.asarray(mat, np.float32).astype(F16)
    bad = ~np.isfinite(half).all(axis=1) if half.ndim == 2 else ~np.isfinite(half)
    if bad.any():
        raise VectorRangeError(
            f"{int(bad.sum())} vector(s) hold values beyond float16's range (|x| > {F16_MAX:g}); "
            "store them with encode.vector_storage int8 or float32")
    return half


def encode_vectors(vectors, fmt: str, present: Sequence[bool] | None = None
                   ) -> dict[str, list]:
    """The stored columns (:data:`VECTOR_COLUMNS`) of ``n`` vectors in format ``fmt``.

    ``vectors``: an ``[n, dim]`` array; ``present``: which rows have a vector (the others get
    null vector columns; default all). Returns one list of length ``n`` per column.
    """
    check_format(fmt)
    mat = np.asarray(vectors, dtype=np.float32)
    if mat.ndim != 2:
        raise ValueError(f"vectors must be a 2-d array, got {mat.ndim} dimension(s)")
    n = mat.shape[0]
    mask = np.ones(n, bool) if present is None else np.asarray(present, bool)
    idx = np.flatnonzero(mask)
    rows = mat[idx]
    if not np.isfinite(rows).all():
        bad = int((~np.isfinite(rows).all(axis=1)).sum())
        raise VectorRangeError(f"{bad} vector(s) hold NaN or infinite values; they cannot be "
                               "stored")
    out: dict[str, list] = {c: [None] * n for c in VECTOR_COLUMNS}
    out["vector_format"] = [fmt] * n
    if fmt == "float32":
        for j, i in enumerate(idx):
            out["embedding"][i] = rows[j]
    elif fmt == "float16":
        half = to_float16(rows)
        for j, i in enumerate(idx):
            out["embedding_f16"][i] = half[j].tobytes()
    else:
        q, scale = quantize_int8(rows)
        for j, i in enumerate(idx):
            out["embedding_i8"][i] = q[j]
            out["embedding_scale"][i] = float(scale[j])
    return out


def _get(columns, name: str, n: int) -> Sequence:
    if hasattr(columns, "columns"):  # a pandas DataFrame
        return columns[name].tolist() if name in columns.columns else [None] * n
    return columns.get(name) if columns.get(name) is not None else [None] * n


def _null(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def decode_vector(embedding=None, embedding_f16=None, embedding_i8=None, embedding_scale=None
                  ) -> np.ndarray | None:
    """One row's vector as float32, whatever column holds it; None when the row has none."""
    if not _null(embedding_f16):
        return np.frombuffer(bytes(embedding_f16), F16).astype(np.float32)
    if not _null(embedding_i8):
        scale = np.float32(0 if _null(embedding_scale) else embedding_scale)
        return np.asarray(embedding_i8, np.int8).astype(np.float32) * scale
    if not _null(embedding):
        return np.asarray(embedding, np.float32)
    return None


def decode_vectors(columns: Mapping[str, Sequence] | object) -> list[np.ndarray | None]:
    """Every row's vector as float32 (None where a row has none): ``columns`` is a pandas
    DataFrame or a mapping of column name -> values with any of :data:`VECTOR_COLUMNS`
    (absent columns count as null; ``vector_format`` is not needed)."""
    names = ("embedding", "embedding_f16", "embedding_i8", "embedding_scale")
    if hasattr(columns, "columns"):
        n = len(columns)
    else:
        n = max((len(columns[c]) for c in names if columns.get(c) is not None), default=0)
    cols = [_get(columns, c, n) for c in names]
    return [decode_vector(*vals) for vals in zip(*cols)]


def stored_format(formats: Sequence) -> str:
    """The format of a group of rows: the first non-null ``vector_format`` (null: float32)."""
    for f in formats:
        if not _null(f):
            return check_format(f)
    return DEFAULT_FORMAT
