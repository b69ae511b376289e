"""Tests for the ONNX export (``unmask_jax.export.onnx_export``, ``--mode=export
--export_onnx``): onnxruntime (CPU) against the Flax networks at batch 1 and 2, the file's
metadata and manifest entry, the refusals, and the command line on the starter weights.

onnx, onnxscript and onnxruntime are test requirements (the ``test`` extra): they are
imported at the top, so a missing one fails this file instead of skipping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime  # noqa: F401  (a missing package fails the file)
import onnxscript  # noqa: F401
import pytest

from unmask_jax import systems
from unmask_jax.export import ExportError, export_variables, io, onnx_export
from unmask_jax.export import checkpoint as export_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTER = os.path.join(REPO, "weights", "ganmasker_starter")
TOL = 1e-4

# (config file, variant, network, overrides): the configs' quick systems with smaller widths
# (the layer types and inputs of the quick runs, a faster export).
CASES = {
    "pix2pix_generator": ("pix2pix", "quick", "generator",
                          {"generator_kwargs": {"ngf": 8}}),
    "ganmasker_segmenter": ("ganmasker", "seg_quick", "segmenter",
                            {"segmenter_kwargs": {"base_width": 4}}),
    "ganmasker_generator": ("ganmasker", "unmask_quick", "generator",
                            {"generator_kwargs": {"base_width": 4}}),
    "ye_c_generator": ("ye", "c_quick", "generator",
                       {"generator_kwargs": {"ngf": 8, "dilated_channels": 16}}),
}


def _system(config_file: str, variant: str, overrides: dict):
    import importlib
    config = importlib.import_module(f"configs.{config_file}").get_config(variant)
    for section, values in overrides.items():
        config.model[section].update(values)
    return config, systems.build(config)


def _random_variables(module, shape, seed: int):
    """Variables shaped like ``module``'s, with O(1) activations and non-trivial BN."""
    template = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False),
                              jax.ShapeDtypeStruct(shape, jnp.float32))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif name in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, shape)
        else:  # bias, mean, spectral vectors
            v = 0.1 * rng.standard_normal(shape)
        return np.asarray(v, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, template)


def _flax_nchw(module, variables):
    """The system's own Flax network (jitted, eval mode) on NCHW inputs -> NCHW output."""
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
    return lambda xs: np.asarray(apply(variables, jnp.asarray(xs[0].transpose(0, 2, 3, 1)))
                                 ).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnxruntime_matches_flax(case, tmp_path):
    """Exported, written beside the .safetensors, listed in the manifest with its sha256,
    self-describing (metadata_props), dynamic batch: onnxruntime at batch 1 and 2 gives
    the Flax network's output within TOL, in the export's own check and on other inputs."""
    config_file, variant, network, overrides = CASES[case]
    config, system = _system(config_file, variant, overrides)
    net = system.networks[network]
    (shape,) = net.input_shapes(config.data.resolution)
    variables = _random_variables(net.module, shape, seed=1)
    flax = _flax_nchw(net.module, variables)
    out = str(tmp_path)
    export_variables(network, net.model_name, net.model_kwargs, variables, out, step=7)
    record = onnx_export.add_onnx(out, network, flax, [shape])
    assert set(record["parity"]["per_batch"]) == {"1", "2"}
    assert max(record["parity"]["per_batch"].values()) < TOL

    path = tmp_path / f"{network}.onnx"
    assert (tmp_path / f"{network}.safetensors").is_file() and path.is_file()
    entry = io.read_manifest(out)["networks"][network]
    assert entry["files"]["onnx"] == f"{network}.onnx"
    assert entry["sha256"]["onnx"] == io.sha256_of(str(path))
    assert entry["onnx"] == json.loads(json.dumps(record))
    assert list(io.weights_folder_networks(out)) == [network]  # the reader still reads it

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    _, size, _, channels = shape
    assert int(meta["opset"]) == record["opset"] >= 18
    assert json.loads(meta["input_names"]) == ["input"]
    assert json.loads(meta["output_names"]) == ["output"]
    assert json.loads(meta["input_shapes"]) == [["batch", channels, size, size]]
    assert meta["layout"] == "NCHW" and meta["dtype"] == "float32"
    assert meta["network"] == network and meta["step"] == "7"
    assert "[-1, 1]" in meta["input_normalisation"] and meta["output_range"]

    # Other inputs than the export's check, with the mask channel binary where there is one.
    x = np.random.default_rng(11).uniform(-1, 1, (2, channels, size, size)).astype(np.float32)
    if channels == 4:
        x[:, 3] = x[:, 3] > 0
    ref = flax([x])
    assert np.std(ref) > 1e-3
    session = onnx_export.onnx_session(str(path))
    for batch in (1, 2):
        got = onnx_export.run_onnx(session, [x[:batch]])
        assert got.shape == ref[:batch].shape
        assert onnx_export.relative_diff(got, ref[:batch]) < TOL, (case, batch)


