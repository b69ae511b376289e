"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``) in Flax.

The network is built from the layers that :mod:`dlib_serialize` reads out of the ``.dat``
file: kinds, filter counts, kernel sizes, strides and paddings all come from the file. dlib
does not store which tag a ``tag``/``skip`` wrapper refers to, so the residual wiring is
recovered from where the wrappers sit, following dlib's two residual templates
(``dnn_face_recognition_ex.cpp``):

* ``add_prev1<block<tag1<x>>>``                                   -> marker, block, add_prev
* ``add_prev2<avg_pool<skip1<tag2<block<tag1<x>>>>>>``             -> marker, block, marker,
  marker, avg_pool, add_prev

Any other arrangement is rejected. ``add_prev`` follows dlib's ``tt::add``: when the two
tensors differ in size the output takes the larger size in every dimension and the smaller
tensor is zero-padded at the end (this happens in the real model: a 3x3 stride-2 unpadded
conv gives 3x3 where the 2x2 average pool gives 4x4).

Input: aligned 150x150 RGB face chips in [-1, 1], NHWC. dlib's ``input_rgb_image_sized``
computes ``(pixel - mean) / 256`` on 0..255 pixels with the means stored in the file
(122.782, 117.001, 104.298). Output: the 128-d descriptor (not normalised, as dlib returns it).

``DlibResNet(spec, dtype=...)`` computes in ``dtype`` (e.g. ``jnp.bfloat16``): the input
normalisation is float32 and then cast; convolutions and the fc layer run in ``dtype`` with
float32 parameters cast inside; the affine layers (dlib's folded batch norms) compute in
float32 and cast back to ``dtype``; the descriptor is returned in float32. The default
float32 gives the original results bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from unmask_jax.features.dlib_serialize import DlibFormatError, DlibLayer

Op = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class DlibNetSpec:
    """Static description of a dlib metric network: a program of ops plus input stats.

    Ops (tuples, first element the op name):
      ("conv", name, features, (kh, kw), (sy, sx), (py, px)), ("affine", name),
      ("relu",), ("max_pool", (kh, kw), (sy, sx), (py, px)),
      ("avg_pool", (kh, kw), (sy, sx)), ("global_avg_pool",), ("save", slot),
      ("restore", slot), ("add", slot), ("fc", name, features, use_bias).
    """

    program: tuple[Op, ...]
    mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]


def _marker_roles(layers: list[DlibLayer]) -> dict[int, Op]:
    """Assigns save/restore roles to the tag/skip markers; returns {layer index: op}."""
    roles: dict[int, Op] = {}
    pending: list[int] = []
    for i, layer in enumerate(layers):
        if layer.kind == "marker":
            pending.append(i)
        elif layer.kind == "add_prev":
            if len(pending) == 1:
                roles[pending[0]] = ("save", "x")
                roles[i] = ("add", "x")
            elif (len(pending) == 3 and pending[2] == pending[1] + 1
                  and all(layers[j].kind in ("avg_pool", "max_pool")
                          for j in range(pending[2] + 1, i))):
                roles[pending[0]] = ("save", "x")
                roles[pending[1]] = ("save", "y")
                roles[pending[2]] = ("restore", "x")
                roles[i] = ("add", "y")
            else:
                raise DlibFormatError(
                    f"unrecognised tag/skip arrangement before layer {i}: markers at {pending}")
            pending = []
    if pending:
        raise DlibFormatError(f"tag/skip markers without an add_prev: {pending}")
    return roles


def build_dlib_net(layers: list[DlibLayer]) -> tuple[DlibNetSpec, dict[str, Any]]:
    """Turns parsed dlib layers into (static spec, Flax ``params`` collection).

    Conv kernels go from dlib's (out, in, kh, kw) to Flax (kh, kw, in, out); fc weights are
    dlib's (num_inputs, num_outputs) matrix, used as ``x @ W``.
    """
    if not layers or layers[0].kind != "input_rgb_image_sized":
        raise DlibFormatError("the first layer must be input_rgb_image_sized")
    inp = layers[0].fields
    roles = _marker_roles(layers)
    program: list[Op] = []
    params: dict[str, Any] = {}
    for i, layer in enumerate(layers[1:], start=1):
        name = f"{layer.kind}_{i:03d}"
        f = layer.fields
        if layer.kind == "con":
            w = layer.arrays["filters"]
            params[name] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                            "bias": layer.arrays["biases"].copy()}
            program.append(("conv", name, int(f["num_filters"]), (int(f["nr"]), int(f["nc"])),
                            (int(f["stride_y"]), int(f["stride_x"])),
                            (int(f["padding_y"]), int(f["padding_x"]))))
        elif layer.kind == "affine":
            g, b = layer.arrays["gamma"], layer.arrays["beta"]
            if g.shape[0] != 1 or g.shape[2:] != (1, 1):
                raise DlibFormatError(f"affine layer {i}: only per-channel mode is supported")
            params[name] = {"scale": g.reshape(-1).copy(), "bias": b.reshape(-1).copy()}
            program.append(("affine", name))
        elif layer.kind == "relu":
            program.append(("relu",))
        elif layer.kind in ("max_pool", "avg_pool"):
            win = (int(f["nr"]), int(f["nc"]))
            stride = (int(f["stride_y"]), int(f["stride_x"]))
            pad = (int(f["padding_y"]), int(f["padding_x"]))
            if layer.kind == "avg_pool" and win == (0, 0):
                program.append(("global_avg_pool",))
            elif layer.kind == "avg_pool":
                if pad != (0, 0):
                    raise DlibFormatError(f"avg_pool layer {i}: padding is not supported")
                program.append(("avg_pool", win, stride))
            else:
                if win == (0, 0):
                    raise DlibFormatError(f"max_pool layer {i}: global max pool unsupported")
                program.append(("max_pool", win, stride, pad))
        elif layer.kind in ("marker", "add_prev"):
            program.append(roles[i])
        elif layer.kind == "fc":
            w = layer.arrays["weights"]
            p = {"kernel": w.copy()}
            if "biases" in layer.arrays:
                p["bias"] = layer.arrays["biases"].copy()
            params[name] = p
            program.append(("fc", name, int(f["num_outputs"]), "biases" in layer.arrays))
        elif layer.kind == "loss_metric":
            continue
        else:
            raise DlibFormatError(f"layer {i}: unsupported kind {layer.kind!r}")
    spec = DlibNetSpec(program=tuple(program),
                       mean_rgb=(float(inp["avg_red"]), float(inp["avg_green"]),
                                 float(inp["avg_blue"])),
                       input_size=(int(inp["nr"]), int(inp["nc"])))
    return spec, params


