"""Gold-set quality of the built-in rules segmenter (figures printed per note; run with -s)."""
from __future__ import annotations

import pytest

from clinicalbert_spark.segment import get_segmenter
from clinicalbert_spark.segment.evaluate import GoldFormatError, evaluate, load_gold, parse_gold


@pytest.fixture(scope="module")
def gold():
    notes = load_gold()
    assert len(notes) >= 10
    return notes


@pytest.fixture(scope="module")
def report(gold):
    rep = evaluate(get_segmenter("rules"), gold)
    print("\n" + rep.table())
    return rep


def test_gold_set_covers_note_types(gold):
    types = {n.meta.get("type", "").split(" ")[0].strip("(") for n in gold}
    for t in ("Discharge", "Radiology", "Nursing", "Nursing/other", "ECG", "Echo", "Physician",
              "Social"):
        assert t in types, t
    assert sum(len(n.sentences) for n in gold) >= 300
    assert sum(len(n.must_not_split) for n in gold) >= 100


def test_section_accuracy(report):
    assert report.totals["section_accuracy"] >= 0.97


def test_split_recall(report):
    assert report.totals["split_recall"] >= 0.97


def test_must_not_split(report):
    assert report.totals["must_not_split_kept"] >= 0.97


def test_coverage_and_offsets(report):
    t = report.totals
    assert t["coverage"] >= 0.99
    assert t["mismatches"] == 0
    assert t["violations"] == 0


def test_precision_reported(report):
    assert 0.0 < report.totals["split_precision"] <= 1.0


def test_gold_loader_markup():
    note = parse_gold("## type: X\n[[chief_complaint]]CC:[[/]] pain.\n@@Seen by {{Dr. A}}.\n")
    assert note.meta == {"type": "X"}
    assert note.text == "CC: pain.\nSeen by Dr. A.\n"
    assert note.sentences == [(0, 9), (10, 24)]
    assert note.sentence_categories == ["chief_complaint", "chief_complaint"]
    assert note.sections[0].category == "chief_complaint" and note.sections[0].header_end == 3
    assert [note.text[a:b] for a, b in note.must_not_split] == ["Dr. A"]


@pytest.mark.parametrize("bad", [
    "a {{b", "a }} b", "[[/]] x", "x @@ y", "first line\n\nsecond para without a mark",
])
def test_gold_loader_rejects_bad_markup(bad):
    with pytest.raises(GoldFormatError):
        parse_gold(bad)
