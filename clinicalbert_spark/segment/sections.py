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
from functools import lru_cache
from typing import NamedTuple

from .lexicon import (
    ALL_SUBHEADINGS,
    CONTINUATION_WORDS,
    PREAMBLE_CATEGORY,
    REPORT_CATEGORIES,
    SUBSECTION_LEXICON,
    SYSTEM_SUBCATEGORY,
    UNKNOWN_CATEGORY,
    guess_category,
    is_field_name,
    lookup_header,
    normalize_title,
)
from .sentences import WRAP_WIDTH_SLACK, _hard_wrap_width
from .types import Section

_LS = r"(?:(?<=[\n\r])|\A)"  # line start for \n, \r\n and bare \r line ends
_BRACKET = r"\[\*\*[^\n\r\]]{0,80}?\*\*\]"

# Header candidates are found from their separator: every ":" (and "=" before a letter) is
# looked at, and the text between the line start (or the previous ". ; ,") and it must look
# like a title. Colons are rare in prose, so this is much cheaper than matching titles at every
# line start.
_SEP_RE = re.compile(r":|=(?=[A-Za-z])")
_COLON_TITLE_RE = re.compile(
    r"[ \t]*(?P<title>(?:" + _BRACKET + r"[ \t]*)?[A-Za-z0-9][A-Za-z0-9 \t/&()',+#\-]{0,60}"
    r"(?:[ \t]*" + _BRACKET + r")?)"
)
_INLINE_TITLE_RE = re.compile(r"[ \t]*(?P<title>[A-Za-z][A-Za-z /&]{0,40})")
_MAX_INDENT = 60
_COMMA_AFTER_RE = re.compile(r"[ \t]*:[ \t]*,")
_ALONE_TITLE = r"[ \t]*(?P<title>[A-Za-z](?:[A-Za-z \t/&()',\-]|" + _BRACKET + r"){0,58}[A-Za-z)\]])"
# "(?m)^" is much faster than a look-behind at every position; notes with bare-CR line ends
# (old Mac) use the slower form. A trailing comma is kept for letter closings ("Yours sincerely,").
# One scan of the line starts finds both lines alone and "TITLE - text" headers (MIMIC-II nursing
# "RESP- LS CLEAR", "GI-ABD SOFT", "Plan - home"): the title, then a dash and text.
_DASH = r"|[ \t]*(?P<dash>--?|\u2013|\u2014)[ \t]*(?=[A-Za-z(\[])"
_ALONE_RE = re.compile(r"(?m)^" + _ALONE_TITLE + r"(?:[ \t]*(?P<comma>,)?[ \t]*\r?$" + _DASH + ")")
_DASH_TITLE_RE = re.compile(r"(?P<title>[A-Za-z][A-Za-z /&]{0,30}?)[ \t]*(?:--?|\u2013|\u2014)"
                            r"[ \t]*(?=[A-Za-z(\[])")
_ALONE_CR_RE = re.compile(_LS + _ALONE_TITLE + r"(?:[ \t]*(?P<comma>,)?[ \t]*(?=[\r\n]|\Z)"
                          + _DASH + ")")
# Metavision headers followed by a timestamp rather than a colon; signature lines without a colon.
_PREFIX_RE = re.compile(_LS + r"[ \t]*(?P<title>Flowsheet Data as of)\b", re.I)
_SIGNED_RE = re.compile(
    r"(?im)^[ \t]*(?P<title>(?:electronically|digitally) signed(?: out)?(?: by)?|"
    r"signed (?:electronically|out) by|e-signed by)\b(?![ \t]*:)")

