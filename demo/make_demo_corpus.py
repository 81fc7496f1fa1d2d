#!/usr/bin/env python
"""Write ``demo/NOTEEVENTS_demo.csv``: a small, entirely SYNTHETIC corpus in the shape of MIMIC-III
``NOTEEVENTS.csv`` (no real patient data; dates are shifted-looking fakes in ``[**...**]`` tags).

Notes are the hand-written gold notes of ``tests/data/gold`` (markup stripped) plus variants and
a few extra short notes, across the MIMIC categories. Like MIMIC, string columns are always
double-quoted (``"`` doubled inside) and TEXT keeps its embedded newlines. The last rows are
deliberately bad records for the pipeline's validation: ISERROR=1, empty TEXT, a duplicate
ROW_ID with different text, and whitespace-only TEXT.

    python demo/make_demo_corpus.py        # rewrites demo/NOTEEVENTS_demo.csv (deterministic)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clinicalbert_spark.segment.evaluate import load_gold  # noqa: E402

OUT = ROOT / "demo" / "NOTEEVENTS_demo.csv"
HEADER = ["ROW_ID", "SUBJECT_ID", "HADM_ID", "CHARTDATE", "CHARTTIME", "STORETIME", "CATEGORY",
          "DESCRIPTION", "CGID", "ISERROR", "TEXT"]
QUOTED = {"CATEGORY", "DESCRIPTION", "TEXT"}

# gold file -> (CATEGORY, DESCRIPTION)
GOLD_CATEGORY = {
    "01_discharge_summary.txt": ("Discharge summary", "Report"),
    "02_radiology_ct.txt": ("Radiology", "CT CHEST W/O CONTRAST"),
    "03_radiology_cxr.txt": ("Radiology", "CHEST (PORTABLE AP)"),
    "04_nursing_systems.txt": ("Nursing/other", "Report"),
    "05_nursing_mimic2.txt": ("Nursing/other", "Report"),
    "06_ecg.txt": ("ECG", "Report"),
    "07_echo.txt": ("Echo", "Report"),
    "08_physician_progress.txt": ("Physician ", "Physician Resident Progress Note"),
    "09_social_work.txt": ("Social Work", "Social Work Admission Note"),
    "10_abbreviations_consult.txt": ("General", "Cardiology Consult"),
    "11_nutrition.txt": ("Nutrition", "Nutrition Follow-up"),
    "12_case_management.txt": ("Case Management ", "Case Management Discharge Planning Note"),
    "13_rehab_pt.txt": ("Rehab Services", "Physical Therapy Evaluation"),
    "14_mtsamples_style.txt": ("General", "Generic Note"),
    "15_nursing_problems.txt": ("Nursing", "Nursing Progress Note"),
}

EXTRA = [
    ("Respiratory ", "Respiratory Care Shift Note",
     "Respiratory Care\nPt remains intubated on CMV 500 x 14, PEEP 8, FiO2 50%.\n"
     "BS coarse bilaterally, suctioned x2 for moderate amounts of thick tan secretions.\n"
     "RSBI 88 this a.m. on PS 5/PEEP 5; pt tolerated SBT x 30 min. ABG 7.38/42/96.\n"
     "Plan: Extubate today if mental status allows, per MICU team."),
    ("ECG", "Report",
     "Sinus tachycardia. Nonspecific ST-T wave changes. Compared to the previous tracing of\n"
     "[**2151-3-2**] the rate is faster."),
    ("ECG", "Report", "Atrial fibrillation with rapid ventricular response. Low QRS voltages in the limb leads.\n"
     "Since the previous tracing of [**2151-3-4**] atrial fibrillation is new."),
    ("Radiology", "CHEST (PA & LAT)",
     "[**2151-9-12**] 2:10 PM\n CHEST (PA & LAT)                                               Clip # [**Clip Number (Radiology) 51122**]\n"
     " Reason: eval for pneumonia\n______________________________________________________________________________\n"
     "                                 FINAL REPORT\n INDICATION:  Fever and cough.\n\n COMPARISON:  None.\n\n"
     " FINDINGS:  PA and lateral views of the chest. Patchy opacity in the right lower lobe. No\n"
     " effusion or pneumothorax. Heart size is normal.\n\n IMPRESSION:  Right lower lobe pneumonia."),
    ("Nursing/other", "Report",
     "NPN 0700-1900\nNeuro: A&Ox3, MAE, follows commands.\nCV: SR 70s, no ectopy, SBP 110-130s.\n"
     "Resp: LS clear, RA sats 97%.\nGI: tolerating regular diet, +BS, no BM.\nGU: voiding clear yellow urine.\n"
     "Plan: transfer to floor when bed available."),
    ("Nursing", "Nursing Transfer Note",
     "Altered mental status (not Delirium)\n   Assessment:\n   Pt oriented x1, pulling at lines.\n"
     "   Action:\n   Haldol 2 mg IV x1, 1:1 sitter.\n   Response:\n   Calmer, sleeping.\n   Plan:\n"
     "   Reorient frequently, avoid benzos."),
    ("Physician ", "Physician Attending Admission Note",
     "Chief Complaint: Hypotension\nHPI:\n58 yo F with ESRD on HD presents with SBP 70s after HD.\n"
     "Allergies:\nNo Known Drug Allergies\nPhysical Examination\nGeneral Appearance: Well nourished\n"
     "Assessment and Plan\n# Hypotension: likely volume depletion; 500 mL NS, hold BP meds.\n"
     "Code status: Full code\nDisposition: ICU"),
    ("Discharge summary", "Addendum",
     "Name:  [**Known lastname 4412**],[**Known firstname 122**]       Unit No:   [**Numeric Identifier 4413**]\n\n"
     "Admission Date:  [**2151-7-16**]              Discharge Date:   [**2151-8-4**]\n\n"
     "Service: MEDICINE\n\nAddendum:\nPatient's discharge INR was 2.1. Please check INR on [**8-7**].\n\n"
     "                             [**First Name11 (Name Pattern1) **] [**Last Name (NamePattern4) 2212**] MD [**MD Number(1) 2213**]\n\n"
     "Completed by:[**2151-8-4**]"),
]


def _variant(text: str, k: int) -> str:
    """A light variant of a note: shift years inside brackets and ages, so texts differ."""
    text = re.sub(r"\[\*\*(21\d\d)-", lambda m: f"[**{int(m.group(1)) + k}-", text)
    return re.sub(r"\b([5-8]\d) (yo|year old|-year-old)", lambda m: f"{int(m.group(1)) + k} {m.group(2)}", text)


def _field(col: str, value) -> str:
    if value is None:
        return ""
    s = str(value)
    if col in QUOTED:  # MIMIC quotes every string column, even empty ones
        return '"' + s.replace('"', '""') + '"'
    return s


def build_rows() -> list[dict]:
    gold = {n.name: n.text for n in load_gold()}
    notes: list[tuple[str, str, str]] = []
    for name, (cat, desc) in GOLD_CATEGORY.items():
        notes.append((cat, desc, gold[name]))
    for name in ("01_discharge_summary.txt", "04_nursing_systems.txt", "06_ecg.txt",
                 "08_physician_progress.txt", "02_radiology_ct.txt"):
        cat, desc = GOLD_CATEGORY[name]
        notes.append((cat, desc, _variant(gold[name], 1)))
    notes.extend(EXTRA)

    rows = []
    for i, (cat, desc, text) in enumerate(notes):
        subject = 10000 + i // 3
        hadm = None if cat.strip() in ("ECG", "Radiology") and i % 2 else 100000 + i // 3
        day = 1 + i % 28
        timed = cat.strip() not in ("Discharge summary", "ECG", "Echo")
        rows.append({
            "ROW_ID": 1000 + i, "SUBJECT_ID": subject, "HADM_ID": hadm,
            "CHARTDATE": f"2151-07-{day:02d}",
            "CHARTTIME": f"2151-07-{day:02d} {6 + i % 12:02d}:{(i * 7) % 60:02d}:00" if timed else None,
            "STORETIME": f"2151-07-{day:02d} {7 + i % 12:02d}:{(i * 7) % 60:02d}:00" if timed else None,
            "CATEGORY": cat, "DESCRIPTION": desc,
            "CGID": 14000 + i if timed else None, "ISERROR": None, "TEXT": text,
        })
    n = 1000 + len(rows)
    bad = [
        {**rows[4], "ROW_ID": n, "ISERROR": 1, "TEXT": rows[4]["TEXT"] + "\n(entered in error)"},
        {**rows[5], "ROW_ID": n + 1, "TEXT": ""},
        {**rows[6], "ROW_ID": rows[3]["ROW_ID"], "TEXT": "Duplicate ROW_ID with different text.\nPlan: none."},
        {**rows[7], "ROW_ID": n + 2, "TEXT": "   \n\t  \n"},
    ]
    return rows + bad


def main() -> None:
    rows = build_rows()
    with open(OUT, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(HEADER) + "\n")
        for r in rows:
            f.write(",".join(_field(c, r[c]) for c in HEADER) + "\n")
    print(f"wrote {len(rows)} rows to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
