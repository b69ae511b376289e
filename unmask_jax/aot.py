"""``--mode=compile``: the real programs compiled ahead of time for a TPU or GPU slice that
is not here, and what the compiler says they cost.

    python -m unmask_jax.main --config=CFG --workdir=DIR --mode=compile --topology=v5e-256 \
        [--per_chip_batch=8] [--config.train.compute_dtype=bfloat16]

What is compiled is what a pod runs, not a copy:

* ``train_step``: the trainer's jitted step (:func:`unmask_jax.programs.make_train_step`: the
  system's step with its shardings, the state donated, the frozen networks an argument),
  lowered for a data-parallel mesh over the target's compile-only devices
  (:mod:`unmask_jax.accelerators`). The state, the batch and the frozen networks enter as
  abstract shapes: the frozen networks are the configured backbones (a system built with
  ``abstract_frozen``), so no weights file or earlier run is needed and none is swapped for
  another because it is missing here. The global batch is ``per_chip_batch`` x devices.
* ``predict``: the system's own inference (its top-level evaluation variant, e.g. GANMasker's
  two-stage chain) on a batch split over the devices.

Both are traced for the target's platform (``System.jit(platform=...)``), so no CPU form of
a layer and no XLA CPU option reaches them.

For each program it reports per-device memory (``memory_analysis``: argument, output, alias,
temp, generated code, total, and the chip's HBM), the compiled FLOPs and HBM bytes per step
(``cost_analysis``; on GPU XLA gives none), the model FLOPs (the same program, traced for the
target, lowered for one host device at the per-chip batch: XLA's count of the unoptimised
program, without padding or rematerialisation), the collectives in the optimised HLO with
their bytes, the compile time, and a roofline: step time >= max(compiled FLOPs / peak,
bytes / bandwidth); ``mfu_bound`` = model FLOPs / (that time x peak), and the img/s per chip
and per slice it allows. It writes ``DIR/compile/<topology, ':' as '_'>.json`` and ``.md``.

A program that does not fit the chip's HBM (the compiler's RESOURCE_EXHAUSTED, or a total
above the HBM where the compiler does not check) raises :class:`DoesNotFit` with the numbers
(``main`` exits with status 2).
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import re
import time
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data_pipelines import pipeline
from unmask_jax import accelerators, backends, hlo_breakdown, parallel, programs
from unmask_jax import state as state_lib
from unmask_jax import systems

log = logging.getLogger(__name__)

PROGRAMS = ("train_step", "predict")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute",
               "all-to-all", "collective-broadcast")
_COLLECTIVE_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) +
    r")(?P<suffix>-start|-done)?\(")


class DoesNotFit(Exception):
    """The program needs more device memory than the chip has (the message has the
    numbers)."""


class CompileSetupError(ValueError):
    """A compile request that cannot be built (bad topology, batch or program name)."""


# --------------------------------------------------------------------------------------------
# Reading the compiled program.
# --------------------------------------------------------------------------------------------


def shape_bytes(type_text: str) -> int:
    """Bytes of an HLO type (an array or a tuple of arrays), e.g. ``bf16[3,3,16,32]{...}``:
    the data, without tile padding (:func:`hlo_breakdown.type_bytes`)."""
    return hlo_breakdown.type_bytes(type_text, padded=False)


def collectives(hlo_text: str) -> dict[str, Any]:
    """The collective ops of an optimised HLO module with their result bytes, by kind.

    An asynchronous pair counts once (its ``-done``); the bytes are the op's result (for an
    all-gather the gathered array)."""
    kinds: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"count": 0, "bytes": 0})
    for line in hlo_text.splitlines():
        m = _COLLECTIVE_OP.match(line)
        if not m or m.group("suffix") == "-start":
            continue
        kind = kinds[m.group("op")]
        kind["count"] += 1
        kind["bytes"] += shape_bytes(m.group("type"))
    by_kind = {k: dict(v) for k, v in sorted(kinds.items())}
    return {"count": sum(v["count"] for v in by_kind.values()),
            "bytes": sum(v["bytes"] for v in by_kind.values()), "by_kind": by_kind}


def memory(compiled, hbm_bytes: int) -> dict[str, Any]:
    """Per-device memory of a compiled program (``memory_analysis``)."""
    m = compiled.memory_analysis()
    if m is None:
        return {"available": False}
    out = {"argument_bytes": int(m.argument_size_in_bytes),
           "output_bytes": int(m.output_size_in_bytes),
           "alias_bytes": int(m.alias_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes),
           "code_bytes": int(m.generated_code_size_in_bytes)}
    out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] +
                          out["temp_bytes"] + out["code_bytes"])
    out.update(hbm_bytes=int(hbm_bytes), fraction_of_hbm=out["total_bytes"] / hbm_bytes,
               fits=out["total_bytes"] <= hbm_bytes, available=True)
    return out


def _cost(obj) -> dict[str, float] | None:
    cost = obj.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per module
        cost = cost[0] if cost else None
    return dict(cost) if cost else None


def roofline(*, model_flops: float, compiled_flops: float | None, bytes_accessed: float | None,
             chip: accelerators.Chip, per_chip_batch: int, num_devices: int
             ) -> dict[str, Any]:
    """Step time >= max(compiled FLOPs / peak, bytes / bandwidth); the MFU and img/s that
    bound allows. Fields are None where the compiler gave no cost (GPU)."""
    out: dict[str, Any] = {"peak_flops": chip.peak_bf16_flops,
                           "hbm_bandwidth": chip.hbm_bandwidth}
    if compiled_flops is None or bytes_accessed is None:
        return {**out, "compute_time_s": None, "memory_time_s": None, "step_time_s": None,
                "bound": None, "mfu_bound": None, "images_per_s_per_chip": None,
                "images_per_s_per_slice": None}
    t_compute = compiled_flops / chip.peak_bf16_flops
    t_memory = bytes_accessed / chip.hbm_bandwidth
    t = max(t_compute, t_memory, 1e-12)
    return {**out, "compute_time_s": t_compute, "memory_time_s": t_memory, "step_time_s": t,
            "bound": "compute" if t_compute >= t_memory else "memory",
            "mfu_bound": min(1.0, model_flops / (t * chip.peak_bf16_flops)),
            "images_per_s_per_chip": per_chip_batch / t,
            "images_per_s_per_slice": per_chip_batch * num_devices / t}


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_OOM = (re.compile(r"Used (?P<used>[0-9.]+)(?P<uu>[KMGT]?) of (?P<cap>[0-9.]+)(?P<cu>[KMGT]?) "
                   r"(?P<space>\w+)"),
        re.compile(r"required for [\w ]+ \((?P<used>[0-9.]+)(?P<uu>[KMGT]?)\) exceeds "
                   r"available (?P<space>\w+) \((?P<cap>[0-9.]+)(?P<cu>[KMGT]?)\)"))


def parse_out_of_memory(message: str) -> dict[str, Any] | None:
    """The numbers of XLA's out-of-memory compile error ("Used 17.94G of 15.75G hbm", "the
    total memory required for HLO temporaries (30.55G) exceeds available HBM (15.75G)"), or
    None when the message is not one."""
    if "RESOURCE_EXHAUSTED" not in message and "Ran out of memory" not in message:
        return None
    for pattern in _OOM:
        m = pattern.search(message)
        if m:
            return {"used_bytes": int(float(m["used"]) * _UNITS[m["uu"]]),
                    "capacity_bytes": int(float(m["cap"]) * _UNITS[m["cu"]]),
                    "memory_space": m["space"].lower()}
    return {"used_bytes": None, "capacity_bytes": None, "memory_space": None}


# --------------------------------------------------------------------------------------------
# Building the programs' abstract arguments.
# --------------------------------------------------------------------------------------------


def _abstract(tree: Any, sharding: Any = None) -> Any:
    """``tree``'s leaves as ``ShapeDtypeStruct``s with ``sharding``: one for every leaf, or
    a tree of them shaped like ``tree`` (a state's layout, ``state.state_sharding``)."""
    def leaf(x, s=sharding):
        return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x) if not hasattr(x, "dtype")
                                    else x.dtype, sharding=s)
    if isinstance(sharding, jax.sharding.Sharding) or sharding is None:
        return jax.tree.map(leaf, tree)
    return jax.tree.map(leaf, tree, sharding)


