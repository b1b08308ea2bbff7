"""The report's statistics against references computed here: CI, paired p, Holm adjustment, direction, n < 3."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from scipy import stats
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


def reference(variant: list[float], base: list[float]) -> tuple[float, float, float, int, int]:
    """``(ci_low, ci_high, p, lower, higher)`` in points, from the t distribution written out."""
    d = [100 * (a - b) for a, b in zip(variant, base, strict=True)]
    n, mean, sd = len(d), statistics.mean(d), statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    p = 2 * stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)
    return mean - half, mean + half, p, sum(x < 0 for x in d), sum(x > 0 for x in d)


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
    ci_low, ci_high, *_ = refs["worse"]
    assert wide.loc["worse", "95 % CI"] == f"[{ci_low:+.2f}, {ci_high:+.2f}]"
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
