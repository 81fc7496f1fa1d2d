"""Spark's scratch files (note text) live in a private folder and do not outlive a kill -9."""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from clinicalbert_spark.config import SparkConfig
from clinicalbert_spark.errors import OutputError
from clinicalbert_spark.spark import session

TOKEN = "QQPLANTEDNOTE5521"


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _host() -> str:
    return session._host()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# --------------------------------------------------------------------------------------------
# In process: where the scratch root is and how it is guarded


def test_scratch_root_config_then_env_then_system_temp(tmp_path, monkeypatch):
    monkeypatch.setenv("CBS_SCRATCH_DIR", str(tmp_path / "env"))
    assert session.scratch_root(SparkConfig(scratch_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert session.scratch_root(SparkConfig()) == tmp_path / "env"
    monkeypatch.delenv("CBS_SCRATCH_DIR")
    import tempfile

    assert session.scratch_root(SparkConfig()) == (
        Path(tempfile.gettempdir()) / f"clinicalbert-spark-{os.getuid()}")


def test_private_dir_is_made_0700_and_a_loose_one_is_tightened(tmp_path):
    new = tmp_path / "a" / "b"
    session.ensure_private_dir(new)
    assert _mode(new) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o777)
    session.ensure_private_dir(loose)
    assert _mode(loose) == 0o700


def test_private_dir_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 4242)
    with pytest.raises(OutputError, match="owned by another user"):
        session.ensure_private_dir(d)
    f = tmp_path / "file"
    f.write_text("")
    monkeypatch.undo()
    with pytest.raises(OutputError, match="not a folder"):
        session.ensure_private_dir(f)


def test_only_dead_processes_of_this_host_are_swept(tmp_path):
    host, dead = _host(), _dead_pid()
    stale = tmp_path / f"{host}-{dead}-0a1b2c3d"
    live = tmp_path / f"{host}-{os.getppid()}-0a1b2c3d"
    other_host = tmp_path / f"{host}x-{dead}-0a1b2c3d"
    not_ours = tmp_path / "keep-me"
    for d in (stale, live, other_host, not_ours):
        (d / "blockmgr-1").mkdir(parents=True)
    (stale / "blockmgr-1" / "shuffle_0_0_0.data").write_text(TOKEN)
    os.chmod(stale / "blockmgr-1", 0o500)  # a read-only folder inside does not stop the sweep
    assert session.remove_stale_scratch(tmp_path) == 1
    assert not stale.exists()
    assert live.exists() and other_host.exists() and not_ours.exists()


# --------------------------------------------------------------------------------------------
# Subprocess: kill -9 a real job, start another


def _segment(csv: Path, out: Path, scratch: Path, **popen):
    env = {k: v for k, v in os.environ.items() if k not in ("CBS_SCRATCH_DIR", "CBS_DEBUG")}
    env["PYTHONUNBUFFERED"] = "1"
    args = [sys.executable, str(ROOT / "jobs" / "segment_notes.py"), "--input", str(csv),
            "--output", str(out), "--master", "local[1]", "--spark.scratch_dir", str(scratch),
            "--set", "spark.conf.spark.ui.enabled=false"]
    return args, env


def _files_holding(root: Path, token: bytes) -> list[Path]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            try:
                if token in p.read_bytes():
                    hits.append(p)
            except OSError:
                pass
    return hits


def test_killed_job_leaves_scratch_that_the_next_start_removes(tmp_path):
    csv = tmp_path / "notes.csv"
    body = f"Patient {TOKEN} was seen. Chest pain resolved. Discharged home."
    csv.write_text("ROW_ID,SUBJECT_ID,HADM_ID,CATEGORY,ISERROR,TEXT\n"
                   + "".join(f'{i},7,8,Nursing,,"{body} Note {i}."\n' for i in range(1, 21)))
    scratch = tmp_path / "scratch"
    args, env = _segment(csv, tmp_path / "out1", scratch)
    # Its own session (process group): kill -9 takes the driver, the JVM and the Python
    # workers at once, as the OOM killer or a lost node does; nobody gets to clean up.
    p = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, start_new_session=True)
    own = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            dirs = [d for d in scratch.glob(f"{_host()}-{p.pid}-*") if d.is_dir()]
            if dirs and list(dirs[0].glob("blockmgr-*")):
                own = dirs[0]
                break
            time.sleep(0.2)
        assert own is not None, "the job never started Spark in its scratch folder"
        assert _mode(scratch) == 0o700 and _mode(own) == 0o700
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        err = p.stderr.read().decode(errors="replace")
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    time.sleep(0.5)
    assert own.exists(), "kill -9 should leave the folder behind"
    assert f"scratch folder {own}" in err  # the one log line naming it

    args, env = _segment(csv, tmp_path / "out2", scratch)
    q = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    assert "removed 1 folder(s) left by killed runs" in q.stderr
    assert TOKEN not in q.stdout + q.stderr
    assert not own.exists()
    assert _mode(scratch) == 0o700
    assert list(scratch.iterdir()) == [], "the second run's own folder outlived it"
    assert _files_holding(scratch, TOKEN.encode()) == []
    import pandas as pd

    assert pd.read_parquet(tmp_path / "out2").text.str.contains(TOKEN).any()  # text was there
