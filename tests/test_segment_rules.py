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


def test_slash_shorthand_ends_a_sentence():
    # "n/v", "u/o", "o/n", "c/o" end sentences in nursing notes; a one-letter tail after the
    # slash is shorthand, not the abbreviation "v." (versus) or a title
    assert sents("Denies n/v. No SOB, chest pain.") == ["Denies n/v.", "No SOB, chest pain."]
    assert sents("gi: tol diet. no n/v. abd soft.") == ["gi: tol diet.", "no n/v.", "abd soft."]
    assert sents("Decreased c/o. Increased u/o") == ["Decreased c/o.", "Increased u/o"]
    assert sents("stable o/n. follow cx data.") == ["stable o/n.", "follow cx data."]
    # ... while a word after the slash still decides, and "c/o." before lowercase runs on
    assert sents("Seen w/Dr. [**Name**] today.") == ["Seen w/Dr. [**Name**] today."]
    assert sents("Pt c/o. chest pain") == ["Pt c/o. chest pain"]


def test_rate_unit_ends_a_lowercase_sentence():
    # a unit after a slash closes a rate ("24/min", "30mcg/kg/min", "q 6/hr"): "." + lower-case
    # word is a boundary there, while a bare duration may go on ("30 min. after")
    assert sents("RR 24/min. strong cough.") == ["RR 24/min.", "strong cough."]
    assert sents("propofol at 30mcg/kg/min. arousable to stimuli.") == [
        "propofol at 30mcg/kg/min.", "arousable to stimuli."]
    assert sents("u/o 20-30cc/hr. urine clear.") == ["u/o 20-30cc/hr.", "urine clear."]
    assert sents("waited 30 min. after that stable.") == ["waited 30 min. after that stable."]


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


def test_nursing_system_header_variants():
    # ICU nursing shorthand for body-system headers (MIMIC-II nursing notes)
    t = ("neuro: alert.\nINTEG: sacral decubitus.\nDerm: rash resolved.\nF/E/N: TF at goal.\n"
         "f/e: k repleted.\nGi status: abd soft.\nGU status: foley patent.\n"
         "CV status: hr 80s.\nOrtho: dressing changed.")
    assert [c for _, c in cats(t)] == [
        "neuro", "skin", "skin", "nutrition", "nutrition", "gastrointestinal", "genitourinary",
        "cardiovascular", "musculoskeletal"]


def test_caps_system_lines_without_separator():
    # MIMIC-II ICU nursing notes in capitals: "CV SR 80S" with no colon or dash after the system
    t = ("CV SR TO SB OCC PAC. WEANING DOPAMINE.\nPT IS USUALLY ON BETA BLOCKERS.\n"
         "RESP LS CLEAR, SX FOR SM AMT.\nGI NOT TOL TF. [**Name (NI) 179**] TUBE CLAMPED.\n"
         "C/V NSR NO ECTOPY\nPLAN ? TRANSFER TODAY")
    assert [c for _, c in cats(t)] == ["cardiovascular", "respiratory", "gastrointestinal",
                                       "cardiovascular", "plan"]
    # two systems are not enough, and a line in mixed case or a wrapped line is prose
    assert [c for _, c in cats("CV SR 80S.\nRESP LS CLEAR.\nNO OTHER ISSUES.")] == [PREAMBLE_CATEGORY]
    prose = "CV SR 80S.\nRESP LS CLEAR.\nGI consult was called.\nSEEN BY\nNEURO TEAM TODAY."
    assert [c for _, c in cats(prose)] == [PREAMBLE_CATEGORY]


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


# ----------------------------------------------------------------- v2: section hierarchy
def test_same_body_system_word_means_what_its_container_makes_it():
    text = ("REVIEW OF SYSTEMS\nConstitutional: No fever.\nHEENT: No vision change.\n\n"
            "PHYSICAL EXAM\nConstitutional: Well appearing.\nHEENT: PERRL.\n\nPLAN\nReturn prn.")
    assert tree(text) == [
        ("review_of_systems", None), ("review_of_systems", "constitutional"),
        ("review_of_systems", "heent"), ("physical_exam", None),
        ("physical_exam", "constitutional"), ("physical_exam", "heent"), ("plan", None), ("plan", None)]
    out = SEG.segment(text)
    assert out[2].subsection_title == "HEENT" and out[2].section_title == "REVIEW OF SYSTEMS"


