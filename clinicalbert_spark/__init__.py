"""clinicalbert-spark: clinical notes -> sections, sentences, Bio_ClinicalBERT embeddings and
predictions on Spark, written to Parquet or Delta tables.

The public API works on any Spark DataFrame, on a classic session or over Spark Connect::

    from clinicalbert_spark import segment_notes, embed, predict, encoder_udf

See :mod:`clinicalbert_spark.api`. The library is layered as the data flows:
:mod:`clinicalbert_spark.segment` (pure Python), :mod:`clinicalbert_spark.encode` (pure
torch), :mod:`clinicalbert_spark.spark` (thin Spark glue), :mod:`clinicalbert_spark.pipeline`
(the incremental run) and :mod:`clinicalbert_spark.state` (table state).
"""
__version__ = "0.2.1"

__all__ = ["segment_notes", "embed", "predict", "encoder_udf", "DEFAULT_MODEL"]


def __getattr__(name):
    # Lazy, so that the pure modules (segment, encode) import without pyspark on workers.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'clinicalbert_spark' has no attribute {name!r}")
