"""Input formats seen in the wild: Windows CSV exports, pandas Parquet, binary or broken text,
lower-case columns, empty and header-less files, unreadable inputs.

The reference for "the text of a note" is what Python's ``csv`` module (``open(path,
newline='')``) or pyarrow reads from the raw file: the text handed on must be exactly that, so
that offsets and ``note_hash`` refer to the stored text. Bad notes carry a planted token that
must never appear in an exception message or a log line (note text is PHI).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clinicalbert_spark import io
from clinicalbert_spark.config import InputConfig

TOKEN = "QZX7PHI"  # planted in bad notes; must never reach a message or a log line

MIMIC_HEADER = ("ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE,CHARTTIME,STORETIME,CATEGORY,DESCRIPTION,"
                "CGID,ISERROR,TEXT").encode()
NOTE_COLUMNS = ["note_id", "subject_id", "hadm_id", "category", "text", "note_hash", "source_row"]


# --------------------------------------------------------------------------------------------
# Data builders and references


def quoted(text: bytes) -> bytes:
    return b'"' + text.replace(b'"', b'""') + b'"'


def mimic_record(row_id, text: bytes | None, eol: bytes = b"\n", iserror: bytes = b"",
                 category: bytes = b"Nursing", subject: bytes = b"100",
                 hadm: bytes = b"2000") -> bytes:
    """One NOTEEVENTS record; ``text=None`` writes an unquoted empty field (SQL NULL)."""
    fields = [str(row_id).encode(), subject, hadm, b"2150-01-01", b"", b"", category, b"Report",
              b"", iserror, b"" if text is None else quoted(text)]
    return b",".join(fields) + eol


def write_mimic(path, records: list[bytes], eol: bytes = b"\n", header: bool = True) -> None:
    data = (MIMIC_HEADER + eol if header else b"") + b"".join(records)
    if str(path).endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def py_csv(path) -> list[list[str]]:
    """The records of a CSV file as Python's csv module reads them (header excluded)."""
    csv.field_size_limit(2**31 - 1)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))[1:]


def note_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def read(spark, path, **kw) -> tuple[list, list]:
    """(notes rows, rejects rows) of one read_notes call, collected in one Spark job."""
    notes = io.read_notes(spark, InputConfig(path=str(path), **kw))
    assert notes.notes.columns == NOTE_COLUMNS
    assert notes.rejects.columns == ["note_id", "reason", "source_row", "detail"]
    both = notes.notes.unionByName(notes.rejects, allowMissingColumns=True).collect()
    return [r for r in both if r.reason is None], [r for r in both if r.reason is not None]


def reasons(rejects) -> list[tuple]:
    return sorted((r.note_id or "", r.reason) for r in rejects)


@contextlib.contextmanager
def package_logs(caplog, level: int):
    """caplog sees the package's records even where the jobs' logging set-up (run by other
    tests in this session) has stopped their propagation to the root logger."""
    pkg = logging.getLogger("clinicalbert_spark")
    attach = not pkg.propagate
    if attach:
        pkg.addHandler(caplog.handler)
    caplog.set_level(level, logger="clinicalbert_spark")
    try:
        yield
    finally:
        if attach:
            pkg.removeHandler(caplog.handler)


@pytest.fixture
def no_phi(caplog, capsys):
    """Call with exceptions/strings: asserts TOKEN is in none of them, nor in any log line."""

    def check(*extra) -> None:
        out = capsys.readouterr()
        seen = [r.getMessage() for r in caplog.records] + [out.out, out.err]
        seen += [str(e) for e in extra] + [repr(e) for e in extra]
        for s in seen:
            assert TOKEN not in s

    with package_logs(caplog, logging.DEBUG):
        yield check


# --------------------------------------------------------------------------------------------
# 1. Windows exports: CRLF record ends and CRLF inside quoted text


CRLF_TEXTS = [
    b"Chief Complaint:\r\nChest pain.\r\n\r\nPlan:\r\nHome.",
    b"LF only\ninside, and a lone CR\rhere.",
    b'Quotes "inside", commas, and a CRLF at the end\r\n',
    b"Unicode \xe2\x89\xa5 2 episodes, 37.5\xc2\xb0C.\r\n\r\n",
]


