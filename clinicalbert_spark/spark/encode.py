"""Sentences -> embeddings / predictions inside ``mapInPandas``, one model per Python worker.

The model is loaded once per executor Python worker (``get_cached``; Spark reuses workers
with ``spark.python.worker.reuse``) on the GPU Spark assigned to the task when GPU scheduling
is on (``TaskContext.resources()["gpu"]``), else CUDA if visible, else CPU. Rows of a
partition are gathered into chunks of ``CHUNK_ROWS`` so the encoder can sort them by length
across many Arrow batches before forming token-budget batches.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from ..config import EncodeConfig, PredictConfig
from ..models import model_identity, preflight, preflight_head, resolve_model_path
from .. import schemas

log = logging.getLogger(__name__)

CHUNK_ROWS = int(os.environ.get("CBS_ENCODE_CHUNK_ROWS", "16384"))

# What the UDFs emit: the table's columns less the fingerprint the stage stamps on.
EMBED_UDF_OUTPUT = T.StructType(
    [T.StructField(f.name, f.dataType, True) for f in schemas.EMBEDDINGS.fields
     if f.name != "fingerprint"] + [T.StructField("status", T.StringType())]
)
PREDICT_UDF_OUTPUT = T.StructType(
    [f for f in schemas.PREDICTIONS.fields if f.name != "fingerprint"])


@dataclass
class EncodeAccumulators:
    padded_tokens: object
    real_tokens: object
    oom_retries: object
    batches: object


def _encoder_config(cfg: EncodeConfig):
    from ..encode import EncoderConfig

    return EncoderConfig(
        pooling=cfg.pooling, normalize=cfg.normalize, max_length=cfg.max_length,
        stride=cfg.stride, long_policy=cfg.long_policy, max_tokens=cfg.max_tokens,
        precision=cfg.precision, embedding_dtype=cfg.embedding_dtype, compile=cfg.compile,
    )


def _task_device(prefer: str):
    from ..encode import resolve_device

    return resolve_device(prefer)


def get_encoder(cfg: EncodeConfig):
    """The worker's cached SentenceEncoder for this config and device (loaded at most once)."""
    from ..encode import SentenceEncoder, get_cached, load_model

    device = _task_device(cfg.device)
    key = ("encoder", cfg.model_dump_json(), str(device))

    def factory():
        _limit_threads()
        loaded = load_model(resolve_model_path(cfg.model), cfg.revision, task="embed",
                            allow_pickle=cfg.allow_pickle)
        return SentenceEncoder(loaded, _encoder_config(cfg), device=device)

    return get_cached(key, factory)


def get_predictor(model: str, revision: str | None, pcfg: PredictConfig, ecfg: EncodeConfig):
    """The worker's cached Predictor for the checkpoint's head (``pcfg.task`` or detected)."""
    from ..encode import Predictor, get_cached, load_model

    device = _task_device(ecfg.device)
    key = ("predictor", model, revision, pcfg.model_dump_json(), ecfg.model_dump_json(),
           str(device))

    def factory():
        _limit_threads()
        loaded = load_model(resolve_model_path(model), revision, task=pcfg.task,
                            allow_pickle=ecfg.allow_pickle)
        return Predictor(loaded, _encoder_config(ecfg), top_k=pcfg.top_k, device=device)

    return get_cached(key, factory)


def _limit_threads() -> None:
    # Several Python workers share an executor's cores: torch must not oversubscribe them.
    import torch

    cores = os.environ.get("CBS_TORCH_THREADS")
    if cores:
        torch.set_num_threads(int(cores))
        return
    try:
        from pyspark import TaskContext

        tc = TaskContext.get()
        cpus = int(tc.cpus()) if tc is not None else 0
    except Exception:  # noqa: BLE001 - outside Spark
        cpus = 0
    if cpus > 0:
        torch.set_num_threads(max(1, cpus))


