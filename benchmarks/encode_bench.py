"""Encoder throughput: naive HF pipeline vs. SentenceEncoder (vs. the Spark job).

One run over the same sentences with a BERT-base-sized model (random weights,
real 30522-piece WordPiece vocab: same shapes and FLOPs as Bio_ClinicalBERT,
which cannot be downloaded here), printing sentences/s and tokens/s for

(a) naive   -- ``transformers.pipeline("feature-extraction")``, one sentence
               per call (truncated to ``--max-length``), mean pooled;
(b) batched -- :class:`clinicalbert_spark.encode.SentenceEncoder` (length-sorted
               token-budget batches, padding to a multiple of 8, windows for
               long sentences);
(c) spark   -- optional (``--spark``): the lead's Spark job end to end.
(c'') ``--tasks-per-device N``: N such workers at once on the device, each on 1/N of the
               rows (``spark.task.resource.gpu.amount = 1/N``), all rows over the time to
               the last one: where the host, not the GPU, limits one worker.
(c') executor path -- optional (``--executor-path``): what each Spark task runs, without
               Spark: the sentences Parquet read in Arrow batches of
               ``spark.arrow_batch_size`` rows, ``spark.encode.embed_batches`` (the
               ``mapInPandas`` body: 16k-row chunks through ``encode_stream``, output
               frames) and the output frames turned into Arrow. For a GPU machine without
               a JVM; needs pyspark's Python package (no JVM) and pydantic.

The naive baseline is slow, so it runs on a subset (``--naive-n``) and its
per-sentence rate is used as is (rates are per sentence and per token; the
subset is a random sample of the same sentences, so the rates compare).

Also printed: padding efficiency (real / computed tokens), peak memory (RSS
via ``resource.getrusage``; ``torch.cuda.max_memory_allocated`` on GPU), and
on GPU the model FLOP utilisation::

    FLOPs(segment of L tokens) = 2 * P_ne * L  +  4 * n_layers * d_model * L**2

``P_ne`` = non-embedding parameters (~85M for BERT-base: the matmuls, 2 FLOPs
per multiply-add), the second term = the attention score (QK^T) and weighted
sum (AV) matmuls. Summed over *real* segment lengths (useful work only; padded
positions are overhead, shown separately as padding efficiency). MFU =
achieved FLOP/s / peak dense FLOP/s (``--peak-tflops``; default 989 for
H100/H200 bf16, 312 for A100).

Usage::

    python benchmarks/encode_bench.py                     # CPU, ~2-3 min on 2 cores
    python benchmarks/encode_bench.py --device cuda --n 50000 --naive-n 500
    python benchmarks/encode_bench.py --json out.json --spark
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model, resolve_device  # noqa: E402
from clinicalbert_spark.encode.batching import build_segments  # noqa: E402
from clinicalbert_spark.testing import CLINICAL_WORDS, build_random_bert_base  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "mtsamples.csv"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def load_sentences(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` sentences from MTSamples transcriptions (crude split), or synthetic ones."""
    sentences: list[str] = []
    if CORPUS.is_file():
        csv.field_size_limit(sys.maxsize)
        with CORPUS.open(newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.DictReader(f):
                text = (row.get("transcription") or "").replace(",  ", ". ")
                for s in re.split(r"(?<=[.!?])\s+", text):
                    s = s.strip()
                    if len(s.split()) >= 3:
                        sentences.append(s)
        source = f"mtsamples ({len(sentences)} sentences)"
    if not sentences:
        rng = random.Random(seed)
        for _ in range(n):
            k = max(3, int(rng.lognormvariate(2.7, 0.6)))
            sentences.append(" ".join(rng.choice(CLINICAL_WORDS) for _ in range(k)).capitalize() + ".")
        source = "synthetic"
    random.Random(seed).shuffle(sentences)
    return sentences[:n], source


def rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(config, seg_lengths: np.ndarray) -> float:
    """Forward FLOPs over segments of the given real lengths (formula in the module docstring)."""
    d, layers, ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    # per layer: Q,K,V,O projections (4 d^2) + FFN (2 d ff), weights and biases
    p_ne = layers * (4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d)
    L = seg_lengths.astype(np.float64)
    return float((2 * p_ne * L + 4 * layers * d * L**2).sum())


def run_naive(loaded, sentences, device, max_length):
    from transformers import pipeline

    pipe = pipeline(
        "feature-extraction",
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        device=device,
        tokenize_kwargs={"truncation": True, "max_length": max_length},
    )
    pipe(sentences[0], return_tensors=True)  # warm-up
    tokens = 0
    sync(device)
    t0 = time.perf_counter()
    for s in sentences:
        h = pipe(s, return_tensors=True)  # [1, L, H]
        _ = h[0].mean(0)
        tokens += h.shape[1]
    sync(device)
    dt = time.perf_counter() - t0
    return {"sentences": len(sentences), "tokens": tokens, "seconds": dt,
            "sentences_per_s": len(sentences) / dt, "tokens_per_s": tokens / dt}


def run_batched(loaded, sentences, device, cfg):
    enc = SentenceEncoder(loaded, cfg, device=device)
    enc.encode(sentences[: min(256, len(sentences))])  # warm-up (and compile, if asked)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    res = enc.encode(sentences)
    sync(device)
    dt = time.perf_counter() - t0
    st = res.stats
    out = {
        "sentences": len(sentences),
        "tokens": st.real_tokens,
        "padded_tokens": st.padded_tokens,
        "padding_efficiency": st.padding_efficiency,
        "batches": st.batches,
        "oom_retries": st.oom_retries,
        "windowed_rows": int((res.n_windows > 1).sum()),
        "seconds": dt,
        "prepare_seconds": st.prepare_seconds,
        "sentences_per_s": len(sentences) / dt,
        "tokens_per_s": st.real_tokens / dt,
        "max_tokens": enc.max_tokens,
        "precision": enc.precision,
    }
    if device.type == "cuda":
        out["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["_embeddings"] = res.embeddings
    return out, enc


def run_spark(model_dir, sentences, args):
    """(c) The Spark job end to end: ``jobs/embed_sentences.py``'s body (read a Parquet
    sentences table, encode in ``mapInPandas`` with one model per Python worker, write the
    embeddings table) on a local SparkSession using every core. The session is started before
    the clock (a cluster has one already); worker start-up and model loading are inside it.
    """
    from clinicalbert_spark.config import PipelineConfig
    from clinicalbert_spark.commands import embed_job
    from clinicalbert_spark.spark.session import get_spark

    cores = os.cpu_count() or 1
    cfg = PipelineConfig.model_validate({
        "encode": {"model": str(model_dir), "pooling": args.pooling,
                   "max_length": args.max_length, "max_tokens": args.max_tokens,
                   "precision": args.precision, "compile": args.compile, "device": args.device},
        "spark": {"master": f"local[{cores}]", "app_name": "encode-bench",
                  "conf": {"spark.ui.enabled": "false"}},
    })
    work = Path(tempfile.mkdtemp(prefix="encode-bench-spark-"))
    sentences_frame(sentences).to_parquet(work / "sentences.parquet", index=False)
    cfg.input.path = str(work / "sentences.parquet")
    cfg.output.path = str(work / "embeddings")
    # Each of the `cores` Python workers runs torch on one thread (what the job does on an
    # executor with one core per task); (b) runs one process on all threads.
    os.environ["CBS_TORCH_THREADS"] = "1"
    spark = get_spark(cfg.spark)
    try:
        t0 = time.perf_counter()
        embed_job(cfg)
        dt = time.perf_counter() - t0
        n = spark.read.parquet(cfg.output.path).count()
    finally:
        spark.stop()
    return {"sentences": n, "seconds": dt, "sentences_per_s": n / dt, "workers": cores}


def sentences_frame(sentences):
    """The sentences as a sentences table (``schemas.SENTENCES`` columns the embed stage reads)."""
    import pandas as pd

    return pd.DataFrame({"note_id": [f"n{i // 20}" for i in range(len(sentences))],
                         "sentence_index": np.arange(len(sentences), dtype=np.int32),
                         "start": np.zeros(len(sentences), dtype=np.int32),
                         "end": np.array([len(x) for x in sentences], dtype=np.int32),
                         "section_category": "other", "text": sentences, "note_hash": "h"})


def _executor_setup(model_dir, sentences, args):
    """A sentences Parquet file and a loaded, warmed-up worker encoder (outside the clock)."""
    from clinicalbert_spark.config import EncodeConfig
    from clinicalbert_spark.spark.encode import get_encoder

    cfg = EncodeConfig(model=str(model_dir), pooling=args.pooling, max_length=args.max_length,
                       max_tokens=args.max_tokens, precision=args.precision,
                       compile=args.compile, device=args.device)
    work = Path(tempfile.mkdtemp(prefix="encode-bench-exec-"))
    sentences_frame(sentences).to_parquet(work / "sentences.parquet", index=False)
    get_encoder(cfg).encode(sentences[: min(256, len(sentences))])  # load + warm-up
    return cfg, work / "sentences.parquet"


def _executor_run(cfg, path, device) -> dict:
    """The timed part of (c'): one task's rows through ``embed_batches``, output to Arrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clinicalbert_spark.config import SparkConfig
    from clinicalbert_spark.spark.encode import SENTENCE_KEEP, embed_batches

    arrow_rows = SparkConfig().arrow_batch_size
    sync(resolve_device(device))
    t0 = time.perf_counter()
    frames = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=arrow_rows))
    rows = out_bytes = tokens = 0
    for out in embed_batches(frames, cfg, "bench", None, keep=SENTENCE_KEEP, stats=True):
        batch = pa.Table.from_pandas(out, preserve_index=False)  # what the worker sends
        rows += batch.num_rows
        out_bytes += batch.nbytes
        tokens += int(out["_real_tokens"].sum())
    sync(resolve_device(device))
    dt = time.perf_counter() - t0
    return {"sentences": rows, "tokens": tokens, "seconds": dt, "sentences_per_s": rows / dt,
            "tokens_per_s": tokens / dt, "arrow_batch_rows": arrow_rows,
            "output_arrow_bytes": out_bytes}


def run_executor_path(model_dir, sentences, args):
    """(c') One Spark task's work without Spark (see the module docstring). The encoder is
    loaded (and cached, as on a worker) before the clock, like (b)."""
    cfg, path = _executor_setup(model_dir, sentences, args)
    return _executor_run(cfg, path, args.device)


def _executor_task(model_dir, sentences, args, barrier, results):
    cfg, path = _executor_setup(model_dir, sentences, args)
    barrier.wait()
    res = _executor_run(cfg, path, args.device)
    res["ended"] = time.time()
    results.put(res)


def run_executor_tasks(model_dir, sentences, args, tasks: int) -> dict:
    """(c'') ``tasks`` Python workers sharing the device, as with
    ``spark.task.resource.gpu.amount = 1/tasks``: each runs (c') on its share of the
    sentences, all released at once; the rate is all rows over the time to the last one."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(tasks + 1), ctx.Queue()
    procs = [ctx.Process(target=_executor_task, args=(model_dir, sentences[i::tasks], args, barrier,
                                                      results)) for i in range(tasks)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.time()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
    dt = max(r["ended"] for r in done) - started
    rows, tokens = sum(r["sentences"] for r in done), sum(r["tokens"] for r in done)
    return {"tasks": tasks, "sentences": rows, "tokens": tokens, "seconds": dt,
            "sentences_per_s": rows / dt, "tokens_per_s": tokens / dt}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=2000, help="sentences for the batched run")
    ap.add_argument("--naive-n", type=int, default=150, help="sentences for the naive baseline")
    ap.add_argument("--max-tokens", type=int, default=None, help="token budget per batch")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="auto: bf16 on GPU; on CPU bf16 with AMX, else int8 (see precision_bench.py)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--model", default=None, help="model dir (default: random BERT-base)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--spark", action="store_true", help="also time the Spark job (c)")
    ap.add_argument("--executor-path", action="store_true",
                    help="also time one Spark task's work without Spark (c')")
    ap.add_argument("--tasks-per-device", type=int, nargs="*", default=[],
                    help="also time (c') with this many concurrent workers on the device (c'')")
    ap.add_argument("--compare-precision", default=None, choices=["fp32", "bf16", "fp16", "int8"],
                    help="also run (b) at this precision (e.g. bf16 on a CPU with AMX) and "
                         "report its speed and cosine agreement with the first (b)")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sentences, source = load_sentences(args.n)
    tmp = tempfile.TemporaryDirectory(prefix="encode-bench-")
    model_dir = Path(args.model) if args.model else build_random_bert_base(Path(tmp.name) / "bert-base")
    loaded = load_model(model_dir)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    cfg = EncoderConfig(pooling=args.pooling, max_length=args.max_length, max_tokens=args.max_tokens,
                        precision=args.precision, compile=args.compile)

    ids = loaded.tokenizer(sentences, add_special_tokens=False)["input_ids"]
    lens = np.array([len(x) + 2 for x in ids])
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"model={'random BERT-base' if not args.model else model_dir} params={n_params / 1e6:.1f}M")
    print(f"sentences: {len(sentences)} from {source}; tokens/sentence mean={lens.mean():.1f} "
          f"p50={np.median(lens):.0f} p95={np.percentile(lens, 95):.0f} max={lens.max()} "
          f"> {args.max_length}: {(lens > args.max_length).mean():.1%}")
    results: dict = {"device": str(device), "threads": torch.get_num_threads(), "n": len(sentences),
                     "source": source, "mean_tokens": float(lens.mean()), "params": n_params}

    if not args.skip_naive:
        naive = run_naive(loaded, sentences[: args.naive_n], device, args.max_length)
        results["naive"] = naive
        results["rss_after_naive_mib"] = rss_mib()
        print(f"(a) naive pipeline, 1 sentence/call, n={naive['sentences']}: "
              f"{naive['sentences_per_s']:8.1f} sentences/s {naive['tokens_per_s']:9.0f} tokens/s "
              f"({naive['seconds']:.1f} s)")

    batched, enc = run_batched(loaded, sentences, device, cfg)
    base_emb = batched.pop("_embeddings")
    results["batched"] = batched
    results["peak_rss_mib"] = rss_mib()
    print(f"(b) SentenceEncoder, n={batched['sentences']}, budget={batched['max_tokens']} tokens, "
          f"{batched['precision']}: {batched['sentences_per_s']:8.1f} sentences/s "
          f"{batched['tokens_per_s']:9.0f} tokens/s ({batched['seconds']:.1f} s, {batched['batches']} batches, "
          f"{batched['windowed_rows']} windowed rows)")
    print(f"    padding efficiency (real/computed tokens): {batched['padding_efficiency']:.3f}; "
          f"oom retries: {batched['oom_retries']}; host preparation (tokenize, windows) "
          f"{batched['prepare_seconds']:.2f} s of {batched['seconds']:.2f} s")
    if "naive" in results:
        ratio = batched["sentences_per_s"] / results["naive"]["sentences_per_s"]
        results["speedup_b_over_a"] = ratio
        print(f"    speed-up (b)/(a): {ratio:.1f}x sentences/s")
    mem = f"peak RSS {results['peak_rss_mib']:.0f} MiB (process-wide, all phases)"
    if device.type == "cuda":
        mem += f"; CUDA max allocated during (b) {batched['cuda_max_memory_allocated_mib']:.0f} MiB"
        seg = build_segments(ids, max_length=args.max_length, stride=cfg.effective_stride,
                             long_policy=cfg.long_policy, cls_id=enc.cls_id, sep_id=enc.sep_id)
        flops = model_flops(loaded.config, seg.lengths)
        achieved = flops / batched["seconds"] / 1e12
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        results.update(gpu=name, model_tflops=achieved, peak_tflops=peak,
                       mfu=achieved / peak if peak else None)
        print(f"    GPU {name}: {achieved:.1f} model TFLOP/s"
              + (f", MFU {achieved / peak:.1%} of {peak:.0f} TFLOP/s dense" if peak else ""))
    print(mem)

    if args.compare_precision:
        import dataclasses

        cfg2 = dataclasses.replace(cfg, precision=args.compare_precision)
        alt, _ = run_batched(loaded, sentences, device, cfg2)
        emb2 = alt.pop("_embeddings").astype(np.float64)
        a = base_emb.astype(np.float64)
        cos = (a * emb2).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(emb2, axis=1))
        alt["cosine_vs_first_min"], alt["cosine_vs_first_mean"] = float(cos.min()), float(cos.mean())
        results["batched_alt"] = alt
        print(f"(b') SentenceEncoder at {alt['precision']}: {alt['sentences_per_s']:8.1f} sentences/s "
              f"{alt['tokens_per_s']:9.0f} tokens/s ({alt['seconds']:.1f} s); "
              f"{alt['sentences_per_s'] / batched['sentences_per_s']:.1f}x the first (b); "
              f"cosine to it: min {cos.min():.4f}, mean {cos.mean():.5f}")
        if "naive" in results:
            results["speedup_b_alt_over_a"] = alt["sentences_per_s"] / results["naive"]["sentences_per_s"]
            print(f"    speed-up (b')/(a): {results['speedup_b_alt_over_a']:.1f}x sentences/s")

    if args.spark:
        spark_res = run_spark(model_dir, sentences, args)
        if spark_res:
            results["spark"] = spark_res
            ratio_c = spark_res["sentences_per_s"] / batched["sentences_per_s"]
            results["spark_over_batched"] = ratio_c
            print(f"(c) Spark job end to end (read Parquet, encode, write Parquet), "
                  f"{spark_res['workers']} workers x 1 thread, n={spark_res['sentences']}: "
                  f"{spark_res['sentences_per_s']:8.1f} sentences/s ({spark_res['seconds']:.1f} s); "
                  f"(c)/(b) = {ratio_c:.2f}")
    if args.executor_path:
        ex = run_executor_path(model_dir, sentences, args)
        results["executor_path"] = ex
        ratio_e = ex["sentences_per_s"] / batched["sentences_per_s"]
        results["executor_path_over_batched"] = ratio_e
        print(f"(c') one Spark task's work without Spark (Parquet -> Arrow batches of "
              f"{ex['arrow_batch_rows']} -> embed_batches -> Arrow), n={ex['sentences']}: "
              f"{ex['sentences_per_s']:8.1f} sentences/s {ex['tokens_per_s']:9.0f} tokens/s ({ex['seconds']:.1f} s); "
              f"(c')/(b) = {ratio_e:.2f}")
    for tasks in args.tasks_per_device:
        mt = run_executor_tasks(model_dir, sentences, args, tasks)
        results.setdefault("executor_tasks", []).append(mt)
        print(f"(c'') {tasks} workers sharing {device.type}, each (c') on 1/{tasks} of the rows: "
              f"{mt['sentences_per_s']:8.1f} sentences/s {mt['tokens_per_s']:9.0f} tokens/s "
              f"({mt['seconds']:.1f} s); vs (b) {mt['sentences_per_s'] / batched['sentences_per_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    tmp.cleanup()
    return results


if __name__ == "__main__":
    main()
