"""Rule-based sentence boundaries for clinical text.

One ``re.finditer`` over the note yields every *candidate* boundary (line breaks, ``.!?`` at the
end of a token, MTSamples' ``.,`` line-break residue); a few cheap checks per candidate decide.
A boundary is recorded as a *cut*: the index of the first non-space character of the next
sentence. Sentences are the spans between consecutive cuts with trailing whitespace trimmed, so
every non-space character belongs to exactly one sentence by construction (see :func:`spans`).

Rules (each has a unit test in ``tests/test_segment_rules.py``):

* never inside a de-identification bracket ``[**...**]``;
* ``.`` is not a boundary after an abbreviation that precedes something (``Dr.``, ``approx.``,
  ``e.g.``, ``vs.``), after a middle initial (``John A. Smith``) or after a list number
  (``1. Aspirin``); after an abbreviation that can end a sentence (``etc.``, ``a.m.``, ``t.i.d.``,
  ``mg.``) only before a capitalised word; decimals (``2.5``) never match (no space after ``.``);
* ``. `` + lowercase splits only after a real word (nursing notes are often all lower case);
* ``?`` standing alone (``r/o ? PNA``) is MIMIC's "questionable", not a question mark;
* a line break splits unless the text visibly wraps: the line ends with a comma, a hyphen or a
  function word (``the``, ``with``, ``of``), or a long line (>= ``WRAP_MIN`` characters) without
  final punctuation runs into a lowercase (or ALL-CAPS code) word;
* list items at line start (``1.``, ``2)``, ``-``, ``*``, ``#``) always start a sentence;
* blank lines always split; semicolons never do.
"""
from __future__ import annotations

import bisect
import re
from functools import lru_cache

from .lexicon import (
    ABBREVIATIONS,
    BEFORE_NUMBER_ABBREVIATIONS,
    CONTINUATION_WORDS,
    FINAL_ABBREVIATIONS,
    LETTER_LABEL_WORDS,
    SPECIES,
    NO_BREAK_ABBREVIATIONS,
    TITLE_ABBREVIATIONS,
    UNIT_ABBREVIATIONS,
)

WRAP_MIN = 40  # a line at least this long that ends mid-clause is taken to wrap
WRAP_CAPS_MIN = 60  # ... and at least this long to wrap into an upper-case word

# Candidates: line breaks and runs of ".!?" (one C-level scan; the rest is cheap checks).
_TAIL = 16
_CLOSERS_STR = "\"'\u201d\u2019)]"
# Starts with a single character class so that the C scanner skips ahead quickly; decimals
# ("2.5") and "e.g" inner dots never match (the punctuation run must end before whitespace).
_SCAN_RE = re.compile(
    r"[\r\n.!?](?:(?<=\r)\n?|(?<=\n)"
    r"|(?<=[.!?])[.!?]*[\"'\u201d\u2019)\]]*(?=\s|\Z)"
    r"|(?<=[.!?]),(?=[A-Z0-9\[])"
    r"|(?<=[a-z0-9%)][.!?])(?=[A-Z]))"  # no space after the punctuation: "pain.Denies", "better?Yes"
)
# Inline "N)" enumeration items: "Plan: 1) start lisinopril 2) recheck BMP" (not "(2)").
_PAREN_RE = re.compile(r"\)[ \t]+(?=\S)")  # literal-led: fast; the digits are checked in Python
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "vi": 6, "vii": 7, "viii": 8, "ix": 9,
          "x": 10, "xi": 11, "xii": 12}
_ROMAN_BY_N = {n: r for r, n in _ROMAN.items()}
# A time at the start of a sentence ("At 3 p.m. Dr. Chan was paged"): no boundary after it.
_FRONTED_RE = re.compile(r"(?:at|on|by|around|about|approximately|approx\.|before|after|since|"
                         r"until|from|between|shortly after|just before)\b", re.I)
