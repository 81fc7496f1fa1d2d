"""The run report (clinicalbert_spark.report): one real small pipeline run, then the HTML is
parsed: every section and plot is there, plots are real PNGs, the counts equal the tables,
and no note text reaches the page. A segment-only run gives "not run" sections."""
from __future__ import annotations

import base64
import csv
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from clinicalbert_spark.config import PipelineConfig
from clinicalbert_spark.pipeline import Pipeline
from clinicalbert_spark.report import SECTION_IDS, report_path, write_run_report

PLANTED = "Zyxqwplantedtoken"  # in a note's text only; must never reach the report

NOTES = [  # (ROW_ID, CATEGORY, ISERROR, TEXT)
    ("1", "Discharge summary", "",
     "History of Present Illness:\nPatient denies chest pain. No fever or cough.\n"
     f"Physical Exam:\nMild abdominal tenderness. {PLANTED} was noted on exam today.\n"
     "Plan:\nAspirin daily was started. He was admitted to the icu for blood pressure "
     "control and continued insulin twice daily with severe cough and fever for two days."),
    ("2", "Discharge summary", "",
     "History of Present Illness:\nShe reports shortness of breath.\nImpression:\n"
     "Heart rate normal. Blood pressure stable."),
    ("3", "Radiology", "",
     "Findings:\nNo evidence of pneumonia. Bilateral lower lung clear.\nImpression:\n"
     "No acute infection."),
    ("4", "Nursing", "", "Patient resting. Blood pressure stable. Tylenol given."),
    ("5", "Nursing", "1", f"Entered in error {PLANTED}."),  # rejected: iserror
    ("6", "Radiology", "", "   "),  # rejected: empty_text
]


