"""Evaluation on the fixed eval set: composited outputs vs ground truth, plus baselines.

Writes ``<workdir>/eval/step_<N>.json`` and ``<workdir>/eval/latest.json``:
``{"step", "num_images", "psnr", "ssim", "psnr_mask", "ssim_mask",
   "baselines": {"masked_input": {...}, "telea": {...}}}`` (means over images; conventions in
metrics.py). Every process evaluates its shard; sums are combined across processes and
process 0 writes the files.
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

METRIC_KEYS = ("psnr", "ssim", "psnr_mask", "ssim_mask")


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
             writer=None) -> dict[str, Any]:
    """Evaluates ``state``'s generator; returns the JSON dict (on every process)."""
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
        sums.add("", metrics.image_metrics(output, target, mask))
        sums.add("masked_input/", metrics.image_metrics(masked, target, mask))
        sums.add("telea/", metrics.image_metrics(metrics.telea_inpaint(masked, mask), target,
                                                  mask))
        sums.count += valid
    keys = sorted(sums.sums)
    local_vec = np.asarray([sums.sums.get(k, 0.0) for k in keys] + [sums.count], np.float64)
    total = np.asarray(parallel.fetch_to_host(_allgather(local_vec)), np.float64)
    total = total.reshape(-1, len(keys) + 1).sum(axis=0)
    count = int(total[-1])
    means = {k: float(total[i] / max(count, 1)) for i, k in enumerate(keys)}
    result = {"step": int(jax.device_get(state.step)), "num_images": count}
    result.update({k: means[k] for k in METRIC_KEYS})
    result["baselines"] = {b: {k: means[f"{b}/{k}"] for k in METRIC_KEYS}
                           for b in ("masked_input", "telea")}
    if parallel.is_main_process():
        _write_json(workdir, result)
        if writer is not None:
            flat = {f"eval/{k}": result[k] for k in METRIC_KEYS}
            flat.update({f"eval/{b}/{k}": v for b, d in result["baselines"].items()
                         for k, v in d.items()})
            writer.write_scalars(result["step"], flat)
    log.info("eval step %d on %d images: PSNR %.2f (mask %.2f) SSIM %.4f | masked input PSNR "
             "%.2f | Telea PSNR %.2f", result["step"], count, result["psnr"],
             result["psnr_mask"], result["ssim"], result["baselines"]["masked_input"]["psnr"],
             result["baselines"]["telea"]["psnr"])
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