_SOAP_DOT_RE = re.compile(r"(?m)^[ \t]*(?P<title>[SOAP])\.(?=[ \t\r\n])")
# ICU nursing notes in capitals with no separator after the system ("CV SR 80S NO VEA", "RESP LS
# CLEAR", "GI ABD SOFT"): a capitalised body-system word at a line start, the line going on in
# capitals, is a header when the note has such lines for at least three different systems.
_BRACKET_RE = re.compile(_BRACKET)
# A literal line break first (not "(?m)^", which is tried at every position: 7x slower here).
_CAPS_SYSTEM = r"[ \t]*(?P<title>[A-Z][A-Z/]{1,9})[ \t]+(?=[A-Z0-9(\[?+\-~<>#])"
_CAPS_SYSTEM_RE = {nl: re.compile(nl + _CAPS_SYSTEM) for nl in ("\n", "\r")}
_CAPS_SYSTEM_FIRST_RE = re.compile(_CAPS_SYSTEM)
_CAPS_SYSTEMS = frozenset({
    "neuro", "cardiovascular", "respiratory", "gastrointestinal", "genitourinary",
    "infectious_disease", "endocrine", "hematology", "skin", "musculoskeletal", "social_history",
    "plan"})
_SOAP_CATEGORY = {"S": "subjective", "O": "objective", "A": "assessment", "P": "plan"}
_VALUE_RE = re.compile(r"[-+~<>=(]*\s*\d")  # "KEY: 120/80", "KEY: (36.8)" -> a field
_DIGIT_RE = re.compile(r"\d")
_DIGITS_SLASH = frozenset("0123456789/")
_LINE_END_RE = re.compile(r"[^\r\n]{0,200}")
_NEXT_ASSESSMENT_RE = re.compile(r"[ \t]*(?:\r\n|\r|\n)[ \t]*Assessment[ \t]*:", re.I)
_NONSPACE_RE = re.compile(r"\S")
_BLANK_BEFORE_RE = re.compile(r"(?:\r\n|\r|\n)[ \t]*(?:\r\n|\r|\n)[ \t]*\Z")
_NEXT_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)(?P<blank>(?:[ \t]*(?:\r\n|\r|\n))*)"
                           r"[ \t]*(?P<line>[^\r\n]{0,120})")
_HEADERISH_RE = re.compile(r"[A-Za-z][A-Za-z0-9 /&()'\-]{0,40}:")
_LOWER_RE = re.compile(r"[a-z]")

_SMALL_WORDS = frozenset("a an and as at by for from in of on or the to vs with w/ not".split())
# Categories an unknown title with text after its colon may take from its head words
# ("Post-procedure plan: monitor BP", "Brief clinical history: ...").
_GUESSABLE = frozenset({
    "plan", "assessment", "assessment_and_plan", "history_of_present_illness",
    "past_medical_history", "medications", "discharge_instructions", "followup_instructions",
    "procedures", "indication", "findings", "labs_and_studies", "imaging", "hospital_course",
    "family_history", "social_history", "code_status", "chief_complaint", "impression",
    "past_surgical_history", "discharge_diagnosis", "review_of_systems", "physical_exam",
})

# Containers: top-level sections whose headers inside them are sub-sections; the family says
# which sub-headings they take (see :func:`_child`).
CONTAINER_FAMILY: dict[str, str] = {
    "physical_exam": "body", "review_of_systems": "body", "objective": "objective",
    "mental_status_exam": "mse", "pertinent_results": "results_all",
    "labs_and_studies": "results", "findings": "findings",
    "discharge_diagnosis": "diagnosis", "assessment_and_plan": "problems",
    "hospital_course": "problems", "medications": "generic",
    "medications_on_admission": "generic", "discharge_medications": "generic",
    "discharge_instructions": "generic", "followup_instructions": "generic",
    "admission_info": "generic",
}
#: kept for callers of v1: every category that takes sub-sections
CONTAINER_CATEGORIES = frozenset(CONTAINER_FAMILY)
_PROBLEM_CONTAINERS = frozenset({"assessment_and_plan", "hospital_course"})
# Sub-headings of a results section that are main section titles elsewhere: under a plain
# "Labs:" section, "IMAGING:" starts a new section; under MIMIC's "Pertinent Results" it does not.
_GENERIC_RESULTS = frozenset({"imaging", "radiology", "imaging studies", "studies", "labs",
                              "laboratory", "lab", "labs/studies", "other labs", "pathology"})