_TIMES = frozenset(("a.m", "p.m", "am", "pm"))
_INITIAL_NEXT_RE = re.compile(r"[A-Z]\.(?=[ \t]|[A-Z])")  # the next token is an initial too
_INITIALS_RE = re.compile(r"(?:[A-Z]\.){1,3}[A-Z]")
_NAME_WORD_RE = re.compile(r"[A-Z][a-z'\-]+\b")
#: words after which "X." is a person's initial ("seen by J. K. Lee", "cc: A. Smith")
_NAME_CONTEXT = frozenset("by with per cc dr drs mr mrs ms prof attending resident fellow "
                          "physician surgeon nurse doctor".split())
#: words that continue a sentence after a closing quote or bracket ('"..." he said')
_CONTINUES = frozenset("""and or but nor which who whom whose that as he she they we
said says stated states reported reports replied replies added adding asked asks explained noted
according so because while when although though
""".split())
#: capitalised words that start sentences, not names ("per H.O. Pt is ...")
_NOT_NAMES = frozenset("""Pt Patient The He She They We It Will Plan No Continue This There Family
Wife Husband Daughter Son Then Also On At In Per See Please Denies Reports Remains Currently
""".split())
_WORD_AFTER_RE = re.compile(r"[a-z]+")
_SIG_RE = re.compile(r"\bsig\s*:", re.I)
_NOT_SIG_CONT_RE = re.compile(r"(?:disp|refills?|qty|quantity|dispense)\b", re.I)

_BRACKET_RE = re.compile(r"\[\*\*[^\n\r]{0,300}?\*\*\]")
_NONSPACE_RE = re.compile(r"\S")
_LIST_ITEM_RE = re.compile(r"(?:\d{1,3}[.)](?!\d)|\(?[A-Za-z0-9]\)|[-*\u2022\u00b7+>~=](?=\s)|#)")
_WORD_RE = re.compile(r"[a-z]+")
_CAPS_WORD_RE = re.compile(r"[A-Z][A-Z0-9]+\b")
_TITLE_WORD_RE = re.compile(r"[A-Z][a-z]+[ \t]+[A-Za-z(\[0-9]")  # "Resident for", "Sustained Release"
_LEADING_PUNCT = "([{\"'\u201c\u2018+-~*"


def _is_list_context(text: str, tok_start: int) -> bool:
    """``N.`` at ``tok_start`` is a list marker: at line start or after ``: ; , .``."""
    j = tok_start - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    return j < 0 or text[j] in "\r\n:;,.)"


def _inline_item(text: str, tok_start: int, n: int, sep: str = ". ",
                 roman: bool = False) -> bool:
    """``n.`` continues an inline enumeration ``1. X 2. Y`` (``i. X ii. Y``, ``1) X 2) Y``)
    begun earlier on the same line - unless it is a run-on list inside one sentence
    (``risks: 1. bleeding, 2. infection``: a comma, "and" or "or" right before it)."""
    if n < 2:
        return False
    lo = max(0, tok_start - 300)  # bounded look-back keeps long notes linear
    ls = max(text.rfind("\n", lo, tok_start), text.rfind("\r", lo, tok_start), lo - 1) + 1
    prev = (_ROMAN_BY_N.get(n - 1, "") if roman else str(n - 1)) + sep
    k = text.rfind(prev, ls, tok_start)
    if k < 0 or (k > 0 and (text[k - 1].isalnum() or text[k - 1] == ".")):
        return False
    j = tok_start - 1
    while j >= ls and text[j] in " \t":
        j -= 1
    if j >= ls and text[j] == ",":
        return False
    w = text[max(ls, j - 3): j + 1].lower()
    return not (w.endswith(" and") or w.endswith(" or") or w in ("and", "or"))


def _at_line_start(text: str, tok_start: int) -> bool:
    """Only spaces (or MTSamples' ".," line-break residue) between the line start and here."""
    j = tok_start - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    return j < 0 or text[j] in "\r\n" or (text[j] == "," and j > 0 and text[j - 1] == ".")


