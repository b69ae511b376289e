"""The model side of ``--mode=predict``: which run, which geometry, which mask map, and one
jitted inference per batch-size bucket.

* A workdir with a checkpoint: the run's recorded config is the truth about geometry
  (``data.resolution``, ``framing``, ``face_scale``, ``identity_image``); the config given
  must build the same networks (keys outside ``data.*``, ``predict.*``, ``eval.*`` and the
  other resume-safe keys must match the recording, else a ``CheckpointError`` names them).
* No checkpoint but ``config.model.generator_init`` (PyTorch weights in the network's
  PyTorch layout, e.g. canonical pix2pix): the config given is the geometry.

Mask maps (``MaskPlan``; what a system needs is its ``predict_needs()``): a system that finds
the map itself with an earlier stage (``PredictNeeds.finds_map``, its stage named by
``model.segmenter_workdir``) returns it from ``predict`` with ``predict_variant(find_map=True)``;
systems whose generator takes a map read it from a run that finds maps (:class:`MapRun`: any
run whose system makes maps and does not unmask, ``model.segmenter_workdir``) or from the
user's mask images (``predict.mask``, which wins); systems that need none run as trained, and
their paste-back region is the map when one is available, else the lower face. A map is
thresholded at the threshold its system declares (``PredictNeeds.map_threshold``).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unmask_jax.predict.faces import Geometry

log = logging.getLogger(__name__)

#: Recorded ``config.data`` keys that define how the model saw faces.
GEOMETRY_KEYS = ("resolution", "framing", "face_scale", "identity_image")
#: Config sections whose differences from the recorded config do not matter here.
_IGNORED_PREFIXES = ("data.", "predict.")


class PredictSetupError(Exception):
    """A user mistake found while setting prediction up (one message, exit status 2)."""


@dataclasses.dataclass(frozen=True)
class MaskPlan:
    """Where the mask map comes from. ``source``: "user" (``predict.mask``), "segmenter"
    (a stage-1 run), "system" (GANMasker stage 2's own stage 1) or "landmarks" (no map: the
    lower-face hull is the paste-back region). ``model_needs_map``: the generator takes it."""

    source: str
    model_needs_map: bool


@dataclasses.dataclass
class MapRun:
    """A finished run whose system finds mask maps and does not unmask them (e.g. a
    segmentation stage), loaded to give another model its map: ``system.predict(state, batch,
    frozen)["mask"]`` are probabilities, thresholded at ``threshold``."""

    system: Any
    state: Any
    frozen: Any
    threshold: float
    resolution: int
    workdir: str


def load_map_run(workdir: str) -> MapRun:
    """The run in ``workdir`` rebuilt with the config it recorded; PredictSetupError when its
    system unmasks (it is not a run that finds maps)."""
    from ml_collections import config_dict

    from unmask_jax import checkpoints, state as state_lib
    recorded = config_dict.ConfigDict(checkpoints.recorded_config(workdir))
    state, system, _ = state_lib.load_state(recorded, workdir)
    needs = system.predict_needs()
    if needs.unmasks or needs.map_threshold is None:
        raise PredictSetupError(
            f"config.model.segmenter_workdir={workdir} is a {system.name} run that does not "
            "find mask maps: name a run of a mask-segmentation stage")
    log.info("mask maps from %s (%s, step %d)", workdir, system.name, int(state.step))
    # Inference reads parameters and collections only.
    state = state.replace(nets={n: net.replace(opt_state=()) for n, net in state.nets.items()})
    return MapRun(system=system, state=state,
                  frozen=jax.device_put(system.load_frozen(training=False)),
                  threshold=float(needs.map_threshold),
                  resolution=int(recorded.data.resolution), workdir=str(workdir))


def _bucket(n: int, batch_size: int) -> int:
    """Padded batch size: the next power of two (capped at ``batch_size``)."""
    b = 1
    while b < n:
        b *= 2
    return min(b, batch_size) if n <= batch_size else n


class PredictModel:
    """The loaded system; ``__call__`` runs it on a batch of face crops."""

    def __init__(self, config, workdir: str, *, identity_per_call: bool = False):
        """``identity_per_call``: identity crops come with each call (one photo in memory),
        so ``predict.identity`` is not required."""
        from unmask_jax import systems

        t0 = time.perf_counter()
        self.workdir = workdir
        config, self.pretrained = _effective_config(config, workdir)
        self.config = config
        d = config.data
        self.geometry = Geometry(int(d.resolution), str(d.framing), float(d.face_scale))
        if self.geometry.framing == "center":
            log.warning("the model was trained on centre-framed, pre-aligned crops "
                        "(data.framing=center); photos are framed by the detected face box "
                        "at data.face_scale=%.2f instead", self.geometry.face_scale)
        system = systems.build(config)
        needs = system.predict_needs()
        if not needs.unmasks:
            raise PredictSetupError(
                f"this is a {system.name} run: it finds masks but does not unmask them. "
                "Predict with a run that unmasks and name this one with "
                f"--config.model.segmenter_workdir={workdir}")
        self.system = system
        inputs = tuple(getattr(system, "generator_inputs", ()))
        self.needs_identity = needs.identity
        p = config.predict
        seg_workdir = config.model.get("segmenter_workdir")
        two_stage = needs.finds_map
        needs_map = needs.mask_map
        if p.mask:
            self.plan = MaskPlan("user", needs_map)
        elif two_stage and seg_workdir:
            self.plan = MaskPlan("system", True)
        elif seg_workdir:
            self.plan = MaskPlan("segmenter", needs_map)
        elif needs_map:
            what = (f"{system.name} (two stages)" if two_stage else
                    f"this model (generator input {' + '.join(inputs)})")
            raise PredictSetupError(
                f"{what} needs a mask map: name a run that finds masks (a mask-segmentation "
                "stage) with --config.model.segmenter_workdir=<its workdir>, or "
                "give your own mask images with --config.predict.mask=<image or folder "
                "mirroring --input> (white = mask)")
        else:
            self.plan = MaskPlan("landmarks", False)
        if self.needs_identity and not p.identity and not identity_per_call:
            raise PredictSetupError(
                f"{system.name} conditions on another photo of the same person: give "
                "--config.predict.identity=<photo, or a folder mirroring --input>")

        self.state = self._load_state(config, workdir, system, self.pretrained)
        # A system that finds its own map loads its earlier stage here, unless the user's
        # masks make it unneeded.
        find_map = self.plan.source == "system"
        try:
            self.frozen = system.inference_frozen(find_map=find_map)
        except ValueError as e:  # e.g. segmenter_workdir naming a run that finds no maps
            raise PredictSetupError(str(e)) from None
        self.map_run = None
        self.map_threshold = needs.map_threshold if find_map else None
        if self.plan.source == "segmenter":
            try:
                self.map_run = load_map_run(seg_workdir)
            except ValueError as e:
                raise PredictSetupError(str(e)) from None
            self.map_threshold = self.map_run.threshold
            if self.map_run.resolution != self.geometry.resolution:
                log.warning("mask-map run %s was trained at %dx%d, this model at %dx%d",
                            seg_workdir, self.map_run.resolution, self.map_run.resolution,
                            self.geometry.resolution, self.geometry.resolution)
        self.predict_kwargs = system.predict_variant(find_map=find_map)
        self.weights_id = _weights_id(config, workdir, self.pretrained, int(self.state.step),
                                      seg_workdir if self.plan.source in ("system", "segmenter")
                                      else None)
        self._jitted = system.jit(self._infer)
        self.buckets: dict[int, float] = {}   # padded batch size -> first-call seconds
        self.load_seconds = time.perf_counter() - t0

    @staticmethod
    def _load_state(config, workdir, system, pretrained: bool):
        from unmask_jax import parallel, state as state_lib
        if not pretrained:
            state, _, _ = state_lib.load_state(config, workdir, check_config=False)
            log.info("predict: %s step %d from %s", system.name, int(state.step), workdir)
            return state
        mesh = parallel.make_data_mesh()
        rep = parallel.replicated_sharding(mesh)
        txs = system.optimizers(1)
        state = jax.jit(functools.partial(state_lib.create_state, system, txs, config.seed,
                                          config.data.resolution), out_shardings=rep)()
        state = state_lib.init_pretrained(config, system, state, rep)
        log.warning("predict: no checkpoint in %s; generator from PyTorch weights %s, geometry "
                    "from the config (%dx%d, framing %s, face_scale %.2f)", workdir,
                    config.model.generator_init, config.data.resolution,
                    config.data.resolution, config.data.framing, config.data.face_scale)
        return state

    def with_user_masks(self) -> "PredictModel":
        """This model taking the user's mask map (as with ``predict.mask``) in place of the
        map it finds itself or reads from a stage-1 run: the same loaded weights, its own
        compiled programs."""
        other = copy.copy(self)
        other.plan = MaskPlan("user", self.plan.model_needs_map)
        if self.plan.source == "system":  # its own stage 1 is not needed
            other.frozen = self.system.inference_frozen(find_map=False)
        other.map_run = None
        other.map_threshold = None
        other.predict_kwargs = self.system.predict_variant(find_map=False)
        other.weights_id = _weights_id(self.config, self.workdir, self.pretrained,
                                       int(self.state.step), None)
        other._jitted = self.system.jit(other._infer)
        other.buckets = {}
        return other

    def describe(self) -> dict[str, Any]:
        g = self.geometry
        return {"system": self.system.name, "step": int(self.state.step),
                "weights": self.weights_id,
                "resolution": g.resolution, "framing": g.framing, "face_scale": g.face_scale,
                "mask_source": self.plan.source, "model_takes_mask": self.plan.model_needs_map,
                "segmenter_workdir": self.config.model.get("segmenter_workdir")}

    # -- inference -----------------------------------------------------------------------

    def _infer(self, state, frozen, map_run, batch):
        out = {}
        batch = dict(batch)
        if self.map_run is not None:
            map_state, map_frozen = map_run
            prob = self.map_run.system.predict(map_state, batch, map_frozen)["mask"]
            prob = prob.astype(jnp.float32)
            out["mask"] = prob
            batch["mask"] = (prob >= self.map_run.threshold).astype(batch["masked"].dtype)
        result = self.system.predict(state, batch, frozen, **self.predict_kwargs)
        out["raw"] = result["raw"].astype(jnp.float32)
        if "mask" in result:
            out["mask"] = result["mask"].astype(jnp.float32)
        return out

    def __call__(self, masked: np.ndarray, mask: np.ndarray | None,
                 identity: np.ndarray | None, index: np.ndarray, batch_size: int
                 ) -> dict[str, np.ndarray]:
        """Face crops (N, R, R, 3) float32 in [-1, 1], user maps (N, R, R, 1) in {0, 1} or
        None, identity crops or None, per-face indices (dropout keys of per-image BN) ->
        {"raw": (N, R, R, 3) in [-1, 1], ["mask": (N, R, R, 1) probabilities]}. Padded to
        the smallest compiled bucket that fits, else to a new power-of-two bucket (at most
        ``batch_size``): one compilation per bucket."""
        n = masked.shape[0]
        # A compiled bucket that fits beats a new compilation (e.g. a folder's last, short
        # batch runs padded in the full batch's program).
        fits = [b for b in self.buckets if n <= b]
        b = min(fits) if fits else _bucket(n, batch_size)

        def pad(x):
            return x if x.shape[0] == b else np.concatenate(
                [x, np.repeat(x[-1:], b - x.shape[0], axis=0)])
        batch = {"masked": pad(masked),
                 "index": pad(index.astype(np.int32)),
                 "mask": pad(mask if mask is not None
                             else np.ones(masked.shape[:3] + (1,), np.float32))}
        if identity is not None:
            batch["identity"] = pad(identity)
        map_run = ((self.map_run.state, self.map_run.frozen) if self.map_run is not None
                   else None)
        t0 = time.perf_counter()
        out = jax.device_get(self._jitted(self.state, self.frozen, map_run, batch))
        if b not in self.buckets:
            self.buckets[b] = time.perf_counter() - t0
        return {k: np.asarray(v)[:n] for k, v in out.items()}


def _weights_id(config, workdir: str, pretrained: bool, step: int,
                map_workdir: str | None) -> str:
    """Which weights made a result, in one line for the report: each file's sha256 for a
    weights folder or PyTorch weights, else the checkpoint's folder and step; then the
    same for the run that gave the maps."""
    from unmask_jax.export import io as export_io

    def one(folder: str, step: int | None) -> str:
        if export_io.is_weights_folder(folder):
            entries = export_io.read_manifest(folder).get("networks", {})
            return " ".join(f"{n}:sha256:{e.get('sha256', {}).get('safetensors', '?')[:16]}"
                            for n, e in sorted(entries.items()))
        return f"checkpoint:{os.path.abspath(folder)}@{step}" if step is not None else \
            f"checkpoint:{os.path.abspath(folder)}"
    if pretrained:
        path = str(config.model.generator_init)
        main = f"pytorch:{path} (generator:sha256:{export_io.sha256_of(path)[:16]})"
    else:
        main = one(workdir, step)
    return main if not map_workdir else f"{main}; maps: {one(map_workdir, None)}"


def _effective_config(config, workdir: str):
    """(config to build and load with, whether it is the PyTorch-weights path)."""
    from ml_collections import config_dict

    from unmask_jax import checkpoints
    try:
        recorded = checkpoints.recorded_config(workdir)
    except checkpoints.NoCheckpointError as e:
        if config.model.get("generator_init"):
            return config, True
        raise checkpoints.NoCheckpointError(
            f"{e}; or predict with PyTorch weights and no checkpoint: "
            "--config.model.generator_init=G.safetensors") from None
    unsafe, _ = checkpoints.compare_configs(recorded, config)
    unsafe = [c for c in unsafe if not c[0].startswith(_IGNORED_PREFIXES)]
    if unsafe:
        lines = "\n".join(f"  {k}: {a} (run) -> {b} (now)" for k, a, b in unsafe)
        raise checkpoints.CheckpointError(
            f"the run in {workdir} was trained with a different configuration; these "
            f"settings change the networks:\n{lines}\nUse the config file (and overrides) the "
            "run was trained with.")
    effective = config.copy_and_resolve_references()
    rec_data = recorded.get("data") or {}
    changed = []
    with effective.unlocked():
        for key in GEOMETRY_KEYS:
            if key in rec_data and rec_data[key] != effective.data[key]:
                changed.append(f"{key}={rec_data[key]}")
                effective.data[key] = type(effective.data[key])(rec_data[key])
    if changed:
        log.info("predict: the run's recorded data geometry is used (%s)", ", ".join(changed))
    return config_dict.ConfigDict(effective), False