_PROBLEM_SYSTEM_CATS = frozenset(SYSTEM_SUBCATEGORY) - {"vital_signs"}
_DISCHARGE_CONTEXT = frozenset({
    "discharge_instructions", "discharge_medications", "discharge_condition",
    "discharge_disposition", "followup_instructions", "discharge_diagnosis",
})
_CONTEXT_DEFAULT = {"diet": "nutrition", "activity": "rehab", "diet/activity": "nutrition",
                    "activity/diet": "rehab", "diet and activity": "nutrition"}


class Header(NamedTuple):
    """A detected header: ``note[start:end]`` is the title plus its colon (if any)."""

    start: int
    end: int
    title: str
    category: str | None  # None: a sub-heading that is a header only inside a container
    alone: bool  # nothing else on the header's line
    caps: bool = False  # ALL CAPS title
    blank_before: bool = False  # a blank line (or the note start) right before its line


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
    key: str  # normalised title
    sub: bool  # a known sub-heading (header only inside a container)
    guess: str | None  # category from the head words of an unknown title


@lru_cache(maxsize=1 << 16)
def _title_info(title: str) -> _TitleInfo:
    """Everything about a title that does not depend on its context (titles repeat: cached)."""
    field = is_field_name(title)
    cat = None if field else lookup_header(title)
    key = normalize_title(title)
    words = key.split()
    plausible = (1 <= len(words) <= 6 and len(title) <= 50
                 and not _DIGIT_RE.search(title.replace("[**", "")))
    guess = guess_category(title) if cat is None and not field else None
    return _TitleInfo(field, cat, _is_caps(title), plausible, _is_titlecase(title.split()), key,
                      key in ALL_SUBHEADINGS, guess)


# A header candidate's classification: a category, SUB (a header only inside a container), or None.
SUB = "\0sub"


def _classify(text: str, kind: str, title: str, t_start: int, rest: str) -> str | None:
    """Category for a header candidate, :data:`SUB`, or None when it is not a header."""
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
        if before == ":":
            # "REVIEW OF SYSTEMS: Constitutional: ..." - only a sub-heading, only in a container
            return SUB if (info.sub or cat in SYSTEM_SUBCATEGORY) else None
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
            return SUB if (info.sub and before == "." and info.titlecase) else None
    elif cat is not None:
        if kind == "alone" and not title[0].isupper():
            return None  # a wrapped prose line that happens to read "physical exam"
        if kind == "colon" and title[0].islower() and len(title) > 4 and _wrapped_into(text, t_start):
            return None  # "... about her son's" / "treatment: ..." - prose wrapped onto "word:"
        return cat
    if kind == "alone":
        # Unknown lines without a colon are too often exam titles ("AP SINGLE VIEW OF THE
        # CHEST") or list entries to be headers - except a metavision nursing problem title,
        # recognisable by the "Assessment:" line right under it, and a short ALL-CAPS line
        # between a blank line and prose (see _caps_line_header).
        if title[0].isupper() and _NEXT_ASSESSMENT_RE.match(text, t_start + len(title)):
            return UNKNOWN_CATEGORY
        if caps and info.plausible and _caps_line_header(text, t_start, title):
            return UNKNOWN_CATEGORY
        return None
    # a sub-heading that is no header on its own: "Thought process: linear" (inside an MSE)
    sub = SUB if info.sub and title[0].isupper() else None
    if not info.plausible:
        return sub
    if caps and sum(c.isalpha() for c in title) >= 2:
        return sub if (rest and _VALUE_RE.match(rest)) else UNKNOWN_CATEGORY
    if kind == "colon" and not rest and title[0].isupper() and info.titlecase:
        return UNKNOWN_CATEGORY
    if (kind == "colon" and info.guess in _GUESSABLE and title[0].isupper()
            and len(info.key.split()) >= 2 and not (rest and _VALUE_RE.match(rest))):
        return UNKNOWN_CATEGORY  # "Post-procedure plan: monitor BP q15min"
    return sub


