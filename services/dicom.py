"""DICOM Part 10 images on intake: read through pydicom, keep only what a referral needs.

Dermoscopes and clinical cameras that speak DICOM send VL Photographic Image Storage or, since
DICOM added it, Dermoscopic Photography Image Storage objects. Intake (``services/intake.py``)
hands any upload that carries the Part 10 preamble to ``read``, which decodes the pixel data
(uncompressed, or JPEG baseline through Pillow; anything else is refused naming its transfer
syntax) and maps the few attributes the case can use (age, sex, body part, device, whether the
image is dermoscopic). Everything else, the patient's name, identifiers, birth date, dates,
institution and operator names, is dropped: what the product stores is the re-encoded pixels
alone, the outcome the DICOM PS3.15 Basic Application Level Confidentiality Profile asks for,
without the header that would need cleaning. An image whose pixels carry burned-in annotation
(which may show the patient's name) is refused: removing it needs a human.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import ValidationError

PREAMBLE = 128
MAGIC = b"DICM"
MEDIA_TYPE = "application/dicom"
# SOP classes read as photographs of skin, and whether each is dermoscopic by definition.
SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.77.1.7": ("Dermoscopic Photography Image Storage", True),
    "1.2.840.10008.5.1.4.1.1.77.1.4": ("VL Photographic Image Storage", False),
}
# Transfer syntaxes decoded here: uncompressed, and JPEG baseline (Pillow, through pydicom).
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
}
# DICOM's body part words (BodyPartExamined, PS3.16 CID 4031) to the form's body sites.
BODY_PARTS = {"HEAD": "scalp", "SCALP": "scalp", "FACE": "face", "NOSE": "nose", "EAR": "ear",
              "EYELID": "eyelid", "LIP": "lip", "NECK": "neck", "CHEST": "trunk", "ABDOMEN": "trunk",
              "BACK": "trunk", "TRUNK": "trunk", "ARM": "upper_limb", "UPPEREXTREMITY": "upper_limb",
              "HAND": "hand", "LEG": "lower_limb", "LOWEREXTREMITY": "lower_limb", "FOOT": "foot"}


class DicomError(ValidationError):
    """An upload that is DICOM but cannot be taken; ``code`` is stable for API bodies."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message, "images")
        self.code = code
        self.status = status


@dataclass(frozen=True)
class DicomFacts:
    """What a referral keeps of a DICOM header."""

    dermoscopic: bool
    sop_class: str
    age: int | None = None
    sex: str | None = None           # female, male, other
    body_site: str | None = None
    device: str | None = None        # manufacturer and model
    study_uid: str | None = None     # groups a device's instances into one case (STOW-RS)
    accession: str | None = None     # the referral's identifier, where the device sends one


def is_dicom(data: bytes) -> bool:
    return len(data) > PREAMBLE + 4 and data[PREAMBLE:PREAMBLE + 4] == MAGIC