def _prev_word(text: str, tok_start: int) -> str:
    """The whitespace-delimited word before position ``tok_start`` on its line ("" if none)."""
    j = tok_start - 1
    while j >= 0 and text[j] in " \t":
        j -= 1
    k = j
    while k >= 0 and not text[k].isspace():
        k -= 1
    return text[k + 1: j + 1]


def _lowercase_style(text: str, pos: int) -> bool:
    """The sentence starting at ``pos`` starts with a lower-case letter (all-lower-case notes)."""
    for c in text[pos:pos + 6]:
        if c.isalpha():
            return c.islower()
    return False


def _name_after(text: str, cut: int) -> bool:
    """A capitalised name-like word starts at ``cut`` (not "Pt", "The", "Will" ...)."""
    m = _NAME_WORD_RE.match(text, cut)
    return m is not None and m.group() not in _NOT_NAMES


def _fronted_time(text: str, last_cut: int, tok_start: int) -> bool:
    """The sentence so far is a short fronted time phrase: "At 3 p.m." / "On [**5-2**] at 7 a.m."."""
    if last_cut < 0 or tok_start - last_cut > 60:
        return False
    return (_FRONTED_RE.match(text, last_cut) is not None
            and len(text[last_cut:tok_start].split()) <= 6)


def _period_decision(text: str, tok: str, tok_start: int, nxt: str, cut: int,
                     last_cut: int = -1) -> int | None:
    """Cut position for a single ``.`` ending token ``tok`` (or None): the usual cut, or the
    token's own start for an inline enumeration item (``... 2. COPD`` cuts before ``2``)."""
    core = tok.lstrip(_LEADING_PUNCT)
    shorthand = after_slash = False
    if "/" in core[1:-1] and not core[-1].isdigit():
        tail = core.rsplit("/", 1)[1]
        # "w/Dr. [**Name**]", "pt/Dr.": the word after the slash decides; but a one-letter
        # tail is shorthand, not a word ("n/v. No SOB", "h/a. Denies", "decreased c/o. Increased
        # u/o"): the token as a whole, which a period after it ends before a capital.
        if len(tail.rstrip(".")) > 1:
            core, after_slash = tail, True
        else:
            shorthand = True
    low = core.lower()
    # A rate or concentration ("RR 24/min. strong cough", "q 6/hr. receiving", "mg/dl. pt"):
    # a unit after a slash closes its measurement, so "." + a lower-case word ends the sentence
    # (after a bare unit the clause may go on: "30 min. after").
    rate = after_slash and low in UNIT_ABBREVIATIONS and low not in ("etc", "al", "vs")
    if low in NO_BREAK_ABBREVIATIONS and not shorthand:
        return None
    if nxt.isdigit() and low in BEFORE_NUMBER_ABBREVIATIONS:
        return None  # "Fig. 2", "vol. 3", "pg. 4", "p. 12"
    if low in _ROMAN:
        if core.islower():
            # roman list markers "i." "ii." "iii." (not "iv."/"x." mid-line: intravenous, times)
            if _is_list_context(text, tok_start) and (
                    low in ("i", "ii", "iii") or _at_line_start(text, tok_start)):
                return None
            if _inline_item(text, tok_start, _ROMAN[low], roman=True):
                return tok_start
        elif len(core) >= 2 and core.isupper() and _at_line_start(text, tok_start):
            return None  # outline "II. Past history", MTSamples ".,III. Abrasion"
    if low in TITLE_ABBREVIATIONS:
        # "Dr. [**Name**]", "Mrs. Smith", "St. Louis", "dr. jones" - but not "450 ms. No",
        # "HR 100s ST. Lactate".
        if nxt == "[" or (core[0].isupper() and core[1:].islower()) or (
                core.islower() and low not in ("ms", "st", "ft", "gen", "col", "rep", "lt")):
            return None
    if low == "no":  # "No. 5" vs a one-word answer "No."
        return None if nxt.isdigit() else (cut if nxt.isupper() else None)
    if core.isdigit() and len(core) <= 3:
        if _is_list_context(text, tok_start):
            # "1. Aspirin": the marker starts its item. MTSamples "PLAN:,  1.  Amoxicillin": the
            # ",", was a line break, so the item starts a sentence there.
            j = tok_start - 1
            while j >= 0 and text[j] in " \t":
                j -= 1
            if j > 0 and text[j] == "," and text[j - 1] in ":.":
                return tok_start
            return None
        if _inline_item(text, tok_start, int(core)):
            return tok_start
        return cut if (nxt.isupper() or nxt.isdigit() or nxt == "[") else None
    if len(core) == 1 and core.isalpha():
        if core.isupper():
            # Middle initial "John A. Smith" unless a label word precedes ("vitamin D. He").
            j = tok_start - 1
            while j >= 0 and text[j] in " \t":
                j -= 1
            if j >= 0 and text[j] in "\r\n" and core == tok:
                return None  # an outline heading at line start: "B. Diabetes mellitus type 2"
            if _INITIAL_NEXT_RE.match(text, cut) or (
                    _prev_word(text, tok_start).lower().strip(".,:;(") in _NAME_CONTEXT
                    and _name_after(text, cut)):
                return None  # "seen by J. K. Lee", "cc: A. Smith"
            k = j
            while k >= 0 and not text[k].isspace():
                k -= 1
            prev_word = text[k + 1: j + 1]
            if prev_word.lower().strip(".,;:(") not in LETTER_LABEL_WORDS and (
                    prev_word[:1].isupper() or prev_word.endswith(("**]", ".")) or j < 0):
                return None
            # A label letter ends the sentence before anything but punctuation ("weaker than
            # R. dilantin level ...", "vitamin D. He ...") - but not a genus ("E. coli").
            if nxt.islower():
                w = _WORD_RE.match(text, cut)
                if w is not None and w.group() in SPECIES:
                    return None
            return cut if nxt.isalnum() else None
        if _is_list_context(text, tok_start):
            return None  # "a. first item"
    dotted = "." in low and not any(c.isdigit() for c in low)
    if nxt.islower() and (low in FINAL_ABBREVIATIONS or rate):
        return cut  # "+bs. tolerating", "kcl po. pulses" in lowercase nursing prose
    if low in ABBREVIATIONS or dotted:
        # "t.i.d.", "a.m.", "etc.", "mg.", "U.S.": a sentence end only before a capitalised word
        # or an inline list item - not before a lone letter ("vit. D", "b.i.d. H. pylori" is
        # handled by the initial rule on the next candidate).
        if nxt.isupper():
            after = text[cut + 1: cut + 2]
            if nxt not in "AI" and (not after or not after.isalpha()) and after != ".":
                return None
            if low in _TIMES and _fronted_time(text, last_cut, tok_start):
                return None  # "At 3 p.m. Dr. Chan was paged."
            if dotted and low not in ABBREVIATIONS and _INITIALS_RE.fullmatch(core):
                # "Dr. J.K. Lee", "by J.R. Smith": dotted initials before a name (not "M.D.")
                pw = _prev_word(text, tok_start)
                if (pw.lower().strip(".:;(") in _NAME_CONTEXT or (
                        pw[:1].isupper() and pw[-1:] != ",")) and _name_after(text, cut):
                    return None
            return cut
        if nxt.isdigit():
            m = _LIST_ITEM_RE.match(text, cut)
            return cut if (m and text[m.end() - 1] in ".)") else None
        return None
    if nxt.islower():
        # All-lowercase nursing prose: "afebrile. lungs clear." - split after a real word.
        letters = sum(c.isalpha() for c in core)
        if letters >= 3 or (shorthand and low not in NO_BREAK_ABBREVIATIONS) or (
                core and (core[-1].isdigit() or core[-1] in "%)")):
            return cut
        return None
    if nxt.isalnum() or nxt in "[(\"'#-*?\u201c\u2018":
        return cut
    return None