def abstract_batch(config, global_batch: int, sharding: Any = None) -> dict[str, Any]:
    """The step's batch as ``ShapeDtypeStruct``s (the pipeline's keys; int64 as JAX
    receives it without x64)."""
    cfg = pipeline.DataConfig.from_dict(config.data.to_dict())
    return {k: jax.ShapeDtypeStruct((global_batch,) + shape,
                                    jax.dtypes.canonicalize_dtype(dtype), sharding=sharding)
            for k, (shape, dtype) in pipeline.batch_spec(cfg).items()}


def abstract_state(config, system, txs) -> Any:
    return jax.eval_shape(functools.partial(state_lib.create_state, system, txs, config.seed,
                                            config.data.resolution))


def _inference_state(state: Any) -> Any:
    """The state ``predict`` reads: parameters and collections, no optimizer state."""
    return state.replace(nets={n: net.replace(opt_state=()) for n, net in state.nets.items()})


@functools.lru_cache(maxsize=None)
def _host_device() -> Any:
    return jax.devices("cpu")[0]


class _Program:
    """One program to compile: ``make(mesh, platform)`` returns the jitted function,
    ``args(mesh, batch)`` its abstract arguments for a mesh and a global batch."""

    def __init__(self, name: str, make: Callable[[Any, str], Callable],
                 args: Callable[[Any, int], tuple]):
        self.name, self.make, self.args = name, make, args


