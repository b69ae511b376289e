"""Evaluation report: FID and speed in the JSON, the Markdown table, evaluations on other data
under their own name, and ``python -m unmask_jax.compare``."""
import json

import numpy as np
import pytest
import scipy.linalg

from data_pipelines import pipeline
from tests.test_evaluate import GreySystem, _state
from tests.test_train import tiny_config
from unmask_jax import compare, evaluate, parallel, report, visualize
from unmask_jax.systems import base


class StubFID:
    """Cheap stand-in for the Inception pool3 features: per-channel mean and RMS of the image
    (the Evaluator's FID bookkeeping is what is tested here; the network has its own test)."""
    dim = 6
    weights_path = "stub.msgpack"
    input_size = 299

    def __call__(self, images):
        x = np.asarray(images, np.float64) / 255.0
        return np.concatenate([x.mean(axis=(1, 2)), np.sqrt((x ** 2).mean(axis=(1, 2)))], 1)


def _config(n=6):
    config = tiny_config()
    config.eval.num_images = n
    config.eval.batch_size = 4
    config.eval.lpips_net = ""
    config.eval.id_backbone = ""
    return config


def _fid_scipy(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))


@pytest.fixture(scope="module")
def with_fid(tmp_path_factory):
    config = _config()
    workdir = tmp_path_factory.mktemp("run_a")
    ev = evaluate.Evaluator(config, GreySystem(config), parallel.make_data_mesh(),
                            fid=StubFID())
    result = ev(_state(), workdir=str(workdir))
    return config, result, workdir


def test_fid_is_the_frechet_distance_of_the_eval_set_features(with_fid):
    import jax.numpy as jnp
    config, result, _ = with_fid
    data_cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    batch = next(iter(pipeline.eval_dataset(data_cfg, batch_size=6, num_images=6)))
    stub = StubFID()
    target = stub(visualize.to_uint8(batch["target"]))
    output = stub(visualize.to_uint8(np.asarray(base.composite(
        jnp.full_like(batch["masked"], 0.2), batch))))
    masked = stub(visualize.to_uint8(batch["masked"]))
    assert result["fid"] == pytest.approx(_fid_scipy(output, target), rel=1e-6)
    assert result["baselines"]["masked_input"]["fid"] == pytest.approx(
        _fid_scipy(masked, target), rel=1e-6)
    assert {"raw_fid"} <= set(result) and "fid" in result["baselines"]["telea"]
    assert result["fid_num_images"] == 6 and result["fid_weights"] == "stub.msgpack"


def test_json_and_markdown_carry_every_metric_speed_and_device(with_fid):
    _, result, workdir = with_fid
    assert result["ms_per_image"] > 0 and result["ms_per_image_batch"] == 4
    assert result["device"] and result["device_count"] >= 1
    assert result["data"]["source"] == "synthetic" and "eval_name" not in result
    for stem in ("step_7", "latest"):
        assert json.loads((workdir / "eval" / f"{stem}.json").read_text()) == result
        md = (workdir / "eval" / f"{stem}.md").read_text()
        assert md == report.evaluation_markdown(result)
    header = next(line for line in md.splitlines() if line.startswith("| |"))
    for title in ("PSNR", "SSIM", "PSNR mask", "SSIM mask", "FID", "ms/image", "device"):
        assert f"| {title} |" in header, title
    for row in ("system (composited)", "system (raw output)", "masked input", "Telea (OpenCV)"):
        assert f"| {row} |" in md, row
    assert f"{result['fid']:.2f}" in md and "FID on 6 images" in md


def test_without_fid_weights_there_is_no_fid_and_the_report_says_how_to_turn_it_on(tmp_path):
    config = _config(n=2)
    result = evaluate.Evaluator(config, GreySystem(config), parallel.make_data_mesh())(
        _state(), workdir=str(tmp_path))
    assert not any("fid" in k for k in result) and "fid" not in result["baselines"]["telea"]
    assert "FID: off (set eval.fid_weights)" in (tmp_path / "eval" / "latest.md").read_text()


