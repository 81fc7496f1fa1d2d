"""Notes -> sentences -> embeddings -> predictions -> note vectors, one stage at a time.

Each stage is a diff of its table against its source (see :mod:`clinicalbert_spark.state`):
rows that are no longer current are removed and rows for keys that have none are computed,
in one commit. What "current" means per table, and what each kind of run does, is in
docs/tables.md ("State model"). The run holds the output root's lock throughout.

Table layout under ``output.root``: sentences, embeddings, predictions, note_embeddings,
rejects, runs, and ``_state/`` (lock, commit journal).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import io, schemas
from .config import PipelineConfig
from .errors import ConfigError, OutputError
from .schemas import SPECS
from .spark.aggregate import AGGREGATE_VERSION, note_vectors
from .spark.segment import segment_counts, segment_notes, split_segment_output
from .spark.text import attach_text
from .state import (SimulatedCrash, TableStore, crash_point, fingerprint, new_run_id,
                    rows_in, rows_not_in, sanitise_run_id)

log = logging.getLogger(__name__)

SENTENCE_LINEAGE = ["note_id", "sentence_index", "note_hash", "start", "end"]


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


def _model_identity(model: str, revision: str | None) -> tuple[str, str | None]:
    from .models import model_identity

    return model_identity(model, revision)


def segment_settings(cfg: PipelineConfig) -> dict:
    """What determines the sentences table's rows (its fingerprint)."""
    from .segment import get_segmenter

    seg = get_segmenter(cfg.segment.backend)
    return {"backend": seg.name, "version": seg.version,
            "include_text": cfg.segment.include_text}


def embed_settings(cfg: PipelineConfig) -> dict:
    """What determines a vector (the embeddings table's fingerprint)."""
    e = cfg.encode
    model_id, revision = _model_identity(e.model, e.revision)
    return {"model": model_id, "revision": revision, "pooling": e.pooling,
            "normalize": e.normalize, "max_length": e.max_length, "stride": e.stride,
            "long_policy": e.long_policy, "precision": e.precision,
            "embedding_dtype": e.embedding_dtype,
            # only when compact: float32 tables written before schema 2.2 stay current
            **({"vector_storage": e.vector_storage} if e.vector_storage != "float32" else {})}


