"""The clinical explanation: which patterns support or contradict the diagnosis.

The rule (Menzies/Peris, SCIENCE.md s.1) is applied to the pattern head's predictions with
per-pattern thresholds from the model card: each pattern has its own operating point because
rare patterns (SW, MG, ML) need lower thresholds to be found at all. The BCC head and the
rule are two independent readings of the same image; when they disagree the explanation
says so in its first words, because that is exactly the case a dermatologist must look at.

Only patterns the model card lists as evidence (``evidence``: those validated on real
images) can support or contradict anything. The others are still reported, with their
probabilities and maps, under ``unvalidated``, and the summary says they were not used: a
head that has never seen a real labelled example must not argue a diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass, field, asdict

from .patterns import AGAINST_BCC, FOR_BCC, PATTERN_NAMES, PATTERNS, rule_says_bcc


@dataclass(frozen=True)
class PatternEvidence:
    code: str
    name: str
    probability: float
    threshold: float
    score: float              # map summary score (probability x share on the lesion)
    map_index: int            # index of this pattern's map in the result's map list
    validated: bool = True    # False: shown for information, never used as evidence


@dataclass(frozen=True)
class ClinicalExplanation:
    diagnosis: str                      # "BCC" or "non-BCC", from the BCC head
    bcc_probability: float
    bcc_threshold: float
    rule_diagnosis: str                 # what the pattern rule alone concludes ("undetermined":
                                        # no validated pattern found and some are unvalidated)
    rule_reason: str                    # "supporting_only", "pigment_network", "conflicting",
                                        # "no_pattern", "no_validated_pattern"
    agreement: bool
    supporting: list[PatternEvidence] = field(default_factory=list)
    contradicting: list[PatternEvidence] = field(default_factory=list)
    summary: str = ""
    unvalidated: list[PatternEvidence] = field(default_factory=list)   # present, not evidence
    evidence_patterns: list[str] = field(default_factory=lambda: list(PATTERNS))

    def to_dict(self) -> dict:
        return asdict(self)


def _names(evidence: list[PatternEvidence]) -> str:
    names = [f"{e.name} ({e.probability:.0%})" for e in evidence]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def explain(bcc_probability: float, pattern_probabilities: dict[str, float],
            thresholds: dict[str, float], bcc_threshold: float = 0.5,
            scores: dict[str, float] | None = None,
            evidence_patterns: list[str] | None = None) -> ClinicalExplanation:
    scores = scores or {}
    allowed = set(PATTERNS if evidence_patterns is None else evidence_patterns)
    found = {c for c in PATTERNS if pattern_probabilities[c] >= thresholds[c]}
    present = found & allowed

    def evidence(codes, validated: bool = True) -> list[PatternEvidence]:
        items = [PatternEvidence(c, PATTERN_NAMES[c], round(pattern_probabilities[c], 4),
                                 thresholds[c], round(scores.get(c, 0.0), 4),
                                 map_index=1 + PATTERNS.index(c), validated=validated)
                 for c in PATTERNS if c in codes]
        return sorted(items, key=lambda e: -e.probability)

    supporting = evidence(present & FOR_BCC)
    contradicting = evidence(present & AGAINST_BCC)
    unvalidated = evidence(found - allowed, validated=False)
    rule_bcc = rule_says_bcc(present)
    # With only some supporting patterns validated, finding none of them says nothing
    # against BCC (the others may be there): the rule is then undetermined, not "non-BCC".
    undetermined = not present and not FOR_BCC <= allowed
    if supporting and contradicting:
        reason = "conflicting"
    elif contradicting:
        reason = "pigment_network"
    elif supporting:
        reason = "supporting_only"
    else:
        reason = "no_validated_pattern" if undetermined else "no_pattern"
    head_bcc = bcc_probability >= bcc_threshold
    agreement = undetermined or head_bcc == rule_bcc
    diagnosis = "BCC" if head_bcc else "non-BCC"
    summary = _sentence(diagnosis, bcc_probability, supporting, contradicting, agreement, rule_bcc,
                        undetermined)
    if unvalidated:
        summary += (f" Also flagged, but not validated on real images and not used as evidence: "
                    f"{_names(unvalidated)}.")
    return ClinicalExplanation(diagnosis=diagnosis, bcc_probability=round(bcc_probability, 4),
                               bcc_threshold=bcc_threshold,
                               rule_diagnosis="undetermined" if undetermined else
                               "BCC" if rule_bcc else "non-BCC",
                               rule_reason=reason, agreement=agreement,
                               supporting=supporting, contradicting=contradicting,
                               summary=summary, unvalidated=unvalidated,
                               evidence_patterns=[c for c in PATTERNS if c in allowed])


NOT_ASSESSED = "not assessed"


def not_applicable(bcc_probability: float, bcc_threshold: float, reason: str, hint: str) -> ClinicalExplanation:
    """The explanation of an image the scope gate refused: no diagnosis, no pattern and no
    evidence is claimed, because the dermoscopic read does not apply to it (the
    probabilities stay in the audit record, never on the case page)."""
    summary = f"AI not applicable: {reason}." + (f" {hint[0].upper()}{hint[1:]}" if hint else "")
    return ClinicalExplanation(diagnosis=NOT_ASSESSED, bcc_probability=round(bcc_probability, 4),
                               bcc_threshold=bcc_threshold, rule_diagnosis=NOT_ASSESSED,
                               rule_reason="not_applicable", agreement=True, summary=summary,
                               evidence_patterns=[])


def _sentence(diagnosis, p, supporting, contradicting, agreement, rule_bcc, undetermined=False) -> str:
    head = ("Likely basal cell carcinoma" if diagnosis == "BCC"
            else "Basal cell carcinoma unlikely") + f" (AI probability {p:.0%})"
    if supporting and contradicting:
        found = (f"it shows BCC features ({_names(supporting)}) but also "
                 f"{_names(contradicting)}, which argues against BCC")
    elif supporting:
        found = f"supported by {_names(supporting)}"
    elif contradicting:
        found = f"{_names(contradicting)} argues against BCC and no BCC feature was found"
    elif undetermined:
        found = "no validated dermoscopic pattern supports or contradicts it"
    else:
        found = "no BCC dermoscopic feature was found"
    if agreement:
        return f"{head}: {found}."
    rule = "point to BCC" if rule_bcc else "do not support BCC"
    return (f"AI findings disagree, a dermatologist must review: {head[0].lower()}{head[1:]}, "
            f"but the dermoscopic features {rule}: {found}.")
