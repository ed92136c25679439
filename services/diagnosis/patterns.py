"""The seven BCC dermoscopic patterns and the evidence each gives (SCIENCE.md s.1)."""

from __future__ import annotations

PATTERNS: tuple[str, ...] = ("PN", "UL", "BO", "MG", "ML", "SW", "AT")

PATTERN_NAMES: dict[str, str] = {
    "PN": "pigment network",
    "UL": "ulceration",
    "BO": "blue-gray ovoid nests",
    "MG": "multiple blue-gray globules",
    "ML": "maple-leaf-like areas",
    "SW": "spoke-wheel areas",
    "AT": "arborizing telangiectasia",
}

# Menzies/Peris: pigment network argues against BCC, every other pattern for it.
AGAINST_BCC: frozenset[str] = frozenset({"PN"})
FOR_BCC: frozenset[str] = frozenset(PATTERNS) - AGAINST_BCC

# Grad-CAM targets: the BCC logit first, then one logit per pattern.
TARGETS: tuple[str, ...] = ("BCC",) + PATTERNS


def rule_says_bcc(present: set[str] | frozenset[str]) -> bool:
    """The clinical rule: BCC needs one supporting pattern and no pigment network."""
    return not (present & AGAINST_BCC) and bool(present & FOR_BCC)
