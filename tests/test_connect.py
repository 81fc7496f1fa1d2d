"""The library over Spark Connect: a real local Spark Connect server (the jar pyspark ships),
driven by the public API and by ``jobs/run_pipeline.py`` as separate client processes; their
tables must equal what the pure library computes (the same check the classic tests make)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, read_csv_notes
from sparkcluster import java_available, spark_home

pytestmark = pytest.mark.skipif(java_available() is not None, reason="no Java")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """A Spark Connect server on loopback for this module, in its own process group."""
    try:
        import grpc  # noqa: F401 - the pyspark[connect] extras
    except ImportError:
        if os.environ.get("CBS_REQUIRE_CONNECT"):  # make test: a skip would hide a failure
            pytest.fail("pyspark[connect] extras missing: pip install -e '.[dev]'")
        pytest.skip("pyspark[connect] extras not installed")
    work = tmp_path_factory.mktemp("connect_server")
    port = _free_port()
    home = spark_home()
    env = {**os.environ, "SPARK_HOME": str(home), "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    log = open(work / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [str(home / "bin" / "spark-submit"), "--class",
         "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", "local[2]",
         "--conf", f"spark.connect.grpc.binding.port={port}",
         "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
         "--conf", f"spark.local.dir={work}", "--driver-memory", "1g", "spark-internal"],
        cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    try:
        while True:
            text = (work / "server.log").read_text(errors="replace")
            if "Spark Connect server started" in text:
                break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("Spark Connect server did not start:\n" + text[-3000:])
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _client(args: list[str], url: str, cwd: Path, timeout: int = 400):
    env = {**os.environ, "SPARK_REMOTE": url, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_run_pipeline_over_connect(connect_url, tmp_path, tiny_bert, demo_csv):
    """jobs/run_pipeline.py as a Spark Connect client: segment + embed + aggregate, then an
    unchanged re-run; the tables equal the pure library's output."""
    import duckdb

    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model
    from clinicalbert_spark.segment import get_segmenter

    import csv

    with open(demo_csv, newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))
    subset = tmp_path / "notes.csv"  # 12 notes keep the test short
    with open(subset, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(records[:13])
    # A relative output root: the server's working directory is not the client's.
    args = [str(ROOT / "jobs" / "run_pipeline.py"), "--input", str(subset),
            "--output-root", "out", "--model", tiny_bert, "--encode.precision", "fp32",
            "--run-id", "c1"]
    res = _client(args, connect_url, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "run c1 succeeded" in res.stdout
    root = tmp_path / "out"
    report = root / "reports" / "c1" / "report.html"  # the job writes its run report
    assert report.is_file() and str(report) in res.stdout
    assert '<section id="lengths"' in report.read_text(encoding="utf-8")
    con = duckdb.connect()

    def table(name):
        return con.execute(f"SELECT * FROM read_parquet('{root}/{name}/run_id=*/*.parquet', "
                           "hive_partitioning=true)").df()

    sentences = table("sentences")
    notes = read_csv_notes(subset)
    seg = get_segmenter("rules")
    expected = {(nid, s.sentence_index, s.start, s.end)
                for nid in sentences.note_id.unique() for s in seg.segment(notes[nid])}
    got = set(zip(sentences.note_id, sentences.sentence_index, sentences.start, sentences.end))
    assert got == expected and len(got) == len(sentences) > 50
    for r in sentences.head(50).itertuples():
        assert r.text == notes[r.note_id][r.start:r.end]

    emb = table("embeddings").merge(sentences[["note_id", "sentence_index", "text"]],
                                    on=["note_id", "sentence_index"])
    assert len(emb) == len(sentences)
    sample = emb.sort_values(["note_id", "sentence_index"]).head(40)
    enc = SentenceEncoder(load_model(tiny_bert), EncoderConfig(pooling="mean", precision="fp32"))
    ref = enc.encode(sample.text.tolist()).embeddings
    np.testing.assert_allclose(np.stack(sample.embedding.to_numpy()), ref, atol=2e-4)
    assert len(table("note_embeddings")) > 0

    runs = table("runs")
    row = runs[runs.run_id == "c1"].iloc[0]
    assert row.status == "succeeded" and row.sentences_embedded == len(sentences)
    assert row.padded_tokens >= row.tokens > 0  # batch accounting without accumulators

    again = _client([*args[:-1], "c2"], connect_url, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    runs = table("runs")
    assert int(runs[runs.run_id == "c2"].iloc[0].sentences_embedded) == 0


API_SCRIPT = textwrap.dedent("""
    import json, sys
    from pyspark.sql import SparkSession
    from clinicalbert_spark import embed, encoder_udf, predict, segment_notes
    from clinicalbert_spark.spark.session import is_connect

    model, fill_mask, out = sys.argv[1:4]
    spark = SparkSession.builder.getOrCreate()
    assert is_connect(spark)
    notes = spark.createDataFrame(
        [("a", "HPI: Chest pain for 2 days. No fever.\\nPlan: ECG and troponin."),
         ("b", "Pt seen by Dr. Lee at 3 p.m. today. Denies SOB."), ("c", "   "), (None, "x")],
        ["doc_id", "body"])
    sentences, rejects = segment_notes(notes, id_col="doc_id", text_col="body",
                                       return_rejects=True)
    sentences.write.parquet(out + "/sentences")
    rejects.write.parquet(out + "/rejects")
    vec = embed(sentences, model=model, keep_cols=["text"], precision="fp32")
    vec.write.parquet(out + "/embed")
    sentences.select("note_id", "sentence_index",
                     encoder_udf(model, precision="fp32")("text").alias("v")).write.parquet(out + "/udf")
    masked = spark.createDataFrame([("m", 0, "The patient has [MASK] pain.")],
                                   ["doc_id", "sent_no", "sentence"])
    predict(masked, text_col="sentence", key_cols=["doc_id", "sent_no"], model=fill_mask,
            top_k=3).write.parquet(out + "/predict")
    print(json.dumps({"ok": True}))
""")


def test_public_api_over_connect(connect_url, tmp_path, tiny_bert):
    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model
    from clinicalbert_spark.segment import get_segmenter
    from clinicalbert_spark.testing import build_tiny_bert

    fill_mask = str(build_tiny_bert(tmp_path / "mlm", head="fill-mask"))
    script = tmp_path / "api_client.py"
    script.write_text(API_SCRIPT)
    res = _client([str(script), tiny_bert, fill_mask, str(tmp_path / "o")], connect_url,
                  tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"ok": True}

    def read(name):
        return pd.read_parquet(tmp_path / "o" / name)

    texts = {"a": "HPI: Chest pain for 2 days. No fever.\nPlan: ECG and troponin.",
             "b": "Pt seen by Dr. Lee at 3 p.m. today. Denies SOB."}
    seg = get_segmenter("rules")
    sentences = read("sentences")
    assert {(r.note_id, r.start, r.end) for r in sentences.itertuples()} == {
        (k, s.start, s.end) for k, t in texts.items() for s in seg.segment(t)}
    assert sorted(zip(read("rejects").reason, read("rejects").note_id.fillna("-"))) == [
        ("empty_text", "c"), ("missing_id", "-")]

    enc = SentenceEncoder(load_model(tiny_bert), EncoderConfig(pooling="mean", precision="fp32"))
    emb = read("embed").sort_values(["note_id", "sentence_index"])
    np.testing.assert_allclose(np.stack(emb.embedding.to_numpy()),
                               enc.encode(emb.text.tolist()).embeddings, atol=2e-4)
    udf = read("udf").merge(emb, on=["note_id", "sentence_index"])
    np.testing.assert_allclose(np.stack(udf.v.to_numpy()), np.stack(udf.embedding.to_numpy()),
                               atol=1e-6)
    pred = read("predict").iloc[0]
    assert pred.task == "fill-mask" and pred.status == "ok"
    assert len(pred.spans) == 1 and len(pred.spans[0]["candidates"]) == 3
