"""Pretrained feature networks that work offline: VGG16/19 features, LPIPS, ArcFace
(IResNet-50/100, IR-SE50) and dlib's face-recognition ResNet, plus the perceptual loss,
identity loss and the ``lpips`` / ``id_sim`` metrics built on them.

No weights are downloaded: see :mod:`unmask_jax.features.weights` for where each comes from.
"""

from unmask_jax.features.identity import (IdentityNet, identity_loss, identity_similarity,
                                          load_identity_net)
from unmask_jax.features.lpips import (LPIPS, load_lpips, lpips_distance, lpips_distance_masked,
                                      lpips_variable_shapes)
from unmask_jax.features.perceptual import (PerceptualConfig, load_perceptual_variables,
                                            perceptual_loss, perceptual_variable_shapes)
from unmask_jax.features.weights import MissingWeightsError

__all__ = [
    "IdentityNet", "identity_loss", "identity_similarity", "load_identity_net",
    "LPIPS", "load_lpips", "lpips_distance", "lpips_distance_masked", "lpips_variable_shapes",
    "PerceptualConfig", "load_perceptual_variables", "perceptual_loss",
    "perceptual_variable_shapes",
    "MissingWeightsError",
]
