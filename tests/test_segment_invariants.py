"""Offset invariants on arbitrary text (hypothesis) and on a very large note."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clinicalbert_spark.segment import get_segmenter
from clinicalbert_spark.segment.evaluate import check_invariants, load_gold

SEG = get_segmenter("rules")

# Text built from clinical-looking pieces and awkward characters, so that headers, brackets,
# abbreviations and line breaks actually collide.
_PIECES = st.sampled_from([
    "HPI:", "Plan:", "FINDINGS:", "Temp: 37.2", "[**", "**]", "[**Name 1**]", "Dr.", "t.i.d.",
    "1.", "2)", "- ", "#", "?", "!", ".", ",", ";", ":", ".,", "a.m.", "2.5", "10-12 %", "BP 120/80",
    "\n", "\r\n", "\r", "\n\n", "\t", "  ", "\x00", "\ufffd", "\u00e9", "\u00a0", "\u2028",
    "\x0b", "\x1c", "Review of Systems", "Assessment:", "Vital signs", "pt", "The", "stable",
    "ALL CAPS LINE", "=", "NEURO=", "____", "e.g.", "Mr.", "x", "A.", " ", "(E.C.)",
    "Physical Exam:", "HEENT:", "Review of Systems", "Constitutional:", "Assessment and Plan",
    "# CHF:", "B. Diabetes", "1. Hypertension:", "Primary:", "MENTAL STATUS EXAM", "Mood:",
    "All other systems negative.", "Electronically signed by", "Yours sincerely,", "pain.Denies",
    "\"no pain.\" he said", "(three times a day)", "FINDINGS:", "LIVER:", "i. ii.", "Fig. 2",
])
_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(_PIECES, max_size=80).map(" ".join),
    st.lists(_PIECES, max_size=80).map("".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_invariants_hold_for_arbitrary_text(text):
    sentences = SEG.segment(text)
    sections = SEG.sections(text)
    assert check_invariants(text, sentences, sections, SEG.subsections(text)) == []
    if not text.strip():
        assert sentences == [] and sections == []


def test_very_large_note():
    """A ~5 MB note completes (no timing assertion) and keeps every invariant."""
    base = "\n\n".join(n.text for n in load_gold())
    text = (base * (5_000_000 // len(base) + 1))[:5_000_000]
    sentences = SEG.segment(text)
    assert check_invariants(text, sentences, SEG.sections(text), SEG.subsections(text)) == []
    assert len(sentences) > 10_000


@pytest.mark.parametrize("text", [
    "[**" * 20000,  # unclosed brackets: no quadratic blow-up
    "a" * 200_000,  # one huge token
    "." * 100_000,
    "\n" * 100_000 + "x",
    "A:" * 50_000,
    ("HEADER: " * 10 + "\n") * 5000,
    "1. " * 50_000,
])
def test_pathological_inputs(text):
    sentences = SEG.segment(text)
    assert check_invariants(text, sentences, SEG.sections(text), SEG.subsections(text)) == []
