"""Logging set-up for the jobs. Log lines carry counts and ids, never note text (PHI)."""
from __future__ import annotations

import logging
import os
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest and notebooks swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging(level: str | None = None) -> None:
    level = level or os.environ.get("CBS_LOG_LEVEL", "INFO")
    root = logging.getLogger("clinicalbert_spark")
    if root.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    # transformers/py4j chatter is not ours to print at INFO.
    for noisy in ("py4j", "transformers", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug_enabled():
        quiet_spark_python_loggers()


def debug_enabled() -> bool:
    """CBS_DEBUG=1: jobs re-raise errors (full traces) and Spark keeps its own logging."""
    return os.environ.get("CBS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


# PySpark logs a failed query's message and Python trace as JSON (these loggers have their own
# stderr handler); py4j logs connection failures with a trace. Either can quote data values,
# and jobs report every error as one line: they stay silent unless CBS_DEBUG=1.
_PYSPARK_ERROR_LOGGERS = ("DataFrameQueryContextLogger", "SQLQueryContextLogger")


def quiet_spark_python_loggers() -> None:
    logging.getLogger("py4j").setLevel(logging.CRITICAL + 1)
    try:
        from pyspark.logger import PySparkLogger
    except ImportError:  # pragma: no cover - pyspark < 4 has no such loggers
        return
    for name in _PYSPARK_ERROR_LOGGERS:
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL + 1)