def _pc_decision(text: str, pos: int, nxt: str) -> bool:
    """MTSamples ``word.,Next``: a boundary unless an abbreviation precedes (``p.r.n.,Lasix``)."""
    if nxt.isdigit() or nxt == "[":
        return True
    j = pos
    while j > 0 and not text[j - 1].isspace() and text[j - 1] != ",":
        j -= 1
    low = text[j:pos].lstrip(_LEADING_PUNCT).lower()
    return not (low in ABBREVIATIONS or low in NO_BREAK_ABBREVIATIONS or "." in low)


def _newline_splits(text: str, ls: int, pos: int, nl_end: int, cut: int) -> bool:
    """Does the line break at ``text[pos:nl_end]`` (ending the line that starts at ``ls``) end a
    sentence, the next one starting at ``cut``?"""
    # Blank line (only spaces between two line breaks) always splits.
    if text.find("\n", nl_end, cut) >= 0 or text.find("\r", nl_end, cut) >= 0:
        return True
    if _LIST_ITEM_RE.match(text, cut):
        return True
    prev = text[ls:pos].rstrip()
    if not prev or prev.isspace():
        return True
    prev = prev.lstrip()
    last = prev[-1]
    nxt = text[cut]
    if last in ",=&+/(":
        return False
    if nxt == "(" and last not in ".!?:;" and text[cut + 1: cut + 2].isalpha():
        # a parenthesis continues the line above: "1 tab PO TID" / "(three times a day) ..."
        return False
    if (last not in ".!?:;" and (nxt.isalnum() or nxt == "[") and "ig" in prev and _SIG_RE.search(prev)
            and not _NOT_SIG_CONT_RE.match(text, cut)):
        return False  # a prescription ("... Sig: One (1) Tablet PO Q12H") wraps onto its route
    if last == "-" and len(prev) > 1 and prev[-2].isalpha() and nxt.isalpha():
        return False
    if last == ".":
        k = prev.rfind(" ")
        word = prev[k + 1:-1].lstrip(_LEADING_PUNCT).lower()
        if word in NO_BREAK_ABBREVIATIONS:
            return False
        # "... for approx. 30 sec.\naccording to ..." - an abbreviation, and the clause goes on
        return not (nxt.islower() and len(prev) >= WRAP_MIN
                    and ("." in word or (word in UNIT_ABBREVIATIONS and word not in ("am", "pm"))))
    if not (last.isalnum() or last in ")]%'\""):
        return True  # ends with : ; ? ! etc.
    k = max(prev.rfind(" "), prev.rfind("\t"))
    word = prev[k + 1:].lower()
    if word in CONTINUATION_WORDS and (nxt.isalnum() or nxt in "[("):
        return False
    n = len(prev)
    if n >= WRAP_MIN and (nxt.islower() or (last.islower() and (nxt.isdigit() or nxt == "["))):
        return False
    if nxt.islower() and last.isalnum() and n >= 16:
        # narrow hard-wrapped narrative: lines cut near one short width
        width = _narrow_wrap_width(text)
        if width and len(text[ls:pos].rstrip()) >= width - NARROW_WRAP_SLACK:
            return False
    if n >= WRAP_CAPS_MIN and _CAPS_WORD_RE.match(text, cut):
        return False
    if n >= WRAP_CAPS_MIN and nxt.isupper() and _TITLE_WORD_RE.match(text, cut):
        # A hard-wrapped note (discharge summaries, physician notes: lines cut at a fixed
        # width) wraps onto capitalised words too ("...present with the ICU\nResident for").
        raw = len(text[ls:pos].rstrip())
        width = _hard_wrap_width(text)
        if width and raw >= width - WRAP_WIDTH_SLACK and ":" not in text[cut:cut + 30]:
            return False
    return True


