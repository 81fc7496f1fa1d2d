"""Section-header lexicon, key:value field names and abbreviation lists.

Written for this project (in the spirit of medspaCy's section rules, not derived from its code).
Every header variant is stored *normalised* (see :func:`normalize_title`): lower case, de-id
brackets removed, ``&`` -> ``and``, runs of space collapsed, surrounding punctuation stripped.

Design notes
------------
* Sub-headers are mapped to the category of the section they usually sit in when that keeps the
  category stable whichever way an annotator draws the line (``Date of Birth``, ``Service`` and
  ``Attending`` are all ``admission_info``; echo chamber headers ``LEFT ATRIUM`` ... are
  ``findings``).
* :data:`FIELD_NAMES` are *never* headers: vitals, labs, demographics and flowsheet keys that appear
  as ``key: value`` inside a section (``Temp: 37.2``, ``Na: 140``, ``Pager: 1234``, ``Total In:``).
"""
from __future__ import annotations

import re

PREAMBLE_CATEGORY = "preamble"  # text before the first header (ECG reports are often all preamble)
UNKNOWN_CATEGORY = "other"  # a header that looks like a header but is not in the lexicon

_SECTIONS: dict[str, tuple[str, ...]] = {
    "admission_info": (
        "admission date", "discharge date", "date of admission", "date of discharge",
        "admit date", "date of birth", "dob", "sex", "service", "attending", "admitting physician",
        "attending physician", "primary care physician", "pcp", "referring physician",
        "admission date discharge date", "date of service", "requesting physician",
        "reason for admission", "admitting diagnosis", "admission diagnosis",
        "admitting diagnoses", "admission diagnoses", "demographic information",
        "patient information", "identifying data", "identification",
    ),
    "chief_complaint": (
        "chief complaint", "cc", "chief complaints", "presenting complaint", "reason for visit",
        "reason for consultation", "reason for consult", "chief complaint purpose of visit",
        "reason for referral", "complaint", "cc hpi", "chief complaint reason for visit",
    ),
    "history_of_present_illness": (
        "history of present illness", "hpi", "history of the present illness",
        "present illness", "history of presenting illness", "hpi cc", "hpi/cc", "interval history", "brief history", "history of illness",
        "subjective history", "cc/hpi", "hx of present illness",
    ),
    "past_medical_history": (
        "past medical history", "pmh", "pmhx", "past history", "medical history",
        "past medical history/problem list", "past medical and surgical history",
        "past medical/surgical history", "pmh psh", "pmh/psh", "problem list",
        "past medical history problem list", "history past medical",
        "other past medical history", "pmhx/pshx", "medical problems", "past illnesses",
        "past medical surgical history",
    ),
    "past_surgical_history": (
        "past surgical history", "psh", "pshx", "surgical history", "prior surgeries",
        "previous surgeries", "past operations", "operative history",
    ),
    "medications": (
        "medications", "meds", "current medications", "outpatient medications",
        "home medications", "home meds", "medication", "current meds", "medications prior to admission",
        "medication list", "active medications", "outpatient meds", "current outpatient medications",
        "other medications", "medications at home", "prior to admission medications",
        "other icu medications", "icu medications", "infusions", "meds on transfer",
        "medications on transfer", "last dose of antibiotics", "antibiotics", "sedation",
    ),
    "medications_on_admission": (
        "medications on admission", "admission medications", "meds on admission",
        "medications at admission", "admission meds", "preadmission medications",
    ),
    "discharge_medications": (
        "discharge medications", "discharge meds", "medications on discharge",
        "meds on discharge", "discharge medication", "medications at discharge",
        "new medications", "discharge prescriptions",
    ),
    "allergies": (
        "allergies", "all", "allergy", "allergies/adverse reactions", "allergies adverse reactions",
        "drug allergies", "medication allergies", "nkda", "allergies and adverse reactions",
        "allergic reactions", "adverse reactions",
    ),
    "family_history": (
        "family history", "fh", "fhx", "family hx", "family medical history", "family history of",
    ),
    "social_history": (
        "social history", "sh", "shx", "social hx", "social", "habits", "substance use",
        "social/family history", "social and family history", "psychosocial history",
        "tobacco", "alcohol", "living situation", "occupation", "lifestyle",
    ),
    "review_of_systems": (
        "review of systems", "ros", "review of system", "systems review",
        "review of systems ros", "pertinent review of systems",
    ),
    "physical_exam": (
        "physical exam", "physical examination", "pe", "exam", "examination",
        "physical exam on admission", "admission physical exam", "physical examination on admission",
        "physical exam on discharge", "discharge physical exam", "exam on admission",
        "exam on discharge", "physical findings", "general", "general appearance",
        "constitutional", "gen", "general exam",
    ),
    "vital_signs": (
        "vital signs", "vitals", "vs", "vital signs on admission", "admission vitals",
        "hemodynamic monitoring", "fluid balance", "flowsheet data", "flowsheet data as of",
        "vital signs and hemodynamics", "respiratory support", "i/o", "i and o", "intake and output",
        "vitals/hemodynamics",
    ),
    "labs_and_studies": (
        "labs", "admission labs", "discharge labs", "labs on admission", "labs on discharge", "laboratory data", "laboratory", "laboratory results", "lab results",
        "laboratory studies", "labs / radiology", "labs radiology", "labs and radiology",
        "lab", "data", "studies", "diagnostic studies", "diagnostic data", "lab data",
        "laboratory values", "labs/studies", "microbiology", "micro", "other labs",
        "labs and studies", "diagnostics", "lab/anc", "laboratory and radiology",
        "ecg", "ekg", "electrocardiogram", "cardiac studies", "results",
    ),
    "pertinent_results": ("pertinent results",),
    "imaging": (
        "imaging", "radiology", "imaging studies", "radiographs", "radiology results",
        "imaging results", "cxr", "chest x-ray", "ct", "ct scan", "mri", "ultrasound",
    ),
    "hospital_course": (
        "hospital course", "brief hospital course", "course", "clinical course",
        "hospital course by problem", "summary of hospital course", "icu course",
        "course in the ed", "ed course", "emergency department course", "24 hour events",
        "events overnight", "overnight events", "interval events", "24 hr events",
        "concise summary of hospital course",
    ),
    "assessment": (
        "assessment", "a", "assessment and impression", "clinical impression", "assessment summary",
        "patient/family assessment", "psychosocial assessment", "nutrition assessment",
        "functional assessment", "assessment/impression", "pt assessment", "evaluation",
        "summary", "formulation", "diagnostic impression",
    ),
    "plan": (
        "plan", "p", "plans", "plan of care", "plan/recommendations", "recommendations",
        "recommendation", "plan and recommendations", "treatment plan", "goals", "goal",
        "discharge plan", "discharge planning",
        "plan/goals", "plan of treatment", "care plan", "follow up plan",
    ),
    "assessment_and_plan": (
        "assessment and plan", "assessment/plan", "a/p", "a&p", "ap", "impression and plan",
        "impression/plan", "assessment & plan", "a and p", "assessment plan", "assessment and recommendations",
        "impression and recommendations", "assessment/recommendations", "impression/recommendations",
        "a/p by problem", "plan by problem",
    ),
    "impression": (
        "impression", "impressions", "conclusion", "conclusions", "final impression", "summary of findings",
        "interpretation", "opinion", "final diagnosis", "final diagnoses",
    ),
    "findings": (
        "findings", "finding", "report", "description", "left atrium", "right atrium",
        "right atrium/interatrial septum", "left ventricle", "right ventricle", "aorta",
        "aortic valve", "mitral valve", "tricuspid valve", "pulmonic valve",
        "pulmonic valve/pulmonary artery", "pericardium", "general comments", "la", "ra", "lv", "rv",
        "left atrium/interatrial septum", "interatrial septum", "lv wall motion",
        "regional left ventricular wall motion", "measurements", "body", "observations",
        "gross description", "microscopic description", "details",
    ),
    "indication": (
        "indication", "indications", "reason for exam", "reason for examination",
        "reason for this examination", "reason for study", "reason", "clinical indication",
        "indication for exam", "indication for study", "indication for procedure",
        "reason for test", "clinical information", "clinical indications", "indications for procedure",
        "patient/test information", "patient test information", "test information",
        "reason for procedure",
    ),
    "technique": (
        "technique", "techniques", "procedure technique", "exam technique", "protocol",
        "method", "methods", "technique and findings",
    ),
    "comparison": (
        "comparison", "comparisons", "prior studies", "comparison studies", "compared to",
        "comparison exam", "comparison study", "prior exam",
    ),
    "history": (
        "history", "clinical history", "medical condition", "underlying medical condition", "clinical data",
        "clinical summary", "background", "pertinent history", "history of illness",
    ),
    "procedures": (
        "procedure", "procedures", "major surgical or invasive procedure",
        "major surgical or invasive procedures", "operations", "operation", "procedure performed",
        "procedures performed", "operative procedure", "surgical procedure", "procedure in detail",
        "description of procedure", "operative note", "findings and procedure",
        "anesthesia", "estimated blood loss", "ebl", "complications",
        "drains", "implants", "preoperative diagnosis", "postoperative diagnosis",
        "pre-operative diagnosis", "post-operative diagnosis", "preoperative diagnoses",
        "postoperative diagnoses", "surgeon", "assistant", "fluids", "indications for surgery",
        "invasive procedures", "procedure note",
    ),
    "discharge_diagnosis": (
        "discharge diagnosis", "discharge diagnoses", "diagnosis", "diagnoses",
        "primary diagnosis", "secondary diagnosis", "secondary diagnoses", "principal diagnosis",
        "final diagnosis", "discharge dx", "diagnosis at discharge", "dx",
    ),
    "discharge_condition": ("discharge condition", "condition on discharge", "condition at discharge",
                            "condition"),
    "discharge_disposition": (
        "discharge disposition", "disposition", "dispo", "discharged to", "facility",
    ),
    "discharge_instructions": (
        "discharge instructions", "instructions", "patient instructions", "discharge instruction",
        "instructions for patient", "diet", "activity", "discharge activity", "discharge diet",
    ),
    "followup_instructions": (
        "followup instructions", "follow-up instructions", "follow up instructions",
        "follow up", "follow-up", "followup", "follow up appointments", "follow-up appointments",
        "appointments", "return to clinic",
    ),
    "neuro": ("neuro", "neurological", "neurologic", "neuro/psych", "neurology", "ms",
              "neuro status", "cns", "neuro exam", "neurological exam", "neuro/mental status"),
    "cardiovascular": ("cv", "c/v", "cardiovascular", "cardiac", "heart", "cvs", "cardio", "cor",
                       "chest/cv", "cv status", "cardiac status", "cardiovascular exam", "pulses", "vascular", "ext/vasc", "peripheral vascular", "cardiovascular/peripheral vascular"),
    "respiratory": ("resp", "respiratory", "pulm", "pulmonary", "lungs", "lung", "chest", "resp/pulm", "respiratory/chest", "chest/lungs", "lungs/chest",
                    "respiratory status", "pulmonary/respiratory", "breath sounds", "airway", "vent"),
    "gastrointestinal": ("gi", "abdomen", "abd", "gastrointestinal", "abdominal", "gi/gu",
                         "gi/abd", "gi/nutrition", "nutrition/gi", "gi/gu", "gi status"),
    "genitourinary": ("gu", "genitourinary", "renal", "renal/gu", "gu/renal", "urinary", "pelvic",
                      "rectal", "genitalia", "gyn", "ob/gyn", "gu status", "renal status"),
    "skin": ("skin", "integument", "integumentary", "wound", "wounds", "skin/wound", "incision",
             "skin care", "activity/skin", "skin integrity", "integ", "derm", "skin status"),
    "infectious_disease": ("id", "infectious disease", "infectious diseases", "temp/id",
                           "infection", "id/temp", "heme/id"),
    "lines": ("lines", "access", "lines/access", "iv access", "lines/tubes/drains", "tubes", "lda"),
    "endocrine": ("endo", "endocrine", "endocrine/metabolic", "glycemic"),
    "hematology": ("heme", "hematology", "heme/onc", "hematologic", "coags"),
    "musculoskeletal": ("extremities", "ext", "musculoskeletal", "msk", "back", "spine", "joints",
                        "ortho"),
    "psychiatric": ("psych", "psychiatric", "mental health", "behavior", "mood", "affect"),
    "pain": ("pain", "pain control", "pain management", "comfort"),
    "action": ("action", "actions", "interventions", "intervention"),
    "response": ("response", "responses", "outcome"),
    "heent": ("heent", "head", "eyes", "ears", "nose", "throat", "neck", "head and neck",
              "heent/neck", "eent", "eyes/conjunctiva", "head ears nose throat", "ent", "mouth", "oropharynx", "lymph", "lymph nodes", "lymphatic"),
    "nutrition": ("nutrition", "fen", "fen/gi", "fluids/electrolytes/nutrition", "f/e", "f/e/n", "fluids/electrolytes", "nutrition/diet", "diet/nutrition", "glycemic control", "feeding",
                  "nutritional status", "nutrition plan", "anthropometrics", "estimated needs",
                  "estimated nutritional needs", "diet order", "intake"),
    "icu_care": ("icu care",),
    "prophylaxis": ("prophylaxis", "dvt", "stress ulcer", "vap", "dvt prophylaxis",
                    "gi prophylaxis"),
    "code_status": ("code status", "code", "code status/goals of care", "goals of care", "advance directives",
                    "communication"),
    "objective": ("objective", "o", "objective data"),
    "subjective": ("subjective", "s", "patient complaints", "interval history/subjective"),
    "social_work": ("psychosocial", "social work", "support system", "coping", "family",
                    "social support", "resources", "psychosocial assessment and plan", "contact",
                    "patient/family", "family meeting"),
    "rehab": ("rehab", "pt", "ot", "physical therapy", "occupational therapy", "mobility",
              "functional status", "transfers", "gait", "balance", "strength", "rom",
              "range of motion", "adl", "adls", "cognition", "prior level of function",
              "home environment", "equipment", "therapy", "speech", "swallow",
              "education", "patient education", "teaching"),
    "case_management": ("case management", "discharge planning needs", "insurance", "payer",
                        "utilization review", "barriers to discharge", "anticipated discharge"),
    "final_report": ("final report", "addendum", "preliminary report", "wet read",
                     "final addendum"),
    "specimen": (
        "specimen", "specimens", "specimens submitted", "specimen submitted", "specimens received",
        "specimen received", "source of specimen", "specimen source", "tissue submitted",
        "specimen type",
    ),
    "past_psychiatric_history": (
        "past psychiatric history", "psychiatric history", "prior psychiatric history",
        "past psych history", "psych history", "past psychiatric hx", "psychiatric hx",
        "psychiatric treatment history", "previous psychiatric history",
        "history of psychiatric illness", "past psychiatric and substance use history",
    ),
    "mental_status_exam": (
        "mental status examination", "mental status exam", "mse", "mental state examination",
        "mental state exam", "psychiatric examination", "psychiatric exam",
        "mental status and cognitive exam",
    ),
    "signature": ("electronically signed by", "dictated by", "signed by", "attending addendum",
                  "attending note", "attending attestation", "resident", "transcribed by",
                  "cc list"),
}

