"""Aggregate a runs table into the ablation table: pure functions on DataFrames, no I/O.

The tidy table has one row per (variant, metric): ``TABLE_COLUMNS``. ``n`` counts the healthy finished seeds
(the only ones that enter a mean), ``std`` is the sample standard deviation over them (ddof=1); ``delta`` is the
difference of means against the baseline variant, in percentage points for fractions (accuracy, F1) and in the
metric's units otherwise, ``ci_low``/``ci_high`` the 95 % CI of the mean paired difference (same units);
``p_value`` is a paired t-test over the seeds both variants finished (NaN below 3 pairs), ``p_adjusted`` that
p Holm-adjusted over the comparisons of the metric, ``ci_adj_low``/``ci_adj_high`` the paired interval that agrees
with it and ``mde`` the smallest effect the row's seeds can detect (both: `toolkit.report.stats`), ``direction``
e.g. ``3/3 lower``; ``excluded`` counts the variant's seeds that have runs but none healthy and finished (the
variant is flagged). ``epochs`` is the span of epochs the counted runs trained (``4-7``; ``early stop`` when early
stopping ended any), and the note says how many counted seeds were still improving when they stopped
(`toolkit.study.convergence`).

A **deterministic** row (every counted seed gave the same value, e.g. a converged probe on a split shared by all
seeds) is one result repeated, not n samples: it is shown as ``n = 1`` and gets no per-seed test (no p-value, no
direction); its Δ and unadjusted CI are against the baseline's spread.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from toolkit.keys import ensemble_key, snapshot_key
from toolkit.report.health import COMPLETED, FINISHED, classify, describe
from toolkit.report.stats import MIN_SEEDS_FOR_P, Comparison, adjust, adjusted_ci, compare, min_detectable_effect

TABLE_COLUMNS = [
    "variant",
    "metric",
    "mean",
    "std",
    "n",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "ci_adj_low",
    "ci_adj_high",
    "mde",
    "direction",
    "epochs",
    "excluded",
    "best",
    "note",
]


def higher_is_better(metric: str) -> bool:
    """Losses go down, everything else (accuracy, F1) goes up."""
    return not metric.rsplit("/", 1)[-1].startswith("loss")


def is_fraction(metric: str) -> bool:
    """Accuracy and F1 are fractions in [0, 1], shown in percent and compared in points."""
    name = metric.rsplit("/", 1)[-1]
    return name.startswith(("acc", "f1"))


def _source_note(row: pd.Series) -> str:
    """What ``report.sources`` says about where a finished run's numbers came from (a cut log: its result.json)."""
    note = row.get("source_note")
    return note if isinstance(note, str) else ""


