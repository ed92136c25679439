"""Deterministic synthetic dermoscopy with ground-truth lesion and pattern masks.

No public data set has the seven BCC patterns outlined, so tests, the demo model and the
explanation-alignment metrics use drawn lesions. Each case is a function of (seed, index)
alone, so any slice of a data set can be regenerated exactly, in any order or process.

Every present pattern is drawn inside its own region of the lesion, and that region is the
pattern's mask, the way a dermatologist outlines where a pattern is (SCIENCE.md s.4):

- PN  pigment network: a brown reticular grid with lighter holes.
- UL  ulceration: a structureless dark red-brown crust with an orange rim.
- BO  blue-gray ovoid nests: a few large, soft-edged blue-gray ovals.
- MG  multiple blue-gray globules: many small round blue-gray dots.
- ML  maple-leaf-like areas: bulbous gray-brown lobes joined at the lesion's edge.
- SW  spoke-wheel areas: radial gray-brown spokes around a dark brown hub.
- AT  arborizing telangiectasia: bright red vessels that branch and taper.

The BCC label follows the clinical rule (``patterns.rule_says_bcc``). Hard cases: BCC with
faint patterns (low contrast), and non-BCC mimics that carry look-alikes which are not
BCC patterns (dotted vessels, a structureless blue-white veil, brown globules, milia-like
cysts) or a pink lesion with no pattern at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..diagnosis.patterns import PATTERNS, rule_says_bcc

KINDS = ("bcc", "bcc_faint", "nevus_pn", "mimic", "plain")
KIND_P = (0.36, 0.14, 0.25, 0.15, 0.10)
POSITIVE = PATTERNS[1:]
# How often each supporting pattern is drawn in a BCC: mildly imbalanced, like real data.
POSITIVE_P = np.array([0.16, 0.19, 0.15, 0.15, 0.15, 0.20])
POSITIVE_P = POSITIVE_P / POSITIVE_P.sum()


@dataclass(frozen=True)
class SyntheticCase:
    image: np.ndarray          # (S, S, 3) uint8
    lesion_mask: np.ndarray    # (S, S) bool
    pattern_masks: np.ndarray  # (7, S, S) bool, PATTERNS order
    patterns: np.ndarray       # (7,) uint8
    bcc: bool
    kind: str


@dataclass(frozen=True)
class SyntheticSet:
    images: np.ndarray         # (N, S, S, 3) uint8
    lesion_masks: np.ndarray   # (N, S, S) bool
    pattern_masks: np.ndarray  # (N, 7, S, S) bool
    patterns: np.ndarray       # (N, 7) uint8
    bcc: np.ndarray            # (N,) bool
    kinds: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.bcc)


def generate(n: int, seed: int, size: int = 160, start: int = 0, progress=None) -> SyntheticSet:
    cases = []
    for i in range(start, start + n):
        cases.append(generate_case(seed, i, size))
        if progress is not None:
            progress(1)
    return SyntheticSet(
        images=np.stack([c.image for c in cases]),
        lesion_masks=np.stack([c.lesion_mask for c in cases]),
        pattern_masks=np.stack([c.pattern_masks for c in cases]),
        patterns=np.stack([c.patterns for c in cases]),
        bcc=np.array([c.bcc for c in cases]),
        kinds=tuple(c.kind for c in cases),
    )


def concat(parts: list[SyntheticSet]) -> SyntheticSet:
    return SyntheticSet(
        images=np.concatenate([p.images for p in parts]),
        lesion_masks=np.concatenate([p.lesion_masks for p in parts]),
        pattern_masks=np.concatenate([p.pattern_masks for p in parts]),
        patterns=np.concatenate([p.patterns for p in parts]),
        bcc=np.concatenate([p.bcc for p in parts]),
        kinds=tuple(k for p in parts for k in p.kinds),
    )


def generate_case(seed: int, index: int, size: int = 160) -> SyntheticCase:
    rng = np.random.default_rng([seed, index, size])
    kind = KINDS[rng.choice(len(KINDS), p=KIND_P)]
    present = _choose_patterns(rng, kind)
    canvas = _Canvas(rng, size)
    lesion = canvas.draw_lesion(pink=rng.random() < (0.65 if kind.startswith("bcc") else 0.4))
    strength = rng.uniform(0.35, 0.55) if kind == "bcc_faint" else rng.uniform(0.75, 1.0)
    masks = np.zeros((len(PATTERNS), size, size), dtype=bool)
    regions = canvas.pattern_regions(len(present))
    for code, region in zip(present, regions):
        masks[PATTERNS.index(code)] = canvas.draw_pattern(code, region, strength)
    if kind == "mimic":
        for name in rng.choice(["dotted", "veil", "brown_globules", "milia"],
                               size=rng.integers(1, 3), replace=False):
            canvas.draw_mimic(str(name))
    if rng.random() < 0.3:
        canvas.draw_hairs()
    image = canvas.finish()
    labels = np.array([c in present for c in PATTERNS], dtype=np.uint8)
    return SyntheticCase(image=image, lesion_mask=lesion, pattern_masks=masks,
                         patterns=labels, bcc=rule_says_bcc(set(present)), kind=kind)


def _choose_patterns(rng: np.random.Generator, kind: str) -> list[str]:
    if kind in ("bcc", "bcc_faint"):
        k = rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]) if kind == "bcc" else rng.choice([1, 2])
        return [str(c) for c in rng.choice(POSITIVE, size=k, replace=False, p=POSITIVE_P)]
    if kind == "nevus_pn":
        out = ["PN"]
        if rng.random() < 0.12:   # conflicting evidence: the rule still says not BCC
            out.append(str(rng.choice(POSITIVE, p=POSITIVE_P)))
        return out
    return []


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class _Canvas:
    """Float RGB image being painted, with the lesion geometry the patterns need."""

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size = rng, size
        self.yy, self.xx = np.mgrid[0:size, 0:size].astype(np.float32)
        skin = np.array([rng.uniform(200, 240), rng.uniform(150, 200), rng.uniform(120, 170)])
        shade = 1.0 + 0.06 * self.noise(4) + 0.02 * self.noise(24)
        self.img = skin[None, None, :] * shade[..., None]
        self.cx = self.cy = self.radius = 0.0
        self.lesion_soft = np.zeros((size, size), np.float32)

    def noise(self, cells: int) -> np.ndarray:
        """Smooth noise in about [-1, 1] with ``cells`` features across the image."""
        grid = self.rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        return np.asarray(Image.fromarray(grid, "F").resize((self.size, self.size),
                                                             Image.Resampling.BICUBIC))

    def blend(self, colour, alpha: np.ndarray) -> None:
        a = np.clip(alpha, 0, 1)[..., None]
        self.img = self.img * (1 - a) + np.asarray(colour, np.float32)[None, None, :] * a

    def polar(self, cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self.xx - cx, self.yy - cy
        return np.hypot(dx, dy), np.arctan2(dy, dx)

    def blob(self, cx: float, cy: float, r: float, wobble: float = 0.15,
             edge: float = 2.0) -> np.ndarray:
        """Soft irregular disc: radius modulated by a few random harmonics."""
        dist, theta = self.polar(cx, cy)
        rr = np.full_like(theta, r)
        for k in range(2, 6):
            rr += r * wobble / k * self.rng.uniform(0.3, 1) * np.cos(k * theta + self.rng.uniform(0, 6.3))
        return 1.0 - _smoothstep(rr - edge, rr + edge, dist)

    def draw_lesion(self, pink: bool) -> np.ndarray:
        s, rng = self.size, self.rng
        self.cx = s / 2 + rng.uniform(-0.06, 0.06) * s
        self.cy = s / 2 + rng.uniform(-0.06, 0.06) * s
        self.radius = rng.uniform(0.30, 0.40) * s
        soft = self.blob(self.cx, self.cy, self.radius, wobble=0.25, edge=3.0)
        if pink:
            colour = [rng.uniform(205, 235), rng.uniform(130, 165), rng.uniform(135, 165)]
        else:
            colour = [rng.uniform(140, 185), rng.uniform(95, 130), rng.uniform(65, 95)]
        mottling = 0.85 + 0.12 * self.noise(8)
        self.blend(colour, soft * mottling)
        self.lesion_soft = soft
        return soft > 0.5

    def pattern_regions(self, k: int) -> list[tuple[float, float, float]]:
        """Centres and radii for k patterns, in separate sectors so regions barely overlap."""
        if k == 0:
            return []
        rng, r = self.rng, self.radius
        if k == 1 and rng.random() < 0.5:
            ang = rng.uniform(0, 2 * np.pi)
            d = rng.uniform(0.0, 0.3) * r
            return [(self.cx + d * np.cos(ang), self.cy + d * np.sin(ang), rng.uniform(0.55, 0.7) * r)]
        base = rng.uniform(0, 2 * np.pi)
        out = []
        for i in range(k):
            ang = base + 2 * np.pi * i / k + rng.uniform(-0.25, 0.25)
            d = rng.uniform(0.45, 0.55) * r
            out.append((self.cx + d * np.cos(ang), self.cy + d * np.sin(ang),
                        rng.uniform(0.45, 0.55) * r))
        return out

    def draw_pattern(self, code: str, region: tuple[float, float, float], strength: float) -> np.ndarray:
        cx, cy, r = region
        area = self.blob(cx, cy, r, wobble=0.2, edge=2.0) * (self.lesion_soft > 0.5)
        getattr(self, f"_draw_{code}")(cx, cy, r, area, strength)
        return area > 0.5

    # -- the seven patterns --------------------------------------------------------------
    def _draw_PN(self, cx, cy, r, area, strength):
        rng = self.rng
        period = rng.uniform(6.0, 9.0) * self.size / 160
        ang = rng.uniform(0, np.pi)
        warp = 2.0 * self.noise(6)
        u = (self.xx * np.cos(ang) + self.yy * np.sin(ang) + warp) / period
        v = (-self.xx * np.sin(ang) + self.yy * np.cos(ang) - warp) / period
        lines = np.maximum(1 - _smoothstep(0.08, 0.22, np.abs(np.sin(np.pi * u))),
                           1 - _smoothstep(0.08, 0.22, np.abs(np.sin(np.pi * v))))
        self.blend([rng.uniform(175, 200), rng.uniform(135, 155), rng.uniform(100, 120)], area * 0.5 * strength)
        self.blend([rng.uniform(70, 100), rng.uniform(40, 60), rng.uniform(25, 40)], area * lines * strength)

    def _draw_UL(self, cx, cy, r, area, strength):
        crust = self.blob(cx, cy, 0.75 * r, wobble=0.35, edge=1.5) * area
        rim = np.clip(self.blob(cx, cy, 0.95 * r, wobble=0.3, edge=2.0) * area - crust, 0, 1)
        texture = 0.8 + 0.2 * self.noise(20)
        self.blend([200, 95, 60], rim * 0.8 * strength)
        self.blend([110 * texture.mean(), 28, 22], crust * texture * strength)

    def _draw_BO(self, cx, cy, r, area, strength):
        rng = self.rng
        for _ in range(rng.integers(2, 5)):
            ox, oy = cx + rng.uniform(-0.4, 0.4) * r, cy + rng.uniform(-0.4, 0.4) * r
            a, b = rng.uniform(0.35, 0.5) * r, rng.uniform(0.2, 0.3) * r
            th = rng.uniform(0, np.pi)
            dx, dy = self.xx - ox, self.yy - oy
            u = (dx * np.cos(th) + dy * np.sin(th)) / a
            v = (-dx * np.sin(th) + dy * np.cos(th)) / b
            oval = 1 - _smoothstep(0.7, 1.05, np.hypot(u, v))
            self.blend([rng.uniform(80, 105), rng.uniform(95, 115), rng.uniform(120, 140)], oval * area * 0.95 * strength)

    def _draw_MG(self, cx, cy, r, area, strength):
        rng = self.rng
        colour = [rng.uniform(75, 95), rng.uniform(85, 105), rng.uniform(110, 135)]
        scale = self.size / 160
        for _ in range(rng.integers(14, 26)):
            ang, d = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 0.8))
            gx, gy = cx + d * np.cos(ang), cy + d * np.sin(ang)
            gr = rng.uniform(2.4, 3.6) * scale
            dot = 1 - _smoothstep(gr - 0.7, gr + 0.7, np.hypot(self.xx - gx, self.yy - gy))
            self.blend(colour, dot * area * strength)

    def _draw_ML(self, cx, cy, r, area, strength):
        rng = self.rng
        # Leaf lobes sit towards the lesion edge, fanning out from a common base.
        out_ang = np.arctan2(cy - self.cy, cx - self.cx) if (cx, cy) != (self.cx, self.cy) else rng.uniform(0, 6.3)
        colour = [rng.uniform(95, 120), rng.uniform(85, 100), rng.uniform(95, 115)]
        leaf = np.zeros_like(self.xx)
        n = rng.integers(3, 6)
        for i in range(n):
            a = out_ang + (i - (n - 1) / 2) * 0.55
            lx, ly = cx + 0.45 * r * np.cos(a), cy + 0.45 * r * np.sin(a)
            leaf = np.maximum(leaf, self.blob(lx, ly, rng.uniform(0.28, 0.36) * r, wobble=0.1, edge=1.2))
        stem = self.blob(cx, cy, 0.35 * r, wobble=0.1, edge=1.2)
        self.blend(colour, np.maximum(leaf, stem) * area * strength)

    def _draw_SW(self, cx, cy, r, area, strength):
        rng = self.rng
        dist, theta = self.polar(cx, cy)
        spokes = rng.integers(6, 11)
        phase = rng.uniform(0, 2 * np.pi)
        width = 0.5 * (1 - dist / (0.95 * r)).clip(0, 1)
        spoke = (np.cos(spokes * theta + phase) > 1 - width) * (dist < 0.95 * r) * (dist > 0.15 * r)
        hub = 1 - _smoothstep(0.16 * r, 0.24 * r, dist)
        self.blend([rng.uniform(110, 130), rng.uniform(85, 100), rng.uniform(85, 100)], spoke * area * strength)
        self.blend([rng.uniform(60, 80), rng.uniform(40, 50), rng.uniform(35, 45)], hub * area * strength)

    def _draw_AT(self, cx, cy, r, area, strength):
        rng = self.rng
        segments: list[tuple[float, float, float, float, float]] = []
        scale = self.size / 160

        def grow(x, y, ang, length, width, depth):
            if depth == 0 or width < 0.5:
                return
            steps = 3
            for _ in range(steps):
                ang += rng.uniform(-0.35, 0.35)
                nx, ny = x + length / steps * np.cos(ang), y + length / steps * np.sin(ang)
                segments.append((x, y, nx, ny, width))
                x, y = nx, ny
            for turn in (-1, 1):
                grow(x, y, ang + turn * rng.uniform(0.35, 0.8), length * 0.65, width * 0.65, depth - 1)

        start_ang = rng.uniform(0, 2 * np.pi)
        sx, sy = cx - 0.7 * r * np.cos(start_ang), cy - 0.7 * r * np.sin(start_ang)
        grow(sx, sy, start_ang, 0.75 * r, rng.uniform(2.2, 3.0) * scale, 4)
        vessel = np.zeros_like(self.xx)
        for x0, y0, x1, y1, w in segments:
            vessel = np.maximum(vessel, _segment(self.xx, self.yy, x0, y0, x1, y1, w))
        self.blend([rng.uniform(185, 215), rng.uniform(20, 45), rng.uniform(35, 55)], vessel * area * strength)

    # -- look-alikes and noise -----------------------------------------------------------
    def draw_mimic(self, name: str) -> None:
        rng, lesion = self.rng, self.lesion_soft
        if name == "dotted":       # dotted vessels: red, but points, not branching trees
            for _ in range(rng.integers(15, 30)):
                px, py = self._point_in_lesion()
                dot = 1 - _smoothstep(0.6, 1.5, np.hypot(self.xx - px, self.yy - py))
                self.blend([195, 40, 50], dot * lesion * 0.9)
        elif name == "veil":       # blue-white veil: bluish but structureless and diffuse
            veil = self.blob(self.cx, self.cy, 0.6 * self.radius, wobble=0.3, edge=8.0)
            self.blend([150, 165, 190], veil * lesion * 0.45)
        elif name == "brown_globules":   # globules, but brown, not blue-gray
            for _ in range(rng.integers(8, 16)):
                px, py = self._point_in_lesion()
                dot = 1 - _smoothstep(1.5, 3.0, np.hypot(self.xx - px, self.yy - py))
                self.blend([105, 65, 40], dot * lesion)
        elif name == "milia":      # milia-like cysts: white-yellow dots
            for _ in range(rng.integers(4, 10)):
                px, py = self._point_in_lesion()
                dot = 1 - _smoothstep(1.0, 2.5, np.hypot(self.xx - px, self.yy - py))
                self.blend([245, 240, 200], dot * lesion * 0.9)

    def _point_in_lesion(self) -> tuple[float, float]:
        ang, d = self.rng.uniform(0, 2 * np.pi), self.radius * np.sqrt(self.rng.uniform(0, 0.8))
        return self.cx + d * np.cos(ang), self.cy + d * np.sin(ang)

    def draw_hairs(self) -> None:
        rng, s = self.rng, self.size
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.uniform(0, s, size=2)
            ang = rng.uniform(0, np.pi)
            x1, y1 = x0 + 1.5 * s * np.cos(ang), y0 + 1.5 * s * np.sin(ang)
            x0, y0 = x0 - 1.5 * s * np.cos(ang), y0 - 1.5 * s * np.sin(ang)
            self.blend([45, 35, 30], _segment(self.xx, self.yy, x0, y0, x1, y1, 0.7) * 0.8)

    def finish(self) -> np.ndarray:
        img = self.img + self.rng.normal(0, self.rng.uniform(2, 5), self.img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


def _segment(xx, yy, x0, y0, x1, y1, width) -> np.ndarray:
    """Soft line segment of the given half-width, as a distance field."""
    dx, dy = x1 - x0, y1 - y0
    denom = dx * dx + dy * dy or 1e-6
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / denom, 0, 1)
    dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
    return 1 - _smoothstep(width - 0.5, width + 0.7, dist)