#: header variant (normalised) -> canonical category
HEADER_LEXICON: dict[str, str] = {}
for _cat, _variants in _SECTIONS.items():
    for _v in _variants:
        HEADER_LEXICON.setdefault(_v, _cat)
del _cat, _variants, _v

#: ``key: value`` names that are never section headers (normalised).
FIELD_NAMES: frozenset[str] = frozenset(
    w.strip() for w in """
temp,temperature,tmax,tmin,tcurrent,hr,heart rate,pulse,bp,blood pressure,sbp,dbp,map,rr,
respiratory rate,resp rate,o2 sat,o2sat,spo2,sao2,sat,sats,o2 saturation,fio2,peep,psv,ps,vt,
vt set,vt spontaneous,rr set,rr spontaneous,pip,plateau,compliance,rsbi,abg,ve,minute ventilation,
mode,ventilator mode,vent mode,o2 delivery device,o2 flow,o2 delivery,cvp,pap,pcwp,co,ci,svr,svo2,icp,
wt,weight,ht,height,bmi,bsa,bsa m2,weight lb,height in,bp mm hg,hr bpm,cm h2o,total in,
total out,po,tf,ivf,blood products,urine,ng,stool,in,out,gcs,pain score,rhythm,heart rhythm,
na,k,cl,co2,hco3,bun,cr,creat,creatinine,glucose,gluc,ca,mg,phos,po4,wbc,hgb,hb,hct,plt,platelets,
inr,ptt,alt,ast,alk phos,t bili,tbili,albumin,lactate,lactic acid,trop,troponin,ck,ckmb,ck-mb,
bnp,ldh,amylase,lipase,tsh,ph,pco2,po2,base excess,ferritin,iron,esr,crp,procalcitonin,ammonia,
fingerstick,fsbg,bs,blood sugar,age,name,patient name,unit no,unit number,mrn,mr#,medical record number,
admission no,first name,last name,pager,pager#,pager number,phone,telephone,fax,tel,cell,md,rn,np,
date,time,date/time,status,test,doppler,technical quality,location,room,bed,clip,clip number,
clip #,contrast,job#,job number,job #,completed by,provider,mental status,level of consciousness,activity status,dictated by md,d,t,
ekg rate,pr,qrs,qt,qtc,qt/qtc,p qrs t,axes,intervals,rate,
tv,ie,i:e,etco2,peak,mean,fluid in,fluid out,net,los,length of stay,
height (in),weight (lb),bp (mm hg),hr (bpm),bsa (m2),
wbc count,hematocrit,hemoglobin,platelet count,sodium,potassium,chloride,bicarbonate,calcium,
magnesium,phosphorus,uric acid,specific gravity,protein,ketones,blood,nitrite,leukocytes,
epi,bacteria,yeast,rbc,urobilinogen,bilirubin,
""".replace("\n", "").split(",") if w.strip()
)

