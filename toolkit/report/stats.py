"""Paired comparisons of a variant with the baseline over matching seeds: CI, test, direction, Holm's adjustment, the
interval that agrees with it, and the smallest effect the seeds can detect.

scipy computes the paired t-test and its confidence intervals, statsmodels the multiple-comparison adjustment and the
power analysis; this file only decides which seeds pair up, when a p-value would overclaim (fewer than
``MIN_SEEDS_FOR_P`` pairs), and at which level each interval is drawn:

- the **Holm-adjusted CI** of a comparison is the paired t-interval at confidence ``1 - ALPHA * p / p_Holm``: it
  excludes 0 exactly when the Holm-adjusted p is below ``ALPHA``, so the interval and the p printed beside it never
  disagree (an unadjusted 95 % interval beside an adjusted p can);
- the **minimum detectable effect** (MDE) of a row is the smallest true mean paired difference its seeds would
  detect with ``POWER`` power in a two-sided paired t-test at Holm's strictest level ``ALPHA / m`` (m comparisons in
  the family), given the sample sd of its paired differences: ``d * sd``, with ``d`` from statsmodels'
  ``TTestPower.solve_power`` (the noncentral t).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: fewer paired seeds than this print no p-value: a t-test on 1 degree of freedom says next to nothing
MIN_SEEDS_FOR_P = 3
#: the level a (Holm-adjusted) p-value is called significant at
ALPHA = 0.05
CONFIDENCE = 1 - ALPHA
#: the power the minimum detectable effect is computed for
POWER = 0.8
#: the adjustment for the number of comparisons, as ``statsmodels.stats.multitest.multipletests`` names it
ADJUST_METHOD = "holm"


@dataclass
class Comparison:
    """A variant against the baseline over the seeds both have (values in the metric's own units).

    Attributes:
        n_paired: seeds both have.
        ci_low, ci_high: 95 % confidence interval of the mean paired difference (variant - baseline); NaN below 2.
        p_value: two-sided paired t-test; NaN below ``MIN_SEEDS_FOR_P`` pairs.
        lower, higher: how many paired seeds the variant was below / above the baseline.
        mean_diff, sd_diff: mean and sample sd of the paired differences (NaN below 2 pairs for the sd).
    """

    n_paired: int
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    lower: int = 0
    higher: int = 0
    mean_diff: float = math.nan
    sd_diff: float = math.nan

    def direction(self) -> str:
        """``3/3 lower``, ``2/3 higher``, ``0/2 changed`` (ties count for neither side)."""
        if not self.n_paired:
            return ""
        if self.lower == self.higher == 0:
            return f"0/{self.n_paired} changed"
        if self.lower >= self.higher:
            return f"{self.lower}/{self.n_paired} lower"
        return f"{self.higher}/{self.n_paired} higher"


def paired_pairs(values: pd.Series, baseline: pd.Series) -> pd.DataFrame:
    """The two series (indexed by seed) on the seeds both have, as columns ``variant`` and ``baseline``."""
    pairs = pd.concat([values.rename("variant"), baseline.rename("baseline")], axis=1, join="inner").dropna()
    return pairs.sort_index()


def compare(values: pd.Series, baseline: pd.Series) -> Comparison:
    """Compare a variant's per-seed values with the baseline's (see :class:`Comparison`)."""
    from scipy import stats  # here: the rest of the report needs only pandas

    pairs = paired_pairs(values, baseline)
    diff = (pairs["variant"] - pairs["baseline"]).to_numpy()
    result = Comparison(n_paired=len(pairs), lower=int((diff < 0).sum()), higher=int((diff > 0).sum()))
    if len(pairs):
        result.mean_diff = float(diff.mean())
    if len(pairs) < 2:
        return result
    result.sd_diff = float(diff.std(ddof=1))
    with warnings.catch_warnings():  # identical differences: zero variance, NaN with a precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(pairs["variant"], pairs["baseline"])
        if np.ptp(diff) == 0:
            result.ci_low = result.ci_high = float(diff[0])  # no spread: the interval is the point
        else:
            ci = test.confidence_interval(CONFIDENCE)
            result.ci_low, result.ci_high = float(ci.low), float(ci.high)
    if len(pairs) >= MIN_SEEDS_FOR_P:
        result.p_value = float(test.pvalue)
    return result


def adjust(p_values: pd.Series) -> pd.Series:
    """Holm-adjusted p-values of one family of comparisons; NaN entries stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    present = p_values.dropna()
    out = pd.Series(math.nan, index=p_values.index, dtype=float)
    if len(present):
        out[present.index] = multipletests(present.to_numpy(), method=ADJUST_METHOD)[1]
    return out


def t_interval(mean: float, sd: float, n: int, confidence: float) -> tuple[float, float]:
    """The t-interval of a mean from ``n`` values with sample sd ``sd`` (NaN below 2 values; a point when sd is 0)."""
    from scipy import stats

    if n < 2 or math.isnan(sd) or math.isnan(mean):
        return math.nan, math.nan
    if sd == 0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def adjusted_ci(comparison: Comparison, p_value: float, p_adjusted: float) -> tuple[float, float]:
    """The paired interval that agrees with the Holm-adjusted p (see the module); NaN where there is no p."""
    if math.isnan(p_value) or math.isnan(p_adjusted):
        return math.nan, math.nan
    if p_adjusted <= 0 or p_value <= 0:  # no spread at all: the interval is the point
        return comparison.mean_diff, comparison.mean_diff
    confidence = 1 - ALPHA * p_value / p_adjusted
    return t_interval(comparison.mean_diff, comparison.sd_diff, comparison.n_paired, confidence)


def min_detectable_effect(sd_diff: float, n_paired: int, comparisons: int) -> float:
    """The smallest mean paired difference detectable with ``POWER`` at Holm's strictest level (see the module);
    NaN below ``MIN_SEEDS_FOR_P`` pairs or without a spread."""
    from statsmodels.stats.power import TTestPower

    if n_paired < MIN_SEEDS_FOR_P or math.isnan(sd_diff) or comparisons < 1:
        return math.nan
    if sd_diff == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels warns while its root finder searches
        d = TTestPower().solve_power(
            effect_size=None, nobs=n_paired, alpha=ALPHA / comparisons, power=POWER, alternative="two-sided"
        )
    return float(d) * sd_diff
