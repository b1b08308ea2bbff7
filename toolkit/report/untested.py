"""Find runs whose tested checkpoint predates their variant's change ("change never tested"): pure, on DataFrames.

A run is tested on its best-val checkpoint. When fine-tuning hurts, that can be a probe-epoch checkpoint, and for a
variant whose change acts only once the backbone trains (BatchNorm mode, stochastic depth, the backbone's lr) the
tested model is then the baseline's: the row would print the baseline's number under the variant's name.

How the report knows when a change takes effect, from the runs' own records only:

- the variant's change is the set of config keys (``config.<dotted key>`` columns) whose value differs from the
  baseline's; keys that vary among the baseline's own runs (seed, run folder, ablation identity) are not changes;
- each run records the epoch and phase of the checkpoint it tested and its first fine-tuning epoch
  (``health/tested_epoch``, ``health/tested_phase``, ``health/finetune_from``, written by ``toolkit fit``);
- a key in ``ACTS_WHEN_BACKBONE_TRAINS`` acts from ``finetune_from`` (never, for a linear probe); with the L-BFGS
  probe (``model.probe: lbfgs``) the keys of ``ACTS_AFTER_SOLVED_PROBE`` also act only from ``finetune_from`` (the
  probe epochs take no optimizer step; the solve starts from a zero head and ignores augmentation and dropout);
  every other key acts from epoch 0, so with an SGD probe the probe epochs count for head-only switches (dropout,
  head init, label smoothing);
- the change has taken effect once every one of its keys acts (a part that never acted is a part never tested);
  a run whose tested epoch is before that (or whose change never acts) is ``change never tested``: listed,
  flagged, never averaged as that variant.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

#: keys that act only while the backbone trains (a frozen backbone runs in eval mode with fixed weights)
ACTS_WHEN_BACKBONE_TRAINS = ("model.batchnorm", "model.drop_path_rate", "model.backbone_lr_scale")
#: key prefixes that act only after an L-BFGS probe: its epochs take no optimizer step, and the solve starts from a
#: zero head on the un-augmented images without dropout (see toolkit.model.probe)
ACTS_AFTER_SOLVED_PROBE = (
    "model.optimizer",
    "model.lr_scheduler",
    "model.drop_rate",
    "model.head_init",
    "data.augment",
    "data.mixup",
    "data.cutmix",
)
TESTED_EPOCH, TESTED_PHASE, FINETUNE_FROM = "health/tested_epoch", "health/tested_phase", "health/finetune_from"
_IGNORED = ("config.ablation.",)


def _value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    return str(value)


def changed_keys(runs: pd.DataFrame, variant: str, baseline: str) -> list[str]:
    """The dotted config keys (without ``config.``) whose value in ``variant``'s runs differs from the baseline's."""
    configs = [c for c in runs.columns if c.startswith("config.") and not c.startswith(_IGNORED)]
    base = runs[runs["variant"] == baseline]
    mine = runs[runs["variant"] == variant]
    if base.empty or mine.empty:
        return []
    changed = []
    for column in configs:
        base_values = {_value(v) for v in base[column]}
        if len(base_values) != 1:  # varies among the baseline's own runs: the seed, the run folder
            continue
        if {_value(v) for v in mine[column]} != base_values:
            changed.append(column.removeprefix("config."))
    return changed


def _number(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else int(number)


def effect_epoch(keys: list[str], finetune_from: int | None, lbfgs_probe: bool) -> tuple[int | None, str]:
    """The first epoch at which every key of a change acts (None: one never does), and the key that decides it."""
    latest: tuple[int | None, str] = (0, keys[0] if keys else "")
    for key in keys:
        late = key in ACTS_WHEN_BACKBONE_TRAINS or (lbfgs_probe and key.startswith(ACTS_AFTER_SOLVED_PROBE))
        epoch = finetune_from if late else 0
        if epoch is None:
            return None, key
        if epoch > (latest[0] or 0):
            latest = (epoch, key)
    return latest


def untested_reason(row: pd.Series, keys: list[str]) -> str | None:
    """Why this run's tested checkpoint does not test its change (None: it does, or it cannot be told)."""
    tested = _number(row.get(TESTED_EPOCH))
    if not keys or tested is None:
        return None
    finetune_from = _number(row.get(FINETUNE_FROM))
    epoch, key = effect_epoch(keys, finetune_from, row.get("config.model.probe") == "lbfgs")
    phase = row.get(TESTED_PHASE) if isinstance(row.get(TESTED_PHASE), str) else "?"
    if epoch is None:
        return f"its change ({key}) never acts: the backbone never trains; tested epoch {tested} ({phase})"
    if tested < epoch:
        return f"tested the epoch-{tested} checkpoint ({phase}), before its change ({key}) acts at epoch {epoch}"
    return None


def find_untested(runs: pd.DataFrame, baseline: str) -> pd.Series:
    """Per run (index of ``runs``): the reason it is ``change never tested``, or None."""
    reasons = pd.Series(None, index=runs.index, dtype=object)
    if "variant" not in runs.columns or TESTED_EPOCH not in runs.columns:
        return reasons
    for variant in runs["variant"].dropna().unique():
        if variant == baseline:
            continue
        keys = changed_keys(runs, variant, baseline)
        for index, row in runs[runs["variant"] == variant].iterrows():
            reasons[index] = untested_reason(row, keys)
    return reasons
