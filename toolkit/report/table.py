"""Aggregate a runs table into the ablation table: pure functions on DataFrames, no I/O.

The tidy table has one row per (variant, metric): ``variant, metric, mean, std, n, delta, p_value`` then ``best``
and ``note``. ``std`` is the sample standard deviation over seeds (ddof=1); ``delta`` is the difference of means
against the baseline variant, in percentage points for fractions (accuracy, F1) and in the metric's units otherwise;
``p_value`` is a paired t-test over the seeds both variants finished.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from toolkit.keys import ensemble_key

TABLE_COLUMNS = ["variant", "metric", "mean", "std", "n", "delta", "p_value", "best", "note"]


def higher_is_better(metric: str) -> bool:
    """Losses go down, everything else (accuracy, F1) goes up."""
    return not metric.rsplit("/", 1)[-1].startswith("loss")


def is_fraction(metric: str) -> bool:
    """Accuracy and F1 are fractions in [0, 1], shown in percent and compared in points."""
    name = metric.rsplit("/", 1)[-1]
    return name.startswith(("acc", "f1"))


def mark_counted(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``counted`` and ``note``: per (variant, seed) the latest finished run counts, the others say why not.

    A (variant, seed) restarted after a crash has several runs: the finished one counts and the others are
    ``superseded``. Unfinished, failed and corrupt runs never count.
    """
    runs = runs.copy()
    state = runs["state"].astype(str)
    damage = runs["damage"] if "damage" in runs else pd.Series(None, index=runs.index, dtype=object)
    detail = (": " + damage.astype("string")).fillna("")
    runs["note"] = ("skipped: " + state + detail).where(state != "finished", "")
    known = runs["variant"].notna() & runs["seed"].notna()
    runs.loc[~known, "note"] = (
        runs.loc[~known, "note"].replace("", "skipped") + " (no ablation variant/seed in the log)"
    )
    finished = runs[known & (state == "finished")].sort_values("start_time", kind="stable")
    winners = finished.groupby(["variant", "seed"], sort=False).tail(1)
    runs["counted"] = runs.index.isin(winners.index)
    winner_id = (
        runs[["variant", "seed"]]
        .merge(winners[["variant", "seed", "run_id"]], on=["variant", "seed"], how="left")["run_id"]
        .set_axis(runs.index)
    )
    superseded = known & ~runs["counted"] & winner_id.notna()
    prefix = runs.loc[superseded, "note"].where(runs.loc[superseded, "note"] == "", runs.loc[superseded, "note"] + "; ")
    runs.loc[superseded, "note"] = prefix + "superseded by " + winner_id[superseded].astype(str)
    return runs


