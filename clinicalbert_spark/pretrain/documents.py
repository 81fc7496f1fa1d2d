"""Sentences rows -> documents -> instance rows (pandas in, pandas out; no Spark).

The Spark glue (:mod:`clinicalbert_spark.pretrain.spark`) calls :func:`instances_frame` once per
hash bucket of notes; tests and benchmarks call it directly.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

from .instances import InstanceSettings, Segment, Vocab, instances_for_note

OUTPUT_COLUMNS = ["note_id", "copy", "instance_index", "input_ids", "token_type_ids", "length",
                  "masked_positions", "masked_ids", "is_random_next", "sections"]

_TOKENIZERS: dict[str, tuple] = {}


def load_tokenizer(path: str):
    """(tokenizer, Vocab, random ids) for a local model folder, once per process."""
    hit = _TOKENIZERS.get(path)
    if hit is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        missing = [n for n in ("cls_token_id", "sep_token_id", "mask_token_id")
                   if getattr(tok, n, None) is None]
        if missing:
            raise ValueError(f"the tokenizer of {path} lacks {missing} (not a BERT tokenizer)")
        v = Vocab.from_tokenizer(tok)
        hit = (tok, v, v.random_ids)
        _TOKENIZERS[path] = hit
    return hit


_ENCODERS: dict[str, object] = {}


def encoder(path: str):
    """texts -> WordPiece ids without special tokens, once per process.

    ``tokenizer.json`` is read with the ``tokenizers`` library alone (importing transformers
    costs seconds in every Python worker); a folder without one falls back to transformers.
    """
    enc = _ENCODERS.get(path)
    if enc is None:
        from pathlib import Path

        file = Path(path) / "tokenizer.json"
        if file.is_file():
            from tokenizers import Tokenizer

            t = Tokenizer.from_file(str(file))
            t.no_truncation()
            t.no_padding()

            def enc(texts):
                return [e.ids for e in t.encode_batch(texts, add_special_tokens=False)]
        else:
            tok = load_tokenizer(path)[0]

            def enc(texts):
                return tok(texts, add_special_tokens=False, return_attention_mask=False,
                           return_token_type_ids=False)["input_ids"]
        _ENCODERS[path] = enc
    return enc


def tokenizer_fingerprint(tok) -> str:
    """A hash of everything that decides the ids: vocabulary, normaliser, pre-tokeniser."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: its vocabulary and casing
        text = repr(sorted(tok.get_vocab().items())) + repr(getattr(tok, "do_lower_case", None))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def documents(pdf, encode) -> tuple[list[str], list[list[Segment]]]:
    """Group a frame of sentences (note_id, sentence_index, text, section_category) into
    documents sorted by note id, sentences by index; every sentence tokenized once
    (``encode``: texts -> id lists, see :func:`encoder`)."""
    pdf = pdf.sort_values(["note_id", "sentence_index"], kind="mergesort")
    texts = [t if isinstance(t, str) else "" for t in pdf["text"].tolist()]
    ids = encode(texts) if texts else []
    sections = (pdf["section_category"].tolist() if "section_category" in pdf.columns
                else [None] * len(texts))
    note_ids: list[str] = []
    docs: list[list[Segment]] = []
    for nid, i, sec in zip(pdf["note_id"].tolist(), ids, sections):
        if not note_ids or note_ids[-1] != nid:
            note_ids.append(nid)
            docs.append([])
        docs[-1].append(Segment(list(i), sec if isinstance(sec, str) else None))
    return note_ids, docs


def instance_rows(note_ids: list[str], docs: list[list[Segment]], s: InstanceSettings,
                  v: Vocab, random_ids=None) -> Iterable[dict]:
    """Every instance of every copy of these documents (the pool for random next sentences)."""
    for d, (nid, doc) in enumerate(zip(note_ids, docs)):
        for copy in range(s.dup_factor):
            for inst in instances_for_note(doc, nid, copy, s, v, docs, d, random_ids):
                inst["note_id"] = nid
                inst["copy"] = copy
                yield inst


_RANDOM_IDS: dict[Vocab, list[int]] = {}


def instances_frame(pdf, tokenizer_path: str, s: InstanceSettings,
                    tag_sections: bool = False, vocab: Optional[Vocab] = None):
    """The instance rows of the notes in ``pdf`` as a pandas frame (:data:`OUTPUT_COLUMNS`).

    ``vocab`` (from :func:`load_tokenizer` on the driver) spares a worker importing
    transformers."""
    import pandas as pd

    v = vocab if vocab is not None else load_tokenizer(tokenizer_path)[1]
    rnd = _RANDOM_IDS.get(v)
    if rnd is None:
        rnd = _RANDOM_IDS[v] = v.random_ids
    note_ids, docs = documents(pdf, encoder(tokenizer_path))
    rows = list(instance_rows(note_ids, docs, s, v, rnd))
    out = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
    if not tag_sections:
        out["sections"] = None
    return out
