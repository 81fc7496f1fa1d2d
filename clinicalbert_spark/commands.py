"""The bodies of the command-line jobs: the single-stage jobs (``jobs/segment_notes.py``, ``embed_sentences.py``,
``predict.py``). Each writes one table (overwrite) plus its run summary; the incremental,
multi-table run lives in :mod:`clinicalbert_spark.pipeline`."""
from __future__ import annotations

import logging
import time

from pyspark import StorageLevel
from pyspark.sql import functions as F

from . import io
from .config import PipelineConfig
from .errors import ConfigError, InputError
from .models import preflight, preflight_head
from .pipeline import embed_settings, segment_settings
from .spark.text import as_sentences, attach_text

from .state import SimulatedCrash, fingerprint, new_run_id, sanitise_run_id, write_table
from .spark.session import get_spark

log = logging.getLogger("clinicalbert_spark.jobs")

def rejects_path(output: str) -> str:
    return output.rstrip("/") + "_rejects"

def print_summary(title: str, items: dict) -> None:
    width = max(len(k) for k in items) + 2
    lines = [title] + [f"  {k:<{width}}{v}" for k, v in items.items()]
    print("\n".join(lines), flush=True)

def segment_job(cfg: PipelineConfig) -> int:
    from .spark.segment import segment_counts, segment_notes, split_segment_output

    out = cfg.output.path
    if not out:
        raise ConfigError("no output given (--output PATH)")
    spark = get_spark(cfg.spark)
    run_id = sanitise_run_id(cfg.run.run_id or new_run_id())
    t0 = time.perf_counter()
    notes = io.read_notes(spark, cfg.input)
    # One pass over the input: its rejects ride through the segmenter's persisted output.
    seg = segment_notes(notes.records, cfg.segment.backend, cfg.segment.include_text,
                        cfg.spark.partitions).persist(StorageLevel.MEMORY_AND_DISK)
    sentences, rejects = split_segment_output(seg)
    sentences = sentences.withColumn(
        "fingerprint", F.lit(fingerprint("sentences", segment_settings(cfg))))
    write_table(sentences.withColumn("run_id", F.lit(run_id)), out, cfg.output.format,
                   mode=cfg.output.mode)
    rejects = rejects.withColumn("run_id", F.lit(run_id))
    write_table(rejects, rejects_path(out), cfg.output.format, mode=cfg.output.mode)
    counts = segment_counts(seg)
    n_notes, n_sent = counts["segmented"], counts["sentences"]
    by_reason = {r.reason: r["count"] for r in rejects.groupBy("reason").count().collect()}
    secs = time.perf_counter() - t0
    items = {"run id": run_id, "notes segmented": n_notes, "sentences": n_sent,
             "rejected records": sum(by_reason.values())}
    items.update({f"  rejected: {k}": v for k, v in sorted(by_reason.items())})
    items.update({"sentences table": f"{out} ({cfg.output.format})",
                  "rejects table": rejects_path(out), "seconds": f"{secs:.1f}"})
    print_summary("segment_notes summary", items)
    seg.unpersist()
    return 0

def _sentences_with_text(spark, cfg: PipelineConfig, notes_path: str | None):
    """(the input sentences with their text, their row count): the count (no column is read)
    sizes the encode tasks."""
    fmt = cfg.input.format if cfg.input.format in ("parquet", "delta", "table") else "auto"
    c = cfg.sentence_columns
    sentences = as_sentences(io.read_input_table(spark, cfg.input.path, fmt), c.id_column,
                             c.index_column, c.text_column)
    rows = sentences.count()
    if notes_path:  # fills the text of rows written with --no-text (one row per sentence)
        ncfg = cfg.input.model_copy(update={"path": io.absolute(notes_path), "format": "auto"})
        return attach_text(sentences, io.read_notes(spark, ncfg).notes), rows
    if sentences.where(F.col("text").isNotNull()).limit(1).count() == 0:
        raise InputError("the sentences table has no text (written with --no-text); "
                         "pass --notes PATH so the text is re-read from the notes")
    return sentences, rows

def _with_precision(spark, cfg: PipelineConfig, stage: str) -> PipelineConfig:
    """``cfg`` with ``encode.precision`` resolved on an executor (what the rows record)."""
    from .spark.encode import executor_precisions

    mode = executor_precisions(spark, cfg.encode)[stage]
    return cfg.model_copy(update={"encode": cfg.encode.model_copy(update={"precision": mode})})


