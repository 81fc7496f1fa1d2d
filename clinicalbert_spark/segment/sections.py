"""Rule-based section splitter.

Three kinds of header candidates are found with ``re.finditer`` over the whole note (C-level scans;
Python only looks at the few lines that *could* be headers):

``colon``   a short title at the start of a line followed by ``:`` (or ``=`` as in MIMIC-II
            ``NEURO=...``), optionally indented, optionally with text after it on the same line
            (``HPI: 65 yo M``, ``   TECHNIQUE:``, ``[**Hospital 1**] MEDICAL CONDITION:``).
``alone``   a short line with no colon and no sentence punctuation (``Review of Systems``,
            ``FINAL REPORT``, ``Physical Examination``).
``inline``  a title with a colon right after ``.``, ``;`` or ``,`` inside a line: MTSamples turned
            line breaks into commas (``...obesity.,PROCEDURE:  ,The patient``) and MIMIC-II nursing
            notes run sections together (``...DOPAMINE; PMH: CAD, S/P MI; ... A: STABLE; P: ...``).

Each candidate is then classified (:func:`_classify`): lexicon headers are headers, known field
names (``Temp: 37.2``, ``Na: 140``, ``Pager: 1234``) never are, and unknown titles are headers
only when they look like one (ALL CAPS and short; or Title Case with nothing after the colon;
...). Unknown headers keep their title and get :data:`~.lexicon.UNKNOWN_CATEGORY` (``other``),
except inside a *container* section (``Pertinent Results``, ``Brief Hospital Course``,
``Discharge Diagnosis`` ...) where an unknown sub-heading (``Primary:``, ``ADMISSION LABS:``)
keeps the container's category; known lab/imaging sub-headings inside ``Pertinent Results``
likewise stay ``pertinent_results``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .lexicon import (
    PREAMBLE_CATEGORY,
    UNKNOWN_CATEGORY,
    is_field_name,
    lookup_header,
    normalize_title,
)
from .types import Section

_LS = r"(?:(?<=[\n\r])|\A)"  # line start for \n, \r\n and bare \r line ends
_BRACKET = r"\[\*\*[^\n\r\]]{0,80}?\*\*\]"

_COLON_RE = re.compile(
    _LS
    + r"[ \t]*(?P<title>(?:" + _BRACKET + r"[ \t]*)?[A-Za-z][A-Za-z0-9 \t/&()',+#\-]{0,60}?)"
    r"[ \t]*(?P<sep>:|=(?=[A-Za-z]))"
)
_ALONE_RE = re.compile(
    _LS + r"[ \t]*(?P<title>[A-Za-z][A-Za-z \t/&()',\-]{0,58}[A-Za-z)])[ \t]*(?=[\r\n]|\Z)"
)
_INLINE_RE = re.compile(r"(?<=[.;,])[ \t]*(?P<title>[A-Za-z][A-Za-z /&]{0,40}?)[ \t]*:(?![0-9/])")
# Metavision headers followed by a timestamp rather than a colon.
_PREFIX_RE = re.compile(_LS + r"[ \t]*(?P<title>Flowsheet Data as of)\b", re.I)

_VALUE_RE = re.compile(r"[-+~<>=(]*\s*\d")  # "KEY: 120/80", "KEY: (36.8)" -> a field
_DIGIT_RE = re.compile(r"\d")
_LINE_END_RE = re.compile(r"[^\r\n]*")
_NEXT_ASSESSMENT_RE = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t]*Assessment[ \t]*:", re.I)
_NONSPACE_RE = re.compile(r"\S")

_SMALL_WORDS = frozenset("a an and as at by for from in of on or the to vs with w/ not".split())

# Sections whose unknown sub-headings keep the parent's category.
CONTAINER_CATEGORIES = frozenset({
    "pertinent_results", "hospital_course", "assessment_and_plan", "discharge_diagnosis",
    "discharge_medications", "medications_on_admission", "discharge_instructions",
    "followup_instructions", "physical_exam", "labs_and_studies", "findings", "medications",
    "admission_info",
})
# Known sub-headings that stay in the parent's category: {parent: {child categories}}.
_ABSORBED = {
    "pertinent_results": frozenset({"labs_and_studies", "imaging", "findings", "impression",
                                    "cardiovascular"}),
}


@dataclass(frozen=True)
class Header:
    """A detected header: ``note[start:end]`` is the title plus its colon (if any)."""

    start: int
    end: int
    title: str
    category: str
    alone: bool  # nothing else on the header's line


def _is_caps(title: str) -> bool:
    t = title.replace("[**", " ").replace("**]", " ")
    return not any(c.islower() for c in t) and sum(c.isupper() for c in t) >= 2


def _is_titlecase(words: list[str]) -> bool:
    seen = False
    for w in words:
        w = w.strip("()',-&/")
        if not w:
            continue
        if w.lower() in _SMALL_WORDS and seen:
            continue
        if not w[0].isupper():
            return False
        seen = True
    return seen


def _prev_line_blank(text: str, line_start: int) -> bool:
    """True when the line before ``line_start`` is blank (or there is none)."""
    i = line_start - 1
    if i < 0:
        return True
    if text[i] == "\n" and i > 0 and text[i - 1] == "\r":
        i -= 1
    i -= 1  # past the line terminator
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in "\r\n"


def _classify(text: str, kind: str, title: str, t_start: int, rest: str) -> str | None:
    """Category for a header candidate, or None when it is not a header."""
    if is_field_name(title):
        return None
    cat = lookup_header(title)
    caps = _is_caps(title)
    if kind == "inline":
        before = text[t_start - 1] if t_start else ""
        j = t_start - 1
        while j >= 0 and text[j] in " \t":
            j -= 1
        before = text[j] if j >= 0 else ""
        if cat is not None:
            # After a bare comma only ALL-CAPS titles (MTSamples ",PLAN:") count; "..., Plan: x"
            # in mixed-case prose is too often a phrase.
            if before == "," and not caps:
                return None
            return cat
        if not caps or before not in ".," or (before == "," and text[j - 1: j] != "."):
            return None
    elif cat is not None:
        if kind == "alone" and not title[0].isupper():
            return None  # a wrapped prose line that happens to read "physical exam"
        return cat
    words = normalize_title(title).split()
    if not 1 <= len(words) <= 6 or len(title) > 50 or _DIGIT_RE.search(title.replace("[**", "")):
        return None
    n_letters = sum(c.isalpha() for c in title)
    if kind in ("colon", "inline"):
        if caps and n_letters >= 2:
            return None if (rest and _VALUE_RE.match(rest)) else UNKNOWN_CATEGORY
        if kind == "colon" and not rest and title[0].isupper() and _is_titlecase(title.split()):
            return UNKNOWN_CATEGORY
        return None
    # kind == "alone": unknown lines without a colon are too often exam titles ("AP SINGLE VIEW
    # OF THE CHEST") or list entries to be headers - except a metavision nursing problem title,
    # recognisable by the "Assessment:" line right under it.
    if title[0].isupper() and _NEXT_ASSESSMENT_RE.match(text, t_start + len(title) + len(rest)):
        return UNKNOWN_CATEGORY
    return None


def find_headers(text: str) -> list[Header]:
    """All section headers of ``text``, in order, non-overlapping."""
    cands: list[tuple[int, int, str, str, int]] = []  # (start, end, kind, title, rest_start)
    for m in _COLON_RE.finditer(text):
        cands.append((m.start("title"), m.end(), "colon", m.group("title"), m.end()))
    for m in _ALONE_RE.finditer(text):
        cands.append((m.start("title"), m.end("title"), "alone", m.group("title"), m.end()))
    if "." in text or ";" in text or "," in text:
        for m in _INLINE_RE.finditer(text):
            cands.append((m.start("title"), m.end(), "inline", m.group("title"), m.end()))
    if "lowsheet" in text or "LOWSHEET" in text:
        for m in _PREFIX_RE.finditer(text):
            cands.append((m.start("title"), m.end("title"), "prefix", m.group("title"), m.end()))
    cands.sort()
    headers: list[Header] = []
    last_end = -1
    for start, end, kind, title, rest_start in cands:
        if start < last_end:
            continue
        title = title.rstrip()
        if kind == "prefix":
            cat: str | None = "vital_signs"
            rest = ""
            alone = False
        else:
            rest = _LINE_END_RE.match(text, rest_start).group()[:200].strip()
            if kind == "inline":
                rest = rest.lstrip(", ")
            cat = _classify(text, kind, title, start, rest)
            alone = not rest
        if cat is None:
            continue
        headers.append(Header(start, end, title, cat, alone))
        last_end = end
    return headers


def build_sections(text: str, headers: list[Header]) -> list[Section]:
    """Sections from headers: a preamble for text before the first header, then one per header.

    Section spans are trimmed of surrounding whitespace and never overlap.
    """
    sections: list[Section] = []
    first = _NONSPACE_RE.search(text)
    if first is None:
        return sections
    bounds: list[tuple[int, Header | None]] = []
    if not headers or first.start() < headers[0].start:
        bounds.append((first.start(), None))
    bounds.extend((h.start, h) for h in headers)
    parent_cat: str | None = None  # category of the enclosing top-level section
    for i, (start, h) in enumerate(bounds):
        stop = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        end = start + len(text[start:stop].rstrip())
        if h is None:
            sections.append(Section(len(sections), None, PREAMBLE_CATEGORY, start, end))
            continue
        cat = h.category
        if parent_cat is not None:
            if cat == UNKNOWN_CATEGORY and parent_cat in CONTAINER_CATEGORIES:
                cat = parent_cat
            elif cat in _ABSORBED.get(parent_cat, ()):
                cat = parent_cat
            else:
                parent_cat = cat
        else:
            parent_cat = cat
        sections.append(Section(len(sections), h.title, cat, start, end, h.end))
    return sections


def split_sections(text: str) -> list[Section]:
    """Sections of ``text`` (empty list for empty/whitespace-only text)."""
    if not text or text.isspace():
        return []
    return build_sections(text, find_headers(text))
