"""Backends: registry, optional dependencies, picklability and the shared invariants."""
from __future__ import annotations

import pickle

import pytest

from clinicalbert_spark.segment import (
    BackendUnavailable,
    available_backends,
    get_segmenter,
)
from clinicalbert_spark.segment.backends import SCISPACY_MODELS, _has_module
from clinicalbert_spark.segment.evaluate import check_invariants, evaluate, load_gold

TEXT = ("Chief Complaint:\nSOB\n\nHPI: 72 yo M s/p CABG. Seen by Dr. [**Name 2**] at 7 a.m. today.\n"
        "Meds:\n1. Lasix 40 mg p.o. b.i.d.\n2. ASA 81 mg\n\nIMPRESSION: CHF. Diurese.")


def test_available_backends():
    names = available_backends()
    assert names[0] == "rules"
    assert set(names) <= {"rules", "scispacy", "pysbd", "spacy_sentencizer"}


def test_unknown_backend():
    with pytest.raises(ValueError):
        get_segmenter("bert")


@pytest.mark.parametrize("name", ["rules", "pysbd", "spacy_sentencizer", "scispacy"])
def test_backend_invariants_and_pickle(name):
    if name not in available_backends():
        pytest.skip(f"{name} dependencies not installed")
    seg = get_segmenter(name)
    assert seg.name == name and seg.version
    out = seg.segment(TEXT)
    secs = seg.sections(TEXT)
    assert check_invariants(TEXT, out, secs) == []
    # Sections come from the rules splitter for every backend.
    # (in a clinician's note "IMPRESSION" is the assessment; in a report, the conclusion)
    assert [s.category for s in secs] == ["chief_complaint", "history_of_present_illness",
                                          "medications", "assessment"]
    clone = pickle.loads(pickle.dumps(seg))  # Spark ships/caches segmenters per worker
    assert clone.segment(TEXT) == out
    assert seg.segment("") == [] and seg.segment(" \n ") == []


@pytest.mark.parametrize("name", ["pysbd", "spacy_sentencizer", "scispacy"])
def test_backend_invariants_on_gold(name):
    if name not in available_backends():
        pytest.skip(f"{name} dependencies not installed")
    rep = evaluate(get_segmenter(name), load_gold())
    print("\n" + rep.table())
    t = rep.totals
    assert t["mismatches"] == 0 and t["violations"] == 0 and t["coverage"] >= 0.99


def test_scispacy_missing_model_message():
    if any(_has_module(m) for m in SCISPACY_MODELS):
        pytest.skip("a scispaCy model is installed")
    with pytest.raises(BackendUnavailable) as e:
        get_segmenter("scispacy")
    msg = str(e.value)
    assert "clinicalbert-spark[scispacy]" in msg
    assert "ai2-s2-scispacy/releases" in msg and "en_core_sci_md" in msg
    assert "dependency-confusion" in msg
