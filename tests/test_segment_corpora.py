"""The rules segmenter over all of ../shared/corpora: no crash, exact offsets, full coverage."""
from __future__ import annotations

import pytest

from clinicalbert_spark.segment import get_segmenter
from clinicalbert_spark.segment.corpora import corpora_dir, read_all
from clinicalbert_spark.segment.evaluate import check_invariants


@pytest.fixture(scope="module")
def corpora():
    d = corpora_dir()
    found = read_all(d) if d.is_dir() else {}
    if not found:
        pytest.skip(f"real corpora not found under {d} (set CLINICALBERT_CORPORA to their folder)")
    return found


def test_readers(corpora):
    for name, notes in corpora.items():
        assert notes, name
        ids = [i for i, _ in notes]
        assert len(set(ids)) == len(ids), name
    if "nursing" in corpora:
        assert len(corpora["nursing"]) > 2000
        assert all("END_OF_RECORD" not in t for _, t in corpora["nursing"])


def test_rules_invariants_on_real_text(corpora):
    seg = get_segmenter("rules")
    n_notes = n_sents = 0
    bad: list[str] = []
    for name, notes in corpora.items():
        for note_id, text in notes:
            sentences = seg.segment(text)
            problems = check_invariants(text, sentences, seg.sections(text), seg.subsections(text))
            if problems:
                bad.append(f"{note_id}: {problems[:3]}")  # ids and offsets only, never text
            n_notes += 1
            n_sents += len(sentences)
    print(f"\n{n_notes} notes, {n_sents} sentences, {len(bad)} with violations")
    assert not bad, bad[:10]
