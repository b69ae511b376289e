"""Flax variables <-> PyTorch state dicts, per network (pure numpy; no torch import).

Each exportable model has a *name map* (Flax top-level submodule name -> torch module
prefix) and a *constructor* (the torch class and its arguments, derived from the Flax
variables and model kwargs). Leaf conversion is generic:

- a submodule with a ``kernel`` is a convolution: ``kernel`` -> ``weight`` with
  ``transpose(3, 2, 0, 1)``. This one transpose serves both kinds: Conv kernels are
  (kH, kW, in, out) -> torch (out, in, kH, kW); ConvTranspose kernels are stored as
  (kH, kW, out, in) -> torch (in, out, kH, kW) (no spatial flip, see
  ``unmask_jax.models.layers.ConvTranspose``). ``bias`` -> ``bias``.
- a submodule with ``scale`` or batch statistics is a BatchNorm: ``scale`` -> ``weight``,
  ``bias`` -> ``bias``, ``batch_stats/mean`` -> ``running_mean``, ``batch_stats/var`` ->
  ``running_var``, plus ``num_batches_tracked`` (int64 scalar; the export writes the
  training step, the import ignores it). The project's BatchNorm already updates ``var``
  with the unbiased batch variance (torch's and Keras' convention), so running_var is
  copied unchanged.
- InstanceNorm (affine False) has no variables on either side.

Every array is exported as contiguous float32 (bfloat16 checkpoints included).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import numpy as np

NameMap = Callable[[str], str]

CANONICAL_PIX2PIX = "junyanz/pytorch-CycleGAN-and-pix2pix models/networks.py"
PROJECT_TORCH_MODULES = "unmask_jax.export.torch_modules"


class ExportError(ValueError):
    """A network cannot be exported/imported (no mapping, bad shapes, missing keys)."""


@dataclasses.dataclass(frozen=True)
class TorchTarget:
    """What an exported state dict loads into."""

    torch_class: str  # class name in ``module``
    constructor_args: dict[str, Any]  # JSON-serialisable keyword arguments
    reference: str  # where the class comes from (canonical repo or the project)
    module: str = "unmask_jax.export.torch_modules"  # the project module defining the class


# ----------------------------------------------------------------------------------------
# Name maps.
# ----------------------------------------------------------------------------------------


def _unet_prefix(level: int) -> str:
    """Torch prefix of the ``nn.Sequential`` of U-Net level ``level`` (0 = outermost)."""
    if level == 0:
        return "model.model."
    return "model.model.1.model." + "3.model." * (level - 1)


def pix2pix_unet_name_map(num_downs: int) -> NameMap:
    """Flax ``UnetGenerator`` names -> canonical ``UnetGenerator`` prefixes."""
    innermost = num_downs - 1

    def name_map(name: str) -> str:
        m = re.fullmatch(r"(down|up)_(conv|norm)_(\d+)", name)
        if not m or int(m.group(3)) > innermost:
            raise ExportError(f"pix2pix_unet: no torch key for Flax module {name!r}")
        side, kind, d = m.group(1), m.group(2), int(m.group(3))
        p = _unet_prefix(d)
        if side == "down":
            if kind == "conv":
                return "model.model.0" if d == 0 else p + "1"
            if 0 < d < innermost:
                return p + "2"
        else:
            if kind == "conv":
                return "model.model.3" if d == 0 else p + ("3" if d == innermost else "5")
            if d > 0:
                return p + ("4" if d == innermost else "6")
        raise ExportError(f"pix2pix_unet: no torch key for Flax module {name!r}")

    return name_map


def patchgan_name_map(n_layers: int) -> NameMap:
    """Flax ``PatchGANDiscriminator`` names -> canonical ``NLayerDiscriminator`` prefixes."""

    def name_map(name: str) -> str:
        m = re.fullmatch(r"(conv|norm)_(\d+)", name)
        if m:
            kind, j = m.group(1), int(m.group(2))
            if kind == "conv" and j == 0:
                return "model.0"
            if kind == "conv" and 1 <= j <= n_layers + 1:
                return f"model.{3 * j - 1}"
            if kind == "norm" and 1 <= j <= n_layers:
                return f"model.{3 * j}"
        raise ExportError(f"patchgan: no torch key for Flax module {name!r}")

    return name_map


def tf_name_map(name: str) -> str:
    """Flax TF-tutorial names -> the project's torch module prefixes (both networks)."""
    m = re.fullmatch(r"(down|up)_(conv|norm)_(\d+)", name)
    if m:
        return f"{m.group(1)}.{m.group(3)}.{m.group(2)}"
    if name in ("conv", "norm", "last"):
        return name
    raise ExportError(f"tf_pix2pix: no torch key for Flax module {name!r}")


