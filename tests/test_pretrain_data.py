"""Pretraining instances (jobs/make_pretraining_data.py): the recipe's statistics on real notes,
determinism across partitionings, the manifest, one-line errors."""
from __future__ import annotations

import json

import pytest

import jobs_path  # noqa: F401 - puts jobs/ on sys.path
from conftest import SHARED_CORPORA

from clinicalbert_spark.pretrain.documents import (instances_frame, load_tokenizer,
                                                   tokenizer_fingerprint)
from clinicalbert_spark.pretrain.instances import (InstanceSettings, Segment, instances_for_note,
                                                   mask_kinds)

MTSAMPLES = SHARED_CORPORA / "mtsamples.csv"


def _sentence_frame(notes):
    import pandas as pd

    from clinicalbert_spark.segment import get_segmenter

    seg = get_segmenter("rules")
    rows = [(nid, s.sentence_index, text[s.start:s.end], s.section_category)
            for nid, text in notes for s in seg.segment(text)]
    return pd.DataFrame(rows, columns=["note_id", "sentence_index", "text", "section_category"])


@pytest.fixture(scope="module")
def mts_sentences():
    if not MTSAMPLES.is_file():
        pytest.skip(f"shared corpora absent ({MTSAMPLES})")
    from clinicalbert_spark.segment.corpora import read_mtsamples

    return _sentence_frame(read_mtsamples(MTSAMPLES)[:60])


def _kinds(frame, mask_id):
    tot = [0, 0, 0]
    for r in frame.to_dict("records"):
        tot = [a + b for a, b in zip(tot, mask_kinds(r, mask_id))]
    return tot


@pytest.mark.parametrize("wwm", [False, True])
def test_recipe_statistics_on_mtsamples(mts_sentences, tiny_bert, wwm):
    s = InstanceSettings(whole_word_mask=wwm)
    out = instances_frame(mts_sentences, tiny_bert, s)
    _, v, _ = load_tokenizer(tiny_bert)
    tokens = int(out["length"].sum())
    preds = sum(len(p) for p in out["masked_positions"])
    assert tokens > 300_000 and preds > 40_000  # enough for the tolerances below (3+ sigma)
    assert abs(preds / tokens - 0.15) <= 0.005
    assert max(len(p) for p in out["masked_positions"]) <= 20
    assert out["length"].max() <= 128 and (out["length"] == 128).mean() > 0.5
    m, r, k = _kinds(out, v.mask_id)
    assert abs(m / preds - 0.8) <= 0.01 and abs(r / preds - 0.1) <= 0.01 \
        and abs(k / preds - 0.1) <= 0.01
    assert set(out["copy"]) == set(range(5))
    for rec in out.head(200).to_dict("records"):
        ids, pos = rec["input_ids"], rec["masked_positions"]
        assert ids[0] == v.cls_id and ids[-1] == v.sep_id and len(ids) == rec["length"]
        assert pos == sorted(set(pos)) and all(0 < p < len(ids) - 1 for p in pos)
        assert rec["token_type_ids"] == [0] * len(ids) and not rec["is_random_next"]
    # dup copies: same tokens, different masks
    one = out[out["note_id"] == out["note_id"].iloc[0]]
    firsts = one[one["instance_index"] == 0]
    assert len(firsts) == 5
    assert len({tuple(p) for p in firsts["masked_positions"]}) >= 4


def test_whole_word_masking_masks_whole_words(tiny_bert):
    tok, v, _ = load_tokenizer(tiny_bert)
    ids = tok("zzyzx qwxrt plmkq " * 20, add_special_tokens=False)["input_ids"]
    assert any(i in v.subword_ids for i in ids)
    s = InstanceSettings(whole_word_mask=True, short_seq_prob=0)
    for copy in range(5):
        for inst in instances_for_note([Segment(ids)], "n", copy, s, v):
            orig = list(inst["input_ids"])
            for p, o in zip(inst["masked_positions"], inst["masked_ids"]):
                orig[p] = o
            pos = set(inst["masked_positions"])
            for p in pos:  # every piece of a chosen word is chosen
                q = p + 1
                while q < len(orig) - 1 and orig[q] in v.subword_ids:
                    assert q in pos
                    q += 1
                if orig[p] in v.subword_ids and p > 1:  # (truncation may cut a word)
                    assert p - 1 in pos


