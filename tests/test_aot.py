"""``--mode=compile``: the real programs compiled for compile-only TPU devices (libtpu, no
hardware), and what the report says about them."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unmask_jax import accelerators, aot, backends, parallel

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGY = "v5e:2x2"


def tiny_pix2pix(resolution: int = 64):
    """The pix2pix system at its smallest: seconds to compile for a TPU."""
    from configs import pix2pix
    c = pix2pix.get_config("quick")
    c.data.resolution = resolution
    c.model.generator_kwargs.num_downs = 5
    c.model.generator_kwargs.ngf = 8
    c.model.discriminator_kwargs.ndf = 8
    c.train.compute_dtype = "bfloat16"
    return c


def test_libtpu_is_installed_by_the_test_extra():
    # The compile tests below need libtpu; a CI without it must fail, not skip.
    assert metadata.version("libtpu")
    assert metadata.version("jax") == jax.__version__


@pytest.mark.parametrize("name, topology, devices, hosts, bounds", [
    ("v5e-256", "v5e:16x16", 256, 64, (2, 2, 1)),
    ("v5e-8", "v5e:2x4", 8, 1, (2, 4, 1)),
    ("v5e:2x2", "v5e:2x2", 4, 1, (2, 2, 1)),
    ("v5p-128", "v5p:4x4x4", 64, 16, (2, 2, 1)),
    ("v4-32", "v4:2x2x4", 16, 4, (2, 2, 1)),
    ("v4:2x2x1", "v4:2x2x1", 4, 1, (2, 2, 1)),
    ("v6e-8", "v6e:2x4", 8, 1, (2, 4, 1)),
    ("v5litepod-16", "v5e:4x4", 16, 4, (2, 2, 1)),
])
def test_pod_names_resolve_to_libtpu_topologies(name, topology, devices, hosts, bounds):
    t = accelerators.resolve(name)
    assert (t.platform, t.topology, t.num_devices, t.num_hosts, t.chips_per_host_bounds) == (
        "tpu", topology, devices, hosts, bounds)
    assert t.chip_config == ("megacore" if topology.startswith(("v4", "v5p")) else "default")


def test_gpu_names_and_unknown_names():
    t = accelerators.resolve("h100:1x1x8")
    assert (t.platform, t.topology, t.num_devices, t.chip.hbm_bytes) == ("gpu", "1x1x8", 8,
                                                                          80 * 10**9)
    assert accelerators.resolve("h100-16").topology == "1x2x8"
    assert "gpu_device_info" in accelerators.gpu_target_config_text(t)
    for bad in ("v5e-7", "tpu", "v9:2x2", "v5e:2x2x2", "v4-6"):
        with pytest.raises(accelerators.TopologyError):
            accelerators.resolve(bad)


def test_multi_host_slice_builds_its_devices():
    devices = accelerators.devices(accelerators.resolve("v5e-256"))
    assert len(devices) == 256 and devices[0].platform == "tpu"
    assert len({d.process_index for d in devices}) == 64


def test_collectives_are_parsed_with_their_bytes():
    hlo = "\n".join([
        "  %all-reduce.1 = bf16[3,3,16,32]{3,2,1,0:T(8,128)(2,1)} all-reduce(%x), "
        "channel_id=1",
        "  %ars = (f32[4]{0}, f32[4]{0}) all-reduce-start(%a, %b)",
        "  ROOT %ard = (f32[4]{0}, f32[4]{0}) all-reduce-done(%ars)",
        "  %ag = f32[8,2]{1,0} all-gather(%y), dimensions={0}",
        "  %cp = bf16[2,64]{1,0} collective-permute(%z), source_target_pairs={{0,1}}",
        "  %add = f32[4]{0} add(%a, %b)",
    ])
    got = aot.collectives(hlo)
    assert got["by_kind"] == {"all-reduce": {"count": 2, "bytes": 3 * 3 * 16 * 32 * 2 + 32},
                              "all-gather": {"count": 1, "bytes": 64},
                              "collective-permute": {"count": 1, "bytes": 256}}
    assert got["count"] == 4


def test_out_of_memory_message_is_parsed():
    msg = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
           "space hbm. Used 20.50G of 15.75G hbm. Exceeded hbm capacity by 4.75G.")
    got = aot.parse_out_of_memory(msg)
    assert got["memory_space"] == "hbm"
    assert got["used_bytes"] == int(20.5 * (1 << 30))
    assert got["capacity_bytes"] == int(15.75 * (1 << 30))
    got = aot.parse_out_of_memory(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (30.55G) exceeds available HBM (15.75G).")
    assert (got["used_bytes"], got["memory_space"]) == (int(30.55 * (1 << 30)), "hbm")
    assert aot.parse_out_of_memory("INVALID_ARGUMENT: something else") is None


def _conv_net_program(widths=(8, 16, 16), resolution=32):
    """A small conv net (VALID 3x3 convolutions, ReLU) with its loss gradient, as an aot
    program, and its analytic FLOPs per image (forward + input and kernel gradients)."""
    rng = np.random.default_rng(0)
    kernels = [jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
               for cin, cout in zip((3,) + widths[:-1], widths)]

    def loss(ks, x):
        for k in ks:
            x = jax.nn.relu(jax.lax.conv_general_dilated(
                x, k.astype(jnp.bfloat16), (1, 1), "VALID",
                dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return jnp.mean(x.astype(jnp.float32) ** 2)

    flops, size = 0, resolution
    for i, (cin, cout) in enumerate(zip((3,) + widths[:-1], widths)):
        size -= 2
        one = 2 * size * size * cout * 9 * cin
        flops += one * (2 if i == 0 else 3)  # the first layer has no input gradient

    def make(mesh, platform):
        rep = parallel.replicated_sharding(mesh)
        return backends.jit(jax.grad(loss), platform=platform,
                            in_shardings=(rep, parallel.batch_sharding(mesh)),
                            out_shardings=rep)

    def args(mesh, batch):
        return ([jax.ShapeDtypeStruct(k.shape, k.dtype,
                                      sharding=parallel.replicated_sharding(mesh))
                 for k in kernels],
                jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.bfloat16,
                                     sharding=parallel.batch_sharding(mesh)))

    return aot._Program("conv_net", make, args), flops


@pytest.mark.slow
def test_flops_match_an_analytic_count_for_a_small_conv_net():
    program, per_image = _conv_net_program()
    target = accelerators.resolve(TOPOLOGY)
    mesh = parallel.make_data_mesh(accelerators.devices(target))
    r = aot.compile_program(program, target, mesh, per_chip_batch=4)
    assert r["cost"]["model_flops_per_image"] == pytest.approx(per_image, rel=0.10)
    # The TPU compiler's own count includes the work of its tile padding (channels of 3
    # and 8 padded on the lanes): more than the model's FLOPs, never less.
    assert per_image <= r["cost"]["compiled_flops_per_image"] <= 1.6 * per_image
    assert r["collectives"]["by_kind"]["all-reduce"]["count"] >= 1  # the kernel gradients
    assert 0.0 < r["roofline"]["mfu_bound"] <= 1.0


def _convolutions(hlo: str) -> dict[str, int]:
    """Counts of stablehlo.convolution ops by result element type."""
    counts: dict[str, int] = {}
    for line in hlo.splitlines():
        if "stablehlo.convolution" in line:
            dtype = re.findall(r"->\s*tensor<[0-9x]*x?(\w+)>", line)
            key = dtype[-1] if dtype else "?"
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
def test_accelerator_program_is_traced_for_the_target_not_the_host(monkeypatch):
    from unmask_jax import programs, systems
    config = tiny_pix2pix()
    system = systems.build(config, abstract_frozen=True)
    txs = system.optimizers(1)
    program = aot._programs(config, system, ("train_step",))[0]
    seen = []
    real = backends.forms
    monkeypatch.setattr(backends, "forms", lambda t=None: seen.append(
        (t or backends.target()).platform) or real(t))
    target = accelerators.resolve(TOPOLOGY)
    mesh = parallel.make_data_mesh(accelerators.devices(target))
    tpu_hlo = program.make(mesh, "tpu").lower(*program.args(mesh, 4)).as_text()
    assert seen and set(seen) == {"tpu"}
    # The same step traced for the host's CPU takes the CPU forms (GEMMs for small layers):
    # fewer convolutions, more dot products. The accelerator program has none of them.
    host = parallel.make_data_mesh(jax.devices("cpu")[:1])
    cpu_step = programs.make_train_step(system, txs, host, parallel.replicated_sharding(host))
    cpu_hlo = cpu_step.lower(*program.args(host, 4)).as_text()
    tpu_convs, cpu_convs = _convolutions(tpu_hlo), _convolutions(cpu_hlo)
    assert sum(tpu_convs.values()) > sum(cpu_convs.values())
    assert tpu_hlo.count("stablehlo.dot_general") < cpu_hlo.count("stablehlo.dot_general")
    # bf16 compute: every convolution of G and D (forward and both gradients) is bf16.
    assert set(tpu_convs) == {"bf16"}, tpu_convs
    # No XLA CPU option reaches the TPU program.
    assert program.make(mesh, "tpu").compiler_options == {}


@pytest.mark.slow
def test_compile_mode_writes_the_report(tmp_path):
    config = tiny_pix2pix()
    report = aot.compile_for(config, str(tmp_path), TOPOLOGY, per_chip_batch=2,
                             breakdown=True)
    path = tmp_path / "compile" / "v5e_2x2.json"
    written = json.loads(path.read_text())
    # The optimised HLO the breakdown read goes beside the report, not into its JSON.
    hlo = {name: r.pop("hlo_text") for name, r in report["programs"].items()}
    assert written == json.loads(json.dumps(report))
    md = (tmp_path / "compile" / "v5e_2x2.md").read_text()
    assert md.startswith("# pix2pix_quick") and "train_step: where the bytes" in md
    for name, text in hlo.items():
        assert (tmp_path / "compile" / f"v5e_2x2.{name}.hlo.txt").read_text() == text
        b = report["programs"][name]["breakdown"]
        # The per-op sum is XLA's own total within a few per cent; HBM is part of it.
        assert 0.85 < b["bytes"] / b["xla_bytes"] < 1.15, (name, b["bytes"], b["xla_bytes"])
        assert 0 < b["hbm_bytes"] <= b["bytes"]
        assert any(g["layer"].startswith(("UnetGenerator", "bwd UnetGenerator"))
                   for g in b["top_layers_by_bytes"])
        assert report["programs"][name]["roofline_hbm"]["mfu_bound"] >= report[
            "programs"][name]["roofline"]["mfu_bound"]
    assert report["target"]["devices"] == 4 and report["global_batch"] == 8
    for name in ("train_step", "predict"):
        r = report["programs"][name]
        assert set(r["memory"]) >= {"argument_bytes", "output_bytes", "alias_bytes",
                                    "temp_bytes", "code_bytes", "total_bytes", "hbm_bytes",
                                    "fits"}
        assert set(r["cost"]) == {"model_flops_per_step", "compiled_flops_per_step",
                                  "bytes_accessed_per_step", "model_flops_per_image",
                                  "compiled_flops_per_image", "bytes_per_image"}
        assert set(r["roofline"]) >= {"mfu_bound", "images_per_s_per_chip",
                                      "images_per_s_per_slice", "step_time_s", "bound"}
        assert r["compile_seconds"] > 0 and r["memory"]["fits"]
        assert r["cost"]["model_flops_per_step"] > 0
        assert 0 < r["roofline"]["mfu_bound"] <= 1
    train_step = report["programs"]["train_step"]
    # The donated state aliases its output; the gradients are all-reduced over the chips.
    assert train_step["memory"]["alias_bytes"] > 0
    assert train_step["collectives"]["by_kind"]["all-reduce"]["bytes"] > 0
    assert report["programs"]["predict"]["collectives"]["count"] == 0


def test_frozen_networks_compile_from_shapes_of_the_configured_backbone():
    # VGG19's converted weights are not on this machine: training would fall back to VGG16,
    # the compile keeps VGG19 and reads no file.
    from configs import ganmasker
    from unmask_jax import systems
    config = ganmasker.get_config("unmask_quick")
    config.loss.terms.perceptual.backbone = "vgg19"
    system = systems.build(config, abstract_frozen=True)
    assert system.perceptual_backbone == "vgg19"
    frozen = system.load_frozen(training=True)
    leaves = jax.tree.leaves(frozen)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    # The two-stage inference compiles without a stage-1 run.
    assert "segmenter" in system.load_frozen(training=False)
    assert system.eval_variants()[""] == {"mask_source": "segmenter"}


def _main(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return subprocess.run([sys.executable, "-m", "unmask_jax.main", *args,
                           f"--workdir={tmp_path}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_program_too_large_for_the_chip_exits_2_with_the_numbers(tmp_path):
    proc = _main(tmp_path, "--config=configs/pix2pix.py:quick", "--mode=compile",
                 f"--topology={TOPOLOGY}", "--per_chip_batch=100000",
                 "--compile_programs=predict", "--config.model.generator_kwargs.ngf=8")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.search(r"does not fit v5e:2x2 at 100000 images per chip: it needs [0-9.]+ GiB "
                     r"of hbm per device, the chip has [0-9.]+ GiB", proc.stderr), proc.stderr
    report = json.loads((tmp_path / "compile" / "v5e_2x2.json").read_text())
    assert report["programs"]["predict"]["fits"] is False


@pytest.mark.slow
def test_bad_topology_exits_2(tmp_path):
    proc = _main(tmp_path, "--config=configs/pix2pix.py:quick", "--mode=compile",
                 "--topology=v5e-7")
    assert proc.returncode == 2 and "no standard v5e slice" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_gpu_target_without_the_cuda_plugin_exits_2_saying_what_to_install(tmp_path):
    # CI has no jax[cuda12]: the message names the package, no traceback.
    proc = _main(tmp_path, "--config=configs/pix2pix.py:quick", "--mode=compile",
                 "--topology=h100:1x1x8")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f'pip install "jax[cuda12]=={jax.__version__}"' in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_plain_cpu_run_does_not_start_libtpu():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-c", "import unmask_jax, jax, os; "
                           "print(jax.devices()[0].platform, os.environ['JAX_PLATFORMS'])"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cpu", "cpu"]
    assert "TPU" not in proc.stderr and "Source Location" not in proc.stderr, proc.stderr


def test_tpu_machines_and_user_choices_keep_their_platforms(monkeypatch):
    from unmask_jax import platforms
    assert platforms.tpu_present({"TPU_ACCELERATOR_TYPE": "v5litepod-8"})
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    assert platforms.skip_absent_tpu() is None and os.environ["JAX_PLATFORMS"] == "tpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(platforms, "tpu_present", lambda environ=None: True)
    assert platforms.skip_absent_tpu() is None and "JAX_PLATFORMS" not in os.environ


def test_compilation_cache_folder_and_opt_out(monkeypatch, tmp_path):
    """JAX's persistent compilation cache is on by default under the user's cache folder;
    UNMASK_JAX_COMPILATION_CACHE names another folder or turns it off."""
    from unmask_jax import platforms
    home = {"HOME": str(tmp_path)}
    monkeypatch.setattr(os.path, "expanduser", lambda p: p.replace("~", str(tmp_path)))
    assert platforms.compilation_cache_dir(home) == str(tmp_path / ".cache" / "unmask_jax"
                                                        / "jax")
    assert platforms.compilation_cache_dir({"UNMASK_JAX_CACHE": "/c"}) == "/c/jax"
    assert platforms.compilation_cache_dir({platforms.CACHE_ENV: "/x"}) == "/x"
    for off in ("off", "0", "", "false"):
        assert platforms.compilation_cache_dir({platforms.CACHE_ENV: off}) is None
