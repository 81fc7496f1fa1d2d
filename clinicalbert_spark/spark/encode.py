"""Sentences -> embeddings / predictions inside ``mapInPandas``, one model per Python worker.

The model is loaded once per executor Python worker (``get_cached``; Spark reuses workers
with ``spark.python.worker.reuse``) on the GPU Spark assigned to the task when GPU scheduling
is on (``TaskContext.resources()["gpu"]``), else CUDA if visible, else CPU. Rows of a
partition are gathered into chunks of ``CHUNK_ROWS`` so the encoder can sort them by length
across many Arrow batches before forming token-budget batches. A task whose partition is empty
never loads the model.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import EncodeConfig, PredictConfig
from ..models import model_identity, preflight, preflight_head
from .. import schemas
from ..vectors import VECTOR_COLUMNS, encode_vectors

log = logging.getLogger(__name__)

CHUNK_ROWS = int(os.environ.get("CBS_ENCODE_CHUNK_ROWS", "16384"))
# Rows per encode task when the row count is known: a task sorts only its own rows by length,
# so small tasks pad more (8 tasks of 500 short sentences computed 17% more tokens than 2 of
# 2,000); more, smaller tasks than this only where the cores would otherwise sit idle.
ROWS_PER_TASK = int(os.environ.get("CBS_ENCODE_ROWS_PER_TASK", str(CHUNK_ROWS)))

# What the UDFs add to the columns they keep: the embedding and its accounting.
EMBED_RESULT = T.StructType(
    [T.StructField(n, schemas.EMBEDDINGS[n].dataType, True) for n in
     ("model", "model_revision", "pooling", "dim", "n_tokens", "n_windows", "truncated",
      "embedding")] + [T.StructField("status", T.StringType())])
# The embed stage's result: the vector stored as encode.vector_storage says (vectors.py).
STORED_RESULT = T.StructType(
    EMBED_RESULT.fields[:-1] + [T.StructField(n, schemas.EMBEDDINGS[n].dataType, True)
                                for n in VECTOR_COLUMNS[1:]] + EMBED_RESULT.fields[-1:])
PREDICT_RESULT = T.StructType(
    [T.StructField(n, schemas.PREDICTIONS[n].dataType, True) for n in
     ("model", "model_revision", "task", "label", "score", "probabilities", "spans", "status")])
# Batch accounting, on the first row of each chunk (null elsewhere): summed with a DataFrame
# aggregate after the write, so it works over Spark Connect (no accumulators) and is not
# double-counted when Spark retries a task.
STATS = T.StructType([T.StructField(n, T.LongType()) for n in
                      ("_padded_tokens", "_real_tokens", "_oom_retries", "_batches")])
STATS_COLUMNS = STATS.fieldNames()
# The columns of a sentences table that the embed/predict stages carry into their tables.
SENTENCE_KEEP = ["note_id", "sentence_index", "start", "end", "section_category", "note_hash"]


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


def _probe_precisions(device: str):
    """mapInPandas body: the modes ``"auto"`` resolves to on the executor that runs it."""
    def probe(batches):
        import torch

        from ..encode import resolve_device, resolve_encode_precision
        from ..encode.device import resolve_precision

        for _ in batches:
            pass
        dev = resolve_device(device)
        head = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
            resolve_precision("auto", dev)]
        yield pd.DataFrame({"embed": [resolve_encode_precision("auto", dev)],
                            "predict": [head], "device": [dev.type]})
    return probe


def executor_precisions(spark, cfg: EncodeConfig) -> dict:
    """The numeric modes the executors will run ``cfg.precision`` in: ``{"embed": ...,
    "predict": ...}`` with values ``fp32|bf16|fp16|int8``.

    ``"auto"`` depends on the executor's hardware (GPU, CPU with AMX or not), not the
    driver's, so it is resolved by one small task on an executor; the stages then pass the
    explicit mode to every task (one mode for the whole run, whatever the executors' mix)
    and record it in the tables' fingerprints and in ``runs``. Task heads do not run int8
    (their scores are not covered by the embedding fidelity gate): ``int8`` is ``fp32`` for
    ``predict``.
    """
    if cfg.precision != "auto":
        return {"embed": cfg.precision,
                "predict": "fp32" if cfg.precision == "int8" else cfg.precision}
    row = (spark.range(1, numPartitions=1)
           .mapInPandas(_probe_precisions(cfg.device), "embed string, predict string, device string")
           .first())
    log.info("encode precision auto: %s for embeddings, %s for task heads (executor device %s)",
             row["embed"], row["predict"], row["device"])
    return {"embed": row["embed"], "predict": row["predict"]}


def get_encoder(cfg: EncodeConfig):
    """The worker's cached SentenceEncoder for this config and device (loaded at most once)."""
    from ..encode import SentenceEncoder, get_cached, load_model

    device = _task_device(cfg.device)
    key = ("encoder", cfg.model_dump_json(), str(device))

    def factory():
        from ..models import executor_model_path  # local folder the driver resolved; no hub

        _limit_threads()
        loaded = load_model(executor_model_path(cfg.model, cfg.revision), cfg.revision,
                            task="embed", local_files_only=True)
        return SentenceEncoder(loaded, _encoder_config(cfg), device=device)

    return get_cached(key, factory)


def get_predictor(model: str, revision: str | None, pcfg: PredictConfig, ecfg: EncodeConfig):
    """The worker's cached Predictor for the checkpoint's head (``pcfg.task`` or detected)."""
    from ..encode import Predictor, get_cached, load_model

    device = _task_device(ecfg.device)
    key = ("predictor", model, revision, pcfg.model_dump_json(), ecfg.model_dump_json(),
           str(device))

    def factory():
        from ..models import executor_model_path  # local folder the driver resolved; no hub

        _limit_threads()
        loaded = load_model(executor_model_path(model, revision), revision, task=pcfg.task,
                            local_files_only=True)
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


def _gather(batches: Iterator, rows: int) -> Iterator[list]:
    """Consecutive Arrow batches (frames or series) in lists of at least ``rows`` rows."""
    buf, n = [], 0
    for b in batches:
        buf.append(b)
        n += len(b)
        if n >= rows:
            yield buf
            buf, n = [], 0
    if buf:
        yield buf


def _nonempty(batches: Iterator) -> Iterator | None:
    """``batches`` again, or None when there are none: Spark calls a ``mapInPandas`` function
    for every partition, empty ones included (an unchanged corpus's re-run has nothing to
    encode), and loading the model for them cost each Python worker seconds."""
    it = iter(batches)
    first = next(it, None)
    return None if first is None else itertools.chain([first], it)


def _chunks(batches: Iterator[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    return (pd.concat(buf, ignore_index=True) for buf in _gather(batches, rows))


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


def _output_schema(df: DataFrame, keep: list[str], result: T.StructType,
                   stats: bool) -> T.StructType:
    fields = [T.StructField(c, df.schema[c].dataType, True) for c in keep] + result.fields
    return T.StructType(fields + (STATS.fields if stats else []))


def _stats_columns(out: dict, n: int, stats) -> None:
    for name, value in zip(STATS_COLUMNS, (stats.padded_tokens, stats.real_tokens,
                                           stats.oom_retries, stats.batches)):
        out[name] = pd.array([int(value)] + [None] * (n - 1), dtype="Int64") if n else []


def embed_batches(batches: Iterator[pd.DataFrame], cfg: EncodeConfig, model_id: str,
                  revision: str | None, text_col: str = "text", keep: list[str] | None = None,
                  stats: bool = False, storage: str | None = None) -> Iterator[pd.DataFrame]:
    """Arrow batches of sentence rows -> the kept columns plus :data:`EMBED_RESULT`
    (:data:`STORED_RESULT`, the vector in format ``storage``, when that is given)."""
    batches = _nonempty(batches)
    if batches is None:
        return
    enc = get_encoder(cfg)
    inject_fault("embed")  # after the model load, before any row is encoded or sent back
    keep = list(keep or [])
    # The next chunk is tokenized while the model runs this one (encode_stream).
    for pdf, res in enc.encode_stream(_chunks(batches, CHUNK_ROWS),
                                      texts=lambda pdf: pdf[text_col].tolist()):
        ok = np.asarray([s == "ok" for s in res.status])
        # Spark SQL has no half type: float16 vectors are widened (their values stay rounded).
        emb = res.embeddings.astype(np.float32, copy=False)
        n = len(pdf)
        out = {c: pdf[c] for c in keep}
        out.update({
            "model": model_id, "model_revision": revision, "pooling": cfg.pooling,
            "dim": int(enc.dim), "n_tokens": res.n_tokens.astype(np.int32),
            "n_windows": res.n_windows.astype(np.int32), "truncated": res.truncated.astype(bool),
            # Rows with no usable text get a null vector, never a fake zero one.
            "embedding": [emb[i] if ok[i] else None for i in range(n)],
            "status": res.status,
        })
        if storage:  # in STORED_RESULT's order
            status = out.pop("status")
            out.update(encode_vectors(emb, storage, ok), status=status)
        if stats:
            _stats_columns(out, n, res.stats)
        yield pd.DataFrame(out, index=pdf.index)


def encoder_series_udf(cfg: EncodeConfig):
    """A scalar-iterator pandas UDF ``string -> array<float>`` over the cached encoder;
    Arrow batches are gathered into chunks so that length sorting works across them."""
    from pyspark.sql.functions import pandas_udf

    cfg = worker_config(cfg)

    def encode(it: Iterator[pd.Series]) -> Iterator[pd.Series]:
        it = _nonempty(it)
        if it is None:
            return
        enc = get_encoder(cfg)
        def texts(batches):
            return [t if isinstance(t, str) else "" for b in batches for t in b.tolist()]

        for batches, res in enc.encode_stream(_gather(it, CHUNK_ROWS), texts=texts):
            emb = res.embeddings.astype(np.float32, copy=False)
            vectors = [emb[i] if s == "ok" else None for i, s in enumerate(res.status)]
            at = 0
            for b in batches:  # one output per input batch, in order
                yield pd.Series(vectors[at:at + len(b)], index=b.index, dtype=object)
                at += len(b)

    return pandas_udf(encode, T.ArrayType(T.FloatType()))


def task_slots(spark) -> int:
    """How many tasks to spread encoding over: ``spark.default.parallelism`` when set, else
    ``spark.sql.shuffle.partitions``: read from the session's settings, so the same on
    Spark Connect (which has no SparkContext) as on a classic session."""
    for key in ("spark.default.parallelism", "spark.sql.shuffle.partitions"):
        try:
            value = spark.conf.get(key, None)
        except Exception:  # noqa: BLE001 - a key Connect will not show
            value = None
        if value and str(value).isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 2


def executor_cores(spark) -> int:
    """Tasks that run at once: the executors' cores (``defaultParallelism``: ``local[N]``'s N,
    a cluster's registered cores, or ``spark.default.parallelism``), or :func:`task_slots`
    where the session has no SparkContext (Spark Connect)."""
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # noqa: BLE001 - Spark Connect: no SparkContext
        return task_slots(spark)


def encode_partitions(spark, rows: int | None) -> int:
    """How many tasks to encode ``rows`` rows in: every core busy, and tasks of at most
    :data:`ROWS_PER_TASK` rows (bounded retries, length sorting over many rows); with the count
    unknown, :func:`task_slots`. No more tasks than rows (an empty input is one task)."""
    if rows is None:
        return task_slots(spark)
    n = max(executor_cores(spark), math.ceil(rows / ROWS_PER_TASK))
    return max(1, min(n, rows))


def _spread(df: DataFrame, partitions: int | None, rows: int | None = None) -> DataFrame:
    """Give every task slot work: a small sentences table is often one Parquet file, i.e. one
    partition, which would leave all but one executor core (and GPU share) idle. A round-robin
    repartition also evens out partitions of very different sizes. ``partitions`` (the
    user's setting) wins; else :func:`encode_partitions` of ``rows`` when the caller knows it."""
    return df.repartition(partitions or encode_partitions(df.sparkSession, rows))


def require_columns(df: DataFrame, cols: list[str], what: str) -> None:
    """One line naming the missing columns and the ones there are (names only, never data)."""
    missing = [c for c in cols if c not in df.columns]
    if missing:
        from ..errors import InputError

        shown = df.columns[:30] + (["..."] if len(df.columns) > 30 else [])
        raise InputError(f"{what} lacks column(s) {missing}; it has {shown}")


def worker_config(cfg: EncodeConfig) -> EncodeConfig:
    """``cfg`` as the workers get it: a hub id is resolved (and checked) here, on the driver,
    and the workers read that snapshot folder, pinned to the revision the driver resolved;
    they never call the hub. Local folders and ``pkg:`` models are passed on as given (an
    executor's own environment resolves them)."""
    local = preflight(cfg.model, cfg.revision, cfg.allow_pickle)
    if cfg.model.startswith("pkg:") or Path(cfg.model).expanduser().exists():
        return cfg
    return cfg.model_copy(update={"model": local})


def embed_frame(df: DataFrame, cfg: EncodeConfig, text_col: str = "text",
                keep: list[str] | None = None, partitions: int | None = None,
                stats: bool = False, storage: str | None = None,
                rows: int | None = None) -> DataFrame:
    """Embeddings of ``df[text_col]``: the ``keep`` columns plus :data:`EMBED_RESULT`, or
    :data:`STORED_RESULT` with ``storage`` (a ``vectors.FORMATS`` value), and :data:`STATS`
    when ``stats``. The model is resolved once here, on the driver. ``rows``, the row count
    of ``df`` when the caller has it, sizes the tasks (:func:`encode_partitions`)."""
    keep = list(keep if keep is not None else [])
    require_columns(df, [text_col, *keep], "the input")
    if cfg.embedding_dtype == "float16" and storage != "float16":
        log.warning("embedding_dtype=float16: vectors are rounded to half precision, but "
                    "stored as float32; encode.vector_storage float16 stores half the bytes")
    model_id, revision = model_identity(cfg.model, cfg.revision)
    cfg = worker_config(cfg)
    cols = list(dict.fromkeys([*keep, text_col]))
    src = _spread(df.select(*cols), partitions, rows)
    schema = _output_schema(src, keep, STORED_RESULT if storage else EMBED_RESULT, stats)

    def fn(it):
        return embed_batches(it, cfg, model_id, revision, text_col, keep, stats, storage)

    return src.mapInPandas(fn, schema)


def embed_sentences(sentences: DataFrame, cfg: EncodeConfig, partitions: int | None = None,
                    rows: int | None = None) -> DataFrame:
    """The embeddings stage on a sentences table (``rows`` of them, when known):
    ``schemas.EMBEDDINGS`` (less fingerprint) plus ``status`` and the :data:`STATS` columns."""
    emb = embed_frame(sentences, cfg, "text", SENTENCE_KEEP, partitions, stats=True,
                      storage=cfg.vector_storage, rows=rows)
    names = [f.name for f in schemas.EMBEDDINGS.fields if f.name != "fingerprint"]
    return emb.select(*names, "status", *STATS_COLUMNS)


def embed_summary(df: DataFrame) -> dict[str, int]:
    """Counts of an embed output in one pass (run it on a persisted frame): ``rows``,
    ``tokens``, ``windows``, ``truncated``, ``bad`` (rows without usable text) and the summed
    :data:`STATS` (``padded_tokens``, ``real_tokens``, ``oom_retries``, ``batches``)."""
    row = df.agg(F.count("*").alias("rows"), F.sum("n_tokens").alias("tokens"),
                 F.sum("n_windows").alias("windows"),
                 F.sum(F.col("truncated").cast("int")).alias("truncated"),
                 F.sum((F.col("status") != "ok").cast("int")).alias("bad"),
                 *[F.sum(c).alias(c.lstrip("_")) for c in STATS_COLUMNS]).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}


# --------------------------------------------------------------------------------------------
# Predictions


def predict_batches(batches: Iterator[pd.DataFrame], model: str, revision: str | None,
                    pcfg: PredictConfig, ecfg: EncodeConfig, model_id: str,
                    recorded_revision: str | None, text_col: str = "text",
                    keep: list[str] | None = None, start_col: str | None = "start"
                    ) -> Iterator[pd.DataFrame]:
    """Arrow batches of sentence rows -> the kept columns plus :data:`PREDICT_RESULT`.
    Spans are offsets into the note when ``start_col`` (the sentence's offset) is given."""
    batches = _nonempty(batches)
    if batches is None:
        return
    pred = get_predictor(model, revision, pcfg, ecfg)
    task = pred.loaded.task
    keep = list(keep or [])
    cols = PREDICT_RESULT.fieldNames()
    for pdf in _chunks(batches, CHUNK_ROWS):
        results = pred.predict(pdf[text_col].tolist())
        offsets = (pdf[start_col].tolist() if start_col and start_col in pdf.columns
                   else [0] * len(pdf))
        rows = [_prediction_row(res, task, model_id, recorded_revision, off)
                for res, off in zip(results, offsets)]
        out = pd.DataFrame(rows, columns=cols, index=pdf.index)
        yield pd.concat([pdf[keep], out], axis=1)


def _prediction_row(res, task, model_id, revision, offset) -> dict:
    base = {
        "model": model_id, "model_revision": revision, "task": task, "label": None,
        "score": None, "probabilities": None, "spans": None,
        "status": getattr(res, "status", "ok") if res is not None else "empty_text",
    }
    if res is None or base["status"] != "ok":
        return base
    off = 0 if offset is None or pd.isna(offset) else int(offset)
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


def predict_frame(df: DataFrame, model: str, revision: str | None, pcfg: PredictConfig,
                  ecfg: EncodeConfig, text_col: str = "text", keep: list[str] | None = None,
                  start_col: str | None = None, partitions: int | None = None,
                  rows: int | None = None) -> DataFrame:
    """Predictions of ``model``'s head for ``df[text_col]``: ``keep`` plus
    :data:`PREDICT_RESULT`. Span offsets are relative to the text, or to the note when
    ``start_col`` holds the sentence's offset in it."""
    model_id, recorded_revision = model_identity(model, revision)
    preflight_head(model, revision, ecfg.allow_pickle, pcfg.task)
    model = worker_config(ecfg.model_copy(update={"model": model, "revision": revision})).model
    keep = list(keep if keep is not None else [])
    require_columns(df, [text_col, *keep, *([start_col] if start_col else [])], "the input")
    cols = list(dict.fromkeys([*keep, text_col, *([start_col] if start_col else [])]))
    src = _spread(df.select(*cols), partitions, rows)
    schema = _output_schema(src, keep, PREDICT_RESULT, False)

    def fn(it):
        return predict_batches(it, model, revision, pcfg, ecfg, model_id, recorded_revision,
                               text_col, keep, start_col)

    return src.mapInPandas(fn, schema)


def predict_sentences(sentences: DataFrame, model: str, revision: str | None,
                      pcfg: PredictConfig, ecfg: EncodeConfig,
                      partitions: int | None = None, rows: int | None = None) -> DataFrame:
    """The predict stage on a sentences table (``rows`` of them, when known):
    ``schemas.PREDICTIONS`` less ``fingerprint``."""
    out = predict_frame(sentences, model, revision, pcfg, ecfg, "text", SENTENCE_KEEP,
                        "start", partitions, rows)
    return out.select(*[f.name for f in schemas.PREDICTIONS.fields if f.name != "fingerprint"])
