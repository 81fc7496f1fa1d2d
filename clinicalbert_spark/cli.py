"""Shared plumbing of the spark-submit entry points in ``jobs/``.

:func:`run_job` turns every failure into one line on stderr and a documented exit code
(:mod:`clinicalbert_spark.errors`): an operator error prints its message; anything else
(a Spark or py4j error, a bug) prints only its type and Spark's error condition, never its
message, which can quote data values (note text is PHI). ``CBS_DEBUG=1`` re-raises instead.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
from typing import Any, Callable

from .config import ConfigError, PipelineConfig, load_config
from .encode.errors import EncodeError
from .errors import (EXIT_FAILURE, EXIT_MODEL, InputError, OperatorError, OutputError)
from .logs import debug_enabled, setup_logging

log = logging.getLogger("clinicalbert_spark.jobs")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM

DEBUG_HINT = "run with CBS_DEBUG=1 for the full trace (it may contain note text)"

COMMON_ALIASES = {
    "--input": "input.path",
    "--input-format": "input.format",
    "--output-format": "output.format",
    "--no-text": None,  # handled as segment.include_text=false
    "--master": "spark.master",
    "--remote": "spark.remote",
    "--run-id": "run.run_id",
    "--allow-pickle": "encode.allow_pickle",
}

# Spark error conditions whose cause is clear when they concern the input: exit 3.
_INPUT_CONDITIONS = ("PATH_NOT_FOUND", "FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER",
                     "UNABLE_TO_INFER_SCHEMA", "CANNOT_READ_FILE", "MALFORMED_RECORD_IN_PARSING",
                     "INCOMPATIBLE_DATA_FOR_TABLE", "PARQUET_COLUMN_DATA_TYPE_MISMATCH",
                     "DATA_SOURCE_NOT_FOUND", "CANNOT_DETECT_FORMAT")
# ... and when they concern the output: exit 4.
_OUTPUT_CONDITIONS = ("PATH_ALREADY_EXISTS", "TASK_WRITE_FAILED", "UNABLE_TO_CREATE_DIRECTORY",
                      "CANNOT_WRITE_FILE")
# Java file-system errors (no condition) that name a path: an unwritable/unreadable location.
_FS_ERRORS = ("ParentNotDirectoryException", "FileAlreadyExistsException",
              "AccessDeniedException", "AccessControlException", "FileNotFoundException",
              "NoSuchFileException", "NotDirectoryException", "PathIsNotDirectoryException",
              "PathIsNotEmptyDirectoryException", "DirectoryNotEmptyException")

_CONDITION_AT_START = re.compile(r"^\s*(?:[\w.$]+: )?\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\]")
_EXC_NAME_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning))(?::|$)")
_PATH_IN_TEXT = re.compile(r"(?:[a-z][a-z0-9+.-]*:)?/[^\s'\"`,;]+")


def one_line(message: str) -> str:
    """Fold a multi-line message into one line ("invalid configuration: a: ...; b: ...")."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    if not parts:
        return ""
    out = parts[0]
    for p in parts[1:]:
        out += (" " if out.endswith((":", ".", ",", ";")) else "; ") + p
    return out


