"""Accelerators a program can be compiled for ahead of time: the names pod users type, the
topologies libtpu and XLA:GPU compile for, and each chip's peaks.

``--mode=compile --topology=NAME`` takes

* Cloud TPU names as ``gcloud`` and pod users write them: ``v5e-256``, ``v6e-8`` (chips),
  ``v4-32``, ``v5p-128`` (TensorCores: two per chip, one device per chip in megacore mode);
* libtpu's own names: ``v5e:16x16``, ``v4:2x2x1``, ``v5p:2x2x1``, ``v6e:2x2``;
* GPUs: ``h100:1x1x8`` (slices x hosts x GPUs per host) or ``h100-8`` (GPUs; 8 per host), and
  the same for ``h200``. GPU programs compile against a ``GpuTargetConfigProto`` text shipped
  in ``unmask_jax/gpu_targets/`` and need ``jax[cuda12]`` installed (run with
  ``JAX_PLATFORMS=cpu`` on a machine without a GPU).

:func:`resolve` turns a name into a :class:`Target` (platform, libtpu topology name, chip
config, chips per host, wrap-around links, chip count and the :class:`Chip`);
:func:`devices` builds its compile-only devices with ``jax.experimental.topologies``. No
hardware is needed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from importlib import resources
from typing import Any


@dataclasses.dataclass(frozen=True)
class Chip:
    """One device's peaks: dense bf16 FLOP/s, HBM bytes and HBM bandwidth (bytes/s)."""

    name: str
    peak_bf16_flops: float
    hbm_bytes: int
    hbm_bandwidth: float
    source: str


GiB = 1 << 30

#: Chip peaks, per device as JAX sees it (v4 and v5p in megacore mode: one device per chip).
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1228e9,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2, 1228 GB/s"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819e9,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GiB HBM2, 819 GB/s"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765e9,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GiB HBM2e, 2765 GB/s"),
    "v6e": Chip("TPU v6e (Trillium)", 918e12, 32 * GiB, 1640e9,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GiB HBM, 1640 GB/s"),
    "h100": Chip("NVIDIA H100 SXM", 989e12, 80 * 10**9, 3.35e12,
                 "nvidia.com H100 datasheet (SXM): 989 TFLOP/s dense bf16, 80 GB HBM3, "
                 "3.35 TB/s"),
    "h200": Chip("NVIDIA H200 SXM", 989e12, 141 * 10**9, 4.8e12,
                 "nvidia.com H200 datasheet (SXM): 989 TFLOP/s dense bf16, 141 GB HBM3e, "
                 "4.8 TB/s"),
}

#: libtpu's name prefix and chip config per TPU generation. v4 and v5p run in megacore mode
#: (the two TensorCores of a chip are one device), and their pod names count TensorCores.
_TPU = {
    "v4": ("v4", "megacore", 2),
    "v5p": ("v5p", "megacore", 2),
    "v5e": ("v5e", "default", 1),
    "v6e": ("v6e", "default", 1),
}
_PREFIX_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}

#: Chip grids of the standard slice sizes (chips -> shape).
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
            2048: (8, 16, 16), 4096: (16, 16, 16)}
#: GPU target configs shipped in unmask_jax/gpu_targets/ (facts from XLA's
#: xla/backends/gpu/target_config/specs/).
GPU_TARGETS = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}
GPUS_PER_HOST = 8


class TopologyError(ValueError):
    """A topology name this module cannot resolve (the message lists the forms it takes)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A slice to compile for."""

    name: str                      # as the user typed it
    platform: str                  # 'tpu' or 'gpu'
    topology: str                  # libtpu 'v5e:2x4', or GPU 'SxHxG'
    chip: Chip
    num_devices: int
    chip_config: str = "default"
    chips_per_host_bounds: tuple[int, int, int] = (1, 1, 1)
    wrap: tuple[bool, bool, bool] = (False, False, False)
    gpu_target_config: str | None = None  # file name in unmask_jax/gpu_targets/

    @property
    def num_hosts(self) -> int:
        if self.platform == "gpu":
            return int(self.topology.split("x")[1]) * int(self.topology.split("x")[0])
        return max(1, self.num_devices // math.prod(self.chips_per_host_bounds))

    @property
    def file_stem(self) -> str:
        """The name with ':' as '_' (``DIR/compile/<stem>.json``)."""
        return self.name.replace(":", "_").replace("/", "_")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform, "topology": self.topology,
                "devices": self.num_devices, "hosts": self.num_hosts,
                "chip": self.chip.name, "chip_config": self.chip_config,
                "chips_per_host_bounds": list(self.chips_per_host_bounds),
                "wrap": list(self.wrap)}


def _usage() -> str:
    return ("a TPU pod name (v5e-256, v6e-8: chips; v4-32, v5p-128: TensorCores), a libtpu "
            "topology (v5e:16x16, v5p:2x2x1, v4:2x2x1, v6e:2x2) or a GPU slice (h100:1x1x8 = "
            "slices x hosts x GPUs, h100-8)")


