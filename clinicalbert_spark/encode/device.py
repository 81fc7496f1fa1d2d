"""Device and numeric-precision selection.

Kept free of Spark imports at module level: ``pyspark`` is imported lazily and
optionally so the encoder runs (and is tested) without Spark installed.
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import ContextManager

import torch

__all__ = ["resolve_device", "resolve_precision", "autocast_context", "spark_gpu_address"]

logger = logging.getLogger(__name__)

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    """Return the compute dtype for ``precision`` on ``device``.

    ``"auto"`` is bf16 on a GPU that supports it (Ampere and newer), fp16 on
    older GPUs, and fp32 on CPU (CPU autocast gains little for BERT-base and
    costs accuracy). Explicit values are honoured on any device.
    """
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
