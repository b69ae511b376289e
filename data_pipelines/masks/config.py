"""Mask-synthesis knobs (``MaskSynthesisConfig``), per-example parameters (``MaskParams``)
and their sampling from a numpy Generator.

Everything random about one synthetic mask lives in ``MaskParams``; rendering is a pure
function of (image, landmarks, params). Determinism per (seed, example index, epoch) is
the caller's business: build the Generator with ``example_rng``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

MASK_TYPES: tuple[str, ...] = ("surgical", "cloth", "n95", "kn95", "gas")

#: Default relative frequency of each mask type (used when type_probs is None).
DEFAULT_TYPE_WEIGHTS: dict[str, float] = {
    "surgical": 0.35, "cloth": 0.3, "n95": 0.15, "kn95": 0.15, "gas": 0.05}

#: Procedural fabric patterns for cloth masks ("plain" = no pattern).
TEXTURES: tuple[str, ...] = (
    "stripes", "checks", "dots", "noise", "floral", "zigzag", "camo")

#: 13-colour fabric palette (RGB).
CLOTH_PALETTE: tuple[tuple[int, int, int], ...] = (
    (200, 40, 45),    # red
    (30, 45, 95),     # navy
    (120, 170, 215),  # sky blue
    (140, 160, 120),  # sage
    (225, 120, 40),   # orange
    (60, 62, 68),     # charcoal
    (150, 150, 155),  # grey
    (25, 25, 28),     # black
    (235, 235, 230),  # white
    (235, 160, 180),  # pink
    (110, 60, 140),   # purple
    (235, 200, 70),   # yellow
    (30, 130, 130),   # teal
)

#: Colour families per mask type (RGB); one is picked, then jittered per channel.
SURGICAL_COLOURS: tuple[tuple[int, int, int], ...] = (
    (238, 240, 242),  # white
    (4, 115, 226),    # blue (#0473e2)
    (70, 150, 235),   # lighter blue
    (20, 90, 190),    # darker blue
    (95, 180, 150),   # surgical green
    (150, 205, 185),  # pale green
)
SURGICAL_COLOUR_PROBS: tuple[float, ...] = (0.35, 0.15, 0.15, 0.15, 0.1, 0.1)
N95_COLOURS: tuple[tuple[int, int, int], ...] = (
    (240, 240, 236), (225, 225, 218), (245, 235, 200), (70, 110, 170), (40, 40, 45))
N95_COLOUR_PROBS: tuple[float, ...] = (0.45, 0.2, 0.15, 0.1, 0.1)
KN95_COLOURS: tuple[tuple[int, int, int], ...] = (
    (240, 240, 240), (35, 35, 38), (150, 150, 155), (235, 170, 185), (140, 185, 225))
KN95_COLOUR_PROBS: tuple[float, ...] = (0.45, 0.25, 0.1, 0.1, 0.1)
GAS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (30, 30, 32), (58, 60, 64), (62, 70, 52), (45, 50, 62))
GAS_CARTRIDGE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (200, 80, 140), (150, 60, 160), (220, 190, 60), (80, 82, 88), (40, 40, 42))


@dataclasses.dataclass(frozen=True)
class MaskSynthesisConfig:
    """All knobs of mask synthesis. Build from a plain dict with ``from_dict``.

    types / type_probs     mask types to draw and their relative probabilities, one per
                           type (normalised); ``None`` = ``DEFAULT_TYPE_WEIGHTS`` of the
                           chosen types.
    blend_weight_range     w of addWeighted(template, 1 - w, colour, w) (tool: 0.5).
    texture_prob           probability that a cloth mask carries a pattern (else plain).
    textures               pattern kinds allowed for cloth masks.
    colour_jitter          +- per-channel jitter (0-255 units) of the picked colour.
    coverage_jitter        b moves along landmarks 27 -> 30 to 0.5 +- this fraction
                           (mask top higher or lower on the nose).
    width_jitter           a, c, d, f move away from / towards the b-e axis by a factor
                           1 +- this.
    pleats_range           inclusive range of surgical pleat counts.
    valve_prob             probability of an exhalation valve on N95 masks.
    seam_prob              probability of a centre seam on cloth masks.
    straps_prob            probability of ear loops (never on gas masks).
    straps_in_map          ear loops are part of the mask map. When False no ear loops are
                           ever drawn, so the invariant "masked == source outside the map"
                           always holds (straps drawn outside the map would break it).
    shading_range          strength of the cylinder/dome shading.
    match_brightness       scale the mask's V channel towards the face's mean V (tool).
    tilt_threshold_deg     |face tilt| above which the turned-face variant is used.
    """

    types: tuple[str, ...] = MASK_TYPES
    type_probs: tuple[float, ...] | None = None
    blend_weight_range: tuple[float, float] = (0.4, 0.6)
    texture_prob: float = 0.6
    textures: tuple[str, ...] = TEXTURES
    colour_jitter: int = 12
    coverage_jitter: float = 0.15
    width_jitter: float = 0.05
    pleats_range: tuple[int, int] = (2, 4)
    valve_prob: float = 0.5
    seam_prob: float = 0.5
    straps_prob: float = 0.3
    straps_in_map: bool = True
    shading_range: tuple[float, float] = (0.12, 0.3)
    match_brightness: bool = True
    tilt_threshold_deg: float = 13.0

    def __post_init__(self) -> None:
        _tuple_fields(self)
        unknown = [t for t in self.types if t not in MASK_TYPES]
        if not self.types or unknown:
            raise ValueError(f"types must be a non-empty subset of {MASK_TYPES}, got {self.types}")
        if self.type_probs is not None:
            probs = np.asarray(self.type_probs, dtype=np.float64)
            if probs.shape != (len(self.types),) or np.any(probs < 0) or probs.sum() <= 0:
                raise ValueError(
                    f"type_probs must be {len(self.types)} non-negative numbers with a positive "
                    f"sum (one per type in {self.types}), got {self.type_probs}")
        bad_tex = [t for t in self.textures if t not in TEXTURES]
        if bad_tex:
            raise ValueError(f"unknown textures {bad_tex}; known: {TEXTURES}")
        for name in ("blend_weight_range", "shading_range"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1, got {(lo, hi)}")
        lo, hi = self.pleats_range
        if not 0 <= lo <= hi:
            raise ValueError(f"pleats_range must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        for name in ("texture_prob", "valve_prob", "seam_prob", "straps_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.coverage_jitter <= 0.5:
            raise ValueError(f"coverage_jitter must be in [0, 0.5], got {self.coverage_jitter}")
        if not 0.0 <= self.width_jitter < 0.5:
            raise ValueError(f"width_jitter must be in [0, 0.5), got {self.width_jitter}")
        if self.colour_jitter < 0:
            raise ValueError(f"colour_jitter must be >= 0, got {self.colour_jitter}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "MaskSynthesisConfig":
        """Build from a plain dict (e.g. a config file section); lists become tuples.
        Raises ValueError naming any unknown key."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown MaskSynthesisConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved_type_probs(self) -> tuple[float, ...]:
        """Normalised probabilities, one per entry of ``types``."""
        if self.type_probs is None:
            weights = np.array([DEFAULT_TYPE_WEIGHTS[t] for t in self.types], np.float64)
        else:
            weights = np.asarray(self.type_probs, dtype=np.float64)
        return tuple(float(v) for v in weights / weights.sum())


