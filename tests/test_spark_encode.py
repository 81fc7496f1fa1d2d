"""Encoder inference on a real local SparkSession: embeddings, heads, one model per worker."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from clinicalbert_spark.config import EncodeConfig, PredictConfig
from clinicalbert_spark.spark.encode import embed_sentences, get_encoder, predict_sentences

SENTS = [
    "Patient denies chest pain.",
    "BP 120/80, HR 88, afebrile.",
    "",
    None,
    "   ",
    "s/p CABG [**2150-1-1**] with EF 35 %.",
    "The patient was given aspirin 325 mg p.o. and improved. " * 30,  # long: several windows
    "Continue metoprolol.",
] + [f"Follow up in {i} weeks with cardiology." for i in range(40)]


def _sentences_df(spark, texts=SENTS, partitions=3):
    rows = [(f"n{i % 5}", i, 0, len(t or ""), "plan", t, "h") for i, t in enumerate(texts)]
    df = spark.createDataFrame(
        rows, "note_id STRING, sentence_index INT, start INT, `end` INT, section_category STRING,"
              " text STRING, note_hash STRING")
    return df.repartition(partitions)


def _plain_torch(model_dir, texts, pooling, max_length=128):
    """One sentence at a time, no batching, no padding: the reference."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=max_length)
            h = model(**enc).last_hidden_state[0]
            out.append((h[0] if pooling == "cls" else h.mean(0)).numpy())
    return np.stack(out)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_spark_embeddings_match_plain_loop(spark, tiny_bert, pooling):
    cfg = EncodeConfig(model=tiny_bert, pooling=pooling, max_tokens=256, precision="fp32")
    got = embed_sentences(_sentences_df(spark), cfg).toPandas().sort_values("sentence_index").reset_index(drop=True)
    assert len(got) == len(SENTS)
    ok = got[got.status == "ok"]
    short = ok[ok.n_windows == 1]
    ref = _plain_torch(tiny_bert, [SENTS[i] for i in short.sentence_index], pooling)
    np.testing.assert_allclose(np.stack(short.embedding.to_numpy()), ref, atol=2e-5, rtol=1e-4)
    # Bad rows are kept, with a null vector and a reason.
    bad = got[got.sentence_index.isin([2, 3, 4])]
    assert bad.embedding.isna().all() and (bad.status == "empty_text").all()
    assert (got.loc[got.sentence_index == 6, "n_windows"] > 1).all()
    # Batch accounting rides on the first row of each chunk (no accumulators: Spark Connect).
    assert got._padded_tokens.sum() >= got._real_tokens.sum() >= got.n_tokens.sum() > 0
    assert got._batches.sum() >= 1 and got._oom_retries.sum() == 0


def test_shuffled_partitions_give_same_vectors(spark, tiny_bert):
    cfg = EncodeConfig(model=tiny_bert, pooling="mean", max_tokens=128)
    a = embed_sentences(_sentences_df(spark, partitions=1), cfg).toPandas()
    b = embed_sentences(_sentences_df(spark, partitions=4).orderBy(F.rand(7)), cfg).toPandas()
    a = a.dropna(subset=["embedding"]).sort_values("sentence_index")
    b = b.dropna(subset=["embedding"]).sort_values("sentence_index")
    np.testing.assert_allclose(np.stack(a.embedding.to_numpy()), np.stack(b.embedding.to_numpy()),
                               atol=1e-5)


def test_model_loaded_once_per_python_worker(spark, tiny_bert):
    """Many Arrow batches and tasks, few workers: each worker process loads the model once."""
    cfg = EncodeConfig(model=tiny_bert)
    texts = [f"note {i} states the patient is stable." for i in range(600)]
    df = _sentences_df(spark, texts, partitions=12)

    def probe(it):
        import os

        from clinicalbert_spark.encode import cache_info

        for pdf in it:
            enc = get_encoder(cfg)
            enc.encode(pdf["text"].tolist())
            mine = [k for k in cache_info()["loads"] if k[0] == "encoder"
                    and k[1] == cfg.model_dump_json()]
            loads = sum(cache_info()["loads"][k] for k in mine)
            yield pd.DataFrame({"pid": [os.getpid()], "loads": [loads], "rows": [len(pdf)]})

    old = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "10")
    try:
        res = df.mapInPandas(probe, "pid LONG, loads LONG, rows LONG").toPandas()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", old)
    assert res.rows.sum() == 600
    assert len(res) >= 12 * 2  # many batches ...
    assert res.pid.nunique() <= 4  # ... served by a few reused workers
    assert (res.groupby("pid").loads.max() == 1).all()  # ... each of which loaded once


