"""Every job failure is one line on stderr with a documented exit code, and never quotes data.

The subprocess cases run the real entry points; all but one fail before Spark starts (cheap).
The in-process cases classify real Spark errors raised on the shared session.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from clinicalbert_spark import cli
from clinicalbert_spark.config import PipelineConfig
from clinicalbert_spark.encode.errors import MissingModelFileError
from clinicalbert_spark.errors import (ConfigError, InputError, LockedError, OperatorError,
                                       OutputError)

TOKEN = "ZQXPLANTED7731"  # a note-text value that must never reach the logs
JAVA_TRACE = re.compile(r"^\s+at [\w.$]+\(|^Caused by: |^\s+\.\.\. \d+ more|^Traceback ")


def _job(script: str, args: list[str], **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("CBS_DEBUG", "CBS_LOG_LEVEL")}
    full.update(PYTHONUNBUFFERED="1", **env)
    return subprocess.run([sys.executable, str(ROOT / "jobs" / script), *args],
                          capture_output=True, text=True, env=full, timeout=300, cwd=ROOT)


def _last_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert "error:" in last, p.stderr[-2000:]
    return last


def _assert_clean(p: subprocess.CompletedProcess) -> None:
    """No planted data and no Python or Java trace anywhere on stdout or stderr."""
    out = p.stdout + p.stderr
    assert TOKEN not in out, "planted note text reached the logs"
    traces = [x for x in p.stderr.splitlines() if JAVA_TRACE.match(x)]
    assert not traces, traces[:5]


# --------------------------------------------------------------------------------------------
# Subprocess: fails before Spark starts


def test_bad_flag_value_is_exit_2_on_one_line():
    p = _job("run_pipeline.py", ["--stages", "segment,nope", "--encode.max_length", "4"])
    assert p.returncode == 2
    last = _last_error_line(p)
    assert last.startswith("error: invalid configuration:")
    assert "run.stages" in last and "encode.max_length" in last  # both problems, one line
    assert len([x for x in p.stderr.splitlines() if x.strip()]) == 1
    _assert_clean(p)


def test_output_root_that_is_a_file_is_exit_4(tmp_path):
    f = tmp_path / "root"
    f.write_text(TOKEN)
    p = _job("run_pipeline.py", ["--input", str(tmp_path), "--output-root", str(f),
                                 "--stages", "segment"])
    assert p.returncode == 4
    assert _last_error_line(p) == f"error: output {f} is a file, not a folder"
    assert p.stderr.strip().count("\n") == 0  # nothing else: Spark never started
    _assert_clean(p)


def test_missing_model_is_exit_5(tmp_path):
    p = _job("run_pipeline.py", ["--input", str(tmp_path), "--output-root", str(tmp_path / "o"),
                                 "--model", str(tmp_path / "nope")])
    assert p.returncode == 5
    assert _last_error_line(p).startswith("error: model path")
    _assert_clean(p)


def test_missing_output_flag_is_exit_2(tmp_path):
    p = _job("segment_notes.py", ["--input", str(tmp_path)])  # no --output
    assert p.returncode == 2
    assert _last_error_line(p) == "error: no output given (--output PATH)"
    assert len([x for x in p.stderr.splitlines() if x.strip()]) == 1
    _assert_clean(p)


# --------------------------------------------------------------------------------------------
# Subprocess: a Spark failure (starts a JVM)


def test_unreadable_input_is_exit_3_one_line_no_java_trace(tmp_path):
    """A folder holding a file that looks like Parquet but is not: Spark fails reading its
    footer inside a task.

    Before: ~300 stderr lines (Java traces from the executor log, the "Lost task" warning and
    py4j, then a Python trace). Now: Spark's one-line log events and one error line.
    """
    bad = tmp_path / "notes"
    bad.mkdir()
    # Parquet's magic bytes at both ends, note text and a bogus footer in between.
    body = f"ROW_ID,TEXT 1,{TOKEN} has chest pain ".encode() * 3
    (bad / "part-0.parquet").write_bytes(b"PAR1" + body + struct.pack("<i", 40) + b"PAR1")
    p = _job("segment_notes.py", ["--input", str(bad), "--output", str(tmp_path / "o"),
                                  "--master", "local[1]",
                                  "--set", "spark.conf.spark.ui.enabled=false",
                                  "--spark.scratch_dir", str(tmp_path / "scratch")])
    assert p.returncode == 3, p.stderr[-3000:]
    last = _last_error_line(p)
    assert last.startswith("error: ") and str(bad) in last and "FAILED_READ_FILE" in last
    _assert_clean(p)
    assert len(p.stderr.splitlines()) < 25, p.stderr


# --------------------------------------------------------------------------------------------
# In process: the classification itself


@pytest.mark.parametrize("exc, code", [
    (ConfigError("invalid configuration:\n  a.b: bad\n  c: worse"), 2),
    (InputError("input not found: /x"), 3),
    (OutputError("output /o is a file"), 4),
    (LockedError("output root /o is locked by pid 1"), 75),
    (OperatorError("something the operator can fix"), 1),
    (MissingModelFileError("model directory /m has no config.json\nsee docs"), 5),
])
def test_operator_errors_print_their_message_on_one_line(exc, code):
    got, line = cli.describe_error(exc)
    assert got == code
    assert "\n" not in line and line.startswith("error: ")
    assert line == "error: " + cli.one_line(str(exc))


def test_one_line_folds_lists():
    assert (cli.one_line("invalid configuration:\n  a: x\n  b: y")
            == "invalid configuration: a: x; b: y")
    assert cli.one_line("not cached.\nDownload it, e.g.\n  hf download m\n") == (
        "not cached. Download it, e.g. hf download m")


def test_interrupt_is_130_and_debug_reraises(monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    def boom(cfg):
        raise RuntimeError(f"value {TOKEN}")

    calls = iter(range(100))
    monkeypatch.setattr(cli, "_spark_calls", lambda: next(calls))  # as if main used Spark
    assert cli.run_job(interrupted, [], {}, "t") == 130
    assert cli.run_job(boom, [], {}, "t") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: interrupted"
    assert TOKEN not in err and "error: unexpected RuntimeError; run with CBS_DEBUG=1" in err
    # raised before the job asked for Spark: no data read yet, the message is kept
    assert cli.describe_error(ValueError("no output given"), used_spark=False) == (
        1, "error: ValueError: no output given")
    monkeypatch.setenv("CBS_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.run_job(boom, [], {}, "t")


def test_sigterm_unwinds_the_job_and_exits_143(capsys):
    import signal

    def stopped(cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt the job")

    before = signal.getsignal(signal.SIGTERM)
    assert cli.run_job(stopped, [], {}, "t") == 143
    assert capsys.readouterr().err.strip() == "error: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("no error raised")


def test_spark_errors_name_class_and_condition_never_data(spark):
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(f"{TOKEN} 12",)], "text STRING")

    cast = _raised(lambda: df.select(F.col("text").cast("int")).collect())
    code, line = cli.describe_error(cast)
    assert code == 1 and "[CAST_INVALID_INPUT]" in line and TOKEN not in line
    assert TOKEN in str(cast)  # Spark's own message does quote the value

    @F.udf("string")
    def explode_on(t):
        raise ValueError(f"cannot parse {t}")

    udf = _raised(lambda: df.select(explode_on("text")).collect())
    code, line = cli.describe_error(udf)
    assert code == 1 and "raised ValueError in a Spark task" in line and TOKEN not in line
    assert "CBS_DEBUG=1" in line and "\n" not in line


def test_path_not_found_on_input_is_an_input_error(spark, tmp_path):
    cfg = PipelineConfig.model_validate({"input": {"path": str(tmp_path / "gone")},
                                         "output": {"root": str(tmp_path / "o")}})
    e = _raised(lambda: spark.read.parquet(str(tmp_path / "gone")))
    code, line = cli.describe_error(e, cfg)
    assert code == 3 and line.startswith(f"error: input not found: {tmp_path / 'gone'}")
    # the same condition elsewhere stays an unexpected failure
    other = PipelineConfig.model_validate({"input": {"path": str(tmp_path / "in")}})
    code, line = cli.describe_error(e, other)
    assert code == 1 and "[PATH_NOT_FOUND]" in line


def test_java_file_system_error_under_the_output_is_an_output_error(tmp_path):
    class FakeJava:  # a Py4JJavaError's java_exception, as far as describe_error looks
        _target_id = "o1"

        def getClass(self):
            return self

        def getName(self):
            return "org.apache.hadoop.fs.ParentNotDirectoryException"

        def getMessage(self):
            return f"Parent path is not a directory: {tmp_path}/root"

        def getCause(self):
            return None

    from py4j.protocol import Py4JJavaError

    e = Py4JJavaError("An error occurred while calling o1.parquet.\n", FakeJava())
    (tmp_path / "root").write_text("")
    cfg = PipelineConfig.model_validate({"output": {"root": str(tmp_path / "root" / "x")}})
    code, line = cli.describe_error(e, cfg)
    assert code == 4 and "is a file" in line and "ParentNotDirectoryException" in line
