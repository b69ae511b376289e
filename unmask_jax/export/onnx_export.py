"""ONNX export of the exported PyTorch networks, checked against Flax with onnxruntime.

``--mode=export --export_onnx`` writes ``<network>.onnx`` next to each
``<network>.safetensors``: the network's PyTorch twin, loaded strictly from the file just
written (:func:`unmask_jax.export.load_torch_module`), goes through ``torch.onnx.export``.
Choices:

- Exporter: the dynamo exporter (``torch.export`` + onnxscript), at its default opset. Every
  network listed in :data:`OUTPUT_RANGES` exports with it, dynamic batch included, so the
  legacy TorchScript exporter is never used.
- Shapes: channels, height and width fixed at the config's resolution; the batch axis is
  dynamic (named :data:`BATCH_AXIS`). It is traced at batch 2: ``torch.export`` would fix a
  dimension of size 1.
- The ONNX model's ``metadata_props`` say how to call it: opset, input / output names and
  shapes, NCHW layout, float32, input normalisation and output range, network, step.
- Verification: the written file runs in onnxruntime (CPU) on deterministic inputs at batch 1
  and 2, against the Flax network (float32, eval mode, same weights); max|diff| / max|ref|
  above :data:`PARITY_TOLERANCE` fails the export (:class:`OnnxParityError`) and removes
  the file.
- The manifest lists the file (``files.onnx``) with its sha256 like the other files, and
  records the above under ``onnx``. Reading a weights folder checks only the .safetensors
  it loads; the .onnx entry is for the user (and a check with ``sha256sum``).
- UnVeilify is refused (:func:`check_supported`): its modulated convolutions take the batch
  size as a convolution's group count, which an ONNX graph fixes at export time (no dynamic
  batch), and its PyTorch discriminator ends in a sigmoid that the Flax one does not have.

torch, onnx, onnxscript and onnxruntime are imported inside the functions: the rest of
``unmask_jax`` works without them, and a missing one is an :class:`OnnxUnavailable` naming
the install command.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from etils import epath

from unmask_jax.export import io
from unmask_jax.export.keymaps import ExportError

INSTALL_HINT = 'pip install -e ".[onnx]"'
#: Packages ``--export_onnx`` needs (the ``onnx`` extra of setup.cfg).
REQUIRED = ("torch", "onnx", "onnxscript", "onnxruntime")
#: Largest max|onnxruntime - Flax| / max|Flax| an export may have.
PARITY_TOLERANCE = 1e-4
#: Batch sizes the written file is checked at (the dynamic batch axis at both).
PARITY_BATCHES = (1, 2)
PARITY_SEED = 0
TRACE_BATCH = 2
BATCH_AXIS = "batch"
OUTPUT_NAME = "output"

_GENERATOR_OUT = "NCHW float32 RGB in [-1, 1] (tanh): pixel = (output + 1) * 127.5"
_DISCRIMINATOR_OUT = "NCHW float32 PatchGAN logits (N, 1, h, w), unbounded"
#: Registry models whose PyTorch twins export to ONNX -> what their output holds.
OUTPUT_RANGES: dict[str, str] = {
    "pix2pix_unet": _GENERATOR_OUT,
    "tf_pix2pix_unet": _GENERATOR_OUT,
    "ye_unet_c": _GENERATOR_OUT,
    "ganmasker_funet": _GENERATOR_OUT + "; the raw generator output, before the MURF "
                       "composite output * mask + input * (1 - mask)",
    "ganmasker_mseg": "NCHW float32 (N, 1, H, W) mask probability in [0, 1] (sigmoid)",
    "patchgan": _DISCRIMINATOR_OUT,
    "tf_patchgan": _DISCRIMINATOR_OUT,
    "ganmasker_discriminator": _DISCRIMINATOR_OUT,
}
_NOT_SUPPORTED = {
    "unveilify": "UnVeilify's modulated convolutions take the batch size as a convolution's "
                 "group count, which an ONNX graph fixes at export time (no dynamic batch)",
}


class OnnxUnavailable(ExportError):
    """A package ``--export_onnx`` needs is not installed."""


class OnnxParityError(ExportError):
    """The written ONNX file does not compute what the Flax network computes."""


def require_onnx() -> dict[str, str]:
    """The versions of :data:`REQUIRED` (name -> version); raises :class:`OnnxUnavailable`
    naming the missing ones and the install command."""
    versions, missing = {}, []
    for name in REQUIRED:
        try:
            versions[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
        except ImportError:
            missing.append(name)
    if missing:
        raise OnnxUnavailable(f"--export_onnx needs {', '.join(missing)} (not installed): "
                              f"{INSTALL_HINT}")
    return versions


def check_supported(model_name: str, network_name: str) -> None:
    """Raises :class:`ExportError` (one line: why, and what to do) when ``model_name`` has
    no ONNX export."""
    if model_name in OUTPUT_RANGES:
        return
    reason = next((why for prefix, why in _NOT_SUPPORTED.items()
                   if model_name.startswith(prefix)), "it has no ONNX export here")
    raise ExportError(f"--export_onnx: {network_name} ({model_name}) cannot be exported to "
                      f"ONNX: {reason}; export without --export_onnx (the .safetensors "
                      f"files load into the PyTorch modules), ONNX-exportable models: "
                      f"{', '.join(sorted(OUTPUT_RANGES))}")


def input_names(num_inputs: int) -> list[str]:
    """``["input"]`` for one input, ``["input_0", "input_1", ...]`` for several."""
    return ["input"] if num_inputs == 1 else [f"input_{i}" for i in range(num_inputs)]


def nchw_shape(nhwc: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of a Flax (N, H, W, C) input shape (a system's ``input_shapes``)."""
    _, h, w, c = nhwc
    return int(c), int(h), int(w)


