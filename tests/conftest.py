"""Shared fixtures: one real local SparkSession for the whole run, tiny models built on disk."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CORPORA = ROOT.parent / "shared" / "corpora"
DEMO_CSV = Path(os.environ.get("CBS_DEMO_CSV", ROOT / "demo" / "NOTEEVENTS_demo.csv"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("CBS_TORCH_THREADS", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# Tests only: the JVMs of the seconds-long job subprocesses stop at the C1 compiler. C2
# compiles for a steady state those runs never reach (about half of a short run's JVM CPU,
# which the other test worker wants); the session JVM below lives all run and keeps it.
_C1_ONLY = "-XX:TieredStopAtLevel=1"
if "SPARK_SUBMIT_OPTS" not in os.environ:
    os.environ["SPARK_SUBMIT_OPTS"] = _C1_ONLY


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a model hub, whatever the calling environment says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def spark():
    from clinicalbert_spark.config import SparkConfig
    from clinicalbert_spark.spark.session import get_spark

    cfg = SparkConfig(master="local[2]", app_name="cbs-tests", arrow_batch_size=64, conf={
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.enabled": "false",
        "spark.default.parallelism": "2",
        "spark.driver.memory": "2g",
    })
    ours = os.environ.get("SPARK_SUBMIT_OPTS") == _C1_ONLY
    if ours:
        del os.environ["SPARK_SUBMIT_OPTS"]
    try:
        s = get_spark(cfg)
    finally:
        if ours:
            os.environ["SPARK_SUBMIT_OPTS"] = _C1_ONLY
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny BERT encoder checkpoint (safetensors + WordPiece tokenizer) built locally."""
    from clinicalbert_spark.testing import build_tiny_bert

    return str(build_tiny_bert(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def demo_csv() -> Path:
    assert DEMO_CSV.is_file(), "demo corpus missing: run demo/make_demo_corpus.py"
    return DEMO_CSV


def read_csv_notes(path) -> dict[str, str]:
    """ROW_ID -> TEXT of a NOTEEVENTS CSV, read independently of Spark (first record wins)."""
    import csv

    csv.field_size_limit(sys.maxsize)  # a 5 MB note is one field
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for rec in csv.DictReader(f):
            if rec.get("ROW_ID") and rec["ROW_ID"] not in out:
                out[rec["ROW_ID"].strip()] = rec.get("TEXT") or ""
    return out


# The longest files first: pytest-xdist's --dist loadfile hands out whole files in collection
# order, so a long file collected last ran alone at the end (a ~100 s tail on 2 workers).
# Seconds per file measured 2026-11-25; unlisted files keep their order after these.
_LONG_FILES_FIRST = ("test_trust_cases.py", "test_pipeline.py", "test_vector_storage.py",
                     "test_state_model.py", "test_cluster_standalone.py", "test_dag.py",
                     "test_connect.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
