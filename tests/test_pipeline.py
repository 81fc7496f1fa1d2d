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


# Delta, and crashes at every stage, are covered by test_state_model.py; a real kill -9 by
# test_trust_cases.py. This is the demo corpus end to end with the runs accounting.
@pytest.mark.parametrize("fmt", ["parquet"])
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
    nv3 = _table(root, "note_embeddings", fmt)
    whole = nv3[nv3.section_category.isna()]
    assert not whole.duplicated(["note_id", "model"]).any()
    assert set(whole.note_id) == set(s3.note_id)
    assert set(whole[whole.note_id.isin([changed_id, "990001"])].run_id) == {"r3"}
    assert set(whole.run_id) == {"r1", "r3"}  # unchanged notes kept their first vectors

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


def test_reliability_corpus_with_task_retries_and_no_phi_in_logs(tiny_bert, tmp_path):
    """Bad input end to end, every embed task failing its first attempt (local[2,3] retries)."""
    from bad_corpus import write_bad_corpus

    csv = tmp_path / "bad.csv"
    expected = write_bad_corpus(csv, big_note_mb=1.0)
    root = tmp_path / "out"
    p = _run_job(["--input", str(csv), "--output-root", str(root), "--model", tiny_bert,
                  "--stages", "segment,embed,aggregate", "--run-id", "rel",
                  "--spark.master", "local[2,3]",
                  "--set", "spark.conf={spark.ui.enabled: 'false'}"],
                 {"CBS_INJECT_FAULT": "embed:first_attempt", "CBS_LOG_LEVEL": "DEBUG"})
    assert p.returncode == 0, p.stderr[-3000:]
    s, e = _one_row_per_key(root, "parquet")
    rejects = _table(root, "rejects", "parquet")
    ok = {nid for nid, o in expected["records"] if o == "ok"}
    assert set(s.note_id) == ok
    assert sorted(zip(rejects.note_id.fillna(""), rejects.reason)) == sorted(
        (nid or "", o) for nid, o in expected["records"] if o != "ok")
    run = _table(root, "runs", "parquet").iloc[0]
    assert run.input_records == len(expected["records"]) == run.notes + run.rejects
    assert run.sentences == len(s) and run.sentences_embedded == len(e)
    assert run.windows > run.sentences_embedded  # the very long sentence needed windows
    notes = read_csv_notes(csv)
    assert all(notes[r.note_id][r.start:r.end] == r.text for r in s.itertuples())
    assert "injected fault" in p.stderr  # the retries really happened
    logs = p.stdout + p.stderr
    for phrase in ("presents with 2 days of chest pain", "intermittent pain",
                   "different note that reuses", "latte drinker", "Hospital 1"):
        assert phrase not in logs, "note text leaked into the logs"


def test_attach_text_counts_code_points_like_python(spark):
    from clinicalbert_spark.spark.text import attach_text

    note = "Mood \U0001F600 good. T 37.5\u00b0C \u2265 2. End."
    parts = ["Mood \U0001F600 good.", "T 37.5\u00b0C \u2265 2.", "End."]
    spans = [(note.index(p), note.index(p) + len(p)) for p in parts]  # Python code points
    # The middle row kept its text (written before --no-text was turned on): it is kept.
    rows = [("n", "h", i, s, e, "kept" if i == 1 else None) for i, (s, e) in enumerate(spans)]
    # Not filled: a note whose text changed since (other hash), a note not delivered, a row
    # without offsets.
    rows += [("m", "old", 0, 0, 4, None), ("x", "h", 0, 0, 3, None), ("n", "h", 9, None, 4, None)]
    sents = spark.createDataFrame(rows, "note_id STRING, note_hash STRING, sentence_index INT, "
                                        "start INT, `end` INT, text STRING")
    notes = spark.createDataFrame([("n", "h", note), ("m", "new", "Other text."),
                                   ("z", "h", "No sentences.")],
                                  "note_id STRING, note_hash STRING, text STRING")
    out = attach_text(sents, notes)
    assert out.columns == sents.columns
    got = {(r.note_id, r.sentence_index): r for r in out.collect()}
    assert len(got) == len(rows)
    assert [got["n", i].text for i in range(3)] == \
        [note[s:e] if i != 1 else "kept" for i, (s, e) in enumerate(spans)]
    assert got["n", 2].start == spans[2][0] and got["n", 2].end == spans[2][1]
    assert got["m", 0].text is None and got["x", 0].text is None and got["n", 9].text is None
    assert got["n", 9].start is None and got["n", 9].end == 4


def test_precision_auto_is_recorded_as_the_mode_the_executors_ran(spark, tiny_bert, notes_csv,
                                                                    tmp_path):
    import json

    from clinicalbert_spark.encode import resolve_encode_precision

    ran = resolve_encode_precision("auto", "cpu")  # local mode: the executor is this machine
    root = tmp_path / "out"
    stages = ["segment", "embed"]
    r1 = Pipeline(_cfg(notes_csv, root, tiny_bert, "r1", stages=stages), spark).run()
    fps = json.loads(_table(root, "runs", "parquet").fingerprints[0])
    assert fps["embeddings"]["settings"]["precision"] == ran != "auto"
    # The explicit mode "auto" ran in gives the same vectors: nothing is re-encoded...
    cfg = _cfg(notes_csv, root, tiny_bert, "r2", stages=stages)
    cfg.encode.precision = ran
    assert Pipeline(cfg, spark).run()["sentences_embedded"] == 0
    # ...another mode re-encodes every sentence.
    cfg = _cfg(notes_csv, root, tiny_bert, "r3", stages=stages)
    cfg.encode.precision = "fp32" if ran != "fp32" else "bf16"
    assert Pipeline(cfg, spark).run()["sentences_embedded"] == r1["sentences"]
