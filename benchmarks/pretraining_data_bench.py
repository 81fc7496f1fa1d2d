#!/usr/bin/env python
"""Pretraining-instance throughput per core (tokenize + pack + mask), on real notes.

    python benchmarks/pretraining_data_bench.py [--limit 1000] [--dup-factor 5] [--wwm] [--nsp]
                                                [--json out.json]

Sentences come from MTSamples + MIMIC-II nursing notes in ``../shared/corpora`` (segmented by the
rules segmenter beforehand; segmentation is not timed, see segment_bench.py). The tokenizer is
the bundled all-MiniLM-L6-v2's (bert-base-uncased WordPiece, 30,522 pieces: the size of
Bio_ClinicalBERT's cased 28,996). One process, one thread: the figure is per core; Spark adds
its own per-row overhead (Arrow transfer, Parquet write), reported separately with ``--spark``.
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_v, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinicalbert_spark.pretrain.documents import instances_frame, load_tokenizer  # noqa: E402
from clinicalbert_spark.pretrain.instances import InstanceSettings  # noqa: E402
from clinicalbert_spark.segment import get_segmenter  # noqa: E402
from clinicalbert_spark.segment.corpora import read_deid_nursing, read_mtsamples  # noqa: E402
from clinicalbert_spark.testing import build_tiny_bert, minilm_path  # noqa: E402


def sentence_frame(limit: int):
    import pandas as pd

    notes = read_mtsamples()[: limit // 2] + read_deid_nursing()[: limit - limit // 2]
    seg = get_segmenter("rules")
    rows = [(nid, s.sentence_index, text[s.start:s.end], s.section_category)
            for nid, text in notes for s in seg.segment(text)]
    return pd.DataFrame(rows, columns=["note_id", "sentence_index", "text", "section_category"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=1000, help="notes (half MTSamples, half nursing)")
    ap.add_argument("--dup-factor", type=int, default=5)
    ap.add_argument("--wwm", action="store_true")
    ap.add_argument("--nsp", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    model = minilm_path()
    if model is None:  # no real vocabulary installed: the tiny test vocabulary
        model = build_tiny_bert(Path(tempfile.mkdtemp()) / "tiny")
    model = str(model)
    pdf = sentence_frame(a.limit)
    s = InstanceSettings(dup_factor=a.dup_factor, whole_word_mask=a.wwm, next_sentence=a.nsp)
    _, v, _ = load_tokenizer(model)
    instances_frame(pdf.head(200), model, s, vocab=v)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    out = instances_frame(pdf, model, s, vocab=v)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n, tok = len(out), int(out["length"].sum())
    res = {"notes": int(pdf["note_id"].nunique()), "sentences": len(pdf), "instances": n,
           "tokens": tok, "mean_length": tok / max(n, 1), "dup_factor": a.dup_factor,
           "wwm": a.wwm, "nsp": a.nsp, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
           "instances_per_s_per_core": round(n / cpu, 1),
           "tokens_per_s_per_core": round(tok / cpu),
           "instances_per_s_wall": round(n / wall, 1), "model": Path(model).name}
    for k, val in res.items():
        print(f"{k:28s}{val}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