def example_inputs(shapes: Sequence[Sequence[int]], batch: int, seed: int = PARITY_SEED
                   ) -> list[np.ndarray]:
    """Deterministic NCHW float32 inputs, uniform in [-1, 1], one per (C, H, W) shape."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, (batch, *shape)).astype(np.float32) for shape in shapes]


#: Loggers of the exporter and its graph passes (one INFO line per pass and initializer).
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hides the exporter's warnings and log lines (torchvision ops it skips, its graph
    passes): correctness is checked by the parity run after writing, not by reading them."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def export_onnx(module, inputs: Sequence[np.ndarray], path: str,
                metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``module`` (a torch module, put in eval mode) traced on ``inputs`` (NCHW
    float32, batch > 1) to the ONNX file ``path`` (local or ``gs://``), with a dynamic batch
    axis and ``metadata`` plus the call description in ``metadata_props``.

    Returns the call description: opset, input / output names and shapes, layout, dtype,
    exporter.
    """
    import torch

    names = input_names(len(inputs))
    batch = torch.export.Dim(BATCH_AXIS)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module.eval(), tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs),
            dynamo=True, input_names=names, output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple({0: batch} for _ in names), verbose=False)
    proto = program.model_proto
    info = {
        "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "input_names": names,
        "output_names": [OUTPUT_NAME],
        "input_shapes": [_dims(v) for v in proto.graph.input],
        "output_shapes": [_dims(v) for v in proto.graph.output],
        "layout": "NCHW",
        "dtype": "float32",
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
    }
    props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in
             {**info, **(metadata or {})}.items()}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    epath.Path(path).write_bytes(proto.SerializeToString())
    return info


def onnx_session(path: str):
    """An onnxruntime CPU inference session on the ONNX file ``path`` (local or gs://)."""
    import onnxruntime

    return onnxruntime.InferenceSession(epath.Path(path).read_bytes(),
                                        providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: Sequence[np.ndarray]) -> np.ndarray:
    """The first output of ``session`` on ``inputs`` (in its input order)."""
    feeds = {i.name: np.ascontiguousarray(x) for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)[0]


