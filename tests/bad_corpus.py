"""A corpus of bad input, written by the tests (no real patient data)."""
from __future__ import annotations

from pathlib import Path

HEADER = b"ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE,CHARTTIME,STORETIME,CATEGORY,DESCRIPTION,CGID,ISERROR,TEXT\n"

GOOD = (
    "Chief Complaint:\nChest pain.\n\nHistory of Present Illness:\n"
    "72 yo M s/p CABG presents with 2 days of chest pain. BP 120/80, HR 88.\n"
    "He was given ASA 325 mg p.o. at 7 a.m. and improved.\n\n"
    "Impression:\nNo acute MI. Will follow up with Dr. [**Last Name (STitle) 123**].\n"
)


def _rec(row_id, text: bytes | None, iserror: str = "", category: str = "Discharge summary",
         subject: str = "100", hadm: str = "2000") -> bytes:
    if text is None:
        field = b""
    else:
        field = b'"' + text.replace(b'"', b'""') + b'"'
    return (f"{row_id},{subject},{hadm},2150-01-01,,,{category},Report,,{iserror},".encode()
            + field + b"\n")


def write_bad_corpus(path: Path, big_note_mb: float = 5.0) -> dict:
    """Write the CSV; return the expected outcome per source record (in order)."""
    big_unit = (GOOD + "\n").encode()
    big = big_unit * int(big_note_mb * 1024 * 1024 / len(big_unit))
    long_sentence = ("the patient reports intermittent pain " * 400).strip().encode() + b"."
    recs = [
        (_rec(1, GOOD.encode()), "1", "ok"),
        (_rec(2, GOOD.encode(), iserror="1"), "2", "iserror"),
        (_rec(3, None), "3", "null_text"),  # an unquoted empty field is NULL ("" is empty_text)
        (_rec(4, b"   \n\t  "), "4", "empty_text"),
        (_rec(5, "Pt is caf\xe9 latte drinker.".encode("latin-1")), "5", "invalid_utf8"),
        (_rec(6, GOOD.replace("Chest", "Abd").encode()), "6", "ok"),
        (_rec(6, b"A different note that reuses id 6."), "6", "duplicate_id"),
        (b"7,101,2001\n", "7", "malformed_record"),  # too few fields
        (_rec(8, b"[**2150-1-1**] [**Hospital 1**] [**Name (NI) 2**]"), "8", "ok"),
        (_rec(9, big), "9", "ok"),
        (_rec(10, long_sentence, category="Nursing"), "10", "ok"),
        (_rec("", GOOD.encode()), None, "missing_id"),
        (_rec(11, "Unicode ok: 37.5\u00b0C, \u2265 2 episodes, \U0001F600 emoji.".encode()),
         "11", "ok"),
    ]
    path.write_bytes(HEADER + b"".join(r for r, _, _ in recs))
    return {"records": [(nid, outcome) for _, nid, outcome in recs]}