def _tpu_target(name: str, generation: str, dims: tuple[int, ...]) -> Target:
    prefix, chip_config, _ = _TPU[generation]
    want = 2 if generation in ("v5e", "v6e") else 3
    if len(dims) != want:
        raise TopologyError(f"--topology={name}: {generation} takes {want} dimensions "
                            f"({'AxB' if want == 2 else 'AxBxC'})")
    chips = math.prod(dims)
    if want == 2:
        full = dims + (1,)
        # A slice of up to 8 chips is one host (v5litepod-8: 8 chips); larger slices have
        # 4 chips per host (2x2), as Cloud TPU's multi-host v5e/v6e slices do.
        bounds = full if chips <= 8 else (2, 2, 1)
        wrap = tuple(d == 16 for d in dims) + (False,)
    else:
        full = dims
        bounds = tuple(min(d, b) for d, b in zip(dims, (2, 2, 1)))
        wrap = (True, True, True) if min(dims) >= 4 else (False, False, False)
    topology = f"{prefix}:{'x'.join(str(d) for d in dims)}"
    if any(d <= 0 for d in full):
        raise TopologyError(f"--topology={name}: dimensions must be positive")
    return Target(name, "tpu", topology, CHIPS[generation], chips, chip_config,
                  tuple(int(b) for b in bounds), tuple(bool(w) for w in wrap))


def resolve(name: str) -> Target:
    """The :class:`Target` of a topology name (see the module docstring); TopologyError
    for a name it does not know, saying which forms it takes."""
    raw = str(name).strip()
    text = raw.lower()
    m = re.fullmatch(r"([a-z0-9]+)([:-])([0-9x]+)", text)
    if not m:
        raise TopologyError(f"--topology={raw!r}: not a topology name; use {_usage()}")
    gen, sep, rest = m.groups()
    gen = _PREFIX_ALIASES.get(gen, gen)
    if gen in GPU_TARGETS:
        if sep == "-":
            count = int(rest)
            hosts = max(1, math.ceil(count / GPUS_PER_HOST))
            if count % hosts:
                raise TopologyError(f"--topology={raw}: {count} GPUs do not fill hosts of "
                                    f"{GPUS_PER_HOST}")
            dims = (1, hosts, count // hosts)
        else:
            dims = tuple(int(d) for d in rest.split("x"))
            if len(dims) != 3 or min(dims) <= 0:
                raise TopologyError(f"--topology={raw}: GPU slices are SLICESxHOSTSxGPUS, "
                                    "e.g. h100:1x1x8")
        return Target(raw, "gpu", "x".join(str(d) for d in dims), CHIPS[gen], math.prod(dims),
                      gpu_target_config=GPU_TARGETS[gen])
    if gen not in _TPU:
        raise TopologyError(f"--topology={raw!r}: unknown accelerator {gen!r}; known: "
                            f"{sorted(_TPU) + sorted(GPU_TARGETS)}; use {_usage()}")
    if sep == ":":
        try:
            dims = tuple(int(d) for d in rest.split("x"))
        except ValueError:
            raise TopologyError(f"--topology={raw}: dimensions must be numbers") from None
        return _tpu_target(raw, gen, dims)
    if "x" in rest:
        raise TopologyError(f"--topology={raw}: pod names count cores (v5e-8); use ':' for "
                            "a chip grid (v5e:2x4)")
    cores = int(rest)
    per_chip = _TPU[gen][2]
    if cores % per_chip:
        raise TopologyError(f"--topology={raw}: {gen} pod sizes count TensorCores, two per "
                            "chip")
    chips = cores // per_chip
    grids = _GRID_2D if gen in ("v5e", "v6e") else _GRID_3D
    if chips not in grids:
        sizes = sorted(c * per_chip for c in grids)
        raise TopologyError(f"--topology={raw}: no standard {gen} slice of that size; sizes: "
                            f"{sizes}, or give the grid ({gen}:AxB{'xC' if per_chip == 2 else ''})")
    return _tpu_target(raw, gen, grids[chips])


def gpu_target_config_text(target: Target) -> str:
    """The ``GpuTargetConfigProto`` text of a GPU target (shipped with the package)."""
    if target.gpu_target_config is None:
        raise TopologyError(f"{target.name} is not a GPU target")
    return (resources.files("unmask_jax") / "gpu_targets" /
            target.gpu_target_config).read_text()


def devices(target: Target) -> list[Any]:
    """The target's compile-only devices (``jax.experimental.topologies``): they have
    ``platform`` 'tpu' / 'gpu' and ``process_index`` per host, and run nothing."""
    from jax.experimental import topologies

    if target.platform == "tpu":
        # Compile-only devices run nothing: let this process load libtpu beside another one
        # (a second compile, or a test worker); libtpu's lockfile allows one per host else.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        topo = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology, chip_config_name=target.chip_config,
            chips_per_host_bounds=target.chips_per_host_bounds, num_slices=1,
            wrap=target.wrap)
    else:
        try:
            topo = topologies.get_topology_desc(
                "gpu", "cuda", target_config=gpu_target_config_text(target),
                topology=target.topology)
        except (NotImplementedError, RuntimeError) as e:
            import jax
            raise TopologyError(
                f"{target.name}: compiling for GPUs needs JAX's CUDA plugin, at this jax "
                f"version: pip install \"jax[cuda12]=={jax.__version__}\" (in an environment "
                f"of its own; about 3 GB), then run with JAX_PLATFORMS=cpu on a machine "
                f"without a GPU ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    found = list(topo.devices)
    if len(found) != target.num_devices:
        raise TopologyError(f"{target.name}: expected {target.num_devices} devices, the "
                            f"compiler's topology has {len(found)}")
    return found
