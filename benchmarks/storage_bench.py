"""Vector storage formats (``encode.vector_storage``): bytes on disk and retrieval agreement.

One run, same vectors for every format:

vectors   -- ``--n`` distinct real sentences (the rules segmenter over MTSamples from
             ``../shared/corpora``; the demo corpus without it) embedded once in fp32 with
             all-MiniLM-L6-v2 (384-d, the offline stand-in with trained weights; mean pooling)
             and, with ``--bert-base``, a randomly initialised BERT-base (768-d, the shape of
             Bio_ClinicalBERT; precision ``auto``).
tables    -- the ``embeddings`` table written by Spark's Parquet writer (zstd, as the
             pipeline writes it; schema ``schemas.EMBEDDINGS``) once per format, every column
             filled as the embed stage fills it: bytes on disk per sentence (all files), the
             vector columns' share (from the Parquet footers), the ratio to float32.
agreement -- ``--queries`` sentences as queries (their float32 vectors, as a query would be
             embedded), exact top-10 cosine neighbours among all the others in the decoded
             table vs in float32: mean overlap, and the share of queries whose float32 top-1
             is the format's top-1; mean / min cosine of each decoded vector to its float32
             original.
decoding  -- (``--decode``) seconds per million values decoded by the DuckDB SQL macro of
             docs/sql.md, the query helper's numpy ``cbs_f16``, and the Spark SQL view.

Usage::

    python benchmarks/storage_bench.py                       # MiniLM, 12,000 sentences
    python benchmarks/storage_bench.py --bert-base --decode --json out.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

import numpy as np  # noqa: E402

from clinicalbert_spark import schemas  # noqa: E402
from clinicalbert_spark import vectors as V  # noqa: E402

K = 10


def embed(sentences: list[str], model_dir: Path, precision: str) -> np.ndarray:
    from clinicalbert_spark.encode import EncoderConfig, SentenceEncoder, load_model

    enc = SentenceEncoder(load_model(model_dir),
                          EncoderConfig(pooling="mean", precision=precision), device="cpu")
    t0 = time.perf_counter()
    out = enc.encode(sentences)
    print(f"  embedded {len(sentences)} sentences in {time.perf_counter() - t0:.0f} s "
          f"(precision {enc.precision})", flush=True)
    return out.embeddings.astype(np.float32)


def table_frame(x: np.ndarray, fmt: str, model: str):
    """The embeddings table's rows (less run_id) for vectors ``x``, as the embed stage fills
    them: 8 sentences per note, section categories, counts, lineage."""
    import pandas as pd

    n = len(x)
    cats = np.array(["history_of_present_illness", "physical_exam", "impression",
                     "assessment_and_plan", "hospital_course"])
    rng = np.random.default_rng(0)
    idx = np.arange(n)
    cols = {
        "note_id": (100000 + idx // 8).astype(str), "sentence_index": (idx % 8).astype(np.int32),
        "start": (idx % 8 * 60).astype(np.int32), "end": (idx % 8 * 60 + 50).astype(np.int32),
        "section_category": cats[idx // 3 % len(cats)], "model": model, "model_revision": "local",
        "pooling": "mean", "dim": np.int32(x.shape[1]),
        "n_tokens": rng.integers(5, 60, n).astype(np.int32), "n_windows": np.int32(1),
        "truncated": False, **V.encode_vectors(x, fmt),
        "note_hash": [hashlib.sha256(str(i // 8).encode()).hexdigest()[:32] for i in idx],
        "fingerprint": "0123456789abcdef",
    }
    return pd.DataFrame(cols)[[f.name for f in schemas.EMBEDDINGS.fields]]


def parquet_sizes(path: Path) -> tuple[int, int, int]:
    """(rows, bytes of all data files, compressed bytes of the vector columns)."""
    import pyarrow.parquet as pq

    rows = total = vec = 0
    for f in path.rglob("*.parquet"):
        total += f.stat().st_size
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if col.path_in_schema.split(".")[0] in V.VECTOR_COLUMNS:
                    vec += col.total_compressed_size
    return rows, total, vec


def top_k(corpus: np.ndarray, queries: np.ndarray, q_idx: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` most cosine-similar rows of ``corpus`` to each query (itself
    excluded), ties broken by index."""
    c = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-30)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = q.astype(np.float64) @ c.T.astype(np.float64)
    s[np.arange(len(q_idx)), q_idx] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(c)), s.shape), -s), axis=1)
    return order[:, :k]