# ----------------------------------------------------------------------------------------
# Per-model targets.
# ----------------------------------------------------------------------------------------


def _kw(model_kwargs: Mapping[str, Any], key: str, default: Any) -> Any:
    return model_kwargs.get(key, default)


def _count(names: list[str], pattern: str) -> int:
    return sum(1 for n in names if re.fullmatch(pattern, n))


def _check_close(model_name: str, what: str, value: float, expected: float) -> None:
    if abs(float(value) - expected) > 1e-12:
        raise ExportError(
            f"{model_name}: {what}={value} cannot be represented by the target PyTorch class "
            f"(expects {expected})")


_NORM_LAYERS = {"batch": "BatchNorm2d", "instance": "InstanceNorm2d", "none": "none"}


def _pix2pix_unet_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    norm = _kw(kw, "norm", "batch")
    if norm not in _NORM_LAYERS:
        raise ExportError(f"pix2pix_unet: unknown norm {norm!r}")
    _check_close("pix2pix_unet", "bn_epsilon", _kw(kw, "bn_epsilon", 1e-5), 1e-5)
    _check_close("pix2pix_unet", "dropout_rate", _kw(kw, "dropout_rate", 0.5), 0.5)
    k_in = params["down_conv_0"]["kernel"].shape  # (4, 4, in, ngf)
    k_out = params["up_conv_0"]["kernel"].shape  # (4, 4, out, 2 * ngf)
    args = {
        "input_nc": int(k_in[2]),
        "output_nc": int(k_out[2]),
        "num_downs": _count(list(params), r"down_conv_\d+"),
        "ngf": int(k_in[3]),
        "norm_layer": _NORM_LAYERS[norm],
        "use_dropout": bool(_kw(kw, "use_dropout", True)),
    }
    return TorchTarget("UnetGenerator", args, CANONICAL_PIX2PIX)


def _patchgan_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    norm = _kw(kw, "norm", "batch")
    if norm not in _NORM_LAYERS:
        raise ExportError(f"patchgan: unknown norm {norm!r}")
    _check_close("patchgan", "bn_epsilon", _kw(kw, "bn_epsilon", 1e-5), 1e-5)
    k = params["conv_0"]["kernel"].shape  # (4, 4, in, ndf)
    args = {
        "input_nc": int(k[2]),
        "ndf": int(k[3]),
        "n_layers": _count(list(params), r"conv_\d+") - 2,
        "norm_layer": _NORM_LAYERS[norm],
    }
    return TorchTarget("NLayerDiscriminator", args, CANONICAL_PIX2PIX)


def _tf_unet_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k_in = params["down_conv_0"]["kernel"].shape
    args = {
        "input_nc": int(k_in[2]),
        "output_nc": int(params["last"]["kernel"].shape[2]),
        "num_downs": _count(list(params), r"down_conv_\d+"),
        "ngf": int(k_in[3]),
        "use_dropout": bool(_kw(kw, "use_dropout", True)),
        "dropout_rate": float(_kw(kw, "dropout_rate", 0.5)),
        "num_dropout_blocks": int(_kw(kw, "num_dropout_blocks", 3)),
        "leaky_slope": float(_kw(kw, "leaky_slope", 0.3)),
        "bn_momentum": float(_kw(kw, "bn_momentum", 0.99)),
        "bn_epsilon": float(_kw(kw, "bn_epsilon", 1e-3)),
    }
    return TorchTarget("TFUnetGenerator", args, PROJECT_TORCH_MODULES)


