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
# Names are imported on first use (PEP 562): the error classes and pure batching helpers
# do not pull in torch, so a segment-only driver or a CLI error path starts fast.
_WHERE = {
    "plan_batches": "batching",
    "window_starts": "batching",
    "cache_info": "cache",
    "clear_cache": "cache",
    "get_cached": "cache",
    "load_count": "cache",
    "ENCODE_PRECISIONS": "device",
    "resolve_device": "device",
    "resolve_encode_precision": "device",
    "resolve_precision": "device",
    "EncodeResult": "encoder",
    "EncoderConfig": "encoder",
    "SentenceEncoder": "encoder",
    "EncodeError": "errors",
    "MissingModelFileError": "errors",
    "ModelLoadError": "errors",
    "ModelNotAvailableError": "errors",
    "PickleCheckpointError": "errors",
    "TaskMismatchError": "errors",
    "MIN_MEAN_COSINE": "fidelity",
    "MIN_NN_OVERLAP": "fidelity",
    "NN_K": "fidelity",
    "FidelityReport": "fidelity",
    "check_fidelity": "fidelity",
    "fidelity_report": "fidelity",
    "nn_overlap": "fidelity",
    "row_cosines": "fidelity",
    "DEFAULT_MODEL": "model",
    "TASKS": "model",
    "LoadedModel": "model",
    "detect_task": "model",
    "load_model": "model",
    "Entity": "predict",
    "FillMaskResult": "predict",
    "MaskPrediction": "predict",
    "Predictor": "predict",
    "SequenceClassification": "predict",
    "TokenCandidate": "predict",
    "TokenClassification": "predict",
    "EncodeStats": "runtime",
}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))


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