def run_job(main: Callable[[PipelineConfig], int], argv: list[str] | None, aliases: dict,
            description: str) -> int:
    """Parse flags into a config, run ``main``; every failure is one line and an exit code."""
    setup_logging()
    debug = debug_enabled()
    cfg: PipelineConfig | None = None
    spark_calls = _spark_calls()
    previous_sigterm = _exit_on_sigterm()
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        if "--no-text" in argv:  # the PHI switch deserves its own short flag
            argv = [a for a in argv if a != "--no-text"] + ["--no-segment.include_text"]
        flags = {k: v for k, v in {**COMMON_ALIASES, **aliases}.items() if v}
        cfg = load_config(argv, aliases=flags, description=description)
        from .io import absolute_paths

        cfg = absolute_paths(cfg)
        check_output_location(cfg)
        return main(cfg)
    except KeyboardInterrupt:
        if debug:
            raise
        _print("error: interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        if debug:
            raise
        _print("error: terminated (SIGTERM)")
        return EXIT_TERMINATED
    except Exception as e:  # noqa: BLE001 - the one place every failure is reported
        if debug:
            raise
        code, line = describe_error(e, cfg, used_spark=_spark_calls() != spark_calls)
        _print(line)
        return code
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler stopping the job)."""


def _exit_on_sigterm():
    """Turn SIGTERM into an exception so that the job unwinds and exits normally: atexit
    handlers stop Spark and delete the private scratch folder (a plain SIGTERM kills Python
    without running them). Returns the handler to restore, or None when left alone."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return None  # someone (a notebook, a framework) already handles it

    def handler(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    return previous


def _print(line: str) -> None:
    try:
        sys.stdout.flush()  # the summary (stdout) before the error, when both go to a terminal
    except Exception:  # noqa: BLE001
        pass
    print(line, file=sys.stderr, flush=True)


def describe_error(e: BaseException, cfg: PipelineConfig | None = None,
                   used_spark: bool = True) -> tuple[int, str]:
    """(exit code, one stderr line) for an exception escaping a job.

    Messages are printed only for this package's own errors (they name paths, columns and
    settings), and for any error raised before the job asked for Spark (``used_spark``
    False: no note has been read yet); otherwise the line names the error's type and
    Spark's error condition, never its message.
    """
    if isinstance(e, OperatorError):
        return e.exit_code, f"error: {one_line(str(e))}"
    if isinstance(e, EncodeError):
        return EXIT_MODEL, f"error: {one_line(str(e))}"
    info = spark_error_info(e)
    mapped = _operator_error_for(info, cfg)
    if mapped is not None:
        return mapped.exit_code, f"error: {one_line(str(mapped))}"
    if not used_spark and not info["java_chain"]:
        # No note has been read before the job asks for Spark: the message names flags,
        # paths and models.
        return EXIT_FAILURE, f"error: {type(e).__name__}: {one_line(str(e))}"
    what = info["name"]
    if info["java_class"]:
        what += f" ({info['java_class']})"
    if info["condition"]:
        what += f" [{info['condition']}]"
    if info["python_error"]:
        what += f", raised {info['python_error']} in a Spark task"
    return EXIT_FAILURE, f"error: unexpected {what}; {DEBUG_HINT}"


def _spark_calls() -> int:
    """get_spark calls so far in this process: every job reads its data through Spark."""
    mod = sys.modules.get("clinicalbert_spark.spark.session")
    return mod.sessions_handed_out() if mod is not None else 0


# --------------------------------------------------------------------------------------------
# What a Spark / py4j error is, without reading out its message


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the JVM may be gone; the answer is then unknown
        return None


def _condition_of_text(text: str | None) -> str | None:
    m = _CONDITION_AT_START.match(text or "")
    return m.group(1) if m else None


def _java_info(je: Any) -> tuple[str | None, str | None, dict, list[str]]:
    """(java class, condition, message parameters, java classes of the cause chain)."""
    from py4j.java_gateway import is_instance_of
    from pyspark import SparkContext

    gw = SparkContext._gateway
    java_class, condition, params, chain = None, None, {}, []
    cur, depth = je, 0
    while cur is not None and depth < 8:
        name = _safe(lambda: cur.getClass().getName())
        if name:
            chain.append(name)
            java_class = java_class or name
        if condition is None and gw is not None and _safe(
                lambda: is_instance_of(gw, cur, "org.apache.spark.SparkThrowable")):
            condition = _safe(lambda: cur.getCondition()) or _safe(lambda: cur.getErrorClass())
            if condition:
                params = _safe(lambda: dict(cur.getMessageParameters())) or {}
        if condition is None:
            condition = _condition_of_text(_safe(lambda: cur.getMessage()))
        cur, depth = _safe(lambda: cur.getCause()), depth + 1
    return java_class, condition, params, chain


def spark_error_info(e: BaseException) -> dict:
    """Type, Spark condition, message parameters and Java class of an error, message unread.

    ``params`` hold Spark's message parameters (e.g. the path of PATH_NOT_FOUND); they are
    used to map an error to an operator error, never printed whole.
    """
    info: dict = {"name": type(e).__name__, "condition": None, "params": {},
                  "java_class": None, "java_chain": [], "python_error": None}
    try:
        from py4j.protocol import Py4JJavaError
    except ImportError:  # pragma: no cover - pyspark always brings py4j
        Py4JJavaError = ()  # type: ignore[assignment,misc]
    try:
        from pyspark.errors import PySparkException
    except ImportError:  # pragma: no cover
        PySparkException = ()  # type: ignore[assignment,misc]

    if isinstance(e, PySparkException):
        getter = getattr(e, "getCondition", None) or getattr(e, "getErrorClass", None)
        info["condition"] = _safe(getter) if getter else None
        info["params"] = _safe(e.getMessageParameters) or {}
        origin = getattr(e, "_origin", None)
        if origin is not None:
            jc, cond, params, chain = _java_info(origin)
            info["java_chain"] = chain
            info["condition"] = info["condition"] or cond
            info["params"] = info["params"] or params
        if type(e).__name__ == "PythonException":
            info["python_error"] = _python_error_name(_safe(lambda: e._desc) or "")
    elif isinstance(e, Py4JJavaError):
        je = getattr(e, "java_exception", None)
        if je is not None:
            jc, cond, params, chain = _java_info(je)
            info.update(java_class=jc, condition=cond, params=params, java_chain=chain)
            if any(c.endswith("api.python.PythonException") for c in chain):
                info["python_error"] = _python_error_name(
                    _safe(lambda: je.getCause().getMessage()) or "")
    return info


def _python_error_name(traceback_text: str) -> str | None:
    """The exception type on the last line of a Python worker's traceback ('RuntimeError')."""
    for line in reversed(traceback_text.splitlines()):
        m = _EXC_NAME_LINE.match(line.strip())
        if m:
            return m.group(1).rsplit(".", 1)[-1]
    return None


# --------------------------------------------------------------------------------------------
# Spark errors whose cause the operator can fix


def _norm(path: str | None) -> str | None:
    if not path:
        return None
    p = str(path).strip()
    if p.startswith("file:"):
        p = "/" + p[len("file:"):].lstrip("/")
    if "://" not in p:
        p = os.path.abspath(p)
    return p.rstrip("/") or "/"


def _under(path: str | None, base: str | None) -> bool:
    a, b = _norm(path), _norm(base)
    return bool(a and b) and (a == b or a.startswith(b.rstrip("/") + "/"))


def _paths_of(info: dict) -> list[str]:
    return [str(v) for k, v in (info.get("params") or {}).items()
            if "path" in k.lower() or "file" in k.lower() or "dir" in k.lower()]


def _operator_error_for(info: dict, cfg: PipelineConfig | None) -> OperatorError | None:
    if cfg is None:
        return None
    cond = info["condition"] or ""
    top = cond.split(".", 1)[0]
    paths = _paths_of(info)
    inputs = [p for p in (cfg.input.path,) if p]
    outputs = [p for p in (cfg.output.root, cfg.output.path) if p]
    if top in _INPUT_CONDITIONS or cond in _INPUT_CONDITIONS:
        where = next((p for p in paths if any(_under(p, i) for i in inputs)), None)
        if where is not None:
            if top == "PATH_NOT_FOUND":
                return InputError(f"input not found: {cfg.input.path} [{cond}]")
            shown = f" (file {_norm(where)})" if _norm(where) != _norm(cfg.input.path) else ""
            return InputError(f"input {cfg.input.path} cannot be read{shown} [{cond}]; "
                              f"check the path and --input-format ({cfg.input.format})")
    if top in _OUTPUT_CONDITIONS or cond in _OUTPUT_CONDITIONS:
        where = next((p for p in paths if any(_under(p, o) for o in outputs)), None)
        if where is not None:
            return OutputError(f"cannot write the output under {_norm(where)} [{cond}]")
    simple = [c.rsplit(".", 1)[-1] for c in info.get("java_chain") or []]
    fs_error = next((c for c in simple if c in _FS_ERRORS), None)
    if fs_error:
        bad = _bad_output_location(outputs)
        if bad:
            return OutputError(f"{bad} ({fs_error})")
    return None


def _bad_output_location(outputs: list[str]) -> str | None:
    """Why a local output root/path cannot hold tables, or None (remote or fine)."""
    for out in outputs:
        p = _norm(out)
        if not p or "://" in p:
            continue
        cur = p
        while cur and not os.path.lexists(cur):
            parent = os.path.dirname(cur)
            if parent == cur:
                break
            cur = parent
        if not cur or not os.path.lexists(cur):
            continue
        if not os.path.isdir(cur):
            return (f"output {out} is not a folder: {cur} is a file"
                    if cur != p else f"output {out} is a file, not a folder")
        if not os.access(cur, os.W_OK | os.X_OK):
            return f"output {out} cannot be written: no write permission on {cur}"
    return None


def check_output_location(cfg: PipelineConfig) -> None:
    """Refuse, before Spark starts, a local output that is a file or under a file (exit 4)."""
    outputs = [p for p in (cfg.output.root, cfg.output.path) if p]
    bad = _bad_output_location(outputs)
    if bad:
        raise OutputError(bad)


def pop_flag(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return VALUE (job-only flags)."""
    if flag in argv:
        i = argv.index(flag)
        if i + 1 >= len(argv):
            print(f"error: {flag} needs a value", file=sys.stderr)
            raise SystemExit(2)  # a usage error, like argparse's
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return None