def _tf_patchgan_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k = params["down_conv_0"]["kernel"].shape
    args = {
        "input_nc": int(k[2]),
        "ndf": int(k[3]),
        "leaky_slope": float(_kw(kw, "leaky_slope", 0.3)),
        "bn_momentum": float(_kw(kw, "bn_momentum", 0.99)),
        "bn_epsilon": float(_kw(kw, "bn_epsilon", 1e-3)),
    }
    return TorchTarget("TFPatchGANDiscriminator", args, PROJECT_TORCH_MODULES)


def _pix2pix_unet_names(kw: Mapping[str, Any], names: list[str]) -> NameMap:
    num_downs = _count(names, r"down_conv_\d+")
    if "num_downs" in kw and int(kw["num_downs"]) != num_downs:
        raise ExportError(f"pix2pix_unet: model kwargs say num_downs={kw['num_downs']} but the "
                          f"variables have {num_downs} down convolutions")
    return pix2pix_unet_name_map(num_downs)


def _patchgan_names(kw: Mapping[str, Any], names: list[str]) -> NameMap:
    n_layers = _count(names, r"conv_\d+") - 2
    if "n_layers" in kw and int(kw["n_layers"]) != n_layers:
        raise ExportError(f"patchgan: model kwargs say n_layers={kw['n_layers']} but the "
                          f"variables have {n_layers + 2} convolutions")
    return patchgan_name_map(n_layers)


@dataclasses.dataclass(frozen=True)
class KeyMap:
    # (model kwargs, Flax top-level module names) -> name map
    name_map: Callable[[Mapping[str, Any], list[str]], NameMap]
    target: Callable[[Mapping[str, Any], Mapping[str, Any]], TorchTarget]  # (params, kwargs)
    input_normalisation: str
    # Optional whole-network converters replacing the generic per-module one (models whose
    # leaves are not only convs and norms, e.g. UnVeilify in ``unveilify.py``):
    # to_torch(model_kwargs, variables, num_batches_tracked) -> state dict;
    # from_torch(model_kwargs, state_dict, template) -> variables.
    to_torch: Callable[..., dict[str, np.ndarray]] | None = None
    from_torch: Callable[..., dict[str, Any]] | None = None


_PIX2PIX_INPUT = ("NCHW float32, RGB channels scaled to [-1, 1] (pixel / 127.5 - 1), extra "
                  "channels (mask map) in [0, 1] after the RGB ones, as in the training config")
_D_INPUT = ("NCHW float32: concat([condition, image], dim=1), both normalised like the "
            "generator input")

KEYMAPS: dict[str, KeyMap] = {
    "pix2pix_unet": KeyMap(_pix2pix_unet_names, _pix2pix_unet_target, _PIX2PIX_INPUT),
    "patchgan": KeyMap(_patchgan_names, _patchgan_target, _D_INPUT),
    "tf_pix2pix_unet": KeyMap(lambda kw, names: tf_name_map, _tf_unet_target, _PIX2PIX_INPUT),
    "tf_patchgan": KeyMap(lambda kw, names: tf_name_map, _tf_patchgan_target, _D_INPUT),
}


def get_keymap(model_name: str) -> KeyMap:
    """The key map of ``model_name``; ExportError naming the exportable models if none."""
    if model_name not in KEYMAPS:
        raise ExportError(f"no PyTorch export mapping for model {model_name!r}; exportable "
                          f"models: {sorted(KEYMAPS)}")
    return KEYMAPS[model_name]


