"""Pure-torch encoder library for Bio_ClinicalBERT-style models (no Spark code).

Public API used by the Spark glue::

    from clinicalbert_spark.encode import (
        load_model, LoadedModel, detect_task, resolve_device,
        resolve_encode_precision, check_fidelity,
        EncoderConfig, SentenceEncoder, EncodeResult, EncodeStats,
        Predictor, get_cached, load_count,
    )

See ``docs/encoding.md`` for the design (batching, windowing, numerics).
"""
from .batching import plan_batches, window_starts
from .cache import cache_info, clear_cache, get_cached, load_count
from .device import ENCODE_PRECISIONS, resolve_device, resolve_encode_precision, resolve_precision
from .encoder import EncodeResult, EncoderConfig, SentenceEncoder
from .errors import (
    EncodeError,
    MissingModelFileError,
    ModelLoadError,
    ModelNotAvailableError,
    PickleCheckpointError,
    TaskMismatchError,
)
from .fidelity import (
    MIN_MEAN_COSINE,
    MIN_NN_OVERLAP,
    NN_K,
    FidelityReport,
    check_fidelity,
    fidelity_report,
    nn_overlap,
    row_cosines,
)
from .model import DEFAULT_MODEL, TASKS, LoadedModel, detect_task, load_model
from .predict import (
    Entity,
    FillMaskResult,
    MaskPrediction,
    Predictor,
    SequenceClassification,
    TokenCandidate,
    TokenClassification,
)
from .runtime import EncodeStats

__all__ = [
    "DEFAULT_MODEL",
    "TASKS",
    "load_model",
    "LoadedModel",
    "detect_task",
    "resolve_device",
    "resolve_precision",
    "resolve_encode_precision",
    "ENCODE_PRECISIONS",
    "FidelityReport",
    "check_fidelity",
    "fidelity_report",
    "nn_overlap",
    "row_cosines",
    "MIN_MEAN_COSINE",
    "MIN_NN_OVERLAP",
    "NN_K",
    "EncoderConfig",
    "SentenceEncoder",
    "EncodeResult",
    "EncodeStats",
    "Predictor",
    "FillMaskResult",
    "MaskPrediction",
    "TokenCandidate",
    "SequenceClassification",
    "TokenClassification",
    "Entity",
    "get_cached",
    "load_count",
    "cache_info",
    "clear_cache",
    "plan_batches",
    "window_starts",
    "EncodeError",
    "ModelLoadError",
    "ModelNotAvailableError",
    "MissingModelFileError",
    "PickleCheckpointError",
    "TaskMismatchError",
]
