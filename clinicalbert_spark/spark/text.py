"""Sentence text for rows that carry none (tables written with ``--no-text``)."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def attach_text(sentences: DataFrame, notes: DataFrame) -> DataFrame:
    """Fill sentence text that is missing from the notes (same ``note_id`` and ``note_hash``).

    Spark's ``substring`` counts code points, as Python's offsets do (its start is 1-based).
    """
    t = notes.select("note_id", "note_hash", F.col("text").alias("_note_text"))
    joined = sentences.join(t, ["note_id", "note_hash"], "left")
    from_note = F.expr("substring(_note_text, start + 1, `end` - start)")
    text = F.coalesce(F.col("text"), from_note) if "text" in sentences.columns else from_note
    return joined.withColumn("text", text).drop("_note_text")


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