# "p" and "o" and "a" and "s" are SOAP headers (S:/O:/A:/P:), not fields; "pt" is patient/PT.
FIELD_NAMES = FIELD_NAMES - {"p", "o", "a", "s", "pt", "id", "ms", "code", "gen", "general"}

_BRACKET_RE = re.compile(r"\[\*\*.*?\*\*\]")
_NON_WORD_RE = re.compile(r"[^a-z0-9/#&+'\- ]+")
_SPACE_RE = re.compile(r"\s+")


def normalize_title(title: str) -> str:
    """Lower-case lexicon key for a header as written (``'[**X**] MEDICAL  CONDITION:'`` ->
    ``'medical condition'``)."""
    t = _BRACKET_RE.sub(" ", title).lower().replace("&", " and ")
    t = _NON_WORD_RE.sub(" ", t)
    t = t.replace(" / ", "/").replace("/ ", "/").replace(" /", "/")
    return _SPACE_RE.sub(" ", t).strip(" -/#'")


_PAREN_RE = re.compile(r"\([^)]*\)")


def lookup_header(title: str) -> str | None:
    """Canonical category of a header title, or None if it is not in the lexicon."""
    key = normalize_title(title)
    cat = HEADER_LEXICON.get(key)
    if cat is not None:
        return cat
    # Variants: without a parenthetical ("Review of Systems (ROS)"), with "and" for "/",
    # singular/plural.
    alt = normalize_title(_PAREN_RE.sub(" ", title))
    if alt != key and alt in HEADER_LEXICON:
        return HEADER_LEXICON[alt]
    if "/" in key:
        for cand in (key.replace("/", " and "), key.replace("/", " ")):
            if cand in HEADER_LEXICON:
                return HEADER_LEXICON[cand]
        # "IMPRESSION / DIAGNOSIS", "MEDICATIONS/ALLERGIES", "SHX/FHX": the first part
        head = key.split("/", 1)[0].strip()
        if len(head) >= 2 and head in HEADER_LEXICON:
            return HEADER_LEXICON[head]
    if key.endswith("s") and key[:-1] in HEADER_LEXICON:
        return HEADER_LEXICON[key[:-1]]
    return _variant_lookup(alt)


