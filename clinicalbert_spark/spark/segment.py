"""Notes -> sentences: the segmenter runs in a scalar Arrow UDF, one row per note.

Only the note text (and id) crosses to Python, and only sentence offsets, texts and section
labels come back, as arrays per note: the note's other columns stay in the JVM, where the
sentence rows and their repeated metadata are made by ``posexplode``. Building per-sentence
Python rows of every column was much of the job's cost over the bare library.
"""
from __future__ import annotations

import os
from typing import Iterator, Tuple

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..segment import get_segmenter
from .. import schemas
from ..io import NOTE_COLUMNS, REASON_COLUMNS, rejected_records

_SEGMENTERS: dict[str, object] = {}  # one per Python worker, reused across tasks
ARROW_UDF = hasattr(F, "arrow_udf")  # Spark 4.1+; older Sparks get a pandas UDF

_INTS = T.ArrayType(T.IntegerType())
_STRS = T.ArrayType(T.StringType())
# Per note: sentence arrays (start, end, and positions into the section arrays), then the
# sections the sentences use (index, title, category), the same for sub-sections, and the
# error (exception type name) of a note the segmenter failed on.
NOTE_SEGMENTS = T.StructType([
    T.StructField("start", _INTS), T.StructField("end", _INTS), T.StructField("text", _STRS),
    T.StructField("sec", _INTS), T.StructField("sub", _INTS),
    T.StructField("sec_index", _INTS), T.StructField("sec_title", _STRS),
    T.StructField("sec_category", _STRS),
    T.StructField("sub_index", _INTS), T.StructField("sub_title", _STRS),
    T.StructField("sub_category", _STRS),
    T.StructField("error", T.StringType()),
])
_FIELDS = NOTE_SEGMENTS.fieldNames()
SEG_COLUMN = "_seg"


def _segmenter(backend: str):
    seg = _SEGMENTERS.get(backend)
    if seg is None:
        seg = _SEGMENTERS[backend] = get_segmenter(backend)
    return seg


# Which list offsets each array of NOTE_SEGMENTS follows: per sentence, per section used,
# per sub-section used ("error" is one value per note).
_GROUPS = {"start": 0, "end": 0, "text": 0, "sec": 0, "sub": 0, "sec_index": 1,
           "sec_title": 1, "sec_category": 1, "sub_index": 2, "sub_title": 2, "sub_category": 2}


class _Columns:
    """The flat values of one batch's :data:`NOTE_SEGMENTS` arrays, with list offsets per
    note: Arrow list arrays are made from them at once, with no per-note Python containers
    (per-note dicts, arrays and a pandas frame cost ~40% on top of the segmenter)."""

    def __init__(self) -> None:
        self.values: dict[str, list] = {k: [] for k in _FIELDS}
        self.offsets = ([0], [0], [0])  # sentences, sections, sub-sections

    def add(self, text: str, sentences, include_text: bool) -> None:
        v = self.values
        sec_index, sec_title, sec_category = v["sec_index"], v["sec_title"], v["sec_category"]
        sub_index, sub_title, sub_category = v["sub_index"], v["sub_title"], v["sub_category"]
        start, end, cut, sec, sub_pos = v["start"], v["end"], v["text"], v["sec"], v["sub"]
        secs: dict[int, int] = {}
        subs: dict[int, int] = {}
        for s in sentences:
            pos = secs.get(s.section_index)
            if pos is None:
                pos = secs[s.section_index] = len(secs)
                sec_index.append(s.section_index)
                sec_title.append(s.section_title)
                sec_category.append(s.section_category)
            sub = None
            if s.subsection_index is not None:
                sub = subs.get(s.subsection_index)
                if sub is None:
                    sub = subs[s.subsection_index] = len(subs)
                    sub_index.append(s.subsection_index)
                    sub_title.append(s.subsection_title)
                    sub_category.append(s.subsection_category)
            start.append(s.start)
            end.append(s.end)
            # Cut here, not with SQL substring: that walks the note from its start for every
            # sentence (quadratic on a long note).
            cut.append(text[s.start:s.end] if include_text else None)
            sec.append(pos)
            sub_pos.append(sub)
        self.close()

    def close(self, error: str | None = None) -> None:
        """End the note's row: an error row (null arrays) when ``error`` is given."""
        for off, key in zip(self.offsets, ("start", "sec_index", "sub_index")):
            off.append(len(self.values[key]))
        self.values["error"].append(error)

    def to_arrow(self) -> pa.StructArray:
        mask = pa.array([e is not None for e in self.values["error"]], pa.bool_())
        offsets = [pa.array(off, pa.int32()) for off in self.offsets]
        arrays = []
        for field in NOTE_SEGMENTS.fields:
            values = self.values[field.name]
            if field.name not in _GROUPS:
                arrays.append(pa.array(values, pa.string()))
                continue
            typ = pa.int32() if isinstance(field.dataType.elementType, T.IntegerType) else pa.string()
            arrays.append(pa.ListArray.from_arrays(offsets[_GROUPS[field.name]],
                                                   pa.array(values, typ), mask=mask))
        return pa.StructArray.from_arrays(arrays, names=_FIELDS)