def run_model(spark, name: str, x: np.ndarray, args, tmp: Path) -> dict:
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    rng = np.random.default_rng(1)
    q_idx = rng.choice(len(x), min(args.queries, len(x)), replace=False)
    ref = top_k(x, x[q_idx], q_idx, K)
    out: dict = {}
    print(f"\n{name}: {len(x)} sentences x {x.shape[1]} dims, {len(q_idx)} queries, top-{K}")
    print(f"{'format':<9}{'bytes/sentence':>15}{'vector bytes':>14}{'ratio':>7}"
          f"{'top-10 overlap':>16}{'top-1 same':>11}{'mean cos':>11}{'min cos':>11}")
    for fmt in V.FORMATS:
        path = tmp / f"{name}-{fmt}"
        df = spark.createDataFrame(table_frame(x, fmt, name),
                                   schema=schemas.SPECS["embeddings"].schema)
        (df.withColumn("run_id", F.lit("bench")).coalesce(1).write.option("compression", "zstd")
         .partitionBy("run_id").mode("overwrite").parquet(str(path)))
        rows, total, vec = parquet_sizes(path)
        back = pq.read_table(path, columns=list(V.VECTOR_COLUMNS) + ["note_id",
                                                                     "sentence_index"])
        pdf = back.to_pandas()
        order = np.lexsort((pdf.sentence_index.to_numpy(), pdf.note_id.astype(int).to_numpy()))
        dec = np.stack(V.decode_vectors(pdf.iloc[order].reset_index(drop=True)))
        cos = (dec * x).sum(1) / (np.linalg.norm(dec, axis=1) * np.linalg.norm(x, axis=1))
        got = top_k(dec, x[q_idx], q_idx, K)
        overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(ref, got)])
        top1 = float(np.mean(ref[:, 0] == got[:, 0]))
        out[fmt] = {"rows": rows, "bytes_per_sentence": total / rows,
                    "vector_bytes_per_sentence": vec / rows, "top10_overlap": float(overlap),
                    "top1_same": top1, "mean_cosine": float(cos.mean()),
                    "min_cosine": float(cos.min())}
    base = out["float32"]["bytes_per_sentence"]
    for fmt, r in out.items():
        r["ratio_vs_float32"] = r["bytes_per_sentence"] / base
        print(f"{fmt:<9}{r['bytes_per_sentence']:>15.0f}{r['vector_bytes_per_sentence']:>14.0f}"
              f"{r['ratio_vs_float32']:>7.2f}{r['top10_overlap']:>16.4f}{r['top1_same']:>11.3f}"
              f"{r['mean_cosine']:>11.7f}{r['min_cosine']:>11.7f}")
    return out


def decode_speed(spark, tmp: Path, name: str, dim: int) -> dict:
    """Seconds per million float16 / int8 values decoded in SQL (full scans, summed)."""
    import duckdb

    from clinicalbert_spark import query as Q

    text = (REPO / "docs" / "sql.md").read_text()

    def block(engine):
        return re.search(rf"<!-- vector-decoder:{engine} -->\s*```sql\n(.*?)```", text,
                         re.S).group(1)

    res = {}
    for fmt in ("float16", "int8"):
        path = tmp / f"{name}-{fmt}"
        con = duckdb.connect()
        con.execute(f"CREATE VIEW embeddings AS SELECT * FROM read_parquet('{path}/run_id=*/*.parquet')")
        for stmt in block("duckdb").split(";"):
            if stmt.strip():
                con.execute(stmt)
        n = con.execute("SELECT count(*) FROM embeddings").fetchone()[0]
        values = n * dim / 1e6

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) / values

        r = {"duckdb_sql_s_per_mvalue": timed(lambda: con.execute(
            "SELECT sum(list_sum(embedding)) FROM embedding_vectors").fetchall())}
        helper = Q.connect(path.parent, tables=[path.name])
        r["duckdb_helper_s_per_mvalue"] = timed(lambda: helper.execute(
            f'SELECT sum(list_sum(embedding)) FROM "{path.name}"').fetchall())
        spark.read.parquet(str(path)).createOrReplaceTempView("bench_embeddings")
        spark.sql(block("spark").replace("CREATE OR REPLACE VIEW clinical.embedding_vectors",
                                         "CREATE OR REPLACE TEMPORARY VIEW bench_vectors")
                  .replace("clinical.embeddings", "bench_embeddings").rstrip().rstrip(";"))
        r["spark_sql_s_per_mvalue"] = timed(lambda: spark.sql(
            "SELECT sum(aggregate(embedding, 0D, (a, x) -> a + x)) FROM bench_vectors")
            .collect())
        res[fmt] = r
        print(f"  {fmt}: " + ", ".join(f"{k.replace('_s_per_mvalue', '')} {v:.2f} s"
                                       for k, v in r.items()) + " per million values")
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=12000, help="sentences (the table's rows)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--bert-base", action="store_true",
                    help="also a random-init BERT-base (768-d; slow on a CPU)")
    ap.add_argument("--bert-n", type=int, default=None, help="sentences for BERT-base "
                    "(default --n)")
    ap.add_argument("--decode", action="store_true", help="also time the SQL decoders")
    ap.add_argument("--cache", default=None, help="folder to keep the embedded vectors in "
                    "(.npy, no text) between runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from precision_bench import real_sentences

    from clinicalbert_spark.config import SparkConfig
    from clinicalbert_spark.spark.session import get_spark
    from clinicalbert_spark.testing import build_random_bert_base, minilm_path

    sentences, source = real_sentences(args.n)
    print(f"{len(sentences)} distinct sentences from {source}")
    results: dict = {"sentences": len(sentences), "source": source, "queries": args.queries,
                     "k": K, "models": {}}
    tmp_dir = tempfile.TemporaryDirectory(prefix="storage-bench-")
    tmp = Path(tmp_dir.name)
    models = [("all-MiniLM-L6-v2", lambda: minilm_path(), "fp32", len(sentences))]
    if args.bert_base:
        models.append(("random-BERT-base", lambda: build_random_bert_base(tmp / "bert-base"),
                       "auto", args.bert_n or len(sentences)))
    spark = get_spark(SparkConfig(master="local[2]", app_name="storage-bench", conf={
        "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"}))
    try:
        for name, path_fn, precision, n in models:
            cached = Path(args.cache) / f"{name}-{n}.npy" if args.cache else None
            if cached is not None and cached.is_file():
                x = np.load(cached)
            else:
                print(f"\nembedding with {name} ...", flush=True)
                x = embed(sentences[:n], path_fn(), precision)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, x)
            results["models"][name] = run_model(spark, name, x, args, tmp)
            if args.decode and name == models[0][0]:
                print(f"\nSQL decoding, {name} tables (full scan, values summed):")
                results["decode"] = decode_speed(spark, tmp, name, x.shape[1])
    finally:
        spark.stop()
        tmp_dir.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
