import itertools

import pytest

from services.diagnosis.clinical import explain
from services.diagnosis.patterns import PATTERNS, rule_says_bcc

THRESHOLDS = {"PN": 0.6, "UL": 0.5, "BO": 0.5, "MG": 0.3, "ML": 0.25, "SW": 0.2, "AT": 0.5}


def probabilities_for(present: set[str]) -> dict[str, float]:
    # Just above / just below each pattern's own threshold: the card's, not 0.5.
    return {c: THRESHOLDS[c] + (0.01 if c in present else -0.01) for c in PATTERNS}


COMBINATIONS = [set(c) for r in range(len(PATTERNS) + 1) for c in itertools.combinations(PATTERNS, r)]


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda s: "+".join(sorted(s)) or "none")
@pytest.mark.parametrize("head_p", [0.9, 0.1])
def test_rule_on_every_pattern_combination(present, head_p):
    e = explain(head_p, probabilities_for(present), THRESHOLDS)
    expected_rule = "PN" not in present and bool(present - {"PN"})
    assert rule_says_bcc(present) == expected_rule
    assert e.rule_diagnosis == ("BCC" if expected_rule else "non-BCC")
    assert {s.code for s in e.supporting} == present - {"PN"}
    assert {c.code for c in e.contradicting} == present & {"PN"}
    assert e.diagnosis == ("BCC" if head_p >= 0.5 else "non-BCC")
    assert e.agreement == ((head_p >= 0.5) == expected_rule)
    # Disagreement is surfaced first, never hidden.
    assert e.summary.startswith("AI findings disagree") != e.agreement
    for ev in e.supporting:
        assert ev.name.split()[0].lower() in e.summary.lower()
    expected_reason = ("conflicting" if present - {"PN"} and "PN" in present else
                       "pigment_network" if "PN" in present else
                       "supporting_only" if present else "no_pattern")
    assert e.rule_reason == expected_reason


def test_thresholds_come_from_the_card_not_a_fixed_half():
    probs = {c: 0.0 for c in PATTERNS} | {"SW": 0.3}
    assert [s.code for s in explain(0.8, probs, THRESHOLDS).supporting] == ["SW"]
    assert explain(0.8, probs, {**THRESHOLDS, "SW": 0.5}).supporting == []


def test_sentence_for_a_gp():
    probs = {c: 0.0 for c in PATTERNS} | {"AT": 0.93, "BO": 0.71}
    e = explain(0.96, probs, THRESHOLDS, scores={"AT": 0.8})
    assert e.summary == ("Likely basal cell carcinoma (AI probability 96%): supported by "
                         "arborizing telangiectasia (93%) and blue-gray ovoid nests (71%).")
    assert e.supporting[0].score == 0.8 and e.supporting[0].map_index == 7


@pytest.mark.parametrize("present", COMBINATIONS, ids=lambda s: "+".join(sorted(s)) or "none")
def test_unvalidated_patterns_are_never_evidence(present):
    """A real-image model validates PN and AT only: the others are shown, never cited."""
    e = explain(0.9, probabilities_for(present), THRESHOLDS, evidence_patterns=["PN", "AT"])
    assert {s.code for s in e.supporting} == present & {"AT"}
    assert {c.code for c in e.contradicting} == present & {"PN"}
    assert {u.code for u in e.unvalidated} == present - {"PN", "AT"}
    assert all(not u.validated for u in e.unvalidated)
    if present & {"PN", "AT"}:
        assert e.rule_diagnosis == ("BCC" if rule_says_bcc(present & {"PN", "AT"}) else "non-BCC")
    else:
        # no validated pattern found: nothing argues for or against the BCC head
        assert e.rule_diagnosis == "undetermined" and e.agreement
    if present - {"PN", "AT"}:
        assert "not validated on real images and not used as evidence" in e.summary
    for u in e.unvalidated:
        assert f"supported by {u.name}" not in e.summary
