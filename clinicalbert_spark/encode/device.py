"""Device and numeric-precision selection.

Kept free of Spark imports at module level: ``pyspark`` is imported lazily and
optionally so the encoder runs (and is tested) without Spark installed.
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from functools import lru_cache
from typing import ContextManager

import torch

__all__ = [
    "resolve_device",
    "resolve_precision",
    "resolve_encode_precision",
    "ENCODE_PRECISIONS",
    "cpu_flags",
    "cpu_has_amx_bf16",
    "autocast_dtype",
    "autocast_context",
    "quantize_int8",
    "spark_gpu_address",
]

logger = logging.getLogger(__name__)

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Values of ``EncoderConfig.precision`` (sentence embeddings).
ENCODE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def spark_gpu_address() -> str | None:
    """Return the first GPU address Spark assigned to the current task, if any.

    Returns
    -------
    address : str or None
        The ``"gpu"`` resource address from ``TaskContext.get().resources()``
        (a physical GPU id as listed by the worker's discovery script), or
        ``None`` when pyspark is absent, we are not inside a Spark task, or the
        task was given no GPU.
    """
    try:  # optional dependency: the library must work without Spark
        from pyspark import TaskContext
    except ImportError:
        return None
    try:
        ctx = TaskContext.get()
        if ctx is None:
            return None
        gpu = ctx.resources().get("gpu")
    except Exception:  # pragma: no cover - defensive: odd Spark versions / contexts
        logger.debug("could not read Spark task resources", exc_info=True)
        return None
    if gpu is None or not gpu.addresses:
        return None
    return str(gpu.addresses[0])


def _physical_to_ordinal(address: str) -> int:
    """Map a physical GPU id to a CUDA ordinal visible to this process.

    Spark reports physical ids; CUDA numbers the devices listed in
    ``CUDA_VISIBLE_DEVICES`` from 0. With ``CUDA_VISIBLE_DEVICES=2,3`` physical
    GPU ``3`` is ``cuda:1``.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if address in ids:
            return ids.index(address)
        if len(ids) == 1:
            # Resource managers (YARN/K8s isolation) often already restricted
            # the process to the one assigned GPU and renumbered it.
            return 0
        logger.warning("Spark GPU address %s not in CUDA_VISIBLE_DEVICES; using it as an ordinal", address)
    try:
        return int(address)
    except ValueError:
        logger.warning("non-integer Spark GPU address %r; using cuda:0", address)
        return 0


def resolve_device(prefer: str = "auto") -> torch.device:
    """Choose the torch device to run on.

    Parameters
    ----------
    prefer : str, default="auto"
        ``"auto"``: the GPU Spark assigned to this task (``TaskContext``
        resources, mapped through ``CUDA_VISIBLE_DEVICES``) if any, else
        ``cuda:0`` when CUDA is available, else CPU. Any other value
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) is used as given.

    Returns
    -------
    device : torch.device
    """
    if prefer is None or prefer == "auto":
        if not torch.cuda.is_available():
            if spark_gpu_address() is not None:
                logger.warning("Spark assigned a GPU but torch sees no CUDA device; running on CPU")
            return torch.device("cpu")
        address = spark_gpu_address()
        if address is None:
            return torch.device("cuda", 0)
        ordinal = _physical_to_ordinal(address)
        count = torch.cuda.device_count()
        if ordinal >= count:
            logger.warning("GPU ordinal %d >= device count %d; using cuda:0", ordinal, count)
            ordinal = 0
        return torch.device("cuda", ordinal)
    device = torch.device(prefer)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """Return the autocast dtype for ``precision`` on ``device`` (task heads).

    Used by :class:`~clinicalbert_spark.encode.Predictor`. ``"auto"`` is bf16
    on a GPU that supports it (Ampere and newer), fp16 on older GPUs, and fp32
    on CPU: task heads (fill-mask scores, labels) are not covered by the
    embedding fidelity gate, so they stay exact on CPU. Explicit values are
    honoured on any device. Sentence embeddings use
    :func:`resolve_encode_precision` instead (``"auto"`` is fast on CPU too). ``"int8"``
    (an embeddings mode) is fp32 here, so one ``encode.precision`` serves both stages.
    """
    if precision == "int8":
        return torch.float32
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast_context(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Autocast to ``dtype`` on ``device``, or a no-op context for fp32.

    Autocast (rather than casting the weights) keeps softmax, LayerNorm and
    reductions in fp32, which matters for fp16 and keeps bf16 embeddings close
    to fp32 ones.
    """
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sdpa_backends(device: torch.device) -> ContextManager:
    """The SDPA kernels the encoder and predictor let torch pick on a GPU: flash,
    memory-efficient, math.

    cuDNN's attention is left out: it builds a plan for every new batch shape, and
    token-budget batches have many shapes. On an H100 (torch 2.11) a first pass over 70k
    sentences ran at 0.71M tokens/s with it and 1.24M without; even with every shape
    planned it was slower (1.22M vs 1.32M). ``CBS_SDPA_CUDNN=1`` lets it back in.
    """
    if device.type != "cuda" or os.environ.get("CBS_SDPA_CUDNN", "0") == "1":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


# ------------------------------------------------------------------ CPU precision (embeddings)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}


def cpu_flags() -> frozenset[str]:
    """CPU feature flags of this machine (``/proc/cpuinfo`` "flags"; empty where unreadable).

    The kernel lists ``amx_bf16``/``amx_tile`` only when it enables AMX state for user
    processes, so a flag seen here is usable.
    """
    return _cpu_flags()


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, aarch64
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_amx_bf16() -> bool:
    """True where the CPU has bf16 matrix tiles (Intel AMX, Sapphire Rapids and newer)."""
    flags = cpu_flags()
    return "amx_bf16" in flags and "amx_tile" in flags


@lru_cache(maxsize=1)
def _int8_engine_available() -> bool:
    from .int8 import int8_available

    return int8_available()


def resolve_encode_precision(precision: str, device: torch.device | str) -> str:
    """The numeric mode sentence embeddings run in: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.

    Resolve once per encoder and record the result (fingerprints, run summaries): it is
    what determines the vectors, ``"auto"`` is not.

    ``"auto"``:

    * CUDA: ``"bf16"``, run as bf16 weights (``"fp16"`` autocast on GPUs without bf16).
    * CPU with AMX (``amx_bf16``): ``"bf16"`` autocast, the bf16 matrix units run it
      several times faster than fp32.
    * any other CPU: ``"int8"``, Linear layers with int8 weights and per-token dynamic
      int8 activations (:func:`quantize_int8`). This includes CPUs with only
      ``avx512_bf16``: on the development machine (Intel, AVX512-BF16 and AVX512-FP16, no
      AMX) bf16 autocast ran *slower* than fp32 and int8 about twice as fast
      (``benchmarks/precision_bench.py``). Where torch lacks the int8 product, ``"fp32"``.
    * other devices (MPS, ...): ``"fp32"``.

    Every mode but fp32 passes the fidelity gate (:mod:`~clinicalbert_spark.encode.fidelity`)
    against fp32 on real sentences. Explicit values are honoured, except ``"int8"`` off
    CPU (the int8 layers are written for CPU): ``ValueError``.
    """
    if precision not in ENCODE_PRECISIONS:
        raise ValueError(f"precision must be one of {ENCODE_PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision 'int8' runs on CPU only, not on {device}")
        if not _int8_engine_available():
            raise ValueError("precision 'int8': this torch build has no CPU int8 matrix product")
        return "int8"
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type != "cpu":
        return "fp32"
    if cpu_has_amx_bf16():
        return "bf16"
    return "int8" if _int8_engine_available() else "fp32"


def autocast_dtype(mode: str) -> torch.dtype:
    """The autocast dtype of a resolved mode (fp32, i.e. no autocast, for ``"int8"``)."""
    return _DTYPES[mode]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose Linear layers run in int8 (:mod:`~clinicalbert_spark.encode.int8`).

    Per-token activation scales and per-channel weight scales; ``model`` is left untouched.
    """
    from .int8 import quantize_linears

    return quantize_linears(model)
