"""Markdown tables of evaluation results (pure functions of the evaluation JSON).

* :func:`evaluation_markdown`: one evaluation (``eval/step_N.md``, ``eval/latest.md``): a
  header naming the data, image count, backbones, FID setting and device, then one table
  whose rows are the system (composited and raw output) and the two baselines (masked input,
  OpenCV Telea), one column per metric present, plus ms/image; then one sub-table per
  evaluation variant (e.g. GANMasker's ``gt_mask``: the stage-2 generator given the
  ground-truth map).
* :func:`compare_markdown`: several runs' evaluations side by side, one row per run
  (``python -m unmask_jax.compare``).

A missing value is shown as an em dash.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

MISSING = "—"

#: (JSON key, column title, format) in table order.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("psnr", "PSNR", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("psnr_mask", "PSNR mask", "{:.2f}"),
    ("ssim_mask", "SSIM mask", "{:.4f}"),
    ("lpips", "LPIPS", "{:.4f}"),
    ("lpips_mask", "LPIPS mask", "{:.4f}"),
    ("id_sim", "ID-sim", "{:.4f}"),
    ("id_sim_reference", "ID-sim vs reference", "{:.4f}"),
    ("dice", "Dice", "{:.4f}"),
    ("pixel_accuracy", "pixel acc.", "{:.4f}"),
    ("fid", "FID", "{:.2f}"),
)
METRIC_KEYS = tuple(k for k, _, _ in METRICS)
_TITLES = {k: t for k, t, _ in METRICS}
_FORMATS = {k: f for k, _, f in METRICS}
#: Result keys that are not evaluation variants although their values are dicts.
NON_VARIANT_DICTS = ("baselines", "data", "eval_data")
BASELINE_TITLES = {"masked_input": "masked input", "telea": "Telea (OpenCV)"}


def fmt(value: Any, spec: str = "{:.4f}") -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return spec.format(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (header row, separator, rows) ending in a newline."""
    return "\n".join(_table(header, rows)) + "\n"


def _system_rows(scores: Mapping[str, Any], label: str) -> list[tuple[str, dict[str, Any]]]:
    """(row name, metric -> value) for the composited and raw output of one variant."""
    comp = {k: scores[k] for k in METRIC_KEYS if k in scores}
    raw = {k: scores[f"raw_{k}"] for k in METRIC_KEYS if f"raw_{k}" in scores}
    rows = [(f"{label} (composited)" if raw else label, comp)]
    if raw:
        rows.append((f"{label} (raw output)", raw))
    return rows


def _metric_table(rows: Sequence[tuple[str, Mapping[str, Any]]],
                  extra: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Rows with the metric columns any of them has, then the ``extra`` columns (title ->
    cell per row)."""
    present = [k for k in METRIC_KEYS if any(k in values for _, values in rows)]
    extra = dict(extra or {})
    header = [""] + [_TITLES[k] for k in present] + list(extra)
    body = []
    for i, (name, values) in enumerate(rows):
        cells = [name] + [fmt(values.get(k), _FORMATS[k]) for k in present]
        body.append(cells + [col[i] for col in extra.values()])
    return _table(header, body)


def variants(result: Mapping[str, Any]) -> list[str]:
    """Names of the evaluation variants in a result (sub-dicts other than baselines/data)."""
    return [k for k, v in result.items()
            if isinstance(v, Mapping) and k not in NON_VARIANT_DICTS]


def device_text(result: Mapping[str, Any]) -> str:
    if not result.get("device"):
        return MISSING
    n = result.get("device_count")
    return f"{result['device']}" + (f" x{n}" if n and n > 1 else "")


def evaluation_markdown(result: Mapping[str, Any], title: str | None = None) -> str:
    """The Markdown report of one evaluation result (the evaluation JSON as a dict)."""
    step = result.get("step")
    name = title or result.get("name") or "evaluation"
    where = ""
    data = result.get("data") or {}
    if data:
        where = f" of `{data.get('source')}` split `{data.get('eval_split')}`"
        if data.get("data_dir"):
            where += f" (`{data['data_dir']}`)"
    lines = [f"# {name}: step {step}" + (f", `{result['eval_name']}`"
                                          if result.get("eval_name") else ""), ""]
    facts = [f"{result.get('num_images', MISSING)} images{where}"
             + (f", {result['num_identities']} identities"
                if result.get("num_identities") is not None else "")]
    if result.get("id_backbone"):
        facts.append(f"ID-sim backbone: {result['id_backbone']}")
    if result.get("bn_statistics"):
        facts.append(f"generator statistics: {result['bn_statistics']}")
    if "fid" in result:
        facts.append(f"FID on {result.get('fid_num_images', MISSING)} images "
                     f"(Inception pool3, {result.get('fid_input_size', 299)} px)")
    else:
        facts.append("FID: off (set eval.fid_weights)")
    if result.get("ms_per_image") is not None:
        facts.append(f"speed: {fmt(result['ms_per_image'], '{:.2f}')} ms/image at batch "
                     f"{result.get('ms_per_image_batch', MISSING)} on "
                     f"{device_text(result)}")
    lines += ["; ".join(facts) + ".", ""]

    rows = _system_rows(result, "system")
    baselines = result.get("baselines") or {}
    rows += [(BASELINE_TITLES.get(b, b), dict(v)) for b, v in baselines.items()]
    ms = fmt(result.get("ms_per_image"), "{:.2f}")
    speed = [ms if i == 0 else MISSING for i in range(len(rows))]  # one predict per image
    extra = {"ms/image": speed, "device": [device_text(result) if s != MISSING else MISSING
                                           for s in speed]}
    lines += _metric_table(rows, extra)
    for v in variants(result):
        lines += ["", f"## Variant `{v}`", ""]
        lines += _metric_table(_system_rows(result[v], v))
    return "\n".join(lines) + "\n"


#: Top-level JSON keys that :func:`compare_markdown` shows besides the metrics.
SPEED_COLUMNS = (("ms_per_image", "ms/image", "{:.2f}"),)


def compare_markdown(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """One table, one row per (run name, evaluation result): run, config name, step, images,
    then the union of the metrics (composited, then raw, then FID), ms/image and device."""
    cols: list[tuple[str, str, str]] = []
    for prefix, suffix in (("", ""), ("raw_", " (raw)")):
        for k, title, spec in METRICS:
            if any(prefix + k in r for _, r in runs):
                cols.append((prefix + k, title + suffix, spec))
    for k, title, spec in SPEED_COLUMNS:
        if any(k in r for _, r in runs):
            cols.append((k, title, spec))
    header = ["run", "config", "step", "images"] + [t for _, t, _ in cols] + ["device"]
    body = []
    for run, r in runs:
        body.append([run, str(r.get("name") or MISSING), fmt(r.get("step"), "{}"),
                     fmt(r.get("num_images"), "{}")]
                    + [fmt(r.get(k), spec) for k, _, spec in cols] + [device_text(r)])
    return "\n".join(_table(header, body)) + "\n"