def read(data: bytes) -> tuple[Image.Image, DicomFacts, bool]:
    """(RGB image, facts, whether the pixel data was JPEG) from a Part 10 file."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise DicomError("corrupt", "the DICOM file is damaged or truncated: send it again") from exc
    sop = str(ds.get("SOPClassUID", ""))
    if sop not in SOP_CLASSES:
        name = getattr(ds.get("SOPClassUID"), "name", sop) or "none"
        raise DicomError("unsupported_sop_class",
                         f"DICOM objects of class {name} ({sop or 'missing'}) are not read here; send "
                         + " or ".join(f"{n} ({u})" for u, (n, _) in SOP_CLASSES.items()), 415)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax not in TRANSFER_SYNTAXES:
        name = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "") or "unknown"
        raise DicomError("unsupported_transfer_syntax",
                         f"the DICOM transfer syntax {name} ({syntax or 'missing'}) is not decoded here; "
                         "send " + ", ".join(f"{n} ({u})" for u, n in TRANSFER_SYNTAXES.items()), 415)
    if str(ds.get("BurnedInAnnotation", "NO")).upper() == "YES":
        raise DicomError("burned_in_annotation",
                         "the DICOM image declares burned-in annotation (text in the pixels, which may "
                         "identify the patient): send an image without it")
    if "PixelData" not in ds:
        raise DicomError("no_pixel_data", "the DICOM object holds no image")
    try:
        # The first frame only: a multi-frame object must not cost every frame's decode.
        pixels = pixel_array(ds, index=0) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    except Exception as exc:   # pydicom raises several types for undecodable pixel data
        raise DicomError("corrupt", "the DICOM pixel data cannot be decoded: send the file again") from exc
    return _to_image(ds, pixels), _facts(ds, sop), syntax == "1.2.840.10008.1.2.4.50"


def _to_image(ds, pixels: np.ndarray) -> Image.Image:
    # pydicom returns YBR colour as RGB already (its ``as_rgb`` default).
    photometric = str(ds.get("PhotometricInterpretation", "RGB"))
    if pixels.dtype != np.uint8:
        bits = int(ds.get("BitsStored", 8) or 8)
        pixels = np.clip(pixels.astype(np.int64) >> max(bits - 8, 0), 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels
        return Image.fromarray(pixels, "L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB")


def _facts(ds, sop: str) -> DicomFacts:
    age = None
    raw_age = str(ds.get("PatientAge", "") or "")
    if len(raw_age) == 4 and raw_age[:3].isdigit():
        age = int(raw_age[:3]) if raw_age[3] == "Y" else 0
    sex = {"F": "female", "M": "male", "O": "other"}.get(str(ds.get("PatientSex", "") or "").upper())
    part = str(ds.get("BodyPartExamined", "") or "").upper().replace(" ", "")
    device = " ".join(str(ds.get(k, "") or "") for k in ("Manufacturer", "ManufacturerModelName")).strip()
    return DicomFacts(dermoscopic=SOP_CLASSES[sop][1], sop_class=SOP_CLASSES[sop][0], age=age, sex=sex,
                      body_site=BODY_PARTS.get(part), device=device or None,
                      study_uid=str(ds.get("StudyInstanceUID", "") or "") or None,
                      accession=str(ds.get("AccessionNumber", "") or "") or None)


def decode_cost(data: bytes) -> tuple[int, int]:
    """(pixels, bytes) of the first frame, from the header alone; (0, 0) if unreadable."""
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 8) or 8)
    except Exception:       # read() reports what is wrong, with its own message
        return 0, 0
    return rows * cols, rows * cols * spp * max(bits // 8, 1)


def facts(data: bytes) -> DicomFacts | None:
    """The header's facts alone (no pixel decoding), or None for anything not DICOM."""
    if not is_dicom(data):
        return None
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:       # read() reports damaged files with its own message
        return None
    sop = str(ds.get("SOPClassUID", ""))
    return _facts(ds, sop) if sop in SOP_CLASSES else None


# --- STOW-RS: a device's instances become referrals -------------------------------------------
SOP_CLASS_UID, SOP_INSTANCE_UID = 0x00081150, 0x00081155
FAILURE_REASON = 0x00081197
PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED = 0x0110, 0x0122     # PS3.18 failure reasons


@dataclass
class Instance:
    data: bytes
    sop_class: str
    sop_instance: str
    referral: str | None       # accession number, else study instance UID
    patient: str | None        # the patient identifier, only to derive a pseudonym


def instances(parts: list[bytes]) -> tuple[list[Instance], list[tuple[str, str, int]]]:
    """Split a STOW-RS request's parts into readable instances and failures (class, instance,
    reason code), reading headers only."""
    import pydicom

    ok, failed = [], []
    for data in parts:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:      # an unreadable part fails alone; the others are still stored
            failed.append(("", "", PROCESSING_FAILURE))
            continue
        sop, uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
        if sop not in SOP_CLASSES:
            failed.append((sop, uid, SOP_CLASS_NOT_SUPPORTED))
            continue
        referral = str(ds.get("AccessionNumber", "") or "") or str(ds.get("StudyInstanceUID", "") or "") or None
        issuer = str(ds.get("IssuerOfPatientID", "") or "")
        patient = str(ds.get("PatientID", "") or "")
        ok.append(Instance(data, sop, uid, referral, f"{issuer}|{patient}" if patient else None))
    return ok, failed


def pseudonym(secret: str, patient: str | None, referral: str) -> str:
    """A stable pseudonym for the patient (keyed hash: the same patient from the same service
    gets the same one, and it cannot be turned back into the identifier without the key);
    where the header has no patient identifier, one per referral."""
    import hashlib
    import hmac
    digest = hmac.new(secret.encode(), (patient or f"referral|{referral}").encode(), hashlib.sha256)
    return "dcm-" + digest.hexdigest()[:16]


def store_response(stored: list[Instance], failed: list[tuple[str, str, int]], retrieve: dict[str, str]) -> dict:
    """The PS3.18 store response as DICOM JSON (referenced and failed SOP sequences),
    built as a pydicom Dataset."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    out = Dataset()
    refs = []
    for inst in stored:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = inst.sop_class, inst.sop_instance
        item.RetrieveURL = retrieve.get(inst.sop_instance, "")
        refs.append(item)
    fails = []
    for sop, uid, reason in failed:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop or "", uid or ""
        item.FailureReason = reason
        fails.append(item)
    if refs:
        out.ReferencedSOPSequence = Sequence(refs)
    if fails:
        out.FailedSOPSequence = Sequence(fails)
    return out.to_json_dict()