def test_body_systems_without_a_container_stay_top_level():
    text = "Neuro: alert.\nCV: NSR.\nResp: clear."
    assert cats(text) == [("Neuro", "neuro"), ("CV", "cardiovascular"), ("Resp", "respiratory")]
    assert SEG.subsections(text) == []


def test_inline_ros_subsections_after_the_container_header():
    text = "REVIEW OF SYSTEMS: Constitutional: Mild fatigue. HEENT: No sores. All other systems negative."
    assert sents(text) == ["REVIEW OF SYSTEMS:", "Constitutional: Mild fatigue.", "HEENT: No sores.",
                           "All other systems negative."]
    assert tree(text) == [("review_of_systems", None), ("review_of_systems", "constitutional"),
                          ("review_of_systems", "heent"), ("review_of_systems", None)]


def test_vitals_after_ros_start_a_new_section():
    text = "ROS:\nConstitutional: no fever\nVitals: BP 120/80\nGeneral: NAD"
    assert [c for _, c in cats(text)] == ["review_of_systems", "vital_signs", "physical_exam"]


def test_mental_status_exam_items():
    text = ("MENTAL STATUS EXAMINATION\nAppearance: Well groomed.\nMood: \"Okay.\"\n"
            "Thought process: Linear.\nInsight: Fair.\n\nPLAN\nStart sertraline.")
    assert tree(text)[:5] == [
        ("mental_status_exam", None), ("mental_status_exam", "appearance"),
        ("mental_status_exam", "mood_affect"), ("mental_status_exam", "thought_process"),
        ("mental_status_exam", "insight_judgment")]
    assert tree(text)[-1] == ("plan", None)


def test_subheading_outside_a_container_is_not_a_header():
    text = "HPI: pain.\nThought process: hard to follow per family."
    assert cats(text) == [("HPI", "history_of_present_illness")]


def test_problem_headings_in_assessment_and_plan():
    text = ("ASSESSMENT AND PLAN\n\n85F with delirium.\n\nDelirium\nStop oxybutynin.\n\n"
            "B. Diabetes mellitus type 2\nHold metformin.\n# CKD: Cr at baseline.\n"
            "1. Hypertension, well controlled. Continue lisinopril.\n2. Recheck BMP in 1 week.")
    assert [(s.title, s.category) for s in SEG.subsections(text)] == [
        ("Delirium", "problem"), ("Diabetes mellitus type 2", "problem"), ("CKD", "problem"),
        ("Hypertension, well controlled", "problem")]
    got = sents(text)
    assert "B. Diabetes mellitus type 2" in got and "2. Recheck BMP in 1 week." in got
    assert tree(text)[-1] == ("assessment_and_plan", "problem")  # the action item stays in it


def test_organ_subsections_of_imaging_findings():
    text = "FINDINGS:\nLIVER: Steatosis.\nKIDNEYS: No stones.\nSPLEEN: Normal.\n\nIMPRESSION:\n1. Steatosis."
    assert [(s.title, s.category) for s in SEG.subsections(text)] == [
        ("LIVER", "gastrointestinal"), ("KIDNEYS", "genitourinary"), ("SPLEEN", "lymphatic")]
    assert [c for _, c in cats(text)] == ["findings", "impression"]


def test_results_subsections_and_main_sections():
    text = "LABS:\nNa 140\nECG: sinus\nIMAGING:\nCXR clear"
    assert [c for _, c in cats(text)] == ["labs_and_studies", "imaging"]
    assert [(s.title, s.category) for s in SEG.subsections(text)] == [("ECG", "labs_and_studies")]


def test_unknown_caps_subheading_styled_like_its_container_is_a_sibling():
    text = "PHYSICAL EXAMINATION\n\nHEENT: PERRL.\n\nZEBRA SECTION\n\nSome prose here."
    assert [c for _, c in cats(text)] == ["physical_exam", UNKNOWN_CATEGORY]


