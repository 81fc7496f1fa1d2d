#!/usr/bin/env python
"""Segmentation throughput (one core) and gold-set quality, per backend, in one table.

    python benchmarks/segment_bench.py [--limit N] [--pysbd-limit 300] [--json out.json]
    python benchmarks/segment_bench.py --spark [--spark-mb 100[,300]] [--spark-cores 2]

``--spark``: the bare library (rules, one core) and ``jobs/segment_notes.py`` (Parquet in and
out, ``local[N]``) on the same >= 100 MB corpus (the shared notes repeated under new ids), in
one run; the job's MB/s per core (its own reported seconds, JVM start excluded) over the
library's is the figure to watch (issue: >= 0.6).

Throughput is measured on MTSamples + the PhysioNet MIMIC-II nursing notes from
``../shared/corpora`` (``$CLINICALBERT_CORPORA`` overrides), the same notes for every backend
(pySBD, about 100x slower than the rules, runs on the first ``--pysbd-limit`` notes of the same
list; the table says so). "MB" is 10^6 characters of note text. Both CPU-time throughput (the
single-core figure: this process is single-threaded and BLAS/OpenMP pools are pinned to one
thread) and wall-clock throughput are reported; on a busy machine trust the CPU figure. Model
loading and a warm-up note are excluded. Quality columns come from the development gold set
``tests/data/gold`` (category fit, boundary recall/precision/F1, header lines found ...); the
blind test split is not scored here (score it on purpose, see ``docs/segmentation.md``).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
           "VECLIB_MAXIMUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_v, "1" if _v != "TOKENIZERS_PARALLELISM" else "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinicalbert_spark.segment import BackendUnavailable, available_backends, get_segmenter  # noqa: E402
from clinicalbert_spark.segment.corpora import corpora_dir, read_deid_nursing, read_mtsamples  # noqa: E402
from clinicalbert_spark.segment.evaluate import evaluate, load_gold  # noqa: E402

BACKENDS = ("rules", "spacy_sentencizer", "scispacy", "pysbd")


def _pin_one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        except OSError:
            pass


def _throughput(seg, notes: list[str]) -> dict:
    seg.segment(notes[0])  # warm-up: lazy model load, regex/lexicon caches
    n_chars = sum(len(t) for t in notes)
    n_sents = 0
    c0, w0 = time.process_time(), time.perf_counter()
    for t in notes:
        n_sents += len(seg.segment(t))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "notes": len(notes), "chars": n_chars, "sentences": n_sents,
        "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
        "mb_per_s_cpu": round(n_chars / 1e6 / cpu, 2) if cpu else None,
        "mb_per_s_wall": round(n_chars / 1e6 / wall, 2) if wall else None,
        "notes_per_s_cpu": round(len(notes) / cpu, 1) if cpu else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="notes per corpus (default: all)")
    ap.add_argument("--pysbd-limit", type=int, default=300,
                    help="pySBD runs on only this many of the notes (default 300; 0 = all)")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--corpora", default=None, help="folder of the corpora (default ../shared/corpora)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--spark", action="store_true",
                    help="compare jobs/segment_notes.py with the bare library")
    ap.add_argument("--spark-mb", default="100",
                    help="corpus size(s) in MB; two or more (100,300) also give the marginal speed")
    ap.add_argument("--spark-cores", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to the segment job (e.g. spark.conf.spark.driver.memory=4g)")
    args = ap.parse_args(argv)
    if args.spark:
        return spark_vs_library(args)
    _pin_one_core()

    base = Path(args.corpora) if args.corpora else corpora_dir()
    mts, nur = base / "mtsamples.csv", base / "physionet_deid_nursing" / "id.res"
    if not mts.is_file() and not nur.is_file():
        print(f"no corpora under {base}: expected mtsamples.csv and/or physionet_deid_nursing/id.res "
              f"(see /work/shared/corpora/SOURCES.md); set --corpora or $CLINICALBERT_CORPORA",
              file=sys.stderr)
        return 2
    notes: list[str] = []
    parts = []
    for name, path, reader in (("mtsamples", mts, read_mtsamples), ("nursing", nur, read_deid_nursing)):
        if path.is_file():
            got = [t for _, t in reader(path)][: args.limit]
            notes.extend(got)
            parts.append(f"{name} {len(got)}")
    gold = load_gold()
    print(f"corpus: {' + '.join(parts)} notes, {sum(map(len, notes)) / 1e6:.1f} M chars; "
          f"gold: {len(gold)} notes, {sum(len(g.sentences) for g in gold)} sentences; "
          f"python {platform.python_version()}, 1 core")

    results = []
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name not in available_backends():
            results.append({"backend": name, "skipped": "not installed"})
            continue
        try:
            seg = get_segmenter(name)
        except BackendUnavailable as e:
            results.append({"backend": name, "skipped": str(e)[:80]})
            continue
        subset = notes
        if name == "pysbd" and args.pysbd_limit:
            subset = notes[: args.pysbd_limit]
        print(f"  running {name} on {len(subset)} notes ...", file=sys.stderr, flush=True)
        row = {"backend": name, "version": seg.version, **_throughput(seg, subset)}
        row["subset"] = len(subset) < len(notes)
        row.update({f"gold_{k}": v for k, v in evaluate(seg, gold).totals.items()})
        results.append(row)

    hdr = (f"{'backend':18} {'notes':>6} {'MB/s cpu':>9} {'MB/s wall':>9} {'notes/s':>8} "
           f"{'cat fit':>8} {'recall':>7} {'precis':>7} {'F1':>6} {'headers':>7} {'no-split':>8} "
           f"{'cover':>6} {'mism':>5}")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in results:
        if "skipped" in r:
            print(f"{r['backend']:18} skipped: {r['skipped']}")
            continue
        star = "*" if r["subset"] else " "
        print(f"{r['backend']:18} {r['notes']:>5}{star} {r['mb_per_s_cpu']:>9.2f} {r['mb_per_s_wall']:>9.2f} "
              f"{r['notes_per_s_cpu']:>8.1f} {r['gold_section_accuracy']:>8.3f} "
              f"{r['gold_split_recall']:>7.3f} {r['gold_split_precision']:>7.3f} "
              f"{r['gold_split_f1']:>6.3f} {r['gold_header_recall']:>7.3f} "
              f"{r['gold_must_not_split_kept']:>8.3f} {r['gold_coverage']:>6.3f} {r['gold_mismatches']:>5d}")
    if any(r.get("subset") for r in results):
        print(f"* pySBD ran on the first {args.pysbd_limit} notes only (--pysbd-limit; 0 = all)")
    print("sections for every backend come from the rules splitter (so category fit and headers are "
          "the same); quality columns are on the development gold set (tests/data/gold). The blind "
          "test split is scored on purpose only: python -m clinicalbert_spark.segment.evaluate "
          "--split test")
    if args.json:
        Path(args.json).write_text(json.dumps({"corpus": parts, "results": results}, indent=2))
    return 0


_JAVA: dict[int, bool] = {}  # pid -> whether the process is a JVM (as last sampled)


def _tree_cpu(root: int, seen: dict[int, float]) -> None:
    """Record the CPU seconds (user + system) of ``root`` and every process below it."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        _JAVA[int(d)] = "java" in stat[stat.find("(") + 1:stat.rfind(")")]
        parent[int(d)] = int(fields[1])
        cpu[int(d)] = (int(fields[11]) + int(fields[12])) / tick
    for pid, t in cpu.items():
        p = pid
        while p in parent and p != root and p > 1:
            p = parent[p]
        if p == root:
            seen[pid] = max(seen.get(pid, 0.0), t)


