"""The Grain pipeline: face source -> framed, augmented, masked examples -> batches.

    source -> per-process shard -> shuffle/repeat -> random_map(prepare) -> [worker processes]
      -> drop and count bad records -> batch -> float conversion

Workers emit uint8 arrays (4x less inter-process traffic than float32); the batch function
converts to the model's convention. A batch is a dict of numpy arrays:

``masked``, ``target``  float32 (N, H, W, 3) in [-1, 1]
``mask``                float32 (N, H, W, 1) in {0, 1} (1 = covered by the synthetic mask)
``identity``            float32 (N, H, W, 3) in [-1, 1], only when ``identity_image`` is on:
                        another image of the same person, never the target itself
``index``, ``identity_id``  int64 (N,) record index in the source and identity label

Everything is deterministic from ``seed``: Grain seeds each example's RNG from the seed and the
example's position in the (repeated) stream, so the same seed gives identical batches and a new
epoch gives new masks, crops and flips for the same faces.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Mapping

import grain
import numpy as np

from data_pipelines import align, masks
from data_pipelines.sources import make_source

log = logging.getLogger(__name__)

FRAMINGS = ("landmarks", "center")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Everything the pipeline needs; built from ``config.data`` with unknown keys rejected."""

    source: str = "synthetic"
    data_dir: str | None = None
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
    mask: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    identity_image: bool = False
    num_workers: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 2
    shuffle: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DataConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config.data: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for key in ("source_options", "mask"):
            if key in d and d[key] is not None and not isinstance(d[key], dict):
                d[key] = dict(d[key])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not 64 <= self.resolution <= 512:
            raise ValueError(f"config.data.resolution={self.resolution}: must be in 64..512")
        if self.framing not in FRAMINGS:
            raise ValueError(f"config.data.framing={self.framing!r}: choose one of {FRAMINGS}")
        if self.jitter_scale < 1.0:
            raise ValueError("config.data.jitter_scale must be >= 1.0 (1.0 = no jitter)")
        masks.MaskSynthesisConfig.from_dict(dict(self.mask))  # fails early on bad mask keys


# --------------------------------------------------------------------------------------------
# Per-example preparation (runs in Grain worker processes).
# --------------------------------------------------------------------------------------------


def _frame(image: np.ndarray, landmarks: np.ndarray | None, size: int, cfg: DataConfig):
    if cfg.framing == "landmarks" and landmarks is not None:
        box = align.face_box(landmarks, cfg.face_scale)
        return align.crop_and_resize(image, landmarks, box, size)
    return align.resize_square(image, landmarks, size)


def _crop_flip(arrays: list[np.ndarray], rng: np.random.Generator, size: int, flip: bool):
    """Same random crop (to ``size``) and horizontal flip for every array of one example."""
    full = arrays[0].shape[0]
    y, x = (rng.integers(0, full - size + 1, size=2) if full > size else (0, 0))
    do_flip = flip and rng.random() < 0.5
    out = []
    for a in arrays:
        a = a[y:y + size, x:x + size]
        out.append(np.ascontiguousarray(a[:, ::-1] if do_flip else a))
    return out


def _skip(record: Mapping[str, Any], reason: str) -> dict[str, Any]:
    return {"_error": reason, "index": np.int64(record.get("index", -1))}


class PrepareExample:
    """Grain random-map transform: record -> uint8 example dict (or a skip marker)."""

    def __init__(self, source, cfg: DataConfig, train: bool):
        self.source = source
        self.cfg = cfg
        self.train = train
        self.mask_cfg = masks.MaskSynthesisConfig.from_dict(dict(cfg.mask))

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        if record.get("error"):
            return _skip(record, record["error"])
        res = cfg.resolution
        size = int(round(res * cfg.jitter_scale)) if self.train else res
        if "target" in record:  # paired source: mask map comes with the data
            target, _ = align.resize_square(record["target"], None, size)
            masked, _ = align.resize_square(record["image"], None, size)
            mask, _ = align.resize_square(record["mask"].astype(np.uint8) * 255, None, size)
            mask = (mask > 127).astype(np.uint8)
        else:
            if record.get("landmarks") is None:
                return _skip(record, "no_landmarks")
            target, landmarks = _frame(record["image"], record["landmarks"], size, cfg)
            try:
                masked, mask, _ = masks.synthesize_mask(target, landmarks, rng, self.mask_cfg)
            except (ValueError, np.linalg.LinAlgError) as e:  # degenerate landmark geometry
                log.debug("mask synthesis failed for %s: %s", record.get("key"), e)
                return _skip(record, "mask_failed")
        masked, target, mask = _crop_flip(
            [masked, target, mask.reshape(mask.shape[0], mask.shape[1])], rng, res,
            cfg.flip and self.train)
        example = {
            "masked": masked, "target": target, "mask": mask[..., None],
            "index": np.int64(record["index"]), "identity_id": np.int64(record["identity"]),
        }
        if cfg.identity_image:
            identity = self._identity_image(record, rng)
            if identity is None:
                return _skip(record, "no_other_identity_image")
            example["identity"] = identity
        return example

    def _identity_image(self, record, rng: np.random.Generator) -> np.ndarray | None:
        """Another image of the same person, framed at the output resolution."""
        if record["identity"] < 0:
            return None
        candidates = self.source.identity_indices(int(record["identity"]))
        candidates = candidates[candidates != record["index"]]
        for j in rng.permutation(candidates)[:4]:
            other = self.source[int(j)]
            if other.get("error") or (self.cfg.framing == "landmarks"
                                      and other.get("landmarks") is None):
                continue
            image, _ = _frame(other["image"], other.get("landmarks"), self.cfg.resolution,
                              self.cfg)
            if self.train and self.cfg.flip and rng.random() < 0.5:
                image = image[:, ::-1]
            return np.ascontiguousarray(image)
        return None


