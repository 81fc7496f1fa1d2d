"""The whole pipeline: tables, runs accounting, incremental re-runs, idempotency, recovery."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from conftest import ROOT, read_csv_notes
from clinicalbert_spark.config import PipelineConfig
from clinicalbert_spark.pipeline import Pipeline


def _cfg(notes, root, model, run_id, fmt="parquet", **run):
    return PipelineConfig.model_validate({
        "input": {"path": str(notes)},
        "encode": {"model": model, "pooling": "mean", "max_tokens": 512},
        "output": {"root": str(root), "format": fmt},
        "run": {"run_id": run_id, "stages": ["segment", "embed", "aggregate"], **run},
    })


def _table(root, name, fmt):
    p = Path(root) / name
    if fmt == "delta":
        return DeltaTable(str(p)).to_pandas()
    return pd.read_parquet(p)


def _one_row_per_key(root, fmt):
    s = _table(root, "sentences", fmt)
    e = _table(root, "embeddings", fmt)
    assert not s.duplicated(["note_id", "sentence_index"]).any()
    assert not e.duplicated(["note_id", "sentence_index", "model"]).any()
    assert set(zip(s.note_id, s.sentence_index)) == set(zip(e.note_id, e.sentence_index))
    return s, e


@pytest.fixture()
def notes_csv(tmp_path, demo_csv):
    p = tmp_path / "notes.csv"
    shutil.copy(demo_csv, p)
    return p


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_pipeline_end_to_end_and_incremental(spark, tiny_bert, notes_csv, tmp_path, fmt):
    root = tmp_path / "out"
    r1 = Pipeline(_cfg(notes_csv, root, tiny_bert, "r1", fmt), spark).run()
    assert r1["status"] == "succeeded"
    s, e = _one_row_per_key(root, fmt)
    notes = read_csv_notes(notes_csv)
    assert all(notes[r.note_id][r.start:r.end] == r.text for r in s.itertuples())
    rejects = _table(root, "rejects", fmt)
    assert set(s.note_id) | set(rejects.note_id.dropna()) == set(notes)
    assert r1["input_records"] == r1["notes"] + r1["rejects"]
    assert r1["notes"] == r1["notes_segmented"] + r1["notes_unchanged"] == s.note_id.nunique()
    assert r1["sentences"] == len(s) == r1["sentences_embedded"]
    assert r1["tokens"] == e.n_tokens.sum() and 0 < r1["padding_efficiency"] <= 1
    nv = _table(root, "note_embeddings", fmt)
    assert set(nv[nv.section_category.isna()].note_id) == set(s.note_id)
    runs = _table(root, "runs", fmt)
    assert list(runs.run_id) == ["r1"]

    # Unchanged corpus: nothing new is segmented or encoded, no data rows are added.
    r2 = Pipeline(_cfg(notes_csv, root, tiny_bert, "r2", fmt), spark).run()
    assert r2["notes_segmented"] == 0 and r2["sentences_embedded"] == 0
    assert r2["notes_unchanged"] == r1["notes"]
    s2, e2 = _one_row_per_key(root, fmt)
    assert len(s2) == len(s) and len(e2) == len(e)
    assert len(_table(root, "rejects", fmt)) == len(rejects)

    # One note changed, one added: only those are processed; stale rows are gone.
    df = pd.read_csv(notes_csv, dtype=str, keep_default_na=False)
    changed_id = s.note_id.iloc[0]
    df.loc[df.ROW_ID == changed_id, "TEXT"] = "Impression:\nStable. No change."
    extra = df.iloc[[0]].copy()
    extra["ROW_ID"], extra["TEXT"] = "990001", "Plan:\nDischarge home. Follow up in 2 weeks."
    pd.concat([df, extra]).to_csv(notes_csv, index=False)
    r3 = Pipeline(_cfg(notes_csv, root, tiny_bert, "r3", fmt), spark).run()
    assert r3["notes_segmented"] == 2 and r3["notes_changed"] == 1
    s3, e3 = _one_row_per_key(root, fmt)
    notes3 = read_csv_notes(notes_csv)
    assert all(notes3[r.note_id][r.start:r.end] == r.text for r in s3.itertuples())
    assert set(e3[e3.note_id == changed_id].run_id) == {"r3"}

    # Re-running the same run id is idempotent.
    Pipeline(_cfg(notes_csv, root, tiny_bert, "r3", fmt), spark).run()
    s4, e4 = _one_row_per_key(root, fmt)
    assert len(s4) == len(s3) and len(e4) == len(e3)
    assert sorted(_table(root, "runs", fmt).run_id) == ["r1", "r2", "r3"]


def test_no_text_pipeline_rereads_text(spark, tiny_bert, notes_csv, tmp_path):
    cfg = _cfg(notes_csv, tmp_path / "o", tiny_bert, "nt")
    cfg.segment.include_text = False
    Pipeline(cfg, spark).run()
    s, e = _one_row_per_key(tmp_path / "o", "parquet")
    assert s.text.isna().all() and e.embedding.notna().sum() > 0


def _run_job(args, env_extra=None, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "run_pipeline.py"), *args],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_task_failure_retry_and_killed_run_recovery(tiny_bert, notes_csv, tmp_path):
    root = tmp_path / "out"
    base = ["--input", str(notes_csv), "--output-root", str(root), "--model", tiny_bert,
            "--stages", "segment,embed", "--set", "spark.conf={spark.ui.enabled: 'false'}"]
    # 1) every embed task fails its first attempt; local[2,3] lets Spark retry it.
    p = _run_job(base + ["--run-id", "a", "--spark.master", "local[2,3]"],
                 {"CBS_INJECT_FAULT": "embed:first_attempt"})
    assert p.returncode == 0, p.stderr[-3000:]
    s, e = _one_row_per_key(root, "parquet")
    n_sent = len(s)
    # 2) a run that dies in the embed stage after writing sentences ...
    shutil.rmtree(root)
    p = _run_job(base + ["--run-id", "b", "--spark.master", "local[2]"],
                 {"CBS_INJECT_FAULT": "embed:always"})
    assert p.returncode != 0
    assert len(_table(root, "sentences", "parquet")) == n_sent
    assert not (root / "embeddings").exists() or len(_table(root, "embeddings", "parquet")) == 0
    # ... started again: exactly one row per key in every table.
    p = _run_job(base + ["--run-id", "b", "--spark.master", "local[2]"])
    assert p.returncode == 0, p.stderr[-3000:]
    s, e = _one_row_per_key(root, "parquet")
    assert len(s) == len(e) == n_sent
    runs = _table(root, "runs", "parquet")
    assert list(runs.status) == ["succeeded"]