# ----------------------------------------------------------------- v2: header variants
def test_unknown_caps_line_between_blank_line_and_prose_is_a_header():
    text = "ALLERGIES\n\nNone.\n\nADVANCE CARE PLANNING\n\nDNR/DNI, confirmed with daughter."
    assert [c for _, c in cats(text)] == ["allergies", "code_status"]
    text = "CT CHEST\n\nAP SINGLE VIEW OF THE CHEST\n\nHISTORY: cough."  # no prose after it
    assert [t for t, _ in cats(text)] == [None, "HISTORY"]


@pytest.mark.parametrize("title, cat", [
    ("Hx of present illness", "history_of_present_illness"),
    ("Past surg hx", "past_surgical_history"), ("Pysical exam", "physical_exam"),
    ("Histroy of Present Illness", "history_of_present_illness"), ("D/C meds", "discharge_medications"),
    ("Fam hx", "family_history"), ("Psych hx", "past_psychiatric_history"),
    ("IMPRESSION / DIAGNOSIS", "impression"), ("SHX/FHX", "social_history"),
])
def test_abbreviated_and_misspelt_titles(title, cat):
    from clinicalbert_spark.segment.lexicon import lookup_header

    assert lookup_header(title) == cat


def test_no_substitution_spelling_fix():
    from clinicalbert_spark.segment.lexicon import lookup_header

    assert lookup_header("Source") is None  # not "Course"


def test_signature_blocks():
    text = ("Plan: home.\nElectronically signed by J. Doe, MD on [**2153-1-1**]\n"
            "Dictated by: K. Roe, MD")
    assert [c for _, c in cats(text)] == ["plan", "signature"]
    text = "Plan: home.\n\nYours sincerely,\n\nDr. A. Smith"
    assert [c for _, c in cats(text)] == ["plan", "signature"]
    assert [c for _, c in cats("Plan: home.\nSigned: A. Nwosu, RN")] == ["plan", "signature"]


def test_header_with_text_on_the_same_line_guessed_from_its_head_words():
    text = "Indication: ascites.\nPost-procedure plan: Monitor BP q15min."
    assert [c for _, c in cats(text)] == ["indication", "plan"]


def test_report_versus_clinician_note_categories():
    report = "FINDINGS: Clear lungs.\nIMPRESSION: Normal.\nCOMMENT: None."
    assert [c for _, c in cats(report)] == ["findings", "impression", "impression"]
    note = "HPI: cough.\nIMPRESSION: Bronchitis.\nFinal diagnoses: Bronchitis\nHISTORY: x"
    assert [c for _, c in cats(note)] == ["history_of_present_illness", "assessment",
                                          "discharge_diagnosis", "history_of_present_illness"]


def test_diet_and_activity_depend_on_the_note():
    assert [c for _, c in cats("Neuro: A&O.\nDiet: cardiac.\nActivity: OOB.")] == [
        "neuro", "nutrition", "rehab"]
    assert [c for _, c in cats("Discharge Instructions:\nCall.\nDiet: cardiac.\nActivity: walk.")] == [
        "discharge_instructions"] * 3


def test_soap_letters_with_periods():
    text = "S. NO COMPLAINTS\n\nO. SEE FLOWSHEET\nA. STABLE\nP. CONTINUE"
    assert [c for _, c in cats(text)] == ["subjective", "objective", "assessment", "plan"]


def test_lowercase_word_wrapped_onto_a_line_start_is_not_a_header():
    line = "She reports ongoing worry about her son's recent legal troubles and his"
    text = "\n".join([line, line, line, "treatment: she cannot sleep.", line])
    assert cats(text) == [(None, PREAMBLE_CATEGORY)]