def _wrapped_into(text: str, t_start: int) -> bool:
    """The line holding ``t_start`` continues a long line of prose above it (which ends in a
    lower-case word or a comma)."""
    ls = t_start
    while ls > 0 and text[ls - 1] in " \t":
        ls -= 1
    if ls == 0 or text[ls - 1] not in "\r\n":
        return False
    pe = ls - 1
    if pe > 0 and text[pe] == "\n" and text[pe - 1] == "\r":
        pe -= 1
    prev = text[max(0, pe - 200):pe]
    k = max(prev.rfind("\n"), prev.rfind("\r"))
    line = prev[k + 1:].rstrip()
    if len(line) < 50 or not (line[-1].islower() or line[-1] in ",'"):
        return False
    width = _hard_wrap_width(text)
    return bool(width) and len(line) >= width - WRAP_WIDTH_SLACK


def _caps_line_header(text: str, t_start: int, title: str) -> bool:
    """An unknown ALL-CAPS line alone between a blank line and prose (``ADVANCE CARE
    PLANNING`` / blank / ``DNR/DNI, confirmed with ...``) is very likely a header. The note's
    first line (its title) is not, nor a line followed by another header or more capitals."""
    ls = t_start
    while ls > 0 and text[ls - 1] in " \t":
        ls -= 1
    if ls == 0 or _NONSPACE_RE.search(text, 0, ls) is None:
        return False  # the first line of the note: its title
    if not _BLANK_BEFORE_RE.search(text, max(0, ls - 40), ls):
        return False
    m = _NEXT_LINE_RE.match(text, t_start)
    if m is None:
        return False
    line = m.group("line")
    return bool(line) and _LOWER_RE.search(line) is not None and not _HEADERISH_RE.match(line)


def _caps_system_headers(text: str) -> list[tuple[int, int, str, str, int]]:
    """Header candidates of :data:`_CAPS_SYSTEM_RE` (see there), or none when the note has
    them for fewer than three systems or the line before one runs on into it."""
    found, systems = [], set()
    first = _CAPS_SYSTEM_FIRST_RE.match(text)
    nl = "\n" if "\n" in text or "\r" not in text else "\r"  # bare-CR line ends (old Mac)
    for m in ([first] if first else []) + list(_CAPS_SYSTEM_RE[nl].finditer(text)):
        info = _title_info(m.group("title"))
        if info.field or info.category not in _CAPS_SYSTEMS:
            continue
        line = _LINE_END_RE.match(text, m.end()).group()
        if _LOWER_RE.search(_BRACKET_RE.sub("", line)):
            continue  # "GI consult was called": prose, not a system line
        before = text[max(0, m.start() - 80): m.start()].rstrip()
        last = before.rsplit(None, 1)[-1].lower() if before else ""
        if last in CONTINUATION_WORDS:
            continue  # "... SEEN BY\nNEURO TEAM": a wrapped line
        found.append((m.start("title"), m.end("title"), "system", m.group("title"), m.end()))
        systems.add(info.category)
    return found if len(systems) >= 3 else []