WRAP_WIDTH_SLACK = 12  # a line within this many characters of the wrap width was wrapped
NARROW_WRAP_SLACK = 10


@lru_cache(maxsize=8)
def _narrow_wrap_width(text: str) -> int:
    """The width of a note hard-wrapped at a short width (20-60 characters), or 0.

    Most lines of 12+ characters end within a few characters of one width; notes typed with
    free line lengths (nursing entries, lists) do not cluster like that.
    """
    lens = sorted(n for n in map(len, (ln.rstrip() for ln in text.splitlines())) if n >= 12)
    if len(lens) < 6:
        return 0
    width = lens[int(0.9 * (len(lens) - 1))]
    if not 20 <= width <= 60:
        return 0
    near = sum(1 for n in lens if width - NARROW_WRAP_SLACK <= n <= width + 3)
    return width if near >= 0.6 * len(lens) else 0


@lru_cache(maxsize=8)
def _hard_wrap_width(text: str) -> int:
    """The width the note was hard-wrapped at, or 0 when it was not (free-length lines).

    Hard-wrapped text has many long lines ending within a few characters of one width; text
    typed with free line lengths (nursing entries, one paragraph per line) does not.
    """
    lens = sorted(n for n in map(len, (ln.rstrip() for ln in text.splitlines())) if n >= 50)
    if len(lens) < 3:
        return 0
    width = lens[int(0.9 * (len(lens) - 1))]
    if width > 120:
        return 0
    near = sum(1 for n in lens if width - WRAP_WIDTH_SLACK <= n <= width + 5)
    return width if near >= 3 and near >= 0.4 * len(lens) else 0


