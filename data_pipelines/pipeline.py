"""The Grain pipeline: face source -> framed, augmented, masked examples -> batches.

    source -> per-process shard -> shuffle/repeat -> tag stream position
      -> random_map(PrepareExample: decode, frame + jitter crop + flip in one warp, mask)
      -> [worker processes] -> drop and count bad records (SkipCounter) -> batch -> float

Workers emit uint8 arrays (4x less inter-process traffic than float32; pickled through the
worker queue, which is cheaper than a shared-memory block per array); the batch function
converts to the model's convention. A batch is a dict of numpy arrays:

``masked``, ``target``  float32 (N, H, W, 3) in [-1, 1]
``mask``                float32 (N, H, W, 1) in {0, 1} (1 = covered by the synthetic mask)
``identity``            float32 (N, H, W, 3) in [-1, 1], only when ``identity_image`` is on:
                        another image of the same person from the same split, never the
                        target itself (nor a file with the same pixels); fixed per record
                        in evaluation. People with a single image are skipped and counted
                        (``no_other_identity_image``); a split without identity labels or
                        without any person with two images fails at setup
                        (``check_identity_source``)
``index``, ``identity_id``  int64 (N,) record index in the source and identity label

Entry points for the trainer: ``DataConfig.from_dict(config.data)`` (defaults and checks in
``data_pipelines/config.py``), ``build_sources(cfg) -> (train_source, eval_source)`` at
start-up (fails at once when a split is missing), then ``train_dataset(cfg, batch_size=...,
source=train_source)`` and ``eval_dataset(cfg, batch_size=..., num_images=...,
source=eval_source)``; the latter's ``num_records`` / ``num_identities`` describe the fixed
eval set (spread over identities, ``data_pipelines.subsets``).

Everything is deterministic from ``seed``: Grain seeds each example's RNG from the seed and the
example's position in the (repeated) stream, so the same seed gives identical batches and a new
epoch gives new masks, crops and flips for the same faces. The worker count does not change
the batches. Bad records never stop an epoch: they are dropped, counted by reason
(``dataset.skip_counter.counts``) and summarised in the log at the end of each epoch.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Mapping

import cv2
import grain
import numpy as np

from data_pipelines import align, masks, subsets
from data_pipelines.config import FRAMINGS, DataConfig, batch_spec  # noqa: F401  (re-exported)
from data_pipelines.sources import EmptySplitError, make_source
from data_pipelines.sources.base import record_identities

log = logging.getLogger(__name__)

#: Stream position carried from the record to the skip accounting (dropped from batches).
POSITION_KEY = "_pos"
#: Record index of the identity image (bookkeeping for tests and tools; dropped from batches).
IDENTITY_INDEX_KEY = "_identity_index"


# --------------------------------------------------------------------------------------------
# Per-example preparation (runs in Grain worker processes).
# --------------------------------------------------------------------------------------------


def _frame_box(image: np.ndarray, landmarks: np.ndarray | None, cfg: DataConfig
               ) -> tuple[float, float, float]:
    """The square (cx, cy, side) box that the config frames an image with."""
    if cfg.framing == "landmarks" and landmarks is not None:
        return align.face_box(landmarks, cfg.face_scale)
    h, w = image.shape[:2]
    return w / 2.0, h / 2.0, float(min(h, w))


def _warp(image: np.ndarray, landmarks: np.ndarray | None, box, size: int, flip: bool
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames ``box`` at ``size`` pixels (mirrored when ``flip``; landmarks re-labelled)."""
    out, lm = align.crop_and_resize(image, landmarks, box, size, flip=flip)
    if flip and lm is not None:
        lm = align.mirror_landmark_order(lm)
    return out, lm


def _skip(record: Mapping[str, Any], reason: str) -> dict[str, Any]:
    out = {"_error": reason, "index": np.int64(record.get("index", -1))}
    if POSITION_KEY in record:
        out[POSITION_KEY] = record[POSITION_KEY]
    return out


