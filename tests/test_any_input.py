"""Any input table: the embed and predict jobs on a sentences table another tool wrote
(pandas, with only ``doc_id, sent_no, sentence``), named by flags; their rows equal what the
public API gives on the same DataFrame."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import jobs_path  # noqa: F401
import embed_sentences
import predict

from clinicalbert_spark import api

SENTENCES = ["Chest pain since 2 days.", "No fever.", "  ", "Denies SOB, nausea and vomiting.",
             "Plan: ECG, troponin x2 and aspirin 325 mg PO once."]


@pytest.fixture(scope="module")
def foreign_table(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "sentences.parquet"
    pd.DataFrame({"doc_id": [101, 101, 101, 202, 202], "sent_no": [0, 1, 2, 0, 1],
                  "sentence": SENTENCES}).to_parquet(path, index=False)
    return path


def test_embed_job_on_a_foreign_table_equals_the_api(spark, tiny_bert, foreign_table,
                                                     tmp_path):
    out = tmp_path / "emb"
    rc = embed_sentences.main(["--input", str(foreign_table), "--output", str(out),
                               "--model", tiny_bert, "--id-col", "doc_id", "--index-col",
                               "sent_no", "--text-col", "sentence", "--encode.precision",
                               "fp32"])
    assert rc == 0
    job = spark.read.parquet(str(out)).toPandas().sort_values(["note_id", "sentence_index"])
    assert list(zip(job.note_id, job.sentence_index)) == [
        ("101", 0), ("101", 1), ("101", 2), ("202", 0), ("202", 1)]
    assert job.start.isna().all() and job.note_hash.notna().all()
    assert job.embedding.isna().tolist() == [False, False, True, False, False]

    df = spark.read.parquet(str(foreign_table))
    ref = api.embed(df, text_col="sentence", key_cols=["doc_id", "sent_no"], model=tiny_bert,
                    precision="fp32").toPandas().sort_values(["doc_id", "sent_no"])
    assert list(ref.columns[:2]) == ["doc_id", "sent_no"]  # the API keeps the caller's names
    ok = job.embedding.notna().to_numpy()
    np.testing.assert_allclose(np.stack(job.embedding[ok].to_numpy()),
                               np.stack(ref.embedding[ok].to_numpy()), atol=1e-6)
    assert job.n_tokens.tolist() == ref.n_tokens.tolist()


def test_predict_job_on_a_foreign_table(spark, tmp_path, foreign_table):
    from clinicalbert_spark.testing import build_tiny_bert

    model = build_tiny_bert(tmp_path / "cls", head="sequence-classification")
    out = tmp_path / "pred"
    rc = predict.main(["--input", str(foreign_table), "--output", str(out), "--model",
                       str(model), "--id-col", "DOC_ID", "--index-col", "sent_no",
                       "--text-col", "Sentence"])  # names found ignoring case
    assert rc == 0
    got = spark.read.parquet(str(out)).toPandas().sort_values(["note_id", "sentence_index"])
    assert got.note_id.tolist() == ["101", "101", "101", "202", "202"]
    assert got.status.tolist() == ["ok", "ok", "empty_text", "ok", "ok"]
    assert got.label.notna().sum() == 4 and got.task.eq("sequence-classification").all()


def test_missing_column_is_one_line_listing_the_columns(spark, tiny_bert, foreign_table,
                                                        tmp_path, capsys):
    rc = embed_sentences.main(["--input", str(foreign_table), "--output", str(tmp_path / "o"),
                               "--model", tiny_bert])  # default columns: note_id, text...
    assert rc == 3
    lines = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in lines if " INFO " not in ln]  # log lines aside, one line
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "'note_id'" in err[0] and "['doc_id', 'sent_no', 'sentence']" in err[0]
    assert "--id-col" in err[0]
    for s in SENTENCES[:2]:
        assert s not in err[0]


def test_api_missing_column_names_the_columns(spark, tiny_bert):
    from clinicalbert_spark.errors import InputError

    df = spark.createDataFrame([("a", "x")], ["doc", "body"])
    with pytest.raises(InputError, match=r"lacks column\(s\) \['text'\].*\['doc', 'body'\]"):
        api.embed(df, key_cols=["doc"], model=tiny_bert)
    with pytest.raises(InputError, match=r"lacks column\(s\) \['note_id'\].*'doc', 'body'"):
        api.segment_notes(df, text_col="body")


def test_api_duplicate_ids_keep_the_first_record(spark):
    """A DataFrame (and Parquet) input finds repeated ids without a window over the text:
    the first record of an id is segmented, the later ones are rejects naming it."""
    df = spark.createDataFrame([("a", "First note."), ("b", "Other note."),
                                ("a", "Second record of a."), ("c", " "), ("c", "Valid c.")],
                               ["note_id", "text"]).coalesce(1)
    sentences, rejects = api.segment_notes(df, return_rejects=True)
    got = {r.note_id: r.text for r in sentences.collect()}
    assert got == {"a": "First note.", "b": "Other note.", "c": "Valid c."}
    rej = sorted((r.note_id, r.reason) for r in rejects.collect())
    assert rej == [("a", "duplicate_id"), ("c", "empty_text")]
    detail = rejects.where("reason = 'duplicate_id'").first().detail
    # The kept record's arrival number is named, never its text.
    assert detail.startswith("kept source_row ") and "note" not in detail
