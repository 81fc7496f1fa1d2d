"""One test per segmentation rule (rules backend)."""
from __future__ import annotations

import pickle
import re

import pytest

from clinicalbert_spark.segment import (
    PREAMBLE_CATEGORY,
    UNKNOWN_CATEGORY,
    Sentence,
    get_segmenter,
    segment_note,
)
from clinicalbert_spark.segment.evaluate import check_invariants

SEG = get_segmenter("rules")


def sents(text: str) -> list[str]:
    out = SEG.segment(text)
    assert check_invariants(text, out, SEG.sections(text)) == []
    return [text[s.start:s.end] for s in out]


def cats(text: str) -> list[tuple[str | None, str]]:
    return [(s.title, s.category) for s in SEG.sections(text)]


# ----------------------------------------------------------------- sentence boundaries
def test_basic_sentence_end():
    assert sents("Pt is stable. No acute events! Any pain? Denies.") == [
        "Pt is stable.", "No acute events!", "Any pain?", "Denies."]


@pytest.mark.parametrize("text", [
    "Seen by Dr. [**Last Name (STitle) 2211**] in clinic today.",
    "Discussed with Mr. [**Known lastname 12**] and Mrs. Smith at bedside.",
    "Pt given metoprolol 12.5 mg p.o. t.i.d. with meals.",
    "Lasix 40 mg b.i.d. and warfarin 5 mg q.h.s. were continued.",
    "Lost approx. 10 lbs over 2 yrs. per daughter.",
    "Anticoagulants, e.g. heparin, i.e. not warfarin, vs. none.",
    "Room No. 5 is ready.",
    "At 7 a.m. on [**3-14**] she fell.",
    "Seen by John A. Smith, MD.",
    "Pt. states she is better.",
    "She lives in St. Louis with her son.",
    "Tablet, Delayed Release (E.C.) PO daily.",
    "Give vit. D 1000 IU daily.",
    "H/o HTN, s/p CABG, c/o chest pain, r/o MI, f/u in clinic.",
    "Patient is afebrile, approx. 3 L negative, cont. to monitor.",
])
def test_no_split_inside_abbreviations(text):
    assert sents(text) == [text]


@pytest.mark.parametrize("text", [
    "EF 25-30 % on echo with LVEF of 2.5 cm and 1.2mg dose.",
    "BP 120/80, HR 72, Temp 98.6, Cr 1.8 (baseline 1.6-1.8).",
    "Seen by [**First Name (STitle) 1.2. Smith**] today.",
])
def test_no_split_in_numbers_and_brackets(text):
    assert sents(text) == [text]


def test_deid_bracket_never_split():
    text = "Call [**Hospital. Ward Name 5**] now. Then rest."
    assert sents(text) == ["Call [**Hospital. Ward Name 5**] now.", "Then rest."]


def test_abbreviation_that_ends_a_sentence():
    assert sents("Seen at 7 a.m. The pt was stable.") == ["Seen at 7 a.m.", "The pt was stable."]
    assert sents("Nausea, vomiting, etc. He was admitted.") == [
        "Nausea, vomiting, etc.", "He was admitted."]


def test_lowercase_nursing_sentences():
    assert sents("afebrile. lungs clear. abd soft, +bs. voiding qs.") == [
        "afebrile.", "lungs clear.", "abd soft, +bs.", "voiding qs."]


def test_questionable_mark_is_not_a_boundary():
    assert sents("CXR ? PNA vs atelectasis. ? Aspiration event.") == [
        "CXR ? PNA vs atelectasis.", "? Aspiration event."]


def test_initial_versus_label_letter():
    assert sents("Checked vitamin D. He will follow up.") == [
        "Checked vitamin D.", "He will follow up."]
    assert sents("Flow is R > L. Repeat in am.") == ["Flow is R > L.", "Repeat in am."]
    assert sents("grip weaker than R. dilantin level ok.") == ["grip weaker than R.", "dilantin level ok."]
    assert sents("UTI with E. coli and C. diff. PPI b.i.d. H. pylori neg.") == [
        "UTI with E. coli and C. diff.", "PPI b.i.d.", "H. pylori neg."]