def _tuple_fields(cfg: MaskSynthesisConfig) -> None:
    """Normalise list-valued fields to tuples (frozen dataclass, so via object.__setattr__)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, list):
            object.__setattr__(cfg, f.name, tuple(value))


@dataclasses.dataclass(frozen=True)
class MaskParams:
    """Everything random about one synthetic mask. Rendering is a pure function of
    (image, landmarks, MaskParams).

    colour, colour2      main colour and pattern / accent colour (RGB 0-255);
    texture              "plain" or one of ``TEXTURES``; texture_scale multiplies the
                         pattern period; texture_angle in degrees; texture_seed drives
                         random pattern placement;
    bridge_frac          b = lm27 + bridge_frac * (lm30 - lm27) (spec: 0.5);
    width_scale          spread of a, c, d, f about the b-e axis;
    pleats               surgical pleat count; valve / valve_side (-1 image-left,
                         +1 image-right) for N95; seam for cloth; straps = ear loops.
    """

    mask_type: str = "surgical"
    colour: tuple[int, int, int] = (238, 240, 242)
    colour2: tuple[int, int, int] = (30, 45, 95)
    texture: str = "plain"
    texture_scale: float = 1.0
    texture_angle: float = 0.0
    texture_seed: int = 0
    blend_weight: float = 0.5
    bridge_frac: float = 0.5
    width_scale: float = 1.0
    pleats: int = 3
    valve: bool = False
    valve_side: int = 1
    seam: bool = False
    straps: bool = False
    shading: float = 0.2
    match_brightness: bool = True
    tilt_threshold_deg: float = 13.0

    def __post_init__(self) -> None:
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {self.mask_type!r}")
        if self.texture != "plain" and self.texture not in TEXTURES:
            raise ValueError(f"texture must be 'plain' or one of {TEXTURES}, got {self.texture!r}")


def example_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
    """The Generator for one example: deterministic in (seed, epoch, index), and
    independent across them."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(index)]))