def torch_target(model_name: str, model_kwargs: Mapping[str, Any],
                 variables: Mapping[str, Any]) -> TorchTarget:
    """Torch class and constructor arguments for these variables."""
    return get_keymap(model_name).target(variables["params"], model_kwargs)


# ----------------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------------


def _to_f32(x: Any) -> np.ndarray:
    return np.array(np.asarray(x), dtype=np.float32, order="C")


def _modules(variables: Mapping[str, Any]) -> list[str]:
    names = set(variables.get("params", {})) | set(variables.get("batch_stats", {}))
    return sorted(names)


def _leaf_pairs(params: Mapping[str, Any], stats: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(collection, flax leaf, torch suffix) for one Flax submodule."""
    if "kernel" in params:
        pairs = [("params", "kernel", "weight")]
        if "bias" in params:
            pairs.append(("params", "bias", "bias"))
        return pairs
    pairs = []
    if "scale" in params:
        pairs.append(("params", "scale", "weight"))
    if "bias" in params:
        pairs.append(("params", "bias", "bias"))
    if "mean" in stats:
        pairs.append(("batch_stats", "mean", "running_mean"))
    if "var" in stats:
        pairs.append(("batch_stats", "var", "running_var"))
    return pairs


def _check_supported(name: str, params: Mapping[str, Any], stats: Mapping[str, Any]) -> None:
    known = {"kernel", "bias", "scale"}
    extra = (set(params) - known) | (set(stats) - {"mean", "var"})
    if extra or any(not hasattr(v, "shape") for v in list(params.values()) + list(stats.values())):
        raise ExportError(f"Flax module {name!r} has variables {sorted(params)}/{sorted(stats)} "
                          f"that the export does not know how to map")


def _to_torch_array(leaf: str, value: Any) -> np.ndarray:
    arr = _to_f32(value)
    if leaf == "kernel":
        if arr.ndim != 4:
            raise ExportError(f"expected a 4-D kernel, got shape {arr.shape}")
        arr = np.ascontiguousarray(arr.transpose(3, 2, 0, 1))
    return arr


def flax_to_torch(model_name: str, model_kwargs: Mapping[str, Any],
                  variables: Mapping[str, Any], *, num_batches_tracked: int = 0
                  ) -> dict[str, np.ndarray]:
    """Flax ``{"params", "batch_stats"}`` -> torch state dict (numpy float32 / int64)."""
    keymap = get_keymap(model_name)
    if keymap.to_torch is not None:
        return keymap.to_torch(model_kwargs, variables, num_batches_tracked)
    name_map = keymap.name_map(model_kwargs, _modules(variables))
    params = variables.get("params", {})
    stats = variables.get("batch_stats", {})
    out: dict[str, np.ndarray] = {}
    for name in _modules(variables):
        p, s = params.get(name, {}), stats.get(name, {})
        _check_supported(name, p, s)
        prefix = name_map(name)
        for collection, leaf, suffix in _leaf_pairs(p, s):
            src = p if collection == "params" else s
            out[f"{prefix}.{suffix}"] = _to_torch_array(leaf, src[leaf])
        if "mean" in s:
            out[f"{prefix}.num_batches_tracked"] = np.asarray(num_batches_tracked, np.int64)
    _spectral_to_torch(variables.get("spectral", {}), name_map, out)
    return out


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def torch_to_flax(model_name: str, model_kwargs: Mapping[str, Any],
                  state_dict: Mapping[str, Any], template: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """Torch state dict -> Flax variables shaped and typed like ``template``.

    ``template`` is a variables dict (arrays or ``jax.ShapeDtypeStruct``), e.g. from
    ``jax.eval_shape(model.init, ...)``. Raises ExportError naming the key for a missing key,
    an unexpected key or a shape mismatch.
    """
    keymap = get_keymap(model_name)
    if keymap.from_torch is not None:
        return keymap.from_torch(model_kwargs, state_dict, template)
    name_map = keymap.name_map(model_kwargs, _modules(template))
    state_dict, spectral = _spectral_from_torch(model_name, template.get("spectral", {}),
                                                name_map, state_dict)
    params_t = template.get("params", {})
    stats_t = template.get("batch_stats", {})
    result: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    used: set[str] = set()
    for name in _modules(template):
        p, s = params_t.get(name, {}), stats_t.get(name, {})
        _check_supported(name, p, s)
        prefix = name_map(name)
        for collection, leaf, suffix in _leaf_pairs(p, s):
            key = f"{prefix}.{suffix}"
            if key not in state_dict:
                raise ExportError(f"{model_name}: state dict has no key {key!r} "
                                  f"(needed for Flax {collection}/{name}/{leaf})")
            arr = _as_numpy(state_dict[key]).astype(np.float32)
            if leaf == "kernel":
                if arr.ndim != 4:
                    raise ExportError(f"{model_name}: {key!r} has shape {arr.shape}, expected 4-D")
                arr = arr.transpose(2, 3, 1, 0)  # inverse of transpose(3, 2, 0, 1)
            want = (p if collection == "params" else s)[leaf]
            if tuple(arr.shape) != tuple(want.shape):
                got = tuple(_as_numpy(state_dict[key]).shape)
                raise ExportError(
                    f"{model_name}: shape mismatch for {key!r}: torch {got} does not match "
                    f"Flax {collection}/{name}/{leaf} {tuple(want.shape)}")
            result.setdefault(collection, {}).setdefault(name, {})[leaf] = np.ascontiguousarray(
                arr).astype(want.dtype)
            used.add(key)
        if "mean" in s:
            used.add(f"{prefix}.num_batches_tracked")
    unexpected = sorted(k for k in state_dict if k not in used)
    if unexpected:
        raise ExportError(f"{model_name}: unexpected key(s) in state dict: {unexpected[:10]}"
                          + (" ..." if len(unexpected) > 10 else ""))
    if spectral:
        result["spectral"] = spectral
    return result


# ----------------------------------------------------------------------------------------
# Ye Train C generator (``unmask_jax.models.ye_custom.YeUnetC`` -> torch_modules.YeUnetC).
# ----------------------------------------------------------------------------------------


def ye_unet_c_name_map(name: str) -> str:
    """Flax ``YeUnetC`` names -> the project's torch ``YeUnetC`` prefixes."""
    m = re.fullmatch(r"(down_conv|up_conv|dilated_conv)_(\d+)", name)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"se_(\d+)_(fc_0|fc_1)", name)
    if m:
        return f"se.{m.group(1)}.{m.group(2)}"
    raise ExportError(f"ye_unet_c: no torch key for Flax module {name!r}")


