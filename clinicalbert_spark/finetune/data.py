"""Labelled examples for fine-tuning (Python, numpy, pandas; no Spark, no model).

Split. Rows are split into train / validation / test **by group** (a patient id: every row
of a group lands in one split) and **stratified by label**: each group's stratum is its most
frequent label (token classification: its most frequent span label, ``O`` without spans);
within a stratum the groups are ordered by ``sha256(seed, group)`` and the k-th of n goes to
the split whose share of ``[0, 1)`` holds ``(k + u) / n``, ``u`` a per-stratum offset drawn
from the seed. Every stratum is thus split in the given proportions to within one group, and
the assignment depends on the seed and the groups alone (not on row order or partitioning).

Model inputs are the windows the predict stage builds (:func:`~clinicalbert_spark.encode.
batching.build_segments` on the tokenizer's ids without special tokens), so a checkpoint sees
in training what it sees in ``jobs/predict.py`` with the same ``max_length``, ``stride`` and
``long_policy``. Token labels are BIO tags on words (the tokens of one word share its tag),
as the predictor reads them back: it averages a word's pieces and merges B/I words into
spans.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

SPLITS = ("train", "validation", "test")
IGNORE = -100  # label of positions without a loss ([CLS], [SEP], padding)


def _unit(*parts) -> float:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0 or f[0] <= 0 or f[1] <= 0 or abs(sum(f) - 1) > 1e-6:
        raise ValueError("split fractions must be three numbers train,validation,test that "
                         "sum to 1, train and validation > 0")
    return f  # type: ignore[return-value]


def group_strata(groups: Sequence[str], strata: Sequence[str]) -> dict[str, str]:
    """Each group's stratum: its rows' most frequent stratum (ties: the smallest name)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for g, s in zip(groups, strata):
        counts[g][s] += 1
    return {g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in counts.items()}


def split_groups(groups: Sequence[str], strata: Sequence[str],
                 fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42
                 ) -> dict[str, str]:
    """group -> ``train`` / ``validation`` / ``test`` (see the module doc).

    ``groups`` and ``strata`` are per row (a row's group and its label)."""
    f = check_fractions(fractions)
    bounds = (f[0], f[0] + f[1])
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g, s in group_strata(groups, strata).items():
        by_stratum[s].append(g)
    out: dict[str, str] = {}
    for s, gs in by_stratum.items():
        gs.sort(key=lambda g: (_unit(seed, "group", g), g))
        u = _unit(seed, "stratum", s)
        n = len(gs)
        for k, g in enumerate(gs):
            q = (k + u) / n
            out[g] = SPLITS[0] if q < bounds[0] else SPLITS[1] if q < bounds[1] else SPLITS[2]
    return out