def test_flax_reference_and_a_mismatch(tmp_path):
    """flax_reference is the network in float32 (bfloat16 variables included); an ONNX file
    that does not match its reference fails the export, and the file is removed."""
    config, system = _system("pix2pix", "quick", {"discriminator_kwargs": {"ndf": 4}})
    net = system.networks["discriminator"]
    (shape,) = net.input_shapes(config.data.resolution)
    variables = _random_variables(net.module, shape, seed=2)
    xs = onnx_export.example_inputs([onnx_export.nchw_shape(shape)], 2)
    flax = onnx_export.flax_reference(net.model_name, net.model_kwargs, variables)
    assert onnx_export.relative_diff(flax(xs), _flax_nchw(net.module, variables)(xs)) < 1e-6
    bf16 = jax.tree.map(lambda v: v.astype(jnp.bfloat16), variables)
    low = onnx_export.flax_reference(net.model_name, net.model_kwargs, bf16)(xs)
    assert low.dtype == np.float32 and onnx_export.relative_diff(low, flax(xs)) < 2e-2

    export_variables("discriminator", net.model_name, net.model_kwargs, variables,
                     str(tmp_path), step=1)
    with pytest.raises(onnx_export.OnnxParityError, match=r"max\|diff\|/max\|ref\|.*removed"):
        onnx_export.add_onnx(str(tmp_path), "discriminator", lambda xs: 1.01 * flax(xs),
                             [shape])
    assert not (tmp_path / "discriminator.onnx").exists()
    assert "onnx" not in io.read_manifest(str(tmp_path))["networks"]["discriminator"]["files"]


def test_unveilify_is_refused_before_anything_is_read(tmp_path):
    """One line naming the reason and what to do; raised before the run is read (here it
    has no checkpoint at all), so nothing is written."""
    from configs import unveilify
    with pytest.raises(ExportError) as info:
        export_checkpoint.export_checkpoint(unveilify.get_config("quick"), str(tmp_path),
                                            str(tmp_path / "out"), write_onnx=True)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # main.py: a user error, no traceback
    assert "\n" not in message and "unveilify" in message and "without --export_onnx" in message
    assert not (tmp_path / "out").exists()


def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(onnx_export.OnnxUnavailable,
                       match=r'needs onnxscript .*pip install -e "\.\[onnx\]"'):
        onnx_export.require_onnx()


@pytest.mark.slow
def test_command_line_exports_both_starter_stages(tmp_path):
    """``--mode=export --weights=weights/ganmasker_starter --export_onnx``: an .onnx file
    beside each .safetensors of both stages, checked and listed; the output folder reads
    back as a weights folder."""
    out = tmp_path / "export"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               UNMASK_JAX_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "unmask_jax.main", "--mode=export", f"--weights={STARTER}",
         f"--export_dir={out}", "--export_onnx"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for folder, network, channels in ((out, "generator", 4), (out / "segmenter", "segmenter", 3)):
        assert (folder / f"{network}.safetensors").is_file()
        assert (folder / f"{network}.onnx").is_file()
        entry = io.weights_folder_networks(str(folder))[network]
        assert entry["sha256"]["onnx"] == io.sha256_of(str(folder / f"{network}.onnx"))
        assert entry["onnx"]["parity"]["max_abs_diff_over_max_abs_ref"] < TOL
        assert entry["onnx"]["input_shapes"] == [["batch", channels, 128, 128]]
        assert f"exported {network} to ONNX" in proc.stderr
    # The weights folder holds no discriminator: none is exported (it would be zeros).
    assert set(io.read_manifest(str(out))["networks"]) == {"generator"}
