"""Evaluation values: composited and raw outputs, baselines on the same images, the fixed
subset's identities, sharded row reading. A stub system with a known output makes every
number computable here independently."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import pipeline
from tests.test_train import tiny_config
from unmask_jax import evaluate, metrics, parallel, visualize
from unmask_jax.systems import base

GREY = 0.2  # the stub generator's raw output everywhere


class GreySystem(base.System):
    """predict: raw = constant grey; output = composite(raw)."""
    name = "grey"

    def predict(self, state, batch, frozen=None):
        raw = jnp.full_like(batch["masked"], GREY)
        return {"output": base.composite(raw, batch), "raw": raw}


def _state():
    from unmask_jax.state import TrainState
    return TrainState(step=jnp.asarray(7), rng=jnp.zeros(2, jnp.uint32), nets={})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    config = tiny_config()
    config.eval.num_images = 6
    config.eval.batch_size = 4  # a full and a short batch
    config.eval.lpips_net = ""
    config.eval.id_backbone = ""
    mesh = parallel.make_data_mesh()
    workdir = tmp_path_factory.mktemp("eval")
    ev = evaluate.Evaluator(config, GreySystem(config), mesh)
    result = ev(_state(), workdir=str(workdir))
    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    batches = list(pipeline.eval_dataset(data_cfg, batch_size=6, num_images=6))
    assert len(batches) == 1
    return result, batches[0], workdir


def test_composite_keeps_unmasked_pixels_and_raw_is_scored_separately(evaluated):
    result, batch, workdir = evaluated
    masked = visualize.to_uint8(batch["masked"])
    target = visualize.to_uint8(batch["target"])
    mask = batch["mask"]
    grey = visualize.to_uint8(np.full_like(batch["masked"], GREY))
    composite = np.where(mask > 0, grey, masked)
    # Outside the mask the composited output is the input exactly.
    out = visualize.to_uint8(np.asarray(base.composite(jnp.full_like(batch["masked"], GREY),
                                                       batch)))
    keep = np.broadcast_to(mask == 0, out.shape)
    np.testing.assert_array_equal(out[keep], masked[keep])
    np.testing.assert_array_equal(out, composite)
    want = {"": metrics.image_metrics(composite, target, mask),
            "raw_": metrics.image_metrics(grey, target, mask)}
    for prefix, values in want.items():
        for k, v in values.items():
            assert result[prefix + k] == pytest.approx(float(np.mean(v)), rel=1e-9), prefix + k
    # The raw grey face is far worse than its composite, outside the mask in particular.
    assert result["raw_psnr"] < result["psnr"] - 3
    # Mask-region PSNR is the same for both: inside the mask they are the same pixels.
    assert result["raw_psnr_mask"] == pytest.approx(result["psnr_mask"], rel=1e-9)
    assert result["num_images"] == 6 and result["step"] == 7
    assert json.loads((workdir / "eval" / "latest.json").read_text()) == result


def test_baselines_are_scored_on_the_same_images(evaluated):
    result, batch, _ = evaluated
    masked = visualize.to_uint8(batch["masked"])
    target = visualize.to_uint8(batch["target"])
    mask = batch["mask"]
    for name, image in (("masked_input", masked),
                        ("telea", metrics.telea_inpaint(masked, mask))):
        for k, v in metrics.image_metrics(image, target, mask).items():
            assert result["baselines"][name][k] == pytest.approx(float(np.mean(v)), rel=1e-9)
    assert result["baselines"]["masked_input"]["psnr"] < result["baselines"]["telea"]["psnr"]


def test_eval_subset_reports_identities(evaluated):
    result, batch, _ = evaluated
    assert result["num_identities"] == len(set(batch["identity_id"].tolist()))
    assert result["num_identities"] >= 2


def test_local_rows_follow_the_sharding_not_the_process_index():
    """The rows a process supplied come back from a batch-sharded global array in order."""
    mesh = parallel.make_data_mesh()
    local = {"x": np.arange(8 * 3, dtype=np.float32).reshape(8, 3)}
    arr = parallel.global_batch(local, mesh)["x"]
    np.testing.assert_array_equal(evaluate.local_rows(arr), local["x"])


def test_empty_local_batch_has_the_pipeline_keys():
    data_cfg = pipeline.DataConfig.from_dict(tiny_config().data.to_dict())
    empty = evaluate.empty_batch(data_cfg)
    padded, valid = evaluate._pad(empty, 4)
    assert valid == 0 and padded["masked"].shape == (4, 64, 64, 3)
    assert padded["mask"].shape == (4, 64, 64, 1)