def sentence_cuts(text: str, start: int = 0, end: int | None = None) -> list[int]:
    """Start offsets of the sentences of ``text[start:end]`` (sorted, unique, at non-space chars)."""
    if end is None:
        end = len(text)
    first = _NONSPACE_RE.search(text, start, end)
    if first is None:
        return []
    cuts = [first.start()]
    brackets: list[tuple[int, int]] = []
    if "[**" in text:
        brackets = [m.span() for m in _BRACKET_RE.finditer(text, start, end)]
    b_starts = [b[0] for b in brackets]
    nonspace = _NONSPACE_RE.search
    nl_cut = -1  # next non-space after the last line break seen
    line_start = start
    for m in _SCAN_RE.finditer(text, start, end):
        s0 = m.start()
        mend = m.end()
        ch = text[s0]
        if ch == "\n" or ch == "\r":
            ls, line_start = line_start, mend
            if mend <= nl_cut:
                continue  # same run of line breaks: the first one decided (keeps this linear)
            nm = nonspace(text, mend, end)
            if nm is None:
                break
            nl_cut = nm.start()
            if _newline_splits(text, ls, s0, mend, nl_cut):
                cuts.append(nl_cut)
            continue
        if brackets and _inside(brackets, b_starts, s0):
            continue
        if text[mend - 1] == ",":  # MTSamples ".,Next" (the regex checked the next character)
            if _pc_decision(text, s0, text[mend]):
                cuts.append(mend)
            continue
        if mend < end and not text[mend].isspace():
            # no space after the punctuation ("pain.Denies"): the regex saw a capital next
            if _glued_decision(text, s0, mend, start):
                cuts.append(mend)
            continue
        nm = nonspace(text, mend, end)
        if nm is None:
            break
        cut = nm.start()
        g = m.group()
        p = g.rstrip(_CLOSERS_STR)
        closed = len(p) < len(g)
        # The token before the punctuation; tokens longer than _TAIL are never abbreviations, so
        # a truncated one is as good (one C-level rsplit instead of a backward scan).
        tail = text[max(start, s0 - _TAIL):s0]
        if not tail or tail[-1].isspace():
            tok = ""
        else:
            tok = tail.rsplit(None, 1)[-1]
        ts = s0 - len(tok)
        k = tok.rfind(".,")
        if k >= 0:  # glued MTSamples "...obesity.,2." - the token starts after ".,"
            ts += k + 2
            tok = tok[k + 2:]
        nxt = text[cut]
        if closed and nxt.islower():
            # '"... no more pain." he reported': a closing quote or bracket, then lower case -
            # unless the note writes its sentences in lower case ("... (resolved.) iv heparin")
            w = _WORD_AFTER_RE.match(text, cut)
            if (w is not None and w.group() in _CONTINUES) or not _lowercase_style(text, cuts[-1]):
                continue
        if p == ".":
            if closed and ")" in g and tok[:1] == "(" and (
                    "." in tok or tok[1:].lower() in ABBREVIATIONS):
                continue  # "(E.C.) Sig:", "(approx.) 3" - an abbreviation closing a parenthesis
            c = _period_decision(text, tok, ts, nxt, cut, cuts[-1])
            if c is not None:
                cuts.append(c)
            continue
        # "?", "!", "...", "?!": a bare "?" is MIMIC's "questionable" ("r/o ? PNA").
        if not tok and "." not in p:
            continue
        if nxt.isupper() or nxt.isdigit() or nxt in "[(\"'#-\u201c":
            cuts.append(cut)
    if "2)" in text:  # an inline "N)" item continues "1) ... 2) ..." (n >= 2)
        for m in _PAREN_RE.finditer(text, start, end):
            p = m.start()
            if not text[p - 1: p].isdigit():
                continue
            q = p - 1
            if text[q - 1: q].isdigit():
                q -= 1
            if q > 0 and (text[q - 1].isalnum() or text[q - 1] in "(._"):
                continue
            n = int(text[q:p])
            if n >= 2 and _inline_item(text, q, n, ") ") and not (
                    brackets and _inside(brackets, b_starts, q)):
                cuts.append(q)
    return cuts