def embed_job(cfg: PipelineConfig, notes_path: str | None = None) -> int:
    from .spark.encode import STATS_COLUMNS, embed_sentences, embed_summary

    out = cfg.output.path
    if not out:
        raise ConfigError("no output given (--output PATH)")
    if not cfg.input.path:
        raise ConfigError("no input given (--input SENTENCES)")
    preflight(cfg.encode.model, cfg.encode.revision, cfg.encode.allow_pickle)
    spark = get_spark(cfg.spark)
    run_id = sanitise_run_id(cfg.run.run_id or new_run_id())
    sentences, rows = _sentences_with_text(spark, cfg, notes_path)
    t0 = time.perf_counter()
    cfg = _with_precision(spark, cfg, "embed")
    emb = embed_sentences(sentences, cfg.encode, cfg.spark.partitions, rows)
    emb = emb.withColumn("fingerprint", F.lit(fingerprint("embeddings", embed_settings(cfg))))
    emb = emb.persist(StorageLevel.MEMORY_AND_DISK)
    write_table(emb.drop("status", *STATS_COLUMNS).withColumn("run_id", F.lit(run_id)), out,
                cfg.output.format, mode=cfg.output.mode)
    secs = time.perf_counter() - t0
    a = embed_summary(emb)
    n, tok = a["rows"], a["tokens"]
    print_summary("embed_sentences summary", {
        "run id": run_id, "model": cfg.encode.model, "precision": cfg.encode.precision,
        "sentences": n,
        "rows without usable text (null vector)": a["bad"], "tokens": tok,
        "windows": a["windows"], "truncated": a["truncated"],
        "padding efficiency": f"{tok / max(a['padded_tokens'], 1):.3f}",
        "OOM retries (token budget halved)": a["oom_retries"],
        "sentences/s": f"{n / max(secs, 1e-9):.1f}", "tokens/s": f"{tok / max(secs, 1e-9):.0f}",
        "embeddings table": f"{out} ({cfg.output.format})", "seconds": f"{secs:.1f}",
    })
    emb.unpersist()
    return 0

def predict_job(cfg: PipelineConfig, notes_path: str | None = None) -> int:
    from .spark.encode import predict_sentences

    out = cfg.output.path
    if not out:
        raise ConfigError("no output given (--output PATH)")
    model, revision = cfg.predict_model()
    preflight_head(model, revision, cfg.encode.allow_pickle, cfg.predict.task)
    spark = get_spark(cfg.spark)
    run_id = sanitise_run_id(cfg.run.run_id or new_run_id())
    sentences, rows = _sentences_with_text(spark, cfg, notes_path)
    t0 = time.perf_counter()
    cfg = _with_precision(spark, cfg, "predict")
    preds = predict_sentences(sentences, model, revision, cfg.predict, cfg.encode,
                              cfg.spark.partitions, rows)
    preds = preds.persist(StorageLevel.MEMORY_AND_DISK)
    write_table(preds.withColumn("run_id", F.lit(run_id)), out, cfg.output.format,
                   mode=cfg.output.mode)
    by_status = {r.status: r["count"] for r in preds.groupBy("status").count().collect()}
    task = preds.select("task").where(F.col("task").isNotNull()).limit(1).collect()
    print_summary("predict summary", {
        "run id": run_id, "model": model,
        "task": task[0].task if task else cfg.predict.task,
        "rows": sum(by_status.values()), **{f"  status {k}": v for k, v in by_status.items()},
        "predictions table": f"{out} ({cfg.output.format})",
        "seconds": f"{time.perf_counter() - t0:.1f}",
    })
    preds.unpersist()
    return 0

def pipeline_job(cfg: PipelineConfig) -> int:
    from .pipeline import Pipeline

    if not cfg.output.root:
        raise ConfigError("no output root given (--output-root PATH)")
    stages = set(cfg.run.stages)
    if "embed" in stages:
        preflight(cfg.encode.model, cfg.encode.revision, cfg.encode.allow_pickle)
    if "predict" in stages or cfg.predict.enabled:
        preflight_head(*cfg.predict_model(), cfg.encode.allow_pickle, cfg.predict.task)
    p = Pipeline(cfg)
    try:
        c = p.run()
    except SimulatedCrash:
        raise
    except BaseException:
        _run_report(p, getattr(p, "summary_row", None))  # a failed run has a report too
        raise
    report = _run_report(p, c)
    print_summary(f"run {c['run_id']} {c['status']}", {
        "input records": c["input_records"], "notes usable": c["notes"],
        "notes segmented (new or changed)": c["notes_segmented"],
        "notes unchanged (skipped)": c["notes_unchanged"],
        "notes changed": c["notes_changed"], "notes deleted": c["notes_deleted"],
        "rejects (this run's input)": c["rejects"], "sentences written": c["sentences"],
        "sentences removed (stale)": c["sentences_removed"],
        "sentences embedded": c["sentences_embedded"], "tokens": c["tokens"],
        "windows": c["windows"], "predictions": c["predictions"],
        "note vectors": c["note_vectors"],
        "padding efficiency": "-" if c["padding_efficiency"] is None
        else f"{c['padding_efficiency']:.3f}",
        "tokens/s": "-" if c["tokens_per_s"] is None else f"{c['tokens_per_s']:.0f}",
        "OOM retries": c["oom_retries"], "seconds": f"{c['seconds_total']:.1f}",
        "tables": p.root, "run report": report or "-",
    })
    return 0


def _run_report(p, row: dict | None) -> str | None:
    """``<root>/reports/<run_id>/report.html``; a report that cannot be drawn never fails
    the run it describes."""
    if row is None:
        return None
    from .report import write_run_report

    try:
        return str(write_run_report(p.spark, p.root, p.store.fmt, p.run_id, row))
    except Exception as e:  # noqa: BLE001 - the tables are written; the page is a bonus
        log.warning("run report not written (%s)", type(e).__name__)
        return None