def mark_counted(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Add ``health``, ``reason``, ``counted`` and ``note``: only a healthy finished run counts, the others say why.

    Each run is classified by ``toolkit.report.health.classify`` (given ``baseline``, a run whose tested checkpoint
    predates its variant's change is ``change never tested``). Per (variant, seed) the latest run that ran to its
    end (finished, diverged, degenerate, not learning) decides the seed: it counts when it is healthy; earlier runs
    of the seed (interrupted attempts, a finished run redone) are ``superseded``. Others never count.
    """
    runs = classify(runs, baseline)
    runs["note"] = [describe(row) if row["health"] != FINISHED else _source_note(row) for _, row in runs.iterrows()]
    runs["note"] = runs["note"].astype(object)
    known = runs["variant"].notna() & runs["seed"].notna()
    runs.loc[~known, "note"] = (
        runs.loc[~known, "note"].replace("", "skipped") + " (no ablation variant/seed in the log)"
    )
    complete = runs[known & runs["health"].isin(COMPLETED)].sort_values("start_time", kind="stable")
    winners = complete.groupby(["variant", "seed"], sort=False).tail(1)
    runs["counted"] = runs.index.isin(winners.index) & (runs["health"] == FINISHED)
    winner_id = (
        runs[["variant", "seed"]]
        .merge(winners[["variant", "seed", "run_id"]], on=["variant", "seed"], how="left")["run_id"]
        .set_axis(runs.index)
    )
    superseded = known & ~runs.index.isin(winners.index) & winner_id.notna()
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


def _seed_reason(runs: pd.DataFrame, variant: str, seed: int, metric: str) -> str:
    """Why a seed of a variant has no value: its deciding run's class and reason, or ``no run``."""
    mine = runs[(runs["variant"] == variant) & (runs["seed"] == seed)]
    if mine.empty:
        return "no run"
    if mine["counted"].any():
        return f"no {metric} logged"
    decided = mine[mine["health"].isin(COMPLETED)]
    row = (decided if len(decided) else mine).sort_values("start_time", kind="stable", na_position="first").iloc[-1]
    return describe(row)


def _seed_note(runs: pd.DataFrame, variant: str, metric: str, present: set, expected: Sequence[int]) -> str:
    """Why a variant has fewer seeds than expected, e.g. ``n=1 of 2 seeds (seed 1: interrupted: ...)``."""
    missing = [seed for seed in expected if seed not in present]
    if not missing:
        return ""
    reasons = [f"seed {seed}: {_seed_reason(runs, variant, seed, metric)}" for seed in missing]
    return f"n={len(present)} of {len(expected)} seeds ({', '.join(reasons)})"


def last_snapshot_values(runs: pd.DataFrame, variant: str, metric: str) -> pd.Series:
    """Per seed, the metric of the last snapshot alone of a snapshot-ensemble variant's counted runs (empty if none)."""
    stage, _, name = metric.partition("/")
    pattern = re.compile(rf"^{re.escape(stage)}/{re.escape(name)}_snapshot_(\d+)$")
    indices = sorted(int(m.group(1)) for c in runs.columns if (m := pattern.match(c)))
    if not indices:
        return pd.Series(dtype=float)
    mine = runs[(runs["variant"] == variant) & runs["counted"]]
    values = pd.to_numeric(mine[snapshot_key(stage, name, indices[-1])], errors="coerce")
    return pd.Series(values.to_numpy(), index=mine["seed"].to_numpy()).dropna()


def _last_snapshot_note(values: pd.Series, scale: float) -> str:
    """The single model beside a snapshot ensemble: ``last snapshot alone 92.8 ± 2.1 (n=5)`` over the counted runs.

    A snapshot ensemble's gain over the baseline mixes its cyclic schedule and its averaging; the last snapshot alone
    is the schedule's share (Huang et al. 2017 report both).
    """
    if values.empty:
        return ""
    spread = f" ± {scale * values.std(ddof=1):.1f}" if len(values) > 1 else ""
    return f"last snapshot alone {scale * values.mean():.1f}{spread} (n={len(values)})"


def _ensemble_members_note(runs: pd.DataFrame, variant: str) -> str:
    """Which snapshots a variant's counted runs averaged, e.g. ``ensemble members: fine-tune epoch 1, fine-tune
    epoch 2`` (runs that differ are joined by `` / ``): an ensemble holding a probe-phase snapshot shows it."""
    if "health/tested_snapshots" not in runs.columns:
        return ""
    mine = runs[(runs["variant"] == variant) & runs["counted"]]
    found = [v for v in mine["health/tested_snapshots"] if isinstance(v, str) and v]
    return f"ensemble members: {' / '.join(dict.fromkeys(found))}" if found else ""


def _tested_note(runs: pd.DataFrame, variant: str) -> str:
    """Which checkpoints the counted runs of a variant tested, e.g. ``tested: fine-tune epoch 2-3``."""
    if "health/tested_epoch" not in runs.columns:
        return ""
    mine = runs[(runs["variant"] == variant) & runs["counted"]]
    epochs = pd.to_numeric(mine["health/tested_epoch"], errors="coerce").dropna().astype(int)
    if epochs.empty:
        return ""
    phases = sorted({p for p in mine.get("health/tested_phase", pd.Series(dtype=object)) if isinstance(p, str)})
    span = f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}-{epochs.max()}"
    return f"tested: {'/'.join(phases) or '?'} epoch {span}"


def _epochs(runs: pd.DataFrame, variant: str) -> str:
    """The epochs the counted runs of a variant trained: ``3``, ``4-7``, with ``, early stop`` when it ended any."""
    if "health/epochs_completed" not in runs.columns:
        return ""
    mine = runs[(runs["variant"] == variant) & runs["counted"]]
    epochs = pd.to_numeric(mine["health/epochs_completed"], errors="coerce").dropna().astype(int)
    if epochs.empty:
        return ""
    span = f"{epochs.min()}" if epochs.min() == epochs.max() else f"{epochs.min()}-{epochs.max()}"
    early = mine.get("health/stopped_early", pd.Series(dtype=object))
    return span + (", early stop" if any(v is True or v == 1.0 for v in early) else "")


def _improving_note(runs: pd.DataFrame, variant: str) -> str:
    """``still improving at its last epoch: 2 of 5 seeds`` over the counted runs (empty when none was)."""
    if "health/still_improving" not in runs.columns:
        return ""
    mine = runs[(runs["variant"] == variant) & runs["counted"]]
    rising = sum(1 for v in mine["health/still_improving"] if v is True or v == 1.0)
    return f"still improving at its last epoch: {rising} of {len(mine)} seeds" if rising else ""


def row_delta(values: pd.Series, reference: pd.Series, scale: float) -> float:
    """Difference of means, scaled (points for fractions); NaN when either side has no value."""
    return scale * (float(values.mean()) - float(reference.mean())) if len(values) and len(reference) else math.nan


def deterministic(series: pd.Series) -> bool:
    """Whether a variant's per-seed values are one value repeated (two seeds or more, no spread at all)."""
    values = series.dropna().to_numpy(dtype=float)
    return len(values) >= 2 and float(np.ptp(values)) == 0.0


def _excluded(runs: pd.DataFrame, variant: str, expected: Sequence[int]) -> int:
    """How many expected seeds of a variant have runs but none that counts (unhealthy, failed, unfinished)."""
    mine = runs[(runs["variant"] == variant) & runs["seed"].isin(list(expected))]
    return sum(1 for _, group in mine.groupby("seed") if not group["counted"].any())


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
    comparisons: dict[tuple[str, str], Comparison] = {}
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
            last_snapshot = pd.Series(dtype=float)
            if used:
                notes.append(f"ensemble: {', '.join(used)}")
                members = _ensemble_members_note(runs, variant)
                if members:
                    notes.append(members)
                last_snapshot = last_snapshot_values(runs, variant, metric)
                single = _last_snapshot_note(last_snapshot, scale)
                if single:
                    notes.append(single)
            tested = _tested_note(runs, variant)
            if tested:
                notes.append(tested)
            seed_note = _seed_note(runs, variant, metric, set(series.index), expected)
            if seed_note:
                notes.append(seed_note)
            improving = _improving_note(runs, variant)
            if improving:
                notes.append(improving)
            # a snapshot ensemble's own question: does averaging beat its last snapshot alone (same runs, paired)?
            against_own = variant != baseline and not last_snapshot.empty
            if against_own:
                notes.append(
                    f"Δ, CI and p: the ensemble against its own last snapshot (Δ against {baseline}: "
                    f"{row_delta(series, base, scale):+.2f})"
                )
            fixed = variant != baseline and deterministic(series)
            row = {
                "variant": variant,
                "metric": metric,
                "n": 1 if fixed else len(series),
                "excluded": _excluded(runs, variant, expected),
                "epochs": _epochs(runs, variant),
            }
            row["mean"] = float(series.mean()) if len(series) else math.nan
            row["std"] = float(series.std(ddof=1)) if len(series) > 1 and not fixed else math.nan
            row["delta"] = row_delta(series, last_snapshot if against_own else base, scale)
            if variant != baseline:
                comparison = compare(series, last_snapshot if against_own else base)
                comparisons[(variant, metric)] = comparison
                row.update(
                    ci_low=scale * comparison.ci_low,
                    ci_high=scale * comparison.ci_high,
                    p_value=math.nan if fixed else comparison.p_value,
                    direction="" if fixed else comparison.direction(),
                )
                paired = comparison.n_paired
                if fixed:
                    notes.append(
                        f"deterministic: all {len(series)} seeds gave the same value, shown as one run "
                        "(no per-seed test)"
                    )
                if len(series) and paired < max(len(series), len(base)) and not against_own:
                    notes.append(f"Δ over all seeds, CI and p over {paired} paired")
                if len(series) and 0 < paired < MIN_SEEDS_FOR_P and not fixed:
                    notes.append(
                        f"no p-value: {paired} paired seed{'s' * (paired != 1)} (a test needs {MIN_SEEDS_FOR_P})"
                    )
            row["note"] = "; ".join(notes)
            rows.append(row)
    table = pd.DataFrame(
        rows, columns=[c for c in TABLE_COLUMNS if c not in ("best", "p_adjusted", "ci_adj_low", "ci_adj_high", "mde")]
    )
    table["direction"] = table["direction"].astype(object).fillna("")
    # one family per metric: every variant's comparison with the baseline on that metric
    families = [adjust(group["p_value"]) for _, group in table.groupby("metric", sort=False)]
    table["p_adjusted"] = pd.concat(families) if families else pd.Series(dtype=float)
    _add_adjusted(table, comparisons)
    return mark_best(table)[TABLE_COLUMNS]


def _add_adjusted(table: pd.DataFrame, comparisons: dict[tuple[str, str], Comparison]) -> None:
    """Fill ``ci_adj_low``/``ci_adj_high`` (the interval that agrees with the Holm p) and ``mde`` in place."""
    table["ci_adj_low"] = table["ci_adj_high"] = table["mde"] = math.nan
    family = table.groupby("metric")["p_value"].transform(lambda p: int(p.notna().sum()))
    for index, row in table.iterrows():
        comparison = comparisons.get((row["variant"], row["metric"]))
        if comparison is None or math.isnan(row["p_value"]):
            continue
        scale = 100.0 if is_fraction(row["metric"]) else 1.0
        low, high = adjusted_ci(comparison, row["p_value"], row["p_adjusted"])
        table.loc[index, ["ci_adj_low", "ci_adj_high"]] = scale * low, scale * high
        mde = min_detectable_effect(comparison.sd_diff, comparison.n_paired, int(family[index]))
        table.loc[index, "mde"] = scale * mde


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
