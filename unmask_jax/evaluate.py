"""Evaluation on the fixed eval set: the system's outputs vs ground truth, plus baselines.

Writes ``<workdir>/eval/step_<N>.json`` and ``<workdir>/eval/latest.json``::

    {"step", "name", "num_images", "num_identities", "id_backbone", "bn_statistics",
     "data": {"source", "eval_split", "data_dir"},
     "psnr", "ssim", "psnr_mask", "ssim_mask", "lpips", "lpips_mask", "id_sim",  # composited
     "raw_psnr", "raw_ssim", ..., "raw_id_sim",                            # raw G output
     "fid", "raw_fid", "fid_num_images", "fid_weights", "fid_input_size",  # eval.fid_weights
     "ms_per_image", "ms_per_image_batch", "device", "device_count",
     "baselines": {"masked_input": {...}, "telea": {...}}}

and the same as a Markdown table (``step_<N>.md``, ``latest.md``; :mod:`unmask_jax.report`).
An evaluation of a checkpoint on data other than the run's own (``--mode=evaluate`` with
other ``data.source`` / ``data_dir`` / ``eval_split`` / source options / mask settings than
the recorded config) writes under ``eval/<source>-<eval_split>/`` instead (``"eval_name"``
in its JSON), so the run's own record is never overwritten.

(means over images; pixel conventions in metrics.py). The composited output keeps the input's
known pixels outside the mask map, which flatters a system that is given the ground-truth map,
so the raw generator output is scored too. ``lpips`` is LPIPS v0.1 (AlexNet by default) on
the uint8 output mapped back to [-1, 1], no resizing; ``id_sim`` is the cosine of
face-recognition embeddings of output and target with the backbone named in ``id_backbone``
(default dlib's ResNet on the framed face resized to 150x150; real weights, offline). When
the data carries an identity image (``data.identity_image``), ``id_sim_reference`` is the
same cosine between the output and that other photo of the person (what an
identity-conditioned system is given), for the baselines too. ``fid`` (when
``eval.fid_weights`` names the FID Inception weights) is the Fréchet distance between the
pool3 statistics of the outputs and of the targets of the eval set (``fid_num_images``
images; small sets give large, biased values: compare only at equal N).
``ms_per_image`` is the wall time of the system's jitted ``predict`` per image (the eval
batch, padding rows included, after a warm-up call), on the device named in ``device``.

Every process evaluates its shard of the eval set; it reads its own rows of the outputs from
the arrays' shards (not from its process index), sums are combined across processes and
process 0 writes the files. The jitted prediction is built once per :class:`Evaluator`.
"""
from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import json
import logging
import math
import re
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from data_pipelines import pipeline
from unmask_jax import metrics, parallel, report, visualize

log = logging.getLogger(__name__)

PIXEL_METRICS = ("psnr", "ssim", "psnr_mask", "ssim_mask")
MASK_METRICS = ("dice", "pixel_accuracy")
BASELINES = ("masked_input", "telea")
#: Every per-image metric name the evaluation can write (each also as ``raw_<name>``).
METRIC_NAMES = PIXEL_METRICS + MASK_METRICS + ("lpips", "lpips_mask", "id_sim",
                                               "id_sim_reference", "fid")
#: Data settings that define which examples are evaluated: a ``--mode=evaluate`` that changes
#: any of them evaluates on other data (results under ``eval/<source>-<split>/``).
EVAL_DATA_KEYS = ("data.source", "data.data_dir", "data.eval_split", "data.source_options.*",
                  "data.mask.*", "data.framing", "data.face_scale")


def device_description() -> dict[str, Any]:
    """``device`` (the kind of the first device, e.g. "cpu", "NVIDIA H200", "TPU v5 lite")
    and ``device_count`` for the evaluation JSON."""
    d = jax.devices()[0]
    kind = str(getattr(d, "device_kind", "") or d.platform)
    name = kind if kind.lower() == d.platform.lower() else f"{kind} ({d.platform})"
    return {"device": name, "device_count": jax.device_count()}