def test_markdown_of_a_two_stage_result_has_every_column_and_a_variant_table():
    scores = {"psnr": 29.1234, "ssim": 0.9071, "psnr_mask": 22.08, "ssim_mask": 0.51,
              "lpips": 0.0591, "id_sim": 0.956, "id_sim_reference": 0.61, "fid": 12.345}
    result = {"step": 300, "name": "ganmasker_unmask_quick", "num_images": 64,
              "num_identities": 64, "id_backbone": "dlib", "bn_statistics": "running",
              "data": {"source": "synthetic", "eval_split": "test", "data_dir": None},
              **scores, **{f"raw_{k}": v - 0.01 for k, v in scores.items()},
              "dice": 0.959, "pixel_accuracy": 0.985, "fid_num_images": 64,
              "ms_per_image": 3.25, "ms_per_image_batch": 16, "device": "cpu",
              "device_count": 1,
              "gt_mask": {"psnr": 29.85, "ssim": 0.916, "raw_psnr": 25.0, "raw_ssim": 0.8},
              "baselines": {"masked_input": {"psnr": 20.74, "ssim": 0.788, "fid": 80.0},
                            "telea": {"psnr": 24.64, "ssim": 0.84, "fid": 40.0}}}
    md = report.evaluation_markdown(result)
    print(md)
    lines = md.splitlines()
    assert lines[0] == "# ganmasker_unmask_quick: step 300"
    header = lines[4]
    assert header == ("| | PSNR | SSIM | PSNR mask | SSIM mask | LPIPS | ID-sim | "
                      "ID-sim vs reference | Dice | pixel acc. | FID | ms/image | device |")
    comp = lines[6].split(" | ")
    assert comp[0] == "| system (composited)" and comp[1] == "29.12" and comp[-2] == "3.25"
    assert lines[7].endswith("| — | — |")  # the raw output comes from the same predict
    # Dice belongs to the system's own map, not to its raw output or to a baseline.
    raw = lines[7].split(" | ")
    assert raw[8] == report.MISSING and raw[1] == "29.11"
    telea = lines[9].split(" | ")
    assert telea[0] == "| Telea (OpenCV)" and telea[10] == "40.00" and telea[3] == "—"
    assert "## Variant `gt_mask`" in md and "| gt_mask (composited) | 29.85 | 0.9160 |" in md
    assert "64 images of `synthetic` split `test`, 64 identities" in md


def _fake_checkpoint(monkeypatch, recorded, calls):
    """evaluate_checkpoint on the grey system without training: the checkpoint's recorded
    config is ``recorded``; load_state records how it was asked to check the config."""
    from unmask_jax import checkpoints, state as state_lib

    monkeypatch.setattr(checkpoints, "require_checkpoint", lambda workdir: _Manager())
    monkeypatch.setattr(checkpoints, "recorded_config", lambda workdir, step=None: recorded)

    def load_state(config, workdir, step=None, *, check_config=True):
        calls.append(check_config)
        return _state(), GreySystem(config), parallel.make_data_mesh()

    monkeypatch.setattr(state_lib, "load_state", load_state)


class _Manager:
    def all_steps(self):
        return [7]