def _tag_position(position: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """``map_with_index``: remembers the record's position in the (repeated) stream, so the
    skip accounting knows epoch boundaries also after an iterator restore."""
    out = dict(record)
    out[POSITION_KEY] = position
    return out


#: Default uint8 fill of the identity image's rotated-in corners ("flip_rotate"): mid-grey,
#: which a [-1, 1] model sees as ~0 (``DataConfig.identity_rotation_fill`` sets it).
IDENTITY_ROTATION_FILL = (128, 128, 128)
#: Largest identity-image rotation ("flip_rotate"): uniform in [-90, 90] degrees.
IDENTITY_MAX_ROTATION_DEG = 90.0
#: How many other images of the person are tried before the example is skipped.
IDENTITY_TRIES = 4
#: Salt of the eval identity pick's generator (see ``PrepareExample._identity_order``).
_EVAL_IDENTITY_SALT = 0x1D_E471


def paired_augment(images: list[np.ndarray], rng: np.random.Generator, vflip: bool,
                   rot90: bool) -> list[np.ndarray]:
    """The same random vertical flip (p 0.5, when ``vflip``) and then rotation by k * 90
    degrees (k uniform in 0..3, counter-clockwise, when ``rot90``) of every (H, W[, C]) image
    in ``images`` (masked image, target, mask map: they stay aligned). Draws from ``rng``
    only for the enabled parts, so with both off it draws nothing and returns the inputs."""
    flip_v = bool(vflip and rng.random() < 0.5)
    k = int(rng.integers(0, 4)) if rot90 else 0
    if not flip_v and k == 0:
        return images
    out = []
    for image in images:
        if flip_v:
            image = image[::-1]
        if k:
            image = np.rot90(image, k)
        out.append(np.ascontiguousarray(image))
    return out


def rotate_about_centre(image: np.ndarray, angle_deg: float,
                        fill: int | tuple[int, int, int] = IDENTITY_ROTATION_FILL
                        ) -> np.ndarray:
    """``image`` rotated by ``angle_deg`` (counter-clockwise) about its centre, same size,
    nearest neighbour, uncovered corners set to ``fill`` (torchvision ``RandomRotation``'s
    defaults: no expansion, nearest, constant fill)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle_deg), 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT,
                          borderValue=tuple(int(v) for v in np.broadcast_to(fill, 3)))


def _face(record: Mapping[str, Any]) -> np.ndarray | None:
    """The unmasked face of a record (a paired record's ``image`` is the masked one)."""
    return record.get("target", record.get("image"))


def _same_image(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Identical decoded pixels: the same file (one path, a symlink or hard link to it) or a
    byte-identical copy. Such a "second image" of a person is the target itself."""
    return a is not None and b is not None and a.shape == b.shape and np.array_equal(a, b)


class PrepareExample:
    """Grain random-map transform: record -> uint8 example dict (or a skip marker).

    Training examples get the pix2pix jitter (frame at ``resolution * jitter_scale``,
    random ``resolution`` crop) and a random horizontal flip, both done in the single
    framing warp (``align.window_box``); the mask is then synthesised on the final crop,
    with the landmarks mapped (and, after a flip, re-labelled) by the same warp. This is
    the same distribution as synthesising on the full frame and cropping/flipping after,
    without warping, masking and copying pixels that the crop throws away. Then, when
    ``vflip`` / ``rot90`` are on, one random vertical flip / quarter turn of masked image,
    target and mask map together (``paired_augment``).

    With ``identity_image``, the example also gets another image of the same person
    (``_identity_image``), augmented on its own per ``identity_augment`` in training only.
    Randomness is drawn from the example's generator in a fixed order (window, mask,
    paired augmentation, training identity pick and augmentation), and only for enabled
    features, so the default settings draw exactly what they always did.
    """

    def __init__(self, source, cfg: DataConfig, train: bool):
        self.source = source
        self.cfg = cfg
        self.train = train
        self.mask_cfg = masks.MaskSynthesisConfig.from_dict(dict(cfg.mask))

    def _window(self, rng: np.random.Generator) -> tuple[int, int, int, bool]:
        """(full frame size, crop row, crop column, flip) for this example."""
        res = self.cfg.resolution
        if not self.train:
            return res, 0, 0, False
        full = int(round(res * self.cfg.jitter_scale))
        y, x = (int(v) for v in rng.integers(0, full - res + 1, size=2)) if full > res \
            else (0, 0)
        return full, y, x, bool(self.cfg.flip and rng.random() < 0.5)

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.cfg
        if record.get("error"):
            return _skip(record, record["error"])
        res = cfg.resolution
        full, y, x, flip = self._window(rng)
        if "target" in record:  # paired source: mask map comes with the data
            box = align.window_box(_frame_box(record["target"], None, cfg), full, res, y, x)
            target, _ = _warp(record["target"], None, box, res, flip)
            masked, _ = _warp(record["image"], None, box, res, flip)
            mask, _ = _warp(record["mask"].astype(np.uint8) * 255, None, box, res, flip)
            mask = (mask > 127).view(np.uint8)
        else:
            if record.get("landmarks") is None:
                return _skip(record, "no_landmarks")
            box = align.window_box(_frame_box(record["image"], record["landmarks"], cfg),
                                   full, res, y, x)
            target, landmarks = _warp(record["image"], record["landmarks"], box, res, flip)
            try:
                masked, mask, _ = masks.synthesize_mask(target, landmarks, rng, self.mask_cfg)
            except (ValueError, np.linalg.LinAlgError, cv2.error) as e:  # degenerate shape
                log.debug("mask synthesis failed for %s: %s", record.get("key"), e)
                return _skip(record, "mask_failed")
            if not mask.any():  # drawn entirely outside the crop: nothing to learn from
                return _skip(record, "mask_empty")
        if self.train and (cfg.vflip or cfg.rot90):
            masked, target, mask = paired_augment(
                [masked, target, mask.reshape(res, res)], rng, cfg.vflip, cfg.rot90)
        example = {
            "masked": masked, "target": target, "mask": mask.reshape(res, res, 1),
            "index": np.int64(record["index"]), "identity_id": np.int64(record["identity"]),
        }
        if POSITION_KEY in record:
            example[POSITION_KEY] = record[POSITION_KEY]
        if cfg.identity_image:
            found = self._identity_image(record, rng)
            if found is None:
                return _skip(record, "no_other_identity_image")
            example["identity"], example[IDENTITY_INDEX_KEY] = found
        return example

    def _identity_order(self, record, candidates: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
        """The order in which the other images of the person are tried. Training: a fresh
        random order per example (per stream position). Evaluation: fixed per record --
        drawn from a generator seeded by (seed, record index) only, so an eval example gets
        the same identity image at every evaluation, whatever the eval set size, batch size,
        process count or mask settings."""
        if self.train:
            return rng.permutation(candidates)
        fixed = np.random.default_rng((_EVAL_IDENTITY_SALT, self.cfg.seed, int(record["index"])))
        return fixed.permutation(candidates)

    def _identity_image(self, record, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.int64] | None:
        """(another image of the same person framed at the output resolution, its record
        index), or None when the person has no usable other image. Candidates come from the
        same source (so the same split); the target's own record and any candidate with the
        target's exact pixels (the same file or a byte-identical copy) are never used; at
        most ``IDENTITY_TRIES`` unreadable / landmark-less / duplicate candidates are tried.
        Training augments it per ``identity_augment``; evaluation never does."""
        if record["identity"] < 0:
            return None
        candidates = self.source.identity_indices(int(record["identity"]))
        candidates = candidates[candidates != record["index"]]
        tried = 0
        for j in self._identity_order(record, candidates, rng):
            if tried == IDENTITY_TRIES:
                break
            tried += 1
            other = self.source[int(j)]
            if other.get("error") or (self.cfg.framing == "landmarks"
                                      and other.get("landmarks") is None):
                continue
            if _same_image(_face(other), _face(record)):
                continue
            return self._frame_identity(other, rng), np.int64(j)
        return None

    def _frame_identity(self, other, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        mode = cfg.identity_augment if self.train else "none"
        vflip = angle = None
        if mode == "flip":
            hflip = bool(cfg.flip and rng.random() < 0.5)
        elif mode == "flip_rotate":
            vflip, hflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
            angle = float(rng.uniform(-IDENTITY_MAX_ROTATION_DEG, IDENTITY_MAX_ROTATION_DEG))
        else:
            hflip = False
        face = _face(other)
        box = _frame_box(face, other.get("landmarks"), cfg)
        image, _ = align.crop_and_resize(face, None, box, cfg.resolution, flip=hflip)
        if vflip:
            image = image[::-1]
        if angle is not None:
            image = rotate_about_centre(image, angle, tuple(cfg.identity_rotation_fill))
        return np.ascontiguousarray(image)


# --------------------------------------------------------------------------------------------
# Skip accounting and batching (main process).
# --------------------------------------------------------------------------------------------


class SkipCounter:
    """Grain filter that drops skip markers, counts them by reason and logs a summary at the
    end of every epoch (warning when something was skipped, info otherwise).

    Epochs are told apart by the stream position each example carries (``POSITION_KEY``),
    so the summaries stay aligned with the epochs after an iterator restore (the first one
    then covers the records since the restore). An epoch in which *every* record was
    skipped raises ``RuntimeError`` (nothing usable: e.g. all files corrupt, or identity
    images requested from a dataset with one image per person) instead of spinning forever.
    ``counts`` accumulates over the lifetime of this object.
    """

    def __init__(self, epoch_length: int, source_name: str, process_index: int = 0,
                 process_count: int = 1):
        self.epoch_length = max(1, epoch_length)
        self.source_name = source_name
        # This process sees the global stream positions process_index::process_count.
        self.process_index = process_index
        self.process_count = max(1, process_count)
        self.seen = 0
        self.counts: collections.Counter[str] = collections.Counter()
        self._epoch_counts: collections.Counter[str] = collections.Counter()
        self._epoch: int | None = None
        self._epoch_seen = 0
        self._next_pos = 0

    def __call__(self, example: Mapping[str, Any]) -> bool:
        pos = example.get(POSITION_KEY)
        pos = self._next_pos if pos is None else int(pos)
        self._next_pos = pos + 1
        epoch = pos // self.epoch_length
        if self._epoch is not None and epoch != self._epoch and self._epoch_seen:
            self._log_epoch()  # an epoch left before its last record (never in order)
        self._epoch = epoch
        self.seen += 1
        self._epoch_seen += 1
        ok = "_error" not in example
        if not ok:
            self.counts[example["_error"]] += 1
            self._epoch_counts[example["_error"]] += 1
        if pos + self.process_count >= (epoch + 1) * self.epoch_length:
            self._log_epoch()  # this process's last position of the epoch
        return ok

    def _expected(self, epoch: int) -> int:
        """How many positions of ``epoch`` this process reads."""
        start = epoch * self.epoch_length
        first = start + (self.process_index - start) % self.process_count
        return len(range(first, start + self.epoch_length, self.process_count))

    def _log_epoch(self) -> None:
        epoch = (self._epoch or 0) + 1
        skipped = sum(self._epoch_counts.values())
        counts = dict(self._epoch_counts)
        expected = self._expected(self._epoch or 0)
        part = ("" if self._epoch_seen == expected else
                f" (the last {self._epoch_seen} since the iterator was restored)")
        self._epoch_counts.clear()
        seen, self._epoch_seen = self._epoch_seen, 0
        if skipped and skipped == seen == expected:
            raise RuntimeError(
                f"data {self.source_name}, epoch {epoch}: all {seen} records were skipped "
                f"{counts}; nothing usable -- check data_dir, source_options (landmarks=...) "
                "and identity_image")
        if skipped:
            log.warning("data %s, epoch %d: skipped %d of %d records%s: %s", self.source_name,
                        epoch, skipped, expected, part, counts)
        else:
            log.info("data %s, epoch %d: %d records%s, none skipped", self.source_name, epoch,
                     expected, part)


#: uint8 -> float32 [-1, 1] lookup table (exactly v * (1 / 127.5) - 1 in float32).
_TO_UNIT = (np.arange(256, dtype=np.float32) * np.float32(1 / 127.5)
            - np.float32(1.0)).reshape(256, 1)


def _images_to_unit(images: list[np.ndarray]) -> np.ndarray:
    """Stacks uint8 (H, W, C) images into float32 (N, H, W, C) in [-1, 1] in one pass
    (a table lookup straight into the output: ~2x cheaper than stack + astype + affine)."""
    h, w, c = images[0].shape
    out = np.empty((len(images), h, w, c), np.float32)
    for i, image in enumerate(images):
        if image.shape != (h, w, c):
            raise ValueError(f"examples of one batch differ in shape: {image.shape} vs "
                             f"{(h, w, c)}")
        dst = out[i].reshape(h, w * c)
        res = cv2.LUT(np.ascontiguousarray(image).reshape(h, w * c), _TO_UNIT, dst=dst)
        if res is not dst:  # OpenCV allocated a new array instead of writing in place
            dst[...] = res
    return out


def to_model_batch(examples: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks uint8 examples and converts to the model convention (see module docstring).
    Keys starting with "_" (bookkeeping) are dropped."""
    batch: dict[str, np.ndarray] = {}
    for key in examples[0]:
        if key.startswith("_"):
            continue
        values = [e[key] for e in examples]
        if key in ("masked", "target", "identity"):
            batch[key] = _images_to_unit(values)
        elif key == "mask":
            batch[key] = np.stack(values).astype(np.float32)
        else:
            batch[key] = np.stack(values)
    return batch


# --------------------------------------------------------------------------------------------
# Builders.
# --------------------------------------------------------------------------------------------


def build_source(cfg: DataConfig, split: str):
    """The source of ``split`` (None-valued source options are not passed on)."""
    return make_source(cfg.source, data_dir=cfg.data_dir, split=split, seed=cfg.seed,
                       resolution=cfg.resolution, **cfg.options())


def _split_error(cfg: DataConfig, key: str, err: EmptySplitError) -> ValueError:
    """A start-up error for an empty split that says which config key to change and how."""
    split = getattr(cfg, key)
    fixes = []
    if err.split_option:
        fixes.append(f"set --config.data.source_options.{err.split_option} (a value in "
                     "(0, 1) holds out that fraction as the 'test' split, e.g. 0.05)")
    others = [a for a in err.available if a != split]
    if "validation" in others:
        fixes.append(f"use --config.data.{key}=validation")
    elif others:
        fixes.append(f"set --config.data.{key} to a split that has records: "
                     f"{', '.join(others)}")
    if key == "eval_split" and cfg.train_split in others and "validation" in others:
        fixes.append(f"--config.data.eval_split={cfg.train_split} (evaluates on training "
                     "images)")
    elif key == "eval_split" and cfg.train_split in others:
        fixes[-1] += " (the training split: evaluation would score training images)"
    return ValueError(f"config.data.{key}={split!r}: {err}. To fix: {'; or '.join(fixes)}.")


def build_sources(cfg: DataConfig) -> tuple[Any, Any]:
    """(train source, eval source), both built and checked now, so that a run without an
    evaluation split stops at start-up and not at its first evaluation.

    An empty or missing split raises ``ValueError`` naming ``config.data.train_split`` or
    ``config.data.eval_split`` and the fix: the source option that makes a held-out split
    (``test_fraction`` for lfw, folder and paired) or the splits that do have records
    (CelebA copies with only partitions 0 and 1: ``eval_split=validation``). A missing
    data folder raises ``DatasetNotFoundError`` as ``build_source`` does. When both keys
    name the same split, the same source object is returned twice (with a warning: the
    evaluation then scores training images). When both sources carry identity labels and
    share people, a warning says how many. Pass them on with ``train_dataset(...,
    source=train)`` and ``eval_dataset(..., source=eval)``.
    """
    sources = {}
    for key in ("train_split", "eval_split"):
        split = getattr(cfg, key)
        if key == "eval_split" and split == cfg.train_split:
            log.warning("config.data.eval_split=%r is the training split: evaluation scores "
                        "images the model is trained on", split)
            sources[key] = sources["train_split"]
            continue
        try:
            sources[key] = build_source(cfg, split)
        except EmptySplitError as err:
            raise _split_error(cfg, key, err) from err
    train, evaluation = sources["train_split"], sources["eval_split"]
    check_identity_source(cfg, train, "train_split")
    if evaluation is not train:
        check_identity_source(cfg, evaluation, "eval_split")
    if train is not evaluation:
        shared = np.intersect1d(_known(record_identities(train)),
                                _known(record_identities(evaluation)))
        if shared.size:
            log.warning("data %s: %d identities are in both config.data.train_split=%r and "
                        "eval_split=%r", cfg.source, shared.size, cfg.train_split,
                        cfg.eval_split)
    return train, evaluation


@dataclasses.dataclass(frozen=True)
class IdentityPairs:
    """How a split serves ``identity_image`` (from its identity labels; no file is read)."""

    people: int              # distinct identities in the split
    paired_people: int       # ... with at least two records
    single_people: int       # ... with one record: their examples are skipped
    unlabelled_records: int  # records without an identity label: skipped too
    paired: np.ndarray       # bool (len(source),): the record's person has another record

    @property
    def skipped_records(self) -> int:
        """Records that can never get an identity image (one per single person, plus the
        unlabelled ones)."""
        return self.single_people + self.unlabelled_records


def identity_pairs(source) -> IdentityPairs:
    """``IdentityPairs`` of ``source`` (``record_identities``)."""
    ids = record_identities(source)
    known = ids[ids >= 0]
    labels, counts = np.unique(known, return_counts=True)
    multi = labels[counts >= 2]
    return IdentityPairs(people=int(labels.size), paired_people=int(multi.size),
                         single_people=int(np.sum(counts == 1)),
                         unlabelled_records=int(np.sum(ids < 0)),
                         paired=np.isin(ids, multi) & (ids >= 0))


#: Per source: how to get identity labels (for the ``identity_image`` error).
_IDENTITY_HINTS = {
    "folder": "set --config.data.source_options.identity_from=parent_dir (one folder per "
              "person)",
    "paired": "paired masked/unmasked data has no identity labels; use a source that has "
              "them (synthetic, lfw, celeba, or folder with identity_from=parent_dir)",
    "celeba": "CelebA needs identity_CelebA.txt in data_dir (backend='files'; the tfds "
              "backend has no identities)",
    "synthetic": "set --config.data.source_options.images_per_identity >= 2",
}


def check_identity_source(cfg: DataConfig, source, split_key: str, report: bool = True
                          ) -> IdentityPairs | None:
    """With ``cfg.identity_image``: the split ``config.data.<split_key>`` must have identity
    labels and at least one person with two records, else ``ValueError`` naming the key and
    the fix (at setup, not one skip per example). With ``report``, logs how many people (and
    records) have no second image: their examples are skipped and counted as
    ``no_other_identity_image`` in training, and left out of the eval set. Returns the
    ``IdentityPairs`` (None when ``identity_image`` is off)."""
    if not cfg.identity_image:
        return None
    split = getattr(cfg, split_key)
    name = getattr(source, "name", cfg.source)
    pairs = identity_pairs(source)
    hint = _IDENTITY_HINTS.get(cfg.source, "use a source with identity labels")
    if pairs.people == 0:
        raise ValueError(
            f"config.data.identity_image=True needs identity labels, but data {name} "
            f"({split_key}={split!r}) has none: {hint}")
    if pairs.paired_people == 0:
        if cfg.source == "synthetic":
            fix = hint
        elif cfg.options().get("num_records") is not None:
            fix = (f"source_options.num_records={cfg.options()['num_records']} takes one "
                   "image of every person before anybody's second: raise or unset it")
        else:
            fix = "this split cannot give identity images"
        raise ValueError(
            f"config.data.identity_image=True needs people with at least two images, but "
            f"each of the {pairs.people} people of data {name} ({split_key}={split!r}) has "
            f"one; {fix}")
    if report and pairs.skipped_records:
        unlabelled = (f" and {pairs.unlabelled_records} records have no identity label"
                      if pairs.unlabelled_records else "")
        log.warning(
            "data %s (%s=%r), identity_image: %d of %d people have a single image%s; these "
            "%d records have no identity image (training skips them, counted as "
            "no_other_identity_image; the eval set leaves them out)", name, split_key, split,
            pairs.single_people, pairs.people, unlabelled, pairs.skipped_records)
    elif report:
        log.info("data %s (%s=%r), identity_image: all %d people have >= 2 images", name,
                 split_key, split, pairs.people)
    return pairs


def _known(identities: np.ndarray) -> np.ndarray:
    return np.unique(identities[identities >= 0])


class _Subset:
    """Records ``indices`` of ``source`` (picklable; record fields unchanged, so ``index``
    stays the index in the full source)."""

    def __init__(self, source, indices: np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


#: Arrays below this size are pickled between Grain worker and main process (see _finish).
_MIN_SHM_BYTES = 4 << 20


def _worker_init(worker_index: int, worker_count: int) -> None:
    """Grain worker start-up: one OpenCV thread per worker (the workers already use the
    cores; OpenCV's own thread pool would only oversubscribe them)."""
    del worker_index, worker_count
    cv2.setNumThreads(1)


def _ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app (tests, scripts with
    argparse, notebooks) the flags are unparsed and the workers would fail. Use defaults."""
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _finish(ds: grain.MapDataset, cfg: DataConfig, batch_size: int, epoch_length: int,
            source_name: str, drop_remainder: bool, process_index: int,
            process_count: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, cfg.read_threads),
                                              prefetch_buffer_size=max(2, 2 * batch_size)))
    if cfg.num_workers > 0:
        _ensure_absl_flags_parsed()
        # Examples travel pickled through the worker queue, not one shared-memory block per
        # array: creating/registering/unlinking a block costs more than copying <= 1.5 MB
        # (measured: ~1 ms less CPU per 256 px example, ~20% of the whole pipeline).
        it = grain.experimental.WithOptionsIterDataset(
            it, grain.experimental.DatasetOptions(min_shm_size=_MIN_SHM_BYTES))
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size),
            worker_init_fn=_worker_init)
    counter = SkipCounter(epoch_length, source_name, process_index, process_count)
    it = it.filter(counter)
    out = it.batch(batch_size, drop_remainder=drop_remainder, batch_fn=to_model_batch)
    out.skip_counter = counter  # skip counts of this dataset's iterators (tests, tools)
    return out


def train_dataset(cfg: DataConfig, *, batch_size: int, process_index: int = 0,
                  process_count: int = 1, num_epochs: int | None = None,
                  source=None) -> grain.IterDataset:
    """Infinite (or ``num_epochs``) stream of training batches for this process.

    ``batch_size`` is the per-process batch; the global batch is batch_size * process_count.
    One global stream (shuffle, repeat, per-example augmentation and mask, all seeded by
    position in that stream) is dealt out to the processes: process p takes positions
    p::process_count. So the processes read disjoint records, and the examples of a global
    batch -- records, masks, crops, flips -- are the same for any process count.
    """
    built = source is None
    source = build_source(cfg, cfg.train_split) if built else source
    check_identity_source(cfg, source, "train_split", report=built)
    ds = grain.MapDataset.source(source)
    n = len(ds)
    if n < batch_size * process_count:
        raise ValueError(f"data {cfg.source}: {n} records, fewer than one global batch of "
                         f"{batch_size * process_count}")
    ds = ds.seed(cfg.seed)
    if cfg.shuffle:
        ds = ds.shuffle()
    ds = ds.repeat(num_epochs).map_with_index(_tag_position)
    ds = ds.random_map(PrepareExample(source, cfg, train=True))
    ds = ds[process_index::process_count]
    return _finish(ds, cfg, batch_size, n, getattr(source, "name", cfg.source),
                   drop_remainder=True, process_index=process_index,
                   process_count=process_count)


def eval_dataset(cfg: DataConfig, *, batch_size: int, num_images: int, process_index: int = 0,
                 process_count: int = 1, source=None) -> grain.IterDataset:
    """The fixed evaluation set: ``num_images`` records of the eval split spread over its
    identities (``subsets.spread_order``: one image of every person, in a fixed hashed
    order, before anybody's second; the same records for any seed, process count or
    ``num_images`` prefix), one pass, fixed masks (seeded independently of the training
    seed, by position in the set, whatever the process count), no augmentation. Process p
    takes positions p::process_count. The last batch may be smaller than ``batch_size``.

    With ``identity_image``, the set is drawn only from records whose person has another
    record in the eval split (``identity_pairs``), and each record's identity image is
    fixed: the first usable one in an order seeded by (seed, record index) alone, taken
    from the eval split, never augmented (``PrepareExample._identity_order``).

    The returned dataset carries ``num_records`` (records in the set; skipped ones
    included) and ``num_identities`` (distinct people among them; None when the source has
    no identity labels), for the evaluation report.
    """
    built = source is None
    source = build_source(cfg, cfg.eval_split) if built else source
    pairs = check_identity_source(cfg, source, "eval_split", report=built)
    identities = record_identities(source)
    # With identity images: only records whose person has another record of the split.
    usable = np.arange(len(source)) if pairs is None else np.flatnonzero(pairs.paired)
    n = min(num_images, len(usable))
    if n < num_images:
        log.warning("eval split %r of %s has %d records%s; evaluating on %d, not %d",
                    cfg.eval_split, cfg.source, len(usable),
                    "" if pairs is None else " of people with >= 2 images", n, num_images)
    chosen = usable[subsets.spread_order(identities[usable], n)]
    ds = grain.MapDataset.source(_Subset(source, chosen))
    ds = ds.seed(cfg.seed + 1_000_003).map_with_index(_tag_position)
    ds = ds.random_map(PrepareExample(source, cfg, train=False))
    ds = ds[process_index::process_count]
    out = _finish(ds, cfg, batch_size, n, getattr(source, "name", cfg.source),
                  drop_remainder=False, process_index=process_index,
                  process_count=process_count)
    out.num_records = int(n)
    out.num_identities = (subsets.count_groups(identities[chosen])
                          if np.any(identities >= 0) else None)
    return out
