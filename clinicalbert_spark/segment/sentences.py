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

from .lexicon import (
    ABBREVIATIONS,
    CONTINUATION_WORDS,
    LETTER_LABEL_WORDS,
    NO_BREAK_ABBREVIATIONS,
)

WRAP_MIN = 40  # a line at least this long that ends mid-clause is taken to wrap
WRAP_CAPS_MIN = 60  # ... and at least this long to wrap into an upper-case word

_CAND_RE = re.compile(
    r"(?P<nl>\r\n|\r|\n)"
    r"|(?<!\S)(?P<tok>\S*?)(?P<p>[.!?]+)(?P<cl>[\"'\u201d\u2019)\]]*)(?=\s|\Z)"
    r"|[.!?],(?=[ \t]*[A-Z0-9\[])"
)
_BRACKET_RE = re.compile(r"\[\*\*[^\n\r]{0,300}?\*\*\]")
_NONSPACE_RE = re.compile(r"\S")
_LIST_ITEM_RE = re.compile(r"(?:\d{1,3}[.)](?!\d)|\(?[A-Za-z0-9]\)|[-*\u2022\u00b7+>~=](?=\s)|#)")
_INT_RE = re.compile(r"\d{1,3}")
_CAPS_WORD_RE = re.compile(r"[A-Z][A-Z0-9]+\b")
_LEADING_PUNCT = "([{\"'\u201c\u2018"


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
    ls = max(text.rfind("\n", 0, tok_start), text.rfind("\r", 0, tok_start)) + 1
    prev = f"{n - 1}. "
    k = text.rfind(prev, ls, tok_start)
    return k >= 0 and (k == 0 or not text[k - 1].isalnum() and text[k - 1] != ".")


def _period_decision(text: str, tok: str, tok_start: int, nxt: str, cut: int) -> int | None:
    """Cut position for a single ``.`` ending token ``tok`` (or None): the usual cut, or the
    token's own start for an inline enumeration item (``... 2. COPD`` cuts before ``2``)."""
    core = tok.lstrip(_LEADING_PUNCT)
    low = core.lower()
    if low in NO_BREAK_ABBREVIATIONS:
        return None
    if low == "no":  # "No. 5" vs a one-word answer "No."
        return None if nxt.isdigit() else (cut if nxt.isupper() else None)
    if core.isdigit() and len(core) <= 3:
        if _is_list_context(text, tok_start):
            return None  # "1. Aspirin": the marker starts its item, which began before it
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
            prev_word = text[k + 1: j + 1].lower().strip(".,;:")
            if prev_word in LETTER_LABEL_WORDS or (prev_word and prev_word.islower()):
                return cut if (nxt.isupper() or nxt.isdigit()) else None
            return None
        if _is_list_context(text, tok_start):
            return None  # "a. first item"
    if low in ABBREVIATIONS or ("." in low and not any(c.isdigit() for c in low)):
        # "t.i.d.", "a.m.", "etc.", "mg.", "U.S.": a sentence end only before a capitalised word
        # or an inline list item.
        if nxt.isupper():
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
    if nxt.isalnum() or nxt in "[(\"'#-*\u201c\u2018":
        return cut
    return None


def _newline_splits(text: str, pos: int, nl_end: int, cut: int) -> bool:
    """Does the line break at ``text[pos:nl_end]`` end a sentence (next sentence at ``cut``)?"""
    # Blank line (only spaces between two line breaks) always splits.
    if text.count("\n", nl_end, cut) or text.count("\r", nl_end, cut):
        return True
    if _LIST_ITEM_RE.match(text, cut):
        return True
    ls = max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1
    prev = text[ls:pos].rstrip()
    if not prev or prev.isspace():
        return True
    prev = prev.lstrip()
    last = prev[-1]
    nxt = text[cut]
    if last == ",":
        return False
    if last == "-" and len(prev) > 1 and prev[-2].isalpha() and nxt.isalpha():
        return False
    if last == ".":
        k = prev.rfind(" ")
        word = prev[k + 1:-1].lstrip(_LEADING_PUNCT).lower()
        return word not in NO_BREAK_ABBREVIATIONS
    if not (last.isalnum() or last in ")%'\""):
        return True  # ends with : ; ? ! etc.
    k = max(prev.rfind(" "), prev.rfind("\t"))
    word = prev[k + 1:].lower()
    if word in CONTINUATION_WORDS and (nxt.isalnum() or nxt in "[("):
        return False
    n = len(prev)
    if nxt.islower() and n >= WRAP_MIN:
        return False
    if n >= WRAP_CAPS_MIN and _CAPS_WORD_RE.match(text, cut):
        return False
    return True


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
    for m in _CAND_RE.finditer(text, start, end):
        mend = m.end()
        nm = nonspace(text, mend, end)
        if nm is None:
            break
        cut = nm.start()
        if m.lastgroup == "nl":
            if _newline_splits(text, m.start(), mend, cut):
                cuts.append(cut)
            continue
        p = m.group("p")
        pos = m.start("p") if p else m.start()
        if brackets:
            i = bisect.bisect_right(b_starts, pos) - 1
            if i >= 0 and brackets[i][1] > pos:
                continue
        nxt = text[cut]
        if p is None:  # MTSamples ".,Next"
            cuts.append(cut)
            continue
        tok = m.group("tok")
        if p == ".":
            if ")" in m.group("cl") and tok[:1] == "(" and ("." in tok or tok[1:].lower() in ABBREVIATIONS):
                continue  # "(E.C.) Sig:", "(approx.) 3" - an abbreviation closing a parenthesis
            c = _period_decision(text, tok, m.start("tok"), nxt, cut)
            if c is not None:
                cuts.append(c)
            continue
        # "?", "!", "...", "?!": a bare "?" is MIMIC's "questionable" ("r/o ? PNA").
        if not tok and "." not in p:
            continue
        if nxt.isupper() or nxt.isdigit() or nxt in "[(\"'#-\u201c":
            cuts.append(cut)
    return cuts


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