def relative_diff(out: np.ndarray, ref: np.ndarray) -> float:
    """max|out - ref| / max|ref| in float64 (inf for a shape mismatch; NaN stays NaN)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        return float("inf")
    diff, scale = np.max(np.abs(out - ref)), np.max(np.abs(ref))
    if scale == 0:
        return 0.0 if diff == 0 else float("inf")
    return float(diff / scale)


def flax_reference(model_name: str, model_kwargs: Mapping[str, Any],
                   variables: Mapping[str, Any]) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """The Flax network (eval mode) as a function of NCHW numpy inputs -> NCHW output.

    It computes in float32 with the variables cast to float32, as the export writes them: a
    bfloat16 run's own compute dtype would differ from the file by bfloat16 rounding, which
    is not an export error.
    """
    import jax
    import jax.numpy as jnp

    from unmask_jax import models

    module = models.create_model(model_name, **{**dict(model_kwargs), "dtype": jnp.float32})
    variables = jax.tree.map(
        lambda v: np.asarray(v, np.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v,
        variables)
    apply = jax.jit(lambda v, *xs: module.apply(v, *xs, train=False))

    def run(inputs: Sequence[np.ndarray]) -> np.ndarray:
        out = apply(variables, *(jnp.asarray(x.transpose(0, 2, 3, 1)) for x in inputs))
        return np.asarray(out).transpose(0, 3, 1, 2)

    return run


def parity(path: str, reference: Callable[[Sequence[np.ndarray]], np.ndarray],
           shapes: Sequence[Sequence[int]], batches: Sequence[int] = PARITY_BATCHES,
           seed: int = PARITY_SEED) -> dict[int, float]:
    """batch -> max|onnxruntime - reference| / max|reference| of the ONNX file ``path`` on
    :func:`example_inputs` of (C, H, W) ``shapes``.

    The reference runs once, at the largest batch; a smaller batch is its first samples (in
    eval mode every sample is computed alone), which saves compiling the reference per
    batch size. onnxruntime runs at every batch size: that checks the dynamic batch axis.
    """
    session = onnx_session(path)
    inputs = example_inputs(shapes, max(batches), seed)
    ref = reference(inputs)
    return {int(b): relative_diff(run_onnx(session, [x[:b] for x in inputs]), ref[:b])
            for b in batches}


def add_onnx(out_dir: str, network_name: str,
             reference: Callable[[Sequence[np.ndarray]], np.ndarray],
             input_shapes: Sequence[Sequence[int]], *,
             tolerance: float = PARITY_TOLERANCE) -> dict[str, Any]:
    """Write ``<out_dir>/<network>.onnx`` for a network that ``export_variables`` wrote
    there, check it against ``reference`` (:func:`flax_reference`) and add it to the
    network's manifest entry; returns the entry's ``onnx`` record.

    ``input_shapes`` are the network's Flax input shapes (N, H, W, C), e.g. a system's
    ``Network.input_shapes(resolution)``. Raises :class:`OnnxParityError` (and removes the
    file) when the check exceeds ``tolerance``.
    """
    from unmask_jax.export import load_torch_module

    versions = require_onnx()
    entry = io.read_manifest(out_dir)["networks"][network_name]
    check_supported(entry["flax_model"], network_name)
    shapes = [nchw_shape(s) for s in input_shapes]
    file = f"{network_name}.onnx"
    path = os.fspath(epath.Path(out_dir) / file)
    info = export_onnx(load_torch_module(out_dir, network_name),
                       example_inputs(shapes, TRACE_BATCH, seed=PARITY_SEED + 1), path,
                       metadata={"network": network_name, "flax_model": entry["flax_model"],
                                 "torch_class": entry["torch_class"],
                                 "input_normalisation": entry["input_normalisation"],
                                 "output_range": OUTPUT_RANGES[entry["flax_model"]],
                                 "step": str(entry["step"])})
    diffs = parity(path, reference, shapes)
    worst = float(np.max(list(diffs.values())))  # NaN if any is NaN
    if not worst <= tolerance:
        epath.Path(path).unlink()
        raise OnnxParityError(
            f"{path}: onnxruntime differs from the Flax network by max|diff|/max|ref| = "
            f"{worst:.3g} > {tolerance:g} (batches {sorted(diffs)}); the file was removed")
    record = {**info, "onnxruntime": versions["onnxruntime"], "parity": {
        "max_abs_diff_over_max_abs_ref": worst,
        "per_batch": {str(b): d for b, d in diffs.items()},
        "tolerance": tolerance,
        "reference": "the Flax network, float32, eval mode",
        "runtime": "onnxruntime, CPUExecutionProvider",
        "input": f"uniform [-1, 1], numpy default_rng({PARITY_SEED})"}}
    entry["files"] = {**entry["files"], "onnx": file}
    entry["sha256"] = {**entry.get("sha256", {}), "onnx": io.sha256_of(path)}
    entry["onnx"] = record
    io.update_manifest(out_dir, network_name, entry)
    return record


__all__ = [
    "OnnxParityError",
    "OnnxUnavailable",
    "add_onnx",
    "check_supported",
    "example_inputs",
    "export_onnx",
    "flax_reference",
    "onnx_session",
    "parity",
    "relative_diff",
    "require_onnx",
    "run_onnx",
]
