"""The scope gate: is this image one the dermoscopic read applies to?

Every analysed image gets one verdict with a reason, before anything dermoscopic is said
about it:

- ``unusable``: blank, or too blurred or badly exposed to read at all (a retake will do;
  milder quality issues are flagged for a retake but leave the read);
- ``not_skin``: a drawing, screenshot, document or fill, or a picture with little skin
  colour in it (intake's pixel screen), or pooled features far outside anything the model
  was trained on;
- ``not_a_lesion`` / ``clinical``: a photograph taken without a dermatoscope, of a rash,
  hair or nails, or of a lesion;
- ``dermoscopic``: the only verdict under which patterns, pattern evidence and Grad-CAM
  claims are made.

The model's part reads the pooled vector the heads read anyway (one small linear read-out:
dermoscopic vs not, and lesion vs not among photographs), so the gate costs a matrix-vector
product on top of the analysis. How it was trained and validated, with whole collections held
out on both sides, and the thresholds it uses, are in the model card (``scope``) and
``services/modelling/scope_gate.py``. A model without a gate (the synthetic demo) still gets
intake's pixel and quality checks; its modality is then not assessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..intake import ImageQuality, Screen

DERMOSCOPIC, CLINICAL, NOT_A_LESION, NOT_SKIN, UNUSABLE = (
    "dermoscopic", "clinical", "not_a_lesion", "not_skin", "unusable")
VERDICTS = (DERMOSCOPIC, CLINICAL, NOT_A_LESION, NOT_SKIN, UNUSABLE)

# Quality beyond reading: intake's quality flags (blurred, under- or over-exposed) ask for a
# retake but leave the AI's read; only past these is an image unusable. Set where none of the
# shared dermoscopy falls (the softest HAM10000 image has sharpness 5.6, the brightest Derm7pt
# images brightness 0.93 and half their pixels clipped) and a Gaussian blur of radius 4 or a
# photo taken with the light off does.
UNUSABLE_SHARPNESS = 3.0
UNUSABLE_DARK = 0.08
UNUSABLE_BRIGHT = 0.96
UNUSABLE_CLIPPED = 0.65
# Laplacian variance above which the "image" is grain (noise), not a photograph: the sharpest
# shared photo stays below a tenth of it.
GRAIN_SHARPNESS = 20000.0

# What the GP is asked to send instead, per verdict and per cause.
HINTS = {
    CLINICAL: "this looks like a photograph taken without a dermatoscope: the AI reads "
              "dermoscopic images only. Attach a dermoscopic image of the lesion (dermatoscope "
              "in contact or polarised, lesion centred and filling most of the frame); keep "
              "this photo as the clinical overview.",
    NOT_A_LESION: "this looks like a rash, hair, nails or skin without a single lesion: the AI "
                  "reads one skin lesion under a dermatoscope. A dermatologist will still see "
                  "the referral.",
    NOT_SKIN: "this does not look like a photograph of skin (a drawing, screenshot, document "
              "or plain image): attach the dermoscopic photograph of the lesion itself.",
    "blank": "the image is blank or nearly uniform: retake it.",
    "blurred": "the image is blurred: hold the dermatoscope still, in contact, and refocus.",
    "under_exposed": "the image is too dark: switch the dermatoscope's light on or retake "
                     "in better light.",
    "over_exposed": "the image is too bright: reduce the light or move the flash away.",
    "off_centre": "the lesion is not centred: centre it and let it fill most of the frame.",
}


@dataclass(frozen=True)
class ScopeVerdict:
    verdict: str                     # one of VERDICTS
    reason: str                      # one line a GP or dermatologist can read
    hint: str = ""                   # what to send instead (empty for dermoscopic)
    measures: dict = field(default_factory=dict)   # the numbers behind it
    assessed: bool = True            # False: the model has no gate (modality not assessed)

    @property
    def applicable(self) -> bool:
        """Whether the dermoscopic read (patterns, evidence, maps) applies."""
        return self.verdict == DERMOSCOPIC

    def to_dict(self) -> dict:
        return {**asdict(self), "applicable": self.applicable}


@dataclass(frozen=True)
class GateThresholds:
    """From the card's ``scope`` section (chosen on held-out collections at build time)."""

    dermoscopic: float       # modality logit at or above which an image reads as dermoscopic
    lesion: float            # lesion logit at or above which a photograph shows a lesion
    # Typicality is the mean squared z-score of the pooled vector against the training
    # images': above ``typicality`` it is unlike any image trained on, dermoscopic or
    # clinical (not skin); above ``dermoscopic_typicality``, unlike any dermoscopic one.
    typicality: float
    dermoscopic_typicality: float | None = None

    @classmethod
    def from_card(cls, scope: dict | None) -> "GateThresholds | None":
        if not scope or "thresholds" not in scope:
            return None
        t = scope["thresholds"]
        return cls(float(t["dermoscopic"]), float(t["lesion"]), float(t["typicality"]),
                   t.get("dermoscopic_typicality"))