# --------------------------------------------------------------------------------------------
# Skip accounting and batching (main process).
# --------------------------------------------------------------------------------------------


class SkipCounter:
    """Grain filter that drops skip markers, counts them by reason and logs once per epoch."""

    def __init__(self, epoch_length: int, source_name: str):
        self.epoch_length = max(1, epoch_length)
        self.source_name = source_name
        self.seen = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._epoch_counts: collections.Counter[str] = collections.Counter()

    def __call__(self, example: Mapping[str, Any]) -> bool:
        self.seen += 1
        ok = "_error" not in example
        if not ok:
            self.counts[example["_error"]] += 1
            self._epoch_counts[example["_error"]] += 1
        if self.seen % self.epoch_length == 0:
            self._log_epoch()
        return ok

    def _log_epoch(self) -> None:
        epoch = self.seen // self.epoch_length
        if self._epoch_counts:
            log.warning("data %s, epoch %d: skipped %d of %d records: %s", self.source_name,
                        epoch, sum(self._epoch_counts.values()), self.epoch_length,
                        dict(self._epoch_counts))
        else:
            log.info("data %s, epoch %d: %d records, none skipped", self.source_name, epoch,
                     self.epoch_length)
        self._epoch_counts.clear()


def to_model_batch(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks uint8 examples and converts to the model convention (see module docstring)."""
    batch: dict[str, np.ndarray] = {}
    for key in examples[0]:
        stacked = np.stack([e[key] for e in examples])
        if key in ("masked", "target", "identity"):
            stacked = stacked.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
        elif key == "mask":
            stacked = stacked.astype(np.float32)
        batch[key] = stacked
    return batch


# --------------------------------------------------------------------------------------------
# Builders.
# --------------------------------------------------------------------------------------------


def build_source(cfg: DataConfig, split: str):
    return make_source(cfg.source, data_dir=cfg.data_dir, split=split, seed=cfg.seed,
                       resolution=cfg.resolution, **dict(cfg.source_options))


def _finish(ds: grain.MapDataset, cfg: DataConfig, batch_size: int, epoch_length: int,
            source_name: str, drop_remainder: bool) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, cfg.read_threads),
                                              prefetch_buffer_size=max(2, 2 * batch_size)))
    if cfg.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size))
    it = it.filter(SkipCounter(epoch_length, source_name))
    return it.batch(batch_size, drop_remainder=drop_remainder, batch_fn=to_model_batch)


def train_dataset(cfg: DataConfig, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None,
                  source=None) -> grain.IterDataset:
    """Infinite (or ``num_epochs``) stream of training batches for this process.

    ``batch_size`` is the per-process batch; the global batch is batch_size * process_count.
    Each process reads the disjoint shard ``source[process_index::process_count]``.
    """
    source = build_source(cfg, cfg.train_split) if source is None else source
    ds = grain.MapDataset.source(source)[process_index::process_count]
    shard_len = len(ds)
    if shard_len < batch_size:
        raise ValueError(f"data {cfg.source}: this process's shard has {shard_len} records, "
                         f"fewer than its batch of {batch_size}")
    ds = ds.seed(cfg.seed)
    if cfg.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs)
    ds = ds.random_map(PrepareExample(source, cfg, train=True))
    return _finish(ds, cfg, batch_size, shard_len, getattr(source, "name", cfg.source),
                   drop_remainder=True)


def eval_dataset(cfg: DataConfig, *, batch_size: int, num_images: int, process_index: int = 0,
                 process_count: int = 1, source=None) -> grain.IterDataset:
    """The fixed evaluation set: the first ``num_images`` records of the eval split, one pass,
    fixed masks (seeded independently of the training seed), no augmentation. The last batch
    may be smaller than ``batch_size``."""
    source = build_source(cfg, cfg.eval_split) if source is None else source
    n = min(num_images, len(source))
    if n < num_images:
        log.warning("eval split %r of %s has %d records; evaluating on %d, not %d",
                    cfg.eval_split, cfg.source, len(source), n, num_images)
    ds = grain.MapDataset.source(source)[:n][process_index::process_count]
    ds = ds.seed(cfg.seed + 1_000_003).random_map(PrepareExample(source, cfg, train=False))
    return _finish(ds, cfg, batch_size, len(ds), getattr(source, "name", cfg.source),
                   drop_remainder=False)