def _variant_lookup(key: str) -> str | None:
    """Abbreviated or misspelt titles: "Hx of present illness", "Past surg hx", "Pysical exam".
    Only called when the exact look-ups failed (the result is cached with the title)."""
    words = key.split()
    if not words or len(words) > 7:
        return None
    exp = " ".join(TITLE_ABBREVIATIONS_EXPANDED.get(w, w) for w in words)
    exp = _SPACE_RE.sub(" ", exp.replace(" of the ", " of ")).strip()
    for cand in (exp, exp.replace("/", " and ")):
        cat = HEADER_LEXICON.get(cand)
        if cat is not None:
            return cat
    # one typo per word (a missing, extra or swapped letter) in words of 5+ letters
    fixed = [_spell(w) if len(w) >= 5 and w not in _VOCAB else w for w in exp.split()]
    if fixed != exp.split():
        return HEADER_LEXICON.get(" ".join(fixed))
    return None


def _deletes(w: str) -> set[str]:
    return {w[:i] + w[i + 1:] for i in range(len(w))}


def _spell(w: str) -> str:
    """The unique lexicon word one missing, extra or swapped letter away from ``w``, else ``w``.
    Substitutions are not tried: "source" must not become "course"."""
    cands: set[str] = set(_MISSING.get(w, ()))  # w lacks a letter of a lexicon word
    cands.update(d for d in _deletes(w) if d in _VOCAB)  # w has an extra letter
    for i in range(len(w) - 1):  # two letters swapped
        t = w[:i] + w[i + 1] + w[i] + w[i + 2:]
        if t in _VOCAB:
            cands.add(t)
    return cands.pop() if len(cands) == 1 else w


_EMPTY_HEADS = {"description", "details", "detail", "summary", "name", "title", "type", "list"}


def guess_category(title: str) -> str | None:
    """Category of an unknown header whose head words are a known header.

    English puts the head noun last, so the longest known suffix wins ("Clinical
    Assessment" -> assessment, "Brief Interim Hospital Course" -> hospital_course); then the
    longest known prefix ("Respiratory Care" -> respiratory). Titles of more than five words
    are left unknown. Used only for headers already accepted as headers.
    """
    words = normalize_title(_PAREN_RE.sub(" ", title)).split()
    if not 2 <= len(words) <= 5:
        return None
    for prep in ("of", "for", "in", "on", "to"):
        if prep in words[1:-1]:
            # "Indications for operation": the head is before the preposition.
            head = words[: words.index(prep)]
            if " ".join(head) not in _EMPTY_HEADS:  # "Details of the procedure": the tail
                cat = HEADER_LEXICON.get(" ".join(head)) or guess_category(" ".join(head))
                if cat is not None:
                    return cat
            words = [w for w in words if w not in ("of", "for", "in", "on", "to", "the")]
            break
    for k in range(1, len(words)):
        cat = HEADER_LEXICON.get(" ".join(words[k:]))
        if cat is not None:
            return cat
    for k in range(len(words) - 1, 0, -1):
        cat = HEADER_LEXICON.get(" ".join(words[:k]))
        if cat is not None:
            return cat
    return None


def is_field_name(title: str) -> bool:
    """True when ``title`` is a known ``key: value`` field name (never a header)."""
    key = normalize_title(title)
    if key in FIELD_NAMES:
        return True
    alt = normalize_title(_PAREN_RE.sub(" ", title))
    return alt in FIELD_NAMES and alt not in HEADER_LEXICON


# --------------------------------------------------------------------------- abbreviations
# Lower-cased, without the final period. Two classes:
#  * NO_BREAK_ABBREVIATIONS precede something (a name, a number): a following period never ends
#    a sentence ("Dr. [**Name**]", "approx. 3 L", "e.g. heparin", "No. 5").
#  * ABBREVIATIONS can end a sentence ("... at 7 a.m. The patient ...", "... etc. He ..."): after
#    them we split only before a capitalised word (or an inline list item), never before a
#    lowercase word or a number.
#: personal and place titles; matched case-sensitively in sentences.py ("Ms." vs "450 ms.",
#: "St. Louis" vs "HR 100s ST.")
TITLE_ABBREVIATIONS: frozenset[str] = frozenset(
    "mr mrs ms dr drs prof rev hon sr messrs mme mlle st mt ft gen col capt lt sgt maj cmdr adm "
    "gov sen rep pres supt".split()
)

