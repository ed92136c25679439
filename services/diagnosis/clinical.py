"""The clinical explanation: which patterns support or contradict the diagnosis.

The rule (Menzies/Peris, SCIENCE.md s.1) is applied to the pattern head's predictions with
per-pattern thresholds from the model card: each pattern has its own operating point because
rare patterns (SW, MG, ML) need lower thresholds to be found at all. The BCC head and the
rule are two independent readings of the same image; when they disagree the explanation
says so in its first words, because that is exactly the case a dermatologist must look at.
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


@dataclass(frozen=True)
class ClinicalExplanation:
    diagnosis: str                      # "BCC" or "non-BCC", from the BCC head
    bcc_probability: float
    bcc_threshold: float
    rule_diagnosis: str                 # what the pattern rule alone concludes
    rule_reason: str                    # "supporting_only", "pigment_network", "conflicting", "no_pattern"
    agreement: bool
    supporting: list[PatternEvidence] = field(default_factory=list)
    contradicting: list[PatternEvidence] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _names(evidence: list[PatternEvidence]) -> str:
    names = [f"{e.name} ({e.probability:.0%})" for e in evidence]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def explain(bcc_probability: float, pattern_probabilities: dict[str, float],
            thresholds: dict[str, float], bcc_threshold: float = 0.5,
            scores: dict[str, float] | None = None) -> ClinicalExplanation:
    scores = scores or {}
    present = {c for c in PATTERNS if pattern_probabilities[c] >= thresholds[c]}

    def evidence(codes) -> list[PatternEvidence]:
        items = [PatternEvidence(c, PATTERN_NAMES[c], round(pattern_probabilities[c], 4),
                                 thresholds[c], round(scores.get(c, 0.0), 4),
                                 map_index=1 + PATTERNS.index(c))
                 for c in PATTERNS if c in codes]
        return sorted(items, key=lambda e: -e.probability)

    supporting = evidence(present & FOR_BCC)
    contradicting = evidence(present & AGAINST_BCC)
    rule_bcc = rule_says_bcc(present)
    if supporting and contradicting:
        reason = "conflicting"
    elif contradicting:
        reason = "pigment_network"
    elif supporting:
        reason = "supporting_only"
    else:
        reason = "no_pattern"
    head_bcc = bcc_probability >= bcc_threshold
    agreement = head_bcc == rule_bcc
    diagnosis = "BCC" if head_bcc else "non-BCC"
    summary = _sentence(diagnosis, bcc_probability, supporting, contradicting, agreement, rule_bcc)
    return ClinicalExplanation(diagnosis=diagnosis, bcc_probability=round(bcc_probability, 4),
                               bcc_threshold=bcc_threshold,
                               rule_diagnosis="BCC" if rule_bcc else "non-BCC",
                               rule_reason=reason, agreement=agreement,
                               supporting=supporting, contradicting=contradicting,
                               summary=summary)


def _sentence(diagnosis, p, supporting, contradicting, agreement, rule_bcc) -> str:
    head = ("Likely basal cell carcinoma" if diagnosis == "BCC"
            else "Basal cell carcinoma unlikely") + f" (AI probability {p:.0%})"
    if supporting and contradicting:
        found = (f"it shows BCC features ({_names(supporting)}) but also "
                 f"{_names(contradicting)}, which argues against BCC")
    elif supporting:
        found = f"supported by {_names(supporting)}"
    elif contradicting:
        found = f"{_names(contradicting)} argues against BCC and no BCC feature was found"
    else:
        found = "no BCC dermoscopic feature was found"
    if agreement:
        return f"{head}: {found}."
    rule = "point to BCC" if rule_bcc else "do not support BCC"
    return (f"AI findings disagree, a dermatologist must review: {head[0].lower()}{head[1:]}, "
            f"but the dermoscopic features {rule}: {found}.")