def find_headers(text: str) -> list[Header]:
    """All header candidates of ``text`` accepted as headers (or sub-headings), in order,
    non-overlapping."""
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
            p = max(rfind(".", lo, pos), rfind(";", lo, pos), rfind(",", lo, pos),
                    rfind(":", lo, pos))
            if p >= 0 and text[pos + 1: pos + 2] not in _DIGITS_SLASH:
                m = _INLINE_TITLE_RE.fullmatch(text, p + 1, pos)
                if m is not None:
                    cands.append((m.start("title"), pos + 1, "inline", m.group("title"), pos + 1))
    alone_re = _ALONE_CR_RE if text.count("\r") > text.count("\n") else _ALONE_RE
    for m in alone_re.finditer(text):
        if m.group("dash"):
            cands.append((m.start("title"), m.end(), "dash", m.group("title"), m.end()))
            continue
        if "-" in m.group("title"):
            # a whole line of title characters can still be "NEURO- ALERT AND ORIENTED"
            d = _DASH_TITLE_RE.match(text, m.start("title"))
            if d is not None and _title_info(d.group("title")).category is not None:
                cands.append((d.start("title"), d.end(), "dash", d.group("title"), d.end()))
                continue
        kind = "alone," if m.group("comma") else "alone"
        cands.append((m.start("title"), m.end("title"), kind, m.group("title"), m.end()))
    if "\nO. " in text or "\nA. " in text:
        # SOAP letters with a period at line starts ("S. NO COMPLAINTS" / "O. SEE FLOWSHEET" /
        # "A. STABLE" / "P. CONTINUE"): headers when the note uses at least three of them
        soap = [m for m in _SOAP_DOT_RE.finditer(text)]
        if len({m.group("title") for m in soap}) >= 3:
            for m in soap:
                cands.append((m.start("title"), m.end(), "soap", m.group("title"), m.end()))
    cands.extend(_caps_system_headers(text))
    if "lowsheet" in text or "LOWSHEET" in text:
        for m in _PREFIX_RE.finditer(text):
            cands.append((m.start("title"), m.end("title"), "prefix", m.group("title"), m.end()))
    if "igned" in text or "IGNED" in text:
        for m in _SIGNED_RE.finditer(text):
            cands.append((m.start("title"), m.end("title"), "signed", m.group("title"), m.end()))
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
        elif kind == "dash":
            # a lexicon title only; lower/mixed case needs a space at the dash ("Plan - home",
            # not "Follow-up" or "Chest-clear")
            info = _title_info(title)
            cat = None if info.field else info.category
            sep = text[start + len(title): end]
            if cat is None or len(title) > 30 or not (info.caps or " " in sep or "\t" in sep):
                continue
            rest = _LINE_END_RE.match(text, end).group().strip()
            alone = False
        elif kind == "system":
            cat = _title_info(title).category
            rest = _LINE_END_RE.match(text, rest_start).group().strip()
            alone = False
        elif kind == "soap":
            cat = _SOAP_CATEGORY[title]
            rest = _LINE_END_RE.match(text, rest_start).group().strip()
            alone = not rest
        elif kind == "signed":
            cat = "signature"
            rest = ""
            alone = False
        else:
            rest = _LINE_END_RE.match(text, rest_start).group().strip()
            if kind == "inline":
                rest = rest.lstrip(", ")
            if kind == "alone,":
                # a letter's closing ("Yours sincerely,"), nothing else ends with a comma
                cat = _title_info(title).category
                if cat != "signature" or not title[0].isupper():
                    continue
            else:
                cat = _classify(text, kind, title, start, rest)
            alone = not rest
        if cat is None:
            continue
        blank = False
        if cat == UNKNOWN_CATEGORY:  # only unknown headers need it (see _child)
            ls = start
            while ls > 0 and text[ls - 1] in " \t":
                ls -= 1
            blank = ls == 0 or bool(_BLANK_BEFORE_RE.search(text, max(0, ls - 40), ls))
        headers.append(Header(start, end, title, None if cat == SUB else cat, alone,
                              _title_info(title).caps, blank))
        last_end = end
    return headers


# --------------------------------------------------------------------------- the hierarchy
def _contextual(h: Header, cat: str, is_report: bool, last_top: str | None) -> str:
    """Categories whose meaning depends on the note (see :data:`.lexicon.REPORT_CATEGORIES`)."""
    key = _title_info(h.title).key
    if key in _CONTEXT_DEFAULT:
        # "Diet:", "Activity:": discharge instructions among discharge sections, else a nursing
        # or nutrition item
        return "discharge_instructions" if last_top in _DISCHARGE_CONTEXT else _CONTEXT_DEFAULT[key]
    if is_report:
        return cat
    if key in ("comment", "comments"):
        return UNKNOWN_CATEGORY
    if cat == "impression":
        # a clinician's note: "Impression" is the assessment, "Final diagnoses" the diagnosis list
        return "discharge_diagnosis" if "diagnos" in key else "assessment"
    if key == "history":
        return "history_of_present_illness"
    return cat


