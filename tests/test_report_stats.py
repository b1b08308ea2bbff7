"""The report's statistics against references computed here: CI, paired p, Holm adjustment and the CI that agrees
with it, the minimum detectable effect, direction, n < 3, and a deterministic row."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from scipy import optimize, stats
from statsmodels.stats.multitest import multipletests

from toolkit.report.render import to_markdown, wide_table
from toolkit.report.table import aggregate, mark_counted

SEEDS = [0, 1, 2, 3]
#: per variant, test/acc per seed: "worse" is lower on every seed, "mixed" on some, "same" nearly identical
ACC = {
    "full": [0.90, 0.92, 0.88, 0.91],
    "worse": [0.80, 0.85, 0.79, 0.83],
    "mixed": [0.91, 0.90, 0.86, 0.93],
    "same": [0.901, 0.919, 0.881, 0.909],
}


def runs_table(acc: dict[str, list[float]], seeds: list[int]) -> pd.DataFrame:
    """A runs table as ``sources`` makes it for runs that completed healthy (``health/status: finished``)."""
    rows = [
        {
            "ablation": "a", "variant": variant, "seed": seed, "run_id": f"{variant}{seed}", "state": "finished",
            "damage": None, "start_time": 1.0, "source": "x", "health/status": "finished", "test/acc": value,
        }
        for variant, values in acc.items()
        for seed, value in zip(seeds, values, strict=True)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def reference(
    variant: list[float], base: list[float], confidence: float = 0.95
) -> tuple[float, float, float, int, int]:
    """``(ci_low, ci_high, p, lower, higher)`` in points, from the t distribution written out."""
    d = [100 * (a - b) for a, b in zip(variant, base, strict=True)]
    n, mean, sd = len(d), statistics.mean(d), statistics.stdev(d)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    return mean - half, mean + half, p, sum(x < 0 for x in d), sum(x > 0 for x in d)


def reference_mde(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest mean difference a two-sided paired t-test detects with ``power``: the noncentral t solved here."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)

    def power_at(delta: float) -> float:
        nc = delta * math.sqrt(n) / sd
        lower_tail = stats.nct.cdf(-crit, n - 1, nc)  # negligible, and NaN in scipy far out in the tail
        return stats.nct.sf(crit, n - 1, nc) + (0.0 if math.isnan(lower_tail) else lower_tail) - power

    return optimize.brentq(power_at, 1e-6 * sd, 20 * sd)


def test_ci_holm_and_direction_equal_scipy_and_statsmodels() -> None:
    table = aggregate(mark_counted(runs_table(ACC, SEEDS)), ["test/acc"], "full").set_index("variant")
    others = ["worse", "mixed", "same"]
    refs = {v: reference(ACC[v], ACC["full"]) for v in others}
    holm = dict(zip(others, multipletests([refs[v][2] for v in others], method="holm")[1], strict=True))
    for variant in others:
        ci_low, ci_high, p, lower, higher = refs[variant]
        row = table.loc[variant]
        assert row["ci_low"] == pytest.approx(ci_low) and row["ci_high"] == pytest.approx(ci_high)
        assert row["p_value"] == pytest.approx(p)
        assert row["p_adjusted"] == pytest.approx(holm[variant])
        assert row["p_adjusted"] >= row["p_value"]  # an adjustment never makes a result look stronger
        word, count = ("lower", lower) if lower >= higher else ("higher", higher)
        assert row["direction"] == f"{count}/{len(SEEDS)} {word}"
    assert table.loc["worse", "direction"] == "4/4 lower"
    assert math.isnan(table.loc["full", "p_adjusted"]) and table.loc["full", "direction"] == ""
    # the rendered row shows the same numbers; the legend names the adjustment
    wide = wide_table(table.reset_index(), ["test/acc"]).set_index("Variant")
    assert wide.loc["worse", "p (Holm)"] == f"{holm['worse']:.3f}" + ("" if holm["worse"] < 0.05 else " n.s.")
    for variant in others:  # a non-significant difference says so in its cell
        assert wide.loc[variant, "p (Holm)"].endswith("n.s.") == (holm[variant] >= 0.05)
    # the printed interval is the one that agrees with the adjusted p: confidence 1 - 0.05 * p / p_Holm
    for variant in others:
        p = refs[variant][2]
        low, high, *_ = reference(ACC[variant], ACC["full"], 1 - 0.05 * p / holm[variant])
        assert table.loc[variant, "ci_adj_low"] == pytest.approx(low)
        assert table.loc[variant, "ci_adj_high"] == pytest.approx(high)
        assert wide.loc[variant, "95 % CI (Holm)"] == f"[{low:+.2f}, {high:+.2f}]"
        assert (low > 0 or high < 0) == (holm[variant] < 0.05)  # the CI excludes 0 exactly when p (Holm) < 0.05
        assert high - low >= refs[variant][1] - refs[variant][0]  # never narrower than the unadjusted one
    # the minimum detectable effect: sd of the paired differences, 4 pairs, Holm's strictest level 0.05 / 3
    for variant in others:
        sd = statistics.stdev([100 * (a - b) for a, b in zip(ACC[variant], ACC["full"], strict=True)])
        assert table.loc[variant, "mde"] == pytest.approx(reference_mde(sd, len(SEEDS), 0.05 / 3), rel=1e-4)
        assert wide.loc[variant, "MDE (pts)"] == f"{table.loc[variant, 'mde']:.2f}"
    text = to_markdown(table.reset_index(), ["test/acc"], "a", "full")
    assert "Holm-adjusted for the 3 comparison(s)" in text and "multipletests" in text


def test_fewer_than_three_paired_seeds_print_no_p_value_and_say_why() -> None:
    two = {variant: values[:2] for variant, values in ACC.items()}
    table = aggregate(mark_counted(runs_table(two, SEEDS[:2])), ["test/acc"], "full")
    assert table["p_value"].isna().all() and table["p_adjusted"].isna().all()
    row = table.set_index("variant").loc["worse"]
    ci_low, ci_high, _, lower, _ = reference(two["worse"], two["full"])
    assert row["ci_low"] == pytest.approx(ci_low) and row["ci_high"] == pytest.approx(ci_high)  # 1 df: wide, honest
    assert row["direction"] == f"{lower}/2 lower"
    assert "no p-value: 2 paired seeds (a test needs 3)" in row["note"]
    text = to_markdown(table, ["test/acc"], "a", "full")
    assert "p=" not in text and "This table has no p-values: no comparison has 3 paired seeds." in text
    body = [line for line in text.splitlines() if line.startswith("| worse")]
    assert body and body[0].split("|")[5].strip() == "\u2013"  # the p (Holm) cell is a dash


def test_a_deterministic_row_is_one_run_with_no_per_seed_test() -> None:
    acc = {**ACC, "probe": [0.81, 0.81, 0.81, 0.81]}  # a converged probe on a shared split: one value, four times
    table = aggregate(mark_counted(runs_table(acc, SEEDS)), ["test/acc"], "full").set_index("variant")
    row = table.loc["probe"]
    assert row["n"] == 1 and math.isnan(row["std"]) and row["mean"] == pytest.approx(0.81)
    assert math.isnan(row["p_value"]) and math.isnan(row["p_adjusted"]) and row["direction"] == ""
    assert math.isnan(row["ci_adj_low"]) and math.isnan(row["mde"])
    assert "deterministic: all 4 seeds gave the same value" in row["note"]
    # it is not counted in Holm's family: the other three are adjusted for 3 comparisons, as without it
    others = ["worse", "mixed", "same"]
    holm = multipletests([reference(ACC[v], ACC["full"])[2] for v in others], method="holm")[1]
    assert list(table.loc[others, "p_adjusted"]) == pytest.approx(list(holm))
    wide = wide_table(table.reset_index(), ["test/acc"]).set_index("Variant")
    assert wide.loc["probe", "Seeds"] == "1" and wide.loc["probe", "Accuracy"] == "81.00"
    assert wide.loc["probe", "Direction"] == wide.loc["probe", "p (Holm)"] == "\u2013"


def test_a_snapshot_row_compares_its_ensemble_with_its_own_last_snapshot() -> None:
    frame = runs_table({"full": ACC["full"], "snapshot": [0.5] * 4}, SEEDS)  # test/acc: a model no one reports
    ensemble, last = [0.93, 0.95, 0.90, 0.92], [0.91, 0.92, 0.89, 0.92]
    snapshot = frame["variant"] == "snapshot"
    frame.loc[snapshot, "test/acc_ensemble"] = ensemble
    frame.loc[snapshot, "test/acc_snapshot_0"] = [0.7] * 4  # an earlier snapshot: not the reference
    frame.loc[snapshot, "test/acc_snapshot_1"] = last
    table = aggregate(mark_counted(frame), ["test/acc"], "full").set_index("variant")
    row = table.loc["snapshot"]
    ci_low, ci_high, p, lower, higher = reference(ensemble, last)  # paired within the same runs
    assert row["delta"] == pytest.approx(100 * (statistics.mean(ensemble) - statistics.mean(last)))
    assert (row["ci_low"], row["ci_high"], row["p_value"]) == pytest.approx((ci_low, ci_high, p))
    assert row["direction"] == f"{higher}/4 higher" and lower == 0
    against_full = 100 * (statistics.mean(ensemble) - statistics.mean(ACC["full"]))
    assert f"the ensemble against its own last snapshot (Δ against full: {against_full:+.2f})" in row["note"]