NO_BREAK_ABBREVIATIONS: frozenset[str] = frozenset("""
pt pts approx appox aprox apprx e.g eg
i.e ie viz cf vs v fig figs no nos ref refs vol vols pp ca c.f pg op cit ibid e.g., i.e., esp incl
dept univ assoc inst est appt approx.
re attn apt bldg tel ext dx'd abt w/o c/o a/w q
""".split())

ABBREVIATIONS: frozenset[str] = frozenset("""
a.m am p.m pm noon etc et al al jr sr ph.d phd m.d md d.o do r.n rn n.p np p.a pa b.s bs m.s ms
b.a ba d.d.s dds inc ltd co corp llc jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues
wed thu thur thurs fri sat sun
yr yrs y.o yo wk wks mo mos hr hrs h min mins sec secs d.
mg mcg g gm gms kg lb lbs lbs oz ml cc l dl meq mmol mmhg mm cm m in ft u iu cal kcal
b.i.d bid t.i.d tid q.i.d qid q.d qd q.o.d qod q.h qh q.h.s qhs h.s hs q.a.m qam q.p.m qpm
p.o po p.r pr p.r.n prn i.v iv i.m im s.c sc s.q sq subq sub-q s.l sl o.d od o.s os o.u ou
a.c ac p.c pc stat q4h q6h q8h q12h q24h q4-6h q2h q3h q1h qhr qwk qmo qam q.week qweek
gtt gtts tab tabs cap caps inj soln susp supp syr elix ung oint liq disp sig rx tx hx sx dx fx
cont contd cont'd approx approximately temp resp neg pos abd ext bilat lat med max min avg
sl slt mod sev occ freq incr decr dec inc diff ant post sup inf lt rt l r bil pt pts ht wt
req reqd eval evals sched imp dept info adm admin prev hosp hosp. dept lab labs meds med
rxn fam hist pmd pmh sob doe nl wnl wnr ntd mult diag pos. uncompl
a.s.a asa n.p.o npo d/c dc'd d.c w.n.l n.a na n/a
vit dil conc tbsp tsp amt amts bx cx ux rx mgmt mgt mngmt
""".split())

#: abbreviations that precede a number: "Fig. 2", "vol. 3", "pg. 4", "p. 12", "No. 5"
BEFORE_NUMBER_ABBREVIATIONS: frozenset[str] = frozenset("""
fig figs vol vols pg pgs p pp no nos ch chap eq eqs tab tbl ref refs art para pt rm apt ste fl
bldg ext tel dept approx
""".split())

#: abbreviations of units and durations: a clause usually goes on after them ("30 sec. after",
#: "2 yrs. ago"), so "." + lowercase word is not a boundary.
UNIT_ABBREVIATIONS: frozenset[str] = frozenset("""
mg mcg g gm gms kg lb lbs oz ml cc l dl meq mmol mmhg mm cm m in ft u iu cal kcal yr yrs y.o yo wk
wks mo mos hr hrs h min mins sec secs etc al vs a.m p.m am pm approx
""".split())

#: plain (undotted) abbreviations that typically END a clause in lower-case nursing text
#: ("... kcl po. pulses palp", "... +bs. tolerating"): "." + lowercase word is a boundary after
#: them (after the other ABBREVIATIONS it is not: "cont. to monitor", "temp. 38").
FINAL_ABBREVIATIONS: frozenset[str] = frozenset("""
bs po iv im sc sq subq sl pr prn qd bid tid qid qhs hs qod qam qpm stat npo rn md np pa phd jr
inc ltd co corp llc wnl wnr nl ntd sob doe asa na dc'd q4h q6h q8h q12h q24h q2h q3h q1h qhr
gtt gtts tab tabs caps inj rxn hx sx dx fx tx rx labs meds
""".split())

#: words before a single capital letter that make "X." a label, not an initial (vitamin D.)
LETTER_LABEL_WORDS: frozenset[str] = frozenset(
    "vitamin vit hepatitis hep type group grade class stage lead leads zone factor protein "
    "plan option appendix part level phase section step schedule category antigen strep "
    "complex segment wave".split()
)

#: species names after a genus initial ("E. coli", "H. pylori", "C. diff"): never a boundary
SPECIES: frozenset[str] = frozenset(
    "coli pylori aureus diff dif difficile pneumoniae aeruginosa epidermidis faecalis faecium "
    "albicans glabrata krusei marcescens cloacae aerogenes influenzae jirovecii jiroveci carinii "
    "fragilis mirabilis perfringens lugdunensis mutans viridans maltophilia baumannii oxytoca "
    "pyogenes agalactiae lactis monocytogenes meningitidis gonorrhoeae trachomatis pallidum "
    "burgdorferi neoformans fumigatus vulgaris capitis hominis haemolyticus anginosus".split()
)

#: words that cannot end a sentence: a line ending with one continues on the next line
CONTINUATION_WORDS: frozenset[str] = frozenset(
    "a an the of to in on at by for from with without and or but nor as than that which who "
    "whose whom is are was were be been being has have had will would shall should can could "
    "may might must into onto upon over under after before during between about against "
    "per via w/ s/p h/o c/o r/o secondary due including includes include not no his her "
    "their its our your my this these those some any each every both either neither such "
    "then also very more less most least showed shows revealed reveals demonstrated "
    "consistent likely possibly probable possible".split()
)


# Operative-report variants the suffix rule would otherwise map to discharge diagnosis.
for _t in ("preop diagnosis", "postop diagnosis", "pre op diagnosis", "post op diagnosis",
           "preprocedure diagnosis", "postprocedure diagnosis", "preoperative diagnoses",
           "postoperative diagnoses", "preop diagnoses", "postop diagnoses"):
    HEADER_LEXICON.setdefault(_t, "procedures")