def segment_batch(texts, seg, include_text: bool = True, fail: set | None = None,
                  note_ids=None) -> pa.StructArray:
    """One :data:`NOTE_SEGMENTS` struct per note of ``texts`` (a sequence or Arrow array of
    strings; null is an empty note). A note that fails becomes an error row (the exception
    type name only: messages can quote the note), never a failed batch. ``fail`` (tests
    only) holds ``note_ids`` the segmenter is to fail on."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = texts.to_pylist()
    ids = note_ids.to_pylist() if fail and note_ids is not None else None
    out = _Columns()
    for i, text in enumerate(texts):
        text = text if isinstance(text, str) else ""
        try:
            if ids is not None and ids[i] in fail:
                raise RuntimeError("injected segmentation error (CBS_INJECT_SEGMENT_ERROR)")
            sentences = seg.segment(text)
        except Exception as e:  # noqa: BLE001 - one bad note never fails the job
            out.close(type(e).__name__)
            continue
        if sentences:
            out.add(text, sentences, include_text)
        else:  # cannot happen for non-blank text; accounted for all the same
            out.close("NoSentences")
    return out.to_arrow()


def segment_arrays(batches: Iterator[Tuple[pa.Array, pa.Array]], backend: str,
                   include_text: bool = True) -> Iterator[pa.StructArray]:
    """Arrow batches of (note_id, text) -> :func:`segment_batch` of each."""
    seg = _segmenter(backend)
    # Tests only: the segmenter "fails" on these note ids (the rejects path end to end).
    fail = set(filter(None, os.environ.get("CBS_INJECT_SEGMENT_ERROR", "").split(",")))
    for note_ids, texts in batches:
        yield segment_batch(texts, seg, include_text, fail or None, note_ids)


def _segment_udf(backend: str, include_text: bool):
    """The segmenter as a vectorized UDF: an Arrow UDF where Spark has them (4.1+), else the
    same body in a pandas UDF (Spark 3.5, 4.0: the result goes through pandas once more)."""
    if ARROW_UDF:
        from pyspark.sql.functions import arrow_udf

        def fn(it: Iterator[Tuple[pa.Array, pa.Array]]) -> Iterator[pa.Array]:
            return segment_arrays(it, backend, include_text)

        return arrow_udf(fn, NOTE_SEGMENTS)

    from pyspark.sql.functions import pandas_udf

    def pandas_fn(it: Iterator[Tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        arrays = ((pa.Array.from_pandas(i), pa.Array.from_pandas(t)) for i, t in it)
        for struct in segment_arrays(arrays, backend, include_text):
            yield pa.RecordBatch.from_struct_array(struct).to_pandas()

    return pandas_udf(pandas_fn, NOTE_SEGMENTS)


def segment_notes(notes: DataFrame, backend: str = "rules", include_text: bool = True,
                  partitions: int | None = None) -> DataFrame:
    """The notes with a :data:`NOTE_SEGMENTS` column (``_seg``); :func:`split_segment_output`
    turns it into sentences and rejects. Persist it when both are used.

    ``notes`` has the columns of :class:`clinicalbert_spark.io.Notes.notes`, or is a
    ``Notes.records`` frame: its rejected records (no text) pass through unsegmented and
    come out with the rejects, so one pass over the input gives both tables.
    """
    # Validate the backend on the driver so a missing optional model fails fast and clearly.
    seg = get_segmenter(backend)
    df = notes.select(*NOTE_COLUMNS, *[c for c in REASON_COLUMNS if c in notes.columns])
    if partitions:
        df = df.repartition(partitions)

    # Nondeterministic so the optimizer never copies the call: a filter on its output
    # (rejects vs sentences) pushed below a join ran the segmenter twice per note.
    udf = _segment_udf(backend, include_text).asNondeterministic()
    # The note text is not carried past the segmenter (a persisted result would hold it
    # twice, with the sentence texts); note_hash was taken of it before.
    return (df.withColumn(SEG_COLUMN, udf(F.col("note_id"), F.col("text"))).drop("text")
              .withColumn("_segmenter", F.lit(seg.name))
              .withColumn("_segmenter_version", F.lit(seg.version)))


def split_segment_output(out: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(sentences, rejects) from :func:`segment_notes`: sentence rows are exploded here, in
    the JVM, where the note's other columns are."""
    seg = F.col(SEG_COLUMN)
    usable = _usable(out)
    ok = out.where(usable & seg["error"].isNull())
    z = F.arrays_zip(seg["start"].alias("start"), seg["end"].alias("end"),
                     seg["text"].alias("text"), seg["sec"].alias("sec"), seg["sub"].alias("sub"))
    exploded = ok.select("*", F.posexplode(z).alias("_pos", "_s"))
    s, pos = F.col("_s"), F.col("_pos")

    def at(arr: str, ref) -> F.Column:  # arrays are 1-based in SQL
        return F.element_at(seg[arr], ref + 1)

    start, end, text = s["start"], s["end"], s["text"]
    columns = {
        "note_id": F.col("note_id"), "subject_id": F.col("subject_id"),
        "hadm_id": F.col("hadm_id"), "category": F.col("category"),
        "section_index": at("sec_index", s["sec"]), "section_title": at("sec_title", s["sec"]),
        "section_category": at("sec_category", s["sec"]),
        "subsection_index": F.when(s["sub"].isNotNull(), at("sub_index", s["sub"])),
        "subsection_title": F.when(s["sub"].isNotNull(), at("sub_title", s["sub"])),
        "subsection_category": F.when(s["sub"].isNotNull(), at("sub_category", s["sub"])),
        "sentence_index": pos.cast("int"), "start": start, "end": end, "text": text,
        "segmenter": F.col("_segmenter"), "segmenter_version": F.col("_segmenter_version"),
        "note_hash": F.col("note_hash"),
    }
    sentences = exploded.select(*[columns[f.name].cast(f.dataType).alias(f.name)
                                  for f in schemas.SENTENCES.fields if f.name != "fingerprint"])
    rejects = out.where(usable & seg["error"].isNotNull()).select(
        "note_id", F.lit("segmentation_error").alias("reason"), "source_row",
        seg["error"].alias("detail"))
    if REASON_COLUMNS[0] in out.columns:  # a records frame: its rejected records first
        rejects = rejected_records(out).unionByName(rejects)
    return sentences, rejects


def _usable(out: DataFrame) -> F.Column:
    """True for a note the segmenter was meant to see (all but a records frame's rejects)."""
    reason = REASON_COLUMNS[0]
    return F.col(reason).isNull() if reason in out.columns else F.lit(True)


def segment_counts(out: DataFrame) -> dict[str, int]:
    """Counts of :func:`segment_notes` output in one pass over the note rows (no sentence
    rows are made, no shuffle): ``notes`` the segmenter saw, ``failed`` (segmentation
    errors), ``segmented`` (notes with sentences) and ``sentences``."""
    seg = F.col(SEG_COLUMN)
    usable = _usable(out)
    n = F.when(usable & seg["error"].isNull(), F.size(seg["start"]))
    row = out.agg(F.count(F.when(usable, True)).alias("notes"),
                  F.count(F.when(usable & seg["error"].isNotNull(), True)).alias("failed"),
                  F.count(F.when(n > 0, True)).alias("segmented"),
                  F.sum(n).alias("sentences")).first()
    return {k: int(v or 0) for k, v in row.asDict().items()}