def load_fid(config):
    """FID pool3 features from ``config.eval.fid_weights`` (None when unset)."""
    path = config.eval.get("fid_weights")
    if not path:
        return None
    from unmask_jax.features import fid
    return fid.FIDFeatures.from_file(path)


class FeatureMetrics:
    """LPIPS and identity similarity with real pretrained weights, loaded once per run."""

    def __init__(self, lpips_net: str | None, id_backbone: str | None,
                 id_weights: str | None = None):
        from unmask_jax import features
        self.lpips_net = lpips_net
        self.id_backbone = id_backbone
        self._lpips = None
        self._id = None
        if lpips_net:
            variables = features.load_lpips(lpips_net)
            self._lpips = jax.jit(
                lambda x, y, m: features.lpips_distance_masked(variables, x, y, m))
        if id_backbone:
            net, id_vars = features.load_identity_net(id_backbone, id_weights)
            self._id = jax.jit(lambda x, y: features.identity_similarity(net, id_vars, x, y))

    @classmethod
    def from_config(cls, config) -> "FeatureMetrics":
        return cls(config.eval.lpips_net, config.eval.id_backbone, config.eval.id_weights)

    def keys(self, reference: bool = False) -> tuple[str, ...]:
        ids = ("id_sim",) + (("id_sim_reference",) if reference else ())
        return (("lpips", "lpips_mask") if self._lpips else ()) + (ids if self._id else ())

    def __call__(self, output: np.ndarray, target: np.ndarray,
                 reference: np.ndarray | None = None, mask: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
        """Per-image values for uint8 ``output`` and ``target``; with ``reference`` (the
        identity image, float in [-1, 1]) also ``id_sim_reference``: output vs that image;
        ``lpips_mask`` in the region of ``mask`` (N, H, W, 1) (the whole image without)."""
        x = output.astype(np.float32) / 127.5 - 1.0
        y = target.astype(np.float32) / 127.5 - 1.0
        out = {}
        if self._lpips:
            m = (np.ones(x.shape[:3] + (1,), np.float32) if mask is None
                 else np.asarray(mask, np.float32).reshape(x.shape[:3] + (1,)))
            whole, region = self._lpips(x, y, m)
            out["lpips"] = np.asarray(whole, np.float64)
            out["lpips_mask"] = np.asarray(region, np.float64)
        if self._id:
            out["id_sim"] = np.asarray(self._id(x, y), np.float64)
            if reference is not None:
                out["id_sim_reference"] = np.asarray(
                    self._id(x, np.asarray(reference, np.float32)), np.float64)
        return out


def _pad(batch: dict[str, np.ndarray], size: int) -> tuple[dict[str, np.ndarray], int]:
    """Pads a (possibly empty or short) local batch to ``size`` rows; returns valid count."""
    n = len(batch["masked"])
    if n == size:
        return batch, n
    out = {}
    for k, v in batch.items():
        filler = np.zeros((size - n,) + v.shape[1:], v.dtype)
        out[k] = np.concatenate([v, filler]) if n else filler
    return out, n


def empty_batch(data_cfg, identity_image: bool | None = None) -> dict[str, np.ndarray]:
    """A batch of 0 examples with the pipeline's keys, shapes and dtypes (for a process whose
    shard of the eval set is empty)."""
    return {k: np.zeros((0,) + shape, dtype) for k, (shape, dtype) in
            pipeline.batch_spec(data_cfg, identity_image).items()}


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order: the rows it supplied
    to ``parallel.global_batch`` (read from the addressable shards, whatever their devices'
    place in the mesh)."""
    by_start: dict[int, Any] = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        by_start.setdefault(start, shard)  # replicated copies of a row block: keep one
    return np.concatenate([np.asarray(by_start[s].data) for s in sorted(by_start)])


class _Sums:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, prefix: str, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.sums[prefix + k] = self.sums.get(prefix + k, 0.0) + float(np.sum(v))


class Evaluator:
    """Evaluates a system's state on the fixed eval set; built once per run (the eval source,
    the feature metrics and the jitted prediction are reused by every evaluation)."""

    def __init__(self, config, system, mesh, *, frozen=None, source=None,
                 features: FeatureMetrics | None = None, fid: Any = "config"):
        self.config = config
        self.system = system
        self.mesh = mesh
        self.frozen = {} if frozen is None else frozen
        self.data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
        self.source = (pipeline.build_source(self.data_cfg, self.data_cfg.eval_split)
                       if source is None else source)
        self.features = FeatureMetrics.from_config(config) if features is None else features
        #: pool3 features of uint8 images (``features.fid.FIDFeatures``: a callable with
        #: ``dim``, ``weights_path``, ``input_size``) or None (no FID).
        self.fid = load_fid(config) if isinstance(fid, str) and fid == "config" else fid
        self._real_fid = None  # the targets' statistics: the eval set is fixed
        self._warm = False
        rep = parallel.replicated_sharding(mesh)
        batch_sh = parallel.batch_sharding(mesh)
        #: name -> predict keyword arguments; "" is the system's own inference (top-level
        #: metrics), others (e.g. GANMasker's "gt_mask") become sub-dicts of the result.
        self.variants = dict(system.eval_variants())

        def predict(state, batch, frozen, **kwargs):
            out = system.predict(state, batch, frozen, **kwargs)
            return {**out, **{f"input_{k}": batch[k] for k in ("masked", "target", "mask")}}

        self._predict_replicated = system.jit(predict, out_shardings=rep)
        self._predict_sharded = {
            name: system.jit(functools.partial(predict, **kwargs), out_shardings=batch_sh)
            for name, kwargs in self.variants.items()}

    def predict(self, state, batch) -> dict[str, jax.Array]:
        """The system's outputs plus the batch's ``input_masked``/``input_target``/
        ``input_mask``, replicated on every device (sample grids)."""
        return self._predict_replicated(state, batch, self.frozen)

    def __call__(self, state, *, workdir: str, writer=None,
                 eval_name: str | None = None) -> dict[str, Any]:
        """Evaluates ``state``; writes ``eval/`` (or ``eval/<eval_name>/``) under workdir."""
        config = self.config
        pid, pcount = parallel.process_shard()
        global_bs = int(config.eval.batch_size)
        n_dev = jax.device_count()
        if global_bs % n_dev:
            global_bs = int(math.ceil(global_bs / n_dev) * n_dev)
        local_bs = global_bs // pcount
        num_images = int(config.eval.num_images)
        data = pipeline.eval_dataset(self.data_cfg, batch_size=local_bs,
                                     num_images=num_images, process_index=pid,
                                     process_count=pcount, source=self.source)
        num_images = min(num_images, len(self.source))
        # Same number of (collective) prediction calls on every process.
        per_process = max(len(range(i, num_images, pcount)) for i in range(pcount))
        num_batches = max(1, math.ceil(per_process / local_bs))
        it = iter(data)
        sums = _Sums()
        fid_stats: dict[str, Any] = {}
        real_fid = None
        if self.fid is not None and self._real_fid is None:
            from unmask_jax.features import fid as fid_lib
            real_fid = fid_lib.GaussianStats(self.fid.dim)
        empty = empty_batch(self.data_cfg)
        main = "" if "" in self._predict_sharded else next(iter(self._predict_sharded))
        num_samples = int(config.eval.get("num_sample_images") or 0)
        samples: dict[str, np.ndarray] = {}
        predict_seconds, predict_rows = 0.0, 0
        for _ in range(num_batches):
            local = next(it, None)
            if local is None:
                local = empty
            padded, valid = _pad(local, local_bs)
            global_batch = parallel.global_batch(padded, self.mesh)
            main_fn = self._predict_sharded[main]
            if not self._warm:  # compile outside the timing
                jax.block_until_ready(main_fn(state, global_batch, self.frozen))
                self._warm = True
            start = time.perf_counter()
            outs = {main: jax.block_until_ready(main_fn(state, global_batch, self.frozen))}
            predict_seconds += time.perf_counter() - start
            predict_rows += global_bs
            outs.update({name: fn(state, global_batch, self.frozen)
                         for name, fn in self._predict_sharded.items() if name != main})
            outs = {name: outs[name] for name in self._predict_sharded}  # variant order
            if self.fid is not None:  # the same image sets on every process, rows or not
                from unmask_jax.features import fid as fid_lib
                for prefix in _image_prefixes(outs):
                    fid_stats.setdefault(prefix, fid_lib.GaussianStats(self.fid.dim))
            if valid == 0:
                continue
            target = visualize.to_uint8(local["target"])
            masked = visualize.to_uint8(local["masked"])
            mask = local["mask"]
            images = {}
            for name, out in outs.items():
                prefix = f"{name}:" if name else ""
                if "output" in out:
                    images[prefix] = visualize.to_uint8(local_rows(out["output"])[:valid])
                    images[prefix + "raw_"] = visualize.to_uint8(
                        local_rows(out["raw"])[:valid])
                if "mask" in out:
                    sums.add(prefix, metrics.mask_metrics(local_rows(out["mask"])[:valid], mask))
            if len(samples.get("target", ())) < num_samples:
                _add_samples(samples, num_samples, masked=masked, target=target,
                             mask=np.asarray(mask, np.float32), **{
                                 k: v for k, v in (("output", images.get("")),
                                                   ("raw", images.get("raw_")))
                                 if v is not None},
                             **({"mask_pred": np.asarray(local_rows(outs[main]["mask"])[:valid],
                                                         np.float32)}
                                if "mask" in outs[main] else {}))
            if images:
                images.update({"masked_input/": masked,
                               "telea/": metrics.telea_inpaint(masked, mask)})
            for prefix, image in images.items():
                sums.add(prefix, metrics.image_metrics(image, target, mask))
                sums.add(prefix, self.features(image, target, local.get("identity"),
                                               local.get("mask")))
            if self.fid is not None:
                for prefix, image in images.items():
                    fid_stats[prefix].add(self.fid(image))
                if real_fid is not None:
                    real_fid.add(self.fid(target))
            sums.count += valid
        keys = sorted(sums.sums)
        local_vec = np.asarray([sums.sums.get(k, 0.0) for k in keys] + [sums.count],
                               np.float64)
        total = np.asarray(parallel.fetch_to_host(_allgather(local_vec)), np.float64)
        total = total.reshape(-1, len(keys) + 1).sum(axis=0)
        count = int(total[-1])
        means = {k: float(total[i] / max(count, 1)) for i, k in enumerate(keys)}
        image_keys = PIXEL_METRICS + self.features.keys(reference=self.data_cfg.identity_image)
        result = {"step": int(jax.device_get(state.step)), "name": config.get("name"),
                  "num_images": count,
                  "num_identities": getattr(data, "num_identities", None),
                  "id_backbone": self.features.id_backbone,
                  "bn_statistics": config.eval.get("bn_statistics"),
                  "data": {"source": self.data_cfg.source, "eval_split": self.data_cfg.eval_split,
                           "data_dir": self.data_cfg.data_dir},
                  "eval_data": eval_data_settings(config),
                  **self.system.eval_info()}
        if eval_name:
            result["eval_name"] = eval_name
        if self.fid is not None:
            fid_values, fid_count = self._fid_scores(fid_stats, real_fid)
            means.update(fid_values)
            image_keys = image_keys + ("fid",)
            result.update({"fid_num_images": fid_count,
                           "fid_weights": getattr(self.fid, "weights_path", None),
                           "fid_input_size": getattr(self.fid, "input_size", None)})
        result.update({"ms_per_image": 1000.0 * predict_seconds / max(predict_rows, 1),
                       "ms_per_image_batch": global_bs, **device_description()})

        def scores(prefix: str) -> dict[str, float]:
            out = {k: means[prefix + k] for k in MASK_METRICS if prefix + k in means}
            if prefix + "psnr" in means:
                out.update({k: means[prefix + k] for k in image_keys})
                out.update({f"raw_{k}": means[f"{prefix}raw_{k}"] for k in image_keys})
            return out

        result.update(scores(""))
        for name in self.variants:
            if name:
                result[name] = scores(f"{name}:")
        if "masked_input/psnr" in means:
            result["baselines"] = {b: {k: means[f"{b}/{k}"] for k in image_keys}
                                   for b in BASELINES}
        if parallel.is_main_process():
            _write_results(workdir, result, eval_name, samples)
            if writer is not None:
                writer.write_scalars(result["step"], {
                    f"eval/{k}": v for k, v in _flat_numbers(
                        {k: v for k, v in result.items() if k != "eval_data"}).items()
                    if k not in ("step", "num_images", "num_identities", "fid_num_images",
                                 "fid_input_size", "ms_per_image_batch", "device_count")})
        shown = " ".join(f"{k}={report.fmt(v)}" for k, v in scores("").items()
                         if not k.startswith("raw_"))
        extra = ""
        if "baselines" in result:
            extra = (f" | raw PSNR {result['raw_psnr']:.2f} | masked input PSNR "
                     f"{result['baselines']['masked_input']['psnr']:.2f} | Telea PSNR "
                     f"{result['baselines']['telea']['psnr']:.2f}")
        log.info("eval step %d on %d images (%s identities): %s%s", result["step"], count,
                 result["num_identities"], shown, extra)
        return result

    def _fid_scores(self, fid_stats: dict[str, Any], real_fid) -> tuple[dict[str, float], int]:
        """prefix + "fid" -> FID against the targets (statistics summed over processes; the
        targets' statistics are kept for later evaluations), and the image count."""
        from unmask_jax.features import fid as fid_lib
        dim = self.fid.dim

        def combined(stats) -> Any:
            vec = stats.vector() if stats is not None else fid_lib.GaussianStats(dim).vector()
            gathered = np.asarray(parallel.fetch_to_host(_allgather(vec)), np.float64)
            return fid_lib.GaussianStats.from_vector(gathered.reshape(-1, vec.size).sum(0), dim)

        if self._real_fid is None:
            real = combined(real_fid)
            # One eigendecomposition of the targets' covariance for every FID of the run.
            sqrt_real = fid_lib.sqrt_psd(real.sigma) if real.count >= 2 else None
            self._real_fid = (real, sqrt_real)
        real, sqrt_real = self._real_fid
        out = {}
        for prefix in sorted(fid_stats):
            stats = combined(fid_stats[prefix])
            out[prefix + "fid"] = (fid_lib.fid_from_stats(real, stats, sqrt_real)
                                   if stats.count >= 2 and sqrt_real is not None else None)
        return out, real.count


def _image_prefixes(outs: dict[str, Any]) -> list[str]:
    """Metric prefixes of the image sets scored for these prediction outputs: each variant's
    composited and raw output, then the baselines (when any variant outputs images)."""
    prefixes = []
    for name, out in outs.items():
        if "output" in out:
            prefix = f"{name}:" if name else ""
            prefixes += [prefix, prefix + "raw_"]
    return prefixes + (["masked_input/", "telea/"] if prefixes else [])


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def _allgather(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(x)


def eval_dir(workdir: str, eval_name: str | None = None) -> epath.Path:
    """``<workdir>/eval`` (the run's own data) or ``<workdir>/eval/<eval_name>``."""
    out = epath.Path(workdir) / "eval"  # local paths and gs://
    return out / eval_name if eval_name else out


def _add_samples(samples: dict[str, np.ndarray], limit: int, **rows: np.ndarray) -> None:
    """Appends a batch's rows to ``samples`` up to ``limit`` rows per key."""
    for k, v in rows.items():
        have = samples.get(k)
        room = limit - (0 if have is None else len(have))
        if room > 0:
            samples[k] = v[:room] if have is None else np.concatenate([have, v[:room]])


def _write_results(workdir: str, result: dict[str, Any], eval_name: str | None = None,
                   samples: dict[str, np.ndarray] | None = None) -> None:
    """``step_N`` and ``latest`` .json / .md, and with ``samples`` (the first
    ``eval.num_sample_images`` evaluated images: uint8 ``masked``, ``target``, ``output``,
    ``raw``; float ``mask`` and, for segmenting systems, ``mask_pred``) ``.samples.npz``."""
    out_dir = eval_dir(workdir, eval_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    markdown = report.evaluation_markdown(result)
    blob = None
    if samples:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **samples)
        blob = buffer.getvalue()
    for stem in (f"step_{result['step']}", "latest"):
        (out_dir / f"{stem}.json").write_text(text)
        (out_dir / f"{stem}.md").write_text(markdown)
        if blob is not None:
            (out_dir / f"{stem}.samples.npz").write_bytes(blob)


def read_samples(workdir: str, eval_name: str | None = None) -> dict[str, np.ndarray] | None:
    """The latest evaluation's ``latest.samples.npz`` arrays, or None."""
    path = eval_dir(workdir, eval_name) / "latest.samples.npz"
    if not path.exists():
        return None
    with np.load(io.BytesIO(path.read_bytes())) as data:
        return {k: data[k] for k in data.files}


def _is_eval_data_key(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in EVAL_DATA_KEYS)


def eval_data_settings(config) -> dict[str, Any]:
    """The config's values of :data:`EVAL_DATA_KEYS` (dotted key -> JSON value): what decides
    which images an evaluation scores (kept in the evaluation JSON as ``eval_data``)."""
    from unmask_jax import checkpoints
    flat = checkpoints.flatten(checkpoints.config_to_json(config.data), "data.")
    return {k: v for k, v in flat.items() if _is_eval_data_key(k)}


def other_data_name(recorded: dict[str, Any] | None, config,
                    workdir: str | None = None) -> str | None:
    """``<source>-<eval_split>`` when ``config`` evaluates other data than the recorded
    (training) config of the run, else None (the run's own data). With ``workdir``: when that
    name already holds an evaluation of other settings (another ``data_dir``, source options,
    masks, framing), ``<source>-<eval_split>-<8 hex digits of the settings>``, so that one
    does not overwrite the other."""
    if recorded is None:
        return None
    from unmask_jax import checkpoints
    unsafe, safe = checkpoints.compare_configs(recorded, config)
    if not any(_is_eval_data_key(k) for k, _, _ in unsafe + safe):
        return None
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{config.data.source}-{config.data.eval_split}")
    if workdir is None:
        return name
    settings = eval_data_settings(config)
    latest = eval_dir(workdir, name) / "latest.json"
    try:
        previous = json.loads(latest.read_text()).get("eval_data") if latest.exists() else None
    except (OSError, json.JSONDecodeError):
        previous = None
    if previous is None or previous == settings:
        return name
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


def _recorded_config(workdir: str, step: int | None) -> dict[str, Any] | None:
    from unmask_jax import checkpoints
    manager = checkpoints.require_checkpoint(workdir)  # NoCheckpointError names the workdir
    if step is not None and step not in manager.all_steps():
        return None  # load_state names the available steps
    try:
        return checkpoints.recorded_config(workdir, step)
    except checkpoints.NoCheckpointError:
        raise
    except checkpoints.CheckpointError:
        return None  # no config recorded / old format: load_state says what to do


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
    """``--mode=evaluate``: the latest (or ``config.eval.checkpoint_step``) checkpoint.

    Data settings (:data:`EVAL_DATA_KEYS`) may differ from the run's recorded config: that is
    an evaluation on other data, written under ``eval/<source>-<split>/``. Any other change
    that the checkpoint cannot take is refused as usual."""
    from unmask_jax import checkpoints, state as state_lib
    step = config.eval.checkpoint_step
    recorded = _recorded_config(workdir, step)
    eval_name = other_data_name(recorded, config, workdir)
    check_config = True
    if eval_name:
        unsafe, safe = checkpoints.compare_configs(recorded, config)
        # Only data settings changed (beyond the safe ones): the networks are the recorded
        # ones, restore without the resume check (it refuses data changes).
        check_config = any(not _is_eval_data_key(k) for k, _, _ in unsafe)
        changed = [k for k, _, _ in unsafe + safe if _is_eval_data_key(k)]
        log.info("evaluating on other data than the run's own (%s changed): results go to %s",
                 ", ".join(changed), eval_dir(workdir, eval_name))
    state, system, mesh = state_lib.load_state(config, workdir, step, check_config=check_config)
    frozen = jax.device_put(system.load_frozen(training=False), parallel.replicated_sharding(mesh))
    return Evaluator(config, system, mesh, frozen=frozen)(state, workdir=workdir,
                                                          eval_name=eval_name)
