"""Notes -> sentences -> embeddings -> predictions -> note vectors, incremental and idempotent.

Every output table is partitioned by ``run_id``. A run writes its new rows into its own
partition and replaces that partition as a whole, so running the same run id twice (or again
after a crash) leaves exactly one copy of each row. Work is incremental: a note is segmented
only when its ``(note_id, note_hash)`` is not in ``sentences`` yet, and a sentence is encoded
only when its ``(note_id, note_hash, model, model_revision)`` is not in ``embeddings``.
Rows of a note whose text changed are purged from older partitions.

Table layout under ``output.root``: sentences, embeddings, predictions, note_embeddings,
rejects, runs (see docs/tables.md).
"""
from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import io
from .config import PipelineConfig
from .spark import schemas
from .spark.segment import segment_notes, split_segment_output

log = logging.getLogger(__name__)

TABLES = ("sentences", "embeddings", "predictions", "note_embeddings", "rejects", "runs")
REJECT_KEY = ["note_id", "reason", "source_row"]


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def sanitise_run_id(run_id: str) -> str:
    # Partition directory names and SQL literals: keep it to a safe alphabet.
    safe = "".join(c if c.isalnum() or c in "-_.T" else "_" for c in run_id)
    if not safe:
        raise ValueError("run id is empty")
    return safe[:128]


@dataclass
class RunStats:
    run_id: str
    started_at: dt.datetime
    config_hash: str
    model: str | None = None
    model_revision: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    status: str = "running"

    def add(self, **kw: int) -> None:
        for k, v in kw.items():
            self.counts[k] = self.counts.get(k, 0) + int(v or 0)


RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("started_at", T.TimestampType()),
    T.StructField("ended_at", T.TimestampType()),
    T.StructField("status", T.StringType()),
    T.StructField("config_hash", T.StringType()),
    T.StructField("schema_version", T.StringType()),
    T.StructField("stages", T.StringType()),
    T.StructField("model", T.StringType()),
    T.StructField("model_revision", T.StringType()),
    T.StructField("input_records", T.LongType()),
    T.StructField("notes", T.LongType()),
    T.StructField("notes_segmented", T.LongType()),
    T.StructField("notes_unchanged", T.LongType()),
    T.StructField("notes_changed", T.LongType()),
    T.StructField("rejects", T.LongType()),
    T.StructField("rejects_new", T.LongType()),
    T.StructField("sentences", T.LongType()),
    T.StructField("sentences_embedded", T.LongType()),
    T.StructField("tokens", T.LongType()),
    T.StructField("padded_tokens", T.LongType()),
    T.StructField("windows", T.LongType()),
    T.StructField("truncated", T.LongType()),
    T.StructField("predictions", T.LongType()),
    T.StructField("oom_retries", T.LongType()),
    T.StructField("padding_efficiency", T.DoubleType()),
    T.StructField("sentences_per_s", T.DoubleType()),
    T.StructField("tokens_per_s", T.DoubleType()),
    T.StructField("seconds_total", T.DoubleType()),
    T.StructField("seconds_by_stage", T.StringType()),
])