def test_list_items_split():
    text = "Discharge Medications:\n1. Aspirin 81 mg daily.\n2. Lasix 40 mg b.i.d.\n- Heparin SC\n* Tylenol prn\n# CHF: diurese"
    assert sents(text) == ["Discharge Medications:", "1. Aspirin 81 mg daily.",
                           "2. Lasix 40 mg b.i.d.", "- Heparin SC", "* Tylenol prn",
                           "# CHF: diurese"]


def test_inline_enumeration():
    assert sents("Dx: 1. CHF 2. COPD 3. DM2") == ["Dx: 1. CHF", "2. COPD", "3. DM2"]


def test_blank_line_splits():
    assert sents("first para without period\n\nsecond para") == [
        "first para without period", "second para"]


def test_line_oriented_entries_split():
    text = "Neuro: alert, oriented\npupils equal\nNa 140\nK 4.1\nCl 101"
    assert sents(text) == ["Neuro: alert, oriented", "pupils equal", "Na 140", "K 4.1", "Cl 101"]


def test_wrapped_prose_does_not_split():
    text = ("He was in his usual state of health until this morning when he\n"
            "developed substernal chest pressure while shoveling snow, with\n"
            "radiation to the left arm and diaphoresis.")
    assert sents(text) == [text]


def test_wrap_after_comma_and_function_word():
    text = "Hx of CAD s/p CABG,\nHTN, HLD. Transferred to the\nICU for monitoring."
    assert sents(text) == ["Hx of CAD s/p CABG,\nHTN, HLD.", "Transferred to the\nICU for monitoring."]


def test_semicolons_do_not_split():
    text = "TRANSFERRED FROM OSH; HCT 24; 2 UNITS PRBC GIVEN."
    assert sents(text) == [text]


def test_separator_line_is_its_own_sentence():
    assert sents("Reason: eval\n_______________\nFINAL REPORT") == [
        "Reason: eval", "_______________", "FINAL REPORT"]


def test_mtsamples_comma_linebreaks():
    text = "PLAN:,  1.  Amoxicillin 500 mg t.i.d. x10 days.,2.  Saline spray.,3.  Follow up."
    assert sents(text) == ["PLAN:,", "1.  Amoxicillin 500 mg t.i.d. x10 days.,",
                           "2.  Saline spray.,", "3.  Follow up."]


# ----------------------------------------------------------------- sections
def test_header_with_text_on_same_line_starts_sentence():
    text = "HPI: 65 yo M with CP. Seen in ED.\nPMH: CAD"
    assert sents(text) == ["HPI: 65 yo M with CP.", "Seen in ED.", "PMH: CAD"]
    assert cats(text) == [("HPI", "history_of_present_illness"), ("PMH", "past_medical_history")]


def test_header_alone_is_its_own_sentence():
    text = "Chief Complaint:\nchest pain\nReview of Systems\nnegative"
    assert sents(text) == ["Chief Complaint:", "chest pain", "Review of Systems", "negative"]
    assert cats(text) == [("Chief Complaint", "chief_complaint"),
                          ("Review of Systems", "review_of_systems")]


def test_preamble_section():
    text = "Sinus rhythm. Left axis deviation.\nNo change."
    secs = SEG.sections(text)
    assert [(s.title, s.category) for s in secs] == [(None, PREAMBLE_CATEGORY)]
    assert all(s.section_category == PREAMBLE_CATEGORY for s in SEG.segment(text))


def test_indented_caps_headers_and_final_report():
    text = ("                FINAL REPORT\n INDICATION: eval for PNA.\n\n TECHNIQUE: AP view.\n\n"
            " FINDINGS: No consolidation.\n\n IMPRESSION:\n 1. No pneumonia.")
    assert cats(text) == [("FINAL REPORT", "final_report"), ("INDICATION", "indication"),
                          ("TECHNIQUE", "technique"), ("FINDINGS", "findings"),
                          ("IMPRESSION", "impression")]


def test_unknown_caps_header_is_other():
    text = "Seen today.\nCARDIOLOGY CONSULT NOTE:\nSeen today.\nWEIRD HEADING: text here"
    assert cats(text) == [(None, PREAMBLE_CATEGORY), ("CARDIOLOGY CONSULT NOTE", UNKNOWN_CATEGORY),
                          ("WEIRD HEADING", UNKNOWN_CATEGORY)]