for _t in ("medication history", "home medications", "outpatient medications"):
    HEADER_LEXICON.setdefault(_t, "medications")
HEADER_LEXICON.setdefault("procedure details", "procedures")
HEADER_LEXICON.setdefault("procedure detail", "procedures")


# ----------------------------------------------------------------------------- v2 additions
# Header variants of clinic, consult, operative, pathology and psychiatric notes (v2), added
# with setdefault so that the original variants keep their categories.
_V2_SECTIONS: dict[str, tuple[str, ...]] = {
    "admission_info": (
        "date of operation", "date of procedure", "date of surgery", "date of consultation",
        "date of consult", "date of visit", "visit date", "encounter date", "date of evaluation",
        "date of exam", "date of note", "requesting provider", "referring provider",
        "consulting physician", "referred by", "surgery date", "procedure date",
    ),
    "chief_complaint": ("reason for the visit", "reason for the consultation",
                        "reason for request", "presenting problem"),
    "history_of_present_illness": (
        "collateral history", "collateral", "collateral information", "oncologic history",
        "oncology history",
    ),
    "social_history": (
        "substance use history", "substance abuse", "substance abuse history", "tobacco use",
        "alcohol use", "drug use", "social and substance history",
    ),
    "review_of_systems": ("review of symptoms", "ros (review of systems)"),
    "physical_exam": (
        "on examination", "o/e", "examination findings", "clinical examination",
        "exam findings", "physical examination findings",
    ),
    "heent": ("hent",),
    "labs_and_studies": (
        "investigations", "investigation", "laboratory findings", "lab findings",
        "data reviewed", "results reviewed", "pertinent labs", "pertinent data",
        "relevant results",
    ),
    "imaging": ("echo", "echocardiogram", "echocardiography", "tte", "tee"),
    "hospital_course": ("events", "shift events", "significant events"),
    "past_medical_history": (
        "hospitalizations", "prior hospitalizations", "previous hospitalizations", "illnesses",
        "medical illnesses", "coronary risk factors", "cardiac risk factors", "risk factors",
        "childhood illnesses", "immunizations", "immunization history", "health maintenance",
        "previous injuries", "prior injuries", "chronic conditions", "active problems",
        "active problem list", "current problems", "medical problem list",
    ),
    "past_surgical_history": ("surgeries", "past surgeries", "prior surgery", "surgical hx"),
    "chief_complaint": ("present complaints", "presenting complaints", "complaints",
                        "reason for admission/chief complaint"),
    "plan": ("treatment", "prescriptions", "counseling", "orders", "tests ordered",
             "diagnostic and lab orders", "labs ordered", "work status", "therapy plan",
             "treatment recommendations", "disposition plan", "next steps", "instructions given"),
    "labs_and_studies": ("spirometry", "diffusion capacity", "tests administered", "test results",
                         "pulmonary function tests", "pfts"),
    "final_report": ("note added at attending review", "attending review", "addenda",
                     "revised report", "corrected report"),
    "code_status": ("advance care planning", "advance directive", "acp", "resuscitation status"),
    "assessment": (
        "discussion", "prognosis", "clinical discussion", "summary and discussion",
        "medical decision making", "mdm", "risk assessment", "suicide risk assessment",
        "clinical formulation", "case formulation", "differential diagnosis", "ddx",
    ),
    "impression": ("comment", "comments"),
    "procedures": (
        "blood loss", "tourniquet time", "duration of surgery", "operative time", "position",
        "positioning", "operative preparation", "preparation", "instruments", "implant",
        "hardware", "closure", "sutures", "wound closure", "anesthesia type", "type of anesthesia",
        "operator", "operators", "proceduralist", "consent", "informed consent", "time out",
        "time-out", "timeout", "universal protocol", "operation performed", "surgeons",
        "anesthesiologist",
    ),
    "signature": (
        "signed", "signed electronically by", "electronically signed", "electronically signed out by",
        "signed out by", "digitally signed by", "e-signed by", "attestation",
        "teaching physician attestation", "physician attestation",
        "supervising physician attestation", "attending statement", "teaching attestation",
        "attending physician attestation", "electronic signature", "yours sincerely",
        "sincerely", "yours faithfully", "yours truly", "kind regards", "best regards",
        "with kind regards", "with best regards", "with best wishes", "best wishes", "regards",
        "respectfully",
    ),
}
for _cat, _variants in _V2_SECTIONS.items():
    for _v in _variants:
        HEADER_LEXICON.setdefault(_v, _cat)
del _cat, _variants, _v
# "Signed:" closes a note (a signature), not a report status.
HEADER_LEXICON["signed"] = "signature"

#: Categories whose meaning depends on the note: in a *report* (radiology, echo, pathology,
#: procedure reports: notes with a findings / technique / comparison / specimen / final-report
#: header) "Impression" is the report's conclusion and "Final diagnosis" the pathologist's; in a
#: clinician's note they are the assessment and the diagnosis list. See ``sections.py``.
REPORT_CATEGORIES = frozenset({"findings", "technique", "comparison", "specimen", "final_report"})

