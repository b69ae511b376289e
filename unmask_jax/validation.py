"""Checks of a config before a mode starts: the values the trainer, evaluator, predictor or
compiler would only reject later (after compiling), raised as ValueError/TypeError with a
message naming the key."""
from __future__ import annotations

import os


def validate_config(config, mode: str = "train") -> None:
    """Fails fast on values the trainer would only reject later (after compiling)."""
    from data_pipelines import pipeline
    from unmask_jax import early_stopping, optim, systems

    pipeline.DataConfig.from_dict(config.data.to_dict())
    # A compile reads no weights file: the configured frozen networks, as shapes.
    system = systems.build(config, abstract_frozen=mode == "compile")
    if mode in ("train", "evaluate"):
        system.eval_variants()  # e.g. a two-stage evaluation that needs its first stage's run
        fid_weights = config.eval.get("fid_weights")
        if fid_weights and not os.path.isfile(fid_weights):
            from unmask_jax.features import fid
            fid.load_fid_variables(fid_weights)  # MissingWeightsError naming file and command
    if mode == "predict":
        from unmask_jax.predict import PredictOptions
        PredictOptions.from_config(config)
    optim.resolve_steps(config.train, "num", steps_per_epoch=1)
    from unmask_jax.state import STATE_SHARDINGS
    if config.train.get("state_sharding", "replicated") not in STATE_SHARDINGS:
        raise ValueError(f"config.train.state_sharding={config.train.state_sharding!r}: "
                         f"choose one of {STATE_SHARDINGS}")
    if not isinstance(config.train.get("remat", False), bool):
        raise ValueError(f"config.train.remat={config.train.remat!r}: True or False")
    rule = early_stopping.EarlyStopping.from_config(config.train.get("early_stopping"))
    if rule is not None:
        from unmask_jax.evaluate import METRIC_NAMES
        name = rule.metric.split("/")[-1]
        if name.removeprefix("raw_") not in METRIC_NAMES:
            raise ValueError(f"config.train.early_stopping.metric={rule.metric!r}: not an "
                             f"evaluation metric; choose one of {METRIC_NAMES} (raw_<name> for "
                             "the raw output, <variant>/<name> for a variant such as gt_mask)")
    for network in system.networks:
        optim.learning_rate_schedule(optim.network_settings(config.optim, network),
                                     steps_per_epoch=1)
    for key in ("log_every_steps", "sample_every_steps", "checkpoint_every_steps",
                "eval_every_steps", "batch_size"):
        if int(config.train[key]) <= 0:
            raise ValueError(f"config.train.{key}={config.train[key]} must be positive")
