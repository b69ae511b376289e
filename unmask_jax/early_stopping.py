"""Early stopping on an evaluation metric (``config.train.early_stopping``).

Training stops when ``metric`` has not improved by more than ``min_delta`` for ``patience``
evaluations in a row (UnVeilify's reference: ``early_stop: 10`` validations). The history is
the run's own evaluation record, ``<workdir>/eval/step_<N>.json``, so the decision survives a
kill and a resume without anything extra in the checkpoint: a resumed run re-reads the
evaluations up to its step and continues the count; a run that already stopped early stops
again at once.

``metric`` names a key of the evaluation JSON; a nested key is written with "/" (e.g.
``gt_mask/psnr``). ``mode`` is ``max`` (PSNR, SSIM, Dice, ID-sim) or ``min`` (LPIPS).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any, Mapping

from etils import epath

log = logging.getLogger(__name__)

MODES = ("max", "min")
_STEP_FILE = re.compile(r"^step_(\d+)\.json$")


class EarlyStoppingMetricError(ValueError):
    """``metric`` names no number of the evaluation result (a config mistake)."""


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    metric: str
    mode: str = "max"
    patience: int = 10
    min_delta: float = 0.0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "EarlyStopping | None":
        """None when ``cfg.metric`` is unset (early stopping off); bad values raise."""
        cfg = dict(cfg or {})
        if not cfg.get("metric"):
            return None
        out = cls(str(cfg["metric"]), str(cfg.get("mode", "max")),
                  int(cfg.get("patience", 10)), float(cfg.get("min_delta", 0.0)))
        if out.mode not in MODES:
            raise ValueError(f"config.train.early_stopping.mode={out.mode!r}: choose one of "
                             f"{MODES}")
        if out.patience < 1 or out.min_delta < 0:
            raise ValueError("config.train.early_stopping: patience must be >= 1 and "
                             "min_delta >= 0")
        return out

    def value(self, result: Mapping[str, Any]) -> float:
        """The metric in one evaluation result; a missing key names the ones there are."""
        node: Any = result
        for part in self.metric.split("/"):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            keys = sorted(k for k, v in result.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool))
            raise EarlyStoppingMetricError(
                f"config.train.early_stopping.metric={self.metric!r} is not a number in the "
                f"evaluation result (value {node!r}); numeric keys: {keys}")
        return float(node)

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        if self.mode == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta

    def status(self, history: list[tuple[int, float]]) -> tuple[bool, int | None, float | None,
                                                                 int]:
        """(stop, best step, best value, evaluations since the best) over ``history``
        ((step, value) pairs in step order)."""
        best_step, best, since = None, None, 0
        for step, value in history:
            if self.improved(value, best):
                best_step, best, since = step, value, 0
            else:
                since += 1
        return since >= self.patience, best_step, best, since


def read_history(workdir: str, rule: EarlyStopping, up_to_step: int) -> list[tuple[int, float]]:
    """(step, metric) of the run's evaluations at steps <= ``up_to_step``, in step order."""
    eval_dir = epath.Path(workdir) / "eval"
    if not eval_dir.exists():
        return []
    out = []
    for path in eval_dir.iterdir():
        m = _STEP_FILE.match(path.name)
        if not m or int(m.group(1)) > up_to_step:
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            log.warning("early stopping: cannot read %s (%s); skipped", path, e)
            continue
        out.append((int(m.group(1)), rule.value(result)))
    return sorted(out)