def test_document_title_on_first_line_is_preamble():
    text = "CARDIOLOGY CONSULT NOTE:\n\nHPI: 81 yo F with syncope."
    assert cats(text) == [(None, PREAMBLE_CATEGORY), ("HPI", "history_of_present_illness")]


@pytest.mark.parametrize("line", [
    "Temp: 37.2 HR: 80", "BP: 120/80", "Pager: 4-5567", "Name: [**Known lastname 5**]",
    "Unit No: [**Numeric Identifier 1**]", "Na: 140", "Hypotension: likely sepsis", "O2 Delivery Device: NC",
    "1. Aspirin: 81 mg", "SPECIFIC GRAVITY: 1.010", "Total In:",
])
def test_key_value_fields_are_not_headers(line):
    text = "Physical Exam:\n" + line
    assert cats(text) == [("Physical Exam", "physical_exam")]


def test_header_versus_field_same_note():
    text = "Allergies: NKDA\nVS: T 98.6 BP 120/80\nTemp: 37.2\nHEENT: NCAT\nCV: RRR"
    assert [c for _, c in cats(text)] == ["allergies", "vital_signs", "heent", "cardiovascular"]


def test_mimic_discharge_headers():
    text = ("Admission Date:  [**2151-7-16**]     Discharge Date:   [**2151-8-4**]\n\n"
            "Service: MEDICINE\n\nAllergies:\nNo Known Allergies\n\nChief Complaint:\nSOB\n\n"
            "Major Surgical or Invasive Procedure:\nnone\n\nHistory of Present Illness:\nx\n\n"
            "Brief Hospital Course:\ny\n\nDischarge Disposition:\nHome\n\nFollowup Instructions:\nz")
    assert [c for _, c in cats(text)] == [
        "admission_info", "admission_info", "allergies", "chief_complaint", "procedures",
        "history_of_present_illness", "hospital_course", "discharge_disposition",
        "followup_instructions"]


def test_inline_headers_mimic2_and_mtsamples():
    t1 = "O: 74 YO M; PMH: CAD; HPI: 3 DAYS OF MELENA. A: STABLE; P: SERIAL HCT."
    assert [c for _, c in cats(t1)] == ["objective", "past_medical_history",
                                        "history_of_present_illness", "assessment", "plan"]
    t2 = "SUBJECTIVE:,  Sore throat.,MEDICATIONS:,  None.,PROCEDURE IN DETAIL:,  Done."
    assert [c for _, c in cats(t2)] == ["subjective", "medications", "procedures"]


def tree(text: str) -> list[tuple[str, str | None]]:
    """(section_category, subsection_category) per sentence."""
    return [(s.section_category, s.subsection_category) for s in SEG.segment(text)]


def test_container_subheadings_keep_parent_category():
    text = "Discharge Diagnosis:\nPrimary:\nCHF\nSecondary:\nAF\n\nPertinent Results:\nLABS:\nNa 140\nCXR: clear"
    assert [c for _, c in cats(text)] == ["discharge_diagnosis", "pertinent_results"]
    assert [(s.title, s.category, s.parent) for s in SEG.subsections(text)] == [
        ("Primary", "primary_diagnosis", 0), ("Secondary", "secondary_diagnosis", 0),
        ("LABS", "labs_and_studies", 1), ("CXR", "imaging", 1)]
    assert tree(text) == [
        ("discharge_diagnosis", None), ("discharge_diagnosis", "primary_diagnosis"),
        ("discharge_diagnosis", "primary_diagnosis"), ("discharge_diagnosis", "secondary_diagnosis"),
        ("discharge_diagnosis", "secondary_diagnosis"), ("pertinent_results", None),
        ("pertinent_results", "labs_and_studies"), ("pertinent_results", "labs_and_studies"),
        ("pertinent_results", "imaging")]


def test_metavision_headers():
    text = ("Flowsheet Data as of  [**2151-3-5**] 06:45 AM\nVital signs\nHemodynamic monitoring\n"
            "Tmax: 37.4\n24 Hour Events:\nnone\nLabs / Radiology\n9.1 g/dL\nCode status: Full\n"
            "Hypotension (not Shock)\n   Assessment:\n   low bp\n   Action:\n   bolus")
    assert [c for _, c in cats(text)] == [
        "vital_signs", "vital_signs", "vital_signs", "hospital_course", "labs_and_studies",
        "code_status", UNKNOWN_CATEGORY, "assessment", "action"]


