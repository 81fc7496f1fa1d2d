"""Readers for the real clinical text under ``../shared/corpora`` (benchmarks, robustness tests).

Pure functions returning ``[(note_id, text), ...]``. The data is not part of this repository (see
``/work/shared/corpora/SOURCES.md``); :func:`corpora_dir` says where it is expected and callers
skip with a clear message when it is absent.
"""
from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[2]
_RECORD_RE = re.compile(
    r"START_OF_RECORD=([^|\n]*)\|\|\|\|([^|\n]*)\|\|\|\|\r?\n?(.*?)\|\|\|\|END_OF_RECORD", re.S
)


def corpora_dir() -> Path:
    """``$CLINICALBERT_CORPORA`` or ``<repo>/../shared/corpora``."""
    env = os.environ.get("CLINICALBERT_CORPORA")
    return Path(env) if env else (_REPO_ROOT.parent / "shared" / "corpora")


def read_mtsamples(path: str | Path | None = None) -> list[tuple[str, str]]:
    """MTSamples transcriptions (``transcription`` column), ids ``mtsamples:<row>``; empty rows skipped."""
    path = Path(path) if path else corpora_dir() / "mtsamples.csv"
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    out = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for i, row in enumerate(csv.DictReader(f)):
            text = row.get("transcription") or ""
            if text.strip():
                out.append((f"mtsamples:{i}", text))
    return out


def read_deid_nursing(path: str | Path | None = None) -> list[tuple[str, str]]:
    """PhysioNet deid MIMIC-II nursing notes (``id.res``: ``[**...**]`` PHI tags), ids
    ``nursing:<patient>:<note>``."""
    path = Path(path) if path else corpora_dir() / "physionet_deid_nursing" / "id.res"
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    return [(f"nursing:{p}:{n}", t) for p, n, t in _RECORD_RE.findall(raw)]


def read_ctakes(directory: str | Path | None = None) -> list[tuple[str, str]]:
    """Apache cTAKES example notes (``*.txt``), ids ``ctakes:<file stem>``."""
    d = Path(directory) if directory else corpora_dir() / "ctakes_notes"
    return [(f"ctakes:{p.stem}", p.read_text(encoding="utf-8", errors="replace"))
            for p in sorted(d.glob("*.txt"))]


def read_all(base: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """Every corpus present under ``base`` (missing ones are left out)."""
    b = Path(base) if base else corpora_dir()
    out: dict[str, list[tuple[str, str]]] = {}
    if (b / "mtsamples.csv").is_file():
        out["mtsamples"] = read_mtsamples(b / "mtsamples.csv")
    if (b / "physionet_deid_nursing" / "id.res").is_file():
        out["nursing"] = read_deid_nursing(b / "physionet_deid_nursing" / "id.res")
    if (b / "ctakes_notes").is_dir():
        out["ctakes"] = read_ctakes(b / "ctakes_notes")
    return out


def sample_sentences(notes: list[str], n: int, seed: int = 0, min_words: int = 3) -> list[str]:
    """Up to ``n`` distinct sentences (whitespace collapsed, at least ``min_words`` words) cut
    by the rules segmenter from ``notes`` taken in an order shuffled by ``seed``: real
    sentences for fidelity checks and benchmarks."""
    import random

    from . import get_segmenter

    notes = list(notes)
    random.Random(seed).shuffle(notes)
    seg = get_segmenter("rules")
    seen: set[str] = set()
    out: list[str] = []
    for text in notes:
        for s in seg.segment(text):
            t = " ".join(text[s.start:s.end].split())
            if len(t.split()) >= min_words and t not in seen:
                seen.add(t)
                out.append(t)
        if len(out) >= n:
            break
    return out[:n]