def _programs(config, system, which: tuple[str, ...]) -> list[_Program]:
    txs = system.optimizers(1)
    state = abstract_state(config, system, txs)
    out = []
    if "train_step" in which:
        frozen = system.load_frozen(training=True)

        how = config.train.get("state_sharding", "replicated")

        def train_args(mesh, batch):
            rep = parallel.replicated_sharding(mesh)
            return (_abstract(state, state_lib.state_sharding(state, mesh, how)),
                    abstract_batch(config, batch, parallel.batch_sharding(mesh)),
                    _abstract(frozen, rep))

        out.append(_Program(
            "train_step",
            lambda mesh, platform: programs.make_train_step(
                system, txs, mesh, state_lib.state_sharding(state, mesh, how),
                platform=platform),
            train_args))
    if "predict" in which:
        pred_frozen = system.load_frozen(training=False)
        variant = dict(system.eval_variants()).get("", {})
        inference_state = _inference_state(state)

        def predict_args(mesh, batch):
            rep = parallel.replicated_sharding(mesh)
            return (_abstract(inference_state, rep),
                    abstract_batch(config, batch, parallel.batch_sharding(mesh)),
                    _abstract(pred_frozen, rep))

        out.append(_Program(
            "predict",
            lambda mesh, platform: programs.make_predict(system, mesh, platform, **variant),
            predict_args))
    return out


# --------------------------------------------------------------------------------------------
# Compiling.
# --------------------------------------------------------------------------------------------


def model_flops(program: _Program, platform: str, per_chip_batch: int) -> float | None:
    """FLOPs of one device's share of a step: the program traced for ``platform``, lowered
    for one host device at the per-chip batch, counted by XLA on the unoptimised program (no
    padding, no rematerialisation)."""
    mesh = parallel.make_data_mesh([_host_device()])
    lowered = program.make(mesh, platform).lower(*program.args(mesh, per_chip_batch))
    cost = _cost(lowered)
    return float(cost["flops"]) if cost and "flops" in cost else None


