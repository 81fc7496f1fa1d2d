"""The runs table's row is committed without Spark (pyarrow): it must read back through Spark
and DuckDB like the rows Spark wrote, keep the other stages' rows of the run, and carry rows an
older schema version wrote (columns they lack read as null)."""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F

from clinicalbert_spark.schemas import RUNS, SPECS, TableSpec
from clinicalbert_spark.state import TableStore

UTC = dt.timezone.utc


def _row(run_id: str, stages: str, status: str, **kw) -> dict:
    row = {f.name: None for f in RUNS.fields}
    row.update(run_id=run_id, run_id_given=run_id, stages=stages, status=status,
               started_at=dt.datetime(2026, 11, 25, 1, 2, 3, 456789, tzinfo=UTC),
               schema_version="2.2", sentences=7, padding_efficiency=0.5, **kw)
    return row


def _old_version_rows(spark, store: TableStore, run_id: str) -> None:
    """Rows of ``run_id`` as a Spark commit of an older version wrote them: no
    ``seconds_by_stage`` or ``oom_retries`` columns."""
    spec = SPECS["runs"]
    rows = [_row(run_id, "segment", "succeeded"), _row(run_id, "embed", "running")]
    df = (spark.createDataFrame(rows, RUNS).drop("run_id", "seconds_by_stage", "oom_retries")
          .withColumn("run_id", F.lit(run_id)))
    old_schema = TableSpec(spec.name, df.drop("run_id").schema, spec.key)
    store.commit(old_schema, df.drop("run_id"))


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_runs_row_replaces_its_stage_keeps_the_others_and_reads_everywhere(spark, tmp_path, fmt):
    root = tmp_path / "out"
    store = TableStore(spark, str(root), fmt, "r1")
    store.prepare_root()
    _old_version_rows(spark, store, "r1")
    store.commit_run(_row("r2", "segment", "succeeded", seconds_by_stage='{"segment": 1.5}'))
    store.commit_run(_row("r1", "embed", "succeeded", oom_retries=3))

    got = {(r["run_id"], r["stages"]): r for r in store.run_rows("r1") + store.run_rows("r2")}
    assert set(got) == {("r1", "segment"), ("r1", "embed"), ("r2", "segment")}
    assert got["r1", "embed"]["status"] == "succeeded" and got["r1", "embed"]["oom_retries"] == 3
    # the old row is kept as it was; the column its version lacked is null
    assert got["r1", "segment"]["status"] == "succeeded"
    assert got["r1", "segment"]["seconds_by_stage"] is None
    assert got["r1", "segment"]["started_at"] == _row("r1", "x", "x")["started_at"]

    sp = {(r.run_id, r.stages): r for r in store.read(SPECS["runs"]).collect()}
    assert set(sp) == set(got)
    assert sp["r1", "embed"].oom_retries == 3 and sp["r1", "embed"].sentences == 7
    assert sp["r2", "segment"].seconds_by_stage == '{"segment": 1.5}'
    assert sp["r1", "segment"].started_at.replace(tzinfo=None) == \
        spark.createDataFrame([_row("r1", "x", "x")], RUNS).first().started_at.replace(tzinfo=None)

    from clinicalbert_spark.query import connect

    con = connect(root)
    rows = con.execute("SELECT run_id, stages, status, oom_retries FROM runs "
                       "ORDER BY run_id, stages").fetchall()
    assert rows == [("r1", "embed", "succeeded", 3), ("r1", "segment", "succeeded", None),
                    ("r2", "segment", "succeeded", None)]
    # nothing left over from the commits
    assert not list((root / "_state" / "journal").glob("*.json"))
    assert not (root / "runs" / "_staging").exists()
