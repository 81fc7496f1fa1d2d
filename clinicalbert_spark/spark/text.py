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
