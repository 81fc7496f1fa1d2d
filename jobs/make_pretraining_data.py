"""spark-submit jobs/make_pretraining_data.py --sentences SENTENCES --output PATH --model M

Sentences table -> masked-LM pretraining instances (Parquet) + <PATH>/_manifest.json, as BERT's
create_pretraining_data builds them (docs/training.md). Deterministic from --seed whatever the
partitioning: every random choice is seeded per (note, copy).
"""
from __future__ import annotations

import argparse
import sys
import time


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_pretraining_data.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", required=True, help="sentences table (Parquet, Delta, table)")
    p.add_argument("--input-format", default="auto",
                   choices=["auto", "parquet", "delta", "table"])
    p.add_argument("--notes", help="notes, to re-read the text of a table written with --no-text")
    p.add_argument("--output", required=True, help="instances folder (Parquet; overwritten)")
    p.add_argument("--model", required=True, help="model folder or hub id (its tokenizer is used)")
    p.add_argument("--revision")
    p.add_argument("--id-col", default="note_id")
    p.add_argument("--index-col", default="sentence_index")
    p.add_argument("--text-col", default="text")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--masked-lm-prob", type=float, default=0.15)
    p.add_argument("--max-predictions", type=int, default=20)
    p.add_argument("--dup-factor", type=int, default=5)
    p.add_argument("--next-sentence", action="store_true",
                   help="A/B pairs with next-sentence labels (BERT's NSP; off by default)")
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--keep-sections", help="comma-separated section categories to keep")
    p.add_argument("--drop-sections", help="comma-separated section categories to drop")
    p.add_argument("--tag-sections", action="store_true",
                   help="write each instance's section categories (column sections)")
    p.add_argument("--buckets", type=int, default=None,
                   help="note hash buckets (pool of random next sentences; default 65536)")
    p.add_argument("--partitions", type=int, default=None)
    p.add_argument("--master", default=None)
    return p


def body(a: argparse.Namespace) -> int:
    from pyspark.sql import functions as F

    from clinicalbert_spark import io
    from clinicalbert_spark.commands import print_summary
    from clinicalbert_spark.config import InputConfig, SparkConfig
    from clinicalbert_spark.errors import ConfigError, InputError
    from clinicalbert_spark.models import preflight
    from clinicalbert_spark.pretrain.cli import csv_list
    from clinicalbert_spark.pretrain.documents import load_tokenizer, tokenizer_fingerprint
    from clinicalbert_spark.pretrain.instances import InstanceSettings
    from clinicalbert_spark.pretrain.spark import (DEFAULT_BUCKETS, instance_stats,
                                                   make_instances, select_sections,
                                                   write_manifest)
    from clinicalbert_spark.spark.session import get_spark
    from clinicalbert_spark.spark.text import as_sentences, attach_text

    try:
        settings = InstanceSettings(
            max_seq_length=a.max_seq_length, short_seq_prob=a.short_seq_prob,
            masked_lm_prob=a.masked_lm_prob, max_predictions_per_seq=a.max_predictions,
            dup_factor=a.dup_factor, next_sentence=a.next_sentence,
            whole_word_mask=a.whole_word_mask, seed=a.seed)
    except ValueError as e:
        raise ConfigError(f"invalid settings: {e}") from None
    buckets = a.buckets or DEFAULT_BUCKETS
    if buckets < 1 or (a.partitions is not None and a.partitions < 1):
        raise ConfigError("--buckets and --partitions must be >= 1")
    model_path = preflight(a.model, a.revision)
    tok, vocab, _ = load_tokenizer(model_path)
    out = io.absolute(a.output)
    spark = get_spark(SparkConfig(master=a.master, app_name="make-pretraining-data"))
    t0 = time.perf_counter()
    sentences = as_sentences(io.read_input_table(spark, io.absolute(a.sentences), a.input_format),
                             a.id_col, a.index_col, a.text_col)
    if a.notes:
        notes = io.read_notes(spark, InputConfig(path=io.absolute(a.notes)))
        sentences = attach_text(sentences, notes.notes)
    elif sentences.where(F.col("text").isNotNull()).limit(1).count() == 0:
        raise InputError("the sentences table has no text (written with --no-text); "
                         "pass --notes PATH so the text is re-read from the notes")
    keep, drop = csv_list(a.keep_sections), csv_list(a.drop_sections)
    sentences = select_sections(sentences, keep, drop)
    inst = make_instances(sentences, model_path, settings, a.tag_sections, buckets, a.partitions,
                          vocab)
    inst.write.mode("overwrite").parquet(out)
    secs = time.perf_counter() - t0
    stats = instance_stats(spark.read.parquet(out), vocab.mask_id)
    cores = spark.sparkContext.defaultParallelism
    manifest = {
        "kind": "masked-lm pretraining instances",
        "sentences": io.absolute(a.sentences), "model": a.model, "revision": a.revision,
        "tokenizer": {"class": type(tok).__name__, "vocab_size": vocab.size,
                      "fingerprint": tokenizer_fingerprint(tok), "mask_id": vocab.mask_id,
                      "cls_id": vocab.cls_id, "sep_id": vocab.sep_id, "pad_id": vocab.pad_id},
        "settings": settings.as_dict(),
        "sections": {"keep": keep, "drop": drop, "tagged": bool(a.tag_sections)},
        "buckets": buckets, "counts": stats, "seconds": round(secs, 2),
        "instances_per_s": round(stats["instances"] / max(secs, 1e-9), 1), "cores": cores,
    }
    path = write_manifest(spark, out, manifest)
    print_summary("make_pretraining_data summary", {
        "notes": stats["notes"], "instances": stats["instances"], "tokens": stats["tokens"],
        "masked share": f"{stats['masked_share']:.4f}",
        "mask/random/keep": f"{stats['mask_share']:.3f}/{stats['random_share']:.3f}/"
                            f"{stats['keep_share']:.3f}",
        "instances/s": manifest["instances_per_s"], "instances table": out, "manifest": path,
        "seconds": f"{secs:.1f}"})
    return 0


def main(argv=None) -> int:
    from clinicalbert_spark.pretrain.cli import run_main

    return run_main(body, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
