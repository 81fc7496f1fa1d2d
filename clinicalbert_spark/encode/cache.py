"""Process-wide object cache (one model load per Python worker).

Spark reuses Python workers across tasks (``spark.python.worker.reuse``,
on by default), so caching the loaded model in a module global means it is
loaded once per worker process, not once per partition or Arrow batch, the
same idea as ``pyspark.ml.functions.predict_batch_udf``'s model cache.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, Hashable

__all__ = ["get_cached", "load_count", "cache_info", "clear_cache"]

_lock = threading.Lock()
_values: dict[Hashable, Any] = {}
_key_locks: dict[Hashable, threading.Lock] = {}
_loads: Counter = Counter()
_hits: Counter = Counter()


def get_cached(key: Hashable, factory: Callable[[], Any]) -> Any:
    """Return the object cached under ``key``, building it with ``factory()`` once.

    Parameters
    ----------
    key : hashable
        E.g. ``("encoder", model_id, revision, device, config)``.
    factory : callable
        Called with no argument, only on a miss. If it raises, nothing is
        cached and the next call tries again.

    Notes
    -----
    Thread-safe: concurrent callers with the same key wait for a single
    factory call (per-key lock, so a slow load of one key does not block
    other keys).
    """
    with _lock:
        if key in _values:
            _hits[key] += 1
            return _values[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        with _lock:
            if key in _values:  # another thread built it while we waited
                _hits[key] += 1
                return _values[key]
        value = factory()
        with _lock:
            _values[key] = value
            _loads[key] += 1
        return value


def load_count(key: Hashable) -> int:
    """Number of times ``factory`` ran for ``key`` in this process."""
    with _lock:
        return _loads[key]


def cache_info() -> dict:
    """Snapshot of the cache: ``{"keys": [...], "loads": {...}, "hits": {...}, "pid": int}``."""
    import os

    with _lock:
        return {
            "keys": list(_values),
            "loads": dict(_loads),
            "hits": dict(_hits),
            "pid": os.getpid(),
        }


def clear_cache() -> None:
    """Drop every cached object and counter (tests; freeing GPU memory)."""
    with _lock:
        _values.clear()
        _key_locks.clear()
        _loads.clear()
        _hits.clear()
