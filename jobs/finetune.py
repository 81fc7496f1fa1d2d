"""spark-submit jobs/finetune.py --labels TABLE --model M --output DIR [--text-col text]
[--label-col label] [--id-col note_id] [--group-col subject_id] [--spans SPANS]

Fine-tunes a BERT checkpoint for sequence classification (a label per row: a note or a
sentence) or, with --spans, token classification (labelled character spans -> BIO tags).
Rows are split into train/validation/test by --group-col (a patient is never in two splits),
stratified by label; training stops early on the validation loss; the best epoch's weights
are saved to DIR (safetensors, config with id2label/label2id, tokenizer) with a model card
(README.md: data fingerprint, recipe, validation and test metrics) and run_summary.json.
DIR is what jobs/predict.py --model takes. --processes N > 1 trains with pyspark's
TorchDistributor as jobs/pretrain.py does (docs/training.md).
"""
from __future__ import annotations

import argparse
import sys

from clinicalbert_spark.pretrain.cli import add_training_args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="finetune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True,
                   help="labelled table: CSV, Parquet, Delta folder or catalog table")
    p.add_argument("--input-format", default="auto",
                   choices=["auto", "csv", "parquet", "delta", "table"])
    p.add_argument("--id-col", default="note_id",
                   help="row id; several comma-separated columns form one key")
    p.add_argument("--text-col", default="text")
    p.add_argument("--label-col", default="label",
                   help="the row's label; with --spans, the span's label")
    p.add_argument("--group-col", default=None,
                   help="rows of one group (patient) stay in one split (default: the id)")
    p.add_argument("--spans", default=None,
                   help="token classification: table of id, start, end, label (character "
                        "offsets into the text); may be the --labels table itself")
    p.add_argument("--spans-format", default="auto",
                   choices=["auto", "csv", "parquet", "delta", "table"])
    p.add_argument("--start-col", default="start")
    p.add_argument("--end-col", default="end")
    p.add_argument("--model", required=True, help="starting checkpoint (folder, hub id, pkg:)")
    p.add_argument("--revision")
    p.add_argument("--output", required=True, help="the fine-tuned checkpoint's folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--split", default="0.8,0.1,0.1", help="train,validation,test fractions")
    p.add_argument("--max-length", type=int, default=128, help="tokens per window")
    p.add_argument("--stride", type=int, default=None, help="window overlap (window policy)")
    p.add_argument("--long-policy", choices=["truncate", "window"], default="truncate",
                   help="longer texts: their first window only, or every window")
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=2,
                   help="epochs without a lower validation loss before stopping")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    add_training_args(p, batch_size=16, lr=5e-5)
    return p


def _output_folder(output: str, overwrite: bool):
    from pathlib import Path

    from clinicalbert_spark.errors import OutputError

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output {out} exists and is not empty; pass --overwrite to "
                          "replace it")
    return out


def settings_of(a: argparse.Namespace, task: str, model_path: str, labels: list,
                save_to: str):
    from clinicalbert_spark.finetune.train import FinetuneSettings

    return FinetuneSettings(
        save_to=save_to, model=model_path, task=task, labels=labels, max_length=a.max_length,
        stride=a.stride, long_policy=a.long_policy, max_epochs=a.max_epochs,
        patience=a.patience, batch_size=a.batch_size, grad_accum=a.grad_accum, lr=a.lr,
        warmup_ratio=a.warmup_ratio, weight_decay=a.weight_decay, seed=a.seed, bf16=a.bf16,
        threads=a.threads)


