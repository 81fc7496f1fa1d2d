"""Readers, rejects and table writers on a real local SparkSession and real files."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from bad_corpus import write_bad_corpus
from clinicalbert_spark import io
from clinicalbert_spark.config import InputConfig


@pytest.fixture(scope="module")
def bad_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("bad") / "NOTEEVENTS_bad.csv"
    expected = write_bad_corpus(p, big_note_mb=0.2)
    return p, expected


def test_read_notes_accounts_for_every_record(spark, bad_csv):
    path, expected = bad_csv
    notes = io.read_notes(spark, InputConfig(path=str(path)))
    ok = sorted(r.note_id for r in notes.notes.collect())
    rej = notes.rejects.collect()
    want_ok = sorted(nid for nid, o in expected["records"] if o == "ok")
    assert ok == want_ok
    got = sorted((r.note_id or "", r.reason) for r in rej)
    want = sorted((nid or "", o) for nid, o in expected["records"] if o != "ok")
    assert got == want
    assert notes.notes.count() + len(rej) == len(expected["records"])


def test_rejects_hold_no_note_text(spark, bad_csv):
    path, _ = bad_csv
    notes = io.read_notes(spark, InputConfig(path=str(path)))
    assert notes.rejects.columns == ["note_id", "reason", "source_row", "detail"]
    for r in notes.rejects.collect():
        assert r.detail is None or "patient" not in r.detail.lower()
        assert r.reason in io.REJECT_REASONS


def test_duplicate_keeps_first_record(spark, bad_csv):
    path, _ = bad_csv
    notes = io.read_notes(spark, InputConfig(path=str(path)))
    text = notes.notes.where(F.col("note_id") == "6").first().text
    assert text.startswith("Chief Complaint:\nAbd pain")
    dup = notes.rejects.where(F.col("reason") == "duplicate_id").first()
    assert dup.detail.startswith("kept source_row ")


def test_multiline_quoted_text_is_exact(spark, bad_csv):
    from bad_corpus import GOOD

    path, _ = bad_csv
    notes = io.read_notes(spark, InputConfig(path=str(path)))
    assert notes.notes.where(F.col("note_id") == "1").first().text == GOOD


def test_custom_columns_and_parquet_input(spark, tmp_path):
    df = spark.createDataFrame([("a1", "Pain. Better now."), ("a2", None)], "doc STRING, body STRING")
    df.write.parquet(str(tmp_path / "n.parquet"))
    cfg = InputConfig(path=str(tmp_path / "n.parquet"), id_column="doc", text_column="body",
                      subject_column=None, hadm_column=None, category_column=None,
                      iserror_column=None)
    notes = io.read_notes(spark, cfg)
    assert [r.note_id for r in notes.notes.collect()] == ["a1"]
    assert [(r.note_id, r.reason) for r in notes.rejects.collect()] == [("a2", "null_text")]


def test_missing_columns_is_a_clear_error(spark, tmp_path):
    spark.createDataFrame([("x",)], "a STRING").write.parquet(str(tmp_path / "p"))
    with pytest.raises(io.InputError, match="input lacks column"):
        io.read_notes(spark, InputConfig(path=str(tmp_path / "p")))


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(io.InputError, match="not found"):
        io.read_notes(spark, InputConfig(path=str(tmp_path / "nope")))


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_single_table_overwrite_append_error(spark, tmp_path, fmt):
    from clinicalbert_spark.errors import OutputError
    from clinicalbert_spark.state import write_table

    path = str(tmp_path / "t")
    mk = lambda rows: spark.createDataFrame(rows, "k STRING, v ARRAY<FLOAT>, run_id STRING")
    write_table(mk([("a", [1.0], "r1"), ("b", [2.0], "r1")]), path, fmt)
    write_table(mk([("c", [3.0], "r2")]), path, fmt)  # overwrite: the old rows are gone
    write_table(mk([("d", [4.0], "r3")]), path, fmt, mode="append")
    back = io.read_table(spark, path, fmt)
    assert sorted((r.k, r.run_id, list(r.v)) for r in back.collect()) == [
        ("c", "r2", [3.0]), ("d", "r3", [4.0])]
    with pytest.raises(OutputError, match="exists"):
        write_table(mk([("e", [5.0], "r4")]), path, fmt, mode="error")
    # Nothing is left beside the table (staging and the replaced copy are gone).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_delta_overwrite_and_schema(spark, tmp_path):
    path = str(tmp_path / "d")
    df = spark.createDataFrame([("n1", 0, 5)], "note_id STRING, start INT, `end` INT")
    from clinicalbert_spark.state import write_table

    write_table(df, path, "delta")
    write_table(df.union(df), path, "delta", mode="overwrite")
    t = DeltaTable(path).to_pyarrow_table()
    assert t.num_rows == 2 and t.schema.names == ["note_id", "start", "end"]
    assert io.infer_format(path) == "delta"
    assert io.read_table(spark, path).count() == 2


def test_parquet_files_are_readable_by_pyarrow(spark, tmp_path):
    path = str(tmp_path / "p")
    spark.createDataFrame([("n", [0.5, 0.25])], "note_id STRING, e ARRAY<FLOAT>").write.parquet(path)
    t = pq.read_table(path)
    assert t.column("e").to_pylist() == [[0.5, 0.25]]


def test_delta_input_written_by_delta_rs(spark, tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    path = str(tmp_path / "notes_delta")
    write_deltalake(path, pd.DataFrame({"ROW_ID": ["1", "2"], "TEXT": ["Pain. Better.", ""]}))
    write_deltalake(path, pd.DataFrame({"ROW_ID": ["3"], "TEXT": ["Plan: home."]}), mode="append")
    notes = io.read_notes(spark, InputConfig(path=path))  # format inferred from _delta_log
    assert sorted(r.note_id for r in notes.notes.collect()) == ["1", "3"]
    assert [(r.note_id, r.reason) for r in notes.rejects.collect()] == [("2", "empty_text")]


def test_catalog_table_input(spark):
    spark.createDataFrame([(7, "Impression: stable.")], "ROW_ID INT, TEXT STRING") \
        .createOrReplaceTempView("cbs_notes_view")
    notes = io.read_notes(spark, InputConfig(path="cbs_notes_view", format="table"))
    assert [(r.note_id, r.text) for r in notes.notes.collect()] == [("7", "Impression: stable.")]
    assert io.infer_format("cbs_notes_view", spark) == "table"


def test_category_is_trimmed(spark, tmp_path):
    p = tmp_path / "n.csv"
    p.write_text('ROW_ID,CATEGORY,TEXT\n1,Physician ,"Plan: rest."\n')
    notes = io.read_notes(spark, InputConfig(path=str(p)))
    assert notes.notes.first().category == "Physician"


def test_parquet_duplicate_ids_the_first_usable_record_wins(spark, tmp_path):
    """Columnar inputs look for repeated ids in a pass over the ids alone and search for
    duplicates only when one repeats; the rule is the same as for CSV either way."""
    import pandas as pd

    p = tmp_path / "dups.parquet"
    pd.DataFrame({"ROW_ID": [" 7", "7", "8", "8", "9"],
                  "TEXT": ["  ", "Seven.", "Eight.", "Eight again.", "Nine."]}).to_parquet(p)
    notes = io.read_notes(spark, InputConfig(path=str(p)))
    kept = {r.note_id: r.text for r in notes.notes.collect()}
    assert kept == {"7": "Seven.", "8": "Eight.", "9": "Nine."}
    rej = sorted((r.note_id, r.reason, r.source_row) for r in notes.rejects.collect())
    src = {r.note_id: r.source_row for r in notes.notes.collect()}
    assert [(n, why) for n, why, _ in rej] == [("7", "empty_text"), ("8", "duplicate_id")]
    assert rej[1][2] > src["8"]  # the later record of 8 is the one rejected

    unique = tmp_path / "unique.parquet"
    pd.DataFrame({"ROW_ID": ["1", "2", "3"], "TEXT": ["A.", "", "C."]}).to_parquet(unique)
    notes = io.read_notes(spark, InputConfig(path=str(unique)))
    assert sorted(r.note_id for r in notes.notes.collect()) == ["1", "3"]
    assert [(r.note_id, r.reason) for r in notes.rejects.collect()] == [("2", "empty_text")]
    # records: both halves in one frame (what the jobs persist to read the input once)
    rec = {r.note_id: r.reject_reason for r in notes.records.collect()}
    assert rec == {"1": None, "2": "empty_text", "3": None}
