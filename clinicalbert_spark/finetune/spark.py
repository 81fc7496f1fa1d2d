"""The labelled table (and the spans table) of a fine-tuning run, read through Spark.

Any input the project reads: CSV (read exactly, as notes are), Parquet, Delta or a catalog
table. Columns are matched exactly, else ignoring case; a missing one is one
:class:`~clinicalbert_spark.errors.InputError` line naming the columns there are. The rows
come to the driver (fine-tuning tables are labelled by hand: thousands to a few hundred
thousand rows); no value is ever logged or put in a message.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .. import io

ID_SEP = "\x1f"  # joins the values of a composite id (e.g. note_id, sentence_index)

HINT = ("name them with --id-col / --text-col / --label-col / --group-col, "
        "--start-col / --end-col")


def _id_roles(id_cols: Sequence[str]) -> dict[str, str]:
    return {f"id{i}": c for i, c in enumerate(id_cols)}


def _frame(spark: SparkSession, path: str, fmt: str, columns: dict, what: str) -> pd.DataFrame:
    df = io.read_columns(spark, path, fmt, columns, what, HINT, strings=True)
    ids = [F.col(r) for r in columns if r.startswith("id")]
    key = ids[0] if len(ids) == 1 else F.concat_ws(ID_SEP, *ids)
    out = df.select(key.alias("id"), *[F.col(r) for r in columns if not r.startswith("id")],
                    F.col(io.BAD_RECORD_COLUMN).alias("bad"))
    return out.toPandas()


def read_labelled(spark: SparkSession, path: str, fmt: str, id_cols: Sequence[str],
                  text_col: str, label_col: Optional[str], group_col: Optional[str]
                  ) -> pd.DataFrame:
    """``id, text[, label], group, bad`` (strings; ``group`` is the id when there is no
    group column; ``bad`` is set for a CSV record that could not be read)."""
    cols = {**_id_roles(id_cols), "text": text_col}
    if label_col:
        cols["label"] = label_col
    if group_col:
        cols["group"] = group_col
    pdf = _frame(spark, path, fmt, cols, "labels")
    if not group_col:
        pdf["group"] = pdf["id"]
    return pdf


def read_spans(spark: SparkSession, path: str, fmt: str, id_cols: Sequence[str],
               start_col: str, end_col: str, label_col: str) -> pd.DataFrame:
    """``id, start, end, label, bad`` of a spans table (offsets as strings)."""
    cols = {**_id_roles(id_cols), "start": start_col, "end": end_col, "label": label_col}
    return _frame(spark, path, fmt, cols, "spans")


def read_examples(spark: SparkSession, labels: str, fmt: str, id_cols: Sequence[str],
                  text_col: str, label_col: str, group_col: Optional[str] = None,
                  spans: Optional[str] = None, spans_fmt: str = "auto",
                  start_col: str = "start", end_col: str = "end"):
    """The usable rows of a labelled table (:class:`~clinicalbert_spark.finetune.data.
    Labelled`): a label per row, or with ``spans`` the spans table's labelled spans per row
    (``label_col`` then names the spans' label column)."""
    from .data import assemble_labels, assemble_spans

    texts = read_labelled(spark, labels, fmt, id_cols, text_col,
                          None if spans else label_col, group_col)
    if not spans:
        return assemble_labels(texts)
    return assemble_spans(texts, read_spans(spark, spans, spans_fmt, id_cols, start_col,
                                            end_col, label_col))