#: Sub-sections: normalised sub-heading -> sub-section category, per container family.
#: A sub-heading that is not listed gets the body-system category of its lexicon entry where
#: it has one (``_SYSTEM_SUB``), else "other".
_BODY_SUBS: dict[str, tuple[str, ...]] = {
    "constitutional": ("general", "gen", "general appearance", "constitutional", "appearance",
                       "general exam", "general survey", "constitutional symptoms", "overall"),
    "vital_signs": ("vital signs", "vitals", "vs", "vital sign", "vital signs on admission",
                    "admission vitals", "discharge vitals", "vitals on discharge"),
    "heent": ("heent", "hent", "head", "eyes", "ears", "nose", "throat", "mouth", "ent", "eent",
              "neck", "eyes/conjunctiva", "eyes / conjunctiva", "head and neck", "heent/neck",
              "oropharynx", "ears/nose/mouth/throat", "ears nose mouth throat",
              "ear/nose/throat", "ophthalmologic", "oral", "face", "head/neck", "pupils",
              "fundi", "fundoscopic", "teeth", "dentition", "tympanic membranes", "tms",
              "oral cavity", "pharynx", "sinuses", "thyroid"),
    "cardiovascular": ("cv", "cardiovascular", "heart", "cardiac", "cvs", "cor", "cardio",
                       "pulses", "peripheral vascular", "vascular", "chest/cv",
                       "cardiovascular/peripheral vascular", "ext/vasc"),
    "respiratory": ("lungs", "lung", "chest", "respiratory", "resp", "pulmonary", "pulm",
                    "chest/lungs", "lungs/chest", "respiratory/chest", "breath sounds",
                    "breathing", "respiratory effort"),
    "breast": ("breast", "breasts", "chest/breast"),
    "gastrointestinal": ("abdomen", "abd", "gi", "gastrointestinal", "abdominal", "gi/abd",
                         "abdomen/gi", "rectal/gi"),
    "genitourinary": ("gu", "genitourinary", "rectal", "pelvic", "genitalia", "gyn",
                      "genital", "urinary", "renal", "renal/gu", "gu/renal", "pelvis", "anus",
                      "perianal", "rectum", "external genitalia", "pelvic exam", "rectal exam"),
    "musculoskeletal": ("ext", "extremities", "extremity", "musculoskeletal", "msk", "back",
                        "spine", "joints", "rom", "range of motion", "strength",
                        "musculoskeletal/extremities", "extremities/musculoskeletal", "hips",
                        "hip", "knees", "knee", "shoulders", "shoulder", "hands", "hand",
                        "feet", "foot", "wrists", "ankles", "cervical spine", "lumbar spine",
                        "chest wall"),
    "skin": ("skin", "integument", "integumentary", "derm", "dermatologic", "skin/wound",
             "wound", "incision", "incisions"),
    "neuro": ("neuro", "neurological", "neurologic", "neurology", "cns", "nervous system",
              "neuro exam", "neurological exam", "reflexes", "deep tendon reflexes", "dtrs",
              "cranial nerves", "motor", "motor exam", "sensory", "sensory exam", "sensation",
              "coordination", "cerebellar", "muscle tone", "tone", "gait and station"),
    "psychiatric": ("psych", "psychiatric", "psychological", "mood", "behavioral",
                    "mental status", "mood/affect", "psych/mood"),
    "endocrine": ("endo", "endocrine", "endocrinologic", "endocrine/metabolic"),
    "hematology": ("heme", "hematologic", "hematology", "heme/lymph", "hematologic/lymphatic",
                   "hem/lymph", "heme/lymphatic", "hematologic/lymphatic/immunologic"),
    "lymphatic": ("lymph", "lymph nodes", "lymphatic", "lymphatics", "lymph node",
                  "lymphadenopathy", "nodes"),
    "allergic_immunologic": ("allergic/immunologic", "allergic/immunology",
                             "allergy/immunology", "immunologic", "allergic",
                             "allergic immunologic", "immunology"),
    "cognition": ("cognition",),
}
_MSE_SUBS: dict[str, tuple[str, ...]] = {
    "appearance": ("appearance", "general appearance", "general", "appearance and behavior",
                   "appearance/behavior"),
    "behavior": ("behavior", "behaviour", "attitude", "psychomotor", "psychomotor activity",
                 "motor activity", "eye contact", "attitude/behavior", "engagement"),
    "speech": ("speech", "language", "speech/language"),
    "mood_affect": ("mood", "affect", "mood/affect", "mood and affect", "emotion"),
    "thought_process": ("thought process", "thought processes", "thought form",
                        "form of thought", "thought process/form", "associations"),
    "thought_content": ("thought content", "thought contents", "content of thought",
                        "suicidal ideation", "homicidal ideation", "si/hi", "delusions",
                        "safety", "preoccupations"),
    "perception": ("perception", "perceptions", "perceptual disturbances", "hallucinations",
                   "perceptual"),
    "cognition": ("cognition", "sensorium", "orientation", "memory", "attention",
                  "concentration", "cognitive", "sensorium/cognition", "fund of knowledge",
                  "level of consciousness", "alertness", "intellect"),
    "insight_judgment": ("insight", "judgment", "judgement", "insight/judgment",
                         "insight and judgment", "judgment/insight", "insight/judgement",
                         "insight and judgement"),
}
_RESULTS_SUBS: dict[str, tuple[str, ...]] = {
    "labs_and_studies": (
        "admission labs", "discharge labs", "labs on admission", "labs on discharge", "labs",
        "laboratory", "lab", "micro", "microbiology", "cultures", "blood cultures",
        "urine culture", "ecg", "ekg", "electrocardiogram", "telemetry", "urinalysis", "ua",
        "abg", "cbc", "chemistry", "chemistries", "coags", "lfts", "other labs",
        "pertinent labs", "labs/studies", "interval labs", "last labs", "pathology",
    ),
    "imaging": (
        "imaging", "radiology", "cxr", "chest x-ray", "chest xray", "x-ray", "xray", "ct",
        "ct scan", "cta", "mri", "mra", "ultrasound", "us", "echo", "echocardiogram", "tte",
        "tee", "imaging studies", "studies", "kub", "ct head", "ct chest", "ct abdomen",
        "head ct", "doppler", "dopplers", "v/q", "nuclear", "stress test", "cath",
        "cardiac cath", "catheterization",
    ),
}
_FINDINGS_SUBS: dict[str, tuple[str, ...]] = {
    "cardiovascular": (
        "heart", "heart and pericardium", "pericardium", "aorta", "vasculature", "vessels",
        "vascular", "great vessels", "heart/mediastinum", "cardiovascular", "coronary arteries",
        "left atrium", "right atrium", "left ventricle", "right ventricle", "aortic valve",
        "mitral valve", "tricuspid valve", "pulmonic valve", "pulmonic valve/pulmonary artery",
        "right atrium/interatrial septum", "left atrium/interatrial septum",
        "interatrial septum", "lv wall motion", "regional left ventricular wall motion",
        "la", "ra", "lv", "rv",
    ),
    "respiratory": (
        "lungs", "lung", "lower chest", "lung bases", "chest", "pleura", "lungs/pleura",
        "lungs and pleura", "airways", "airway", "lungs and airways", "trachea",
        "mediastinum", "hila", "thorax",
    ),
    "gastrointestinal": (
        "liver", "gallbladder", "gallbladder and bile ducts", "biliary", "bile ducts",
        "pancreas", "bowel", "bowel/peritoneum", "stomach", "esophagus", "small bowel",
        "colon", "appendix", "peritoneum", "bowel and mesentery", "gastrointestinal",
        "gi tract", "hepatobiliary", "abdomen", "liver/biliary", "mesentery",
    ),
    "genitourinary": (
        "kidneys", "kidney", "kidneys/ureters", "kidneys and ureters", "ureters", "bladder",
        "urinary bladder", "prostate", "uterus", "ovaries", "adnexa", "pelvis",
        "pelvic organs", "reproductive organs", "genitourinary", "urinary tract",
        "kidneys/ureters/bladder", "scrotum", "testes",
    ),
    "lymphatic": ("spleen", "lymph nodes", "nodes", "lymphatic", "lymphadenopathy"),
    "endocrine": ("adrenals", "adrenal glands", "adrenal", "thyroid"),
    "musculoskeletal": (
        "bones", "osseous structures", "bones and soft tissues", "bones/soft tissues",
        "soft tissues", "musculoskeletal", "osseous", "skeleton", "spine", "joints",
        "body wall", "soft tissue",
    ),
    "neuro": ("brain", "brain parenchyma", "ventricles", "extra-axial spaces", "posterior fossa",
              "spinal cord", "orbits", "sella"),
    "heent": ("sinuses", "paranasal sinuses", "mastoids", "neck", "soft tissues of the neck"),
    "other": ("general comments", "other findings", "incidental findings",
              "lines and tubes", "tubes and lines", "support devices"),
}
_DX_SUBS: dict[str, tuple[str, ...]] = {
    "primary_diagnosis": ("primary", "primary diagnosis", "primary diagnoses", "principal",
                          "principal diagnosis", "principal diagnoses", "main diagnosis"),
    "secondary_diagnosis": ("secondary", "secondary diagnosis", "secondary diagnoses",
                            "secondary/chronic", "chronic", "chronic diagnoses",
                            "chronic problems", "other diagnoses", "comorbidities",
                            "active", "inactive", "resolved"),
}


