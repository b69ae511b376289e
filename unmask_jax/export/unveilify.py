"""UnVeilify: Flax variables <-> the reference's PyTorch state dicts (pure numpy; no torch).

Targets (:mod:`unmask_jax.export.torch_unveilify`; at the reference's sizes the keys and
shapes are exactly ``keys/unveilify_mask_remover.txt`` / ``unveilify_discriminator.txt``):

- "unveilify_psp" -> ``PSPEncoder`` (keys as under ``psp_encoder.`` of ``MaskRemover``);
- "unveilify_generator" -> ``UNetStyleGAN`` (keys as under ``generator.``);
- "unveilify_discriminator" -> ``Discriminator`` (``model.{0,2,5,8,12}``);
- "unveilify_mask_remover" (both as one Flax network) -> ``MaskRemover``;
- :func:`export_unveilify` joins the first two into one ``MaskRemover`` state dict (what
  the reference's checkpoints hold as ``generator_state_dict``) and :func:`import_unveilify`
  splits one back.

Leaf conversions: conv kernels (kH, kW, in, out) -> (out, in, kH, kW); dense / equalized
linear kernels (in, out) -> (out, in); BatchNorm scale / bias / mean / var -> weight / bias /
running_mean / running_var (+ ``num_batches_tracked``); PReLU ``weight``, the style mix ``a``
(-> ``weights``), ToRGB ``bias`` unchanged; the blur ``smooth_kernel`` (3, 3) ->
``upsample.smooth.kernel`` (1, 1, 3, 3). Equalized weights are stored raw on both sides (the
1 / sqrt(fan_in) factor is applied in the forward pass), so they copy unchanged.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from unmask_jax.export.keymaps import (
    KEYMAPS, ExportError, KeyMap, TorchTarget, _as_numpy, _kw)

TORCH_MODULE = "unmask_jax.export.torch_unveilify"
REFERENCE = "hyoungjoojin/UnVeilify model/ (mirrored in unmask_jax.export.torch_unveilify)"
PSP, GENERATOR, DISCRIMINATOR = "unveilify_psp", "unveilify_generator", "unveilify_discriminator"
MASK_REMOVER = "unveilify_mask_remover"
#: MaskRemover parts: Flax submodule / torch prefix -> the part's model name.
MASK_REMOVER_PARTS = (("psp_encoder", PSP), ("generator", GENERATOR))
_INPUT = ("NCHW float32, RGB normalised with the ImageNet mean (0.485, 0.456, 0.406) and std "
          "(0.229, 0.224, 0.225)")
_STATS_SUFFIX = {"mean": "running_mean", "var": "running_var"}
_D_CONV = {0: "model.0", 1: "model.2", 2: "model.5", 3: "model.8", 4: "model.12"}


# ----------------------------------------------------------------------------------------
# Flax path -> (torch key, conversion kind).
# ----------------------------------------------------------------------------------------


def _bn_or_conv(prefix: str, leaf: str) -> tuple[str, str]:
    if leaf == "kernel":
        return f"{prefix}.weight", "conv"
    if leaf == "scale":
        return f"{prefix}.weight", "vec"
    if leaf in ("bias", "weight"):  # conv / BN bias, PReLU slope
        return f"{prefix}.{leaf}", "vec"
    if leaf in _STATS_SUFFIX:
        return f"{prefix}.{_STATS_SUFFIX[leaf]}", "vec"
    raise KeyError(leaf)


def _psp_key(path: tuple[str, ...]) -> tuple[str, str]:
    from unmask_jax.features.weights import _irse_module_to_torch  # the ArcFace IR-SE map

    *mods, leaf = path
    head = mods[0]
    if head.startswith(("input_", "body_")):
        return _bn_or_conv(_irse_module_to_torch(tuple(mods)), leaf)
    m = re.fullmatch(r"style_(\d+)", head)
    if m and len(mods) == 2:
        j = m.group(1)
        if mods[1] == "linear":
            if leaf == "kernel":
                return f"styles.{j}.linear.weight", "dense"
            return f"styles.{j}.linear.bias", "vec"
        k = re.fullmatch(r"(conv|norm)_(\d+)", mods[1])
        if k:
            idx = 3 * int(k.group(2)) + (0 if k.group(1) == "conv" else 1)
            return _bn_or_conv(f"styles.{j}.convs.{idx}", leaf)
    if head in ("latlayer1", "latlayer2") and len(mods) == 1:
        return _bn_or_conv(head, leaf)
    raise KeyError("/".join(path))


_DOWN = {"bn_0": "convolution.0", "conv_0": "convolution.2", "bn_1": "convolution.3",
         "conv_1": "convolution.5", "residual": "residual.0", "bn_out": "activation.0"}


def _style_key(prefix: str, rest: list[str], leaf: str, rgb: bool) -> tuple[str, str]:
    """Inside a StyleBlock (``rgb`` False) or ToRGB (``rgb`` True)."""
    if not rest:
        if leaf == "a" and not rgb:
            return f"{prefix}.weights", "vec"
        if leaf == "bias" and rgb:
            return f"{prefix}.bias", "vec"
    elif rest == ["to_style"]:
        if leaf == "kernel":
            return f"{prefix}.to_style.weight.weight", "dense"
        if leaf == "bias":
            return f"{prefix}.to_style.bias", "vec"
    elif rest == ["modulated_conv", "conv"] and leaf == "kernel":
        conv = "conv" if rgb else "weight_modulated_conv"
        return f"{prefix}.{conv}.weight.weight", "conv"
    elif rest in (["skip_conv"], ["skip_bn"]) and not rgb:
        return _bn_or_conv(f"{prefix}.convolutional.{0 if rest[0] == 'skip_conv' else 1}",
                           leaf)
    raise KeyError(leaf)


def _generator_key(path: tuple[str, ...]) -> tuple[str, str]:
    *mods, leaf = path
    if not mods and leaf == "smooth_kernel":
        return "upsample.smooth.kernel", "blur"
    head, rest = mods[0], list(mods[1:])
    m = re.fullmatch(r"down_(\d+)", head)
    if m and len(rest) == 1 and rest[0] in _DOWN:
        return _bn_or_conv(f"down_blocks.{m.group(1)}.{_DOWN[rest[0]]}", leaf)
    m = re.fullmatch(r"up_(\d+)_(conv|bn)", head)
    if m and not rest:
        return _bn_or_conv(
            f"multichannel_upsample.{m.group(1)}.{1 if m.group(2) == 'conv' else 2}", leaf)
    if head == "first_style_block":
        return _style_key("first_style_block", rest, leaf, rgb=False)
    if head == "first_to_rgb":
        return _style_key("first_toRGB", rest, leaf, rgb=True)
    m = re.fullmatch(r"block_(\d+)", head)
    if m and rest and rest[0] in ("style_block1", "style_block2", "to_rgb"):
        return _style_key(f"generator_blocks.{m.group(1)}.{rest[0]}", rest[1:], leaf,
                          rgb=rest[0] == "to_rgb")
    raise KeyError("/".join(path))


def _discriminator_key(path: tuple[str, ...]) -> tuple[str, str]:
    m = re.fullmatch(r"conv_(\d+)", path[0])
    if len(path) == 2 and m and int(m.group(1)) in _D_CONV:
        return _bn_or_conv(_D_CONV[int(m.group(1))], path[1])
    raise KeyError("/".join(path))


_KEY_FNS = {PSP: _psp_key, GENERATOR: _generator_key, DISCRIMINATOR: _discriminator_key}


def torch_key(model_name: str, path: tuple[str, ...]) -> tuple[str, str]:
    """(torch key, kind) of the Flax leaf at ``path`` (inside a collection); kind is one of
    'conv', 'dense', 'vec', 'blur'. ExportError for a path with no torch twin."""
    try:
        return _KEY_FNS[model_name](tuple(path))
    except (KeyError, IndexError):
        raise ExportError(f"{model_name}: no torch key for Flax variable "
                          f"{'/'.join(path)!r}") from None


def _to_torch(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "conv":
        if arr.ndim != 4:
            raise ExportError(f"expected a 4-D kernel, got shape {arr.shape}")
        return arr.transpose(3, 2, 0, 1)
    if kind == "dense":
        return arr.T
    if kind == "blur":
        return arr.reshape(1, 1, *arr.shape)
    return arr


def _to_torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if kind == "dense":
        return (shape[1], shape[0])
    if kind == "blur":
        return (1, 1, *shape)
    return tuple(shape)


def _from_torch(kind: str, arr: np.ndarray) -> np.ndarray:
    if kind == "conv":
        if arr.ndim != 4:
            raise ExportError(f"expected a 4-D weight, got shape {arr.shape}")
        return arr.transpose(2, 3, 1, 0)
    if kind == "dense":
        if arr.ndim != 2:
            raise ExportError(f"expected a 2-D weight, got shape {arr.shape}")
        return arr.T
    if kind == "blur":
        return arr.reshape(arr.shape[-2:]) if arr.ndim == 4 else arr
    return arr


def _leaves(model_name: str, variables: Mapping[str, Any]):
    """(collection, path, torch key, kind, leaf) for every Flax variable."""
    unknown = sorted(set(variables) - {"params", "batch_stats"})
    if unknown:
        raise ExportError(f"{model_name}: unexpected variable collections {unknown}")
    for collection in ("params", "batch_stats"):
        flat = traverse_util.flatten_dict(dict(variables.get(collection, {})))
        for path, leaf in sorted(flat.items()):
            key, kind = torch_key(model_name, path)
            yield collection, path, key, kind, leaf


def _bn_counters(model_name: str, variables: Mapping[str, Any]) -> list[str]:
    keys = []
    for collection, _, key, _, _ in _leaves(model_name, variables):
        if collection == "batch_stats" and key.endswith(".running_mean"):
            keys.append(key[: -len("running_mean")] + "num_batches_tracked")
    return keys


def flax_to_torch(model_name: str, model_kwargs: Mapping[str, Any],
                  variables: Mapping[str, Any], *, num_batches_tracked: int = 0
                  ) -> dict[str, np.ndarray]:
    """One UnVeilify network's Flax variables -> its torch state dict (float32 / int64)."""
    del model_kwargs
    out: dict[str, np.ndarray] = {}
    for _, _, key, kind, leaf in _leaves(model_name, variables):
        out[key] = np.ascontiguousarray(_to_torch(kind, np.asarray(leaf, np.float32)))
    for key in _bn_counters(model_name, variables):
        out[key] = np.asarray(num_batches_tracked, np.int64)
    return out


