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
                        another image of the same person, never the target itself
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
import logging
from typing import Any, Mapping

import cv2
import grain
import numpy as np

from data_pipelines import align, masks, subsets
from data_pipelines.config import FRAMINGS, DataConfig  # noqa: F401  (re-exported)
from data_pipelines.sources import EmptySplitError, make_source

log = logging.getLogger(__name__)

#: Stream position carried from the record to the skip accounting (dropped from batches).
POSITION_KEY = "_pos"


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


class PrepareExample:
    """Grain random-map transform: record -> uint8 example dict (or a skip marker).

    Training examples get the pix2pix jitter (frame at ``resolution * jitter_scale``,
    random ``resolution`` crop) and a random horizontal flip, both done in the single
    framing warp (``align.window_box``); the mask is then synthesised on the final crop,
    with the landmarks mapped (and, after a flip, re-labelled) by the same warp. This is
    the same distribution as synthesising on the full frame and cropping/flipping after,
    without warping, masking and copying pixels that the crop throws away.
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
        example = {
            "masked": masked, "target": target, "mask": mask.reshape(res, res, 1),
            "index": np.int64(record["index"]), "identity_id": np.int64(record["identity"]),
        }
        if POSITION_KEY in record:
            example[POSITION_KEY] = record[POSITION_KEY]
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
            flip = bool(self.train and self.cfg.flip and rng.random() < 0.5)
            box = _frame_box(other["image"], other.get("landmarks"), self.cfg)
            image, _ = align.crop_and_resize(other["image"], None, box, self.cfg.resolution,
                                             flip=flip)
            return image
        return None


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
    if train is not evaluation:
        shared = np.intersect1d(_known(record_identities(train)),
                                _known(record_identities(evaluation)))
        if shared.size:
            log.warning("data %s: %d identities are in both config.data.train_split=%r and "
                        "eval_split=%r", cfg.source, shared.size, cfg.train_split,
                        cfg.eval_split)
    return train, evaluation


def _known(identities: np.ndarray) -> np.ndarray:
    return np.unique(identities[identities >= 0])


def record_identities(source) -> np.ndarray:
    """int64 (len(source),) identity label of every record without reading any (-1 =
    unknown): the ``identities`` array of file sources, else rebuilt from
    ``identity_indices`` over ``num_identities`` (synthetic)."""
    n = len(source)
    ids = getattr(source, "identities", None)
    if ids is not None and len(ids) == n:
        return np.asarray(ids, dtype=np.int64)
    out = np.full((n,), -1, dtype=np.int64)
    count = getattr(source, "num_identities", None)
    if getattr(source, "has_identities", False) and count is not None:
        for identity in range(int(count)):
            out[source.identity_indices(identity)] = identity
    return out


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
    source = build_source(cfg, cfg.train_split) if source is None else source
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

    The returned dataset carries ``num_records`` (records in the set; skipped ones
    included) and ``num_identities`` (distinct people among them; None when the source has
    no identity labels), for the evaluation report.
    """
    source = build_source(cfg, cfg.eval_split) if source is None else source
    n = min(num_images, len(source))
    if n < num_images:
        log.warning("eval split %r of %s has %d records; evaluating on %d, not %d",
                    cfg.eval_split, cfg.source, len(source), n, num_images)
    identities = record_identities(source)
    chosen = subsets.spread_order(identities, n)
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
