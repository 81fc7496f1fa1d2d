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
    r"|(?<=[.!?]),(?=[A-Z0-9\[]))"
)

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


def _inline_item(text: str, tok_start: int, n: int) -> bool:
    """``n.`` continues an inline enumeration ``1. X 2. Y`` begun earlier on the same line."""
    if n < 2:
        return False
    lo = max(0, tok_start - 300)  # bounded look-back keeps long notes linear
    ls = max(text.rfind("\n", lo, tok_start), text.rfind("\r", lo, tok_start), lo - 1) + 1
    prev = f"{n - 1}. "
    k = text.rfind(prev, ls, tok_start)
    return k >= 0 and (k == 0 or not text[k - 1].isalnum() and text[k - 1] != ".")


def _period_decision(text: str, tok: str, tok_start: int, nxt: str, cut: int) -> int | None:
    """Cut position for a single ``.`` ending token ``tok`` (or None): the usual cut, or the
    token's own start for an inline enumeration item (``... 2. COPD`` cuts before ``2``)."""
    core = tok.lstrip(_LEADING_PUNCT)
    if "/" in core[1:-1] and not core[-1].isdigit():
        core = core.rsplit("/", 1)[1]  # "w/Dr. [**Name**]", "pt/Dr."
    low = core.lower()
    if low in NO_BREAK_ABBREVIATIONS:
        return None
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
            while j >= 0 and text[j] == " ":
                j -= 1
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
    if nxt.islower() and low in FINAL_ABBREVIATIONS:
        return cut  # "+bs. tolerating", "kcl po. pulses" in lowercase nursing prose
    if low in ABBREVIATIONS or dotted:
        # "t.i.d.", "a.m.", "etc.", "mg.", "U.S.": a sentence end only before a capitalised word
        # or an inline list item - not before a lone letter ("vit. D", "b.i.d. H. pylori" is
        # handled by the initial rule on the next candidate).
        if nxt.isupper():
            after = text[cut + 1: cut + 2]
            if nxt not in "AI" and (not after or not after.isalpha()) and after != ".":
                return None
            return cut
        if nxt.isdigit():
            m = _LIST_ITEM_RE.match(text, cut)
            return cut if (m and text[m.end() - 1] in ".)") else None
        return None
    if nxt.islower():
        # All-lowercase nursing prose: "afebrile. lungs clear." - split after a real word.
        letters = sum(c.isalpha() for c in core)
        if letters >= 3 or (core and (core[-1].isdigit() or core[-1] in "%)")):
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
        if p == ".":
            if closed and ")" in g and tok[:1] == "(" and (
                    "." in tok or tok[1:].lower() in ABBREVIATIONS):
                continue  # "(E.C.) Sig:", "(approx.) 3" - an abbreviation closing a parenthesis
            c = _period_decision(text, tok, ts, nxt, cut)
            if c is not None:
                cuts.append(c)
            continue
        # "?", "!", "...", "?!": a bare "?" is MIMIC's "questionable" ("r/o ? PNA").
        if not tok and "." not in p:
            continue
        if nxt.isupper() or nxt.isdigit() or nxt in "[(\"'#-\u201c":
            cuts.append(cut)
    return cuts


def _inside(brackets: list[tuple[int, int]], b_starts: list[int], pos: int) -> bool:
    i = bisect.bisect_right(b_starts, pos) - 1
    return i >= 0 and brackets[i][1] > pos


def spans(text: str, cuts: list[int], end: int | None = None) -> list[tuple[int, int]]:
    """Partition ``text[cuts[0]:end]`` at ``cuts`` into whitespace-trimmed, non-empty spans."""
    if end is None:
        end = len(text)
    cuts = sorted(set(cuts))
    out: list[tuple[int, int]] = []
    n = len(cuts)
    for i, a in enumerate(cuts):
        b = cuts[i + 1] if i + 1 < n else end
        seg = text[a:b]
        stripped = seg.strip()
        if not stripped:
            continue
        lead = len(seg) - len(seg.lstrip())
        out.append((a + lead, a + lead + len(stripped)))
    return out
