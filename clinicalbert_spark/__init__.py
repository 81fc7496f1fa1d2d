"""clinicalbert-spark: clinical notes -> sections, sentences, Bio_ClinicalBERT embeddings and
predictions on Spark, written to Parquet or Delta tables.

The library is layered as the data flows: :mod:`clinicalbert_spark.segment` (pure Python),
:mod:`clinicalbert_spark.encode` (pure torch), :mod:`clinicalbert_spark.spark` (thin Spark glue),
:mod:`clinicalbert_spark.pipeline` (the incremental run), :mod:`clinicalbert_spark.io`.
"""
__version__ = "0.1.0"
