"""Learning-rate schedules against hand-computed values and PyTorch's schedulers."""
import math

import numpy as np
import pytest
import torch

from unmask_jax import optim


def _cfg(**kw):
    base = dict(lr=1.0, b1=0.5, b2=0.999, eps=1e-8, schedule="constant",
                constant_steps=None, constant_epochs=None, decay_steps=None,
                decay_epochs=None, boundaries_steps=(), decay_factor=0.1,
                warmup_steps=None, warmup_epochs=None, restart_period_steps=None,
                restart_period_epochs=None, restart_mult=1.0, min_lr=0.0)
    base.update(kw)
    return base


def _values(cfg, spe, steps):
    fn = optim.learning_rate_schedule(cfg, spe)
    return np.asarray([float(fn(s)) for s in steps])


def test_epoch_to_step_conversion():
    assert optim.resolve_steps({"num_epochs": 2.5, "num_steps": None}, "num", 10) == 25
    assert optim.resolve_steps({"num_epochs": None, "num_steps": 7}, "num", 10) == 7
    with pytest.raises(ValueError, match="not both"):
        optim.resolve_steps({"num_epochs": 1, "num_steps": 7}, "num", 10)
    with pytest.raises(ValueError, match="must be set"):
        optim.resolve_steps({"num_epochs": None, "num_steps": None}, "num", 10)


def test_linear_decay_in_epochs_changes_once_per_epoch():
    """3 constant + 2 decay epochs of 10 steps: 1 for epochs 0-2, then 1 - (e + 1 - 3) / 3."""
    cfg = _cfg(schedule="linear_decay", constant_epochs=3, decay_epochs=2)
    got = _values(cfg, 10, range(0, 60))
    want = np.repeat([1.0, 1.0, 1.0, 2 / 3, 1 / 3, 0.0], 10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_pix2pix_linear_decay_matches_the_canonical_lambda_rule():
    """pix2pix 100 + 100 epochs: LambdaLR(1 - max(0, e + 1 - 100) / 101) stepped per epoch."""
    cfg = _cfg(schedule="linear_decay", constant_epochs=100, decay_epochs=100, lr=2e-4)
    spe = 7
    fn = optim.learning_rate_schedule(cfg, spe)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=2e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda e: 1.0 - max(0, e + 1 - 100) / float(100 + 1))
    for epoch in range(200):
        want = opt.param_groups[0]["lr"]
        for s in (epoch * spe, epoch * spe + spe - 1):
            assert float(fn(s)) == pytest.approx(want, rel=1e-6), (epoch, s)
        opt.step()
        sched.step()
    assert float(fn(99 * spe)) == pytest.approx(2e-4)
    assert float(fn(100 * spe)) == pytest.approx(2e-4 * (1 - 1 / 101))
    assert float(fn(199 * spe)) == pytest.approx(2e-4 / 101)


def test_linear_decay_in_steps():
    cfg = _cfg(schedule="linear_decay", constant_steps=2, decay_steps=3)
    np.testing.assert_allclose(_values(cfg, 100, range(7)),
                               [1, 1, 0.75, 0.5, 0.25, 0, 0], atol=1e-7)


def test_mixed_units_are_refused():
    cfg = _cfg(schedule="linear_decay", constant_epochs=2, decay_steps=3)
    with pytest.raises(ValueError, match="all in epochs or all in steps"):
        optim.learning_rate_schedule(cfg, 10)


def test_step_schedule():
    cfg = _cfg(schedule="step", boundaries_steps=(3, 5), decay_factor=0.1)
    np.testing.assert_allclose(_values(cfg, 1, range(7)),
                               [1, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_warmup_cosine_restarts_hand_values():
    """2 warm-up epochs, T_0 = 2, T_mult = 2, 5 steps per epoch."""
    cfg = _cfg(schedule="warmup_cosine_restarts", warmup_epochs=2, restart_period_epochs=2,
               restart_mult=2.0)
    got = _values(cfg, 5, [e * 5 for e in range(9)])
    c = lambda t, T: (1 + math.cos(math.pi * t / T)) / 2  # noqa: E731
    want = [0.5, 1.0, c(0, 2), c(1, 2), c(0, 4), c(1, 4), c(2, 4), c(3, 4), c(0, 8)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Within an epoch the rate does not move (the scheduler is stepped per epoch).
    np.testing.assert_array_equal(_values(cfg, 5, range(15, 20)), got[3])


@pytest.mark.parametrize("mult", [1.0, 2.0, 3.0])
def test_cosine_restarts_match_torch(mult):
    """After the warm-up: torch CosineAnnealingWarmRestarts(T_0=5, T_mult, eta_min) stepped
    once per epoch, 120 epochs (several restarts)."""
    warmup, lr, min_lr = 3, 2e-4, 1e-6
    cfg = _cfg(schedule="warmup_cosine_restarts", lr=lr, warmup_epochs=warmup,
               restart_period_epochs=5, restart_mult=mult, min_lr=min_lr)
    fn = optim.learning_rate_schedule(cfg, 4)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=5, T_mult=int(mult), eta_min=min_lr)
    for epoch in range(120):
        want = opt.param_groups[0]["lr"]
        got = float(fn((warmup + epoch) * 4 + 1))
        assert got == pytest.approx(want, rel=1e-4, abs=1e-9), (epoch, got, want)
        opt.step()
        sched.step()
    for e in range(warmup):
        assert float(fn(e * 4)) == pytest.approx(lr * (e + 1) / warmup)


def test_unveilify_exp10_warmup_matches_torch_sequential_lr():
    """UnVeilify's scheduler: SequentialLR([LambdaLR(1 / 10 ** (5 - epoch)),
    CosineAnnealingWarmRestarts(T_0=50, T_mult=2)], milestones=[5]), stepped per epoch."""
    lr, warmup = 2e-4, 5
    cfg = _cfg(schedule="warmup_cosine_restarts", lr=lr, warmup_epochs=warmup,
               restart_period_epochs=50, restart_mult=2.0, warmup_shape="exp10")
    fn = optim.learning_rate_schedule(cfg, 3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=lr)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1 / (10 ** float(warmup - e)))
    cos = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=50, T_mult=2)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], [warmup])
    for epoch in range(170):
        want = opt.param_groups[0]["lr"]
        for s in (epoch * 3, epoch * 3 + 2):
            assert float(fn(s)) == pytest.approx(want, rel=1e-4, abs=1e-12), (epoch, want)
        opt.step()
        sched.step()
    assert float(fn(0)) == pytest.approx(lr * 1e-5)
    with pytest.raises(ValueError, match="warmup_shape"):
        optim.learning_rate_schedule(dict(cfg, warmup_shape="cubic"), 3)


def test_per_network_overrides():
    cfg = dict(_cfg(lr=2e-4), networks={"discriminator": {"lr": 1e-4, "b2": None}})
    d = optim.network_settings(cfg, "discriminator")
    g = optim.network_settings(cfg, "generator")
    assert d["lr"] == 1e-4 and d["b2"] == 0.999 and g["lr"] == 2e-4
    with pytest.raises(ValueError, match="unknown key"):
        optim.network_settings(dict(cfg, networks={"generator": {"momentum": 1}}), "generator")