@pytest.mark.parametrize("layout", ["file", "gz", "folder"])
def test_crlf_export_text_is_exactly_as_stored(spark, tmp_path, layout):
    if layout == "folder":
        root = tmp_path / "notes"
        root.mkdir()
        files = [root / "a.csv", root / "b.csv"]
        write_mimic(files[0], [mimic_record(i + 1, t, b"\r\n") for i, t in enumerate(CRLF_TEXTS)],
                    b"\r\n")
        write_mimic(files[1], [mimic_record(i + 11, t, b"\n") for i, t in enumerate(CRLF_TEXTS)])
        path = root
    else:
        path = tmp_path / ("n.csv.gz" if layout == "gz" else "n.csv")
        files = [path]
        write_mimic(path, [mimic_record(i + 1, t, b"\r\n") for i, t in enumerate(CRLF_TEXTS)],
                    b"\r\n")
    notes, rejects = read(spark, path)
    assert rejects == []
    by_id = {r.note_id: r for r in notes}
    want = {}
    for k, f in enumerate(files):
        for i, rec in enumerate(py_csv(f)):
            want[rec[0]] = (rec[10], k * io.CSV_FILE_ROW_STRIDE + i)
    assert sorted(by_id) == sorted(want)
    for nid, (text, source_row) in want.items():
        r = by_id[nid]
        assert r.text == text  # byte for byte: "\r\n" inside the quotes is kept
        assert r.note_hash == note_hash(text)
        assert r.source_row == source_row
    assert "\r\n" in by_id["1"].text


def test_five_megabyte_note_in_a_crlf_csv(spark, tmp_path):
    big = b"Impression:\r\nStable, no acute distress.\r\n" * 130_000  # ~5.6 MB
    path = tmp_path / "big.csv"
    write_mimic(path, [mimic_record(1, big, b"\r\n"), mimic_record(2, b"Short.", b"\r\n")], b"\r\n")
    notes, rejects = read(spark, path)
    assert rejects == []
    text = {r.note_id: r.text for r in notes}
    assert text["1"] == big.decode() and text["2"] == "Short."


def test_csv_header_names_with_dots_and_blanks(spark, tmp_path):
    path = tmp_path / "odd.csv"
    path.write_bytes(b',note.id,TEXT\n0,a1,"Pain, better."\n1,a2,"Plan: home."\n')
    notes, rejects = read(spark, path, id_column="note.id", subject_column=None,
                          hadm_column=None, category_column=None, iserror_column=None)
    assert rejects == []
    assert sorted((r.note_id, r.text) for r in notes) == [("a1", "Pain, better."),
                                                          ("a2", "Plan: home.")]


# --------------------------------------------------------------------------------------------
# Malformed records and undecodable bytes in a CSV


def test_csv_malformed_and_invalid_utf8_records(spark, tmp_path, no_phi):
    path = tmp_path / "bad.csv"
    recs = [
        mimic_record(1, "Temp 37\ufffdC recorded as stored.".encode()),  # a real U+FFFD: fine
        mimic_record(2, b"Pt " + TOKEN.encode() + b" drinks caf\xe9 au lait."),
        b"3,101," + TOKEN.encode() + b"\n",  # too few fields
        mimic_record(4, b"Plan: rest.")[:-1] + b',"' + TOKEN.encode() + b'"\n',  # one too many
        mimic_record(5, b"Good note " + TOKEN.encode(), category=b"Nurs\xe9"),
        mimic_record(6, b"Fine."),
    ]
    write_mimic(path, recs)
    notes, rejects = read(spark, path)
    assert reasons(rejects) == [("2", "invalid_utf8"), ("3", "malformed_record"),
                                ("4", "malformed_record"), ("5", "invalid_utf8")]
    ref = py_csv(path)
    for r in notes:
        assert r.text == ref[r.source_row][10]
    assert sorted(r.note_id for r in notes) == ["1", "6"]
    assert sorted(r.source_row for r in rejects) == [1, 2, 3, 4]
    assert all(r.detail is None or TOKEN not in r.detail for r in rejects)
    no_phi()


# --------------------------------------------------------------------------------------------
# 2. Binary or broken text in Parquet


def _check_utf8_parquet(spark, path, no_phi) -> None:
    n = io.read_notes(spark, InputConfig(path=str(path)))
    rows = n.notes.collect()
    assert sorted((r.note_id, r.text) for r in rows) == [
        ("1", "Good note."), ("3", "Unicode \u2265 2 ok.")]
    assert all(r.note_hash == note_hash(r.text) for r in rows)
    assert reasons(n.rejects.collect()) == [("2", "invalid_utf8")]
    pdf = n.notes.toPandas()  # through Arrow, as the segmenter receives it
    assert sorted(pdf.note_id) == ["1", "3"]
    no_phi()


def test_binary_parquet_text_with_invalid_utf8(spark, tmp_path, no_phi):
    path = tmp_path / "bin.parquet"
    pq.write_table(pa.table({
        "ROW_ID": pa.array(["1", "2", "3"]),
        "TEXT": pa.array([b"Good note.", b"Pt " + TOKEN.encode() + b" caf\xe9 au lait.",
                          "Unicode \u2265 2 ok.".encode()], pa.binary()),
    }), path)
    _check_utf8_parquet(spark, path, no_phi)


