"""Where a compiled program's HBM bytes and FLOPs go: a per-op account of the optimised HLO,
each op named by the layer it comes from (``--mode=compile --breakdown``).

XLA's ``cost_analysis`` gives one total per program. This module reads the optimised HLO
text (``compiled.as_text()``) and counts, for every op the device runs (each fusion, each
unfused convolution, copy, collective, ...), in the computations that run as such (the entry
computation and the bodies of loops and calls; a fusion's own computation is part of its
fusion):

* ``bytes``: the sizes of its operands and results, with the padding of the target's tiled
  layouts (a TPU layout ``{...:T(8,128)}`` pads its two most minor dimensions to 8 x 128:
  a 3-channel bfloat16 image in a channels-minor layout takes 128 lanes per pixel). An op
  reads each operand once and writes its result once. Arrays in every memory space count,
  as in XLA's own total (which this sum matches within a few per cent): on a TPU that
  includes the on-chip vector memory (``S(1)`` in a layout), where the compiler prefetches
  weights in slices and joins them (``ConcatBitcast``);
* ``hbm_bytes``: the same without the arrays in on-chip memory: the traffic that HBM
  bandwidth limits (XLA's "bytes accessed", which the roofline divides by that bandwidth,
  counts both);
* ``flops``: 2 x multiply-adds of the convolutions and dots in it (elementwise work is not
  counted: it is small next to them and hides behind the memory traffic; a convolution of a
  dilated input counts the taps that meet data, as if evenly spread);
* ``cycles``: the TPU compiler's own estimate of the op's run time (``estimated_cycles`` in
  its ``backend_config``), where it gives one;
* ``layer``: the ``op_name`` metadata JAX writes for each op (the module path of the Flax
  layer and the primitive), with ``jit(...)`` wrappers dropped and the backward pass marked
  ``bwd`` (``transpose(jvp(...))``), so that ``bwd MaskRemover/generator/up3/conv`` reads as
  the gradient of that layer.

Loop bodies are counted once per appearance, not per iteration (the train steps have no
loops; a loop's ops are marked by their computation's name).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any, Iterable

_DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16,
               "f16": 16, "bf16": 16, "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64,
               "f64": 64, "c64": 64, "c128": 128, "f8e4m3fn": 8, "f8e5m2": 8,
               "f8e4m3fnuz": 8, "f8e5m2fnuz": 8, "f8e4m3b11fnuz": 8, "token": 0}
# One array type: dtype[dims]{layout}; the layout (minor-to-major, then tiles) is optional.
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_DTYPE_BITS, key=len, reverse=True)) +
                    r")\[([0-9,]*)\](\{[^{}]*\})?")
_TILE = re.compile(r"T\(([0-9,]+)\)")
_HEADER = re.compile(r"^(ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+"
                    r"(?P<op>[a-z][\w\-]*)\((?P<rest>.*)$")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_CYCLES = re.compile(r'"estimated_cycles":"([0-9]+)"')
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_RUN_AS_CODE = re.compile(r"\b(?:body|condition|to_apply)=%([\w.\-]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_DIM_LABELS = re.compile(r"\bdim_labels=(\w+)_(\w+)->(\w+)")
_LHS_DILATE = re.compile(r"\blhs_dilate=([0-9x]+)")
_LHS_CONTRACTING = re.compile(r"\blhs_contracting_dims=\{([0-9,]*)\}")
# Ops that move or compute nothing themselves.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "iota", "opt-barrier"}
_CALLERS = {"while", "call", "conditional"}  # their own bytes are their computations'
_SLICES = {"slice", "dynamic-slice"}
_ON_CHIP = re.compile(r"S\([12]\)")  # a TPU's vector and scalar memories


@dataclasses.dataclass
class Op:
    """One op the device runs, with what it costs."""
    name: str
    opcode: str
    layer: str
    bytes: int
    hbm_bytes: int
    flops: int
    cycles: int | None
    computation: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def array_bytes(dtype: str, dims: str, layout: str | None, padded: bool = True) -> int:
    """Bytes of one array, its most minor dimensions padded to the layout's first tile
    (``padded``) or not (the data itself)."""
    shape = [int(d) for d in dims.split(",") if d]
    if layout and padded:
        body = layout.strip("{}")
        order_text, _, tiles_text = body.partition(":")
        order = [int(d) for d in order_text.split(",") if d.strip().isdigit()]
        tile = _TILE.search(tiles_text)
        if tile and order and len(order) == len(shape):
            sizes = [int(t) for t in tile.group(1).split(",")]
            # The tile's last size pads the most minor dimension, the one before it the next.
            for k, size in enumerate(reversed(sizes)):
                if k < len(order):
                    axis = order[k]
                    shape[axis] = -(-shape[axis] // size) * size
    return math.prod(shape) * _DTYPE_BITS[dtype] // 8


def type_bytes(type_text: str, hbm_only: bool = False, padded: bool = True) -> int:
    """Bytes of an HLO type (an array or a tuple of arrays), tile padding included unless
    not ``padded``; with ``hbm_only``, of its arrays outside on-chip memory (no ``S(1)`` in
    their layout)."""
    return sum(array_bytes(d, s, l, padded) for d, s, l in _ARRAY.findall(type_text)
               if not (hbm_only and l and _ON_CHIP.search(l)))


def _dims(type_text: str) -> list[int]:
    m = _ARRAY.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def short_layer(op_name: str) -> str:
    """``jit(train_step)/transpose(jvp(MaskRemover))/generator/conv/conv_general_dilated``
    -> ``bwd MaskRemover/generator/conv/conv_general_dilated``."""
    backward = "transpose(" in op_name
    parts = []
    for part in op_name.split("/"):
        if re.fullmatch(r"p?jit\(.*\)", part):
            continue  # a jitted function's name, not a layer
        while True:  # peel transform wrappers: transpose(jvp(X)) -> X
            m = re.fullmatch(r"(?:transpose|jvp|vmap|remat|checkpoint)\((.*)\)", part)
            if not m:
                break
            part = m.group(1)
        if part:
            parts.append(part)
    text = "/".join(parts) or op_name
    return f"bwd {text}" if backward else text


def _split_operands(rest: str) -> tuple[str, str]:
    """(the operand list, the attributes after it) of the text after ``opcode(``."""
    depth = 1
    for i, ch in enumerate(rest):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return rest[:i], rest[i + 1:]
    return rest, ""


@dataclasses.dataclass
class _Instr:
    name: str
    type: str
    opcode: str
    operands: list[str]
    attrs: str


def parse_module(hlo_text: str) -> tuple[dict[str, list[_Instr]], str | None]:
    """{computation name: its instructions}, and the entry computation's name."""
    comps: dict[str, list[_Instr]] = {}
    entry = None
    current: list[_Instr] | None = None
    for line in hlo_text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = comps.setdefault(m.group("name"), [])
                if m.group(1):
                    entry = m.group("name")
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        operands_text, attrs = _split_operands(m.group("rest"))
        operands = re.findall(r"%([\w.\-]+)", operands_text)
        current.append(_Instr(m.group("name"), m.group("type"), m.group("op"), operands,
                              attrs))
    return comps, entry


def _matmul_flops(instr: _Instr, types: dict[str, str]) -> int:
    out = math.prod(_dims(instr.type)) if _dims(instr.type) else 1
    if instr.opcode == "convolution" and len(instr.operands) >= 2:
        kernel = _dims(types.get(instr.operands[1], ""))
        labels = _DIM_LABELS.search(instr.attrs)
        if not kernel or not labels:
            return 0
        rhs = labels.group(2)
        out_features = kernel[rhs.index("o")] if "o" in rhs else 1
        # A dilated input (a transposed convolution's) is mostly zeros: 1 tap in
        # prod(dilation) meets data.
        dilated = _LHS_DILATE.search(instr.attrs)
        holes = math.prod(int(d) for d in dilated.group(1).split("x")) if dilated else 1
        return 2 * out * math.prod(kernel) // max(out_features, 1) // holes
    if instr.opcode == "dot" and instr.operands:
        lhs = _dims(types.get(instr.operands[0], ""))
        m = _LHS_CONTRACTING.search(instr.attrs)
        if not lhs or not m:
            return 0
        k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d)
        return 2 * out * k
    return 0