def torch_shapes(model_name: str, template: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The torch state dict's keys and shapes for Flax variables (or ``jax.eval_shape``
    structs) ``template``, without converting any array."""
    out = {key: _to_torch_shape(kind, tuple(leaf.shape))
           for _, _, key, kind, leaf in _leaves(model_name, template)}
    out.update({key: () for key in _bn_counters(model_name, template)})
    return out


def torch_to_flax(model_name: str, model_kwargs: Mapping[str, Any],
                  state_dict: Mapping[str, Any], template: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """A torch state dict -> Flax variables shaped / typed like ``template`` (arrays or
    ``jax.ShapeDtypeStruct``). ExportError naming the key for a missing or unexpected key, a
    shape mismatch or a blur kernel that is not the fixed [1, 2, 1] one."""
    del model_kwargs
    result: dict[str, dict[tuple[str, ...], np.ndarray]] = {}
    used = set(_bn_counters(model_name, template))
    for collection, path, key, kind, want in _leaves(model_name, template):
        if key not in state_dict:
            raise ExportError(f"{model_name}: state dict has no key {key!r} (needed for Flax "
                              f"{collection}/{'/'.join(path)})")
        got = _as_numpy(state_dict[key]).astype(np.float32)
        arr = _from_torch(kind, got)
        if tuple(arr.shape) != tuple(want.shape):
            raise ExportError(f"{model_name}: shape mismatch for {key!r}: torch "
                              f"{tuple(got.shape)} does not match Flax "
                              f"{collection}/{'/'.join(path)} {tuple(want.shape)}")
        if kind == "blur":
            from unmask_jax.models.unveilify import blur_kernel_init

            if not np.allclose(arr, np.asarray(blur_kernel_init(None, arr.shape)), atol=1e-7):
                raise ExportError(f"{model_name}: {key!r} is not the fixed [1, 2, 1] blur")
        result.setdefault(collection, {})[path] = np.ascontiguousarray(arr).astype(want.dtype)
        used.add(key)
    unexpected = sorted(k for k in state_dict if k not in used)
    if unexpected:
        raise ExportError(f"{model_name}: unexpected key(s) in state dict: {unexpected[:10]}"
                          + (" ..." if len(unexpected) > 10 else ""))
    return {c: traverse_util.unflatten_dict(flat) for c, flat in result.items()}


def _part(variables: Mapping[str, Any], part: str) -> dict[str, Any]:
    """The variables of MaskRemover submodule ``part`` (``psp_encoder`` / ``generator``)."""
    out = {}
    for collection, tree in variables.items():
        extra = sorted(set(tree) - {p for p, _ in MASK_REMOVER_PARTS})
        if extra:
            raise ExportError(f"{MASK_REMOVER}: unexpected Flax modules {extra} in {collection}")
        if part in tree:
            out[collection] = tree[part]
    return out


def mask_remover_to_torch(model_kwargs: Mapping[str, Any], variables: Mapping[str, Any], *,
                          num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
    """Flax :class:`~unmask_jax.models.unveilify.MaskRemover` variables -> the reference's
    ``MaskRemover`` state dict (``psp_encoder.*``, ``generator.*``)."""
    out = {}
    for part, model in MASK_REMOVER_PARTS:
        sd = flax_to_torch(model, model_kwargs, _part(variables, part),
                           num_batches_tracked=num_batches_tracked)
        out.update({f"{part}.{k}": v for k, v in sd.items()})
    return out


def mask_remover_from_torch(model_kwargs: Mapping[str, Any], state_dict: Mapping[str, Any],
                            template: Mapping[str, Any]) -> dict[str, Any]:
    """A ``MaskRemover`` state dict (a ``module.`` prefix is accepted) -> Flax variables."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in state_dict.items()}
    stray = sorted(k for k in sd if not k.startswith(tuple(f"{p}." for p, _ in
                                                          MASK_REMOVER_PARTS)))
    if stray:
        raise ExportError(f"{MASK_REMOVER}: unexpected key(s) in state dict: {stray[:10]}")
    out: dict[str, dict[str, Any]] = {}
    for part, model in MASK_REMOVER_PARTS:
        sub = {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
        for collection, tree in torch_to_flax(model, model_kwargs, sub,
                                              _part(template, part)).items():
            out.setdefault(collection, {})[part] = tree
    return out


def mask_remover_torch_shapes(template: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    out = {}
    for part, model in MASK_REMOVER_PARTS:
        out.update({f"{part}.{k}": v
                    for k, v in torch_shapes(model, _part(template, part)).items()})
    return out


# ----------------------------------------------------------------------------------------
# Targets (torch class + constructor arguments) and registration.
# ----------------------------------------------------------------------------------------


def _psp_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    from unmask_jax.models.irse import IRSE_LAYERS, STAGE_WIDTHS

    blocks = _kw(kw, "blocks", None)
    args = {
        "in_channels": int(params["input_conv"]["kernel"].shape[2]),
        "num_layers": int(_kw(kw, "num_layers", 50)),
        "mode": "ir_se",
        "n_styles": sum(1 for n in params if n.startswith("style_")),
        "input_resolution": int(_kw(kw, "input_resolution", 256)),
        "blocks": [int(b) for b in (blocks if blocks is not None
                                    else IRSE_LAYERS[int(_kw(kw, "num_layers", 50))])],
        "widths": [int(v) for v in _kw(kw, "widths", STAGE_WIDTHS)],
        "style_dim": int(params["style_0"]["linear"]["kernel"].shape[1]),
    }
    return TorchTarget("PSPEncoder", args, REFERENCE, module=TORCH_MODULE)


def _generator_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    args = {
        "image_resolution": int(_kw(kw, "resolution", 256)),
        "in_channels": int(params["down_0"]["conv_0"]["kernel"].shape[2]),
        "latent_dim": int(params["first_to_rgb"]["to_style"]["kernel"].shape[0]),
        "base_width": int(_kw(kw, "base_width", 32)),
        "max_width": int(_kw(kw, "max_width", 256)),
    }
    return TorchTarget("UNetStyleGAN", args, REFERENCE, module=TORCH_MODULE)


def _discriminator_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k = params["conv_0"]["kernel"].shape  # (4, 4, 2 * in, ndf)
    if k[2] % 2:
        raise ExportError(f"unveilify_discriminator: {k[2]} input channels is not 2 x image")
    return TorchTarget("Discriminator", {"in_channels": int(k[2]) // 2, "ndf": int(k[3])},
                       REFERENCE, module=TORCH_MODULE)


def _mask_remover_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    from unmask_jax.models.irse import STAGE_WIDTHS

    res = int(_kw(kw, "resolution", 256))
    args: dict[str, Any] = {"output_resolution": res,
                            "latent_dim": int(_kw(kw, "latent_dim", 512)),
                            "generator_arch": "UNetStyleGAN"}
    if _kw(kw, "psp_blocks", None) is not None:
        args["psp_blocks"] = [int(b) for b in kw["psp_blocks"]]
    div = int(_kw(kw, "psp_width_div", 1))
    if div != 1:
        args["psp_widths"] = [w // div for w in STAGE_WIDTHS]
    div = int(_kw(kw, "generator_width_div", 1))
    if div != 1:
        args["generator_base_width"] = 32 // div
        args["generator_max_width"] = 256 // div
    if int(params["psp_encoder"]["input_conv"]["kernel"].shape[2]) != 3:
        raise ExportError(f"{MASK_REMOVER}: the reference's pSp encoder takes 3 channels")
    return TorchTarget("MaskRemover", args, REFERENCE, module=TORCH_MODULE)


def _register() -> None:
    KEYMAPS[MASK_REMOVER] = KeyMap(
        lambda kw, names: (lambda n: n), _mask_remover_target,
        "forward(masked_image, identity_image), both " + _INPUT
        + "; output in the same normalised space",
        to_torch=lambda kw, v, nbt: mask_remover_to_torch(kw, v, num_batches_tracked=nbt),
        from_torch=mask_remover_from_torch)
    for name, target, desc in (
            (PSP, _psp_target, "identity image: " + _INPUT),
            (GENERATOR, _generator_target,
             "forward(masked_image, w): masked image " + _INPUT + "; w (N, n_styles, 512) "
             "from the pSp encoder; output in the same normalised space"),
            (DISCRIMINATOR, _discriminator_target,
             "forward(image, identity_image), both " + _INPUT + "; returns sigmoid "
             "probabilities (the Flax module returns logits)")):
        KEYMAPS[name] = KeyMap(
            lambda kw, names, _n=name: (lambda n: n), target, desc,
            to_torch=lambda kw, v, nbt, _n=name: flax_to_torch(_n, kw, v,
                                                               num_batches_tracked=nbt),
            from_torch=lambda kw, sd, t, _n=name: torch_to_flax(_n, kw, sd, t))


_register()


# ----------------------------------------------------------------------------------------
# MaskRemover = pSp encoder + generator in one state dict.
# ----------------------------------------------------------------------------------------


def _roles(variables_by_network: Mapping[str, Any],
           model_names: Mapping[str, str] | None) -> dict[str, str]:
    """Model name (MASK_REMOVER or PSP + GENERATOR, DISCRIMINATOR) -> network name."""
    for network, v in variables_by_network.items():
        if ((model_names or {}).get(network) == MASK_REMOVER
                or "psp_encoder" in v.get("params", {})):
            roles = {MASK_REMOVER: network}
            rest = {n: x for n, x in variables_by_network.items() if n != network}
            rest_names = None if model_names is None else {
                n: m for n, m in model_names.items() if n != network}
            d = _roles(rest, rest_names).get(DISCRIMINATOR)
            if d is not None:
                roles[DISCRIMINATOR] = d
            return roles
    if model_names is None:
        defaults = {PSP: ("psp", "psp_encoder", "encoder"), GENERATOR: ("generator",),
                    DISCRIMINATOR: ("discriminator",)}
        roles = {}
        for model, candidates in defaults.items():
            for c in candidates:
                if c in variables_by_network:
                    roles[model] = c
                    break
        return roles
    roles = {}
    for network, model in model_names.items():
        if model in (PSP, GENERATOR, DISCRIMINATOR) and network in variables_by_network:
            roles[model] = network
    return roles


def export_unveilify(variables_by_network: Mapping[str, Mapping[str, Any]], *,
                     model_names: Mapping[str, str] | None = None,
                     num_batches_tracked: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """UnVeilify's Flax variables -> the reference's two state dicts:
    ``{"mask_remover": MaskRemover state dict, "discriminator": Discriminator state dict}``
    (the discriminator only when given).

    ``variables_by_network``: network name -> ``{"params", "batch_stats"}``. Which network
    is which comes from ``model_names`` (network -> registry name, e.g. a system's
    ``export_networks()`` names), else from the names "psp" / "psp_encoder" / "encoder",
    "generator" and "discriminator"."""
    roles = _roles(variables_by_network, model_names)
    out: dict[str, dict[str, np.ndarray]] = {"mask_remover": {}}
    if MASK_REMOVER in roles:
        out["mask_remover"] = mask_remover_to_torch(
            {}, variables_by_network[roles[MASK_REMOVER]],
            num_batches_tracked=num_batches_tracked)
    elif PSP in roles and GENERATOR in roles:
        for model, prefix in ((PSP, "psp_encoder."), (GENERATOR, "generator.")):
            sd = flax_to_torch(model, {}, variables_by_network[roles[model]],
                               num_batches_tracked=num_batches_tracked)
            out["mask_remover"].update({prefix + k: v for k, v in sd.items()})
    else:
        raise ExportError(f"export_unveilify needs the MaskRemover (or the pSp encoder and "
                          f"the generator); got networks {sorted(variables_by_network)}")
    if DISCRIMINATOR in roles:
        out["discriminator"] = flax_to_torch(DISCRIMINATOR, {},
                                             variables_by_network[roles[DISCRIMINATOR]],
                                             num_batches_tracked=num_batches_tracked)
    return out


def import_unveilify(state_dicts: Mapping[str, Mapping[str, Any]],
                     templates_by_network: Mapping[str, Mapping[str, Any]], *,
                     model_names: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The reverse of :func:`export_unveilify`: ``{"mask_remover": sd[, "discriminator":
    sd]}`` (e.g. a reference checkpoint's ``generator_state_dict`` / ``discriminator_state_
    dict``) -> Flax variables per network, shaped like ``templates_by_network``."""
    roles = _roles(templates_by_network, model_names)
    out = {}
    if "mask_remover" in state_dicts and MASK_REMOVER in roles:
        out[roles[MASK_REMOVER]] = mask_remover_from_torch(
            {}, state_dicts["mask_remover"], templates_by_network[roles[MASK_REMOVER]])
    elif "mask_remover" in state_dicts:
        if PSP not in roles or GENERATOR not in roles:
            raise ExportError("import_unveilify: templates for the pSp encoder and the "
                              f"generator are needed; got {sorted(templates_by_network)}")
        sd = {k[len("module."):] if k.startswith("module.") else k: v
              for k, v in state_dicts["mask_remover"].items()}
        stray = sorted(k for k in sd if not k.startswith(("psp_encoder.", "generator.")))
        if stray:
            raise ExportError(f"import_unveilify: unexpected MaskRemover key(s) {stray[:10]}")
        for model, prefix in ((PSP, "psp_encoder."), (GENERATOR, "generator.")):
            part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            out[roles[model]] = torch_to_flax(model, {}, part,
                                              templates_by_network[roles[model]])
    if "discriminator" in state_dicts:
        if DISCRIMINATOR not in roles:
            raise ExportError("import_unveilify: no discriminator template")
        out[roles[DISCRIMINATOR]] = torch_to_flax(DISCRIMINATOR, {},
                                                  state_dicts["discriminator"],
                                                  templates_by_network[roles[DISCRIMINATOR]])
    return out


def mask_remover_constructor_args(psp_kwargs: Mapping[str, Any],
                                  generator_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``MaskRemover`` keyword arguments for these Flax model kwargs (reference defaults
    are omitted, so the reference configuration gives ``{}``-like arguments)."""
    from unmask_jax.models.irse import IRSE_LAYERS, STAGE_WIDTHS
    from unmask_jax.models.unveilify import n_styles_for

    res = int(_kw(generator_kwargs, "resolution", 256))
    latent = int(_kw(generator_kwargs, "latent_dim", 512))
    got = {"input_resolution": int(_kw(psp_kwargs, "input_resolution", 256)),
           "n_styles": int(_kw(psp_kwargs, "n_styles", 14)),
           "latent_dim": int(_kw(psp_kwargs, "latent_dim", 512)),
           "num_layers": int(_kw(psp_kwargs, "num_layers", 50))}
    want = {"input_resolution": res, "n_styles": n_styles_for(res), "latent_dim": latent,
            "num_layers": 50}
    if got != want:
        raise ExportError(f"MaskRemover needs a pSp encoder with {want} (from the generator's "
                          f"resolution {res} and latent_dim {latent}); got {got}")
    args: dict[str, Any] = {"output_resolution": res, "latent_dim": latent,
                            "generator_arch": "UNetStyleGAN"}
    blocks = _kw(psp_kwargs, "blocks", None)
    if blocks is not None and tuple(blocks) != IRSE_LAYERS[50]:
        args["psp_blocks"] = [int(b) for b in blocks]
    widths = tuple(_kw(psp_kwargs, "widths", STAGE_WIDTHS))
    if widths != STAGE_WIDTHS:
        args["psp_widths"] = [int(v) for v in widths]
    if int(_kw(generator_kwargs, "base_width", 32)) != 32:
        args["generator_base_width"] = int(generator_kwargs["base_width"])
    if int(_kw(generator_kwargs, "max_width", 256)) != 256:
        args["generator_max_width"] = int(generator_kwargs["max_width"])
    return args


__all__ = ["export_unveilify", "import_unveilify", "flax_to_torch", "torch_to_flax",
           "torch_shapes", "torch_key", "mask_remover_constructor_args",
           "mask_remover_to_torch", "mask_remover_from_torch", "mask_remover_torch_shapes"]