def _ye_unet_c_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    _check_close("ye_unet_c", "in_epsilon", _kw(kw, "in_epsilon", 1e-5), 1e-5)
    k_in = params["down_conv_0"]["kernel"].shape  # (4, 4, in, ngf)
    n_dilated = _count(list(params), r"dilated_conv_\d+")
    rates = [int(r) for r in _kw(kw, "dilation_rates", (2, 4, 8, 16))]
    if len(rates) != n_dilated:
        raise ExportError(f"ye_unet_c: model kwargs give {len(rates)} dilation rates but the "
                          f"variables have {n_dilated} dilated convolutions")
    args = {
        "input_nc": int(k_in[2]),
        "output_nc": int(params["up_conv_0"]["kernel"].shape[2]),
        "ngf": int(k_in[3]),
        "dilated_channels": (int(params["dilated_conv_0"]["kernel"].shape[3]) if n_dilated
                             else int(_kw(kw, "dilated_channels", 256))),
        "dilation_rates": rates,
        "se_reduction": int(_kw(kw, "se_reduction", 16)),
        "use_dropout": bool(_kw(kw, "use_dropout", False)),
        "dropout_rate": float(_kw(kw, "dropout_rate", 0.5)),
    }
    return TorchTarget("YeUnetC", args, PROJECT_TORCH_MODULES)