def _library_worker(texts: list[str]) -> float:
    return _throughput(get_segmenter("rules"), texts)["mb_per_s_cpu"]


def _library_on_all_cores(texts: list[str], n: int) -> float:
    """MB/s per core of ``n`` processes segmenting at the same time (the baseline a job on
    ``n`` cores can reach at best: busy neighbours slow a core down)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n) as ex:
        return sum(ex.map(_library_worker, [texts] * n)) / n


def seen_py(seen: dict[int, float]) -> float:
    """CPU seconds of the Python processes among ``seen`` (the job's Python workers)."""
    return sum(t for pid, t in seen.items() if not _JAVA.get(pid, False))


def _spark_job(texts: list[str], target_mb: float, args) -> dict | None:
    """``jobs/segment_notes.py`` on ``local[N]`` over ``target_mb`` MB (the shared notes
    repeated under new ids, Parquet): its reported seconds, wall time and CPU seconds."""
    import shutil
    import subprocess
    import tempfile

    import pandas as pd

    one = sum(len(t) for t in texts)
    reps = max(1, int(target_mb * 1e6 // one) + 1)
    work = Path(tempfile.mkdtemp(prefix="segment-bench-"))
    try:
        rows = [(str(r * 10_000_000 + i), t) for r in range(reps) for i, t in enumerate(texts)]
        df = pd.DataFrame(rows, columns=["ROW_ID", "TEXT"])
        df["SUBJECT_ID"], df["HADM_ID"], df["CATEGORY"] = "1", "2", "General"
        df.to_parquet(work / "notes.parquet", index=False, row_group_size=2000)
        mb = sum(len(t) for t in df.TEXT) / 1e6
        notes = len(df)
        del df, rows
        job = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "segment_notes.py"),
               "--input", str(work / "notes.parquet"), "--output", str(work / "out"),
               "--master", f"local[{args.spark_cores}]", "--set", "spark.conf.spark.ui.enabled=false"]
        for kv in args.set:
            job += ["--set", kv]
        t0 = time.perf_counter()
        proc = subprocess.Popen(job, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        seen: dict[int, float] = {}
        while proc.poll() is None:  # the JVM and its Python workers are not waited for by
            _tree_cpu(proc.pid, seen)  # the job, so rusage misses them: sample /proc
            time.sleep(0.2)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(err[-2000:], file=sys.stderr)
            return None
        secs = float([ln.split()[-1] for ln in out.splitlines()
                      if ln.strip().startswith("seconds")][-1])
        # CPU seconds of the job, its JVM and Python workers (last sample of each process):
        # robust to a busy machine, unlike wall time; start-up and JIT included.
        return {"notes": notes, "reps": reps, "mb": mb, "secs": secs, "wall": wall,
                "cpu": sum(seen.values()), "py": seen_py(seen)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def spark_vs_library(args) -> int:
    """The segment job against the bare library on the same corpus, one run; with two or
    more sizes (``--spark-mb 100,300``) also the job's marginal speed (the difference of the
    largest and smallest runs: the fixed JVM costs cancel)."""
    base = Path(args.corpora) if args.corpora else corpora_dir()
    texts: list[str] = []
    for path, reader in ((base / "mtsamples.csv", read_mtsamples),
                         (base / "physionet_deid_nursing" / "id.res", read_deid_nursing)):
        if path.is_file():
            texts.extend(t for _, t in reader(path))
    if not texts:
        print(f"no corpora under {base}", file=sys.stderr)
        return 2
    n = args.spark_cores
    lib = _throughput(get_segmenter("rules"), texts)["mb_per_s_cpu"]
    lib_n = _library_on_all_cores(texts, n)
    print(f"library (rules, 1 core, CPU time): {lib:.2f} MB/s")
    print(f"library (rules, {n} processes at once, CPU time): {lib_n:.2f} MB/s per core "
          f"(cores that share caches and memory bandwidth: the most {n} busy cores give)")
    runs = []
    for target in sorted(float(x) for x in str(args.spark_mb).split(",") if x.strip()):
        r = _spark_job(texts, target, args)
        if r is None:
            return 1
        runs.append(r)
        per_core = r["mb"] / r["secs"] / n
        print(f"\ncorpus: {r['notes']} notes, {r['mb']:.1f} M chars ({r['reps']} x the shared notes)")
        print(f"segment job (local[{n}], Parquet in/out): {r['secs']:.1f} s "
              f"({r['wall']:.1f} s with JVM start) = {per_core:.2f} MB/s per core")
        print(f"job / library per core (wall): {per_core / lib:.2f} "
              f"(vs {n} at once: {per_core / lib_n:.2f})")
        print(f"segment job CPU time (JVM + Python workers, start-up included): {r['cpu']:.1f} s = "
              f"{r['mb'] / r['cpu']:.2f} MB/s per CPU-second; job / library: "
              f"{r['mb'] / r['cpu'] / lib:.2f}")
        print(f"  of which Python workers {r['py']:.1f} s, JVM {r['cpu'] - r['py']:.1f} s")
        # The Python workers alone bound the job: were the JVM free, the job could run no
        # faster than its workers' CPU spread over the cores.
        print(f"  ceiling with a free JVM (Python workers' CPU over {n} cores): "
              f"{r['mb'] / (r['py'] / n) / n / lib:.2f} of the library per core")
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        d_mb, d_s, d_cpu, d_py = (b["mb"] - a["mb"], b["secs"] - a["secs"],
                                  b["cpu"] - a["cpu"], b["py"] - a["py"])
        if d_s > 0 and d_cpu > 0:
            print(f"\nat the margin ({a['mb']:.0f} -> {b['mb']:.0f} MB; fixed costs cancel): "
                  f"{d_mb / d_s / n:.2f} MB/s per core = {d_mb / d_s / n / lib:.2f} of the library "
                  f"per core (vs {n} at once: {d_mb / d_s / n / lib_n:.2f}); "
                  f"{d_cpu:.1f} CPU-s per {d_mb:.0f} MB (Python {d_py:.1f}, JVM {d_cpu - d_py:.1f}); "
                  f"fixed costs about {a['cpu'] - a['mb'] * d_cpu / d_mb:.1f} CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