def run_values(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Long table ``variant, seed, metric, value, source`` of the counted runs.

    A variant whose counted runs all logged the ensemble version of a metric (``test/acc_ensemble`` for
    ``test/acc``) reports that one; ``source`` names the key the value came from.
    """
    counted = runs[runs["counted"]]
    parts = []
    for metric in metrics:
        stage, _, name = metric.partition("/")
        ensemble = ensemble_key(stage, name)
        plain = counted[metric] if metric in counted else pd.Series(np.nan, index=counted.index)
        if ensemble in counted:
            # a variant reports the ensemble only when every counted run has it: never a mean of both kinds
            use_ensemble = counted[ensemble].notna().groupby(counted["variant"]).transform("all")
            value = counted[ensemble].where(use_ensemble, plain)
            source = use_ensemble.map({True: ensemble, False: metric})
        else:
            value, source = plain, pd.Series(metric, index=counted.index)
        parts.append(
            pd.DataFrame(
                {"variant": counted["variant"], "seed": counted["seed"], "metric": metric, "value": value}
            ).assign(source=source)
        )
    if not parts:
        return pd.DataFrame(columns=["variant", "seed", "metric", "value", "source"])
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def paired_p_value(values: pd.Series, baseline: pd.Series) -> float:
    """Two-sided paired t-test p-value over the seeds (index) both series have; NaN with fewer than two pairs."""
    from scipy import stats  # imported here: the rest of the table needs only pandas

    pairs = pd.concat([values, baseline], axis=1, join="inner").dropna()
    if len(pairs) < 2:
        return math.nan
    with warnings.catch_warnings():  # identical differences give NaN with a precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_rel(pairs.iloc[:, 0], pairs.iloc[:, 1]).pvalue)


def _seed_note(runs: pd.DataFrame, variant: str, metric: str, present: set, expected: Sequence[int]) -> str:
    """Why a variant has fewer seeds than expected, e.g. ``n=1 of 2 seeds (seed 1: unfinished)``."""
    missing = [seed for seed in expected if seed not in present]
    if not missing:
        return ""
    reasons = []
    for seed in missing:
        mine = runs[(runs["variant"] == variant) & (runs["seed"] == seed)]
        if mine["counted"].any():
            reason = f"no {metric} logged"
        else:
            reason = "/".join(mine["state"].unique()) if len(mine) else "no run"
        reasons.append(f"seed {seed}: {reason}")
    return f"n={len(present)} of {len(expected)} seeds ({', '.join(reasons)})"


def aggregate(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    baseline: str,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """The tidy ablation table (``TABLE_COLUMNS``) from a runs table that went through ``mark_counted``.

    Args:
        runs: the runs table with ``counted``.
        metrics: metric keys, e.g. ``["test/acc", "test/f1"]``.
        baseline: the variant every other is compared with.
        variants: variants in table order (the spec's); default: the baseline, then the others sorted.
        seeds: the seeds every variant should have; default: every seed any run of the ablation has.
    """
    identified = runs.dropna(subset=["variant", "seed"])
    if variants is None:
        found = sorted(set(identified["variant"]) - {baseline})
        variants = ([baseline] if baseline in set(identified["variant"]) else []) + found
    expected = sorted(set(seeds) if seeds is not None else {int(s) for s in identified["seed"]})
    values = run_values(runs, metrics)
    if seeds is not None:  # runs of seeds the spec no longer lists do not count
        values = values[values["seed"].isin(expected)]
    rows = []
    for metric in metrics:
        by_metric = values[values["metric"] == metric]
        base = by_metric[by_metric["variant"] == baseline].set_index("seed")["value"]
        scale = 100.0 if is_fraction(metric) else 1.0
        for variant in variants:
            mine = by_metric[by_metric["variant"] == variant]
            series = mine.set_index("seed")["value"]
            notes = []
            if variant == baseline:
                notes.append("baseline")
            used = sorted(set(mine["source"]) - {metric})
            if used:
                notes.append(f"ensemble: {', '.join(used)}")
            seed_note = _seed_note(runs, variant, metric, set(series.index), expected)
            if seed_note:
                notes.append(seed_note)
            paired = len(set(series.index) & set(base.index))
            if variant != baseline and len(series) and paired < max(len(series), len(base)):
                notes.append(f"Δ over all seeds, p over {paired} paired")
            mean = float(series.mean()) if len(series) else math.nan
            rows.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "mean": mean,
                    "std": float(series.std(ddof=1)) if len(series) > 1 else math.nan,
                    "n": len(series),
                    "delta": scale * (mean - float(base.mean())) if len(base) and len(series) else math.nan,
                    "p_value": paired_p_value(series, base) if variant != baseline else math.nan,
                    "note": "; ".join(notes),
                }
            )
    table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c != "best"])
    return mark_best(table)[TABLE_COLUMNS]


def mark_best(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``best``: True for the variant(s) with the best mean of each metric (max, or min for losses)."""
    table = table.copy()
    table["best"] = False
    for metric, group in table.groupby("metric", sort=False):
        means = group["mean"].dropna()
        if means.empty:
            continue
        target = means.max() if higher_is_better(metric) else means.min()
        table.loc[means.index[means == target], "best"] = True
    return table