def test_evaluating_on_other_data_keeps_the_runs_own_record(tmp_path, monkeypatch):
    from unmask_jax import checkpoints
    own = _config()
    recorded = checkpoints.config_to_json(own)
    calls = []
    _fake_checkpoint(monkeypatch, recorded, calls)
    evaluate.evaluate_checkpoint(own, str(tmp_path))
    assert calls == [True]
    own_files = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir() if p.is_file()}
    assert set(own_files) == {"step_7.json", "latest.json", "step_7.md", "latest.md",
                              "step_7.samples.npz", "latest.samples.npz"}

    other = _config()
    other.data.source_options.num_records = 40  # another synthetic data set
    other.data.eval_split = "train"
    result = evaluate.evaluate_checkpoint(other, str(tmp_path))
    assert calls == [True, False]  # only data settings changed: restored without the check
    assert result["eval_name"] == "synthetic-train"
    sub = tmp_path / "eval" / "synthetic-train"
    assert sorted(p.name for p in sub.iterdir()) == [
        "latest.json", "latest.md", "latest.samples.npz", "step_7.json", "step_7.md",
        "step_7.samples.npz"]
    assert json.loads((sub / "latest.json").read_text())["data"]["eval_split"] == "train"
    assert "`synthetic-train`" in (sub / "latest.md").read_text()
    assert "eval_data" not in (sub / "latest.md").read_text()  # settings, not a variant
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()
            if p.is_file()} == own_files

    # The same source and split with other settings (here the masks) get their own name;
    # the first evaluation of that name is left as it is, and is reused by its settings.
    masks = _config()
    masks.data.source_options.num_records = 40
    masks.data.eval_split = "train"
    masks.data.mask.types = ("surgical",)
    result = evaluate.evaluate_checkpoint(masks, str(tmp_path))
    assert result["eval_name"].startswith("synthetic-train-") and len(result["eval_name"]) == 24
    assert result["eval_data"]["data.mask.types"] == ["surgical"]
    first = json.loads((sub / "latest.json").read_text())
    assert "data.mask.types" not in first["eval_data"] or first["eval_data"][
        "data.mask.types"] != ["surgical"]
    assert evaluate.evaluate_checkpoint(other, str(tmp_path))["eval_name"] == "synthetic-train"
    assert evaluate.evaluate_checkpoint(masks, str(tmp_path))["eval_name"] == result["eval_name"]

    # A change beyond the data (another network) still goes through the resume check.
    changed = _config()
    changed.data.eval_split = "train"
    changed.model.generator_kwargs.ngf = 16
    evaluate.evaluate_checkpoint(changed, str(tmp_path))
    assert calls[-1] is True
    assert evaluate.other_data_name(recorded, own) is None


def _write_eval(workdir, result, name=None):
    d = workdir / "eval" / name if name else workdir / "eval"
    d.mkdir(parents=True)
    (d / "latest.json").write_text(json.dumps(result))


def test_compare_prints_one_row_per_run(tmp_path, capsys):
    a, b, empty = tmp_path / "run_a", tmp_path / "run_b", tmp_path / "run_c"
    _write_eval(a, {"step": 300, "name": "pix2pix_quick", "num_images": 64, "psnr": 24.5,
                    "ssim": 0.81, "raw_psnr": 21.4, "ms_per_image": 1.5, "device": "cpu"})
    _write_eval(b, {"step": 600, "num_images": 64, "psnr": 29.1, "ssim": 0.9, "fid": 12.0,
                    "dice": 0.96})
    _write_eval(b, {"step": 600, "num_images": 10, "psnr": 22.0}, name="lfw-test")
    empty.mkdir()
    assert compare.main([str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # header, rule, one row per run
    assert lines[0] == ("| run | config | step | images | PSNR | SSIM | Dice | FID | "
                        "PSNR (raw) | ms/image | device |")
    assert lines[2].startswith("| run_a | pix2pix_quick | 300 | 64 | 24.50 | 0.8100 | — | — |")
    # No name in the JSON and no checkpoint: the directory name.
    assert lines[3].startswith("| run_b | run_b | 600 | 64 | 29.10 |")

    assert compare.main([str(b), "--eval_name=lfw-test"]) == 0
    assert "| run_b | run_b | 600 | 10 | 22.00 |" in capsys.readouterr().out

    assert compare.main([str(a), str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run_c has no evaluation" in err
    assert "Traceback" not in err
    assert compare.main([str(a), "--eval_name=lfw-test"]) == 2
    assert compare.main([str(b), "--eval_name=celeba-test"]) == 2
    assert "lfw-test (--eval_name=NAME)" in capsys.readouterr().err


def test_a_missing_fid_weights_file_stops_before_work(tmp_path):
    from unmask_jax import validation
    from unmask_jax.features import MissingWeightsError
    config = _config()
    config.eval.fid_weights = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(MissingWeightsError, match="pt_inception"):
        validation.validate_config(config, "evaluate")
