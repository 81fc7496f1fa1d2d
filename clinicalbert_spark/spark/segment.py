"""Notes -> sentences inside ``mapInPandas`` (Arrow batches on the executors)."""
from __future__ import annotations

import os
from typing import Iterator

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..segment import get_segmenter
from .. import schemas

_SEGMENTERS: dict[str, object] = {}  # one per Python worker, reused across tasks


def _segmenter(backend: str):
    seg = _SEGMENTERS.get(backend)
    if seg is None:
        seg = _SEGMENTERS[backend] = get_segmenter(backend)
    return seg


def segment_batches(
    batches: Iterator[pd.DataFrame], backend: str = "rules", include_text: bool = True
) -> Iterator[pd.DataFrame]:
    """Segment each note of each batch; a note that fails becomes one error row, not a crash."""
    seg = _segmenter(backend)
    cols = schemas.SEGMENT_UDF_OUTPUT.fieldNames()
    # Tests only: the segmenter "fails" on these note ids (the rejects path end to end).
    fail_ids = set(filter(None, os.environ.get("CBS_INJECT_SEGMENT_ERROR", "").split(",")))
    for pdf in batches:
        out: dict[str, list] = {c: [] for c in cols}
        for row in pdf.itertuples(index=False):
            text = row.text if isinstance(row.text, str) else ""
            meta = (row.note_id, row.subject_id, row.hadm_id, row.category)
            try:
                if row.note_id in fail_ids:
                    raise RuntimeError("injected segmentation error (CBS_INJECT_SEGMENT_ERROR)")
                sentences = seg.segment(text)
            except Exception as e:  # noqa: BLE001 - one bad note never fails the job
                # The exception type only: messages can quote the note (PHI).
                for c in cols:
                    out[c].append(None)
                out["note_id"][-1] = row.note_id
                out["note_hash"][-1] = row.note_hash
                out["source_row"][-1] = row.source_row
                out["error"][-1] = type(e).__name__
                continue
            n = len(sentences)
            if n == 0:  # cannot happen for non-blank text; account for it all the same
                for c in cols:
                    out[c].append(None)
                out["note_id"][-1], out["note_hash"][-1] = row.note_id, row.note_hash
                out["source_row"][-1], out["error"][-1] = row.source_row, "NoSentences"
                continue
            for key, value in zip(("note_id", "subject_id", "hadm_id", "category"), meta):
                out[key].extend([value] * n)
            out["note_hash"].extend([row.note_hash] * n)
            out["segmenter"].extend([seg.name] * n)
            out["segmenter_version"].extend([seg.version] * n)
            out["error"].extend([None] * n)
            out["source_row"].extend([row.source_row] * n)
            for s in sentences:
                out["section_index"].append(s.section_index)
                out["section_title"].append(s.section_title)
                out["section_category"].append(s.section_category)
                out["subsection_index"].append(s.subsection_index)
                out["subsection_title"].append(s.subsection_title)
                out["subsection_category"].append(s.subsection_category)
                out["sentence_index"].append(s.sentence_index)
                out["start"].append(s.start)
                out["end"].append(s.end)
                out["text"].append(text[s.start:s.end] if include_text else None)
        frame = pd.DataFrame(out, columns=cols)
        for c in ("section_index", "subsection_index", "sentence_index", "start", "end"):
            frame[c] = frame[c].astype("Int32")
        frame["source_row"] = frame["source_row"].astype("Int64")
        yield frame


def segment_notes(notes: DataFrame, backend: str = "rules", include_text: bool = True,
                  partitions: int | None = None) -> DataFrame:
    """Sentences of every note, plus error rows (``error`` not null) for notes that failed.

    ``notes`` has the columns of :class:`clinicalbert_spark.io.Notes.notes`.
    """
    # Validate the backend on the driver so a missing optional model fails fast and clearly.
    get_segmenter(backend)
    df = notes.select("note_id", "subject_id", "hadm_id", "category", "text", "note_hash",
                      "source_row")
    if partitions:
        df = df.repartition(partitions)

    def fn(it):
        return segment_batches(it, backend, include_text)

    return df.mapInPandas(fn, schemas.SEGMENT_UDF_OUTPUT)


def split_segment_output(out: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(sentences, rejects) from the UDF output."""
    sentences = out.where(F.col("error").isNull()).select(
        *[F.col(f.name) for f in schemas.SENTENCES.fields if f.name != "fingerprint"])
    rejects = out.where(F.col("error").isNotNull()).select(
        "note_id", F.lit("segmentation_error").alias("reason"), "source_row",
        F.col("error").alias("detail"))
    return sentences, rejects
