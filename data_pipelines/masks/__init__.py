"""Procedural face-mask synthesis: MaskTheFace's anchor geometry, masks drawn from code.

A mask is placed with the tool's six anchors (a..f) computed from 68 landmarks, drawn in a
template frame (surgical, cloth, N95, KN95, gas), warped onto the face with the
least-squares anchor homography, coloured/textured/shaded, brightness-matched, and
composited; the binary mask map marks exactly the pixels it changed (alpha > 0).
See shared/specs/mask_synthesis.md.

Public API::

    cfg = MaskSynthesisConfig.from_dict({...})
    params = sample_mask_params(rng, cfg)
    masked, mask_map = render_mask(image, landmarks68, params)
    masked, mask_map, params = synthesize_mask(image, landmarks68, rng, cfg)
"""
from data_pipelines.masks.anchors import ANCHOR_NAMES, face_tilt, face_tilt_angle, mask_anchors
from data_pipelines.masks.config import (
    CLOTH_PALETTE,
    MASK_TYPES,
    TEXTURES,
    MaskParams,
    MaskSynthesisConfig,
    example_rng,
    sample_mask_params,
)
from data_pipelines.masks.render import render_mask, synthesize_mask

__all__ = [
    "ANCHOR_NAMES", "CLOTH_PALETTE", "MASK_TYPES", "TEXTURES", "MaskParams",
    "MaskSynthesisConfig", "example_rng", "face_tilt", "face_tilt_angle", "mask_anchors",
    "render_mask", "sample_mask_params", "synthesize_mask",
]
