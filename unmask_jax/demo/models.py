"""The demo's models: weights folders and runs loaded as ``--mode=predict`` loads them.

Each folder gets the config predict would use (``run_config.for_mode``: a weights folder's
or run's recorded config, with ``predict.*`` from the command line), checked as predict
checks it, and one :class:`~unmask_jax.predict.Predictor` that keeps the model and its
compiled programs for every photo of the session. The page gives the mask and identity
images, so ``predict.mask`` and ``predict.identity`` are cleared.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from unmask_jax.predict import Predictor

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoModel:
    """One model the page offers: its label in the model choice and its predictor."""

    label: str
    folder: str
    predictor: Predictor

    @property
    def needs_identity(self) -> bool:
        """The system conditions on another photo of the person (UnVeilify)."""
        return bool(self.predictor.model.needs_identity)

    @property
    def system(self) -> str:
        return str(self.predictor.model.system.name)


def model_config(config, folder: str, max_pixels: int):
    """The config predict runs ``folder`` (a weights folder or a run) with, for the demo:
    no mask or identity paths, ``predict.max_pixels`` set to ``max_pixels``."""
    from unmask_jax import run_config, validation
    config = run_config.for_mode(config, folder, "predict").copy_and_resolve_references()
    with config.unlocked():
        config.predict.mask = None
        config.predict.identity = None
        config.predict.max_pixels = int(max_pixels)
    validation.validate_config(config, "predict")
    return config


def _label(folder: str, kind: str) -> str:
    """A short name for the model choice: the folder (relative to the current directory
    when inside it) and what it is."""
    rel = os.path.relpath(os.path.abspath(folder))
    name = folder if rel.startswith("..") else rel
    return f"{name} ({kind})"


def load_models(weights: list[str], workdirs: list[str], config, max_pixels: int
                ) -> list[DemoModel]:
    """Every weights folder, then every run, loaded (a folder given twice once). Raises
    predict's setup errors (``PredictSetupError``, ``CheckpointError``, ...) for a folder
    that cannot be used."""
    from unmask_jax.export import io as export_io
    models: list[DemoModel] = []
    seen: set[str] = set()
    for folder, is_weights in [(w, True) for w in weights] + [(w, False) for w in workdirs]:
        key = os.path.realpath(folder)
        if key in seen:
            continue
        seen.add(key)
        if is_weights and not export_io.is_weights_folder(folder):
            raise FileNotFoundError(f"--weights={folder}: not a weights folder (it needs the "
                                    "manifest.json and .safetensors that --mode=export writes)")
        log.info("demo: loading %s", folder)
        predictor = Predictor(model_config(config, folder, max_pixels), folder,
                              progress=False, identity_per_call=True)
        kind = predictor.model.system.name + ("" if is_weights else " run")
        models.append(DemoModel(label=_label(folder, kind), folder=folder,
                                predictor=predictor))
    return models