def _glued_decision(text: str, s0: int, mend: int, start: int) -> bool:
    """``word.Next`` / ``word?Next`` with no space: a boundary unless the token before is an
    abbreviation or has dots itself (``p.o.Lasix``, ``Dr.Smith``, ``www.Site``) or the next
    token is an initial or dotted (``Ph.D.``)."""
    j = s0
    lo = max(start, s0 - _TAIL)
    while j > lo and not text[j - 1].isspace() and text[j - 1] not in "([{\"'":
        j -= 1
    tok = text[j:s0]
    if len(tok) < 2 or any(c in tok for c in ".@/:_\\=") or not tok[-1].isalnum() and tok[-1] not in "%)":
        return False
    low = tok.lower()
    if (low in ABBREVIATIONS or low in NO_BREAK_ABBREVIATIONS or low in TITLE_ABBREVIATIONS
            or sum(c.isalpha() for c in tok) < 1):
        return False
    k = mend
    stop = min(len(text), mend + 40)
    while k < stop and (text[k].isalnum() or text[k] in "'-"):
        k += 1
    if k < len(text) and text[k] == "." and (k - mend <= 2 or k + 1 < len(text) and text[k + 1].isalnum()):
        return False  # "Ph.D.", "Fig.A.1", "site.Com.au"
    return True


def _inside(brackets: list[tuple[int, int]], b_starts: list[int], pos: int) -> bool:
    i = bisect.bisect_right(b_starts, pos) - 1
    return i >= 0 and brackets[i][1] > pos


def spans(text: str, cuts: list[int], end: int | None = None) -> list[tuple[int, int]]:
    """Partition ``text[cuts[0]:end]`` at ``cuts`` into whitespace-trimmed, non-empty spans."""
    if end is None:
        end = len(text)
    cuts = sorted(set(cuts))
    cuts.append(end)
    out: list[tuple[int, int]] = []
    append = out.append
    for i in range(len(cuts) - 1):
        a = cuts[i]
        b = cuts[i + 1]
        if a >= b:
            continue
        if not text[a].isspace():  # cuts are at non-space characters (the usual case)
            append((a, a + len(text[a:b].rstrip())))
            continue
        seg = text[a:b]
        stripped = seg.strip()
        if not stripped:
            continue
        lead = len(seg) - len(seg.lstrip())
        append((a + lead, a + lead + len(stripped)))
    return out
