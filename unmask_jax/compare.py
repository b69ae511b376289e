"""Several runs' latest evaluations side by side, as one Markdown table.

  python -m unmask_jax.compare DIR1 DIR2 ... [--eval_name=lfw-test] [--out=table.md]

One row per run: the run (its directory name), its config name (from the evaluation JSON, else
the checkpoint's recorded config, else the directory name), the evaluated step and image
count, then the union of the runs' metrics (composited output, raw output, FID, ms/image)
and the device; a metric a run does not have is shown as an em dash. ``--eval_name`` picks
an evaluation on other data (``DIR/eval/<name>/latest.json``, e.g. ``lfw-test``) instead of
the run's own (``DIR/eval/latest.json``). A directory without that evaluation is an error
(message, exit status 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from etils import epath

from unmask_jax import report
from unmask_jax.exits import USER_ERROR_STATUS


class CompareError(Exception):
    """A directory without the requested evaluation (the message says what to run)."""


def _config_name(workdir: str) -> str | None:
    try:
        from unmask_jax import checkpoints
        return checkpoints.recorded_config(workdir).get("name")
    except Exception:  # pylint: disable=broad-except  (no checkpoint, unreadable: no name)
        return None


def load_latest(workdir: str, eval_name: str | None = None) -> dict[str, Any]:
    """The latest evaluation JSON of a run (``eval/latest.json`` or
    ``eval/<eval_name>/latest.json``); CompareError when there is none."""
    base = epath.Path(workdir) / "eval"
    path = base / eval_name / "latest.json" if eval_name else base / "latest.json"
    if not path.exists():
        others = sorted(p.name for p in base.iterdir()
                        if p.is_dir() and (p / "latest.json").exists()) if base.exists() else []
        hint = (f"; evaluations on other data there: {', '.join(others)} (--eval_name=NAME)"
                if others else "")
        what = f"evaluation {eval_name!r}" if eval_name else "evaluation"
        raise CompareError(
            f"{workdir} has no {what} ({os.fspath(path)} not found){hint}. Evaluate it with "
            f"python -m unmask_jax.main --config=... --workdir={workdir} --mode=evaluate")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CompareError(f"{os.fspath(path)} is not valid JSON: {e}") from None


def compare(workdirs: Sequence[str], eval_name: str | None = None) -> str:
    """The Markdown table of the runs' latest evaluations."""
    runs = []
    for workdir in workdirs:
        result = dict(load_latest(workdir, eval_name))
        if not result.get("name"):
            result["name"] = _config_name(workdir) or os.path.basename(
                os.path.normpath(workdir))
        runs.append((os.path.basename(os.path.normpath(workdir)) or workdir, result))
    return report.compare_markdown(runs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unmask_jax.compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("workdirs", nargs="+", metavar="DIR", help="run directories")
    parser.add_argument("--eval_name", default=None,
                        help="an evaluation on other data, e.g. lfw-test (eval/<name>/)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    try:
        table = compare(args.workdirs, args.eval_name)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR_STATUS
    print(table, end="")
    if args.out:
        epath.Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