def _flatten(d: dict[str, tuple[str, ...]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for cat, variants in d.items():
        for v in variants:
            out.setdefault(v, cat)
    return out


#: container family -> {normalised sub-heading: sub-section category}
SUBSECTION_LEXICON: dict[str, dict[str, str]] = {
    "body": _flatten(_BODY_SUBS),
    "mse": _flatten(_MSE_SUBS),
    "results": _flatten(_RESULTS_SUBS),
    "findings": _flatten(_FINDINGS_SUBS),
    "diagnosis": _flatten(_DX_SUBS),
}
#: every sub-heading of any family (a candidate that is only a header inside a container)
ALL_SUBHEADINGS: frozenset[str] = frozenset(k for d in SUBSECTION_LEXICON.values() for k in d)

#: top-level category of a body-system header -> its sub-section category inside an exam
SYSTEM_SUBCATEGORY: dict[str, str] = {
    "neuro": "neuro", "cardiovascular": "cardiovascular", "respiratory": "respiratory",
    "gastrointestinal": "gastrointestinal", "genitourinary": "genitourinary", "skin": "skin",
    "heent": "heent", "musculoskeletal": "musculoskeletal", "psychiatric": "psychiatric",
    "endocrine": "endocrine", "hematology": "hematology", "vital_signs": "vital_signs",
    "infectious_disease": "infectious_disease", "pain": "pain", "nutrition": "nutrition",
    "lines": "lines", "prophylaxis": "prophylaxis",
}

# --------------------------------------------------------------------------- abbreviated titles
#: abbreviations in header titles, expanded before a second lexicon look-up
#: ("Hx of present illness", "Past surg hx", "D/C meds", "Pre-op dx")
TITLE_ABBREVIATIONS_EXPANDED: dict[str, str] = {
    "hx": "history", "hist": "history", "h/o": "history of", "surg": "surgical",
    "surgic": "surgical", "med": "medical", "meds": "medications", "medic": "medical",
    "fam": "family", "soc": "social", "psych": "psychiatric", "psy": "psychiatric",
    "phys": "physical", "dx": "diagnosis", "dxs": "diagnoses", "tx": "treatment",
    "sx": "symptoms", "proc": "procedure", "procs": "procedures", "hosp": "hospital",
    "adm": "admission", "admit": "admission", "d/c": "discharge", "dc": "discharge",
    "disch": "discharge", "instr": "instructions", "f/u": "follow up", "fu": "follow up",
    "w/": "with", "eval": "evaluation", "assess": "assessment", "assmt": "assessment",
    "rec": "recommendations", "recs": "recommendations", "recommend": "recommendations",
    "cond": "condition", "preop": "preoperative", "pre-op": "preoperative",
    "postop": "postoperative", "post-op": "postoperative", "op": "operative",
    "exam": "examination", "pres": "present", "presenting": "present", "ill": "illness",
    "illn": "illness", "hpi": "history of present illness", "pmh": "past medical history",
    "psh": "past surgical history", "fhx": "family history", "shx": "social history",
    "lab": "laboratory", "labs": "laboratory", "resp": "respiratory", "neuro": "neurological",
    "pe": "physical examination", "ros": "review of systems", "sys": "systems",
    "a/p": "assessment and plan", "&": "and", "+": "and", "prev": "previous",
    "pt": "patient", "pts": "patient", "info": "information", "hist.": "history",
}

#: lexicon words long enough to be spell-corrected towards
_VOCAB: frozenset[str] = frozenset(
    w for k in HEADER_LEXICON for w in k.replace("/", " ").split() if len(w) >= 5 and w.isalpha()
)
_MISSING: dict[str, list[str]] = {}
for _w in _VOCAB:
    for _d in _deletes(_w):
        _MISSING.setdefault(_d, []).append(_w)
del _w, _d
