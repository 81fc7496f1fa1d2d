"""Clinical note segmentation: sections and sentences with exact character offsets.

>>> from clinicalbert_spark.segment import get_segmenter
>>> seg = get_segmenter("rules")
>>> note = "Chief Complaint:\\nChest pain.\\n\\nHPI: 65 yo M s/p CABG. Seen by Dr. Smith at 7 a.m. today."
>>> [(s.section_category, note[s.start:s.end]) for s in seg.segment(note)]  # doctest: +NORMALIZE_WHITESPACE
[('chief_complaint', 'Chief Complaint:'), ('chief_complaint', 'Chest pain.'),
 ('history_of_present_illness', 'HPI: 65 yo M s/p CABG.'),
 ('history_of_present_illness', 'Seen by Dr. Smith at 7 a.m. today.')]

Pure Python, no Spark. See ``docs/segmentation.md`` for the rules and the gold-set guideline.
"""
from .backends import (
    BackendUnavailable,
    Segmenter,
    available_backends,
    get_segmenter,
    segment_note,
)
from .lexicon import PREAMBLE_CATEGORY, UNKNOWN_CATEGORY
from .sections import split_sections
from .types import Section, Sentence

__all__ = [
    "BackendUnavailable",
    "PREAMBLE_CATEGORY",
    "Section",
    "Segmenter",
    "Sentence",
    "UNKNOWN_CATEGORY",
    "available_backends",
    "get_segmenter",
    "segment_note",
    "split_sections",
]
