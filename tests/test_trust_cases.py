"""Issue "Tables a hospital can trust": one test per case found by running the pipeline the way a
hospital does (the state machine in test_state_model.py covers the combinations).

Each test fails on the pipeline before the state model: duplicated rows after a full
refresh, offsets into changed text, one bad row killing the job, ISERROR from pandas, empty
inputs, two runs at once, run-id collisions, split stages losing rejects, settings missing
from the keys, deletions, and errors that were traces.
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from clinicalbert_spark.config import PipelineConfig
from clinicalbert_spark.errors import ConfigError, OutputError
from clinicalbert_spark.pipeline import Pipeline

TOKEN = "Zqxjv7Phi"  # planted in note text: must never reach a log line or message
GOOD = "History:\nPatient denies chest pain. No fever.\nPlan:\nAspirin daily."


def _cfg(inp, root, model, run_id, **kw):
    data = {"input": {"path": str(inp)},
            "encode": {"model": model, "max_tokens": 512},
            "output": {"root": str(root)}, "run": {"run_id": run_id}}
    for dotted, v in kw.items():
        sec, key = dotted.split("__")
        data.setdefault(sec, {})[key] = v
    return PipelineConfig.model_validate(data)


def _csv(path: Path, rows, header=("ROW_ID", "SUBJECT_ID", "ISERROR", "TEXT"), eol="\n"):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator=eol)
        w.writerow(header)
        for r in rows:
            w.writerow(r)
    return path


def _t(root, name):
    p = Path(root) / name
    return pd.read_parquet(p) if p.is_dir() else pd.DataFrame()


def _job(args, env=None, **kw):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "run_pipeline.py"), *args,
                             "--spark.master", "local[2]",
                             "--set", "spark.conf={spark.ui.enabled: 'false'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=e, cwd=ROOT, **kw)


def _finish(p, timeout=600):
    out, _ = p.communicate(timeout=timeout)
    return p.returncode, out


# 1 -----------------------------------------------------------------------------------------
def test_full_refresh_after_runs_leaves_one_row_per_key(spark, tiny_bert, tmp_path):
    inp = _csv(tmp_path / "n.csv", [(str(i), "7", "0", GOOD) for i in range(4)])
    root = tmp_path / "out"
    Pipeline(_cfg(inp, root, tiny_bert, "r1"), spark).run()
    n = len(_t(root, "sentences"))
    Pipeline(_cfg(inp, root, tiny_bert, "r2", run__full_refresh=True), spark).run()
    for table in ("sentences", "embeddings"):
        df = _t(root, table)
        assert len(df) == n and not df.duplicated(["note_id", "sentence_index"]).any()
        assert set(df.run_id) == {"r2"}  # rebuilt by the refresh
    nv = _t(root, "note_embeddings")
    assert not nv.duplicated(["note_id", "section_category"]).any()


# 2 -----------------------------------------------------------------------------------------
def test_windows_csv_offsets_point_into_the_note_as_stored(spark, tiny_bert, tmp_path):
    notes = {str(i): f"History:\r\nPatient denies chest pain.\r\nNo fever {i}.\r\n\r\n"
                     f"Plan:\r\nAspirin daily." for i in range(3)}
    inp = _csv(tmp_path / "win.csv", [(k, "7", "0", v) for k, v in notes.items()], eol="\r\n")
    with open(inp, newline="", encoding="utf-8") as f:  # the note as Python's csv reads it
        stored = {r["ROW_ID"]: r["TEXT"] for r in csv.DictReader(f)}
    assert "\r\n" in stored["0"]
    root = tmp_path / "out"
    Pipeline(_cfg(inp, root, tiny_bert, "w"), spark).run()
    s = _t(root, "sentences")
    assert len(s) > 0 and all(stored[r.note_id][r.start:r.end] == r.text for r in s.itertuples())
    import hashlib

    for r in s.itertuples():
        assert r.note_hash == hashlib.sha256(stored[r.note_id].encode()).hexdigest()[:32]


# 3, 4, 12 (nanosecond timestamps) ----------------------------------------------------------
def test_pandas_parquet_with_binary_text_float_ids_and_nanos(tiny_bert, tmp_path):
    """One file as pandas writes it: TEXT binary (one row not UTF-8), ISERROR and HADM_ID
    float with NaN, CHARTTIME datetime64[ns]. Run as the job runs, logs captured."""
    texts = [GOOD.encode(), ("Bad bytes \xff\xfe " + TOKEN + " note.").encode("latin-1"),
             (GOOD + " " + TOKEN).encode(), GOOD.replace("fever", "cough").encode()]
    df = pd.DataFrame({
        "ROW_ID": [1.0, 2.0, 3.0, 4.0], "SUBJECT_ID": [10.0, 11.0, 12.0, 13.0],
        "HADM_ID": [100001.0, np.nan, 100003.0, 100004.0],
        "ISERROR": [np.nan, np.nan, 1.0, np.nan],
        "CHARTTIME": pd.to_datetime(["2150-01-01 10:00:00.123456789"] * 4),
        "CATEGORY": ["Nursing"] * 4, "TEXT": texts,
    })
    inp = tmp_path / "notes.parquet"
    df.to_parquet(inp)
    assert pq.read_schema(inp).field("TEXT").type == pa.binary()
    root = tmp_path / "out"
    code, out = _finish(_job(["--input", str(inp), "--output-root", str(root),
                              "--model", tiny_bert, "--stages", "segment,embed"],
                             {"CBS_LOG_LEVEL": "DEBUG"}))
    assert code == 0, out[-3000:]
    s, rej = _t(root, "sentences"), _t(root, "rejects")
    assert set(s.note_id) == {"1", "4"}
    assert dict(zip(rej.note_id, rej.reason)) == {"2": "invalid_utf8", "3": "iserror"}
    assert set(s.hadm_id) == {"100001", "100004"} and set(s.subject_id) == {"10", "13"}
    assert TOKEN not in out


# 6 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", ["", '1,7,0,""\n'], ids=["header_only", "quoted_empty_text"])
def test_empty_input_is_a_successful_run(spark, tiny_bert, tmp_path, body):
    inp = tmp_path / "e.csv"
    inp.write_text("ROW_ID,SUBJECT_ID,ISERROR,TEXT\n" + body)
    root = tmp_path / "out"
    row = Pipeline(_cfg(inp, root, tiny_bert, "e"), spark).run()
    assert row["status"] == "succeeded" and row["sentences"] == 0
    assert row["input_records"] == (1 if body else 0)
    rej = _t(root, "rejects")  # a table with no rows is a folder with no data files
    assert list(rej.get("reason", [])) == (["empty_text"] if body else [])
    assert _t(root, "runs").status.tolist() == ["succeeded"]


# 7 (and a kill -9 in the middle of a run) --------------------------------------------------
def test_two_runs_at_once_and_a_killed_owner(tiny_bert, tmp_path, demo_csv):
    root = tmp_path / "out"
    base = ["--input", str(demo_csv), "--output-root", str(root), "--model", tiny_bert,
            "--stages", "segment,embed"]
    # A holds the lock and pauses after segmenting (as a long embed would).
    a = _job(base + ["--run-id", "a"], {"CBS_INJECT_PAUSE": "after:segment=600"},
             start_new_session=True)
    lock = root / "_state" / "lock"
    for _ in range(600):
        if lock.exists() and (root / "sentences").is_dir() and a.poll() is None:
            break
        time.sleep(0.5)
    assert a.poll() is None, "run A ended early"
    # B, a DAG retry overlapping it, refuses at once with a message naming A (exit 75).
    code_b, out_b = _finish(_job(base + ["--run-id", "b"]))
    assert code_b == 75, out_b[-2000:]
    err = [ln for ln in out_b.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "run id a" in err[0] and "Traceback" not in out_b
    # A dies hard (kill -9) while holding the lock; C waits for the lock, finds its owner
    # gone, repairs and finishes A's work. Exactly one row per key, A recorded as crashed.
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    code_c, out_c = _finish(_job(base + ["--run-id", "c", "--run.lock_wait_s", "60"]))
    assert code_c == 0, out_c[-3000:]
    s, e = _t(root, "sentences"), _t(root, "embeddings")
    assert not s.duplicated(["note_id", "sentence_index"]).any()
    assert len(e) == len(s) and not e.duplicated(["note_id", "sentence_index"]).any()
    runs = _t(root, "runs").set_index("run_id")
    assert runs.loc["a", "status"] == "crashed" and runs.loc["c", "status"] == "succeeded"
    assert "b" not in runs.index
    assert not lock.exists()


# 8 -----------------------------------------------------------------------------------------
def test_run_ids_are_text_and_collisions_are_refused(spark, tiny_bert, tmp_path):
    from clinicalbert_spark.config import load_config

    assert load_config(["--run.run_id", "2024-01-01"]).run.run_id == "2024-01-01"
    inp = _csv(tmp_path / "n.csv", [("1", "7", "0", GOOD)])
    root = tmp_path / "out"
    Pipeline(_cfg(inp, root, tiny_bert, "x/y", run__stages=["segment"]), spark).run()
    Pipeline(_cfg(inp, root, tiny_bert, "x/y", run__stages=["segment"]), spark).run()  # same
    with pytest.raises(ConfigError, match="another run id|different id"):
        Pipeline(_cfg(inp, root, tiny_bert, "x y", run__stages=["segment"]), spark).run()
    runs = _t(root, "runs")
    assert runs.run_id.tolist() == ["x_y"] and runs.run_id_given.tolist() == ["x/y"]
    assert not (root / "_state" / "lock").exists()


# 9 -----------------------------------------------------------------------------------------
# The DAG's split stages keep the segment stage's rejects: tests/test_dag.py
# test_stage_commands_run_in_order_on_demo (the same three applications, on the demo corpus).


# 10 ----------------------------------------------------------------------------------------
def test_a_settings_change_recomputes_every_vector(spark, tiny_bert, tmp_path):
    inp = _csv(tmp_path / "n.csv", [(str(i), "7", "0", GOOD) for i in range(3)])
    root = tmp_path / "out"
    Pipeline(_cfg(inp, root, tiny_bert, "r1"), spark).run()
    e1 = _t(root, "embeddings")
    row = Pipeline(_cfg(inp, root, tiny_bert, "r2", encode__normalize=True), spark).run()
    e2 = _t(root, "embeddings")
    assert row["sentences_embedded"] == len(e1) == len(e2) and row["sentences"] == 0
    assert e2.fingerprint.nunique() == 1 and set(e2.fingerprint).isdisjoint(e1.fingerprint)
    assert np.allclose([np.linalg.norm(v) for v in e2.embedding], 1.0, atol=1e-5)
    nv = _t(root, "note_embeddings")
    assert set(nv.run_id) == {"r2"} and not nv.duplicated(["note_id", "section_category"]).any()
    # ... and back: the old settings are not "still there", they are recomputed again.
    Pipeline(_cfg(inp, root, tiny_bert, "r3"), spark).run()
    e3 = _t(root, "embeddings").set_index(["note_id", "sentence_index"]).sort_index()
    e1 = e1.set_index(["note_id", "sentence_index"]).sort_index()
    assert set(e3.run_id) == {"r3"}
    np.testing.assert_allclose(np.stack(e3.embedding), np.stack(e1.embedding), atol=1e-6)


# 11 ----------------------------------------------------------------------------------------
def test_snapshot_deletes_and_the_partial_snapshot_guard(spark, tiny_bert, tmp_path):
    rows = [(str(i), "7", "0", GOOD + f" Note {i}.") for i in range(4)]
    root = tmp_path / "out"
    Pipeline(_cfg(_csv(tmp_path / "a.csv", rows), root, tiny_bert, "r1"), spark).run()
    # Upsert (the default): a delivery of one note deletes nothing.
    Pipeline(_cfg(_csv(tmp_path / "b.csv", rows[:1]), root, tiny_bert, "r2"), spark).run()
    assert set(_t(root, "sentences").note_id) == {"0", "1", "2", "3"}
    # Snapshot of 3 of 4: note 3 goes from every table.
    Pipeline(_cfg(_csv(tmp_path / "c.csv", rows[:3]), root, tiny_bert, "r3",
                  input__delivery="snapshot"), spark).run()
    for t in ("sentences", "embeddings", "note_embeddings"):
        assert set(_t(root, t).note_id) == {"0", "1", "2"}, t
    # A "snapshot" of 1 of 3 is most likely a partial extract: refused, nothing changed.
    with pytest.raises(OutputError, match="max_delete_fraction"):
        Pipeline(_cfg(_csv(tmp_path / "d.csv", rows[:1]), root, tiny_bert, "r4",
                      input__delivery="snapshot"), spark).run()
    assert set(_t(root, "sentences").note_id) == {"0", "1", "2"}
    assert _t(root, "runs").set_index("run_id").loc["r4", "status"] == "failed"


# 12 ----------------------------------------------------------------------------------------
def test_output_root_that_is_a_file(spark, tiny_bert, tmp_path):
    inp = _csv(tmp_path / "n.csv", [("1", "7", "0", GOOD)])
    root = tmp_path / "afile"
    root.write_text("not a folder")
    with pytest.raises(OutputError, match="is a file"):
        Pipeline(_cfg(inp, root, tiny_bert, "r"), spark).run()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(),
                    reason="needs root to run the job as an unprivileged user")
def test_read_only_output_root_is_one_line(tmp_path):
    """Root ignores permission bits, so the job runs as nobody against a 0555 folder."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cbs-ro-"))
    try:
        base.chmod(0o755)
        inp = _csv(base / "n.csv", [("1", "7", "0", GOOD + " " + TOKEN)])
        inp.chmod(0o644)
        root = base / "out"
        root.mkdir(mode=0o555)
        root.chmod(0o555)
        scratch = base / "scratch"
        scratch.mkdir()
        shutil.chown(scratch, 65534, 65534)
        env = dict(os.environ, HOME=str(base), PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(ROOT), CBS_SCRATCH_DIR=str(scratch))
        env.pop("TMPDIR", None)
        p = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             str(ROOT / "jobs" / "run_pipeline.py"), "--input", str(inp), "--output-root",
             str(root), "--stages", "segment", "--spark.master", "local[1]",
             "--spark.scratch_dir", str(scratch),
             "--set", "spark.conf={spark.ui.enabled: 'false'}"],
            capture_output=True, text=True, env=env, cwd=str(base), timeout=600)
        assert p.returncode == 4, p.stderr[-2000:]
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert len(err) == 1 and "permission" in err[0], p.stderr[-2000:]
        assert "Traceback" not in p.stderr and TOKEN not in p.stdout + p.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