class Pipeline:
    """One run of the pipeline over one corpus into one folder of tables."""

    def __init__(self, cfg: PipelineConfig, spark: SparkSession | None = None):
        if not cfg.output.root:
            raise ValueError("no output root given (--output-root PATH or output.root)")
        self.cfg = cfg
        if spark is None:
            from .spark.session import get_spark

            spark = get_spark(cfg.spark)
        self.spark = spark
        self.run_id = sanitise_run_id(cfg.run.run_id or new_run_id())
        self.fmt = cfg.output.format
        self.root = cfg.output.root.rstrip("/")
        self.stats = RunStats(self.run_id, dt.datetime.now(dt.timezone.utc), cfg.config_hash())
        self._persisted: list[DataFrame] = []

    # ---------------------------------------------------------------- helpers
    def path(self, table: str) -> str:
        return f"{self.root}/{table}"

    def _existing(self, table: str) -> DataFrame | None:
        """The table's rows from other runs (this run's own partition is being rebuilt)."""
        if self.cfg.run.full_refresh or not io.table_exists(self.spark, self.path(table), self.fmt):
            return None
        df = io.read_table(self.spark, self.path(table), self.fmt)
        return df.where(F.col("run_id") != F.lit(self.run_id))

    def _write(self, table: str, df: DataFrame, extra_partitions: list[str] | None = None) -> None:
        df = df.withColumn("run_id", F.lit(self.run_id))
        if self.cfg.run.full_refresh:
            io.write_table(df, self.path(table), self.fmt, mode="overwrite", partition_by="run_id")
        else:
            io.write_table(df, self.path(table), self.fmt, partition_by="run_id",
                           replace_partitions=[self.run_id] + (extra_partitions or []))

    def _persist(self, df: DataFrame) -> DataFrame:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self._persisted.append(df)
        return df

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        log.info("stage %s: started", name)
        fn()
        self.stats.seconds[name] = round(time.perf_counter() - t0, 3)

    def _purge_stale(self, table: str, current: DataFrame) -> int:
        """Remove rows of notes whose text changed since they were written (other runs only).

        ``current`` holds ``note_id, note_hash`` of the corpus now. Returns rows removed.
        """
        existing = self._existing(table)
        if existing is None or "note_hash" not in existing.columns:
            return 0
        cur = current.select("note_id", F.col("note_hash").alias("_cur_hash"))
        flagged = existing.join(cur, "note_id", "left")
        stale = flagged.where(F.col("_cur_hash").isNotNull()
                              & (F.col("_cur_hash") != F.col("note_hash")))
        runs = [r.run_id for r in stale.select("run_id").distinct().collect()]
        if not runs:
            return 0
        removed = stale.count()
        keep = flagged.where(F.col("run_id").isin(runs) & (
            F.col("_cur_hash").isNull() | (F.col("_cur_hash") == F.col("note_hash")))
        ).drop("_cur_hash")
        # Materialise the rows to keep before their partitions are replaced: the replacement
        # must not read the files it deletes (Parquet has no snapshot isolation).
        staging = f"{self.root}/_staging/{uuid.uuid4().hex[:12]}"
        keep.write.mode("overwrite").parquet(staging)
        kept = self.spark.read.parquet(staging)
        io.write_table(kept, self.path(table), self.fmt, partition_by="run_id",
                       replace_partitions=runs)
        io.delete_path(self.spark, staging)
        log.info("table %s: purged %d rows of changed notes from %d earlier run(s)",
                 table, removed, len(runs))
        return removed

    # ---------------------------------------------------------------- stages
    def read(self) -> None:
        notes = io.read_notes(self.spark, self.cfg.input)
        self.notes = self._persist(notes.notes)
        self.input_rejects = self._persist(notes.rejects)
        n_notes, n_rej = self.notes.count(), self.input_rejects.count()
        self.stats.add(notes=n_notes, rejects=n_rej, input_records=n_notes + n_rej)
        log.info("read: %d notes usable, %d rejected", n_notes, n_rej)

    def segment(self) -> None:
        cfg = self.cfg
        existing = self._existing("sentences")
        todo = self.notes
        if existing is not None:
            done = existing.select("note_id", "note_hash").distinct()
            todo = self.notes.join(done, ["note_id", "note_hash"], "left_anti")
            changed = self.notes.join(existing.select("note_id").distinct(), "note_id", "left_semi")
            changed = changed.join(done, ["note_id", "note_hash"], "left_anti").count()
            self.stats.add(notes_changed=changed)
        out = segment_notes(todo, cfg.segment.backend, cfg.segment.include_text,
                            cfg.spark.partitions)
        out = self._persist(out)
        sentences, seg_rejects = split_segment_output(out)
        t0 = time.perf_counter()
        self._write("sentences", sentences)
        secs = time.perf_counter() - t0
        n_sent = sentences.count()
        n_seg = todo.count()
        n_err = seg_rejects.count()
        self.stats.add(sentences=n_sent, notes_segmented=n_seg - n_err,
                       notes_unchanged=self.stats.counts["notes"] - n_seg)
        self._segment_rejects = seg_rejects
        # A note the segmenter failed on is a reject, no longer a usable note.
        self.stats.add(rejects=n_err, notes=-n_err)
        if existing is not None:
            for table in ("sentences", "embeddings", "predictions", "note_embeddings"):
                if table == "sentences" or io.table_exists(self.spark, self.path(table), self.fmt):
                    self._purge_stale(table, self.notes)
        log.info("segment: %d notes -> %d sentences (%.0f sentences/s), %d notes failed, "
                 "%d unchanged notes skipped", n_seg - n_err, n_sent, n_sent / max(secs, 1e-9),
                 n_err, self.stats.counts["notes_unchanged"])

    def write_rejects(self) -> None:
        rejects = self.input_rejects
        if getattr(self, "_segment_rejects", None) is not None:
            rejects = rejects.unionByName(self._segment_rejects)
        existing = self._existing("rejects")
        if existing is not None:
            key = [F.coalesce(F.col(c).cast("string"), F.lit("")) for c in REJECT_KEY]
            old = existing.select(*[k.alias(c) for k, c in zip(key, REJECT_KEY)]).distinct()
            new = rejects.select("*", *[k.alias("_k_" + c) for k, c in zip(key, REJECT_KEY)])
            rejects = new.join(old.select(*[F.col(c).alias("_k_" + c) for c in REJECT_KEY]),
                               ["_k_" + c for c in REJECT_KEY], "left_anti").drop(
                *["_k_" + c for c in REJECT_KEY])
        rejects = self._persist(rejects)
        self._write("rejects", rejects)
        self.stats.add(rejects_new=rejects.count())

    def current_sentences(self) -> DataFrame:
        return io.read_table(self.spark, self.path("sentences"), self.fmt)

    def embed(self) -> None:
        from .spark.encode import embed_sentences

        cfg = self.cfg
        sentences = self.current_sentences()
        existing = self._existing("embeddings")
        model_id, revision = resolve_model_identity(cfg.encode.model, cfg.encode.revision)
        self.stats.model, self.stats.model_revision = model_id, revision
        todo = sentences
        if existing is not None:
            done = existing.where(
                (F.col("model") == model_id)
                & F.col("model_revision").eqNullSafe(F.lit(revision))
            ).select("note_id", "note_hash").distinct()
            todo = sentences.join(done, ["note_id", "note_hash"], "left_anti")
        todo = attach_text(todo, self.notes)  # rows written with --no-text have none
        t0 = time.perf_counter()
        emb, acc = embed_sentences(todo, cfg.encode, cfg.spark.partitions)
        emb = self._persist(emb)
        self._write("embeddings", emb.drop("status"))
        secs = time.perf_counter() - t0
        agg = emb.agg(F.count("*").alias("n"), F.sum("n_tokens").alias("tok"),
                      F.sum("n_windows").alias("win"),
                      F.sum(F.col("truncated").cast("int")).alias("trunc"),
                      F.sum((F.col("status") != "ok").cast("int")).alias("bad")).first()
        n, tok = agg["n"] or 0, agg["tok"] or 0
        self.stats.add(sentences_embedded=n, tokens=tok, windows=agg["win"] or 0,
                       truncated=agg["trunc"] or 0, padded_tokens=acc.padded_tokens.value,
                       oom_retries=acc.oom_retries.value)
        self.stats.extra["embed_seconds"] = secs
        log.info("embed: %d sentences, %d tokens in %.1f s (%.1f sentences/s, %.0f tokens/s), "
                 "%d windows, %d empty rows, padding efficiency %.3f, OOM retries %d", n, tok,
                 secs, n / max(secs, 1e-9), tok / max(secs, 1e-9), agg["win"] or 0,
                 agg["bad"] or 0, tok / max(acc.padded_tokens.value, 1),
                 acc.oom_retries.value)

    def predict(self) -> None:
        from .spark.encode import predict_sentences

        cfg = self.cfg
        sentences = self.current_sentences()
        existing = self._existing("predictions")
        model, model_revision = cfg.predict_model()
        model_id, revision = resolve_model_identity(model, model_revision)
        todo = sentences
        if existing is not None:
            done = existing.where(F.col("model") == model_id).select(
                "note_id", "note_hash").distinct()
            todo = sentences.join(done, ["note_id", "note_hash"], "left_anti")
        todo = attach_text(todo, self.notes)  # rows written with --no-text have none
        preds = self._persist(predict_sentences(todo, model, model_revision, cfg.predict,
                                                cfg.encode, cfg.spark.partitions))
        self._write("predictions", preds)
        n = preds.count()
        self.stats.add(predictions=n)
        log.info("predict: %d rows", n)

    def aggregate(self) -> None:
        """Note-level vectors: one per note and one per (note, section category).

        Incremental like the other stages: only notes whose ``(note_id, note_hash, model)``
        has no vector yet are aggregated (all of them on the first run or a full refresh).
        """
        if not io.table_exists(self.spark, self.path("embeddings"), self.fmt):
            log.info("aggregate: no embeddings table yet; skipped")
            return
        emb = io.read_table(self.spark, self.path("embeddings"), self.fmt)
        existing = self._existing("note_embeddings")
        if existing is not None and "note_hash" in existing.columns:
            done = existing.select("note_id", "note_hash", "model").distinct()
            emb = emb.join(done, ["note_id", "note_hash", "model"], "left_anti")
        nv = self._persist(note_vectors(emb))
        self._write("note_embeddings", nv)
        log.info("aggregate: %d note/section vectors", nv.count())

    def write_run(self) -> None:
        s = self.stats
        ended = dt.datetime.now(dt.timezone.utc)
        c = s.counts
        total = (ended - s.started_at).total_seconds()
        emb_secs = s.extra.get("embed_seconds", 0.0)
        import json

        row = {
            "run_id": s.run_id, "started_at": s.started_at, "ended_at": ended,
            "status": s.status, "config_hash": s.config_hash,
            "schema_version": schemas.SCHEMA_VERSION,
            "stages": ",".join(self.cfg.run.stages), "model": s.model,
            "model_revision": s.model_revision,
            "padding_efficiency": (c.get("tokens", 0) / c["padded_tokens"])
            if c.get("padded_tokens") else None,
            "sentences_per_s": c.get("sentences_embedded", 0) / emb_secs if emb_secs else None,
            "tokens_per_s": c.get("tokens", 0) / emb_secs if emb_secs else None,
            "seconds_total": total, "seconds_by_stage": json.dumps(s.seconds),
        }
        for f in RUNS_SCHEMA.fields:
            if f.dataType == T.LongType():
                row[f.name] = int(c.get(f.name, 0))
        df = self.spark.createDataFrame([row], RUNS_SCHEMA)
        # One row per (run id, stages): the DAG runs each stage as its own job under one run
        # id, and a re-run of a stage replaces that stage's row only.
        if io.table_exists(self.spark, self.path("runs"), self.fmt):
            others = io.read_table(self.spark, self.path("runs"), self.fmt).where(
                (F.col("run_id") == s.run_id) & (F.col("stages") != row["stages"]))
            others = others.select(*[c.name for c in RUNS_SCHEMA.fields]).collect()
            if others:
                df = self.spark.createDataFrame([row] + [r.asDict() for r in others], RUNS_SCHEMA)
        io.write_table(df.drop("run_id").withColumn("run_id", F.lit(s.run_id)),
                       self.path("runs"), self.fmt, partition_by="run_id",
                       replace_partitions=[s.run_id])
        self.summary_row = row

    def run(self) -> dict:
        stages = self.cfg.run.stages
        log.info("run %s: stages %s, output %s (%s)", self.run_id, ",".join(stages), self.root,
                 self.fmt)
        try:
            self._timed("read", self.read)
            if "segment" in stages:
                self._timed("segment", self.segment)
            self._timed("rejects", self.write_rejects)
            if "embed" in stages:
                self._timed("embed", self.embed)
            if "predict" in stages or self.cfg.predict.enabled:
                self._timed("predict", self.predict)
            if "aggregate" in stages:
                self._timed("aggregate", self.aggregate)
            self.stats.status = "succeeded"
        except BaseException:
            self.stats.status = "failed"
            raise
        finally:
            try:
                self.write_run()
            finally:
                for df in self._persisted:
                    df.unpersist()
        return self.summary_row


