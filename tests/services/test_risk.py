from datetime import datetime, timedelta, timezone

import numpy as np

from services.risk import ImageFinding, assess

T0 = datetime(2026, 11, 1, 9, tzinfo=timezone.utc)


def finding(p, patterns=(), agree=True, issues=()):
    return ImageFinding(p, list(patterns), agree, list(issues))


def base(**kw):
    args = dict(bleeding=False, changed=False, body_site="trunk", age=60, received_at=T0)
    args.update(kw)
    return args


def test_probability_drives_score_and_tier():
    assert assess([finding(0.9)], **base()).tier == "urgent"
    assert assess([finding(0.5)], **base()).tier == "routine"
    low = assess([finding(0.1)], **base())
    assert low.tier == "low" and low.due_at == T0 + timedelta(days=14)


def test_red_flags_and_ulceration_raise_priority():
    plain = assess([finding(0.5)], **base()).score
    assert assess([finding(0.5, ["UL"])], **base()).score == plain + 15
    assert assess([finding(0.5)], **base(bleeding=True, changed=True)).score == plain + 15
    assert assess([finding(0.5)], **base(body_site="nose", age=85)).score == plain + 15


def test_disagreement_and_poor_quality_escalate_never_lower():
    r = assess([finding(0.05, agree=False)], **base())
    assert r.needs_attention and r.tier == "routine" and "disagree" in " ".join(r.reasons)
    high = assess([finding(0.95, agree=False)], **base())
    assert high.score == assess([finding(0.95)], **base()).score and high.needs_attention
    q = assess([finding(0.05, issues=["blurred"])], **base())
    assert q.needs_attention and q.tier == "routine" and "blurred" in " ".join(q.reasons)


def test_ai_unavailable_goes_to_manual_review():
    r = assess([], **base(ai_available=False))
    assert r.needs_attention and r.score >= 50 and "AI unavailable" in r.reasons[0]


def test_highest_image_counts_and_escalation_time_before_deadline():
    r = assess([finding(0.2), finding(0.8)], **base())
    assert r.score == 80
    assert T0 < r.escalate_at < r.due_at


def dx(**p):
    base = {c: 0.0 for c in ("nv", "mel", "bcc", "akiec", "bkl", "df", "vasc")}
    return {**base, "nv": 1 - sum(p.values()), **p}


POINTS = {"mel": 0.2, "akiec": 0.3}


def test_suspected_melanoma_is_urgent_whatever_the_bcc_head_says():
    f = ImageFinding(0.02, [], True, [], dx(mel=0.62))
    r = assess([f], **base(), operating_points=POINTS)
    assert r.tier == "urgent" and r.reasons[0].startswith("suspected melanoma 62%")
    # just below the operating point: not "suspected", but its malignancy still counts
    below = assess([ImageFinding(0.02, [], True, [], dx(mel=0.19))], **base(), operating_points=POINTS)
    assert below.tier == "low" and below.score == 19.0 and "suspected" not in " ".join(below.reasons)


def test_no_melanoma_ever_lands_low_once_suspected():
    for p_mel in np.linspace(POINTS["mel"], 1, 9):
        r = assess([ImageFinding(0.0, [], True, [], dx(mel=float(p_mel)))], **base(), operating_points=POINTS)
        assert r.tier == "urgent", p_mel


def test_scc_and_total_malignancy_raise_priority():
    r = assess([ImageFinding(0.05, [], True, [], dx(akiec=0.4))], **base(), operating_points=POINTS)
    assert r.tier == "routine" and r.reasons[0].startswith("suspected SCC / actinic keratosis 40%")
    mixed = assess([ImageFinding(0.10, [], True, [], dx(mel=0.15, bcc=0.1, akiec=0.2))], **base())
    assert mixed.score == 45.0 and any("malignancy probability 45%" in x for x in mixed.reasons)


def test_models_without_a_diagnosis_head_score_as_before():
    assert assess([ImageFinding(0.5, [], True, [])], **base(), operating_points=POINTS).score == 50.0


TRIAGE = {"combination": "diagnosis_mass", "calibration": {"scale": 1.0, "bias": 0.0},
          "thresholds": {"routine": 0.05, "urgent": 0.30}}


def test_triage_scores_one_calibrated_probability_onto_fixed_bands():
    def at(**p):
        return assess([ImageFinding(0.0, [], True, [], dx(**p))], **base(), triage=TRIAGE)
    assert at(mel=0.04).tier == "low"
    assert at(bcc=0.05).tier == "routine" and at(bcc=0.05).score == 35.0
    assert at(akiec=0.30).tier == "urgent" and at(akiec=0.30).score == 70.0
    assert at(mel=1.0).score == 100.0
    # monotone: with neutral answers the queue's order is the model's order
    ps = np.linspace(0, 1, 41)
    scores = [at(mel=float(p)).score for p in ps]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)


def test_triage_red_flags_are_bounded_and_disagreement_does_not_reorder():
    plain = assess([ImageFinding(0.0, [], True, [], dx(mel=0.1))], **base(), triage=TRIAGE)
    every = assess([ImageFinding(0.0, [], True, [], dx(mel=0.1))], triage=TRIAGE,
                   **base(bleeding=True, changed=True, body_site="nose", age=90))
    assert every.score == round(plain.score + 20, 1) and any("at most +20" in r for r in every.reasons)
    odd = assess([ImageFinding(0.0, [], False, [], dx(mel=0.01))], **base(), triage=TRIAGE)
    assert odd.needs_attention and odd.tier == "low"


def test_refused_images_are_not_scored_and_a_human_sees_the_case():
    refused = ImageFinding(0.99, ["UL"], True, [], dx(mel=0.9), in_scope=False,
                           scope_reason="a photograph taken without a dermatoscope (clinical photo)")
    r = assess([refused], **base(), triage=TRIAGE)
    assert r.needs_attention and r.tier == "routine" and r.score == 40.0
    assert r.reasons[0].startswith("AI not applicable: a photograph taken without a dermatoscope")
    both = assess([refused, ImageFinding(0.0, [], True, [], dx(mel=0.5))], **base(), triage=TRIAGE)
    assert both.tier == "urgent" and any(x.startswith("AI not applicable") for x in both.reasons)


def test_triage_combinations():
    from services.risk import combine
    d = dx(mel=0.1, bcc=0.2, akiec=0.05)
    assert abs(combine("diagnosis_mass", 0.6, d) - 0.35) < 1e-9
    assert combine("max_with_bcc_head", 0.6, d) == 0.6
    assert abs(combine("bcc_head_in_mass", 0.6, d) - 0.75) < 1e-9