# ----------------------------------------------------------------- v2: sentences
@pytest.mark.parametrize("text", [
    '"I feel so much better today." he said, smiling.',
    'She said "the pain is gone." and fell asleep.',
    "Risks include (1) bleeding, (2) infection and (3) pain.",
    "Risks include 1) bleeding, 2) infection and 3) pain.",
    "She was seen by Dr. J. K. Lee in clinic.",
    "She was seen by J. K. Rowland in clinic.",
    "She was seen by Dr. J.K. Rowland in clinic.",
    "At 3 p.m. Dr. Chan was notified of the result.",
    "As shown in Fig. 2 the lesion grew; see vol. 3, pg. 4 and p. 12.",
    "Lisinopril 10 mg 1 tab PO BID\n(two times a day) for 30 days.",
    "Ciprofloxacin 500 mg Tablet Sig: One (1) Tablet PO Q12H\nSubcutaneous route per pharmacy.",
])
def test_v2_no_split(text):
    assert sents(text) == [text]


@pytest.mark.parametrize("text, want", [
    ("The ECG was done at 3 p.m. Dr. Chan reviewed it.", ["The ECG was done at 3 p.m.", "Dr. Chan reviewed it."]),
    ("Reports abdominal pain.Denies nausea.", ["Reports abdominal pain.", "Denies nausea."]),
    ("Is the pain better?Yes, much better.", ["Is the pain better?", "Yes, much better."]),
    ("We agreed. i. Start lisinopril. ii. Recheck BMP.", ["We agreed.", "i. Start lisinopril.", "ii. Recheck BMP."]),
    ("Plan: 1) start lisinopril 2) recheck BMP", ["Plan: 1) start lisinopril", "2) recheck BMP"]),
    ("Options: i. surgery ii. radiation", ["Options: i. surgery", "ii. radiation"]),
    ("The patient is well.\nB. Diabetes mellitus type 2\nA1c 8.1.", ["The patient is well.", "B. Diabetes mellitus type 2", "A1c 8.1."]),
    ("pt calm. (resolved.) lungs clear.", ["pt calm.", "(resolved.)", "lungs clear."]),
    ("Given levo, IV. Continue.", ["Given levo, IV.", "Continue."]),
    ("cared for by ABC, M.D. Historically he did well.", ["cared for by ABC, M.D.", "Historically he did well."]),
    ("vs replacing NGT per H.O. Pt requesting coffee.", ["vs replacing NGT per H.O.", "Pt requesting coffee."]),
    ("fluency score 18/60 sec. 2) recall intact", ["fluency score 18/60 sec.", "2) recall intact"]),
    ("Lines:\n(-) 2.5L today", ["Lines:", "(-) 2.5L today"]),
])
def test_v2_splits(text, want):
    assert sents(text) == want


def test_narrow_hard_wrapped_narrative_joins():
    text = ("Walked to the nurses' station and\nback with PT without stopping. Slept\n"
            "well. No chest pain. Some dry mouth\nafter the nebs and some cough with\n"
            "thin white sputum, improving since\nyesterday per the patient report.")
    got = sents(text)
    assert "Slept\nwell." in got and "Some dry mouth\nafter the nebs and some cough with\nthin white sputum, improving since\nyesterday per the patient report." in got


def test_free_length_lines_still_split_before_lower_case():
    text = "pupils equal and brisk\nc/o mild headache\nlungs clear upper lobes\nstrong cough"
    assert len(sents(text)) == 4


def test_fast_sentence_constructor_equals_the_dataclass():
    from clinicalbert_spark.segment.types import make_sentence

    a = make_sentence(1, "HPI", "history_of_present_illness", 3, 10, 20, "HEENT", "heent", 0)
    b = Sentence(1, "HPI", "history_of_present_illness", 3, 10, 20, "HEENT", "heent", 0)
    assert a == b and hash(a) == hash(b) and repr(a) == repr(b)
    with pytest.raises(Exception):
        a.start = 5  # still frozen


def test_title_dash_text_headers():
    text = ("NPN 7-3\nNEURO- ALERT AND ORIENTED\nRESP-LS CLEAR. SATS 98%\nGI - abd soft\n"
            "Follow-up with Dr. X\nChest-clear\nPlan - home tomorrow\nNon-tender abdomen")
    assert [c for _, c in cats(text)] == ["preamble", "neuro", "respiratory", "gastrointestinal",
                                          "plan"]
