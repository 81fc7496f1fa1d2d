"""benchmarks/scale_bench.py's pure helpers (corpus scaling, byte counting, process roles,
projection). Nothing here runs Spark or times anything."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sb():
    path = ROOT / "benchmarks" / "scale_bench.py"
    spec = importlib.util.spec_from_file_location("scale_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_allocate_is_proportional_with_one_of_each(sb):
    assert sb.allocate({"a": 4966, "b": 2434, "c": 16}, 120) == {"a": 80, "b": 39, "c": 1}
    small = sb.allocate({"a": 4966, "b": 2434, "c": 16}, 7)
    assert sum(small.values()) == 7 and small["c"] == 1
    assert sb.allocate({"a": 3, "b": 0}, 2) == {"a": 2}
    with pytest.raises(ValueError):
        sb.allocate({"a": 3}, 4)


def test_sample_and_scale_notes(sb):
    corpora = {"mtsamples": [(f"m{i}", f"text m{i}") for i in range(50)],
               "nursing": [(f"n{i}", f"text n{i}") for i in range(25)],
               "ctakes": [("c0", "text c0")]}
    notes = sb.sample_notes(corpora, 12, seed=1)
    assert notes == sb.sample_notes(corpora, 12, seed=1)  # deterministic
    assert len({sid for _, sid, _ in notes}) == 12
    assert {src for src, _, _ in notes} == {"mtsamples", "nursing", "ctakes"}
    base = sb.base_frame(notes)
    assert list(base.ROW_ID) == [str(i) for i in range(1, 13)]
    assert set(base.columns) >= {"ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "ISERROR", "TEXT"}
    bigger = {sid for _, sid, _ in sb.sample_notes(corpora, 48, seed=1)}
    assert {sid for _, sid, _ in notes} <= bigger  # sizes differ by volume, not by choice
    big = sb.scale_notes(base, 4)
    assert len(big) == 48 and big.ROW_ID.is_unique
    assert list(big.TEXT) == list(base.TEXT) * 4  # same text, new ids: exactly 4x the work
    assert big.ROW_ID.iloc[12] == str(sb.ID_STRIDE + 1)
    df, distinct = sb.build_notes(corpora, 40)
    assert (len(df), distinct) == (40, 40) and df.TEXT.is_unique
    df, distinct = sb.build_notes(corpora, 100)  # past the corpora: copies under new ids
    assert (len(df), distinct) == (100, 76) and df.ROW_ID.is_unique and df.TEXT.nunique() == 76


def test_table_bytes_counts_data_files_only(sb, tmp_path):
    t = tmp_path / "t" / "run_id=a"
    t.mkdir(parents=True)
    (t / "part-0.zstd.parquet").write_bytes(b"x" * 100)
    (t / ".part-0.zstd.parquet.crc").write_bytes(b"x" * 7)
    (tmp_path / "t" / "_SUCCESS").write_bytes(b"")
    (tmp_path / "t" / "_staging").mkdir()
    (tmp_path / "t" / "_staging" / "part-9.parquet").write_bytes(b"x" * 50)
    assert sb.table_bytes(tmp_path / "t") == 100


def test_classify_roles(sb):
    java = "/usr/bin/java -cp /x org.apache.spark.executor.CoarseGrainedExecutorBackend --x"
    assert sb.classify(java, "java", []) == "exec_jvm"
    assert sb.classify("/usr/bin/java -cp /x org.apache.spark.deploy.worker.Worker spark://",
                       "java", []) == "daemon"
    assert sb.classify("/usr/bin/java -cp /x org.apache.spark.deploy.SparkSubmit a.py",
                       "java", []) == "driver_jvm"
    worker = "/venv/bin/python -m pyspark.daemon pyspark.worker"
    assert sb.classify(worker, "python", ["py_worker", "exec_jvm"]) == "py_worker"
    assert sb.classify("/venv/bin/python jobs/run_pipeline.py", "python",
                       ["driver_jvm"]) == "driver_py"
    assert sb.classify("/bin/bash x", "bash", []) == "other"


def test_sampler_sees_a_child(sb):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        time.sleep(0.2)
        s = sb.TreeSampler(interval=0.1)
        s.sample()
        s.sample()
        res = s.result()
        assert res["peak_bytes"]["driver_py"] > 1_000_000
        assert s.cpu_between(s.timeline[0][0], s.timeline[-1][0])["all"] >= 0
    finally:
        child.kill()
        child.wait()


def _result(notes, sents, scale):
    first = {"sentences": sents, "tokens": 20 * sents, "seconds_total": 60 + sents / 50,
             "cpu_s": 60 + sents / 25, "seconds_by_stage": {"segment": 20, "embed": 30},
             "cpu_s_by_stage": {}, "peak_bytes": {},
             "cpu_s_by_stage_role": {
                 "segment": {"all": 10 + notes * 0.01},
                 "embed": {"all": 10 + sents / 20, "driver_jvm": 5 + sents * 0.001,
                           "py_worker": 5 + sents / 25},
                 "aggregate": {"all": 5 + sents * 0.0005}}}
    rerun = {"seconds_total": 40 + notes * 0.01, "cpu_s": 70 + notes * 0.02,
             "cpu_s_by_stage_role": {"segment": {"all": 20 + notes * 0.015},
                                     "embed": {"all": 10 + notes * 0.005}}}
    r = {"mode": "local", "scale": scale, "notes": notes, "chars": sents * 70, "cores": 2,
         "bytes": {"sentences": 60 * sents, "embeddings": 1500 * sents,
                   "note_embeddings": 200 * sents},
         "first": first, "rerun": rerun}
    return r


def test_projection_uses_marginal_costs(sb):
    rs = [_result(n, 30 * n, k) for n, k in ((40, 1), (160, 4), (640, 16))]
    for r in rs:
        r["derived"] = sb.derive(r)
    p = sb.project(rs, corpora={"c": {"notes": 1_000_000, "sentences": None}},
                   executors=(1, 10), gpu_tokens_per_s=1e6, tokenize_s_per_sentence=0.0)
    a = p["assumptions"]
    assert a["embed_jvm_cpu_s_per_sentence"] == pytest.approx(0.001)
    assert a["rerun_cpu_s_per_note"] == pytest.approx(0.02)
    assert a["sentences_per_note"] == pytest.approx(30)
    one, ten = p["rows"]
    assert one["sentences"] == pytest.approx(30e6) and one["tokens"] == pytest.approx(600e6)
    assert one["embed_gpu_h"] == pytest.approx(600e6 / 1e6 / 3600)
    assert ten["first_run_h"] == pytest.approx(one["first_run_h"] / 10)
    assert one["rerun_h"] == pytest.approx(1e6 * 0.02 / 4 / 3600)
    # vectors widened from 384 to 768 float32 dims
    assert a["bytes_per_sentence"] == pytest.approx(60 + 1500 + 4 * 384)
    # a slope swamped by noise falls back to the largest run's average (an upper bound)
    m = sb.marginal(rs, lambda r: r["notes"], lambda r: 100 - r["notes"] * 0.01)
    assert m["per_unit"] == pytest.approx((100 - 6.4) / 640) and "upper bound" in m["how"]