def _write_csv(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ROW_ID", "SUBJECT_ID", "HADM_ID", "CATEGORY", "ISERROR", "TEXT"])
        for rid, cat, iserr, text in NOTES:
            w.writerow([rid, "7", "", cat, iserr, text])
    return path


def _cfg(notes, root, model, run_id, stages):
    return PipelineConfig.model_validate({
        "input": {"path": str(notes)},
        # max_length 16: the long sentence of note 1 is split into windows
        "encode": {"model": model, "pooling": "mean", "max_length": 16, "max_tokens": 512},
        "output": {"root": str(root), "format": "parquet"},
        "run": {"run_id": run_id, "stages": stages},
    })


class _Page(HTMLParser):
    """Sections (id -> text), images (section id, src), table rows by id -> cell texts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: dict[str, str] = {}
        self.headings: dict[str, str] = {}
        self.images: list[tuple[str | None, str]] = []
        self.rows: dict[str, list[str]] = {}
        self.spans: dict[str, str] = {}
        self._sec: str | None = None
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._span: str | None = None
        self._h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._sec = a.get("id")
            self.sections[self._sec] = ""
        elif tag == "h2":
            self._h2 = True
        elif tag == "img":
            self.images.append((self._sec, a.get("src", "")))
        elif tag == "tr" and a.get("id"):
            self._row = a["id"]
            self.rows[self._row] = []
        elif tag in ("td", "th") and self._row:
            self._cell = []
        elif a.get("id") and tag in ("span", "strong"):
            self._span = a["id"]
            self.spans[self._span] = ""

    def handle_endtag(self, tag):
        if tag == "section":
            self._sec = None
        elif tag == "h2":
            self._h2 = False
        elif tag == "tr":
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row:
            self.rows[self._row].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("span", "strong"):
            self._span = None

    def handle_data(self, data):
        if self._sec:
            self.sections[self._sec] += data
            if self._h2:
                self.headings[self._sec] = self.headings.get(self._sec, "") + data
        if self._cell is not None:
            self._cell.append(data)
        if self._span:
            self.spans[self._span] += data


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def _int(s: str) -> int:
    return int(s.replace(",", ""))


@pytest.fixture(scope="module")
def full_run(spark, tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "out"
    row = Pipeline(_cfg(_write_csv(tmp / "notes.csv"), root, tiny_bert, "rep1",
                        ["segment", "embed", "aggregate"]), spark).run()
    assert row["status"] == "succeeded"
    path = write_run_report(spark, str(root), "parquet", "rep1", row)
    return root, row, path


def test_report_sections_plots_and_counts(spark, full_run):
    root, row, path = full_run
    assert path == root / "reports" / "rep1" / "report.html" == report_path(str(root), "rep1")
    assert not [p for p in path.parent.iterdir() if p.name != "report.html"]  # no temp files
    # Nothing was put inside the runs table: Spark still reads it.
    assert not [p for p in (root / "runs").iterdir() if p.is_file() and p.suffix == ".html"]
    assert spark.read.parquet(str(root / "runs")).count() == 1

    page = _parse(path)
    assert set(SECTION_IDS) <= set(page.sections)
    for sid in SECTION_IDS:
        assert page.headings.get(sid, "").strip(), sid
        if sid != "counts":  # (counts: the predictions table is "not run")
            assert "not run" not in page.sections[sid], sid

    # Every plot is an embedded PNG; the stage, length and category plots are there.
    assert {s for s, _ in page.images} >= {"stages", "lengths", "categories"}
    for _, src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert w > 300 and h > 100

    # Counts: the run's column equals the run row, the table column equals the tables.
    s = pd.read_parquet(root / "sentences")
    e = pd.read_parquet(root / "embeddings")
    nv = pd.read_parquet(root / "note_embeddings")
    rj = pd.read_parquet(root / "rejects")
    expect = {
        "count-notes": (row["notes"], s.note_id.nunique()),
        "count-sentences": (row["sentences"], len(s)),
        "count-embedded": (row["sentences_embedded"], len(e)),
        "count-note_vectors": (row["note_vectors"], len(nv)),
        "count-rejects": (row["rejects"], len(rj)),
    }
    for rid, (run_n, table_n) in expect.items():
        cells = page.rows[rid]
        assert (_int(cells[1]), _int(cells[2])) == (run_n, table_n), rid
    assert _int(page.rows["count-input_records"][1]) == row["input_records"] == len(NOTES)
    assert page.rows["count-predictions"][2] == "not run"

    # Rejects by reason: names and counts from the table (never the detail column).
    html = path.read_text(encoding="utf-8")
    for reason, n in rj.reason.value_counts().items():
        assert f'data-reason="{reason}"' in html
    assert set(rj.reason) == {"iserror", "empty_text"}

    # Lengths: windowed share as in the table, the max-length line's value is stated.
    assert (e.n_windows > 1).any()
    assert page.spans["share-windowed"] == f"{100 * (e.n_windows > 1).mean():.1f}%"
    assert page.spans["share-truncated"] == f"{100 * e.truncated.mean():.1f}%"
    assert "16 tokens" in page.sections["lengths"]
    assert page.spans["padding-efficiency"] == f"{100 * row['padding_efficiency']:.1f}%"
    assert {k for k in page.rows if k.startswith("stage-")} == {
        "stage-segment", "stage-embed", "stage-aggregate"}
    assert "max_length" in page.sections["fingerprints"] and row["config_hash"] in html


def test_report_has_no_note_text(full_run):
    root, _, path = full_run
    html = path.read_text(encoding="utf-8").lower()
    assert PLANTED.lower() not in html
    s = pd.read_parquet(root / "sentences")
    assert PLANTED in "".join(s.text)  # the token did reach the tables
    for text in s.text:
        if len(text) >= 20:
            assert text.lower() not in html


def test_report_reads_the_run_row_itself(spark, full_run):
    root, row, _ = full_run
    path = write_run_report(spark, str(root), "parquet", "rep1")  # no run row given
    page = _parse(path)
    assert set(SECTION_IDS) <= set(page.sections)
    assert "succeeded" in page.sections["overview"]
    assert _int(page.rows["count-sentences"][1]) == row["sentences"]


def test_segment_only_run_says_not_run(spark, tiny_bert, tmp_path):
    root = tmp_path / "seg"
    row = Pipeline(_cfg(_write_csv(tmp_path / "notes.csv"), root, tiny_bert, "seg1",
                        ["segment"]), spark).run()
    path = write_run_report(spark, str(root), "parquet", "seg1", row)
    page = _parse(path)
    assert set(SECTION_IDS) <= set(page.sections)
    for sid in ("lengths", "padding"):
        assert "not run" in page.sections[sid], sid
    for sid in ("overview", "rejects", "stages", "categories"):
        assert "not run" not in page.sections[sid], sid
    assert page.rows["count-embedded"][1:3] == ["—", "not run"]  # stage not in this run
    assert _int(page.rows["count-sentences"][1]) == row["sentences"] > 0
    assert {s for s, _ in page.images} == {"stages", "categories"}
    assert PLANTED.lower() not in path.read_text(encoding="utf-8").lower()
