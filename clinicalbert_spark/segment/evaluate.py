"""Gold-set loader, offset invariants and segmentation metrics.

Gold notes (``tests/data/gold/*.txt``) are raw notes with inline markup (see
``docs/segmentation.md`` for the annotation guideline):

``@@``             a sentence starts at the next character
``[[category]]``   a top-level section header starts at the next character, with that category
                   (implies a sentence start); ``[[/]]`` marks the end of the header (after its colon)
``[[>category]]``  a sub-section header inside the current top-level section, with its sub-section
                   category (implies a sentence start); closed by ``[[/]]`` like a header
``[[>-]]``         the current sub-section ends: the sentence starting at the next character is
                   back at the container's own level (implies a sentence start)
``{{`` ... ``}}``   a span that must not contain a sentence boundary (abbreviation, decimal, bracket)
``## key: value``  metadata lines at the very top of the file (not part of the note)

The note's first non-space character always starts a sentence, and text before the first header
is in a section of category :data:`~.lexicon.PREAMBLE_CATEGORY`. A sentence's top-level category
is that of the last top-level header at or before its start; its sub-section is the last
sub-section header after that top-level header (None when there is none).

Two splits: ``tests/data/gold`` (development: written while the rules were built, tuned on) and
``tests/data/gold_test`` (test: annotated blind, before the rules it scores were written; scored,
never tuned on).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from .lexicon import PREAMBLE_CATEGORY
from .sentences import spans
from .types import Section, Sentence

_MARK_RE = re.compile(r"@@|\[\[(>?)([a-z_]+)\]\]|\[\[/\]\]|\[\[>-\]\]|\{\{|\}\}")
_NONSPACE_RE = re.compile(r"\S")
_SPACE_RE = re.compile(r"\s+")
_BLANK_LINE_RE = re.compile(r"(?:\r\n|\r(?!\n)|\n)[ \t]*(?:\r\n|\r|\n)")

GOLD_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "gold"
GOLD_TEST_DIR = GOLD_DIR.parent / "gold_test"


@dataclass(frozen=True)
class GoldSection:
    start: int
    header_end: int | None
    category: str
    level: int = 0  # 0: top-level section, 1: sub-section of the enclosing top-level section


@dataclass
class GoldNote:
    name: str
    text: str
    sentences: list[tuple[int, int]]
    sentence_categories: list[str]  # top-level category per sentence
    sections: list[GoldSection]  # headers of both levels, in order
    must_not_split: list[tuple[int, int]]
    meta: dict[str, str] = field(default_factory=dict)
    sentence_subcategories: list[str | None] = field(default_factory=list)


class GoldFormatError(ValueError):
    pass


def parse_gold(marked: str, name: str = "<string>") -> GoldNote:
    """Strip the markup of one gold note; return its raw text and annotations."""
    meta: dict[str, str] = {}
    lines = marked.split("\n")
    k = 0
    while k < len(lines) and lines[k].startswith("## "):
        key, _, value = lines[k][3:].partition(":")
        meta[key.strip()] = value.strip()
        k += 1
    marked = "\n".join(lines[k:])
    out: list[str] = []
    n = 0  # length of raw text so far
    pos = 0
    starts: list[int] = []
    sections: list[GoldSection] = []
    open_header: tuple[int, str, int] | None = None
    mns: list[tuple[int, int]] = []
    mns_open: int | None = None
    sub_ends: list[int] = []
    for m in _MARK_RE.finditer(marked):
        chunk = marked[pos:m.start()]
        out.append(chunk)
        n += len(chunk)
        pos = m.end()
        tag = m.group()
        if tag == "@@":
            starts.append(n)
        elif tag == "[[>-]]":
            sub_ends.append(n)
            starts.append(n)
        elif tag == "[[/]]":
            if open_header is None:
                raise GoldFormatError(f"{name}: [[/]] without a header at raw offset {n}")
            sections.append(GoldSection(open_header[0], n, open_header[1], open_header[2]))
            open_header = None
        elif tag.startswith("[["):
            if open_header is not None:
                raise GoldFormatError(f"{name}: unclosed header before raw offset {n}")
            level = 1 if m.group(1) else 0
            if level and not any(s.level == 0 for s in sections):
                raise GoldFormatError(f"{name}: sub-section header at raw offset {n} before any "
                                      f"top-level header")
            open_header = (n, m.group(2), level)
            starts.append(n)
        elif tag == "{{":
            if mns_open is not None:
                raise GoldFormatError(f"{name}: nested {{{{ at raw offset {n}")
            mns_open = n
        else:
            if mns_open is None:
                raise GoldFormatError(f"{name}: }}}} without {{{{ at raw offset {n}")
            mns.append((mns_open, n))
            mns_open = None
    out.append(marked[pos:])
    text = "".join(out)
    if open_header is not None or mns_open is not None:
        raise GoldFormatError(f"{name}: unclosed markup at end of note")
    for s in starts:
        if s >= len(text) or text[s].isspace():
            raise GoldFormatError(f"{name}: a sentence/header mark at raw offset {s} is not "
                                  f"followed by a non-space character")
    first = _NONSPACE_RE.search(text)
    if first is None:
        raise GoldFormatError(f"{name}: empty note")
    sent_spans = spans(text, [first.start(), *starts])
    for a, b in sent_spans:
        if _BLANK_LINE_RE.search(text, a, b):
            raise GoldFormatError(f"{name}: the sentence at raw offset {a} spans a blank line "
                                  f"(a sentence mark is missing)")
    top = [s for s in sections if s.level == 0]
    top_starts = [s.start for s in top]
    # (start, sub-section category or None): headers of both levels and sub-section ends
    marks = sorted([(s.start, s.category if s.level == 1 else None) for s in sections]
                   + [(e, None) for e in sub_ends])
    mark_starts = [m[0] for m in marks]
    cats: list[str] = []
    subcats: list[str | None] = []
    for a, _b in sent_spans:
        i = bisect.bisect_right(top_starts, a) - 1
        cats.append(top[i].category if i >= 0 else PREAMBLE_CATEGORY)
        j = bisect.bisect_right(mark_starts, a) - 1
        subcats.append(marks[j][1] if j >= 0 else None)
    return GoldNote(name, text, sent_spans, cats, sections, mns, meta, subcats)


def load_gold(directory: str | Path | None = None) -> list[GoldNote]:
    """All gold notes of ``directory`` (default: the development split ``tests/data/gold``),
    sorted by file name. ``load_gold(GOLD_TEST_DIR)`` is the blind test split."""
    d = Path(directory) if directory else GOLD_DIR
    return [parse_gold(p.read_text(encoding="utf-8"), p.name) for p in sorted(d.glob("*.txt"))]


# --------------------------------------------------------------------------- invariants
def check_invariants(text: str, sentences: Sequence[Sentence],
                     sections: Sequence[Section] | None = None,
                     subsections: Sequence[Section] | None = None) -> list[str]:
    """Offset-invariant violations (empty list when all hold). Messages never quote the text.

    With ``subsections`` also: each lies inside its parent section, they are ordered and do not
    overlap, and a sentence carries a sub-section exactly when it lies inside one (its title,
    category and index)."""
    problems: list[str] = []
    prev_end = 0
    covered = 0
    for i, s in enumerate(sentences):
        if s.sentence_index != i:
            problems.append(f"sentence {i}: sentence_index {s.sentence_index}")
        if not (0 <= s.start < s.end <= len(text)):
            problems.append(f"sentence {i}: bad span {s.start}:{s.end}")
            continue
        piece = text[s.start:s.end]
        if piece != piece.strip():
            problems.append(f"sentence {i}: span {s.start}:{s.end} not whitespace-trimmed")
        if s.start < prev_end:
            problems.append(f"sentence {i}: overlaps or precedes the previous sentence")
        gap = text[prev_end:s.start]
        if gap.strip():
            problems.append(f"sentence {i}: non-space text before it is in no sentence")
        prev_end = s.end
        covered += 1
    if text[prev_end:].strip() and sentences:
        problems.append("non-space text after the last sentence is in no sentence")
    if not sentences and text and text.strip():
        problems.append("no sentences for non-blank text")
    if sections is not None:
        starts = [sec.start for sec in sections]
        for i, s in enumerate(sentences):
            j = s.section_index
            if not (0 <= j < len(sections)):
                problems.append(f"sentence {i}: section_index {j} out of range")
                continue
            sec = sections[j]
            if not (sec.start <= s.start and s.end <= sec.end):
                problems.append(f"sentence {i}: outside its section {j}")
            if (s.section_title, s.section_category) != (sec.title, sec.category):
                problems.append(f"sentence {i}: section title/category differ from section {j}")
        if starts != sorted(starts):
            problems.append("sections out of order")
        for j in range(1, len(sections)):
            if sections[j].start < sections[j - 1].end:
                problems.append(f"section {j} overlaps section {j - 1}")
    if sections is not None and subsections is not None:
        for k, sub in enumerate(subsections):
            if sub.index != k or sub.parent is None or not 0 <= sub.parent < len(sections):
                problems.append(f"subsection {k}: bad index or parent")
                continue
            par = sections[sub.parent]
            if not (par.start <= sub.start < sub.end <= par.end):
                problems.append(f"subsection {k}: outside its parent section {sub.parent}")
            if k and sub.start < subsections[k - 1].end:
                problems.append(f"subsection {k} overlaps or precedes subsection {k - 1}")
        sub_starts = [u.start for u in subsections]
        for i, s in enumerate(sentences):
            j = bisect.bisect_right(sub_starts, s.start) - 1
            inside = j >= 0 and s.start < subsections[j].end
            idx = getattr(s, "subsection_index", None)
            if inside:
                u = subsections[j]
                if idx != j or (s.subsection_title, s.subsection_category) != (u.title, u.category):
                    problems.append(f"sentence {i}: sub-section fields differ from subsection {j}")
                elif s.end > u.end:
                    problems.append(f"sentence {i}: runs past the end of subsection {j}")
                elif u.parent != s.section_index:
                    problems.append(f"sentence {i}: subsection {j} not in its section")
            elif idx is not None or getattr(s, "subsection_category", None) is not None:
                problems.append(f"sentence {i}: sub-section fields set outside any subsection")
    return problems


# --------------------------------------------------------------------------- metrics
@dataclass
class NoteScore:
    name: str
    n_gold: int
    n_pred: int
    section_correct: int  # gold sentences whose predicted top-level category equals gold
    section_chars_correct: int
    section_chars: int
    boundaries_gold: int
    boundaries_pred: int
    boundaries_tp: int
    mns_total: int
    mns_kept: int
    nonspace_total: int
    nonspace_covered: int
    mismatches: int  # sentences whose offsets do not give trimmed, non-empty text
    violations: int  # other invariant violations (overlap, order, section containment)
    subsection_correct: int = 0  # gold sentences whose predicted sub-section category equals gold
    headers_gold: int = 0  # gold header lines (both levels)
    headers_pred: int = 0  # predicted header starts (sections and sub-sections with a title)
    headers_tp: int = 0  # gold header starts that are predicted header starts

    @property
    def section_accuracy(self) -> float:
        return self.section_correct / self.n_gold if self.n_gold else 1.0

    @property
    def subsection_accuracy(self) -> float:
        return self.subsection_correct / self.n_gold if self.n_gold else 1.0

    @property
    def split_recall(self) -> float:
        return self.boundaries_tp / self.boundaries_gold if self.boundaries_gold else 1.0

    @property
    def split_precision(self) -> float:
        return self.boundaries_tp / self.boundaries_pred if self.boundaries_pred else 1.0

    @property
    def header_recall(self) -> float:
        return self.headers_tp / self.headers_gold if self.headers_gold else 1.0

    @property
    def mns_kept_rate(self) -> float:
        return self.mns_kept / self.mns_total if self.mns_total else 1.0

    @property
    def coverage(self) -> float:
        return self.nonspace_covered / self.nonspace_total if self.nonspace_total else 1.0


def _nonspace(s: str) -> int:
    return len(_SPACE_RE.sub("", s))


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def score_note(note: GoldNote, sentences: Sequence[Sentence],
               sections: Sequence[Section] | None = None,
               subsections: Sequence[Section] | None = None) -> NoteScore:
    """Compare predicted sentences (their boundaries, top-level and sub-section categories) and
    predicted headers (titled ``sections`` plus ``subsections``) with one gold note.

    Works with segmenters that predate sub-sections: a sentence without a
    ``subsection_category`` attribute has none.
    """
    text = note.text
    pred_starts = [s.start for s in sentences]
    pred_cats = [s.section_category for s in sentences]
    pred_subs = [getattr(s, "subsection_category", None) for s in sentences]
    gold_subs = note.sentence_subcategories or [None] * len(note.sentences)
    correct = chars_correct = chars = sub_correct = 0
    for (a, b), cat, sub in zip(note.sentences, note.sentence_categories, gold_subs):
        i = bisect.bisect_right(pred_starts, a) - 1
        inside = i >= 0 and sentences[i].end > a
        ok = inside and pred_cats[i] == cat
        w = _nonspace(text[a:b])
        chars += w
        if ok:
            correct += 1
            chars_correct += w
        if inside and pred_subs[i] == sub:
            sub_correct += 1
    first = note.sentences[0][0] if note.sentences else 0
    gold_b = {a for a, _ in note.sentences if a != first}
    pred_b = {a for a in pred_starts if a != first}
    edges = sorted({s.start for s in sentences} | {s.end for s in sentences})
    kept = 0
    for a, b in note.must_not_split:
        k = bisect.bisect_right(edges, a)
        if k >= len(edges) or edges[k] >= b:
            kept += 1
    covered = sum(_nonspace(text[s.start:s.end]) for s in sentences
                  if 0 <= s.start < s.end <= len(text))
    mism = sum(1 for s in sentences if not (0 <= s.start < s.end <= len(text))
               or text[s.start:s.end] != text[s.start:s.end].strip())
    problems = check_invariants(text, sentences, sections, subsections)
    gold_h = {s.start for s in note.sections}
    pred_h = {s.start for s in (sections or ()) if s.title is not None}
    pred_h |= {s.start for s in (subsections or ())}
    return NoteScore(
        name=note.name, n_gold=len(note.sentences), n_pred=len(sentences),
        section_correct=correct, section_chars_correct=chars_correct, section_chars=chars,
        boundaries_gold=len(gold_b), boundaries_pred=len(pred_b),
        boundaries_tp=len(gold_b & pred_b), mns_total=len(note.must_not_split), mns_kept=kept,
        nonspace_total=_nonspace(text), nonspace_covered=min(covered, _nonspace(text)),
        mismatches=mism, violations=len(problems), subsection_correct=sub_correct,
        headers_gold=len(gold_h), headers_pred=len(pred_h), headers_tp=len(gold_h & pred_h),
    )


@dataclass
class Report:
    backend: str
    notes: list[NoteScore]

    def _sum(self, attr: str) -> int:
        return sum(getattr(n, attr) for n in self.notes)

    @property
    def totals(self) -> dict[str, float]:
        s = self._sum

        def ratio(a: str, b: str) -> float:
            return s(a) / s(b) if s(b) else 1.0

        rec, prec = ratio("boundaries_tp", "boundaries_gold"), ratio("boundaries_tp", "boundaries_pred")
        return {
            "notes": len(self.notes),
            "gold_sentences": s("n_gold"),
            "pred_sentences": s("n_pred"),
            # "category fit": share of gold sentences whose predicted top-level category is the
            # category of the (gold) top-level header above them
            "section_accuracy": ratio("section_correct", "n_gold"),
            "section_char_accuracy": ratio("section_chars_correct", "section_chars"),
            "subsection_accuracy": ratio("subsection_correct", "n_gold"),
            "split_recall": rec,
            "split_precision": prec,
            "split_f1": _f1(prec, rec),
            "header_recall": ratio("headers_tp", "headers_gold"),
            "header_precision": ratio("headers_tp", "headers_pred"),
            "must_not_split_kept": ratio("mns_kept", "mns_total"),
            "coverage": ratio("nonspace_covered", "nonspace_total"),
            "mismatches": s("mismatches"),
            "violations": s("violations"),
        }

    def table(self) -> str:
        """Per-note figures plus the total line, as fixed-width text."""
        head = (f"{'note':34} {'gold':>5} {'pred':>5} {'sect':>6} {'sub':>6} {'rec':>6} "
                f"{'prec':>6} {'hdr':>6} {'hprec':>6} {'mns':>6} {'cov':>6} {'mism':>4}")
        rows = [head]

        def hprec(n: NoteScore) -> float:
            return n.headers_tp / n.headers_pred if n.headers_pred else 1.0

        for n in self.notes:
            rows.append(f"{n.name[:34]:34} {n.n_gold:5d} {n.n_pred:5d} {n.section_accuracy:6.3f} "
                        f"{n.subsection_accuracy:6.3f} {n.split_recall:6.3f} "
                        f"{n.split_precision:6.3f} {n.header_recall:6.3f} {hprec(n):6.3f} "
                        f"{n.mns_kept_rate:6.3f} {n.coverage:6.3f} {n.mismatches:4d}")
        t = self.totals
        rows.append(f"{'TOTAL (' + self.backend + ')':34} {t['gold_sentences']:5d} "
                    f"{t['pred_sentences']:5d} {t['section_accuracy']:6.3f} "
                    f"{t['subsection_accuracy']:6.3f} {t['split_recall']:6.3f} "
                    f"{t['split_precision']:6.3f} {t['header_recall']:6.3f} "
                    f"{t['header_precision']:6.3f} {t['must_not_split_kept']:6.3f} "
                    f"{t['coverage']:6.3f} {t['mismatches']:4d}")
        rows.append(f"boundary F1 {t['split_f1']:.3f}; sect = category fit (top-level), "
                    f"sub = sub-section category, hdr/hprec = header lines found / precision")
        return "\n".join(rows)


def evaluate(segmenter, notes: Iterable[GoldNote] | None = None) -> Report:
    """Score ``segmenter`` (anything with ``.segment`` and ``.sections``) on the gold notes."""
    notes = load_gold() if notes is None else list(notes)
    scores = []
    subsections = getattr(segmenter, "subsections", None)
    for note in notes:
        sents = segmenter.segment(note.text)
        secs = segmenter.sections(note.text)
        subs = subsections(note.text) if subsections is not None else None
        scores.append(score_note(note, sents, secs, subs))
    return Report(getattr(segmenter, "name", "?"), scores)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clinicalbert_spark.segment.evaluate [--split dev|test] [--backend rules]``:
    the per-note table and totals of one split (note text is never printed)."""
    import argparse

    from .backends import get_segmenter

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--backend", default="rules")
    args = ap.parse_args(argv)
    notes = load_gold(GOLD_TEST_DIR if args.split == "test" else GOLD_DIR)
    seg = get_segmenter(args.backend)
    print(f"split {args.split}: {len(notes)} notes; segmenter {seg.name} {seg.version}")
    print(evaluate(seg, notes).table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
