"""benchmarks/reproduce.py and configs/reproduce.py: one protocol for every system.

The protocol's configs (what must be common, what stays each paper's), the schedule stretch,
the results table / claims / samples grid on recorded runs, and one end-to-end smoke run of
one system (train, evaluate, files, resume without retraining, usage errors)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import reproduce  # noqa: E402

from configs import reproduce as protocol  # noqa: E402
from unmask_jax import evaluate, train, validation  # noqa: E402

ALL = tuple(protocol.SYSTEMS)


def _config(system, scale, data="celeba"):
    c = protocol.get_config(f"{system},{scale},{data}")
    if system == "ganmasker":
        c.model.segmenter_workdir = "/runs/ganmasker_seg"
    return c


def test_every_system_is_in_the_protocol():
    assert set(ALL) == {"pix2pix", "ye_a", "ye_b", "ye_c", "tf_tutorial", "ganmasker_seg",
                        "ganmasker", "ganmasker_one_stage", "unveilify"}
    assert ALL.index("ganmasker_seg") < ALL.index("ganmasker")  # stage 1 trains first


@pytest.mark.parametrize("scale", protocol.ALL_SCALES)
def test_configs_validate_and_share_the_protocol(scale):
    configs = {s: _config(s, scale) for s in ALL}
    for c in configs.values():
        validation.validate_config(c)
    for key in ("data.source", "data.eval_split", "data.mask", "data.identity_image",
                "data.face_scale", "data.framing", "eval.num_sample_images", "eval.lpips_net",
                "eval.id_backbone", "data.source_options.num_records"):
        values = {s: str(_get(c, key)) for s, c in configs.items()}
        assert len(set(values.values())) == 1, (key, values)
    assert configs["pix2pix"].data.source == "celeba"
    assert configs["pix2pix"].data.eval_split == "validation"
    assert configs["pix2pix"].data.identity_image is True
    if scale == "full":  # each paper's own setting
        assert configs["ye_c"].train.batch_size == 4 and configs["ye_a"].train.batch_size == 10
        assert configs["unveilify"].data.resolution == 256
        assert configs["ganmasker"].optim.boundaries_steps == (30_000, 40_000, 45_000)
        return
    s = protocol.SCALES[scale]
    for key, want in (("data.resolution", s["resolution"]), ("train.batch_size", s["batch_size"]),
                      ("train.num_steps", s["num_steps"]), ("eval.num_images", s["eval_images"]),
                      ("train.eval_every_steps", s["num_steps"]), ("train.num_epochs", None)):
        values = {n: _get(c, key) for n, c in configs.items()}
        assert set(values.values()) == {want}, (key, values)
    assert configs["unveilify"].model.generator_kwargs.resolution == s["resolution"]
    assert configs["unveilify"].train.early_stopping.metric is None


def _get(c, dotted):
    for part in dotted.split("."):
        c = c[part]
    return c


def test_schedules_are_stretched_to_the_budget():
    c = _config("pix2pix", "cpu")
    assert (c.optim.constant_steps, c.optim.decay_steps) == (400, 200)  # quick: 200 + 100 of 300
    c = _config("ganmasker", "cpu")
    assert c.optim.boundaries_steps == (400, 520)  # quick: (200, 260) of 300
    c = _config("unveilify", "cpu")
    assert (c.optim.warmup_steps, c.optim.restart_period_steps) == (30, 600)  # 20, 400 of 400
    c = _config("pix2pix", "smoke")
    assert c.optim.constant_steps + c.optim.decay_steps == 4


def test_variant_errors_name_the_choices():
    with pytest.raises(ValueError, match="SYSTEM,SCALE,DATA"):
        protocol.get_config("pix2pix")
    with pytest.raises(ValueError, match="unknown system 'pix3pix'.*ye_c"):
        protocol.get_config("pix3pix,cpu,celeba")
    with pytest.raises(ValueError, match="unknown scale 'gpu'"):
        protocol.get_config("pix2pix,gpu,celeba")


def test_plan_adds_stage_one_and_keeps_protocol_order():
    assert reproduce.plan("ganmasker,pix2pix") == ["pix2pix", "ganmasker_seg", "ganmasker"]
    with pytest.raises(reproduce.UsageError, match="unknown nope"):
        reproduce.plan("nope")


def _fake_run(out, system, *, psnr, psnr_mask, id_sim, masked, target, gt_mask=False,
              status="ok"):
    workdir = reproduce.run_dir(str(out), system)
    result = {"step": 800, "name": system, "num_images": 4, "psnr": psnr,
              "psnr_mask": psnr_mask, "ssim": 0.9, "id_sim": id_sim, "raw_psnr": psnr - 1,
              "ms_per_image": 3.0, "device": "cpu", "device_count": 1,
              "baselines": {"masked_input": {"psnr": 18.0, "id_sim": 0.5},
                            "telea": {"psnr": 22.0, "id_sim": 0.6}}}
    if gt_mask:
        result["gt_mask"] = {"psnr": psnr + 0.5}
    samples = {"masked": masked, "target": target,
               "output": np.full_like(target, int(psnr)), "mask": np.ones((4, 8, 8, 1))}
    evaluate._write_results(workdir, result, None, samples)
    train.record_speed(workdir, 8, 100, 0.5, first_window=False)
    with open(os.path.join(workdir, reproduce.MARKER), "w") as f:
        json.dump({"status": status, "command": ["python", "-m", system], "wall_s": 120.0}, f)


@pytest.mark.slow
def test_results_table_claims_and_samples(tmp_path):
    rng = np.random.default_rng(0)
    masked = rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    target = rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    figures = {"ye_a": (20.0, 15.0, 0.70), "ye_b": (21.0, 16.0, 0.71),
               "ye_c": (21.5, 15.5, 0.72), "ganmasker": (24.0, 20.0, 0.73),
               "ganmasker_one_stage": (23.0, 19.0, 0.74), "unveilify": (22.0, 18.0, 0.80)}
    other = target.copy()
    other[0, 0, 0, 0] ^= 1
    for system, (psnr, psnr_mask, id_sim) in figures.items():
        _fake_run(tmp_path, system, psnr=psnr, psnr_mask=psnr_mask, id_sim=id_sim,
                  masked=masked, target=other if system == "ye_c" else target,
                  gt_mask=system == "ganmasker")
    _fake_run(tmp_path, "pix2pix", psnr=19.0, psnr_mask=14.0, id_sim=0.6, masked=masked,
              target=target)
    args = reproduce.parse_args(["--scale=cpu", "--data=celeba", "--data_dir=/d",
                                 f"--out={tmp_path}"])
    systems = reproduce.plan(args.systems)
    result = reproduce.write_results(str(tmp_path), args, systems)
    md = (tmp_path / "results.md").read_text()
    for system in figures:
        assert reproduce.LABELS[system] in md
    assert "GANMasker two-stage, ground-truth map" in md
    assert "masked input" in md and "Telea (OpenCV)" in md
    assert "tf_tutorial` (not run)" in md and "(not run)" in md
    claims = {c["claim"]: c["reproduced"] for c in result["claims"]}
    assert claims["Ye: Train B beats Train A in the mask region"] == "yes"
    assert claims["Ye: Train B beats Train A on the whole raw output"] == "yes"
    assert claims["Ye: Train C beats Train B in the mask region"] == "no"
    assert claims["GANMasker: two-stage beats one-stage"] == "yes"
    assert claims["UnVeilify: better identity similarity than identity-free systems"] == "yes"
    assert "WARNING: the eval images of ye_c differ" in md  # a changed target is caught
    header = md.split("| system |")[1].split("\n")[0]
    for column in ("PSNR", "PSNR mask", "ID-sim", "ms/image", "train img/s", "PSNR (raw)"):
        assert f" {column} |" in header
    row = next(r for r in result["rows"] if r["label"] == reproduce.LABELS["ye_b"])
    assert row["psnr"] == 21.0 and row["train_images_per_s"] == 16.0
    from PIL import Image
    grid = Image.open(tmp_path / "samples.png")
    # rows: masked input, 7 systems' outputs, target
    assert grid.size[1] == 9 * (8 + 2) + 2
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["systems"]["ye_b"]["eval"]["psnr"] == 21.0


def test_speed_record_keeps_compilation_apart(tmp_path):
    r = train.record_speed(str(tmp_path), 8, 50, 4.0, first_window=True)
    assert r["includes_compilation"] and r["images_per_s"] == 2.0
    train.record_speed(str(tmp_path), 8, 100, 0.5, first_window=False)
    train.record_speed(str(tmp_path), 8, 150, 0.25, first_window=False)
    r = train.record_speed(str(tmp_path), 8, 200, 1.0, first_window=False)
    assert not r["includes_compilation"] and r["step_time_s"] == 0.5
    assert r["images_per_s"] == 16.0 and len(r["windows"]) == 3


def _run(args, **kw):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "reproduce.py")]
                          + args, capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.mark.slow
def test_usage_errors_exit_2_without_traceback(tmp_path):
    r = _run(["--scale=smoke", "--data=celeba", f"--out={tmp_path}"])
    assert r.returncode == 2 and "needs --data_dir" in r.stderr and "Traceback" not in r.stderr
    r = _run(["--scale=smoke", "--data=lfw", f"--data_dir={tmp_path}/missing",
              f"--out={tmp_path}"])
    assert r.returncode == 2 and "is not a folder" in r.stderr
    r = _run(["--scale=smoke", "--systems=pix3pix", f"--out={tmp_path}"])
    assert r.returncode == 2 and "unknown pix3pix" in r.stderr


@pytest.mark.slow
def test_smoke_run_writes_every_file_and_resumes(tmp_path):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.environ.get(
        "UNMASK_TEST_XLA_CACHE", ""), JAX_PLATFORMS="cpu")
    args = ["--scale=smoke", "--data=synthetic", f"--out={tmp_path}", "--systems=ye_b"]
    r = _run(args, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + (tmp_path / "logs" / "ye_b.log").read_text()
    for name in ("results.md", "results.json", "samples.png"):
        assert (tmp_path / name).exists(), name
    result = json.loads((tmp_path / "results.json").read_text())
    run = result["systems"]["ye_b"]
    assert run["status"] == "ok" and run["eval"]["step"] == 4
    assert run["eval"]["num_images"] == 8 and "id_sim_reference" in run["eval"]
    assert run["train_speed"]["images_per_s"] > 0
    samples = evaluate.read_samples(reproduce.run_dir(str(tmp_path), "ye_b"))
    assert samples["output"].shape == (8, 64, 64, 3) and samples["output"].dtype == np.uint8
    labels = [row["label"] for row in result["rows"]]
    assert labels == [reproduce.LABELS["ye_b"], "masked input", "Telea (OpenCV)"]
    marker = tmp_path / "runs" / "ye_b" / reproduce.MARKER
    before = marker.read_text()
    r = _run(args, env=env, timeout=300)
    assert r.returncode == 0 and "finished earlier, not trained again" in r.stdout
    assert marker.read_text() == before  # no second attempt
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    os.rename(tmp_path, moved)  # a moved DIR still resumes
    r = _run(args[:2] + [f"--out={moved}", "--systems=ye_b"], env=env, timeout=300)
    assert r.returncode == 0 and "finished earlier, not trained again" in r.stdout
    r = _run(["--scale=cpu", "--data=synthetic", f"--out={moved}", "--systems=ye_b"],
             env=env, timeout=300)
    assert r.returncode == 2 and "another protocol" in r.stderr
