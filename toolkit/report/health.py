"""Classify each run of a runs table by its health, from its own records: pure, on DataFrames.

Classes (column ``health``, with a one-line ``reason``):

- ``finished``: completed (``health/status`` in its W&B summary or ``result.json``) and healthy; the only runs
  that enter a mean.
- ``failed``: the process failed (the ledger's reason, else the W&B exit code).
- ``diverged``: the divergence guard stopped it at a non-finite training loss, or (guard off) a step's loss was
  non-finite.
- ``interrupted``: no completion record: killed, stopped (SIGTERM) or still running. W&B marks a run stopped by
  SIGTERM as finished, so the W&B state alone never makes a run finished.
- ``corrupt``: its log cannot be read to the end.
- ``degenerate``: completed, but predicts one class on the test split or its test accuracy is not above chance
  (the majority-class share of the test split).
- ``not learning``: completed, but there is no evidence it learned anything. The evidence is validation accuracy
  when the run recorded it (``health/val_best``, ``health/val_n``, ``health/val_chance``): the run is not learning
  when its best validation accuracy is not significantly above the validation set's chance level (the
  majority-class share), by a one-sided exact binomial test of ``round(val_best * val_n)`` correct out of ``val_n``
  at level ``NOT_LEARNING_ALPHA`` (scipy ``binomtest``). Without a validation record, the smoothed train loss
  decides: the last epoch's mean train loss is within ``NOT_LEARNING_DROP`` of the first epoch's mean (a run of one
  epoch cannot be told and counts). The same rule for every row: one batch's loss is never compared with an
  epoch's mean (that dropped seeds that learned).
- ``change never tested``: finished and healthy, but the checkpoint it tested predates the point where its
  variant's change takes effect (e.g. a probe-epoch checkpoint of a fine-tuning switch); decided across runs by
  :mod:`toolkit.report.untested` (it needs the baseline's config), applied by :func:`classify` given a baseline.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from toolkit import keys
from toolkit.study.states import Health

#: the health classes (``study/states.Health``), by their short names
FINISHED, FAILED, DIVERGED, INTERRUPTED = (
    h.value for h in (Health.FINISHED, Health.FAILED, Health.DIVERGED, Health.INTERRUPTED)
)
CORRUPT, DEGENERATE, NOT_LEARNING, UNTESTED = (
    h.value for h in (Health.CORRUPT, Health.DEGENERATE, Health.NOT_LEARNING, Health.UNTESTED)
)
#: classes of runs that ran to their end (their own result, good or bad); the latest of these per seed decides it
COMPLETED = (FINISHED, DIVERGED, DEGENERATE, NOT_LEARNING, UNTESTED)
#: relative drop of the mean train loss (last epoch vs first) below which a run without a validation record counts as
#: not learning (1 %)
NOT_LEARNING_DROP = 0.01
#: level of the one-sided binomial test of best validation accuracy against chance
NOT_LEARNING_ALPHA = 0.05
#: the health columns a runs table may carry (from the W&B summary / result.json) and what sources add
STATUS, REASON = "health/status", "health/reason"


def _num(row: pd.Series, key: str) -> float | None:
    value = row.get(key)
    if value is None or isinstance(value, str):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _text(row: pd.Series, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) and value else None


def _stopped_at(row: pd.Series) -> str:
    """`` (last logged epoch index 2, max_epochs 12)`` from the W&B summary and the config, where known."""
    last, total = _num(row, "last_epoch"), _num(row, "config.trainer.max_epochs")
    if last is None:
        return ""
    return f" (last logged epoch index {int(last)}" + (f", max_epochs {int(total)})" if total else ")")


def classify_run(row: pd.Series) -> tuple[str, str]:
    """``(health, reason)`` of one runs-table row; ``reason`` is empty for a healthy finished run."""
    state = str(row.get("state"))
    status = _text(row, STATUS)
    ledger_reason = _text(row, "ledger_reason")
    if status == DIVERGED:
        return DIVERGED, _text(row, REASON) or "non-finite training loss"
    if state == CORRUPT:
        return CORRUPT, f"unreadable log: {row.get('damage')}"
    if state == "failed" or (ledger_reason is not None and status != FINISHED):
        code = _num(row, "exit_code")
        return FAILED, ledger_reason or (f"exit code {int(code)}" if code is not None else "the process failed")
    nonfinite = _num(row, "health/nonfinite_steps")
    if status == FINISHED and nonfinite:  # trained on with the divergence guard off
        return DIVERGED, f"{int(nonfinite)} training steps had a non-finite loss (divergence guard off)"
    if state != "finished":  # an open or cut log: its summary may miss the end, whatever result.json says
        damage = f", {row.get('damage')}" if isinstance(row.get("damage"), str) else ""
        return INTERRUPTED, f"W&B log {state}{damage}" + _stopped_at(row)
    if status != FINISHED:
        return INTERRUPTED, "no completion record (health/status, result.json): stopped before the end" + _stopped_at(
            row
        )
    preds, chance = _num(row, "health/test_pred_classes"), _num(row, "health/chance")
    acc = _num(row, keys.TEST_ACC)
    if preds is not None and preds <= 1:
        return DEGENERATE, "predicts one class on the test split"
    if acc is not None and chance is not None and acc <= chance:
        return DEGENERATE, f"test accuracy {100 * acc:.1f} % not above chance ({100 * chance:.1f} %, majority class)"
    reason = not_learning(row)
    return (NOT_LEARNING, reason) if reason else (FINISHED, "")


def not_learning(row: pd.Series) -> str | None:
    """Why a completed run shows no evidence of learning (the module's rule), or None when it learned or cannot be
    told."""
    best, n, chance = _num(row, "health/val_best"), _num(row, "health/val_n"), _num(row, "health/val_chance")
    if best is not None and n and chance is not None:
        from scipy.stats import binomtest  # here: the rest of the report's health needs only pandas

        correct = round(best * n)
        p = binomtest(correct, int(n), chance, alternative="greater").pvalue
        if p < NOT_LEARNING_ALPHA:
            return None
        return (
            f"best val accuracy {100 * best:.1f} % ({correct}/{int(n)}) is not above chance "
            f"({100 * chance:.1f} %, majority class; one-sided binomial p = {p:.2f})"
        )
    first, last = _num(row, "health/train_loss_first_epoch"), _num(row, "health/train_loss_final")
    epochs = _num(row, "health/epochs_completed")
    if first is None or last is None or (epochs is not None and epochs < 2):
        return None
    if last > first * (1 - NOT_LEARNING_DROP):
        return f"mean train loss {first:.4g} (first epoch) -> {last:.4g} (last epoch): no drop, and no val record"
    return None


def classify(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Add ``health`` and ``reason`` columns (see the module) to a runs table; with ``baseline``, finished runs
    whose tested checkpoint predates their variant's change become ``change never tested``."""
    runs = runs.copy()
    pairs: list[tuple[str, str]] = [classify_run(row) for _, row in runs.iterrows()]
    runs["health"] = pd.Series([p[0] for p in pairs], index=runs.index, dtype=object)
    runs["reason"] = pd.Series([p[1] for p in pairs], index=runs.index, dtype=object)
    if baseline is not None:
        from toolkit.report.untested import find_untested

        reasons = find_untested(runs, baseline)
        untested = reasons.notna() & (runs["health"] == FINISHED)
        runs.loc[untested, "reason"] = reasons[untested]
        runs.loc[untested, "health"] = UNTESTED
    return runs


def describe(row: Any) -> str:
    """``diverged: <reason>`` (or just the class) for a run's note."""
    return f"{row['health']}: {row['reason']}" if row["reason"] else str(row["health"])
