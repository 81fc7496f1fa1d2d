"""Metrics of a saved fine-tuned checkpoint, measured through the predict stage's own code,
and its model card.

:func:`score_checkpoint` loads the checkpoint with :func:`~clinicalbert_spark.encode.
load_model` and runs :class:`~clinicalbert_spark.encode.Predictor` with the training's
``max_length`` / ``stride`` / ``long_policy``: the figures are what ``jobs/predict.py`` gives
with those settings (a note's windows averaged for sequence labels; word-aligned entity spans
for token labels).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

MODEL_CARD = "README.md"
SUMMARY = "run_summary.json"


def classification_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict:
    """Accuracy, macro-F1 (over the labels in ``gold`` or ``pred``, as scikit-learn's
    ``f1_score(average="macro")``) and per-label precision/recall/F1/support."""
    labels = sorted(set(gold) | set(pred))
    tp, fp, fn = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    per = {}
    for lab in labels:
        pr = tp[lab] / (tp[lab] + fp[lab]) if tp[lab] + fp[lab] else 0.0
        rc = tp[lab] / (tp[lab] + fn[lab]) if tp[lab] + fn[lab] else 0.0
        per[lab] = {"precision": pr, "recall": rc,
                    "f1": 2 * pr * rc / (pr + rc) if pr + rc else 0.0,
                    "support": tp[lab] + fn[lab]}
    n = len(gold)
    return {"n": n, "accuracy": sum(tp.values()) / n if n else 0.0,
            "macro_f1": sum(v["f1"] for v in per.values()) / len(per) if per else 0.0,
            "per_label": per}


def span_metrics(gold: Sequence[Sequence[tuple]], pred: Sequence[Sequence[tuple]]) -> dict:
    """Entity-level exact match (start, end and type) over rows: micro precision, recall, F1,
    and F1 per type."""
    g = {(r, *x) for r, spans in enumerate(gold) for x in spans}
    p = {(r, *x) for r, spans in enumerate(pred) for x in spans}
    types = sorted({x[3] for x in g | p})

    def prf(gs, ps):
        tp = len(gs & ps)
        pr = tp / len(ps) if ps else 0.0
        rc = tp / len(gs) if gs else 0.0
        return pr, rc, (2 * pr * rc / (pr + rc) if pr + rc else 0.0)

    pr, rc, f1 = prf(g, p)
    return {"n": len(gold), "gold_spans": len(g), "predicted_spans": len(p),
            "precision": pr, "recall": rc, "f1": f1,
            "per_label": {t: {"f1": prf({x for x in g if x[3] == t}, {x for x in p if x[3] == t})[2],
                              "support": sum(1 for x in g if x[3] == t)} for t in types}}


def score_checkpoint(path: str, task: str, texts: Sequence[str], targets: Sequence,
                     max_length: int, stride: int | None, long_policy: str) -> dict:
    """Metrics of the checkpoint at ``path`` on ``texts`` against ``targets`` (a label per
    text, or a list of ``(start, end, label)`` spans per text)."""
    from ..encode import EncoderConfig, Predictor, load_model

    loaded = load_model(path, task=task, local_files_only=True)
    pred = Predictor(loaded, EncoderConfig(max_length=max_length, stride=stride,
                                           long_policy=long_policy)).predict(list(texts))
    if task == "sequence-classification":
        return classification_metrics([str(t) for t in targets], [str(r.label) for r in pred])
    return span_metrics([[tuple(x) for x in t] for t in targets],
                        [[(e.start, e.end, e.label) for e in r.entities] for r in pred])


def predict_flags(settings: dict) -> str:
    """The ``jobs/predict.py`` flags that window notes as the training did."""
    flags = f"--max-length {settings['max_length']} --encode.long_policy {settings['long_policy']}"
    if settings.get("stride") is not None:
        flags += f" --encode.stride {settings['stride']}"
    return flags


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def model_card(info: dict) -> str:
    """README.md of a fine-tuned checkpoint: what it was trained on (the data fingerprint and
    counts, never data), the recipe, the metrics, and how to run it."""
    s, m, c = info["settings"], info["metrics"], info["counts"]
    seq = s["task"] == "sequence-classification"
    key = ("accuracy", "macro_f1") if seq else ("precision", "recall", "f1")
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'text-classification' if seq else 'token-classification'}",
        f"base_model: {json.dumps(str(info['base_model']))}",
        "tags: [clinicalbert-spark, fine-tuned]",
        "---",
        "",
        f"# {s['task']} fine-tuned from `{info['base_model']}`",
        "",
        f"Written by `jobs/finetune.py` (clinicalbert-spark {info['version']}) on "
        f"{info['finished_at']}. Labels (`config.json` `id2label`): "
        + ", ".join(f"`{x}`" for x in s["labels"]) + ".",
        "",
        "## Data",
        "",
        f"- labelled table: `{info['table']}` ({info['rows_read']} rows read, "
        f"{info['rows_used']} with text and label)",
        f"- group column (no group in two splits): `{info['group_column']}`",
        f"- **data fingerprint** (training rows' ids and labels): `{info['fingerprints']['train']}`"
        f"; validation `{info['fingerprints']['validation']}`, test "
        f"`{info['fingerprints']['test']}`",
        f"- split train/validation/test {info['split']['fractions']} by group, stratified by "
        f"label, seed {info['split']['seed']}",
        "",
        "| split | rows | groups | windows | tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for sp in ("train", "validation", "test"):
        lines.append(f"| {sp} | {c[sp]['rows']} | {c[sp]['groups']} | {c[sp]['windows']} | "
                     f"{c[sp]['tokens']} |")
    lines += ["", "Rows per label (the stratum: " + ("the label" if seq else
                                                     "the most frequent span type") + "):", "",
              "| label | train | validation | test |", "|---|---:|---:|---:|"]
    by = c["by_label"]
    for lab in sorted(set(by["train"]) | set(by["validation"]) | set(by["test"])):
        lines.append(f"| {lab} | {by['train'].get(lab, 0)} | {by['validation'].get(lab, 0)} | "
                     f"{by['test'].get(lab, 0)} |")
    t = info["training"]
    lines += [
        "", "## Recipe", "",
        "| setting | value |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in s.items() if k not in ("labels", "save_to", "model")],
        f"| processes | {t['processes']} ({t['device']}{', bf16' if t['bf16'] else ''}) |",
        f"| epochs run | {t['epochs_run']} (best {t['best_epoch']}; "
        f"{'stopped early' if t['stopped_early'] else 'no early stop'}) |",
        f"| training time | {t['train_seconds']} s, {t['tokens_per_s']} tokens/s |",
        "", "## Metrics", "",
        "Measured on the saved checkpoint with the predict stage's code and the training's "
        "windowing" + (" (a note's windows averaged)." if seq else
                       " (entity spans, exact start, end and type)."),
        "",
        "| split | " + " | ".join(key) + " |", "|---|" + "---:|" * len(key),
    ]
    for sp in ("validation", "test"):
        lines.append(f"| {sp} | " + " | ".join(_fmt(m[sp][k]) for k in key) + " |")
    lines += ["", "Per label (test F1, support):", "", "| label | F1 | support |",
              "|---|---:|---:|"]
    for lab, v in m["test"]["per_label"].items():
        lines.append(f"| {lab} | {v['f1']:.4f} | {v['support']} |")
    lines += ["", "Validation loss per epoch: " + ", ".join(
        f"{h['epoch']}: {h['validation_loss']:.4f}" for h in t["history"]) + ".", "",
        "## Use", "",
        "```",
        f"spark-submit jobs/predict.py --input SENTENCES --output PREDICTIONS --model CHECKPOINT "
        f"{predict_flags(s)}",
        "```", "",
        "Use the same `--max-length` and `--encode.long_policy` as in training: the metrics "
        "above were measured with them.", ""]
    return "\n".join(lines)


def write_card(folder: str, info: dict) -> None:
    """``README.md`` and ``run_summary.json`` into the checkpoint folder."""
    out = Path(folder)
    (out / MODEL_CARD).write_text(model_card(info), encoding="utf-8")
    (out / SUMMARY).write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")


def finish_checkpoint(folder: str, lab, prep, settings: dict, training: dict,
                      meta: dict) -> dict:
    """Score the checkpoint rank 0 saved in ``folder`` on the validation and test rows and
    write its card; returns the card's facts (``run_summary.json``)."""
    metrics = {sp: score_checkpoint(folder, settings["task"],
                                    [lab.texts[i] for i in prep.rows[sp]],
                                    [lab.targets[i] for i in prep.rows[sp]],
                                    settings["max_length"], settings["stride"],
                                    settings["long_policy"])
               for sp in ("validation", "test") if prep.rows[sp]}
    info = dict(meta, rows_read=lab.counts["rows_read"], rows_used=lab.counts["rows_used"],
                left_out=lab.counts, counts=prep.counts, fingerprints=prep.fingerprints,
                settings={k: v for k, v in settings.items() if k not in ("save_to", "model")},
                metrics=metrics, training=training)
    write_card(folder, info)
    return info


def publish(tmp: Path, out: Path) -> None:
    """Move the finished checkpoint folder ``tmp`` to ``out`` (replacing what is there): a
    reader of ``out`` finds the old checkpoint or the new one, never half of one."""
    import shutil
    import uuid

    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