def test_next_sentence_pairs(mts_sentences, tiny_bert):
    s = InstanceSettings(next_sentence=True, dup_factor=2)
    out = instances_frame(mts_sentences.iloc[:3000], tiny_bert, s, tag_sections=True)
    _, v, _ = load_tokenizer(tiny_bert)
    share = out["is_random_next"].mean()
    assert 0.4 < share < 0.65
    for rec in out.head(100).to_dict("records"):
        ids, types = rec["input_ids"], rec["token_type_ids"]
        assert ids.count(v.sep_id) == 2 and ids[-1] == v.sep_id and len(ids) <= 128
        b = types.index(1)
        assert ids[b - 1] == v.sep_id and types[b:] == [1] * (len(ids) - b)
        assert rec["sections"]


def test_worker_encoder_matches_the_hf_tokenizer(mts_sentences, tiny_bert):
    from clinicalbert_spark.pretrain.documents import encoder
    from clinicalbert_spark.testing import minilm_path

    texts = mts_sentences["text"].tolist()[:300] + ["", "Pt's BP 120/80 [**Name**] 5mg"]
    for path in filter(None, [tiny_bert, minilm_path() and str(minilm_path())]):
        tok = load_tokenizer(path)[0]
        assert encoder(path)(texts) == tok(texts, add_special_tokens=False)["input_ids"]


def test_instances_depend_on_seed_note_and_copy_only(tiny_bert):
    _, v, _ = load_tokenizer(tiny_bert)
    doc = [Segment(list(range(30, 30 + n))) for n in (5, 9, 40, 3, 70, 12)]
    s = InstanceSettings()
    a = instances_for_note(doc, "note-1", 2, s, v)
    assert a == instances_for_note(doc, "note-1", 2, s, v)
    assert a != instances_for_note(doc, "note-1", 3, s, v)
    assert a != instances_for_note(doc, "note-1", 2, InstanceSettings(seed=7), v)
    with pytest.raises(ValueError):
        InstanceSettings(dup_factor=0)


def test_job_same_output_with_1_and_4_partitions(spark, tiny_bert, tmp_path, demo_csv, capsys):
    import make_pretraining_data

    from conftest import read_csv_notes

    notes = list(read_csv_notes(demo_csv).items())[:12]
    pdf = _sentence_frame(notes)
    src = tmp_path / "sentences"
    src.mkdir()
    pdf.to_parquet(src / "part-0.parquet")
    outs = []
    for parts in (1, 4):
        out = tmp_path / f"inst{parts}"
        rc = make_pretraining_data.main([
            "--sentences", str(src), "--output", str(out), "--model", tiny_bert,
            "--partitions", str(parts), "--buckets", "8", "--dup-factor", "2",
            "--next-sentence", "--tag-sections", "--drop-sections", "unknown"])
        assert rc == 0, capsys.readouterr().err
        rows = spark.read.parquet(str(out)).orderBy("note_id", "copy", "instance_index").collect()
        outs.append([r.asDict() for r in rows])
    assert outs[0] and outs[0] == outs[1]
    assert {r["note_id"] for r in outs[0]} <= set(pdf["note_id"])
    assert all("unknown" not in (r["sections"] or []) for r in outs[0])
    man = json.loads((tmp_path / "inst4" / "_manifest.json").read_text())
    tok, _, _ = load_tokenizer(tiny_bert)
    assert man["tokenizer"]["fingerprint"] == tokenizer_fingerprint(tok)
    assert man["counts"]["instances"] == len(outs[0])
    assert man["settings"]["dup_factor"] == 2 and man["settings"]["next_sentence"]
    assert man["counts"]["max_predictions"] <= 20
    assert "summary" in capsys.readouterr().out


def _errors(capsys) -> str:
    """The job's error line(s) (log lines at INFO aside)."""
    return "\n".join(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error"))


def test_job_errors_are_one_line(spark, tiny_bert, tmp_path, capsys):
    import make_pretraining_data

    rc = make_pretraining_data.main(["--sentences", str(tmp_path / "nope"), "--output",
                                     str(tmp_path / "o"), "--model", tiny_bert])
    err = _errors(capsys)
    assert rc == 3 and len(err.splitlines()) == 1 and "not found" in err
    rc = make_pretraining_data.main(["--sentences", str(tmp_path), "--output",
                                     str(tmp_path / "o"), "--model", str(tmp_path / "nomodel")])
    err = _errors(capsys)
    assert rc == 5 and len(err.splitlines()) == 1
    rc = make_pretraining_data.main(["--sentences", str(tmp_path), "--output",
                                     str(tmp_path / "o"), "--model", tiny_bert,
                                     "--dup-factor", "0"])
    err = _errors(capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and "dup_factor" in err
