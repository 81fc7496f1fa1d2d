"""Predictor heads on tiny checkpoints, checked against direct model calls."""
import re

import numpy as np
import pytest
import torch

from clinicalbert_spark.encode import EncoderConfig, Predictor, load_model
from clinicalbert_spark.testing import CLINICAL_WORDS, HEAD_LABELS, build_tiny_bert



@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    return {
        task: load_model(build_tiny_bert(root / task, head=task, seed=7), task=task)
        for task in ("fill-mask", "sequence-classification", "token-classification")
    }


def _long_text(n_words=90):
    words = [w for w in CLINICAL_WORDS if w.isalpha()]
    return " ".join(words[(i * 7) % len(words)] for i in range(n_words))


def test_fill_mask_offsets_and_scores(heads):
    lm = heads["fill-mask"]
    pred = Predictor(lm, EncoderConfig(), top_k=4, device="cpu")
    texts = ["Patient denies [MASK] pain.", "no mask here", None, "[MASK] and [MASK] given"]
    out = pred.predict(texts)
    assert [o.status for o in out] == ["ok", "no_mask", "empty_text", "ok"]
    assert len(out[0].masks) == 1 and len(out[3].masks) == 2
    for text, res in zip(texts, out):
        for m in res.masks:
            assert text[m.start : m.end] == "[MASK]"
            scores = [c.score for c in m.candidates]
            assert len(scores) == 4 and scores == sorted(scores, reverse=True)
            assert all(0.0 <= s <= 1.0 for s in scores)
    # same probabilities as a direct MLM call
    tok = lm.tokenizer(texts[0], return_tensors="pt")
    with torch.inference_mode():
        probs = lm.model(**tok).logits[0].softmax(-1)
    pos = (tok["input_ids"][0] == lm.tokenizer.mask_token_id).nonzero()[0, 0]
    top = probs[pos].topk(4)
    assert [c.token_id for c in out[0].masks[0].candidates] == top.indices.tolist()
    np.testing.assert_allclose([c.score for c in out[0].masks[0].candidates], top.values.numpy(), atol=1e-5)
    assert out[0].masks[0].candidates[0].token == lm.tokenizer.convert_ids_to_tokens(int(top.indices[0]))
    d = out[0].to_dict()
    assert d["masks"][0]["candidates"][0]["score"] == out[0].masks[0].candidates[0].score


def test_fill_mask_long_text_windows(heads):
    text = _long_text() + " [MASK] " + _long_text(30) + " [MASK] end"
    pred = Predictor(heads["fill-mask"], EncoderConfig(max_length=32, stride=8), device="cpu")
    (res,) = pred.predict([text])
    assert res.status == "ok" and len(res.masks) == 2 and not res.truncated
    assert all(text[m.start : m.end] == "[MASK]" for m in res.masks)
    trunc = Predictor(heads["fill-mask"], EncoderConfig(max_length=32, long_policy="truncate"), device="cpu")
    (res,) = trunc.predict([text])
    assert res.truncated and res.masks == []  # masks past the cut are not invented


def test_sequence_classification(heads):
    lm = heads["sequence-classification"]
    pred = Predictor(lm, EncoderConfig(max_tokens=32), device="cpu")
    texts = ["Patient denies chest pain.", "", "Severe sepsis with acute renal failure.", _long_text()]
    out = pred.predict(texts)
    assert [o.status for o in out] == ["ok", "empty_text", "ok", "ok"]
    for o in (out[0], out[2], out[3]):
        assert o.label in HEAD_LABELS["sequence-classification"]
        assert set(o.probabilities) == set(HEAD_LABELS["sequence-classification"])
        assert abs(sum(o.probabilities.values()) - 1.0) < 1e-5
        assert o.score == max(o.probabilities.values())
    tok = lm.tokenizer(texts[2], return_tensors="pt")
    with torch.inference_mode():
        ref = lm.model(**tok).logits[0].softmax(-1).numpy()
    np.testing.assert_allclose([out[2].probabilities[k] for k in ("NEG", "POS")], ref, atol=1e-5)
    assert out[1].label is None and out[1].probabilities == {}


def _word_aligned(text, start, end):
    left = start == 0 or not (text[start - 1].isalnum() and text[start].isalnum())
    right = end == len(text) or not (text[end - 1].isalnum() and text[end].isalnum())
    return left and right


@pytest.mark.parametrize("max_length", [128, 24])
def test_token_classification_spans(heads, max_length):
    lm = heads["token-classification"]
    pred = Predictor(lm, EncoderConfig(max_length=max_length, stride=6), device="cpu")
    texts = [
        "Patient denies chest pain; started aspirin 81mg and metformin.",
        "Hypertensive, diabetic patient with congestive heart failure.",
        _long_text(),
        "   ",
    ]
    out = pred.predict(texts)
    assert [o.status for o in out] == ["ok", "ok", "ok", "empty_text"]
    types = {"PROBLEM", "DRUG"}
    n_entities = 0
    for text, res in zip(texts, out):
        prev_end = 0
        for e in res.entities:
            n_entities += 1
            assert 0 <= e.start < e.end <= len(text)
            assert e.text == text[e.start : e.end] and e.text == e.text.strip()
            assert _word_aligned(text, e.start, e.end), (e, text)
            assert e.label in types and 0.0 <= e.score <= 1.0
            assert e.start >= prev_end  # non-overlapping, in text order
            prev_end = e.end
    assert n_entities > 0  # a random head tags something; keeps the checks meaningful


def test_token_classification_matches_direct_argmax(heads):
    """Single-piece words: the word label is the direct per-token argmax."""
    lm = heads["token-classification"]
    text = "patient denies chest pain fever cough nausea aspirin heparin insulin"
    tok = lm.tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        labels = lm.model(**tok).logits[0, 1:-1].argmax(-1).tolist()
    assert len(labels) == len(text.split())  # one piece per word
    tags = [lm.config.id2label[i] for i in labels]
    (res,) = Predictor(lm, device="cpu").predict([text])
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    expected, cur = [], None
    for (s, e), tag in zip(words, tags):
        if tag == "O":
            cur = None
            continue
        bio, typ = tag.split("-")
        if bio == "B" or cur is None or cur[2] != typ:
            cur = [s, e, typ]
            expected.append(cur)
        else:
            cur[1] = e
    assert [(x.start, x.end, x.label) for x in res.entities] == [tuple(x) for x in expected]


def test_predictor_rejects_embed_model(tmp_path):
    lm = load_model(build_tiny_bert(tmp_path / "b"))
    with pytest.raises(ValueError):
        Predictor(lm)