def test_empty_tasks_never_load_the_model(spark, tiny_bert, tmp_path):
    """Spark runs a ``mapInPandas`` function for every task, empty ones included (fewer rows
    than tasks; with adaptive execution off, an input with no rows at all): none of them may
    load the model. The model folder is gone by the time the tasks run, so a task that loaded
    it would fail."""
    import shutil

    from clinicalbert_spark.testing import build_tiny_bert

    emb_model = tmp_path / "emb"
    shutil.copytree(tiny_bert, emb_model)
    head = build_tiny_bert(tmp_path / "head", head="sequence-classification")
    empty = _sentences_df(spark).where(F.col("sentence_index") < 0)  # not folded away
    emb = embed_sentences(empty, EncodeConfig(model=str(emb_model)), partitions=4)
    pred = predict_sentences(empty, str(head), None, PredictConfig(),
                             EncodeConfig(model=str(head)), partitions=4)
    shutil.rmtree(emb_model)
    shutil.rmtree(head)
    # Adaptive execution would drop the empty shuffle's tasks altogether.
    aqe = spark.conf.get("spark.sql.adaptive.enabled")
    spark.conf.set("spark.sql.adaptive.enabled", "false")
    try:
        assert emb.rdd.getNumPartitions() == 4 and pred.rdd.getNumPartitions() == 4
        assert emb.count() == 0 and pred.count() == 0
    finally:
        spark.conf.set("spark.sql.adaptive.enabled", aqe)


def test_tasks_sized_by_the_row_count(spark, tiny_bert, monkeypatch):
    """With the count known, every core gets a task and no task gets more than
    ROWS_PER_TASK rows; an empty input is one task; without a count, the session's slots."""
    from clinicalbert_spark.spark import encode as enc

    cores = spark.sparkContext.defaultParallelism
    monkeypatch.setattr(enc, "ROWS_PER_TASK", 10)
    assert enc.encode_partitions(spark, 0) == 1
    assert enc.encode_partitions(spark, 1) == 1
    assert enc.encode_partitions(spark, 5) == min(cores, 5)
    assert enc.encode_partitions(spark, 45) == max(cores, 5)
    assert enc.encode_partitions(spark, None) == enc.task_slots(spark)
    df = _sentences_df(spark, partitions=1)
    out = embed_sentences(df, EncodeConfig(model=tiny_bert), rows=len(SENTS))
    assert out.rdd.getNumPartitions() == max(cores, -(-len(SENTS) // 10))
    assert out.count() == len(SENTS)


@pytest.mark.parametrize("head", ["fill-mask", "sequence-classification", "token-classification"])
def test_predict_heads(spark, tmp_path, head):
    from clinicalbert_spark.testing import build_tiny_bert

    model = str(build_tiny_bert(tmp_path / head, head=head))
    texts = ["Patient denies [MASK] pain.", "Start aspirin for chest pain.", None]
    rows = [("n1", i, 100 * i, 100 * i + len(t or ""), "plan", t, "h") for i, t in enumerate(texts)]
    df = spark.createDataFrame(rows, "note_id STRING, sentence_index INT, start INT, `end` INT, "
                                     "section_category STRING, text STRING, note_hash STRING")
    out = predict_sentences(df, model, None, PredictConfig(top_k=3),
                            EncodeConfig(model=model)).toPandas()
    out = out.sort_values("sentence_index").reset_index(drop=True)
    assert (out.task.dropna() == head).all()
    # fill-mask predicts only where the text has a [MASK]; other rows say so.
    want = ["ok", "no_mask"] if head == "fill-mask" else ["ok", "ok"]
    assert out.status.tolist()[:2] == want and out.status[2] == "empty_text"
    if head == "sequence-classification":
        p = out.probabilities[0]
        assert abs(sum(v for _, v in p) - 1) < 1e-4 if isinstance(p, list) else \
            abs(sum(p.values()) - 1) < 1e-4
        assert out.label[0] in {"NEG", "POS"} or out.label[0]
    elif head == "fill-mask":
        spans = out.spans[0]
        assert len(spans) == 1
        s = spans[0]
        assert texts[0][s["start"]:s["end"]] == "[MASK]"  # sentence 0 starts at note offset 0
        scores = [c["score"] for c in s["candidates"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    else:
        for i in (0, 1):
            for s in out.spans[i] if out.spans[i] is not None else []:
                assert 100 * i <= s["start"] < s["end"] <= 100 * i + len(texts[i])
