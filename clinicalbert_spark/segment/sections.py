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
from functools import lru_cache
from typing import NamedTuple

from .lexicon import (
    PREAMBLE_CATEGORY,
    UNKNOWN_CATEGORY,
    guess_category,
    is_field_name,
    lookup_header,
    normalize_title,
)
from .types import Section

_LS = r"(?:(?<=[\n\r])|\A)"  # line start for \n, \r\n and bare \r line ends
_BRACKET = r"\[\*\*[^\n\r\]]{0,80}?\*\*\]"

# Header candidates are found from their separator: every ":" (and "=" before a letter) is
# looked at, and the text between the line start (or the previous ". ; ,") and it must look
# like a title. Colons are rare in prose, so this is much cheaper than matching titles at every
# line start.
_SEP_RE = re.compile(r":|=(?=[A-Za-z])")
_COLON_TITLE_RE = re.compile(
    r"[ \t]*(?P<title>(?:" + _BRACKET + r"[ \t]*)?[A-Za-z0-9][A-Za-z0-9 \t/&()',+#\-]{0,60})"
)
_INLINE_TITLE_RE = re.compile(r"[ \t]*(?P<title>[A-Za-z][A-Za-z /&]{0,40})")
_MAX_INDENT = 60
_COMMA_AFTER_RE = re.compile(r"[ \t]*:[ \t]*,")
_ALONE_TITLE = r"[ \t]*(?P<title>[A-Za-z](?:[A-Za-z \t/&()',\-]|" + _BRACKET + r"){0,58}[A-Za-z)\]])"
# "(?m)^" is much faster than a look-behind at every position; notes with bare-CR line ends
# (old Mac) use the slower form.
_ALONE_RE = re.compile(r"(?m)^" + _ALONE_TITLE + r"[ \t]*\r?$")
_ALONE_CR_RE = re.compile(_LS + _ALONE_TITLE + r"[ \t]*(?=[\r\n]|\Z)")
# Metavision headers followed by a timestamp rather than a colon.
_PREFIX_RE = re.compile(_LS + r"[ \t]*(?P<title>Flowsheet Data as of)\b", re.I)

_VALUE_RE = re.compile(r"[-+~<>=(]*\s*\d")  # "KEY: 120/80", "KEY: (36.8)" -> a field
_DIGIT_RE = re.compile(r"\d")
_DIGITS_SLASH = frozenset("0123456789/")
_LINE_END_RE = re.compile(r"[^\r\n]{0,200}")
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
    # problem-oriented A&P: "# Hypotension / Assessment: ... / Plan: ..."
    "assessment_and_plan": frozenset({"assessment", "plan", "action", "response"}),
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


class _TitleInfo(NamedTuple):
    field: bool  # a known key:value field name
    category: str | None  # lexicon category
    caps: bool  # ALL CAPS
    plausible: bool  # short, no digits: could be an unknown header
    titlecase: bool


@lru_cache(maxsize=1 << 16)
def _title_info(title: str) -> _TitleInfo:
    """Everything about a title that does not depend on its context (titles repeat: cached)."""
    field = is_field_name(title)
    cat = None if field else lookup_header(title)
    words = normalize_title(title).split()
    plausible = (1 <= len(words) <= 6 and len(title) <= 50
                 and not _DIGIT_RE.search(title.replace("[**", "")))
    return _TitleInfo(field, cat, _is_caps(title), plausible, _is_titlecase(title.split()))


def _classify(text: str, kind: str, title: str, t_start: int, rest: str) -> str | None:
    """Category for a header candidate, or None when it is not a header."""
    info = _title_info(title)
    if info.field:
        return None
    cat = info.category
    if cat is None and title[0].isdigit():
        return None  # "24 Hour Events:" is in the lexicon; "1) Foo:" is a list item
    caps = info.caps
    if kind == "inline":
        j = t_start - 1
        while j >= 0 and text[j] in " \t":
            j -= 1
        before = text[j] if j >= 0 else ""
        if before == "," and j < t_start - 1 and not _COMMA_AFTER_RE.match(text, t_start + len(title)):
            # MTSamples glues its commas to the title (".,PLAN:,"); "In the ED, VS: T 98" is
            # prose listing vitals, not a new section.
            return None
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
    if kind == "alone":
        # Unknown lines without a colon are too often exam titles ("AP SINGLE VIEW OF THE
        # CHEST") or list entries to be headers - except a metavision nursing problem title,
        # recognisable by the "Assessment:" line right under it.
        if title[0].isupper() and _NEXT_ASSESSMENT_RE.match(text, t_start + len(title)):
            return UNKNOWN_CATEGORY
        return None
    if not info.plausible:
        return None
    if caps and sum(c.isalpha() for c in title) >= 2:
        return None if (rest and _VALUE_RE.match(rest)) else UNKNOWN_CATEGORY
    if kind == "colon" and not rest and title[0].isupper() and info.titlecase:
        return UNKNOWN_CATEGORY
    return None


def find_headers(text: str) -> list[Header]:
    """All section headers of ``text``, in order, non-overlapping."""
    cands: list[tuple[int, int, str, str, int]] = []  # (start, end, kind, title, rest_start)
    rfind = text.rfind
    for sm in _SEP_RE.finditer(text):
        pos = sm.start()
        lo = max(0, pos - 62 - _MAX_INDENT)
        ls = max(rfind("\n", lo, pos), rfind("\r", lo, pos)) + 1
        if ls or not lo:
            m = _COLON_TITLE_RE.fullmatch(text, ls, pos)
            if m is not None:
                cands.append((m.start("title"), pos + 1, "colon", m.group("title"), pos + 1))
                continue
        if sm.group() == ":":
            lo = max(0, pos - 42)
            p = max(rfind(".", lo, pos), rfind(";", lo, pos), rfind(",", lo, pos))
            if p >= 0 and text[pos + 1: pos + 2] not in _DIGITS_SLASH:
                m = _INLINE_TITLE_RE.fullmatch(text, p + 1, pos)
                if m is not None:
                    cands.append((m.start("title"), pos + 1, "inline", m.group("title"), pos + 1))
    alone_re = _ALONE_CR_RE if text.count("\r") > text.count("\n") else _ALONE_RE
    for m in alone_re.finditer(text):
        cands.append((m.start("title"), m.end("title"), "alone", m.group("title"), m.end()))
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
            rest = _LINE_END_RE.match(text, rest_start).group().strip()
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
        if cat == UNKNOWN_CATEGORY:
            # "Clinical Assessment", "Respiratory Care": a known header inside the title.
            cat = guess_category(h.title) or UNKNOWN_CATEGORY
            if parent_cat == UNKNOWN_CATEGORY:
                parent_cat = cat
        sections.append(Section(len(sections), h.title, cat, start, end, h.end))
    return sections


def split_sections(text: str) -> list[Section]:
    """Sections of ``text`` (empty list for empty/whitespace-only text)."""
    if not text or text.isspace():
        return []
    return build_sections(text, find_headers(text))
