"""Data types shared by every segmentation backend."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    """A section of a note: ``note[start:end]`` spans its header (if any) and body."""

    index: int
    title: str | None  # header as written (without the trailing colon); None for preamble text
    category: str  # canonical category, e.g. "history_of_present_illness"; "other" if unknown
    start: int
    end: int
    # End of the header (title plus colon) when there is one: ``note[start:header_end]``.
    header_end: int | None = None


@dataclass(frozen=True)
class Sentence:
    """One sentence; ``note[start:end]`` is its exact text (end exclusive, whitespace trimmed)."""

    section_index: int
    section_title: str | None
    section_category: str
    sentence_index: int  # position within the note (0-based, across sections)
    start: int
    end: int
