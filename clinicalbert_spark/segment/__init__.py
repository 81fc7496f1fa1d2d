"""Clinical note segmentation: sections and sentences with exact character offsets.

>>> from clinicalbert_spark.segment import get_segmenter
>>> seg = get_segmenter("rules")
>>> note = "Chief Complaint:\\nChest pain.\\n\\nHPI: 65 yo M s/p CABG. Seen by Dr. Smith at 7 a.m. today."
>>> [(s.section_category, note[s.start:s.end]) for s in seg.segment(note)]  # doctest: +NORMALIZE_WHITESPACE
[('chief_complaint', 'Chief Complaint:'), ('chief_complaint', 'Chest pain.'),
 ('history_of_present_illness', 'HPI: 65 yo M s/p CABG.'),
 ('history_of_present_illness', 'Seen by Dr. Smith at 7 a.m. today.')]

Sections form a hierarchy: inside a container (physical exam, review of systems, assessment and
plan ...) every sentence keeps the container's category and names its sub-section:

>>> note = "REVIEW OF SYSTEMS\\nHEENT: No vision change.\\n\\nPHYSICAL EXAM\\nHEENT: PERRL."
>>> pairs = [(s.section_category, s.subsection_category) for s in seg.segment(note)]
>>> pairs  # doctest: +NORMALIZE_WHITESPACE
[('review_of_systems', None), ('review_of_systems', 'heent'),
 ('physical_exam', None), ('physical_exam', 'heent')]

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
from .sections import split_sections, split_sections_tree
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
    "split_sections_tree",
]
