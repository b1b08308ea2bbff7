"""Paired comparisons of a variant with the baseline over matching seeds: CI, test, direction, and Holm's adjustment.

scipy computes the paired t-test and its confidence interval, statsmodels the multiple-comparison adjustment; this
file only decides which seeds pair up and when a p-value would overclaim (fewer than ``MIN_SEEDS_FOR_P`` pairs).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: fewer paired seeds than this print no p-value: a t-test on 1 degree of freedom says next to nothing
MIN_SEEDS_FOR_P = 3
CONFIDENCE = 0.95
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
    """

    n_paired: int
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    lower: int = 0
    higher: int = 0

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
    if len(pairs) < 2:
        return result
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
