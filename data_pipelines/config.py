"""``DataConfig``: the pipeline's settings, and the one home of their defaults.

``configs/default.py`` builds ``config.data`` from ``DataConfig.defaults()`` (and the source
option types in ``data_pipelines.sources.OPTION_TYPES``) instead of repeating every value,
so a default changes in one place. The home is here, not in the config file, because the
data tools outside the trainer (``python -m data_pipelines.preview``, the benchmarks, tests)
build a ``DataConfig`` from a few keys without importing ``configs`` (``data_pipelines``
must not depend on it); if the defaults lived only in the config file those tools would need
a second copy.

This module imports nothing heavy (no Grain, OpenCV or dlib): config files import it.

Source options: ``config.data.source_options`` declares every option some source accepts as
a placeholder (None = unset), so ``--config.data.source_options.landmarks=dlib`` works from
the command line. ``from_dict`` drops the None-valued options; the rest must be accepted by
the chosen source (``sources.source_options(name)``), else a ``ValueError`` names the option
and what the source accepts. Which options each source takes: ``data_pipelines.sources``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

FRAMINGS = ("landmarks", "center")
#: Values of ``DataConfig.identity_augment`` (see there).
IDENTITY_AUGMENTS = ("none", "flip", "flip_rotate")

#: Types of the fields whose default is None (config placeholders need a type).
OPTIONAL_FIELD_TYPES: dict[str, type] = {"data_dir": str}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the pipeline needs; built from ``config.data`` with unknown keys rejected.

    The defaults below are the project's defaults (``configs/default.py`` reads them)."""

    source: str = "synthetic"  # synthetic | lfw | celeba | folder | paired
    data_dir: str | None = None
    # Options of the chosen source (see data_pipelines.sources), None-valued ones dropped.
    source_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "test"
    resolution: int = 256
    # "landmarks": square box around the face (face_box); "center": centre square of the image.
    framing: str = "landmarks"
    face_scale: float = 1.7
    # Random-jitter augmentation of pix2pix: frame at resolution * jitter_scale (286/256), then
    # random crop back to resolution. 1.0 disables it.
    jitter_scale: float = 286 / 256
    flip: bool = True
    # Training only, applied identically to masked image, target and mask map (after the
    # framing warp and the mask): a random vertical flip (p 0.5), and a rotation by a random
    # multiple of 90 degrees (k uniform in 0..3). UnVeilify's paired augmentation is
    # flip + vflip + rot90. False (default) draws nothing, so the data stay as they were.
    vflip: bool = False
    rot90: bool = False
    # data_pipelines.masks.MaskSynthesisConfig fields (empty: its defaults).
    mask: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Add "identity": another image of the same person (identity-conditioned models).
    identity_image: bool = False
    # Augmentation of the identity image in training (independent of the target's; eval
    # identity images are never augmented): "none"; "flip" (default): its own random
    # horizontal flip when ``flip`` is on; "flip_rotate": its own random vertical and
    # horizontal flips (p 0.5 each) and a rotation by a uniform angle in [-90, 90] degrees
    # about the centre (nearest neighbour, corners filled with the model's zero = mid-grey,
    # as torchvision's RandomRotation on normalised tensors; UnVeilify's choice). Ignored without
    # ``identity_image``.
    identity_augment: str = "flip"
    # uint8 RGB of the corners the "flip_rotate" rotation uncovers: mid-grey (a [-1, 1] model's
    # 0); a model fed ImageNet-normalised tensors has the ImageNet mean colour
    # (124, 116, 104) as its 0 (configs/unveilify.py sets it).
    identity_rotation_fill: tuple[int, int, int] = (128, 128, 128)
    num_workers: int = 0            # Grain worker processes (0: prepare in this process)
    worker_buffer_size: int = 2
    read_threads: int = 2           # Grain read threads (per process)
    shuffle: bool = True
    seed: int = 0

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{field: default} (``source_options`` and ``mask`` as empty dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            else:
                out[f.name] = f.default_factory()  # type: ignore[misc]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        """From ``config.data`` (a dict or ConfigDict): unknown keys are an error, missing
        keys take the defaults, None-valued source options are dropped."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.data: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for key in ("source_options", "mask"):
            if key in d:
                d[key] = {} if d[key] is None else dict(d[key])
        if "source_options" in d:
            d["source_options"] = {k: v for k, v in d["source_options"].items()
                                   if v is not None}
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from data_pipelines.masks.config import MaskSynthesisConfig
        from data_pipelines.sources import SOURCES, is_known, source_options

        if not 64 <= self.resolution <= 512:
            raise ValueError(f"config.data.resolution={self.resolution}: must be in 64..512")
        if self.framing not in FRAMINGS:
            raise ValueError(f"config.data.framing={self.framing!r}: choose one of {FRAMINGS}")
        if self.jitter_scale < 1.0:
            raise ValueError("config.data.jitter_scale must be >= 1.0 (1.0 = no jitter)")
        for key in ("flip", "vflip", "rot90", "identity_image", "shuffle"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"config.data.{key}={getattr(self, key)!r}: must be True or "
                                 "False")
        fill = tuple(self.identity_rotation_fill)
        if len(fill) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in fill):
            raise ValueError(f"config.data.identity_rotation_fill={fill!r}: three integers in "
                             "0..255 (RGB)")
        if self.identity_augment not in IDENTITY_AUGMENTS:
            raise ValueError(f"config.data.identity_augment={self.identity_augment!r}: choose "
                             f"one of {IDENTITY_AUGMENTS}")
        if self.read_threads < 1 or self.num_workers < 0:
            raise ValueError(f"config.data: read_threads={self.read_threads} must be >= 1 and "
                             f"num_workers={self.num_workers} >= 0")
        if not is_known(self.source):
            raise ValueError(f"config.data.source={self.source!r}: unknown source; choose one "
                             f"of {sorted(SOURCES)}, or several different ones joined with "
                             "'+' (e.g. 'lfw+celeba')")
        accepted = source_options(self.source)
        rejected = sorted(k for k, v in self.source_options.items()
                          if v is not None and k not in accepted)
        if rejected:
            raise ValueError(
                f"config.data.source_options: {self.source} does not take "
                f"{', '.join(rejected)}; {self.source} accepts {sorted(accepted)}")
        MaskSynthesisConfig.from_dict(dict(self.mask))  # fails early on bad mask keys

    def options(self) -> dict[str, Any]:
        """The source options to pass on (None-valued ones dropped)."""
        return {k: v for k, v in self.source_options.items() if v is not None}


def batch_spec(cfg: DataConfig, identity_image: bool | None = None
               ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The keys of a model batch (``pipeline.to_model_batch``) with each one's per-example shape
    and dtype: what the step receives, for building empty or abstract batches."""
    r = cfg.resolution
    spec = {"masked": ((r, r, 3), np.dtype(np.float32)),
            "target": ((r, r, 3), np.dtype(np.float32)),
            "mask": ((r, r, 1), np.dtype(np.float32)),
            "index": ((), np.dtype(np.int64)), "identity_id": ((), np.dtype(np.int64))}
    if cfg.identity_image if identity_image is None else identity_image:
        spec["identity"] = ((r, r, 3), np.dtype(np.float32))
    return spec