def pad_add(a: jax.Array, b: jax.Array) -> jax.Array:
    """dlib's ``tt::add`` of two NHWC tensors: zero-pad both (at the end) to the max size."""
    shape = tuple(max(x, y) for x, y in zip(a.shape, b.shape))

    def grow(t: jax.Array) -> jax.Array:
        if t.shape == shape:
            return t
        return jnp.pad(t, [(0, s - d) for d, s in zip(t.shape, shape)])

    return grow(a) + grow(b)


class _Affine(nn.Module):
    """Per-channel ``x * scale + bias`` computed in float32, returned in ``x``'s dtype."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return (x.astype(jnp.float32) * scale + bias).astype(x.dtype)


class DlibResNet(nn.Module):
    """Runs a :class:`DlibNetSpec` program. Input NHWC in [-1, 1] at ``spec.input_size``."""

    spec: DlibNetSpec
    dtype: Any = jnp.float32  # compute dtype; parameters and the descriptor are float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        pixels = (images.astype(jnp.float32) + 1.0) * 127.5
        x = (pixels - jnp.asarray(self.spec.mean_rgb, jnp.float32)) / 256.0
        x = x.astype(self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=jnp.float32)
        saved: dict[str, jax.Array] = {}
        channels = x.shape[-1]
        for op in self.spec.program:
            kind = op[0]
            if kind == "conv":
                _, name, feats, ksize, stride, pad = op
                x = nn.Conv(feats, ksize, strides=stride,
                            padding=((pad[0], pad[0]), (pad[1], pad[1])), name=name,
                            **kw)(x)
                channels = feats
            elif kind == "affine":
                x = _Affine(channels, name=op[1])(x)
            elif kind == "relu":
                x = nn.relu(x)
            elif kind == "max_pool":
                _, win, stride, pad = op
                x = nn.max_pool(x, win, strides=stride,
                                padding=((pad[0], pad[0]), (pad[1], pad[1])))
            elif kind == "avg_pool":
                x = nn.avg_pool(x, op[1], strides=op[2], padding="VALID")
            elif kind == "global_avg_pool":
                x = jnp.mean(x, axis=(1, 2))
            elif kind == "save":
                saved[op[1]] = x
            elif kind == "restore":
                x = saved[op[1]]
                channels = x.shape[-1]
            elif kind == "add":
                x = pad_add(x, saved[op[1]])
                channels = x.shape[-1]
            elif kind == "fc":
                _, name, feats, use_bias = op
                x = x.reshape(x.shape[0], -1)
                x = nn.Dense(feats, use_bias=use_bias, name=name, **kw)(x)
            else:  # pragma: no cover - build_dlib_net emits only the ops above
                raise ValueError(f"unknown op {op}")
        return x.astype(jnp.float32)


def load_dlib_face_net(path: str, dtype: Any = jnp.float32
                       ) -> tuple[DlibResNet, dict[str, Any]]:
    """Reads a dlib face-recognition ``.dat`` file; returns (module, variables). ``dtype``:
    the module's compute dtype (the variables are float32)."""
    from unmask_jax.features.dlib_serialize import read_dlib_network_file

    spec, params = build_dlib_net(read_dlib_network_file(path))
    variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}
    return DlibResNet(spec, dtype=dtype), variables


def dlib_variable_shapes(module: DlibResNet) -> dict[str, Any]:
    """The shapes (``jax.ShapeDtypeStruct``, float32) of ``module``'s variables, from
    ``jax.eval_shape`` of its init at the spec's input size (the fc input depends on it)."""
    probe = jax.ShapeDtypeStruct((1, *module.spec.input_size, 3), jnp.float32)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), probe)