def _chunks(batches: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    buf, n = [], 0
    for pdf in batches:
        buf.append(pdf)
        n += len(pdf)
        if n >= rows:
            yield pd.concat(buf, ignore_index=True)
            buf, n = [], 0
    if buf:
        yield pd.concat(buf, ignore_index=True)


def inject_fault(stage: str) -> None:
    """Fault injection for the recovery tests: ``CBS_INJECT_FAULT=<stage>:first_attempt``
    fails the first attempt of every task of that stage (Spark retries it), ``<stage>:always``
    fails the stage. Unset in production."""
    spec = os.environ.get("CBS_INJECT_FAULT", "")
    if not spec.startswith(stage + ":"):
        return
    from pyspark import TaskContext

    tc = TaskContext.get()
    mode = spec.split(":", 1)[1]
    if mode == "always" or (mode == "first_attempt" and tc is not None
                            and tc.attemptNumber() == 0):
        raise RuntimeError(f"injected fault in stage {stage} (CBS_INJECT_FAULT)")


def embed_batches(batches: Iterator[pd.DataFrame], cfg: EncodeConfig, model_id: str,
                  revision: str | None, acc: EncodeAccumulators | None = None
                  ) -> Iterator[pd.DataFrame]:
    enc = get_encoder(cfg)
    for pdf in _chunks(batches, CHUNK_ROWS):
        inject_fault("embed")
        res = enc.encode(pdf["text"].tolist())
        ok = np.asarray([s == "ok" for s in res.status])
        # Spark SQL has no half type: float16 vectors are widened (their values stay rounded).
        emb = res.embeddings.astype(np.float32, copy=False)
        out = pd.DataFrame({
            "note_id": pdf["note_id"], "sentence_index": pdf["sentence_index"],
            "start": pdf["start"], "end": pdf["end"],
            "section_category": pdf["section_category"], "model": model_id,
            "model_revision": revision, "pooling": cfg.pooling, "dim": int(enc.dim),
            "n_tokens": res.n_tokens.astype(np.int32),
            "n_windows": res.n_windows.astype(np.int32),
            "truncated": res.truncated.astype(bool),
            # Rows with no usable text get a null vector, never a fake zero one.
            "embedding": [emb[i] if ok[i] else None for i in range(len(pdf))],
            "note_hash": pdf["note_hash"], "status": res.status,
        })
        if acc is not None:
            acc.padded_tokens.add(int(res.stats.padded_tokens))
            acc.real_tokens.add(int(res.stats.real_tokens))
            acc.oom_retries.add(int(res.stats.oom_retries))
            acc.batches.add(int(res.stats.batches))
        yield out


def _spread(df: DataFrame, partitions: int | None) -> DataFrame:
    """Give every task slot work: a small sentences table is often one Parquet file, i.e. one
    partition, which would leave all but one executor core (and GPU share) idle."""
    if partitions:
        return df.repartition(partitions)
    slots = df.sparkSession.sparkContext.defaultParallelism
    if df.rdd.getNumPartitions() < slots:
        return df.repartition(slots)
    return df


def embed_sentences(sentences: DataFrame, cfg: EncodeConfig, partitions: int | None = None
                    ) -> tuple[DataFrame, EncodeAccumulators]:
    """Embeddings of every sentence row (``note_id, sentence_index, start, end, text, ...``).

    Returns the DataFrame (``schemas.EMBEDDINGS`` plus ``status``) and accumulators that hold
    padded/real token and OOM-retry counts once an action has run.
    """
    preflight(cfg.model, cfg.revision, cfg.allow_pickle)
    if cfg.embedding_dtype == "float16":
        log.warning("embedding_dtype=float16: vectors are rounded to half precision, but the "
                    "table stores array<float> (Spark SQL has no 16-bit float type)")
    sc = sentences.sparkSession.sparkContext
    acc = EncodeAccumulators(sc.accumulator(0), sc.accumulator(0), sc.accumulator(0),
                             sc.accumulator(0))
    model_id, revision = model_identity(cfg.model, cfg.revision)
    cols = ["note_id", "sentence_index", "start", "end", "section_category", "text", "note_hash"]
    df = _spread(sentences.select(*cols), partitions)

    def fn(it):
        return embed_batches(it, cfg, model_id, revision, acc)

    return df.mapInPandas(fn, EMBED_UDF_OUTPUT), acc


# --------------------------------------------------------------------------------------------
# Predictions


def predict_batches(batches: Iterator[pd.DataFrame], model: str, revision: str | None,
                    pcfg: PredictConfig, ecfg: EncodeConfig, model_id: str,
                    recorded_revision: str | None) -> Iterator[pd.DataFrame]:
    pred = get_predictor(model, revision, pcfg, ecfg)
    task = pred.loaded.task
    cols = PREDICT_UDF_OUTPUT.fieldNames()
    for pdf in _chunks(batches, CHUNK_ROWS):
        results = pred.predict(pdf["text"].tolist())
        rows = []
        for (_, r), res in zip(pdf.iterrows(), results):
            rows.append(_prediction_row(r, res, task, model_id, recorded_revision))
        yield pd.DataFrame(rows, columns=cols)


def _prediction_row(r, res, task, model_id, revision) -> dict:
    base = {
        "note_id": r["note_id"], "sentence_index": r["sentence_index"], "start": r["start"],
        "end": r["end"], "section_category": r["section_category"], "model": model_id,
        "model_revision": revision, "task": task, "label": None, "score": None,
        "probabilities": None, "spans": None, "note_hash": r["note_hash"],
        "status": getattr(res, "status", "ok") if res is not None else "empty_text",
    }
    if res is None or base["status"] != "ok":
        return base
    off = int(r["start"])  # predictions carry offsets relative to the sentence
    if task == "sequence-classification":
        base["label"], base["score"] = res.label, float(res.score)
        base["probabilities"] = {k: float(v) for k, v in res.probabilities.items()}
    elif task == "token-classification":
        base["spans"] = [{"start": off + e.start, "end": off + e.end, "label": e.label,
                          "score": float(e.score), "candidates": None} for e in res.entities]
    elif task == "fill-mask":
        base["spans"] = [{
            "start": off + m.start, "end": off + m.end, "label": m.candidates[0].token
            if m.candidates else None, "score": float(m.candidates[0].score)
            if m.candidates else None,
            "candidates": [{"token": c.token, "score": float(c.score)} for c in m.candidates],
        } for m in res.masks]
    return base


def predict_sentences(sentences: DataFrame, model: str, revision: str | None,
                      pcfg: PredictConfig, ecfg: EncodeConfig,
                      partitions: int | None = None) -> DataFrame:
    """Predictions of ``model``'s head for every sentence row (``schemas.PREDICTIONS`` less ``fingerprint``)."""
    model_id, recorded_revision = model_identity(model, revision)
    preflight_head(model, revision, ecfg.allow_pickle, pcfg.task)
    cols = ["note_id", "sentence_index", "start", "end", "section_category", "text", "note_hash"]
    df = _spread(sentences.select(*cols), partitions)

    def fn(it):
        return predict_batches(it, model, revision, pcfg, ecfg, model_id, recorded_revision)

    return df.mapInPandas(fn, PREDICT_UDF_OUTPUT)
