"""The segmentation job end to end on a real local SparkSession."""
from __future__ import annotations

import os

import pandas as pd
import pytest
from deltalake import DeltaTable

from conftest import read_csv_notes
from clinicalbert_spark.schemas import SENTENCES

SENTENCE_COLUMNS = [f.name for f in SENTENCES.fields] + ["run_id"]


def _run_segment(args):
    import jobs_path  # noqa: F401  (puts jobs/ on sys.path)
    import segment_notes

    return segment_notes.main(args)


def _check_offsets(rows: pd.DataFrame, notes: dict[str, str]) -> None:
    bad = 0
    for r in rows.itertuples(index=False):
        if notes[r.note_id][r.start:r.end] != r.text:
            bad += 1
    assert bad == 0, f"{bad} rows whose text differs from note[start:end]"


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_segment_job_on_demo_corpus(spark, demo_csv, tmp_path, fmt, capsys):
    out = tmp_path / "sentences"
    rc = _run_segment(["--input", str(demo_csv), "--output", str(out), "--output-format", fmt,
                       "--run-id", "t1"])
    assert rc == 0
    if fmt == "delta":
        rows = DeltaTable(str(out)).to_pandas()
        rejects = DeltaTable(str(out) + "_rejects").to_pandas()
    else:
        rows = pd.read_parquet(out)
        rejects = pd.read_parquet(str(out) + "_rejects")
    assert list(rows.columns) == SENTENCE_COLUMNS
    notes = read_csv_notes(demo_csv)
    _check_offsets(rows, notes)
    # Every record is accounted for: in sentences or in rejects.
    assert set(rows.note_id) | set(rejects.note_id.dropna()) == set(notes)
    assert set(rejects.reason) >= {"iserror", "empty_text", "duplicate_id"}
    assert (rows.groupby("note_id").sentence_index.apply(
        lambda s: sorted(s) == list(range(len(s))))).all()
    summary = capsys.readouterr().out
    assert "segment_notes summary" in summary and "rejected: duplicate_id" in summary


def test_no_text_flag_keeps_text_out(spark, demo_csv, tmp_path):
    out = tmp_path / "s"
    assert _run_segment(["--input", str(demo_csv), "--output", str(out), "--no-text"]) == 0
    rows = pd.read_parquet(out)
    assert rows.text.isna().all() and len(rows) > 0


def test_bad_corpus_every_record_accounted(spark, tmp_path):
    from bad_corpus import write_bad_corpus

    csv = tmp_path / "bad.csv"
    expected = write_bad_corpus(csv, big_note_mb=5.0)
    out = tmp_path / "s"
    assert _run_segment(["--input", str(csv), "--output", str(out)]) == 0
    rows = pd.read_parquet(out)
    rejects = pd.read_parquet(str(out) + "_rejects")
    ok_ids = {nid for nid, o in expected["records"] if o == "ok"}
    assert set(rows.note_id) == ok_ids
    want = sorted((nid or "", o) for nid, o in expected["records"] if o != "ok")
    assert sorted(zip(rejects.note_id.fillna(""), rejects.reason)) == want
    big = rows[rows.note_id == "9"]
    assert len(big) > 10_000 and (big.end - big.start).max() < 5_000
    _check_offsets(rows, read_csv_notes(csv))


def test_bad_flags_give_clear_errors(spark, tmp_path, capsys):
    assert _run_segment(["--input", str(tmp_path / "missing.csv"),
                         "--output", str(tmp_path / "o")]) == 3  # input error
    assert _run_segment(["--input", "x", "--output", "o", "--encode.pooling", "max"]) == 2
    err = capsys.readouterr().err
    assert "input not found" in err and "encode.pooling" in err


def test_sentence_text_is_stored_without_a_dictionary(spark, demo_csv, tmp_path):
    """Free text hardly repeats: the writer stores it plainly (a dictionary cost the job
    time and saved nothing); short repeated columns keep theirs."""
    import pyarrow.parquet as pq

    out = tmp_path / "s"
    assert _run_segment(["--input", str(demo_csv), "--output", str(out)]) == 0
    f = next(out.glob("*.parquet"))
    meta = pq.ParquetFile(f).metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert not cols["text"].has_dictionary_page
    assert cols["section_category"].has_dictionary_page