def _flops(comp: str, comps: dict[str, list[_Instr]], cache: dict[str, int]) -> int:
    """FLOPs of the convolutions and dots in a fused computation (and fusions nested in it)."""
    if comp not in cache:
        cache[comp] = 0  # a cycle would be malformed HLO; count it once
        instrs = comps.get(comp, [])
        types = {i.name: i.type for i in instrs}
        total = 0
        for instr in instrs:
            total += _matmul_flops(instr, types)
            for callee in _CALLS.findall(instr.attrs):
                total += _flops(callee, comps, cache)
        cache[comp] = total
    return cache[comp]


def _layer(instr: _Instr, comps: dict[str, list[_Instr]], by_name: dict[str, _Instr]) -> str:
    m = _OP_NAME.search(instr.attrs)
    if not m and instr.opcode.endswith("-done") and instr.operands:
        start = by_name.get(instr.operands[0])  # an asynchronous pair: the start's name
        if start is not None:
            return _layer(start, comps, by_name)
    if not m:  # a fusion without metadata: its convolution's, else its root's
        for callee in _CALLS.findall(instr.attrs):
            body = comps.get(callee, [])
            named = [i for i in body if i.opcode in ("convolution", "dot")] + body[::-1]
            for inner in named:
                m = _OP_NAME.search(inner.attrs)
                if m:
                    break
            if m:
                break
    return short_layer(m.group(1).replace('\\"', '"')) if m else f"({instr.opcode})"