def test_string_parquet_column_holding_invalid_utf8(spark, tmp_path, no_phi):
    vals = [b"Good note.", b"Pt " + TOKEN.encode() + b" caf\xe9 au lait.",
            "Unicode \u2265 2 ok.".encode()]
    offsets = np.cumsum([0] + [len(v) for v in vals]).astype(np.int32)
    buffers = [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(vals))]
    text = pa.Array.from_buffers(pa.string(), len(vals), buffers)
    path = tmp_path / "str.parquet"
    pq.write_table(pa.table({"ROW_ID": pa.array(["1", "2", "3"]), "TEXT": text}), path)
    _check_utf8_parquet(spark, path, no_phi)


# --------------------------------------------------------------------------------------------
# 3. Parquet written by pandas: float ids and ISERROR


def test_pandas_parquet_float_ids_and_iserror(spark, tmp_path):
    path = tmp_path / "pandas.parquet"
    pd.DataFrame({
        "ROW_ID": [100001.0, 100002.0, 100003.0],
        "SUBJECT_ID": [7.0, 8.0, np.nan],
        "HADM_ID": [np.nan, 200001.0, 200002.0],
        "CATEGORY": ["Nursing", "Nursing", "Radiology "],
        "ISERROR": [np.nan, 1.0, np.nan],
        "TEXT": ["First note.", "Entered in error.", "Third note."],
    }).to_parquet(path)
    notes, rejects = read(spark, path)
    got = sorted((r.note_id, r.subject_id, r.hadm_id, r.category) for r in notes)
    assert got == [("100001", "7", None, "Nursing"), ("100003", None, "200002", "Radiology")]
    assert reasons(rejects) == [("100002", "iserror")]
    assert {r.text for r in notes} == {"First note.", "Third note."}


def test_iserror_spellings(spark, tmp_path):
    flags = ["1", "1.0", " TRUE ", "t", "Y", "yes", "0", "", None, "no", "false", "0.0"]
    path = tmp_path / "flags.parquet"
    pq.write_table(pa.table({
        "ROW_ID": [str(i) for i in range(len(flags))],
        "ISERROR": pa.array(flags, pa.string()),
        "TEXT": [f"Note {i}." for i in range(len(flags))],
    }), path)
    notes, rejects = read(spark, path)
    assert sorted(int(r.note_id) for r in rejects) == [0, 1, 2, 3, 4, 5]
    assert {r.reason for r in rejects} == {"iserror"}
    # Typed flags: integers and booleans.
    path2 = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"ROW_ID": ["a", "b", "c"],
                             "ISERROR": pa.array([1, 0, None], pa.int16()),
                             "TEXT": ["x.", "y.", "z."]}), path2)
    assert reasons(read(spark, path2)[1]) == [("a", "iserror")]
    path3 = tmp_path / "bool.parquet"
    pq.write_table(pa.table({"ROW_ID": ["a", "b"], "ISERROR": [True, False],
                             "TEXT": ["x.", "y."]}), path3)
    assert reasons(read(spark, path3)[1]) == [("a", "iserror")]


# --------------------------------------------------------------------------------------------
# 4. Column names in another case, absent optional columns


def test_lower_case_columns_resolve(spark, tmp_path):
    path = tmp_path / "lower.csv"
    path.write_bytes(
        b"row_id,subject_id,hadm_id,category,iserror,text\n"
        b'1,100,2000,Nursing,,"First."\n'
        b'2,101,2001,Nursing,1,"Entered in error."\n')
    notes, rejects = read(spark, path, id_column="row_id", text_column="text")
    assert [(r.note_id, r.subject_id, r.hadm_id, r.category, r.text) for r in notes] == [
        ("1", "100", "2000", "Nursing", "First.")]
    assert reasons(rejects) == [("2", "iserror")]


def test_absent_optional_column_warns_once(spark, tmp_path, caplog):
    path = tmp_path / "nohadm.parquet"
    pq.write_table(pa.table({"row_id": ["1"], "Subject_Id": ["5"], "TEXT": ["Fine."]}), path)
    with package_logs(caplog, logging.WARNING):
        notes, _ = read(spark, path, category_column=None, iserror_column=None)
    assert [(r.note_id, r.subject_id, r.hadm_id) for r in notes] == [("1", "5", None)]
    warns = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    hadm = [w for w in warns if "input.hadm_column" in w]
    assert len(hadm) == 1 and "HADM_ID" in hadm[0]
    assert not any("subject" in w.lower() for w in warns)  # found under another case


def test_columns_differing_only_by_case_are_an_error(spark, tmp_path):
    path = tmp_path / "dup.csv"
    path.write_bytes(b'ROW_ID,Text,tExt\n1,"a","b"\n')
    with pytest.raises(io.InputError, match="differ only by case") as e:
        io.read_notes(spark, InputConfig(path=str(path)))
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# 5. Empty inputs


