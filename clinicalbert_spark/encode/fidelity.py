"""Fidelity of a reduced-precision encoder against fp32 (the gate every non-fp32 mode must pass).

Two figures on a sample of real sentences, both computed against the fp32 vectors of the
same sentences:

* **mean cosine**: average over rows of ``cos(v_fp32, v_mode)``; the gate asks >= 0.995.
* **top-k nearest-neighbour overlap** (k = 10): for every sentence, its k nearest other
  sentences of the sample (cosine) under fp32 and under the mode; the overlap is
  ``|A & B| / k``, averaged over sentences; the gate asks >= 0.9. This is what retrieval
  sees: a mode can keep cosines high yet reorder close neighbours.

Pure numpy plus the encoder (no Spark). The sample should hold *distinct* sentences: exact
duplicates tie in fp32 and their order is arbitrary, which would count as disagreement.

>>> import numpy as np
>>> ref = np.eye(12) + 0.01
>>> fidelity_report("fp32", ref, ref).passed
True
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "MIN_MEAN_COSINE",
    "MIN_NN_OVERLAP",
    "NN_K",
    "FidelityReport",
    "row_cosines",
    "nn_overlap",
    "fidelity_report",
    "check_fidelity",
]

#: The gate: a non-fp32 mode is acceptable on a sample when both hold.
MIN_MEAN_COSINE = 0.995
MIN_NN_OVERLAP = 0.9
NN_K = 10


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0.0, 1.0, norm)


def row_cosines(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``other`` to the same row of ``ref`` (float64, shape (n,)).

    A zero row (e.g. a bad input row) has cosine 0 to anything.
    """
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.shape != other.shape or ref.ndim != 2:
        raise ValueError(f"need two (n, dim) arrays of the same shape, got {ref.shape} and {other.shape}")
    return (_unit(ref) * _unit(other)).sum(axis=1)


def _top_k(unit: np.ndarray, k: int) -> np.ndarray:
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)  # a sentence is not its own neighbour
    # argpartition then a sort of the k: order inside the top k does not matter for overlap.
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def nn_overlap(ref: np.ndarray, other: np.ndarray, k: int = NN_K) -> float:
    """Mean over rows of ``|top_k(ref) & top_k(other)| / k``, neighbours taken within the sample.

    Parameters
    ----------
    ref, other : ndarray, shape (n, dim)
        The same ``n`` sentences embedded two ways (``n > k``).
    k : int, default=10
    """
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.shape != other.shape or ref.ndim != 2:
        raise ValueError(f"need two (n, dim) arrays of the same shape, got {ref.shape} and {other.shape}")
    n = ref.shape[0]
    if not 0 < k < n:
        raise ValueError(f"k must be in [1, n) with n={n} rows, got {k}")
    a, b = _top_k(_unit(ref), k), _top_k(_unit(other), k)
    hits = sum(len(np.intersect1d(a[i], b[i], assume_unique=True)) for i in range(n))
    return hits / (n * k)


@dataclass(frozen=True)
class FidelityReport:
    """How close a mode's vectors are to fp32's on one sample, and whether the gate passes."""

    mode: str
    n: int
    mean_cosine: float
    min_cosine: float
    nn_overlap: float
    k: int = NN_K
    min_mean_cosine: float = MIN_MEAN_COSINE
    min_nn_overlap: float = MIN_NN_OVERLAP

    @property
    def passed(self) -> bool:
        """Both figures meet the gate."""
        return self.mean_cosine >= self.min_mean_cosine and self.nn_overlap >= self.min_nn_overlap

    def as_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def __str__(self) -> str:
        return (f"{self.mode}: mean cosine {self.mean_cosine:.5f} (min {self.min_cosine:.4f}), "
                f"top-{self.k} NN overlap {self.nn_overlap:.3f} on {self.n} sentences -> "
                f"{'PASS' if self.passed else 'FAIL'} (gate: cosine >= {self.min_mean_cosine}, "
                f"overlap >= {self.min_nn_overlap})")


def fidelity_report(mode: str, ref: np.ndarray, other: np.ndarray, k: int = NN_K) -> FidelityReport:
    """Gate figures for ``other`` (vectors from ``mode``) against ``ref`` (fp32 vectors)."""
    cos = row_cosines(ref, other)
    return FidelityReport(mode=mode, n=int(cos.shape[0]), mean_cosine=float(cos.mean()),
                          min_cosine=float(cos.min()), nn_overlap=float(nn_overlap(ref, other, k)), k=k)


def check_fidelity(loaded, texts: Sequence[str], precision: str, *, config=None, device="cpu",
                   k: int = NN_K, reference: np.ndarray | None = None) -> FidelityReport:
    """Embed ``texts`` with fp32 and with ``precision`` and return the gate figures.

    Parameters
    ----------
    loaded : LoadedModel
        The model (left unchanged: the int8 mode quantises a copy).
    texts : sequence of str
        Distinct real sentences (a few hundred suffice for the gate).
    precision : str
        Any :class:`~clinicalbert_spark.encode.EncoderConfig` precision, ``"auto"`` included
        (the report names the mode it resolved to).
    config : EncoderConfig, optional
        Everything but the precision (default: mean pooling).
    reference : ndarray, optional
        fp32 vectors of ``texts`` already computed with the same config (saves one pass).
    """
    import dataclasses

    from .encoder import EncoderConfig, SentenceEncoder

    base = config or EncoderConfig()
    texts = list(texts)
    if reference is None:
        fp32 = SentenceEncoder(loaded, dataclasses.replace(base, precision="fp32"), device=device)
        reference = fp32.encode(texts).embeddings
    enc = SentenceEncoder(loaded, dataclasses.replace(base, precision=precision), device=device)
    return fidelity_report(enc.precision, reference, enc.encode(texts).embeddings, k=k)
