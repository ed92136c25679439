"""What a dermatologist sends as a review, checked field by field before anything is stored.

Parsing lives apart from recording (``reviews``) because the page, the JSON API and the
labelling sets all send the same shape, and a bad field must come back as a ValidationError
that names it (``patterns.UL``, ``regions.AT``) before any mask reaches the object store.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import ValidationError
from .vocabulary import Diagnosis, Management, PatternCall, ReviewPurpose, values

PATTERN_CODES = ("PN", "UL", "BO", "MG", "ML", "SW", "AT")   # services.diagnosis.patterns.PATTERNS
MAX_TEXT = 4000
MAX_MASK_BYTES = 1_000_000
MAX_MASK_SIDE = 2048


@dataclass(frozen=True)
class ReviewInput:
    diagnosis: Diagnosis
    diagnosis_other: str
    patterns: dict[str, PatternCall]
    regions: dict[str, np.ndarray] = field(default_factory=dict)   # code -> (S, S) bool
    management: Management | None = None
    message: str = ""
    override_reason: str = ""
    amendment_reason: str = ""


def _text(body: Mapping, name: str, limit: int = MAX_TEXT) -> str:
    value = body.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be text", name)
    value = value.strip()
    if len(value) > limit:
        raise ValidationError(f"{name} must be at most {limit} characters", name)
    return value


def parse_review(body: Mapping, purpose: ReviewPurpose = ReviewPurpose.CLINICAL) -> ReviewInput:
    """A review from a JSON object (the page sends the same shape): a bad field is a
    ValidationError that names it (``patterns.UL``, ``regions.AT``)."""
    if not isinstance(body, Mapping):
        raise ValidationError("send a JSON object", "body")
    raw_dx = body.get("diagnosis")
    if not isinstance(raw_dx, str) or raw_dx.strip() not in values(Diagnosis):
        raise ValidationError(f"diagnosis must be one of {', '.join(values(Diagnosis))}", "diagnosis")
    diagnosis = Diagnosis(raw_dx.strip())
    other = _text(body, "diagnosis_other", 200)
    if diagnosis == Diagnosis.OTHER and not other:
        raise ValidationError("name the diagnosis when it is 'other'", "diagnosis_other")
    raw_patterns = body.get("patterns")
    if not isinstance(raw_patterns, Mapping):
        raise ValidationError("patterns must map each of " + ", ".join(PATTERN_CODES)
                              + " to present, absent or unsure", "patterns")
    unknown = sorted(set(raw_patterns) - set(PATTERN_CODES))
    if unknown:
        raise ValidationError(f"unknown pattern {unknown[0]}; the patterns are "
                              + ", ".join(PATTERN_CODES), f"patterns.{unknown[0]}")
    patterns = {}
    for code in PATTERN_CODES:
        call = raw_patterns.get(code)
        if not isinstance(call, str) or call not in values(PatternCall):
            raise ValidationError(f"patterns.{code} must be one of {', '.join(values(PatternCall))}",
                                  f"patterns.{code}")
        patterns[code] = PatternCall(call)
    raw_regions = body.get("regions") or {}
    if not isinstance(raw_regions, Mapping):
        raise ValidationError("regions must map a pattern to a PNG mask (base64 or a data URL)", "regions")
    regions = {}
    for code, encoded in raw_regions.items():
        name = f"regions.{code}"
        if code not in PATTERN_CODES:
            raise ValidationError(f"unknown pattern {code}", name)
        if encoded in (None, ""):
            continue
        if patterns[code] != PatternCall.PRESENT:
            raise ValidationError(f"a region for {code} needs patterns.{code} = present", name)
        regions[code] = decode_mask(encoded, name)
    management = None
    if purpose == ReviewPurpose.CLINICAL:
        raw = body.get("management")
        if not isinstance(raw, str) or raw not in values(Management):
            raise ValidationError(f"management must be one of {', '.join(values(Management))}",
                                  "management")
        management = Management(raw)
    return ReviewInput(diagnosis, other, patterns, regions, management, _text(body, "message"),
                       _text(body, "override_reason"), _text(body, "amendment_reason"))


def decode_mask(encoded, name: str) -> np.ndarray:
    """A square PNG mask (a data URL or base64) -> bool array; marked = opaque or bright."""
    if not isinstance(encoded, str):
        raise ValidationError(f"{name} must be a PNG mask as base64 or a data URL", name)
    if encoded.startswith("data:"):
        head, _, encoded = encoded.partition(",")
        if head != "data:image/png;base64":
            raise ValidationError(f"{name} must be a data:image/png;base64 URL", name)
    if len(encoded) > MAX_MASK_BYTES * 4 // 3 + 4:
        raise ValidationError(f"{name} is larger than {MAX_MASK_BYTES // 1000} kB", name)
    try:
        data = base64.b64decode(encoded, validate=True)
        img = Image.open(io.BytesIO(data))
        if img.format != "PNG":
            raise ValueError
        if max(img.size) > MAX_MASK_SIDE:
            raise ValidationError(f"{name} must be at most {MAX_MASK_SIDE} pixels a side", name)
        img.load()
    except ValidationError:
        raise
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
        raise ValidationError(f"{name} is not a readable PNG image", name) from None
    if img.width != img.height:
        raise ValidationError(f"{name} must be square: it covers the analysed (square) crop", name)
    if "A" in img.getbands():
        mask = np.asarray(img.getchannel("A")) > 0
    else:
        mask = np.asarray(img.convert("L")) > 127
    if not mask.any():
        raise ValidationError(f"{name} marks no pixel", name)
    return mask


def mask_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("1").save(buf, "PNG", optimize=True)
    return buf.getvalue()


def read_mask(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127