def compile_program(program: _Program, target: accelerators.Target, mesh,
                    per_chip_batch: int, breakdown: bool = False) -> dict[str, Any]:
    """Lowers and compiles one program for the target; its figures (see the module
    docstring), with ``breakdown`` also the per-op account of where its bytes and FLOPs go
    (:mod:`unmask_jax.hlo_breakdown`). Raises DoesNotFit when the compiler runs out of
    device memory."""
    global_batch = per_chip_batch * target.num_devices
    t0 = time.perf_counter()
    lowered = program.make(mesh, target.platform).lower(*program.args(mesh, global_batch))
    try:
        compiled = _compile_uncached(lowered)
    except Exception as e:  # noqa: BLE001 - XLA raises its own error types
        oom = parse_out_of_memory(str(e))
        if oom is None:
            raise
        used = oom["used_bytes"]
        raise DoesNotFit(
            f"{program.name} does not fit {target.name} at {per_chip_batch} images per chip: "
            + (f"it needs {used / (1 << 30):.2f} GiB of {oom['memory_space']} per device, the "
               f"chip has {oom['capacity_bytes'] / (1 << 30):.2f} GiB"
               if used is not None else str(e).splitlines()[0])
            + "; lower --per_chip_batch or the resolution") from None
    seconds = time.perf_counter() - t0
    mem = memory(compiled, target.chip.hbm_bytes)
    cost = _cost(compiled)
    compiled_flops = float(cost["flops"]) if cost and "flops" in cost else None
    bytes_accessed = (float(cost["bytes accessed"]) if cost and "bytes accessed" in cost
                      else None)
    flops = model_flops(program, target.platform, per_chip_batch)
    hlo_text = compiled.as_text()
    result = {
        "program": program.name,
        "per_chip_batch": per_chip_batch, "global_batch": global_batch,
        "compile_seconds": seconds,
        "memory": mem,
        "cost": {
            "model_flops_per_step": flops,
            "compiled_flops_per_step": compiled_flops,
            "bytes_accessed_per_step": bytes_accessed,
            "model_flops_per_image": flops / per_chip_batch if flops is not None else None,
            "compiled_flops_per_image": (compiled_flops / per_chip_batch
                                         if compiled_flops is not None else None),
            "bytes_per_image": (bytes_accessed / per_chip_batch
                                if bytes_accessed is not None else None),
        },
        "collectives": collectives(hlo_text),
        "roofline": roofline(model_flops=flops or 0.0, compiled_flops=compiled_flops,
                             bytes_accessed=bytes_accessed, chip=target.chip,
                             per_chip_batch=per_chip_batch, num_devices=target.num_devices),
    }
    if breakdown:
        result["breakdown"] = hlo_breakdown.account(hlo_text, total_bytes=bytes_accessed,
                                                    total_flops=compiled_flops)
        # The same roofline with the account's HBM bytes: XLA's "bytes accessed" also counts
        # the on-chip memory's traffic, which HBM bandwidth does not limit.
        result["roofline_hbm"] = roofline(
            model_flops=flops or 0.0, compiled_flops=compiled_flops,
            bytes_accessed=(result["breakdown"]["hbm_bytes"] if bytes_accessed is not None
                            else None),
            chip=target.chip, per_chip_batch=per_chip_batch, num_devices=target.num_devices)
        result["hlo_text"] = hlo_text  # written beside the report, not into its JSON
    if mem.get("available") and not mem["fits"]:
        raise DoesNotFit(
            f"{program.name} does not fit {target.name} at {per_chip_batch} images per chip: "
            f"it needs {mem['total_bytes'] / (1 << 30):.2f} GiB per device, the chip has "
            f"{mem['hbm_bytes'] / (1 << 30):.2f} GiB; lower --per_chip_batch or the "
            "resolution")
    return result