def _child(h: Header, cat: str | None, family: str, top: Header | None,
           top_cat: str) -> str | None:
    """Sub-section category of header ``h`` inside a container of ``family``, or None when it
    starts a new top-level section."""
    info = _title_info(h.title)
    key = info.key
    fam = "body" if family == "objective" else family
    lex = SUBSECTION_LEXICON.get("results" if fam == "results_all" else fam)
    if lex is not None:
        sub = lex.get(key)
        if sub is not None and not (fam == "results" and key in _GENERIC_RESULTS):
            if sub == "vital_signs" and top_cat == "review_of_systems":
                return None  # vitals after a review of systems start the examination
            return sub
    if cat is None:  # a sub-heading of another kind of container
        return None
    if cat == UNKNOWN_CATEGORY:
        g = info.guess
        if g is not None:
            if fam in ("body", "problems", "findings") and g in SYSTEM_SUBCATEGORY:
                return SYSTEM_SUBCATEGORY[g]
            if fam == "generic" and g == top_cat:
                return UNKNOWN_CATEGORY
            return None
        if (top is not None and h.alone and h.blank_before and h.caps and top.caps
                and top.alone):
            return None  # styled like the container's own header: a sibling section
        return UNKNOWN_CATEGORY
    if fam == "body":
        if cat in SYSTEM_SUBCATEGORY:
            if cat == "vital_signs" and top_cat == "review_of_systems":
                return None
            return SYSTEM_SUBCATEGORY[cat]
        if cat == "rehab":
            return UNKNOWN_CATEGORY  # PT exam items: balance, gait, transfers
        if family == "objective" and cat in ("labs_and_studies", "imaging"):
            return cat
        return None
    if fam == "findings":
        return SYSTEM_SUBCATEGORY.get(cat) if cat in SYSTEM_SUBCATEGORY else None
    if fam == "results_all":
        if cat in ("labs_and_studies", "imaging"):
            return cat
        if cat in ("findings", "impression", "cardiovascular"):
            return UNKNOWN_CATEGORY
        return None
    if fam == "problems":
        if cat in ("assessment", "plan"):
            return cat
        if cat in ("action", "response"):
            return UNKNOWN_CATEGORY
        if cat in _PROBLEM_SYSTEM_CATS:
            return SYSTEM_SUBCATEGORY[cat]
        return None
    if fam == "mse" and cat == "psychiatric":
        return UNKNOWN_CATEGORY
    return None


# Problem headings inside an assessment and plan / hospital course.
_PROBLEM_LINE_RE = re.compile(
    r"(?m)^(?P<ind>[ \t]*)(?:(?P<hash>#+)[ \t]*|(?P<num>\(?\d{1,2}[.)])[ \t]+|"
    r"(?P<let>[A-Z][.)])[ \t]+)?(?P<rest>[^\r\n]*)")
_ACTION_WORDS = frozenset("""
start stop hold continue cont check monitor follow recheck increase decrease discuss consider will
plan obtain add resume give repeat trend titrate wean encourage avoid maintain keep place order
consult refer schedule send draw change transfuse replete restart discontinue d/c dc taper switch
transition advance optimize provide counsel educate administer apply arrange begin f/u get perform
pursue reassess recommend review seek treat use appreciate agree await please call return see
reviewed discussed given placed ordered obtained sent recommended started stopped held scheduled
arranged counseled counselled educated instructed explained reassured advised notified called
informed updated completed performed done patient pt we i he she they this no not if per likely
attempt attempted try needs need requires required awaiting await ambulate ambulated turn turned
reposition medicate medicated offer offered assist assisted provide provided answered support
supported reassure encouraged monitoring continuing titrating weaning cont'd d/c'd dc'd
""".split())
_TERMINAL = ".;,?!"


def _problem_title(rest: str) -> tuple[str, int] | None:
    """(title, length of the header text in ``rest``) of a problem line's text, or None."""
    rest = rest.rstrip()
    if not rest or not rest[0].isalpha():
        return None
    k = rest.find(":")
    if 0 < k <= 80:
        title = rest[:k]
        n = k + 1
    else:
        d = rest.find(" - ")
        if 0 < d <= 80:
            title, n = rest[:d], d
        elif rest[-1] not in _TERMINAL:
            title, n = rest, len(rest)
        else:
            e = rest.find(". ")
            title = rest[:e] if e > 0 else rest[:-1]
            n = len(title) + 1
    words = title.split()
    if not 1 <= len(words) <= 12:
        return None
    first = words[0].lower().strip("(,")
    if first in _ACTION_WORDS or any(w.lower().strip(",;") in _ACTION_WORDS for w in words[1:]
                                     if w[-2:].lower() in ("ed", "en", "ng", "'d")):
        return None
    return title.strip(), n


