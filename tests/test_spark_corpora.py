"""The segmentation job over all the real text in ../shared/corpora (skipped where absent)."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import SHARED_CORPORA

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_parquet(tmp_path_factory):
    if not (SHARED_CORPORA / "mtsamples.csv").is_file():
        pytest.skip(f"shared corpora not found at {SHARED_CORPORA} (see shared/README.md)")
    from clinicalbert_spark.segment.corpora import read_ctakes, read_deid_nursing

    mt = pd.read_csv(SHARED_CORPORA / "mtsamples.csv", dtype=str, keep_default_na=False)
    frames = [pd.DataFrame({"note_id": [f"mtsamples:{i}" for i in range(len(mt))],
                            "text": mt["transcription"].where(mt["transcription"] != "", None),
                            "kind": mt["medical_specialty"]})]
    for name, rows in (("nursing", read_deid_nursing()), ("ctakes", read_ctakes())):
        frames.append(pd.DataFrame({"note_id": [r[0] for r in rows],
                                    "text": [r[1] for r in rows], "kind": name}))
    df = pd.concat(frames, ignore_index=True)
    path = tmp_path_factory.mktemp("corpora") / "notes.parquet"
    df.to_parquet(path, index=False)
    return path, df


def test_segment_job_over_shared_corpora(spark, corpus_parquet, tmp_path):
    import jobs_path  # noqa: F401
    import segment_notes

    path, notes = corpus_parquet
    out = tmp_path / "sentences"
    rc = segment_notes.main([
        "--input", str(path), "--output", str(out), "--input.id_column", "note_id",
        "--input.text_column", "text", "--input.category_column", "kind",
        "--input.subject_column", "null", "--input.hadm_column", "null",
        "--input.iserror_column", "null"])
    assert rc == 0
    rows = pd.read_parquet(out, columns=["note_id", "start", "end", "text", "section_category"])
    rejects = pd.read_parquet(str(out) + "_rejects")
    # Every note is accounted for: segmented, or rejected for having no text.
    assert set(rows.note_id) | set(rejects.note_id) == set(notes.note_id)
    assert not set(rows.note_id) & set(rejects.note_id)
    assert set(rejects.reason) <= {"null_text", "empty_text"}
    assert len(rejects) == notes.text.fillna("").str.strip().eq("").sum()
    # Offsets are exact for every row.
    text_of = dict(zip(notes.note_id, notes.text))
    bad = sum(text_of[n][s:e] != t for n, s, e, t in
              zip(rows.note_id, rows.start, rows.end, rows.text))
    assert bad == 0
    # Non-space coverage: the sentences of a note hold all of its non-space characters.
    per_note = rows.groupby("note_id").text.apply(lambda s: sum(len("".join(t.split())) for t in s))
    want = {n: len("".join(t.split())) for n, t in text_of.items() if n in per_note.index}
    assert all(per_note[n] == want[n] for n in per_note.index)