def _compile_uncached(lowered) -> Any:
    """``lowered.compile()`` kept out of JAX's persistent compilation cache: a program for
    compile-only devices cannot be loaded back from it, so it is not written there (a
    minimum compile time no compile reaches) and an entry an older version wrote is not
    reported as a read error."""
    minimum = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Error reading persistent compilation "
                                    "cache entry")
            return lowered.compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)


def parse_programs(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    bad = [n for n in names if n not in PROGRAMS]
    if bad or not names:
        raise CompileSetupError(f"--compile_programs={text!r}: choose from {PROGRAMS}, "
                                "comma-separated")
    return names


def compile_for(config, workdir: str | None, topology: str, per_chip_batch: int = 8,
                programs: tuple[str, ...] = PROGRAMS, breakdown: bool = False
                ) -> dict[str, Any]:
    """``--mode=compile``: compiles the config's programs for ``topology`` and writes the
    report to ``workdir/compile/`` (when a workdir is given). Returns the report.
    ``breakdown``: each program's per-op account too (``--breakdown``)."""
    if int(per_chip_batch) <= 0:
        raise CompileSetupError(f"--per_chip_batch={per_chip_batch} must be positive")
    per_chip_batch = int(per_chip_batch)
    try:
        target = accelerators.resolve(topology)
        devices = accelerators.devices(target)
    except accelerators.TopologyError as e:
        raise CompileSetupError(str(e)) from None
    mesh = parallel.make_data_mesh(devices)
    system = systems.build(config, abstract_frozen=True)
    report: dict[str, Any] = {
        "config": config.get("name", ""), "system": system.name,
        "compute_dtype": config.train.compute_dtype,
        "state_sharding": config.train.get("state_sharding", "replicated"),
        "resolution": int(config.data.resolution),
        "target": target.describe(), "chip_source": target.chip.source,
        "per_chip_batch": per_chip_batch,
        "global_batch": per_chip_batch * target.num_devices,
        "versions": _versions(), "programs": {},
    }
    log.info("compiling %s for %s (%d %s devices, %d hosts), %d images per chip, %s",
             config.get("name", ""), target.name, target.num_devices, target.platform,
             target.num_hosts, per_chip_batch, config.train.compute_dtype)
    with backends.use(target.platform):  # shapes only, but traced as the target
        todo = _programs(config, system, programs)
    for program in todo:
        try:
            result = compile_program(program, target, mesh, per_chip_batch, breakdown)
        except DoesNotFit as e:
            report["programs"][program.name] = {"program": program.name, "fits": False,
                                                "error": str(e)}
            _write(workdir, target, report)
            raise
        report["programs"][program.name] = result
        log.info("%s: %s", program.name, summary_line(result))
    _write(workdir, target, report)
    return report


def _versions() -> dict[str, str]:
    from importlib import metadata
    out = {"jax": jax.__version__}
    for dist in ("jaxlib", "libtpu", "jax-cuda12-plugin"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 30):.2f} GiB"


def _num(n: float | None, unit: float = 1e9, suffix: str = "G") -> str:
    return "-" if n is None else f"{n / unit:,.1f} {suffix}"


def summary_line(r: Mapping[str, Any]) -> str:
    mem, cost, roof = r["memory"], r["cost"], r["roofline"]
    mfu, ips = roof["mfu_bound"], roof["images_per_s_per_chip"]
    return (f"{_gib(mem.get('total_bytes'))}/device, {_num(cost['model_flops_per_image'])}FLOP "
            f"and {_num(cost['bytes_per_image'], suffix='GB')}/image, collectives "
            f"{_num(r['collectives']['bytes'], 1e6, 'MB')}, MFU bound "
            f"{'-' if mfu is None else f'{mfu:.1%}'}, {'-' if ips is None else f'{ips:.1f}'}"
            f" img/s/chip, compiled in {r['compile_seconds']:.0f} s")