def _index(u: float, probs: tuple[float, ...] | None, n: int) -> int:
    """Map a uniform draw ``u`` in [0, 1) to an index in [0, n) (uniform or ``probs``)."""
    if probs is None:
        return min(int(u * n), n - 1)
    cum = np.cumsum(np.asarray(probs, dtype=np.float64))
    return min(int(np.searchsorted(cum / cum[-1], u, side="right")), n - 1)


def _jitter(u3: np.ndarray, colour: tuple[int, int, int], amount: int
            ) -> tuple[int, int, int]:
    """Per-channel integer jitter in [-amount, amount] from three uniform draws."""
    noise = np.floor(u3 * (2 * amount + 1)).astype(np.int64) - amount
    return tuple(int(v) for v in np.clip(np.asarray(colour) + noise, 0, 255))


#: Uniform draws consumed per example (fixed, whatever the type, so streams stay aligned).
_N_DRAWS = 24


def sample_mask_params(rng: np.random.Generator, cfg: MaskSynthesisConfig | None = None
                       ) -> MaskParams:
    """Draw one example's MaskParams with a single ``rng.random`` call (fast, and the
    number of draws never depends on the outcome)."""
    cfg = cfg or MaskSynthesisConfig()
    u = rng.random(_N_DRAWS)
    mask_type = cfg.types[_index(u[0], cfg.resolved_type_probs(), len(cfg.types))]
    lo, hi = cfg.blend_weight_range
    blend = float(lo + u[1] * (hi - lo))
    bridge_frac = float(0.5 + (2 * u[2] - 1) * cfg.coverage_jitter)
    width_scale = float(1.0 + (2 * u[3] - 1) * cfg.width_jitter)
    lo, hi = cfg.shading_range
    shading = float(lo + u[4] * (hi - lo))
    straps = bool(cfg.straps_in_map and mask_type != "gas" and u[5] < cfg.straps_prob)
    valve = bool(mask_type == "n95" and u[6] < cfg.valve_prob)
    valve_side = 1 if u[7] < 0.5 else -1
    seam = bool(mask_type == "cloth" and u[8] < cfg.seam_prob)
    p_lo, p_hi = cfg.pleats_range
    pleats = p_lo + min(int(u[9] * (p_hi - p_lo + 1)), p_hi - p_lo)
    texture_seed = int(u[10] * (2**31 - 1))
    texture_scale = float(0.7 + 0.7 * u[11])
    texture_angle = float(-30.0 + 60.0 * u[12]) if u[13] < 0.5 else 0.0
    if mask_type == "cloth":
        n = len(CLOTH_PALETTE)
        i = _index(u[14], None, n)
        j = (i + 1 + _index(u[15], None, n - 1)) % n
        colour, colour2 = CLOTH_PALETTE[i], CLOTH_PALETTE[j]
        texture = (cfg.textures[_index(u[17], None, len(cfg.textures))]
                   if cfg.textures and u[16] < cfg.texture_prob else "plain")
    else:
        options, probs = {
            "surgical": (SURGICAL_COLOURS, SURGICAL_COLOUR_PROBS),
            "n95": (N95_COLOURS, N95_COLOUR_PROBS),
            "kn95": (KN95_COLOURS, KN95_COLOUR_PROBS),
            "gas": (GAS_COLOURS, None),
        }[mask_type]
        colour = options[_index(u[14], probs, len(options))]
        colour2 = (GAS_CARTRIDGE_COLOURS[_index(u[15], None, len(GAS_CARTRIDGE_COLOURS))]
                   if mask_type == "gas" else (200, 205, 210))
        texture = "plain"
    colour = _jitter(u[18:21], colour, cfg.colour_jitter)
    colour2 = _jitter(u[21:24], colour2, cfg.colour_jitter)
    return MaskParams(
        mask_type=mask_type, colour=colour, colour2=colour2, texture=texture,
        texture_scale=texture_scale, texture_angle=texture_angle, texture_seed=texture_seed,
        blend_weight=blend, bridge_frac=bridge_frac, width_scale=width_scale,
        pleats=pleats, valve=valve, valve_side=valve_side, seam=seam, straps=straps,
        shading=shading, match_brightness=cfg.match_brightness,
        tilt_threshold_deg=cfg.tilt_threshold_deg)
