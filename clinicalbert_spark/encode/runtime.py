"""Shared execution loop: token-budget batches, device transfer, OOM back-off.

Used by both :class:`~clinicalbert_spark.encode.SentenceEncoder` and
:class:`~clinicalbert_spark.encode.Predictor`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .batching import Segments, collate, next_batch, padded_length

__all__ = [
    "EncodeStats",
    "run_batches",
    "is_oom",
    "classify_texts",
    "tokenize_texts",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_PAD_MULTIPLE",
    "pad_multiple_for",
]

logger = logging.getLogger(__name__)

#: Default token budget per batch (``rows * padded_len``). On CPU larger
#: batches buy nothing once the GEMMs are a few thousand rows tall and only
#: raise peak memory; on a GPU 64k tokens (e.g. 512 x 128) keeps an H100 busy
#: with BERT-base while activations stay around a few GiB.
DEFAULT_MAX_TOKENS = {"cpu": 8192, "cuda": 65536}

#: Default padded-length multiple (``EncoderConfig.pad_to_multiple_of=None``): 8 on a GPU
#: (full tensor-core tiles, few distinct shapes); 1 elsewhere, since a CPU gains nothing
#: from the round-up and MTSamples-length sentences (~20 tokens) lose ~10% of the work
#: to it (padding efficiency 0.83 -> 0.94 on 2,000 sentences at the 8192 budget).
DEFAULT_PAD_MULTIPLE = {"cuda": 8}

#: Share of the token budget a batch holds before it may close where the next row is shorter
#: (:func:`~.batching.next_batch`). A GPU wants big batches (launch overhead), so a quarter of
#: its 64k budget; a CPU's forward pass costs about the same per token from ~512 tokens up, so
#: it stops at 1/16 of its 8k budget, sparing the padding. Random BERT-base, MTSamples
#: sentences, 2 cores, 1/4 -> 1/16: tasks of 400 sentences pad 0.81 -> 0.94 and run int8
#: +18-23%, fp32 +8-12%; tasks of 2,000: 0.95 -> 0.99, int8 +3-8%, fp32 +1-3%, bf16 without
#: AMX -2% (benchmarks/README.md).
DEFAULT_MIN_FILL = {"cuda": 0.25}
CPU_MIN_FILL = 1 / 16


def pad_multiple_for(pad_multiple: int | None, device: torch.device) -> int:
    """``pad_multiple`` itself, or the device's default (:data:`DEFAULT_PAD_MULTIPLE`) for None."""
    return int(pad_multiple) if pad_multiple is not None else DEFAULT_PAD_MULTIPLE.get(device.type, 1)


@dataclass
class EncodeStats:
    """Counters for one ``encode``/``predict`` call (add them up across calls).

    Attributes
    ----------
    rows : int
        Input rows.
    segments : int
        Model sequences (rows times windows, bad rows excluded).
    real_tokens : int
        Non-padding tokens run through the model, special tokens included.
    padded_tokens : int
        Tokens actually computed (``rows * padded_len`` summed over batches).
    batches : int
        Successful forward passes.
    oom_retries : int
        Batches re-planned after ``torch.cuda.OutOfMemoryError``.
    seconds : float
        Wall time of the call (tokenization included; in
        :meth:`SentenceEncoder.encode_stream` a chunk's tokenization overlaps the
        previous chunk's model run, so summed seconds exceed the wall time).
    prepare_seconds : float
        Part of ``seconds`` spent on the host before the first batch: checking and
        tokenizing the texts, cutting windows (the GPU idles then unless it overlaps
        with another chunk, see :meth:`SentenceEncoder.encode_stream`).
    """

    rows: int = 0
    segments: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    batches: int = 0
    oom_retries: int = 0
    seconds: float = 0.0
    prepare_seconds: float = 0.0

    @property
    def padding_efficiency(self) -> float:
        """``real_tokens / padded_tokens`` (1.0 = no padding waste)."""
        return self.real_tokens / self.padded_tokens if self.padded_tokens else 1.0

    def __add__(self, other: "EncodeStats") -> "EncodeStats":
        return EncodeStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict:
        """Plain dict (for JSON run summaries), padding efficiency included."""
        d = asdict(self)
        d["padding_efficiency"] = self.padding_efficiency
        return d


_NOT_SPACE = re.compile(r"\S")


def classify_texts(texts: Sequence[Any]) -> list[str]:
    """Per-row status before tokenization.

    Returns ``"ok"``, ``"empty_text"`` (None, NaN, empty or whitespace-only)
    or ``"invalid_type"`` (not a string). Never raises on a row.
    """
    status = []
    for t in texts:
        if isinstance(t, str):
            status.append("ok" if _NOT_SPACE.search(t) else "empty_text")
        elif t is None or (isinstance(t, float) and t != t):  # None or NaN (pandas null)
            status.append("empty_text")
        else:
            status.append("invalid_type")
    return status