def markdown(report: Mapping[str, Any]) -> str:
    t = report["target"]
    lines = [f"# {report['config']} on {t['name']} ({t['devices']} x {t['chip']}, "
             f"{t['hosts']} hosts)", "",
             f"System `{report['system']}`, {report['resolution']}x{report['resolution']}, "
             f"{report['compute_dtype']}, {report['per_chip_batch']} images per device "
             f"(global batch {report['global_batch']}), training state "
             f"{report.get('state_sharding', 'replicated')}. Chip: {report['chip_source']}.",
             "",
             "| program | memory/device (of HBM) | args / temp | model FLOP/image | "
             "compiled FLOP/image | HBM bytes/image | collectives | bound | MFU bound | "
             "img/s/chip | img/s/slice | compile |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["programs"].items():
        if "memory" not in r:
            lines.append(f"| {name} | does not fit: {r.get('error', '')} |" + " |" * 10)
            continue
        mem, cost, roof, col = r["memory"], r["cost"], r["roofline"], r["collectives"]
        mfu = roof["mfu_bound"]
        ips = roof["images_per_s_per_chip"]
        slice_ips = "-" if ips is None else f"{ips * t['devices']:,.0f}"
        lines.append(
            f"| {name} | {_gib(mem.get('total_bytes'))} ({mem.get('fraction_of_hbm', 0):.0%}) | "
            f"{_gib(mem.get('argument_bytes'))} / {_gib(mem.get('temp_bytes'))} | "
            f"{_num(cost['model_flops_per_image'])} | {_num(cost['compiled_flops_per_image'])} | "
            f"{_num(cost['bytes_per_image'], suffix='GB')} | {col['count']} ops, "
            f"{_num(col['bytes'], 1e6, 'MB')} | {roof['bound'] or '-'} | "
            f"{'-' if mfu is None else f'{mfu:.1%}'} | {'-' if ips is None else f'{ips:,.1f}'} | "
            f"{slice_ips} | "
            f"{r['compile_seconds']:.0f} s |")
    lines += ["", "Per step and device unless stated. Model FLOPs: XLA's count of the "
              "unoptimised program at the per-device batch (no padding, no "
              "rematerialisation); compiled FLOPs and HBM bytes: the target compiler's cost "
              "analysis of the optimised program. Roofline: step time >= max(compiled FLOPs "
              "/ peak, HBM bytes / bandwidth); MFU bound = model FLOPs / (that time x "
              "peak)."]
    for name, r in report["programs"].items():
        if "breakdown" in r:
            hbm = r["roofline_hbm"]
            mfu = "-" if hbm["mfu_bound"] is None else f"{hbm['mfu_bound']:.1%}"
            lines += ["", f"{name} with the HBM bytes of the account below "
                      f"({r['breakdown']['hbm_bytes'] / 1e9:,.2f} GB per step): "
                      f"{hbm['bound'] or '-'}-bound, MFU bound {mfu}."]
            lines += [""] + hlo_breakdown.markdown(r["breakdown"], name)
    return "\n".join(lines) + "\n"


def _write(workdir: str | None, target: accelerators.Target, report: Mapping[str, Any]) -> None:
    if not workdir:
        return
    out = epath.Path(workdir) / "compile"
    out.mkdir(parents=True, exist_ok=True)
    report = dict(report, programs=dict(report["programs"]))
    for name, r in report["programs"].items():
        if "hlo_text" in r:  # the optimised program the breakdown read (--breakdown)
            (out / f"{target.file_stem}.{name}.hlo.txt").write_text(r["hlo_text"])
            report["programs"][name] = {k: v for k, v in r.items() if k != "hlo_text"}
    (out / f"{target.file_stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{target.file_stem}.md").write_text(markdown(report))
    log.info("compile report: %s", out / f"{target.file_stem}.json")