def fingerprint(rows: Iterable[tuple]) -> str:
    """sha256 (first 16 hex digits) of the sorted rows (e.g. ``(id, label)`` pairs): the same
    labelled data gives the same fingerprint whatever its order."""
    h = hashlib.sha256()
    for r in sorted("\x1f".join(str(x) for x in r) for r in rows):
        h.update(r.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def bio_label_names(types: Iterable[str]) -> list[str]:
    """``O`` then ``B-T``, ``I-T`` for every span type, sorted."""
    out = ["O"]
    for t in sorted(set(types)):
        out += [f"B-{t}", f"I-{t}"]
    return out


def clean_spans(spans: Sequence[tuple[int, int, str]], n_chars: int
                ) -> tuple[list[tuple[int, int, str]], int]:
    """(the usable spans sorted by start, how many were dropped): a span must lie inside the
    text with ``start < end``; one overlapping an earlier kept span is dropped."""
    kept: list[tuple[int, int, str]] = []
    dropped = 0
    end_so_far = -1
    for s, e, t in sorted(spans, key=lambda x: (x[0], x[1], x[2])):
        if not (0 <= s < e <= n_chars) or s < end_so_far:
            dropped += 1
            continue
        kept.append((int(s), int(e), str(t)))
        end_so_far = e
    return kept, dropped


def word_ranges(word_ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """Token index ranges ``[i, j)`` of the words (consecutive tokens with one word id), as
    the predictor groups them."""
    out, i, n = [], 0, len(word_ids)
    while i < n:
        j = i + 1
        while j < n and word_ids[j] is not None and word_ids[j] == word_ids[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


def bio_tags(offsets: Sequence[tuple[int, int]], word_ids: Sequence[int | None],
             spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """The BIO tag of every token (no special tokens): a word (its characters run from its
    first token's start to its last token's end) overlapping a span takes the span's type,
    ``B-`` if it is the span's first such word, else ``I-``; ``O`` elsewhere. ``spans``:
    sorted, non-overlapping (:func:`clean_spans`)."""
    tags = ["O"] * len(offsets)
    k = 0  # the first span that may still overlap
    last_span = -1
    for i, j in word_ranges(word_ids):
        ws, we = offsets[i][0], offsets[j - 1][1]
        while k < len(spans) and spans[k][1] <= ws:
            k += 1
        if k < len(spans) and spans[k][0] < we and we > ws:
            t = spans[k][2]
            tag = f"I-{t}" if last_span == k else f"B-{t}"
            last_span = k
            tags[i:j] = [tag] * (j - i)
    return tags


@dataclass
class Labelled:
    """The usable rows of a labelled table: parallel lists, and what was left out."""

    ids: list
    texts: list
    groups: list
    targets: list  # a label per row, or a list of (start, end, label) spans per row
    counts: dict = field(default_factory=dict)


def _blank(col):
    return col.isna() | ~col.fillna("").astype(str).str.contains(r"\S", regex=True)


def _usable_rows(pdf, counts: dict):
    """Rows of ``pdf`` (``id, text, group, bad``) with an id and text; counts what is not.
    An id on two rows is an error (one line, no value quoted)."""
    from ..errors import InputError

    counts["rows_read"] = len(pdf)
    counts["bad_records"] = int(pdf["bad"].notna().sum())
    pdf = pdf[pdf["bad"].isna()]
    no_id = _blank(pdf["id"])
    counts["no_id"] = int(no_id.sum())
    pdf = pdf[~no_id]
    dup = pdf["id"].duplicated(keep=False)
    if dup.any():
        raise InputError(f"{pdf['id'][dup].nunique()} ids are on more than one row of the "
                         "labels input; an id must name one row (--id-col takes several "
                         "columns, e.g. note_id,sentence_index)")
    no_text = _blank(pdf["text"])
    counts["no_text"] = int(no_text.sum())
    pdf = pdf[~no_text].copy()
    no_group = _blank(pdf["group"])
    counts["no_group"] = int(no_group.sum())  # each such row is a group of its own
    pdf.loc[no_group, "group"] = pdf.loc[no_group, "id"]
    return pdf


def assemble_labels(pdf) -> Labelled:
    """Sequence classification: ``pdf`` has ``id, text, label, group, bad``. Labels are
    stripped of surrounding whitespace; rows without one are left out (counted)."""
    counts: dict = {}
    pdf = _usable_rows(pdf, counts)
    label = pdf["label"].astype("string").str.strip()
    no_label = label.isna() | (label == "")
    counts["no_label"] = int(no_label.sum())
    pdf, label = pdf[~no_label], label[~no_label]
    counts["rows_used"] = len(pdf)
    return Labelled(pdf["id"].tolist(), pdf["text"].tolist(), pdf["group"].tolist(),
                    [str(x) for x in label], counts)


def assemble_spans(texts, spans) -> Labelled:
    """Token classification: ``texts`` has ``id, text, group, bad`` (the same row may repeat,
    as when the spans are columns of the texts table), ``spans`` has ``id, start, end, label,
    bad``. Rows with no span part at all are texts without entities; spans that are
    incomplete, not integers, for an unknown id, outside their text or overlapping an
    earlier span are left out (counted)."""
    import pandas as pd

    counts: dict = {}
    texts = _usable_rows(texts.drop_duplicates(subset=["id", "text", "group"]), counts)
    sp = spans[spans["bad"].isna()].copy()
    parts = sp[["start", "end", "label"]]
    empty = parts.isna().all(axis=1)
    sp = sp[~empty]
    start = pd.to_numeric(sp["start"], errors="coerce")
    end = pd.to_numeric(sp["end"], errors="coerce")
    label = sp["label"].astype("string").str.strip()
    ok = (start.notna() & end.notna() & (start == start.round()) & (end == end.round())
          & label.notna() & (label != ""))
    counts["spans_incomplete"] = int((~ok).sum())
    sp = pd.DataFrame({"id": sp["id"][ok], "start": start[ok].astype("int64"),
                       "end": end[ok].astype("int64"), "label": label[ok].astype(str)})
    known = sp["id"].isin(set(texts["id"]))
    counts["spans_without_text"] = int((~known).sum())
    by_id: dict = defaultdict(list)
    for i, s, e, t in sp[known].itertuples(index=False):
        by_id[i].append((s, e, t))
    targets, dropped = [], 0
    for i, text in zip(texts["id"], texts["text"]):
        kept, d = clean_spans(by_id.get(i, []), len(text))
        targets.append(kept)
        dropped += d
    counts["spans_dropped"] = dropped
    counts["spans_used"] = sum(len(t) for t in targets)
    counts["rows_used"] = len(texts)
    return Labelled(texts["id"].tolist(), texts["text"].tolist(), texts["group"].tolist(),
                    targets, counts)


@dataclass
class Examples:
    """Model inputs of one split: one entry per window (``[CLS] … [SEP]``)."""

    ids: list  # of int32 arrays
    labels: list  # sequence: ints; token: int32 arrays aligned with ids (IGNORE at specials)
    row: np.ndarray  # the row (index into the split's rows) of each window
    tokens: int = 0  # tokens in all windows

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Prepared:
    """A labelled table ready for training: splits, labels, inputs, counts."""

    task: str
    label_names: list
    split_of_row: list  # per input row: its split
    rows: dict  # split -> indices of the input rows
    examples: dict  # split -> Examples
    counts: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)


def make_examples(tokenizer, texts: Sequence[str], targets: Sequence, task: str,
                  label2id: dict, max_length: int, stride: int | None, long_policy: str
                  ) -> Examples:
    """Windows of ``texts`` with their labels. ``targets``: a label per text (sequence), or
    the text's cleaned spans (token classification)."""
    from ..encode.batching import build_segments
    from ..encode.encoder import EncoderConfig, _special_ids
    from ..encode.runtime import classify_texts, tokenize_texts

    cfg = EncoderConfig(max_length=max_length, stride=stride, long_policy=long_policy)
    cls_id, sep_id, _ = _special_ids(tokenizer)
    status = classify_texts(texts)
    seq = task == "sequence-classification"
    ids, encs = tokenize_texts(tokenizer, texts, status, offsets=True) if not seq else (
        tokenize_texts(tokenizer, texts, status), None)
    seg = build_segments(ids, max_length=cfg.max_length, stride=cfg.effective_stride,
                         long_policy=cfg.long_policy, cls_id=cls_id, sep_id=sep_id)
    labels: list = []
    tags: dict[int, np.ndarray] = {}
    for s, r in enumerate(seg.row):
        if seq:
            labels.append(label2id[targets[r]])
            continue
        if r not in tags:
            e = encs[r]
            tags[r] = np.asarray([label2id[t] for t in bio_tags(e.offsets, e.word_ids,
                                                                targets[r])], dtype=np.int32)
        lab = np.full(len(seg.ids[s]), IGNORE, dtype=np.int32)
        lab[1:-1] = tags[r][seg.start[s]:seg.start[s] + len(seg.ids[s]) - 2]
        labels.append(lab)
    return Examples(ids=[x.astype(np.int32) for x in seg.ids], labels=labels,
                    row=seg.row.astype(np.int64), tokens=int(seg.n_tokens.sum()))


def prepare(tokenizer, task: str, ids: Sequence[str], texts: Sequence[str],
            groups: Sequence[str], targets: Sequence, fractions=(0.8, 0.1, 0.1),
            seed: int = 42, max_length: int = 128, stride: int | None = None,
            long_policy: str = "truncate") -> Prepared:
    """Split, label and tokenize a labelled table (rows with usable text and label only).

    ``targets``: a label name per row (sequence classification) or a list of
    ``(start, end, label)`` spans per row (token classification; clean them first).
    """
    if task == "sequence-classification":
        names = sorted({str(t) for t in targets})
        strata = [str(t) for t in targets]
        keyed = [(i, t) for i, t in zip(ids, targets)]
    else:
        names = bio_label_names(t for spans in targets for _, _, t in spans)
        strata = [Counter(t for _, _, t in sp).most_common(1)[0][0] if sp else "O"
                  for sp in targets]
        keyed = [(i, s, e, t) for i, sp in zip(ids, targets) for s, e, t in sp]
        keyed += [(i,) for i, sp in zip(ids, targets) if not sp]
    split_of = split_groups(groups, strata, fractions, seed)
    split_of_row = [split_of[g] for g in groups]
    rows = {s: [i for i, x in enumerate(split_of_row) if x == s] for s in SPLITS}
    label2id = {n: i for i, n in enumerate(names)}
    examples = {s: make_examples(tokenizer, [texts[i] for i in rows[s]],
                                 [targets[i] for i in rows[s]], task, label2id, max_length,
                                 stride, long_policy) for s in SPLITS}
    in_split = {s: set(ids[i] for i in rows[s]) for s in SPLITS}
    fps = {s: fingerprint(k for k in keyed if k[0] in in_split[s]) for s in SPLITS}
    counts: dict = {s: {"rows": len(rows[s]), "groups": len({groups[i] for i in rows[s]}),
                        "windows": len(examples[s]), "tokens": examples[s].tokens}
                    for s in SPLITS}
    per_label: dict = {}
    for s in SPLITS:
        c = Counter(strata[i] for i in rows[s])
        per_label[s] = {k: c[k] for k in sorted(c)}
    counts["by_label"] = per_label
    return Prepared(task, names, split_of_row, rows, examples, counts, fps)