def unreadable(quality: ImageQuality) -> list[str]:
    """The quality issues severe enough that nothing can be read (see UNUSABLE_*)."""
    out = []
    if quality.sharpness < UNUSABLE_SHARPNESS:
        out.append("blurred")
    if quality.brightness < UNUSABLE_DARK or quality.dark_clipped > UNUSABLE_CLIPPED:
        out.append("under_exposed")
    if quality.brightness > UNUSABLE_BRIGHT or quality.bright_clipped > UNUSABLE_CLIPPED:
        out.append("over_exposed")
    return out


def judge(screen: Screen, quality: ImageQuality, gate: GateThresholds | None = None,
          modality_logit: float | None = None, lesion_logit: float | None = None,
          typicality: float | None = None) -> ScopeVerdict:
    """The verdict for one image, from intake's checks and (when the model has a gate) the
    read-out of its pooled vector. The order matters: a blank image is unusable before it
    is not skin, and nothing is called dermoscopic that failed a cheaper check."""
    measures = {"screen": screen.to_dict(), "quality_issues": quality.issues}
    if gate is not None:
        measures.update(modality_logit=round(modality_logit, 3), lesion_logit=round(lesion_logit, 3),
                        typicality=round(typicality, 3), thresholds=asdict(gate))
    if "blank" in screen.issues:
        return ScopeVerdict(UNUSABLE, "the image is blank or nearly uniform", HINTS["blank"], measures,
                            gate is not None)
    not_skin = [i for i in screen.issues if i != "blank"]
    if quality.sharpness > GRAIN_SHARPNESS and "not_a_photograph" not in not_skin:
        not_skin.append("not_a_photograph")
    if not_skin:
        why = {"not_a_photograph": "it looks drawn or generated (few colours, large flat fills or pure grain)",
               "little_skin": f"only {screen.skin_share:.0%} of it has the colour of skin"}
        return ScopeVerdict(NOT_SKIN, "not a photograph of skin: " + "; ".join(why[i] for i in not_skin),
                            HINTS[NOT_SKIN], measures, gate is not None)
    if gate is not None and typicality > gate.typicality:
        return ScopeVerdict(NOT_SKIN, "unlike any skin photograph the model was built on "
                            f"(typicality {typicality:.1f} > {gate.typicality:.1f})", HINTS[NOT_SKIN],
                            measures)
    severe = unreadable(quality)
    if severe:
        issues = ", ".join(i.replace("_", " ") for i in severe)
        return ScopeVerdict(UNUSABLE, f"image quality too low to read: {issues}",
                            " ".join(HINTS[i] for i in severe), measures, gate is not None)
    if gate is None:
        return ScopeVerdict(DERMOSCOPIC, "passed the pixel and quality checks; this model has no "
                            "modality gate, so whether it is dermoscopic was not assessed", "",
                            measures, assessed=False)
    atypical = gate.dermoscopic_typicality is not None and typicality > gate.dermoscopic_typicality
    if modality_logit < gate.dermoscopic or atypical:
        if lesion_logit < gate.lesion:
            return ScopeVerdict(NOT_A_LESION, "a photograph without a dermatoscope that shows no single "
                                "lesion (rash, hair, nails or plain skin)", HINTS[NOT_A_LESION], measures)
        return ScopeVerdict(CLINICAL, "a photograph taken without a dermatoscope (clinical photo)",
                            HINTS[CLINICAL], measures)
    return ScopeVerdict(DERMOSCOPIC, "reads as a dermoscopic image of a lesion", "", measures)


__all__ = ["CLINICAL", "DERMOSCOPIC", "GateThresholds", "HINTS", "NOT_A_LESION", "NOT_SKIN",
           "ScopeVerdict", "UNUSABLE", "VERDICTS", "judge"]