def _problem_headers(text: str, body: int, end: int) -> list[tuple[int, int, str]]:
    """Problem headings (``# CHF:``, ``1. Atrial fibrillation: ...``, ``B. Diabetes mellitus
    type 2`` alone on its line, a problem title alone after a blank line) in
    ``text[body:end]``: ``(start, header_end, title)``."""
    out: list[tuple[int, int, str]] = []
    prev_blank = False
    first = True
    for m in _PROBLEM_LINE_RE.finditer(text, body, end):
        if m.start() == m.end() and m.end() >= end:
            break
        line_start = m.start()
        rest = m.group("rest")
        if first and line_start == body and body > 0 and text[body - 1] not in "\r\n":
            first = False  # the rest of the header's own line
            prev_blank = False
            continue
        first = False
        if not rest.strip():
            prev_blank = True
            continue
        marker = m.group("hash") or m.group("num") or m.group("let")
        start = m.start("hash") if m.group("hash") else (
            m.start("num") if m.group("num") else (m.start("let") if m.group("let")
                                                   else m.start("rest")))
        got = None
        if m.group("hash") or m.group("let"):
            got = _problem_title(rest)
            if got is not None and m.group("let") and rest.rstrip()[-1:] in ".;,?!" and ":" not in rest[:got[1]]:
                got = None  # "A. The patient ..." - a lettered sentence, not an outline heading
        elif m.group("num"):
            got = _problem_title(rest)
        elif prev_blank:
            r = rest.rstrip()
            nxt = text.find("\n", m.end(), end)
            if (r and r[0].isupper() and r[-1] not in _TERMINAL + ":" and len(r.split()) <= 6
                    and nxt >= 0 and text[nxt + 1:nxt + 2].strip()):
                got = _problem_title(r)
        prev_blank = False
        if got is None:
            continue
        title, n = got
        r0 = m.start("rest")
        out.append((start, r0 + n, title))
        _ = marker
    return out


_SUB_END_RE = re.compile(
    r"(?im)(?:^|(?<=[.;] ))[ \t]*(?:all (?:other|remaining)\b|all others\b|remainder of\b|rest of (?:the )?"
    r"(?:ros|review|exam|systems)\b|(?:ros|review of systems) (?:otherwise|is otherwise)\b|"
    r"otherwise (?:negative|normal|unremarkable)\b|other systems\b)")


_DOC_WORDS = frozenset("note report summary consultation consult evaluation letter record "
                       "h&p assessment".split())


def _is_document_title(text: str, h: Header) -> bool:
    """The note's first line, alone, names the document: an unknown title
    ("CARDIOLOGY CONSULT NOTE:") or a known one that ends in a document word ("OPERATIVE NOTE",
    "DISCHARGE SUMMARY") - not a container or a report status ("FINAL REPORT")."""
    if not h.alone or _NEXT_ASSESSMENT_RE.match(text, h.end):
        return False
    if h.category == UNKNOWN_CATEGORY:
        return True
    words = _title_info(h.title).key.split()
    return (h.category is not None and h.category not in CONTAINER_FAMILY
            and h.category != "final_report" and len(words) >= 2 and words[-1] in _DOC_WORDS)