KEYMAPS["ye_unet_c"] = KeyMap(lambda kw, names: ye_unet_c_name_map, _ye_unet_c_target,
                              _PIX2PIX_INPUT)


# ----------------------------------------------------------------------------------------
# Spectral normalisation (``unmask_jax.models.blocks.SNConv`` <->
# ``torch.nn.utils.spectral_norm(nn.Conv2d)``): a Flax module with variables in the
# ``"spectral"`` collection (``u``, ``v``) is a spectral-normalised conv; its params
# ``kernel`` -> ``weight_orig`` (same transpose), ``spectral/u`` -> ``weight_u``,
# ``spectral/v`` -> ``weight_v`` (both already in torch's layout), ``bias`` -> ``bias``.
# ----------------------------------------------------------------------------------------


def _spectral_to_torch(spectral: Mapping[str, Any], name_map: NameMap,
                       out: dict[str, np.ndarray]) -> None:
    """Rewrites ``out`` (from :func:`flax_to_torch`) in place for spectral-normalised convs."""
    for name in sorted(spectral):
        vecs = spectral[name]
        if set(vecs) != {"u", "v"}:
            raise ExportError(f"Flax module {name!r} has spectral variables {sorted(vecs)}; "
                              f"expected u and v")
        prefix = name_map(name)
        if f"{prefix}.weight" not in out:
            raise ExportError(f"Flax module {name!r} has spectral vectors but no kernel")
        out[f"{prefix}.weight_orig"] = out.pop(f"{prefix}.weight")
        out[f"{prefix}.weight_u"] = _to_f32(vecs["u"])
        out[f"{prefix}.weight_v"] = _to_f32(vecs["v"])


def _spectral_from_torch(model_name: str, spectral_t: Mapping[str, Any], name_map: NameMap,
                         state_dict: Mapping[str, Any]
                         ) -> tuple[Mapping[str, Any], dict[str, dict[str, np.ndarray]]]:
    """For :func:`torch_to_flax`: (state dict with ``weight_orig`` renamed ``weight`` and
    the u / v vectors removed, Flax ``spectral`` collection shaped like ``spectral_t``)."""
    if not spectral_t:
        return state_dict, {}
    sd = dict(state_dict)
    result: dict[str, dict[str, np.ndarray]] = {}
    for name in sorted(spectral_t):
        prefix = name_map(name)
        for suffix in ("weight_orig", "weight_u", "weight_v"):
            if f"{prefix}.{suffix}" not in sd:
                raise ExportError(f"{model_name}: state dict has no key {prefix}.{suffix!r} "
                                  f"(needed for spectral-normalised Flax module {name!r})")
        sd[f"{prefix}.weight"] = sd.pop(f"{prefix}.weight_orig")
        for leaf in ("u", "v"):
            arr = _as_numpy(sd.pop(f"{prefix}.weight_{leaf}")).astype(np.float32)
            want = spectral_t[name][leaf]
            if tuple(arr.shape) != tuple(want.shape):
                raise ExportError(f"{model_name}: shape mismatch for {prefix}.weight_{leaf}: "
                                  f"torch {tuple(arr.shape)} vs Flax {tuple(want.shape)}")
            result.setdefault(name, {})[leaf] = np.ascontiguousarray(arr).astype(want.dtype)
    return sd, result


# ----------------------------------------------------------------------------------------
# GANMasker (``unmask_jax.models.ganmasker`` -> torch_modules.GANMasker*).
# ----------------------------------------------------------------------------------------