def resolve_model_identity(model: str, revision: str | None) -> tuple[str, str | None]:
    """(model id as recorded in tables, revision). Local paths are recorded as given."""
    from .models import model_identity

    return model_identity(model, revision)


def attach_text(sentences: DataFrame, notes: DataFrame) -> DataFrame:
    """Fill sentence text that is missing (tables written with ``--no-text``) from the notes.

    Spark's ``substring`` counts code points, as Python's offsets do (its start is 1-based).
    """
    t = notes.select("note_id", "note_hash", F.col("text").alias("_note_text"))
    joined = sentences.join(t, ["note_id", "note_hash"], "left")
    from_note = F.expr("substring(_note_text, start + 1, `end` - start)")
    text = F.coalesce(F.col("text"), from_note) if "text" in sentences.columns else from_note
    return joined.withColumn("text", text).drop("_note_text")


def note_vectors(emb: DataFrame) -> DataFrame:
    """Mean of the sentence vectors per note and per (note, section category)."""
    keys = ["note_id", "note_hash", "model", "model_revision", "pooling", "dim"]
    e = emb.where(F.col("embedding").isNotNull()).select(*keys, "section_category", "embedding")
    out_schema = T.StructType([
        T.StructField("note_id", T.StringType()), T.StructField("section_category", T.StringType()),
        T.StructField("model", T.StringType()), T.StructField("model_revision", T.StringType()),
        T.StructField("pooling", T.StringType()), T.StructField("n_sentences", T.IntegerType()),
        T.StructField("dim", T.IntegerType()),
        T.StructField("embedding", T.ArrayType(T.FloatType(), False)),
        T.StructField("note_hash", T.StringType()),
    ])

    def mean(pdf):
        import numpy as np
        import pandas as pd

        first = pdf.iloc[0]
        mat = np.stack(pdf["embedding"].to_numpy()).astype(np.float64)
        rows = [(None, mat.mean(axis=0), len(pdf))]  # the whole note
        for cat, idx in pdf.groupby(pdf["section_category"].fillna("other")).indices.items():
            rows.append((cat, mat[idx].mean(axis=0), len(idx)))
        return pd.DataFrame({
            "note_id": first.note_id, "section_category": [r[0] for r in rows],
            "model": first.model, "model_revision": first.model_revision,
            "pooling": first.pooling, "n_sentences": [r[2] for r in rows],
            "dim": int(first.dim), "embedding": [r[1].astype(np.float32) for r in rows],
            "note_hash": first.note_hash,
        })

    return e.groupBy(*keys).applyInPandas(mean, out_schema)