def _moved(instr: _Instr, types: dict[str, str], hbm_only: bool) -> int:
    """Bytes an op reads and writes. An asynchronous pair: the start reads the operands (its
    result is a tuple of buffers that alias them), the done writes the result. A slice reads
    only the part it writes."""
    base = instr.opcode.removesuffix("-start").removesuffix("-done")
    written = 0 if instr.opcode.endswith("-start") else type_bytes(instr.type, hbm_only)
    if base in _SLICES:
        if instr.opcode.endswith("-start"):
            return 0
        # The part read, from the source's memory (an asynchronous slice's source: HBM).
        source = types.get(instr.operands[0], "") if base == instr.opcode else ""
        on_chip = hbm_only and bool(_ON_CHIP.search(source))
        return written + (0 if on_chip else type_bytes(instr.type))
    if instr.opcode.endswith("-done"):
        return written
    return written + sum(type_bytes(types.get(o, ""), hbm_only) for o in instr.operands)


def ops(hlo_text: str) -> list[Op]:
    """Every op the device runs, with its bytes, FLOPs, estimated cycles and layer."""
    comps, entry = parse_module(hlo_text)
    fused: set[str] = set()
    run: list[str] = [entry] if entry else []
    for instrs in comps.values():
        for instr in instrs:
            if instr.opcode == "fusion" or instr.opcode.endswith("-start"):
                fused.update(_CALLS.findall(instr.attrs))
            if instr.opcode in _CALLERS:
                run += _RUN_AS_CODE.findall(instr.attrs)
                for group in _BRANCHES.findall(instr.attrs):
                    run += re.findall(r"%([\w.\-]+)", group)
    seen: set[str] = set()
    out: list[Op] = []
    cache: dict[str, int] = {}
    for comp in run:
        if comp in seen or comp in fused or comp not in comps:
            continue
        seen.add(comp)
        instrs = comps[comp]
        types = {i.name: i.type for i in instrs}
        by_name = {i.name: i for i in instrs}
        for instr in instrs:
            if instr.opcode in _FREE or instr.opcode in _CALLERS:
                continue
            nbytes, hbm = (_moved(instr, types, hbm_only) for hbm_only in (False, True))
            flops = _matmul_flops(instr, types) + sum(
                _flops(c, comps, cache) for c in _CALLS.findall(instr.attrs))
            cycles = _CYCLES.search(instr.attrs)
            out.append(Op(instr.name, instr.opcode, _layer(instr, comps, by_name), nbytes, hbm,
                          flops,
                          int(cycles.group(1)) if cycles else None, comp))
    return out


def _group(items: Iterable[Op], key) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = collections.defaultdict(
        lambda: {"bytes": 0, "hbm_bytes": 0, "flops": 0, "cycles": 0, "ops": 0})
    for op in items:
        g = groups[key(op)]
        g["bytes"] += op.bytes
        g["hbm_bytes"] += op.hbm_bytes
        g["flops"] += op.flops
        g["cycles"] += op.cycles or 0
        g["ops"] += 1
    return [{"layer": k, **v} for k, v in groups.items()]


def layer_of(op: Op) -> str:
    """The layer an op belongs to: its op_name without the primitive (the last part)."""
    head, sep, _ = op.layer.rpartition("/")
    return head if sep else op.layer


