"""unmask_jax.run_config: what each mode takes from the command line over a run's recorded
config (the end-to-end case on a trained run: test_train.py)."""
from __future__ import annotations

from configs import pix2pix
from unmask_jax import checkpoints, run_config


def _recorded(**changes):
    c = pix2pix.get_config("quick")
    for key, value in changes.items():
        node = c
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return checkpoints.config_to_json(c)


def test_each_mode_takes_only_its_keys():
    recorded = _recorded(**{"train.batch_size": 2, "model.generator_kwargs.ngf": 8,
                            "data.source": "synthetic"})
    given = pix2pix.get_config("quick")
    given.train.batch_size = 16
    given.data.source = "lfw"
    given.predict.batch_size = 3
    given.eval.num_images = 5
    given.train.compute_dtype = "bfloat16"
    for mode, expect in {
            "export": dict(source="synthetic", predict=8, images=64, dtype="float32"),
            "evaluate": dict(source="lfw", predict=8, images=5, dtype="float32"),
            "predict": dict(source="synthetic", predict=3, images=64, dtype="float32"),
            "compile": dict(source="synthetic", predict=8, images=64, dtype="bfloat16")}.items():
        out, ignored = run_config.merge(recorded, given, mode)
        assert out.train.batch_size == 2 and out.model.generator_kwargs.ngf == 8, mode
        assert (out.data.source, out.predict.batch_size, out.eval.num_images,
                out.train.compute_dtype) == tuple(expect.values()), mode
        assert ("train.batch_size", 2, 16) in ignored, mode
    assert given.train.batch_size == 16  # the given config is not changed


def test_old_recordings_and_unknown_keys():
    recorded = _recorded()
    recorded["model"]["cpu_convolutions"] = "eigen"       # removed since
    del recorded["model"]["backend_forms"]                 # added since
    given = pix2pix.get_config("quick")
    given.model.generator_kwargs.extra = 1                 # a key the run never had
    out, ignored = run_config.merge(recorded, given, "export")
    assert "cpu_convolutions" not in out.model
    assert out.model.backend_forms == "auto"               # the newer key keeps its value
    assert "extra" not in out.model.generator_kwargs
    assert ("model.generator_kwargs.extra", "<unset>", 1) in ignored


def test_train_and_workdirs_without_a_checkpoint_keep_the_given_config(tmp_path):
    given = pix2pix.get_config("quick")
    assert run_config.for_mode(given, str(tmp_path), "train") is given
    assert run_config.for_mode(given, str(tmp_path), "export") is given
    assert run_config.for_mode(given, None, "evaluate") is given
