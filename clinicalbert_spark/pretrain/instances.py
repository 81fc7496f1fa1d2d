"""Masked-LM pretraining instances, as BERT's ``create_pretraining_data.py`` builds them.

Pure Python (no Spark, no torch): a *document* is a note as its ordered sentences, each a list
of WordPiece ids (no special tokens). :func:`instances_for_note` turns one document into
instances for one duplication copy, with a ``random.Random`` seeded from ``(seed, note_id,
copy)`` only, so that the output never depends on how the notes are partitioned.

The algorithm follows google-research/bert ``create_pretraining_data.py``:

* sentences are packed until the instance reaches ``target_seq_length`` (``max_seq_length``
  minus the special tokens; with probability ``short_seq_prob`` a shorter random target, drawn
  once per document and copy, as BERT does);
* with ``next_sentence`` the packed chunk is split into A and B at a random sentence
  boundary, and half the time B is replaced by sentences of another document
  (``is_random_next``); without it (the default) an instance is one segment ``[CLS] A [SEP]``;
* a too long pair is truncated one token at a time from the longer side, front or back at
  random;
* ``round(len(tokens) * masked_lm_prob)`` positions (at least 1, at most
  ``max_predictions_per_seq``) are chosen among the non-special tokens (whole words when
  ``whole_word_mask``: a ``##`` piece joins the word before it), and each is replaced by
  ``[MASK]`` 80% of the time, kept 10%, and replaced by a random token 10%.

One deliberate difference: the random replacement is drawn from the non-special vocabulary
(BERT draws from the whole vocabulary, ``[PAD]`` and ``[CLS]`` included).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional, Sequence

__all__ = ["InstanceSettings", "Vocab", "Segment", "instances_for_note", "note_rng",
           "mask_kinds"]


@dataclass(frozen=True)
class InstanceSettings:
    """The recipe (defaults: Bio_ClinicalBERT's, except next-sentence pairs, off)."""

    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    dup_factor: int = 5
    next_sentence: bool = False
    whole_word_mask: bool = False
    seed: int = 12345

    def __post_init__(self):
        problems = []
        if self.max_seq_length < 8:
            problems.append(f"max_seq_length must be >= 8, got {self.max_seq_length}")
        if not 0 <= self.short_seq_prob <= 1:
            problems.append(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0 < self.masked_lm_prob < 1:
            problems.append(f"masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}")
        if self.max_predictions_per_seq < 1:
            problems.append("max_predictions_per_seq must be >= 1")
        if self.dup_factor < 1:
            problems.append(f"dup_factor must be >= 1, got {self.dup_factor}")
        if problems:
            raise ValueError("; ".join(problems))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Vocab:
    """What masking needs to know about a tokenizer's vocabulary."""

    size: int
    cls_id: int
    sep_id: int
    mask_id: int
    pad_id: int
    special_ids: frozenset = field(default_factory=frozenset)
    subword_ids: frozenset = field(default_factory=frozenset)  # pieces starting with "##"

    @property
    def random_ids(self) -> list[int]:
        return [i for i in range(self.size) if i not in self.special_ids]

    @classmethod
    def from_tokenizer(cls, tok) -> "Vocab":
        vocab = tok.get_vocab()
        size = max(len(tok), max(vocab.values()) + 1)
        return cls(size=size, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id,
                   mask_id=tok.mask_token_id,
                   pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
                   special_ids=frozenset(i for i in tok.all_special_ids if i is not None),
                   subword_ids=frozenset(i for w, i in vocab.items() if w.startswith("##")))


@dataclass
class Segment:
    """One sentence: its WordPiece ids and (for tagging) its section category."""

    ids: list[int]
    section: Optional[str] = None


def note_rng(seed: int, note_id: str, copy: int) -> random.Random:
    """The random stream of one (note, copy): a function of the seed and the note id only."""
    h = hashlib.sha256(f"{seed}\x00{note_id}\x00{copy}".encode("utf-8")).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def _truncate_seq_pair(a: list, b: list, max_num_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_num_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def _mask(tokens: list[int], s: InstanceSettings, v: Vocab, rng: random.Random,
          random_ids: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """BERT's create_masked_lm_predictions: (output tokens, positions, original ids)."""
    cand: list[list[int]] = []
    for i, t in enumerate(tokens):
        if t == v.cls_id or t == v.sep_id:
            continue
        if s.whole_word_mask and cand and t in v.subword_ids and cand[-1][-1] == i - 1:
            cand[-1].append(i)
        else:
            cand.append([i])
    rng.shuffle(cand)
    out = list(tokens)
    num_to_predict = min(s.max_predictions_per_seq,
                         max(1, int(round(len(tokens) * s.masked_lm_prob))))
    chosen: list[int] = []
    for index_set in cand:
        if len(chosen) >= num_to_predict:
            break
        if len(chosen) + len(index_set) > num_to_predict:
            continue
        for index in index_set:
            if rng.random() < 0.8:
                out[index] = v.mask_id
            elif rng.random() < 0.5:
                out[index] = tokens[index]
            else:
                out[index] = random_ids[rng.randint(0, len(random_ids) - 1)]
            chosen.append(index)
    chosen.sort()
    return out, chosen, [tokens[i] for i in chosen]


def _sections(segs: Iterable[Segment]) -> list[str]:
    seen: list[str] = []
    for sg in segs:
        if sg.section is not None and sg.section not in seen:
            seen.append(sg.section)
    return seen


def instances_for_note(document: Sequence[Segment], note_id: str, copy: int,
                       s: InstanceSettings, v: Vocab,
                       all_documents: Optional[Sequence[Sequence[Segment]]] = None,
                       document_index: int = 0,
                       random_ids: Optional[Sequence[int]] = None) -> list[dict]:
    """Instances of one note for duplication copy ``copy`` (0 <= copy < dup_factor).

    ``all_documents`` (with this note at ``document_index``) is where next-sentence pairs draw
    their random B segments; it must be the same whatever the partitioning (the Spark glue
    passes the notes of the note's hash bucket, sorted by id).

    Returns dicts with ``input_ids`` (masked, unpadded), ``token_type_ids``, ``length``,
    ``masked_positions``, ``masked_ids``, ``is_random_next``, ``sections`` and
    ``instance_index``.
    """
    document = [sg for sg in document if sg.ids]
    if not document:
        return []
    rng = note_rng(s.seed, note_id, copy)
    if random_ids is None:
        random_ids = v.random_ids
    n_special = 3 if s.next_sentence else 2
    max_num_tokens = s.max_seq_length - n_special
    target = max_num_tokens
    if rng.random() < s.short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    others = all_documents if all_documents is not None else [document]

    out: list[dict] = []
    chunk: list[Segment] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i].ids)
        if i == len(document) - 1 or length >= target:
            if chunk:
                a_end = 1
                if s.next_sentence and len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                elif not s.next_sentence:
                    a_end = len(chunk)
                used = chunk[:a_end]
                tokens_a = [t for sg in chunk[:a_end] for t in sg.ids]
                tokens_b: list[int] = []
                is_random_next = False
                if s.next_sentence:
                    if len(chunk) == 1 or rng.random() < 0.5:
                        is_random_next = True
                        target_b = target - len(tokens_a)
                        r = document_index
                        for _ in range(10):
                            r = rng.randint(0, len(others) - 1)
                            if r != document_index:
                                break
                        rdoc = [sg for sg in others[r] if sg.ids] or document
                        start = rng.randint(0, len(rdoc) - 1)
                        for j in range(start, len(rdoc)):
                            tokens_b.extend(rdoc[j].ids)
                            used = used + [rdoc[j]]
                            if len(tokens_b) >= target_b:
                                break
                        i -= len(chunk) - a_end  # the unused sentences start the next one
                    else:
                        tokens_b = [t for sg in chunk[a_end:] for t in sg.ids]
                        used = chunk
                _truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                tokens = [v.cls_id] + tokens_a + [v.sep_id]
                types = [0] * len(tokens)
                if s.next_sentence:
                    tokens += tokens_b + [v.sep_id]
                    types += [1] * (len(tokens_b) + 1)
                masked, positions, ids = _mask(tokens, s, v, rng, random_ids)
                out.append({"instance_index": len(out), "input_ids": masked,
                            "token_type_ids": types, "length": len(masked),
                            "masked_positions": positions, "masked_ids": ids,
                            "is_random_next": is_random_next, "sections": _sections(used)})
            chunk = []
            length = 0
        i += 1
    return out


def mask_kinds(instance: dict, mask_id: int) -> tuple[int, int, int]:
    """(replaced by [MASK], replaced by a random token, kept) among an instance's predictions.

    A random draw that happens to be the original token counts as kept.
    """
    m = r = k = 0
    ids = instance["input_ids"]
    for p, orig in zip(instance["masked_positions"], instance["masked_ids"]):
        if ids[p] == mask_id:
            m += 1
        elif ids[p] == orig:
            k += 1
        else:
            r += 1
    return m, r, k