@pytest.mark.parametrize("body", [MIMIC_HEADER, MIMIC_HEADER + b"\n", MIMIC_HEADER + b"\r\n"])
def test_header_only_csv(spark, tmp_path, body):
    path = tmp_path / "empty.csv"
    path.write_bytes(body)
    n = io.read_notes(spark, InputConfig(path=str(path)))
    assert n.notes.count() == 0 and n.rejects.count() == 0
    assert [(f.name, f.dataType.simpleString()) for f in n.notes.schema.fields] == [
        (c, "bigint" if c == "source_row" else "string") for c in NOTE_COLUMNS]
    assert n.rejects.schema == io.REJECTS_SCHEMA


def test_quoted_empty_text_is_empty_not_null(spark, tmp_path):
    path = tmp_path / "one.csv"
    write_mimic(path, [mimic_record(1, b"")])
    notes, rejects = read(spark, path)
    assert notes == [] and reasons(rejects) == [("1", "empty_text")]
    # An unquoted empty field is SQL NULL (how PostgreSQL exports it): still null_text.
    write_mimic(path, [mimic_record(1, b""), mimic_record(2, None)])
    assert reasons(read(spark, path)[1]) == [("1", "empty_text"), ("2", "null_text")]


# --------------------------------------------------------------------------------------------
# 6. Errors: header-less CSV, nanosecond timestamps, unreadable input


def test_headerless_csv_error_names_no_value(spark, tmp_path, no_phi):
    path = tmp_path / "noheader.csv"
    write_mimic(path, [mimic_record(1, f"{TOKEN} Smith seen today.".encode()),
                       mimic_record(2, b"Other.")], header=False)
    with pytest.raises(io.InputError, match="header row") as e:
        io.read_notes(spark, InputConfig(path=str(path)))
    assert "\n" not in str(e.value) and "11 fields" in str(e.value)
    no_phi(e.value)
    # The first record's first line holds the token in the text, split over lines.
    write_mimic(path, [mimic_record(7, f"Line one {TOKEN}\nline two".encode())], header=False)
    with pytest.raises(io.InputError, match="header row") as e:
        io.read_notes(spark, InputConfig(path=str(path)))
    no_phi(e.value)
    # A first line with a field longer than csv's default field limit (131072 characters).
    write_mimic(path, [mimic_record(8, f"{TOKEN} ".encode() * 40_000)], header=False)
    with pytest.raises(io.InputError, match="header row") as e:
        io.read_notes(spark, InputConfig(path=str(path)))
    assert "11 fields" in str(e.value)
    no_phi(e.value)


def test_missing_columns_lists_identifier_like_names(spark, tmp_path):
    path = tmp_path / "custom.csv"
    path.write_bytes(b'doc,body\na1,"Fine."\n')
    with pytest.raises(io.InputError, match="input lacks column") as e:
        io.read_notes(spark, InputConfig(path=str(path)))
    assert "doc" in str(e.value) and "body" in str(e.value)


def test_parquet_with_nanosecond_timestamps(spark, tmp_path):
    path = tmp_path / "ns.parquet"
    pd.DataFrame({
        "ROW_ID": ["1", "2"],
        "CHARTTIME": pd.to_datetime(["2150-01-01 00:00:00.000000001",
                                     "2150-01-02 10:00:00.000000000"]),
        "TEXT": ["First.", "Second."],
    }).to_parquet(path)
    assert "timestamp[ns]" in str(pq.read_schema(path).field("CHARTTIME").type)
    notes, rejects = read(spark, path)
    assert sorted((r.note_id, r.text) for r in notes) == [("1", "First."), ("2", "Second.")]
    assert rejects == []


def test_unreadable_inputs_are_one_line_errors(spark, tmp_path, no_phi):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"this is no parquet file " + TOKEN.encode())
    badgz = tmp_path / "bad.csv.gz"
    badgz.write_bytes(b"not gzip " + TOKEN.encode())
    empty = tmp_path / "emptydir"
    empty.mkdir()
    cases = [
        InputConfig(path=str(tmp_path / "missing.csv")),
        InputConfig(path=str(tmp_path / "missing.parquet")),
        InputConfig(path=str(tmp_path / "missing_dir"), format="parquet"),
        InputConfig(path=str(junk)),
        InputConfig(path=str(badgz)),
        InputConfig(path=str(empty)),
        InputConfig(path=str(empty), format="csv"),
        InputConfig(path=str(empty), format="parquet"),
    ]
    for cfg in cases:
        with pytest.raises(io.InputError) as e:
            io.read_notes(spark, cfg).notes.count()
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, msg
        no_phi(e.value)
