"""Early stopping: the patience rule, and the trainer stopping (and staying stopped) on it."""
import json

import pytest

from tests.test_train import tiny_config
from unmask_jax import checkpoints, early_stopping, train


def test_patience_counts_evaluations_since_the_best():
    rule = early_stopping.EarlyStopping("psnr", "max", patience=2, min_delta=0.1)
    assert rule.status([]) == (False, None, None, 0)
    # 20.05 is not better than 20.0 by more than min_delta; 21 is.
    assert rule.status([(1, 20.0), (2, 20.05)]) == (False, 1, 20.0, 1)
    assert rule.status([(1, 20.0), (2, 20.05), (3, 19.0)]) == (True, 1, 20.0, 2)
    assert rule.status([(1, 20.0), (2, 20.05), (3, 21.0)]) == (False, 3, 21.0, 0)
    low = early_stopping.EarlyStopping("lpips", "min", patience=1)
    assert low.status([(1, 0.3), (2, 0.2)])[0] is False
    assert low.status([(1, 0.3), (2, 0.2), (3, 0.25)])[0] is True


def test_config_checks_and_nested_metric():
    assert early_stopping.EarlyStopping.from_config({"metric": None}) is None
    with pytest.raises(ValueError, match="mode"):
        early_stopping.EarlyStopping.from_config({"metric": "psnr", "mode": "up"})
    with pytest.raises(ValueError, match="patience"):
        early_stopping.EarlyStopping.from_config({"metric": "psnr", "patience": 0})
    rule = early_stopping.EarlyStopping("gt_mask/psnr")
    assert rule.value({"psnr": 1.0, "gt_mask": {"psnr": 2.5}}) == 2.5
    with pytest.raises(ValueError, match="numeric keys: .*psnr"):
        early_stopping.EarlyStopping("psnrr").value({"psnr": 1.0})


@pytest.mark.slow
def test_trainer_stops_early_and_a_rerun_stays_stopped(tmp_path):
    # min_delta larger than any PSNR gain: the first evaluation is the best, patience 1 ends
    # training at the second one (step 2 of 6).
    config = tiny_config(**{"train.eval_every_steps": 1, "train.checkpoint_every_steps": 5,
                            "eval.lpips_net": "", "eval.id_backbone": "",
                            "train.early_stopping.metric": "psnr",
                            "train.early_stopping.patience": 1,
                            "train.early_stopping.min_delta": 100.0})
    workdir = str(tmp_path / "run")
    out = train.train_and_evaluate(config, workdir)
    assert out["early_stopped"] and out["step"] == 2
    # The stopping step is checkpointed (it is not on the checkpoint schedule).
    manager = checkpoints.make_manager(workdir, config)
    assert manager.latest_step() == 2
    history = json.loads((tmp_path / "run" / "eval" / "step_2.json").read_text())
    assert "psnr" in history
    # Resuming re-reads the evaluation record and does not train on.
    again = train.train_and_evaluate(config, workdir)
    assert again == {"step": 2, "eval": {}, "early_stopped": True}
    assert checkpoints.make_manager(workdir, config).latest_step() == 2


def test_a_metric_the_evaluation_never_writes_is_refused_before_training():
    from unmask_jax import validation
    with pytest.raises(ValueError, match="not an evaluation metric"):
        validation.validate_config(tiny_config(**{"train.early_stopping.metric": "psnrr"}))
    validation.validate_config(tiny_config(**{"train.early_stopping.metric": "gt_mask/raw_psnr"}))
    with pytest.raises(early_stopping.EarlyStoppingMetricError, match="value None"):
        early_stopping.EarlyStopping("fid").value({"fid": None, "psnr": 20.0})
