"""Evaluation on the fixed eval set: composited outputs vs ground truth, plus baselines.

Writes ``<workdir>/eval/step_<N>.json`` and ``<workdir>/eval/latest.json``:
``{"step", "num_images", "psnr", "ssim", "psnr_mask", "ssim_mask", "lpips", "id_sim",
   "id_backbone", "baselines": {"masked_input": {...}, "telea": {...}}}`` (means over images;
pixel conventions in metrics.py). ``lpips`` is LPIPS v0.1 with the AlexNet backbone on the
composited uint8 output mapped back to [-1, 1], no resizing; ``id_sim`` is the cosine of
face-recognition embeddings of output and target with the backbone named in ``id_backbone``
(default dlib's ResNet on the whole framed face resized to 150x150; real weights, offline).
Every process evaluates its shard; sums are combined across processes and process 0 writes the
files.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any

import jax
import numpy as np
from etils import epath

from data_pipelines import pipeline
from unmask_jax import gan, metrics, parallel, visualize

log = logging.getLogger(__name__)

PIXEL_METRICS = ("psnr", "ssim", "psnr_mask", "ssim_mask")


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
            self._lpips = jax.jit(lambda x, y: features.lpips_distance(variables, x, y))
        if id_backbone:
            net, id_vars = features.load_identity_net(id_backbone, id_weights)
            self._id = jax.jit(lambda x, y: features.identity_similarity(net, id_vars, x, y))

    @classmethod
    def from_config(cls, config) -> "FeatureMetrics":
        return cls(config.eval.lpips_net, config.eval.id_backbone, config.eval.id_weights)

    def keys(self) -> tuple[str, ...]:
        return (("lpips",) if self._lpips else ()) + (("id_sim",) if self._id else ())

    def __call__(self, output: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image values for uint8 batches."""
        x = output.astype(np.float32) / 127.5 - 1.0
        y = target.astype(np.float32) / 127.5 - 1.0
        out = {}
        if self._lpips:
            out["lpips"] = np.asarray(self._lpips(x, y), np.float64)
        if self._id:
            out["id_sim"] = np.asarray(self._id(x, y), np.float64)
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


class _Sums:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, prefix: str, values: dict[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.sums[prefix + k] = self.sums.get(prefix + k, 0.0) + float(np.sum(v))


def evaluate(config, state, *, workdir: str, mesh, system: gan.GanSystem,
             writer=None, features: FeatureMetrics | None = None) -> dict[str, Any]:
    """Evaluates ``state``'s generator; returns the JSON dict (on every process)."""
    features = FeatureMetrics.from_config(config) if features is None else features
    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    pid, pcount = parallel.process_shard()
    global_bs = int(config.eval.batch_size)
    n_dev = jax.device_count()
    if global_bs % n_dev:
        global_bs = int(math.ceil(global_bs / n_dev) * n_dev)
    local_bs = global_bs // pcount
    data = pipeline.eval_dataset(data_cfg, batch_size=local_bs,
                                 num_images=int(config.eval.num_images),
                                 process_index=pid, process_count=pcount)
    generate = jax.jit(lambda p, bs, b: gan.generate(system, p, bs, b),
                       out_shardings=parallel.replicated_sharding(mesh))
    num_images = int(config.eval.num_images)
    # Same number of (collective) generator calls on every process.
    per_process = max(len(range(i, num_images, pcount)) for i in range(pcount))
    num_batches = max(1, math.ceil(per_process / local_bs))
    it = iter(data)
    sums = _Sums()
    first = None
    for _ in range(num_batches):
        local = next(it, None)
        if local is None:
            local = {k: np.zeros((0,) + v.shape[1:], v.dtype) for k, v in first.items()}
        if first is None:
            first = local
        padded, valid = _pad(local, local_bs)
        out = generate(state.generator.params, state.generator.batch_stats,
                       parallel.global_batch(padded, mesh))
        rows = slice(pid * local_bs, pid * local_bs + valid)
        if valid == 0:
            continue
        output = visualize.to_uint8(np.asarray(out["output"][rows]))
        target = visualize.to_uint8(local["target"])
        masked = visualize.to_uint8(local["masked"])
        mask = local["mask"]
        telea = metrics.telea_inpaint(masked, mask)
        for prefix, image in (("", output), ("masked_input/", masked), ("telea/", telea)):
            sums.add(prefix, metrics.image_metrics(image, target, mask))
            sums.add(prefix, features(image, target))
        sums.count += valid
    keys = sorted(sums.sums)
    local_vec = np.asarray([sums.sums.get(k, 0.0) for k in keys] + [sums.count], np.float64)
    total = np.asarray(parallel.fetch_to_host(_allgather(local_vec)), np.float64)
    total = total.reshape(-1, len(keys) + 1).sum(axis=0)
    count = int(total[-1])
    means = {k: float(total[i] / max(count, 1)) for i, k in enumerate(keys)}
    metric_keys = PIXEL_METRICS + features.keys()
    result = {"step": int(jax.device_get(state.step)), "num_images": count,
              "id_backbone": features.id_backbone}
    result.update({k: means[k] for k in metric_keys})
    result["baselines"] = {b: {k: means[f"{b}/{k}"] for k in metric_keys}
                           for b in ("masked_input", "telea")}
    if parallel.is_main_process():
        _write_json(workdir, result)
        if writer is not None:
            flat = {f"eval/{k}": result[k] for k in metric_keys}
            flat.update({f"eval/{b}/{k}": v for b, d in result["baselines"].items()
                         for k, v in d.items()})
            writer.write_scalars(result["step"], flat)
    log.info("eval step %d on %d images: %s | masked input PSNR %.2f | Telea PSNR %.2f",
             result["step"], count, " ".join(f"{k}={result[k]:.4f}" for k in metric_keys),
             result["baselines"]["masked_input"]["psnr"], result["baselines"]["telea"]["psnr"])
    return result


def _allgather(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(x)


def _write_json(workdir: str, result: dict[str, Any]) -> None:
    out_dir = epath.Path(workdir) / "eval"  # local paths and gs://
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    for name in (f"step_{result['step']}.json", "latest.json"):
        (out_dir / name).write_text(text)


def evaluate_checkpoint(config, workdir: str) -> dict[str, Any]:
    """``--mode=evaluate``: the latest (or ``config.eval.checkpoint_step``) checkpoint."""
    from unmask_jax import train  # train imports this module
    state, system, mesh = train.load_state(config, workdir, config.eval.checkpoint_step)
    return evaluate(config, state, workdir=workdir, mesh=mesh, system=system)