def test_local_run_gets_a_heap_for_a_full_input_split(tmp_path):
    """Spark's 1 GiB default heap ran out on one 128 MB split of notes (the persisted
    segmenter output); a local run not told otherwise gets a quarter of the RAM, 2-8 GiB."""
    import subprocess
    import sys

    from clinicalbert_spark.spark.session import local_driver_memory

    want = local_driver_memory()
    assert want.endswith("g") and 2 <= int(want[:-1]) <= 8
    code = ("from clinicalbert_spark.config import SparkConfig\n"
            "from clinicalbert_spark.spark.session import get_spark\n"
            "s = get_spark(SparkConfig(master='local[1]', conf={'spark.ui.enabled': 'false'}))\n"
            "print('HEAP', s.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())\n")

    def heap(env=None):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(next(ln.split()[1] for ln in out.stdout.splitlines()
                        if ln.startswith("HEAP")))

    # the JVM reports a little under -Xmx (one survivor space)
    assert 0.85 * (int(want[:-1]) << 30) < heap() <= int(want[:-1]) << 30
    # ... and a heap the user set in spark-defaults.conf is theirs, not ours
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text("# site settings\nspark.driver.memory   1536m\n")
    assert 0.85 * (1536 << 20) < heap(dict(os.environ, SPARK_CONF_DIR=str(conf))) <= 1536 << 20


def test_user_spark_settings_win_over_local_defaults(tmp_path, monkeypatch):
    from clinicalbert_spark.spark.session import local_mode_defaults, user_spark_settings

    monkeypatch.delenv("SPARK_DRIVER_MEMORY", raising=False)
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert set(local_mode_defaults()) == {"spark.sql.shuffle.partitions", "spark.driver.memory"}
    (tmp_path / "spark-defaults.conf").write_text(
        "# spark.driver.memory 9g\n  spark.sql.shuffle.partitions=7\nspark.executor.cores: 2\n")
    assert user_spark_settings() == {"spark.sql.shuffle.partitions", "spark.executor.cores"}
    assert set(local_mode_defaults()) == {"spark.driver.memory"}
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", "--driver-memory 5g --conf spark.x.y=1 pyspark-shell")
    assert {"spark.driver.memory", "spark.x.y"} <= user_spark_settings()
    assert local_mode_defaults() == {}


def test_segment_batch_arrow_arrays_without_spark():
    """The UDF body on its own: per-note Arrow lists that point back into each note, sections
    listed once per note, and a failed or empty note as an error row with null arrays."""
    import pyarrow as pa

    from clinicalbert_spark.segment import get_segmenter
    from clinicalbert_spark.spark.segment import NOTE_SEGMENTS, segment_batch

    notes = ["HISTORY OF PRESENT ILLNESS:\nChest pain. No fever.\n\nPLAN:\nAspirin 81 mg daily.",
             None, "Pt stable overnight. Vitals: T 37.1, HR 88.", "Déjà vu: café. Next one."]
    ids = pa.array(["a", "b", "c", "d"])
    got = segment_batch(pa.array(notes), get_segmenter("rules"), fail={"c"}, note_ids=ids)
    assert got.type.names == NOTE_SEGMENTS.fieldNames()
    rows = got.to_pylist()
    a, b, c, d = rows
    for text, row in ((notes[0], a), (notes[3], d)):
        assert row["error"] is None and len(row["start"]) >= 2
        assert [text[s:e] for s, e in zip(row["start"], row["end"])] == row["text"]
        # Each sentence's section position points into the note's own section list.
        assert max(row["sec"]) < len(row["sec_index"]) == len(set(row["sec_index"]))
    assert [t for t in a["sec_title"]][:2] == ["HISTORY OF PRESENT ILLNESS", "PLAN"]
    assert b["error"] == "NoSentences" and b["start"] is None and b["sec_title"] is None
    assert c["error"] == "RuntimeError" and c["text"] is None  # the type name only, no text
    no_text = segment_batch(pa.array(notes[:1]), get_segmenter("rules"), include_text=False)
    row = no_text.to_pylist()[0]
    assert row["start"] == a["start"] and set(row["text"]) == {None}


def test_pandas_udf_fallback_for_older_spark(spark, demo_csv, tmp_path, monkeypatch):
    """Spark 3.5 and 4.0 have no Arrow UDFs: the same segmenter body in a pandas UDF gives the
    same sentence rows, offsets and sections as the Arrow one."""
    from clinicalbert_spark.io import read_notes
    from clinicalbert_spark.config import InputConfig
    from clinicalbert_spark.spark import segment as seg_mod

    notes = read_notes(spark, InputConfig(path=str(demo_csv))).notes
    got = {}
    for arrow in (True, False):
        monkeypatch.setattr(seg_mod, "ARROW_UDF", arrow)
        sentences, _ = seg_mod.split_segment_output(seg_mod.segment_notes(notes))
        got[arrow] = sentences.drop("segmenter_version").toPandas().sort_values(
            ["note_id", "sentence_index"]).reset_index(drop=True)
    assert len(got[True]) > 50
    pd.testing.assert_frame_equal(got[True], got[False])