def account(hlo_text: str, top: int = 15, total_bytes: float | None = None,
            total_flops: float | None = None) -> dict[str, Any]:
    """The breakdown for a report: the ``top`` ops by bytes and by FLOPs, the ``top`` layers
    by bytes, and the sums (with XLA's totals, when given, to show what the estimate covers).
    """
    all_ops = ops(hlo_text)
    sum_bytes = sum(o.bytes for o in all_ops)
    sum_hbm = sum(o.hbm_bytes for o in all_ops)
    sum_flops = sum(o.flops for o in all_ops)
    sum_cycles = sum(o.cycles or 0 for o in all_ops)
    layers = _group(all_ops, layer_of)
    by_kind = _group(all_ops, lambda o: o.opcode)
    return {
        "ops": len(all_ops), "bytes": sum_bytes, "hbm_bytes": sum_hbm, "flops": sum_flops,
        "cycles": sum_cycles,
        "xla_bytes": total_bytes, "xla_flops": total_flops,
        "top_ops_by_bytes": [o.as_dict() for o in
                             sorted(all_ops, key=lambda o: -o.bytes)[:top]],
        "top_ops_by_flops": [o.as_dict() for o in
                             sorted(all_ops, key=lambda o: -o.flops)[:top] if o.flops],
        "top_layers_by_bytes": sorted(layers, key=lambda g: -g["bytes"])[:top],
        "by_opcode": sorted(by_kind, key=lambda g: -g["bytes"]),
    }


def _cycles(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def markdown(breakdown: dict[str, Any], program: str) -> list[str]:
    """Markdown tables of :func:`account`'s result."""
    b = breakdown
    total_b, total_c = max(b["bytes"], 1), max(b["cycles"], 1)

    def pct(x, t):
        return f"{100 * x / t:.1f}%"

    cover = (f"; XLA's totals: {b['xla_bytes'] / 1e9:,.2f} GB, "
             f"{(b['xla_flops'] or 0) / 1e9:,.1f} GFLOP" if b.get("xla_bytes") else "")
    lines = [f"### {program}: where the bytes and FLOPs go", "",
             f"{b['ops']} ops; sum of their operand and result bytes {b['bytes'] / 1e9:,.2f} "
             f"GB (tile padding included; {b['hbm_bytes'] / 1e9:,.2f} GB of it in HBM, the "
             f"rest in on-chip memory), convolution and dot FLOPs "
             f"{b['flops'] / 1e9:,.1f} GFLOP{cover}; estimated cycles "
             f"{b['cycles']:,} where the compiler gives them.", "",
             "Layers by bytes:", "",
             "| layer | bytes | share | of which HBM | GFLOP | cycles share | ops |",
             "|---|---|---|---|---|---|---|"]
    for g in b["top_layers_by_bytes"]:
        lines.append(f"| `{g['layer']}` | {g['bytes'] / 1e6:,.1f} MB | "
                     f"{pct(g['bytes'], total_b)} | {g['hbm_bytes'] / 1e6:,.1f} MB | "
                     f"{g['flops'] / 1e9:,.2f} | "
                     f"{pct(g['cycles'], total_c)} | {g['ops']} |")
    for title, key in (("Ops by bytes", "top_ops_by_bytes"), ("Ops by FLOPs", "top_ops_by_flops")):
        lines += ["", f"{title}:", "", "| op | kind | layer | bytes | HBM | GFLOP | cycles |",
                  "|---|---|---|---|---|---|---|"]
        for o in b[key]:
            lines.append(f"| {o['name']} | {o['opcode']} | `{o['layer']}` | "
                         f"{o['bytes'] / 1e6:,.1f} MB | {o['hbm_bytes'] / 1e6:,.1f} MB | "
                         f"{o['flops'] / 1e9:,.2f} | "
                         f"{_cycles(o['cycles'])} |")
    lines += ["", "By kind of op:", "", "| kind | bytes | share | of which HBM | ops |",
              "|---|---|---|---|---|"]
    for g in b["by_opcode"][:10]:
        lines.append(f"| {g['layer']} | {g['bytes'] / 1e6:,.1f} MB | "
                     f"{pct(g['bytes'], total_b)} | {g['hbm_bytes'] / 1e6:,.1f} MB | "
                     f"{g['ops']} |")
    return lines
