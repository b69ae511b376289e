"""``--mode=predict``: unmask the faces in users' photos.

    python -m unmask_jax.main --mode=predict --input=PATH --output=OUT   # starter weights
    python -m unmask_jax.main --mode=predict --weights=DIR --input=PATH --output=OUT
    python -m unmask_jax.main --config=CFG --workdir=DIR --mode=predict --input=PATH --output=OUT

Modules: ``io`` (listing, decoding any common image upright in its own channel layout,
writing in the input's format), ``faces`` (detection seam, training-geometry framing,
feathered paste-back), ``model`` (run/geometry/mask-map resolution, jitted batched
inference), ``runner`` (the loop, ``report.json``, progress; ``Predictor.unmask``: one
image in memory, as the loop does it, for the demo page). Settings: ``config.predict``
(``configs/default.py``).
"""
from unmask_jax.predict.model import PredictModel, PredictSetupError
from unmask_jax.predict.runner import (STAGES, PredictInterrupted, PredictOptions, Predictor,
                                       Unmasked, predict)

__all__ = ["PredictInterrupted", "PredictModel", "PredictOptions", "PredictSetupError",
           "Predictor", "STAGES", "Unmasked", "predict"]