def ganmasker_name_map(name: str) -> str:
    """Flat Flax GANMasker names -> the project's torch prefixes (all three networks):
    ``enc_{i}_conv`` -> ``enc.{i}.conv``, ``enc_{i}_cbam_mlp_0`` -> ``enc.{i}.cbam.mlp_0``,
    ``mid_{k}_norm`` -> ``mid.{k}.norm``, ``dec_{j}_conv`` -> ``dec.{j}.conv``,
    ``conv_{k}`` -> ``convs.{k}``."""
    m = re.fullmatch(r"(enc|mid|dec)_(\d+)_(cbam_)?([a-z]+(?:_\d+)?)", name)
    if m:
        return f"{m.group(1)}.{m.group(2)}." + ("cbam." if m.group(3) else "") + m.group(4)
    m = re.fullmatch(r"conv_(\d+)", name)
    if m:
        return f"convs.{m.group(1)}"
    raise ExportError(f"ganmasker: no torch key for Flax module {name!r}")


def _ganmasker_mseg_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k_in = params["enc_0_conv"]["kernel"].shape  # (3, 3, in, base_width)
    args = {
        "input_nc": int(k_in[2]),
        "base_width": int(k_in[3]),
        "cbam_reduction": int(_kw(kw, "cbam_reduction", 16)),
        "cbam_kernel": int(params["enc_0_cbam_spatial"]["kernel"].shape[0]),
        "upsample": str(_kw(kw, "upsample", "bilinear")),
    }
    return TorchTarget("GANMaskerMSeg", args, PROJECT_TORCH_MODULES)


def _ganmasker_funet_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k_in = params["enc_0_conv_0"]["kernel"].shape  # (3, 3, in, base_width)
    rates = [int(r) for r in _kw(kw, "dilation_rates", (2, 4, 8, 16))]
    n_mid = _count(list(params), r"mid_\d+_conv")
    if len(rates) != n_mid:
        raise ExportError(f"ganmasker_funet: model kwargs give {len(rates)} dilation rates but "
                          f"the variables have {n_mid} dilated convolutions")
    args = {
        "input_nc": int(k_in[2]),
        "base_width": int(k_in[3]),
        "out_channels": int(params["dec_4_conv"]["kernel"].shape[3]),
        "leaky_slope": float(_kw(kw, "leaky_slope", 0.2)),
        "cbam_reduction": int(_kw(kw, "cbam_reduction", 16)),
        "cbam_kernel": int(params["enc_0_cbam_spatial"]["kernel"].shape[0]),
        "dilation_rates": rates,
        "upsample": str(_kw(kw, "upsample", "bilinear")),
        "final_norm": "dec_4_norm" in params,
    }
    return TorchTarget("GANMaskerFUNet", args, PROJECT_TORCH_MODULES)


def _ganmasker_d_target(params: Mapping[str, Any], kw: Mapping[str, Any]) -> TorchTarget:
    k = params["conv_0"]["kernel"].shape  # (4, 4, in, ndf)
    n_layers = _count(list(params), r"conv_\d+") - 2
    if "n_layers" in kw and int(kw["n_layers"]) != n_layers:
        raise ExportError(f"ganmasker_discriminator: model kwargs say n_layers="
                          f"{kw['n_layers']} but the variables have {n_layers + 2} convolutions")
    args = {
        "input_nc": int(k[2]),
        "ndf": int(k[3]),
        "n_layers": n_layers,
        "leaky_slope": float(_kw(kw, "leaky_slope", 0.2)),
        "power_iterations": int(_kw(kw, "power_iterations", 1)),
    }
    return TorchTarget("GANMaskerDiscriminator", args, PROJECT_TORCH_MODULES)


_GANMASKER_MSEG_INPUT = "NCHW float32, RGB masked face scaled to [-1, 1] (pixel / 127.5 - 1)"
KEYMAPS["ganmasker_mseg"] = KeyMap(lambda kw, names: ganmasker_name_map,
                                   _ganmasker_mseg_target, _GANMASKER_MSEG_INPUT)
KEYMAPS["ganmasker_funet"] = KeyMap(lambda kw, names: ganmasker_name_map,
                                    _ganmasker_funet_target, _PIX2PIX_INPUT)
KEYMAPS["ganmasker_discriminator"] = KeyMap(lambda kw, names: ganmasker_name_map,
                                            _ganmasker_d_target, _D_INPUT)
