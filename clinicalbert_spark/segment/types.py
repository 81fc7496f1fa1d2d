"""Data types shared by every segmentation backend."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A section of a note: ``note[start:end]`` spans its header (if any) and body.

    Top-level sections (``Segmenter.sections``) tile the note; sub-sections
    (``Segmenter.subsections``) lie inside a *container* top-level section (physical exam,
    review of systems, assessment and plan, ...) and have ``parent`` set to its index.
    """

    index: int
    title: str | None  # header as written (without the trailing colon); None for preamble text
    category: str  # canonical category, e.g. "history_of_present_illness"; "other" if unknown
    start: int
    end: int
    # End of the header (title plus colon) when there is one: ``note[start:header_end]``.
    header_end: int | None = None
    # Sub-sections only: index of the enclosing top-level section (None for top-level ones).
    parent: int | None = None


@dataclass(frozen=True)
class Sentence:
    """One sentence; ``note[start:end]`` is its exact text (end exclusive, whitespace trimmed).

    ``section_*`` name the sentence's top-level section (what queries group by; inside a
    container everything keeps the container's category). ``subsection_*`` name the
    sub-section inside that container (``heent`` under ``review_of_systems`` is a reported
    symptom, under ``physical_exam`` an exam finding); all three are None outside sub-sections.
    """

    section_index: int
    section_title: str | None
    section_category: str
    sentence_index: int  # position within the note (0-based, across sections)
    start: int
    end: int
    subsection_title: str | None = None
    subsection_category: str | None = None
    subsection_index: int | None = None  # index into ``Segmenter.subsections(note)``


_new = object.__new__


def make_sentence(section_index: int, section_title: str | None, section_category: str,
                  sentence_index: int, start: int, end: int, subsection_title: str | None = None,
                  subsection_category: str | None = None,
                  subsection_index: int | None = None) -> Sentence:
    """``Sentence(...)`` without the frozen dataclass's per-field ``object.__setattr__`` calls
    (the rules backend builds ~15,000 sentences per MB; this keeps it above 10 MB/s). The
    result is an ordinary, equal and equally hashable :class:`Sentence`."""
    o = _new(Sentence)
    d = o.__dict__
    d["section_index"] = section_index
    d["section_title"] = section_title
    d["section_category"] = section_category
    d["sentence_index"] = sentence_index
    d["start"] = start
    d["end"] = end
    d["subsection_title"] = subsection_title
    d["subsection_category"] = subsection_category
    d["subsection_index"] = subsection_index
    return o