def build_tree(text: str, headers: list[Header]) -> tuple[list[Section], list[Section]]:
    """Top-level sections (a preamble for text before the first header, then one per
    top-level header; they tile the note) and sub-sections (inside container sections).

    Spans are trimmed of surrounding whitespace and never overlap within a level.
    """
    first = _NONSPACE_RE.search(text)
    if first is None:
        return [], []
    is_report = any(h.category in REPORT_CATEGORIES for h in headers)
    # (start, header or None, category, title) of the top-level sections, and of the subs
    tops: list[tuple[int, Header | None, str]] = []
    subs: list[tuple[int, Header, str, int]] = []  # (start, header, sub category, top position)
    top_h: Header | None = None
    top_cat: str | None = None
    if headers and headers[0].start == first.start() and _is_document_title(text, headers[0]):
        headers = headers[1:]
    for h in headers:
        cat = h.category
        if cat is not None and cat != UNKNOWN_CATEGORY:
            cat = _contextual(h, cat, is_report, top_cat)
        family = CONTAINER_FAMILY.get(top_cat) if top_cat is not None else None
        if family is not None:
            sub = _child(h, cat, family, top_h, top_cat)
            if sub is not None:
                subs.append((h.start, h, sub, len(tops) - 1))
                continue
        if cat is None:
            continue  # a sub-heading outside any container that takes it
        if top_cat == "signature" and cat == "signature":
            continue  # "Dictated by:" under "Electronically signed by": one signature block
        if cat == UNKNOWN_CATEGORY:
            # "Clinical Assessment", "Respiratory Care": a known header inside the title.
            cat = _title_info(h.title).guess or UNKNOWN_CATEGORY
            if cat != UNKNOWN_CATEGORY:
                cat = _contextual(h, cat, is_report, top_cat)
        if not tops and h.start > first.start():
            tops.append((first.start(), None, PREAMBLE_CATEGORY))
        tops.append((h.start, h, cat))
        top_h, top_cat = h, cat
    if not tops:
        tops.append((first.start(), None, PREAMBLE_CATEGORY))
    # spans of the top-level sections
    top_secs: list[Section] = []
    n_top = len(tops)
    for i, (start, h, cat) in enumerate(tops):
        stop = tops[i + 1][0] if i + 1 < n_top else len(text)
        end = start + len(text[start:stop].rstrip())
        if h is None:
            top_secs.append(Section(i, None, cat, start, end))
        else:
            top_secs.append(Section(i, h.title, cat, start, end, h.end))
    # sub-sections: headers found above, plus problem headings in problem-oriented containers
    raw: list[tuple[int, int, str, str, int]] = [  # (start, header_end, title, cat, top)
        (start, h.end, h.title, sub, ti) for start, h, sub, ti in subs]
    for sec in top_secs:
        if sec.category in _PROBLEM_CONTAINERS and sec.header_end is not None:
            probs = _problem_headers(text, sec.header_end, sec.end)
            if probs:
                spans = [(a, b) for a, b, _t in probs]
                raw = [r for r in raw if not (r[4] == sec.index and any(
                    a <= r[0] < b or r[0] <= a < r[1] for a, b in spans))]
                raw.extend((a, b, t, "problem", sec.index) for a, b, t in probs)
    if not raw:
        return top_secs, []
    raw.sort()
    sub_secs: list[Section] = []
    for k, (start, h_end, title, cat, ti) in enumerate(raw):
        parent = top_secs[ti]
        stop = parent.end
        if k + 1 < len(raw) and raw[k + 1][4] == ti:
            stop = min(stop, raw[k + 1][0])
        if CONTAINER_FAMILY.get(parent.category) in ("body", "objective", "mse"):
            m = _SUB_END_RE.search(text, h_end, stop)
            if m is not None:
                stop = m.start() + (len(m.group()) - len(m.group().lstrip()))
        end = start + len(text[start:stop].rstrip())
        if end <= start:
            continue
        sub_secs.append(Section(len(sub_secs), title, cat, start, end, min(h_end, end), ti))
    return top_secs, sub_secs


def build_sections(text: str, headers: list[Header]) -> list[Section]:
    """Top-level sections from headers (see :func:`build_tree`)."""
    return build_tree(text, headers)[0]


def split_sections(text: str) -> list[Section]:
    """Top-level sections of ``text`` (empty list for empty/whitespace-only text)."""
    if not text or text.isspace():
        return []
    return build_tree(text, find_headers(text))[0]


def split_sections_tree(text: str) -> tuple[list[Section], list[Section]]:
    """``(top-level sections, sub-sections)`` of ``text`` (both empty for blank text)."""
    if not text or text.isspace():
        return [], []
    return build_tree(text, find_headers(text))