def test_problem_oriented_assessment_and_plan_keeps_category():
    text = ("Assessment and Plan\n68M with UGIB.\nHYPOTENSION (NOT SHOCK)\n Assessment: better\n"
            " Plan: fluids\nICU Care\nNutrition: NPO")
    assert [c for _, c in cats(text)] == ["assessment_and_plan", "icu_care", "nutrition"]
    assert [(s.title, s.category) for s in SEG.subsections(text)] == [
        ("HYPOTENSION (NOT SHOCK)", UNKNOWN_CATEGORY), ("Assessment", "assessment"),
        ("Plan", "plan")]


def test_sentences_within_sections_and_indexed():
    text = "CC: pain.\nHPI: 65M. Seen.\n\nPlan: home."
    out = SEG.segment(text)
    assert [s.sentence_index for s in out] == list(range(len(out)))
    assert [s.section_index for s in out] == [0, 1, 1, 2]
    assert out[1].section_title == "HPI"


# ----------------------------------------------------------------- odd input
@pytest.mark.parametrize("text", [None, "", "   ", "\n\r\n\t  \x0b"])
def test_empty_text(text):
    assert SEG.segment(text) == [] and SEG.sections(text) == []


def test_crlf_and_cr_line_ends():
    for nl in ("\r\n", "\r"):
        text = f"Chief Complaint:{nl}chest pain{nl}{nl}HPI: 65 yo M.{nl}No fever.{nl}K 4.1{nl}Na 140"
        assert sents(text) == ["Chief Complaint:", "chest pain", "HPI: 65 yo M.", "No fever.",
                               "K 4.1", "Na 140"]
        assert [c for _, c in cats(text)] == ["chief_complaint", "history_of_present_illness"]


def test_odd_characters():
    text = "Pt\x00 is \ufffd\ufffd stable.\tNo pain.  Caf\u00e9 au lait spots \u2013 noted.\x0c\nPlan:\u00a0home"
    out = sents(text)
    assert re.sub(r"\s", "", "".join(out)) == re.sub(r"\s", "", text)


def test_api_objects():
    assert SEG.name == "rules" and isinstance(SEG.version, str)
    seg2 = pickle.loads(pickle.dumps(SEG))
    text = "HPI: 65 yo. Seen."
    assert seg2.segment(text) == SEG.segment(text) == segment_note(text)
    assert isinstance(SEG.segment(text)[0], Sentence)


def test_errors_do_not_leak_text():
    with pytest.raises(ValueError) as e:
        get_segmenter("no-such-backend")
    assert "no-such-backend" in str(e.value)


def test_hard_wrapped_note_wraps_onto_capitalised_word():
    from clinicalbert_spark.segment import get_segmenter

    line = "   The patient was seen and examined with the covering team and the ICU"
    filler = "   Labs were reviewed in detail this morning and discussed with the family."
    text = "\n".join([filler, filler, line, "   Resident for key portions of the exam.", filler])
    got = [text[s.start:s.end] for s in get_segmenter("rules").segment(text)]
    assert any(g.startswith("The patient was seen") and g.endswith("of the exam.") for g in got)


def test_short_lines_still_split_before_capitals():
    from clinicalbert_spark.segment import get_segmenter

    text = "Pt comfortable overnight\nFamily in to visit\nWill monitor"
    got = [text[s.start:s.end] for s in get_segmenter("rules").segment(text)]
    assert got == ["Pt comfortable overnight", "Family in to visit", "Will monitor"]


def test_comma_then_caps_field_in_prose_is_not_a_section():
    from clinicalbert_spark.segment import get_segmenter

    text = "History of Present Illness:\nIn the ED, VS: T 98.6 HR 110. Given lasix."
    sents = get_segmenter("rules").segment(text)
    assert {s.section_category for s in sents} == {"history_of_present_illness"}


def test_unknown_header_gets_category_of_its_head_words():
    from clinicalbert_spark.segment.lexicon import guess_category

    assert guess_category("Clinical Assessment") == "assessment"
    assert guess_category("Respiratory Care") == "respiratory"
    assert guess_category("INDICATIONS FOR OPERATION") == "indication"
    assert guess_category("DETAILS OF THE PROCEDURE") == "procedures"
    assert guess_category("Zebra Crossing") is None