def tokenize_texts(tokenizer, texts: Sequence[Any], status: list[str], offsets: bool = False):
    """Tokenize every ``status == "ok"`` row in one fast-tokenizer call.

    No special tokens, no padding, no truncation: long rows are handled by
    windowing later, never cut silently here. Rows that yield no token at all
    (e.g. only control characters) get status ``"no_tokens"`` (``status`` is
    updated in place).

    Returns
    -------
    ids : list of (list of int or None)
        Content ids per row; None for skipped rows.
    encodings : list of (tokenizers.Encoding or None)
        Only when ``offsets=True`` (character offsets, word ids).
    """
    ok = [i for i, s in enumerate(status) if s == "ok"]
    ids: list = [None] * len(status)
    encs: list = [None] * len(status)
    backend = getattr(tokenizer, "backend_tokenizer", None) if not offsets else None
    if ok and backend is not None and getattr(tokenizer, "is_fast", False):
        # The Rust tokenizer directly: the same ids as the call below (a test checks it),
        # without building a Python dict per row and offsets nobody reads (~1.6x faster,
        # which matters when a GPU waits for the host).
        if backend.truncation is not None:
            backend.no_truncation()  # what the call below does too, every time
        if backend.padding is not None:
            backend.no_padding()
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        for i, enc in zip(ok, encode([texts[i] for i in ok], add_special_tokens=False)):
            row = enc.ids
            if row:
                ids[i] = row
            else:
                status[i] = "no_tokens"
        return ids
    if ok:
        batch = tokenizer(
            [texts[i] for i in ok],
            add_special_tokens=False,
            padding=False,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=offsets,
            verbose=False,  # no "sequence longer than max length" warning: we window
        )
        for j, i in enumerate(ok):
            row = batch["input_ids"][j]
            if len(row) == 0:
                status[i] = "no_tokens"
                continue
            ids[i] = row
            if offsets:
                encs[i] = batch.encodings[j]
    return (ids, encs) if offsets else ids


class _Budget:
    """Mutable token budget shared across calls (shrinks after an OOM)."""

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(array)
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously with compute
        # still queued from the previous batch.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory, including the cuBLAS/cuDNN allocation
    failures that surface as plain ``RuntimeError``."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA out of memory" in msg or "CUBLAS_STATUS_ALLOC_FAILED" in msg or "CUDNN_STATUS_ALLOC_FAILED" in msg
    )


def run_batches(
    segments: Segments | Sequence[np.ndarray],
    *,
    budget: _Budget,
    pad_multiple: int | None,
    pad_id: int,
    device: torch.device,
    step: Callable[[np.ndarray, torch.Tensor, torch.Tensor], None],
    stats: EncodeStats,
) -> None:
    """Run ``step(index, input_ids, attention_mask)`` over budgeted batches.

    Segments are sorted longest first and batches cut greedily under
    ``budget.max_tokens`` (see :func:`~.batching.plan_batches`; the cut is made
    lazily so a shrunken budget applies to every later batch).

    On CUDA out-of-memory (:func:`is_oom`) the CUDA cache is emptied, the budget
    is halved (to at most half of the failed batch's padded size, so the
    batch really splits) and the same rows are retried. A single segment that
    still does not fit re-raises: the device cannot run this model at all,
    and failing the task lets Spark retry it elsewhere rather than silently
    writing nulls.

    ``step`` must have no side effect before its forward pass succeeds.
    ``pad_multiple=None``: the device's default (:func:`pad_multiple_for`).
    """
    pad_multiple = pad_multiple_for(pad_multiple, device)
    min_fill = DEFAULT_MIN_FILL.get(device.type, CPU_MIN_FILL)
    if isinstance(segments, Segments):
        lengths = segments.lengths
    else:
        lengths = np.fromiter((len(s) for s in segments), dtype=np.int64, count=len(segments))
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    start = 0
    while start < len(order):
        end = next_batch(sorted_lengths, start, budget.max_tokens, pad_multiple, min_fill)
        index = order[start:end]
        plen = padded_length(sorted_lengths[start], pad_multiple)
        ids_np, mask_np = collate(segments, index, pad_id, pad_multiple)
        oom = False
        try:
            step(index, _to_device(ids_np, device), _to_device(mask_np, device))
        except RuntimeError as exc:  # OutOfMemoryError is a RuntimeError
            if not is_oom(exc) or len(index) == 1:
                raise
            oom = True
        if oom:
            # Outside the except block: the traceback no longer pins the
            # failed batch's activations, so empty_cache can release them.
            stats.oom_retries += 1
            if device.type == "cuda":
                torch.cuda.empty_cache()
            budget.max_tokens = max(1, min(budget.max_tokens, len(index) * plen) // 2)
            logger.warning(
                "out of memory on a batch of %d x %d tokens; token budget lowered to %d",
                len(index), plen, budget.max_tokens,
            )
            continue
        stats.batches += 1
        stats.real_tokens += int(sorted_lengths[start:end].sum())
        stats.padded_tokens += len(index) * plen
        start = end