class Pipeline:
    """One run of the pipeline over one input into one output root."""

    def __init__(self, cfg: PipelineConfig, spark: SparkSession | None = None):
        if not cfg.output.root:
            raise ConfigError("no output root given (--output-root PATH or output.root)")
        self.cfg = cfg
        self._spark = spark
        self.run_id_given = cfg.run.run_id or new_run_id()
        self.run_id = sanitise_run_id(self.run_id_given)
        self.store = TableStore(spark, cfg.output.root, cfg.output.format, self.run_id)
        self.root = cfg.output.root.rstrip("/")
        self.full = cfg.run.full_refresh
        self.snapshot = self.full or cfg.input.delivery == "snapshot"
        self.stats = RunStats(self.run_id, dt.datetime.now(dt.timezone.utc), cfg.config_hash())
        self.fingerprints: dict[str, dict] = {}
        self._persisted: list[DataFrame] = []
        self._notes: io.Notes | None = None
        self._precisions: dict | None = None

    # ---------------------------------------------------------------- helpers
    @property
    def spark(self) -> SparkSession:
        """The session, started on first use: a run that finds the root locked by another
        stops before paying for a JVM."""
        if self._spark is None:
            from .spark.session import get_spark

            self._spark = self.store.spark = get_spark(self.cfg.spark)
        return self._spark

    def _persist(self, df: DataFrame) -> DataFrame:
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self._persisted.append(df)
        return df

    def _timed(self, name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        log.info("stage %s: started", name)
        fn()
        self.stats.seconds[name] = round(time.perf_counter() - t0, 3)
        crash_point(f"after:{name}")

    @property
    def notes(self) -> io.Notes:
        """The input, read once per run (only stages that need it read it)."""
        if self._notes is None:
            # Both halves from one persisted frame: the input is read and checked once.
            records = self._persist(io.read_notes(self.spark, self.cfg.input).records)
            self._notes = io.split_records(records)
        return self._notes

    def _fp(self, table: str, settings: dict) -> str:
        fp = fingerprint(table, settings)
        self.fingerprints[table] = {"fingerprint": fp, "settings": settings}
        return fp

    def segment_fingerprint(self) -> str:
        return self._fp("sentences", segment_settings(self.cfg))

    def encode_cfg(self, stage: str = "embed"):
        """``cfg.encode`` with ``precision`` resolved where the executors run (``"auto"`` is
        not what determines a vector; the mode is): passed to the tasks and fingerprinted."""
        if self._precisions is None:
            from .spark.encode import executor_precisions

            self._precisions = executor_precisions(self.spark, self.cfg.encode)
        return self.cfg.encode.model_copy(update={"precision": self._precisions[stage]})

    def embed_fingerprint(self) -> str:
        settings = embed_settings(self.cfg.model_copy(update={"encode": self.encode_cfg()}))
        self.stats.model, self.stats.model_revision = settings["model"], settings["revision"]
        return self._fp("embeddings", settings)

    def predict_fingerprint(self) -> str:
        model, revision = self.cfg.predict_model()
        model_id, revision = _model_identity(model, revision)
        p, e = self.cfg.predict, self.cfg.encode
        return self._fp("predictions", {
            "model": model_id, "revision": revision, "task": p.task, "top_k": p.top_k,
            "max_length": e.max_length, "stride": e.stride, "long_policy": e.long_policy,
            "precision": self.encode_cfg("predict").precision})

    # ---------------------------------------------------------------- stages
    def segment(self) -> None:
        """sentences and rejects from the input."""
        spec = SPECS["sentences"]
        notes = self.notes
        fp = self.segment_fingerprint()
        n_valid, n_rej = io.count_records(notes)
        existing = self.store.read(spec)
        have = existing.select("note_id", "note_hash", "fingerprint").dropDuplicates(["note_id"])
        incoming = notes.notes.select("note_id", F.col("note_hash").alias("_in_hash"))
        # An id whose kept record is rejected now (ISERROR, emptied text...) loses its rows.
        rejected = (notes.rejects.where(F.col("note_id").isNotNull()
                                        & (F.col("reason") != "duplicate_id"))
                    .select("note_id").distinct().join(incoming, "note_id", "left_anti")
                    .withColumn("_rejected", F.lit(True)))
        flags = have.join(incoming, "note_id", "left").join(rejected, "note_id", "left")
        in_input = F.col("_in_hash").isNotNull()
        same_fp = F.col("fingerprint").eqNullSafe(F.lit(fp))
        current = in_input & (F.col("note_hash") == F.col("_in_hash")) & same_fp
        kept_absent = ~in_input & F.col("_rejected").isNull() & F.lit(not self.snapshot)
        stale = ~current & ~kept_absent
        if self.full:  # nothing is current: every row is rebuilt from this input
            current, stale = F.lit(False), F.lit(True)
        flags = self._persist(flags.select(
            "note_id", current.alias("current"), stale.alias("stale"),
            (kept_absent & ~same_fp).alias("cannot_redo"),
            (stale & ~in_input).alias("deleted"),
            (in_input & ~current).alias("changed")))
        agg = flags.agg(*[F.sum(F.col(c).cast("long")).alias(c) for c in
                          ("current", "stale", "cannot_redo", "deleted", "changed")],
                        F.count("*").alias("existing")).first()
        n_existing = agg["existing"] or 0
        if (agg["cannot_redo"] or 0) and not self.full:
            raise OutputError(
                f"segmentation settings changed since {agg['cannot_redo']} notes under "
                f"{self.root} were segmented, and they are not in this input (upsert delivery): "
                "run the whole corpus with --full-refresh (or --input.delivery snapshot)")
        deleted = agg["deleted"] or 0
        if (self.snapshot and not self.full and n_existing
                and deleted / n_existing > self.cfg.run.max_delete_fraction):
            raise OutputError(
                f"this snapshot would delete {deleted} of the {n_existing} notes under "
                f"{self.root} ({deleted / n_existing:.0%} > run.max_delete_fraction "
                f"{self.cfg.run.max_delete_fraction:g}); if the input really is the whole "
                "corpus, pass --run.max_delete_fraction 1")
        todo = notes.notes.join(flags.where("current"), "note_id", "left_anti")
        out = self._persist(segment_notes(todo, self.cfg.segment.backend,
                                          self.cfg.segment.include_text,
                                          self.cfg.spark.partitions))
        sentences, seg_rejects = split_segment_output(out)
        sentences = sentences.withColumn("fingerprint", F.lit(fp))
        counts = segment_counts(out)  # the notes to do are the segmenter's rows
        n_todo, n_err = counts["notes"], counts["failed"]
        remove = existing.join(flags.where("stale"), "note_id", "left_semi").select(*spec.key) \
            if agg["stale"] else None  # none stale: the commit needs no pass to find them
        res = self.store.commit(spec, sentences, remove, replace_all=self.full)
        self.stats.add(input_records=n_valid + n_rej, notes=n_valid - n_err,
                       notes_segmented=n_todo - n_err, notes_unchanged=n_valid - n_todo,
                       notes_changed=agg["changed"] or 0, notes_deleted=deleted,
                       rejects=n_rej + n_err, sentences=res.added,
                       sentences_removed=res.removed)
        self._commit_rejects(notes.rejects.unionByName(seg_rejects))
        log.info("segment: %d notes segmented -> %d sentences, %d unchanged, %d changed, "
                 "%d deleted, %d failed", n_todo - n_err, res.added, n_valid - n_todo,
                 agg["changed"] or 0, deleted, n_err)

    def _commit_rejects(self, rejects: DataFrame) -> None:
        spec = SPECS["rejects"]
        rejects = self._persist(rejects)
        existing = self.store.read(spec)
        if self.snapshot:
            remove = None  # replace_all: the rejects of this input are the rejects
        else:  # upsert: an id delivered again gets this input's verdict; a re-run replaces itself
            ids = self.notes.notes.select("note_id").unionByName(
                rejects.select("note_id")).where(F.col("note_id").isNotNull())
            remove = rows_in(existing, ids, ["note_id"]).unionByName(
                existing.where(F.col("run_id") == self.run_id)).select(*spec.key)
        res = self.store.commit(spec, rejects, remove, replace_all=self.snapshot)
        self.stats.add(rejects_new=res.added)

    def _sentences_todo(self, table: str, fp: str) -> tuple[DataFrame, DataFrame]:
        """(sentences with no current row in ``table``, keys of its stale rows)."""
        spec = SPECS[table]
        sentences = self.store.read(SPECS["sentences"])
        existing = self.store.read(spec)
        current = existing.where(F.col("fingerprint").eqNullSafe(F.lit(fp)))
        current = rows_in(current, sentences, SENTENCE_LINEAGE)
        if self.full:
            current = current.limit(0)
        stale = rows_not_in(existing.select(*spec.key), current, spec.key)
        todo = rows_not_in(sentences, current, spec.key)
        return todo, stale

    def _with_text(self, todo: DataFrame) -> tuple[DataFrame, int]:
        """(the rows to do, persisted, with text; their count). Rows written with --no-text
        get their text back from the input's notes. The count sizes the encode tasks; it is
        the persisted frame's first pass, which the encoder then reads from the cache."""
        todo = self._persist(todo)
        row = todo.agg(F.count("*").alias("n"),
                       F.count(F.when(F.col("text").isNull(), True)).alias("no_text")).first()
        if not row["no_text"]:
            return todo, int(row["n"])
        todo = self._persist(attach_text(todo, self.notes.notes))
        missing = todo.where(F.col("text").isNull()).count()
        if missing:
            raise OutputError(
                f"{missing} sentences have no text (tables written with --no-text) and their "
                "notes are not in this input; deliver those notes (or the whole corpus with "
                "--full-refresh) to encode them")
        return todo, int(row["n"])

    def embed(self) -> None:
        from .spark.encode import STATS_COLUMNS, embed_sentences, embed_summary

        spec = SPECS["embeddings"]
        fp = self.embed_fingerprint()
        todo, stale = self._sentences_todo("embeddings", fp)
        todo, rows = self._with_text(todo)
        t0 = time.perf_counter()
        emb = embed_sentences(todo, self.encode_cfg(), self.cfg.spark.partitions, rows)
        emb = self._persist(emb.withColumn("fingerprint", F.lit(fp)))
        a = embed_summary(emb)
        secs = time.perf_counter() - t0
        res = self.store.commit(spec, emb.drop("status", *STATS_COLUMNS), stale,
                                replace_all=self.full, added=a["rows"])
        n, tok = a["rows"], a["tokens"]
        self.stats.add(sentences_embedded=n, tokens=tok, windows=a["windows"],
                       truncated=a["truncated"], padded_tokens=a["padded_tokens"],
                       oom_retries=a["oom_retries"], embeddings_removed=res.removed)
        self.stats.extra["embed_seconds"] = secs
        log.info("embed: %d sentences, %d tokens in %.1f s (%.1f sentences/s, %.0f tokens/s), "
                 "%d windows, %d empty rows, padding efficiency %.3f, OOM retries %d, "
                 "%d stale vectors removed", n, tok, secs, n / max(secs, 1e-9),
                 tok / max(secs, 1e-9), a["windows"], a["bad"],
                 tok / max(a["padded_tokens"], 1), a["oom_retries"], res.removed)

    def predict(self) -> None:
        from .spark.encode import predict_sentences

        spec = SPECS["predictions"]
        fp = self.predict_fingerprint()
        todo, stale = self._sentences_todo("predictions", fp)
        todo, rows = self._with_text(todo)
        model, revision = self.cfg.predict_model()
        preds = self._persist(predict_sentences(
            todo, model, revision, self.cfg.predict, self.encode_cfg("predict"),
            self.cfg.spark.partitions, rows).withColumn("fingerprint", F.lit(fp)))
        res = self.store.commit(spec, preds, stale, replace_all=self.full, added=preds.count())
        self.stats.add(predictions=res.added)
        log.info("predict: %d rows, %d stale rows removed", res.added, res.removed)

    def aggregate(self) -> None:
        """Note vectors for every note whose sentences all have current vectors."""
        spec = SPECS["note_embeddings"]
        emb_fp = self.embed_fingerprint()
        fp = self._fp("note_embeddings", {"embeddings": emb_fp, "version": AGGREGATE_VERSION})
        sentences = self.store.read(SPECS["sentences"])
        emb = self.store.read(SPECS["embeddings"]).where(
            F.col("fingerprint").eqNullSafe(F.lit(emb_fp)))
        # Not persisted: this is every stored vector (the whole table on an unchanged corpus,
        # ~3 KB a sentence). The per-note counts (persisted, one row a note: they are used
        # three times below) read only its key columns; the vectors are read for the notes
        # to do alone (none on an unchanged corpus).
        emb = rows_in(emb, sentences, SENTENCE_LINEAGE)
        per_note = self._persist(
            sentences.groupBy("note_id", "note_hash")
            .agg(F.count("*").alias("_n"), F.first("fingerprint").alias("_seg_fp"))
            .join(emb.groupBy("note_id").agg(F.count("*").alias("_e")), "note_id")
            .where(F.col("_n") == F.col("_e"))
            .select("note_id", F.col("note_hash").alias("_h"),
                    F.sha2(F.concat_ws("|", F.lit(fp), F.col("_seg_fp")), 256)
                    .substr(1, 16).alias("_fp")))
        existing = self.store.read(spec)
        current = existing.join(per_note, "note_id").where(
            (F.col("note_hash") == F.col("_h")) & F.col("fingerprint").eqNullSafe(F.col("_fp"))
        ).select(*spec.key)
        if self.full:
            current = current.limit(0)
        current = self._persist(current)
        stale = rows_not_in(existing.select(*spec.key), current, spec.key)
        todo = per_note.join(current.select("note_id").distinct(), "note_id", "left_anti")
        nv = note_vectors(emb.join(todo.select("note_id"), "note_id", "left_semi"))
        nv = self._persist(nv.join(todo.select("note_id", F.col("_fp").alias("fingerprint")),
                                   "note_id"))
        res = self.store.commit(spec, nv, stale, replace_all=self.full, added=nv.count())
        self.stats.add(note_vectors=res.added)
        log.info("aggregate: %d note/section vectors, %d stale removed", res.added, res.removed)

    # ---------------------------------------------------------------- the run
    def _check_run_id(self) -> None:
        other = [r for r in self.store.run_rows(self.run_id)
                 if r["run_id_given"] is not None and r["run_id_given"] != self.run_id_given]
        if other:
            raise ConfigError(
                f"run id {self.run_id_given!r} is stored as {self.run_id!r}, which a run with "
                "a different id already used; choose another run id")

    def _mark_crashed(self, owner: dict | None) -> None:
        if not owner or not owner.get("run_id"):
            return
        for row in self.store.run_rows(owner["run_id"]):
            if row["status"] == "running":
                self.store.commit_run(dict(row, status="crashed"))

    def run_row(self) -> dict:
        s, c = self.stats, self.stats.counts
        ended = dt.datetime.now(dt.timezone.utc)
        emb_secs = s.extra.get("embed_seconds", 0.0)
        row = {
            "run_id": s.run_id, "run_id_given": self.run_id_given,
            "started_at": s.started_at, "ended_at": ended, "status": s.status,
            "config_hash": s.config_hash, "schema_version": schemas.SCHEMA_VERSION,
            "stages": ",".join(self.cfg.run.stages), "delivery": self.cfg.input.delivery,
            "full_refresh": self.full, "model": s.model, "model_revision": s.model_revision,
            "fingerprints": json.dumps(self.fingerprints, sort_keys=True, default=str),
            "padding_efficiency": (c.get("tokens", 0) / c["padded_tokens"])
            if c.get("padded_tokens") else None,
            "sentences_per_s": c.get("sentences_embedded", 0) / emb_secs if emb_secs else None,
            "tokens_per_s": c.get("tokens", 0) / emb_secs if emb_secs else None,
            "seconds_total": (ended - s.started_at).total_seconds(),
            "seconds_by_stage": json.dumps(s.seconds),
        }
        for f in schemas.RUNS.fields:
            if f.dataType == schemas.L:
                row[f.name] = int(c.get(f.name, 0))
        return row

    def write_run(self) -> dict:
        """One row per (run id, stages): the DAG runs each stage as its own job under one id."""
        row = self.run_row()
        self.store.commit_run(row)
        return row

    def run(self) -> dict:
        stages = self.cfg.run.stages
        log.info("run %s: stages %s, output %s (%s, %s delivery%s)", self.run_id,
                 ",".join(stages), self.root, self.store.fmt, self.cfg.input.delivery,
                 ", full refresh" if self.full else "")
        lock = self.store.acquire(",".join(stages), self.cfg.run.lock_wait_s,
                                  self.cfg.run.lock_stale_s, on_locked=lambda: self.spark)
        try:
            self._mark_crashed(lock.taken_over)
            self._check_run_id()
            self.write_run()  # status running: a killed run is visible as such
            try:
                if "segment" in stages:
                    self._timed("segment", self.segment)
                if "embed" in stages:
                    self._timed("embed", self.embed)
                if "predict" in stages or self.cfg.predict.enabled:
                    self._timed("predict", self.predict)
                if "aggregate" in stages:
                    self._timed("aggregate", self.aggregate)
                self.stats.status = "succeeded"
            except SimulatedCrash:
                raise
            except BaseException:
                self.stats.status = "failed"
                raise
            finally:
                if self.stats.status != "running":
                    self.summary_row = self.write_run()
        except SimulatedCrash:
            lock.abandon()
            raise
        except BaseException:
            lock.release()
            raise
        else:
            lock.release()
        finally:
            for df in self._persisted:
                df.unpersist()
        return self.summary_row
