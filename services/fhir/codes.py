"""The codes DermaTriage's FHIR resources use: SNOMED CT where we could verify the concept in
a published terminology server, our own code systems (stable canonical URLs) for the rest.

SNOMED CT concepts, each from a published source:
- tx.fhir.org's SNOMED CT browser (International Edition): 254701007 Basal cell carcinoma of
  skin, 372130007 Malignant melanoma of skin, 400096001 Melanocytic nevus;
- DICOM PS3.16 (the dermatology context groups, as pydicom's code dictionary ships them):
  201101007 Actinic keratosis (CID 4405), and the red flags 297968009 Bleeding skin and
  162499001 Symptom has changed (CID 4406).
Benign keratosis, dermatofibroma and vascular lesion carry our own code only, until each
concept is checked the same way: a wrong clinical code is worse than none. The AK/SCC in
situ class is coded as actinic keratosis, its commonest member; its text says both.
"""

from __future__ import annotations

from ..vocabulary import DIAGNOSIS_NAMES, Diagnosis

SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
BASE = "https://fhir.dermatriage.org"
CS_DIAGNOSIS = f"{BASE}/CodeSystem/diagnosis"
CS_OBSERVATION = f"{BASE}/CodeSystem/observation"
CS_PATTERN = f"{BASE}/CodeSystem/dermoscopic-pattern"
CS_RED_FLAG = f"{BASE}/CodeSystem/red-flag"
CS_BODY_SITE = f"{BASE}/CodeSystem/body-site"
CS_IMAGE_KIND = f"{BASE}/CodeSystem/image-kind"
CS_RISK_TIER = f"{BASE}/CodeSystem/risk-tier"
CS_SCOPE = f"{BASE}/CodeSystem/scope-verdict"
CS_MANAGEMENT = f"{BASE}/CodeSystem/management"
CS_REPORT = f"{BASE}/CodeSystem/report"
ID_CASE = f"{BASE}/identifier/case"
ID_PSEUDONYM = f"{BASE}/identifier/patient-pseudonym"
ID_USER = f"{BASE}/identifier/user"
ID_AUDIT = f"{BASE}/identifier/audit-record"
ID_MODEL = f"{BASE}/identifier/model-sha256"
TOPIC = f"{BASE}/SubscriptionTopic/report-final-or-amended"
EXT_AGE = f"{BASE}/StructureDefinition/age"

SNOMED_DIAGNOSIS = {
    Diagnosis.BCC: ("254701007", "Basal cell carcinoma of skin"),
    Diagnosis.MEL: ("372130007", "Malignant melanoma of skin"),
    Diagnosis.NV: ("400096001", "Melanocytic nevus"),
    Diagnosis.AKIEC: ("201101007", "Actinic keratosis"),
}

# Codes the referral's ServiceRequest.reason may carry: the form's red flags, ours or SNOMED CT.
RED_FLAGS = {"changed": "Lesion has changed", "bleeding": "Lesion bleeds"}
RED_FLAG_SNOMED = {"changed": ("162499001", "Symptom has changed"), "bleeding": ("297968009", "Bleeding skin")}


def diagnosis_concept(code: str, other_text: str = "") -> dict:
    """A diagnosis as a CodeableConcept: SNOMED CT (where verified) and our own code."""
    dx = Diagnosis(code)
    name = (other_text or DIAGNOSIS_NAMES[dx]) if dx == Diagnosis.OTHER else DIAGNOSIS_NAMES[dx]
    coding = []
    if dx in SNOMED_DIAGNOSIS:
        sct, display = SNOMED_DIAGNOSIS[dx]
        coding.append({"system": SNOMED, "code": sct, "display": display})
    coding.append({"system": CS_DIAGNOSIS, "code": dx.value, "display": DIAGNOSIS_NAMES[dx]})
    return {"coding": coding, "text": name}


def concept(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], "text": display or code}


def probability(value: float) -> dict:
    return {"value": round(float(value), 4), "unit": "probability", "system": UCUM, "code": "1"}
