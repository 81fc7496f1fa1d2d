"""Spark glue of the pretraining data job: sentences table -> instances table + manifest.

Notes are hashed into ``buckets`` by ``xxhash64(note_id)`` (a function of the id alone) and each
bucket is built by :func:`clinicalbert_spark.pretrain.documents.instances_frame` in one
``groupBy(bucket).applyInPandas`` call. Every random choice is seeded per (note, copy) and the
pool of random next sentences is the note's bucket, so the table is the same whatever the
number of partitions or executors.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from .documents import OUTPUT_COLUMNS, instances_frame
from .instances import InstanceSettings

log = logging.getLogger("clinicalbert_spark.pretrain")

_IA = T.ArrayType(T.IntegerType(), False)

INSTANCES = T.StructType([
    T.StructField("note_id", T.StringType(), False),
    T.StructField("copy", T.IntegerType(), False),
    T.StructField("instance_index", T.IntegerType(), False),
    T.StructField("input_ids", _IA, False),
    T.StructField("token_type_ids", _IA, False),
    T.StructField("length", T.IntegerType(), False),
    T.StructField("masked_positions", _IA, False),
    T.StructField("masked_ids", _IA, False),
    T.StructField("is_random_next", T.BooleanType(), False),
    T.StructField("sections", T.ArrayType(T.StringType(), False), True),
])
assert [f.name for f in INSTANCES.fields] == OUTPUT_COLUMNS

DEFAULT_BUCKETS = 65536


def select_sections(sentences: DataFrame, keep: Optional[Sequence[str]] = None,
                    drop: Optional[Sequence[str]] = None) -> DataFrame:
    """Only the sentences whose ``section_category`` is in ``keep`` / not in ``drop``."""
    if keep:
        sentences = sentences.where(F.col("section_category").isin(list(keep)))
    if drop:
        sentences = sentences.where(F.col("section_category").isNull()
                                    | ~F.col("section_category").isin(list(drop)))
    return sentences


def make_instances(sentences: DataFrame, tokenizer_path: str, settings: InstanceSettings,
                   tag_sections: bool = False, buckets: int = DEFAULT_BUCKETS,
                   partitions: Optional[int] = None, vocab=None) -> DataFrame:
    """Instances (:data:`INSTANCES`) of a frame in the shape of ``as_sentences``' output.

    ``tokenizer_path`` is a local folder every executor can read (the driver's preflight);
    ``vocab`` (:class:`~clinicalbert_spark.pretrain.instances.Vocab`, read on the driver) is
    shipped to the workers so that they need only the ``tokenizers`` library.
    """
    if vocab is None:
        from .documents import load_tokenizer

        vocab = load_tokenizer(tokenizer_path)[1]
    df = (sentences.where(F.col("text").isNotNull())
          .select("note_id", "sentence_index", "text", "section_category")
          .withColumn("_bucket", F.pmod(F.xxhash64("note_id"), F.lit(int(buckets)))))
    if partitions:
        df = df.repartition(int(partitions), "_bucket")

    def build(pdf):
        return instances_frame(pdf.drop(columns=["_bucket"]), tokenizer_path, settings,
                               tag_sections, vocab)

    return df.groupBy("_bucket").applyInPandas(build, INSTANCES)


def instance_stats(instances: DataFrame, mask_id: int) -> dict:
    """Counts for the manifest: instances, notes, tokens, predictions by kind, random nexts."""
    kind = F.expr(f"zip_with(masked_positions, masked_ids, (p, m) -> CASE "
                  f"WHEN element_at(input_ids, p + 1) = {int(mask_id)} THEN 0 "
                  f"WHEN element_at(input_ids, p + 1) = m THEN 2 ELSE 1 END)")
    df = instances.withColumn("_k", kind)
    r = df.agg(
        F.count("*").alias("instances"),
        F.countDistinct("note_id").alias("notes"),
        F.sum("length").alias("tokens"),
        F.sum(F.size("masked_positions")).alias("predictions"),
        F.max(F.size("masked_positions")).alias("max_predictions"),
        F.sum(F.size(F.expr("filter(_k, k -> k = 0)"))).alias("mask"),
        F.sum(F.size(F.expr("filter(_k, k -> k = 1)"))).alias("random"),
        F.sum(F.size(F.expr("filter(_k, k -> k = 2)"))).alias("keep"),
        F.sum(F.col("is_random_next").cast("long")).alias("random_next"),
    ).first().asDict()
    out = {k: int(v or 0) for k, v in r.items()}
    p, t = out["predictions"], out["tokens"]
    out["masked_share"] = p / t if t else 0.0
    out["mask_share"] = out["mask"] / p if p else 0.0
    out["random_share"] = out["random"] / p if p else 0.0
    out["keep_share"] = out["keep"] / p if p else 0.0
    out["mean_length"] = t / out["instances"] if out["instances"] else 0.0
    return out


def write_manifest(spark, output: str, manifest: dict) -> str:
    """``<output>/_manifest.json`` (Spark and pyarrow skip ``_`` files when reading)."""
    from ..state import _write_json_atomic, local_path

    # Written by this process (no py4j: the same over Spark Connect), atomically, on the local
    # or mounted file system that the project's tables use.
    path = local_path(output.rstrip("/")) / "_manifest.json"
    _write_json_atomic(path, manifest)
    return str(path)