def body(a: argparse.Namespace) -> int:
    import datetime as dt
    import shutil
    import uuid
    from dataclasses import asdict
    from pathlib import Path

    from transformers import AutoTokenizer

    import clinicalbert_spark
    from clinicalbert_spark import io
    from clinicalbert_spark.commands import print_summary
    from clinicalbert_spark.config import SparkConfig
    from clinicalbert_spark.errors import ConfigError, InputError
    from clinicalbert_spark.finetune import data as D
    from clinicalbert_spark.finetune.evaluate import finish_checkpoint, publish
    from clinicalbert_spark.finetune.spark import read_examples
    from clinicalbert_spark.finetune.train import train
    from clinicalbert_spark.models import preflight
    from clinicalbert_spark.pretrain.cli import RunRecord, check_launch, csv_list, launch
    from clinicalbert_spark.spark.session import get_spark

    check_launch(a)
    task = "token-classification" if a.spans else "sequence-classification"
    try:
        fractions = D.check_fractions([float(x) for x in csv_list(a.split)])
    except ValueError as e:
        raise ConfigError(f"--split: {e}") from None
    ids = csv_list(a.id_col)
    if not ids:
        raise ConfigError("--id-col names no column")
    try:
        settings_of(a, task, "", ["a", "b"], "").check()  # before any data is read
    except ValueError as e:
        raise ConfigError(f"invalid settings: {e}") from None
    out = _output_folder(io.absolute(a.output), a.overwrite)
    model_path = preflight(a.model, a.revision)
    record = RunRecord(a, "finetune")
    save_to = str(out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}"))
    recipe = dict(vars(a))  # the runs row's config hash until the labels are known

    def path(p, fmt):
        return p if fmt == "table" else io.absolute(p)

    try:
        spark = get_spark(SparkConfig(master=a.master, app_name="finetune"))
        lab = read_examples(spark, path(a.labels, a.input_format), a.input_format, ids,
                            a.text_col, a.label_col, a.group_col,
                            a.spans and path(a.spans, a.spans_format), a.spans_format,
                            a.start_col, a.end_col)
        tok = AutoTokenizer.from_pretrained(model_path, use_fast=True, trust_remote_code=False,
                                            local_files_only=True)
        prep = D.prepare(tok, task, lab.ids, lab.texts, lab.groups, lab.targets, fractions,
                         a.seed, a.max_length, a.stride, a.long_policy)
        for sp in ("train", "validation"):
            if not len(prep.examples[sp]):
                raise InputError(f"the {sp} split is empty ({lab.counts['rows_used']} usable "
                                 "rows); label more rows or change --split")
        if len(prep.label_names) < 2:
            raise InputError(f"the labels input has {len(prep.label_names)} label(s) in its "
                             "usable rows; at least two are needed")
        s = settings_of(a, task, model_path, prep.label_names, save_to)
        recipe = dict(asdict(s), save_to=str(out), split=list(fractions))
        summary = launch(train, a, "finetune", asdict(s), {
            "train": prep.examples["train"], "validation": prep.examples["validation"]})
        info = finish_checkpoint(save_to, lab, prep, asdict(s), summary, {
            "version": clinicalbert_spark.__version__, "base_model": a.model,
            "base_revision": a.revision, "table": a.labels, "spans_table": a.spans,
            "group_column": a.group_col or f"none (each {a.id_col} is its own group)",
            "split": {"fractions": list(fractions), "seed": a.seed}, "checkpoint": str(out),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        publish(Path(save_to), out)
    except BaseException:
        shutil.rmtree(save_to, ignore_errors=True)
        record.write_failed(a.model, a.revision, recipe)
        raise
    metrics = info["metrics"]
    row = record.write("succeeded", a.model, a.revision, recipe, checkpoint={
        "path": str(out), "fingerprint": prep.fingerprints["train"],
        "settings": info["settings"], "fingerprints": prep.fingerprints,
        "metrics": {**{sp: {k: v for k, v in m.items() if k != "per_label"}
                       for sp, m in metrics.items()},
                    "validation_loss_by_epoch": [h["validation_loss"] for h in summary["history"]],
                    "best_epoch": summary["best_epoch"]}},
        input_records=lab.counts["rows_read"], tokens=summary["tokens"],
        seconds=summary["train_seconds"])
    key = ("accuracy", "macro_f1") if task == "sequence-classification" else (
        "precision", "recall", "f1")
    c = prep.counts
    print_summary("finetune summary", {
        "task": task, "labels": len(prep.label_names),
        "rows used": f"{lab.counts['rows_used']} of {lab.counts['rows_read']}",
        "split rows (groups)": ", ".join(f"{sp} {c[sp]['rows']} ({c[sp]['groups']})"
                                         for sp in D.SPLITS),
        "groups": a.group_col or "none: each id is its own group (pass --group-col PATIENT)",
        "epochs": f"{summary['epochs_run']} (best {summary['best_epoch']}"
                  f"{', stopped early' if summary['stopped_early'] else ''})",
        **{f"{sp} {k}": f"{m[k]:.4f}" for sp, m in metrics.items() for k in key},
        "device": summary["device"] + (" (bf16)" if summary["bf16"] else ""),
        "processes": summary["processes"], "training seconds": summary["train_seconds"],
        "checkpoint": str(out), "data fingerprint": prep.fingerprints["train"],
        **({"runs row": f"{record.root}/runs (run id {row['run_id']})"} if row else {})})
    return 0


def main(argv=None) -> int:
    from clinicalbert_spark.pretrain.cli import run_main

    return run_main(body, parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
