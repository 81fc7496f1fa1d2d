"""Sentence text for rows that carry none (tables written with ``--no-text``)."""
from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T


def attach_text(sentences: DataFrame, notes: DataFrame) -> DataFrame:
    """Fill sentence text that is missing from the notes (same ``note_id`` and ``note_hash``).

    Each note's text is joined once to the list of its sentences' spans and cut in a pandas
    UDF (Python's code-point offsets, batches of notes); the cut texts are joined back by
    sentence. A plain join with SQL ``substring`` copied the whole note into every sentence
    row and walked it from its start per sentence: quadratic in a note's length (2 MB and
    20k sentences: 100 s against 2.1 s, warm this way).
    """
    from pyspark.sql.functions import pandas_udf

    s = sentences if "text" in sentences.columns else \
        sentences.withColumn("text", F.lit(None).cast("string"))
    keys = ["note_id", "note_hash"]
    cut = pandas_udf(_cut_spans, T.ArrayType(T.StringType()))
    spans = (s.where(F.col("text").isNull() & F.col("start").isNotNull()
                     & F.col("end").isNotNull())
             .groupBy(*keys)
             .agg(F.collect_list(F.struct("sentence_index", "start", "end")).alias("_s"))
             .join(notes.select(*keys, F.col("text").alias("_note")), keys))
    texts = (spans.select(*keys, F.explode(F.arrays_zip(
                 F.col("_s.sentence_index").alias("i"),
                 cut(F.col("_note"), F.col("_s.start"), F.col("_s.end")).alias("t"))).alias("_z"))
             .select(*keys, F.col("_z.i").alias("sentence_index"), F.col("_z.t").alias("_cut"))
             .dropDuplicates([*keys, "sentence_index"]))  # a repeated key never adds rows
    out = s.join(texts, [*keys, "sentence_index"], "left")
    return out.select(*[F.coalesce(F.col("text"), F.col("_cut")).alias("text") if c == "text"
                        else F.col(c) for c in s.columns])


def _cut_spans(text: pd.Series, start: pd.Series, end: pd.Series) -> pd.Series:
    """Per note: its text cut at each (start, end) (Python code points)."""
    return pd.Series([[t[a:b] for a, b in zip(st, en)] if isinstance(t, str) else None
                      for t, st, en in zip(text, start, end)])


def find_column(df: DataFrame, name: str) -> str | None:
    """``name`` as a column of ``df``: the exact name, else the one that differs only by case."""
    if name in df.columns:
        return name
    folded = [c for c in df.columns if c.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def as_sentences(df: DataFrame, id_col: str = "note_id", index_col: str = "sentence_index",
                 text_col: str = "text") -> DataFrame:
    """Any sentences table in the columns the embed and predict stages read.

    ``id_col``, ``index_col`` and ``text_col`` are required (found ignoring case); offsets
    and ``section_category`` are used when present, else null; ``note_hash`` when absent is
    the hash of the row's text (so that a changed sentence is told apart).
    """
    from ..errors import InputError

    want = {"note_id": id_col, "sentence_index": index_col, "text": text_col}
    found = {role: find_column(df, name) for role, name in want.items()}
    missing = [want[r] for r, c in found.items() if c is None]
    if missing:
        shown = df.columns[:30] + (["..."] if len(df.columns) > 30 else [])
        raise InputError(f"the sentences input lacks column(s) {missing}; it has {shown} "
                         "(name them with --id-col / --index-col / --text-col)")
    cols = [F.col(found["note_id"]).cast("string").alias("note_id"),
            F.col(found["sentence_index"]).cast("int").alias("sentence_index")]
    for name, typ in (("start", "int"), ("end", "int"), ("section_category", "string")):
        c = find_column(df, name)
        cols.append((F.col(c) if c else F.lit(None)).cast(typ).alias(name))
    text = F.col(found["text"]).cast("string")
    cols.append(text.alias("text"))
    h = find_column(df, "note_hash")
    cols.append((F.col(h).cast("string") if h else F.sha2(text, 256).substr(1, 32)
                 ).alias("note_hash"))
    return df.select(*cols)
