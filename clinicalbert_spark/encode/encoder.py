"""Sentence embeddings with token-budget batching and long-text windowing."""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import transformers

from .batching import Segments, build_segments
from .device import (
    ENCODE_PRECISIONS,
    autocast_context,
    autocast_dtype,
    quantize_int8,
    resolve_device,
    resolve_encode_precision,
    sdpa_backends,
)
from .model import LoadedModel
from .pooling import average_windows, l2_normalize, pool
from .runtime import (
    DEFAULT_MAX_TOKENS,
    EncodeStats,
    _Budget,
    classify_texts,
    is_oom,
    run_batches,
    tokenize_texts,
)

_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

__all__ = ["EncoderConfig", "EncodeResult", "SentenceEncoder", "EncodeStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderConfig:
    """How texts are turned into vectors. Frozen, hence hashable (a cache key).

    Parameters
    ----------
    pooling : {"mean", "cls"}, default="mean"
        ``"mean"``: average of the last-layer states over every real token,
        ``[CLS]``/``[SEP]`` included (sentence-transformers' convention).
        ``"cls"``: last-layer ``[CLS]`` state. Mean is the default because
        Bio_ClinicalBERT was never trained to put a sentence summary in
        ``[CLS]`` (no fine-tuned pooler), and mean pooling of such MLM-only
        encoders is the stronger similarity baseline.
    normalize : bool, default=False
        L2-normalise each final vector (after window averaging), so dot
        product equals cosine similarity.
    max_length : int, default=128
        Tokens per model sequence including ``[CLS]`` and ``[SEP]``, at most
        512. 128 matches Bio_ClinicalBERT's pretraining length.
    stride : int, optional
        Overlap in tokens between consecutive windows of a long text.
        Default ``max_length // 4`` (32 for 128): each window after the first
        re-reads 32 tokens of context. Must be below ``max_length - 2``.
    long_policy : {"window", "truncate"}, default="window"
        Texts longer than ``max_length`` are split into overlapping windows
        whose pooled vectors are averaged (``"window"``), or cut to the first
        ``max_length`` tokens and flagged ``truncated`` (``"truncate"``).
    max_tokens : int, optional
        Padded-token budget per batch (``rows * padded_len``). Default 8192
        on CPU, 65536 on CUDA. Lowered automatically after a GPU OOM.
    pad_to_multiple_of : int, optional
        Batches are padded to a multiple of this. Default (None): 8 on CUDA
        (tensor-core tiles), 1 on CPU (no gain there from rounding up; short
        sentences would lose ~10% of the work to it).
    precision : {"auto", "fp32", "bf16", "fp16", "int8"}, default="auto"
        Numeric mode. ``"bf16"``: a bf16 copy of the weights on a GPU, autocast
        on CPU; ``"fp16"``: autocast; ``"int8"``: Linear
        layers dynamically quantised (CPU only); ``"fp32"``: exact.
        ``"auto"``: bf16 on GPUs (fp16 without bf16 support); on CPU bf16
        where the CPU has AMX, else int8. The mode used is
        ``SentenceEncoder.precision`` (see
        :func:`~clinicalbert_spark.encode.resolve_encode_precision`).
    embedding_dtype : {"float32", "float16"}, default="float32"
        Dtype of the returned vectors (pooling is always done in fp32).
    compile : bool, default=False
        Wrap the model in ``torch.compile(dynamic=True)``. Worth it for long
        GPU jobs; the first batches pay the compile time. Falls back to eager
        if compilation fails.
    """

    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 128
    stride: int | None = None
    long_policy: str = "window"
    max_tokens: int | None = None
    pad_to_multiple_of: int | None = None
    precision: str = "auto"
    embedding_dtype: str = "float32"
    compile: bool = False

    def __post_init__(self):
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not 3 <= self.max_length <= 512:
            raise ValueError(f"max_length must be in [3, 512], got {self.max_length}")
        if self.stride is not None and not 0 <= self.stride < self.max_length - 2:
            raise ValueError(f"stride must be in [0, max_length - 2), got {self.stride}")
        if self.long_policy not in ("window", "truncate"):
            raise ValueError(f"long_policy must be 'window' or 'truncate', got {self.long_policy!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError("pad_to_multiple_of must be >= 1")
        if self.precision not in ENCODE_PRECISIONS:
            raise ValueError(f"precision must be one of {'/'.join(ENCODE_PRECISIONS)}, got {self.precision!r}")
        if self.embedding_dtype not in ("float32", "float16"):
            raise ValueError(f"embedding_dtype must be float32 or float16, got {self.embedding_dtype!r}")

    @property
    def effective_stride(self) -> int:
        """Window overlap actually used."""
        return self.max_length // 4 if self.stride is None else self.stride


@dataclass
class EncodeResult:
    """Output of :meth:`SentenceEncoder.encode`, one entry per input row, in input order.

    Attributes
    ----------
    embeddings : ndarray, shape (n, dim), float32 or float16
        All zeros for rows whose status is not ``"ok"`` (write null there).
    n_tokens : ndarray of int32, shape (n,)
        Real tokens fed to the model, special tokens included, summed over windows.
    n_windows : ndarray of int32, shape (n,)
        Model sequences per row (0 for bad rows, >1 for windowed long texts).
    truncated : ndarray of bool, shape (n,)
        Text was cut (``long_policy="truncate"`` only).
    status : list of str
        ``"ok"``, ``"empty_text"`` (None/NaN/blank), ``"invalid_type"``
        (not a string) or ``"no_tokens"`` (tokenizer produced nothing).
    stats : EncodeStats
    """

    embeddings: np.ndarray
    n_tokens: np.ndarray
    n_windows: np.ndarray
    truncated: np.ndarray
    status: list
    stats: EncodeStats = field(default_factory=EncodeStats)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of rows with a valid embedding."""
        return np.fromiter((s == "ok" for s in self.status), dtype=np.bool_, count=len(self.status))


@dataclass
class _Prepared:
    """A chunk after host preparation (:meth:`SentenceEncoder._prepare`)."""

    n: int
    status: list
    seg: Segments
    seconds: float


def _special_ids(tokenizer) -> tuple[int, int, int]:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cls_id is None or sep_id is None:
        raise ValueError("tokenizer has no [CLS]/[SEP] (or BOS/EOS) token")
    return int(cls_id), int(sep_id), int(pad_id)


class SentenceEncoder:
    """Embed texts with a BERT-family encoder.

    Parameters
    ----------
    loaded : LoadedModel
        From :func:`~clinicalbert_spark.encode.load_model`. Any task works:
        for head checkpoints the base encoder is used. The model is moved to
        ``device`` in place (for bf16 on a GPU a bf16 copy is moved instead).
    config : EncoderConfig, optional
    device : str or torch.device, optional
        Default :func:`~clinicalbert_spark.encode.resolve_device` ("auto").

    Notes
    -----
    One instance per Python worker process (see
    :func:`~clinicalbert_spark.encode.get_cached`); ``encode`` holds a lock,
    so concurrent calls from several threads are serialised, not corrupted.
    Torch's intra-op thread count is left alone: with several Spark Python
    workers per executor the caller should set ``torch.set_num_threads``
    to cores / workers.

    Examples
    --------
    >>> enc = SentenceEncoder(load_model("/models/Bio_ClinicalBERT"), EncoderConfig())
    >>> res = enc.encode(["Patient denies chest pain.", None])
    >>> res.embeddings.shape, res.status
    ((2, 768), ['ok', 'empty_text'])
    """

    def __init__(self, loaded: LoadedModel, config: EncoderConfig | None = None, device=None):
        self.loaded = loaded
        self.config = config or EncoderConfig()
        self.device = device if isinstance(device, torch.device) else resolve_device(device or "auto")
        #: The numeric mode actually used: "fp32", "bf16", "fp16" or "int8" (record this).
        self.precision = resolve_encode_precision(self.config.precision, self.device)
        #: Autocast dtype (float32, i.e. none, for fp32, int8 and bf16 weights on a GPU).
        self.dtype = autocast_dtype(self.precision)
        model = loaded.model if loaded.task == "embed" else loaded.model.base_model
        max_pos = getattr(loaded.config, "max_position_embeddings", 512)
        if self.config.max_length > max_pos:
            raise ValueError(f"max_length {self.config.max_length} exceeds the model's {max_pos} positions")
        if self.precision == "bf16" and self.device.type == "cuda":
            # On a GPU the weights themselves run in bf16: LayerNorm, GELU and residual
            # adds then move half the bytes; ~1.25-1.3x autocast's speed on an H100
            # (benchmarks/README.md), within the fidelity gate (pooling stays fp32). A copy
            # goes to the GPU; the loaded fp32 model stays where it is (no second copy there).
            model = copy.deepcopy(model).to(torch.bfloat16).to(self.device).eval()
            self.dtype = torch.float32  # no autocast on top
        else:
            model = model.to(self.device).eval()
        if self.precision == "int8":
            # A quantised copy; the loaded model stays fp32 for other users of it.
            model = quantize_int8(model)
        self.model = model
        self.dim = int(loaded.config.hidden_size)
        self.cls_id, self.sep_id, self.pad_id = _special_ids(loaded.tokenizer)
        # transformers 5 checks a 2-D padding mask with `mask.all()` to drop it for SDPA: a
        # host sync per batch, so the host cannot queue the next batch while the GPU runs.
        # A ready 4-D mask (True = attend) is passed through as is, with the same result,
        # checked once for this model (an architecture reading the mask its own way keeps 2-D).
        self._mask_4d = (self.device.type == "cuda" and _TRANSFORMERS_MAJOR >= 5
                         and getattr(model.config, "_attn_implementation", None) == "sdpa"
                         and self._mask_4d_agrees())
        max_tokens = self.config.max_tokens or DEFAULT_MAX_TOKENS.get(self.device.type, 8192)
        #: Current token budget; shrinks (and stays shrunk) after a GPU OOM.
        self.budget = _Budget(max_tokens)
        self._module = torch.compile(self.model, dynamic=True) if self.config.compile else self.model
        self._compiled = self.config.compile
        self._lock = threading.Lock()
        # Fault-injection seam for tests: (input_ids, attention_mask) -> last hidden state.
        self._forward = self._model_forward

    def _mask_4d_agrees(self) -> bool:
        """Same states with a ready 4-D mask as with the 2-D one, on a tiny padded batch."""
        ids = torch.tensor([[self.cls_id, 5, 6, self.sep_id], [self.cls_id, 7, self.sep_id, self.pad_id]],
                           device=self.device)
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], device=self.device)
        try:
            with torch.inference_mode(), autocast_context(self.device, self.dtype):
                a = self.model(input_ids=ids, attention_mask=mask)[0]
                b = self.model(input_ids=ids, attention_mask=mask[:, None, None, :].bool())[0]
        except Exception:  # noqa: BLE001 - any failure: keep the 2-D mask
            return False
        real = mask.bool()
        return bool(torch.allclose(a[real].float(), b[real].float(), atol=1e-3, rtol=1e-3))

    @property
    def max_tokens(self) -> int:
        """Current padded-token budget per batch."""
        return self.budget.max_tokens

    def _model_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[:, None, None, :].bool() if self._mask_4d else attention_mask
        with autocast_context(self.device, self.dtype), sdpa_backends(self.device):
            try:
                out = self._module(input_ids=input_ids, attention_mask=mask)
            except Exception as exc:
                if not self._compiled or is_oom(exc):
                    raise
                # torch.compile failures surface on first call; eager is always correct.
                logger.warning("torch.compile failed; falling back to eager", exc_info=True)
                self._module, self._compiled = self.model, False
                out = self._module(input_ids=input_ids, attention_mask=mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def encode(self, texts: Sequence[Any]) -> EncodeResult:
        """Embed ``texts`` (one vector per row, input order kept).

        Parameters
        ----------
        texts : sequence of str
            A list, numpy array or pandas Series. None/NaN/blank/non-string
            rows never raise: they get a zero vector and a non-``"ok"`` status.

        Returns
        -------
        result : EncodeResult
        """
        return self._run(self._prepare(texts))

    def encode_stream(self, chunks: Iterable[Any], texts: Callable[[Any], Sequence[Any]] | None = None
                      ) -> Iterator[tuple[Any, EncodeResult]]:
        """Embed a stream of chunks, yielding ``(chunk, result)`` in order.

        While the model runs one chunk, the next one is tokenized on a background
        thread (the tokenizer releases the GIL), so a GPU does not wait for the host
        between chunks. The chunks themselves are pulled on the calling thread.

        Parameters
        ----------
        chunks : iterable
            Lists of texts, or anything ``texts`` maps to one (e.g. DataFrames).
        texts : callable, optional
            ``chunk -> sequence of str``; default: the chunk itself.

        Examples
        --------
        >>> for pdf, res in enc.encode_stream(frames, texts=lambda pdf: pdf["text"].tolist()):
        ...     write(pdf, res.embeddings)
        """
        get = texts or (lambda chunk: chunk)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbs-tokenize") as pool:
            pending = None
            for chunk in chunks:
                ready = (chunk, pool.submit(lambda c=chunk: self._prepare(get(c))))
                if pending is not None:
                    yield pending[0], self._run(pending[1].result())
                pending = ready
            if pending is not None:
                yield pending[0], self._run(pending[1].result())

    def _prepare(self, texts: Sequence[Any]) -> "_Prepared":
        """Host work before the model: check and tokenize the texts, cut windows."""
        t0 = time.perf_counter()
        texts = list(texts)
        cfg = self.config
        status = classify_texts(texts)
        ids = tokenize_texts(self.loaded.tokenizer, texts, status)
        seg = build_segments(
            ids,
            max_length=cfg.max_length,
            stride=cfg.effective_stride,
            long_policy=cfg.long_policy,
            cls_id=self.cls_id,
            sep_id=self.sep_id,
        )
        return _Prepared(len(texts), status, seg, time.perf_counter() - t0)

    def _run(self, prep: "_Prepared") -> EncodeResult:
        """The model over prepared segments, pooled and averaged back to rows."""
        t0 = time.perf_counter()
        cfg, seg, n = self.config, prep.seg, prep.n
        stats = EncodeStats(rows=n, segments=len(seg), prepare_seconds=prep.seconds)
        seg_vectors = np.zeros((len(seg), self.dim), dtype=np.float32)
        if len(seg):
            pooled: list[tuple[np.ndarray, torch.Tensor]] = []
            cuda = self.device.type == "cuda"

            def step(index, input_ids, attention_mask):
                hidden = self._forward(input_ids, attention_mask)
                vectors = pool(hidden, attention_mask, cfg.pooling)
                if cuda:
                    # Copied out per batch into pinned memory, asynchronously: no sync per
                    # batch (the host queues the next one while the GPU computes), and no
                    # slow pageable copy of the whole chunk at the end.
                    host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
                    vectors = host.copy_(vectors, non_blocking=True)
                pooled.append((index, vectors))

            with self._lock, torch.inference_mode():
                run_batches(
                    seg,
                    budget=self.budget,
                    pad_multiple=cfg.pad_to_multiple_of,
                    pad_id=self.pad_id,
                    device=self.device,
                    step=step,
                    stats=stats,
                )
                if cuda:
                    torch.cuda.current_stream(self.device).synchronize()
                for index, vectors in pooled:
                    seg_vectors[index] = vectors.cpu().numpy()
        emb = average_windows(seg_vectors, seg.row, n)
        if cfg.normalize:
            emb = l2_normalize(emb)
        stats.seconds = prep.seconds + time.perf_counter() - t0
        return EncodeResult(
            embeddings=emb.astype(cfg.embedding_dtype, copy=False),
            n_tokens=seg.n_tokens,
            n_windows=seg.n_windows,
            truncated=seg.truncated,
            status=prep.status,
            stats=stats,
        )

    __call__ = encode
