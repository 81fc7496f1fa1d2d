"""Pooling of token states into one vector per segment, and window averaging."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["pool", "cls_pool", "mean_pool", "l2_normalize", "average_windows"]


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last-layer state of the first token (``[CLS]``), shape ``(B, H)``."""
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the states at every non-padding position, ``[CLS]``/``[SEP]`` included.

    This is sentence-transformers' ``pooling_mode_mean_tokens``. Computed in
    fp32 whatever the compute dtype, so reduced-precision runs do not lose the
    sum's low bits.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(-1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp_min(1.0)


_POOLERS = {"cls": cls_pool, "mean": mean_pool}


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str) -> torch.Tensor:
    """Pool ``hidden`` ``(B, L, H)`` to ``(B, H)`` fp32 with ``method`` in {"cls", "mean"}."""
    try:
        fn = _POOLERS[method]
    except KeyError:
        raise ValueError(f"pooling must be one of {sorted(_POOLERS)}, got {method!r}") from None
    return fn(hidden, attention_mask).to(torch.float32)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation; all-zero rows stay zero (no NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def average_windows(
    seg_vectors: np.ndarray, seg_row: np.ndarray, n_rows: int
) -> np.ndarray:
    """Average segment vectors per input row.

    Parameters
    ----------
    seg_vectors : ndarray, shape (n_segments, H)
    seg_row : ndarray of int, shape (n_segments,)
        Row of each segment.
    n_rows : int

    Returns
    -------
    row_vectors : ndarray of float32, shape (n_rows, H)
        Unweighted mean of a row's window vectors (each window counts once,
        whatever its overlap); zeros for rows with no segment.
    """
    dim = seg_vectors.shape[1] if seg_vectors.ndim == 2 else 0
    seg_row = np.asarray(seg_row, dtype=np.int64)
    if len(seg_row) == n_rows and np.array_equal(seg_row, np.arange(n_rows)):
        return seg_vectors.astype(np.float32, copy=False)  # one segment per row, in order
    out = np.zeros((n_rows, dim), dtype=np.float32)
    if not len(seg_row):
        return out
    counts = np.bincount(seg_row, minlength=n_rows)
    single = counts[seg_row] == 1
    # Most rows have one segment: copied as they are (np.add.at over every row cost ~4 s
    # per 100k x 768, as long as an H100 takes to encode them).
    out[seg_row[single]] = seg_vectors[single]
    multi = ~single
    if multi.any():
        # Summed over the windowed rows only (a float64 matrix of every row cost ~0.9 GB
        # per 140k x 768 chunk whenever one row had windows).
        rows, at = np.unique(seg_row[multi], return_inverse=True)
        sums = np.zeros((len(rows), dim), dtype=np.float64)
        np.add.at(sums, at, seg_vectors[multi].astype(np.float64))
        out[rows] = (sums / counts[rows, None]).astype(np.float32)
    return out
