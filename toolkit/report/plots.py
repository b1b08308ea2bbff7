"""Draw the report's PNG figures with matplotlib: a bar chart per metric, val accuracy of all variants by epoch,
learning curves per variant, and the lesion curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from toolkit import keys
from toolkit.report.figure import pyplot, save, slug
from toolkit.report.render import display_name
from toolkit.report.table import is_fraction

#: the top of a percent axis: above 100 by a margin, so a curve, marker or error bar at 100 % stands clear of the
#: frame (its ticks stop at 100: nothing is drawn above the metric's range but the margin)
PERCENT_TOP = 108.0
#: the marker on an error bar cut at the metric's range: the std reaches past 0 or 100 %
CLIPPED_UP, CLIPPED_DOWN = "^", "v"


def clipped_error(mean: pd.Series, std: pd.Series, scale: float, bounded: bool) -> list[list[float]]:
    """Asymmetric error bars (mean ± std) that stop at the metric's range ([0, 1] for a fraction)."""
    std = std.fillna(0.0)
    low, high = mean - std, mean + std
    if bounded:
        low, high = low.clip(lower=0.0), high.clip(upper=1.0)
    return [list((mean - low) * scale), list((high - mean) * scale)]


def clipped_ends(mean: pd.Series, std: pd.Series, bounded: bool) -> tuple[list[bool], list[bool]]:
    """Which error bars :func:`clipped_error` cut: (at the bottom of the range, at the top)."""
    if not bounded:
        return [False] * len(mean), [False] * len(mean)
    std = std.fillna(0.0)
    return list(mean - std < 0.0), list(mean + std > 1.0)


def variant_colors(variants: Sequence[str]) -> dict[str, str]:
    """One colour per variant, the same in every figure of a report (matplotlib's tab10, then tab20, in order)."""
    from matplotlib import colormaps

    palette = list(colormaps["tab10"].colors) + list(colormaps["tab20"].colors[1::2])
    hexes = ["#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in rgb[:3])) for rgb in palette]
    return {variant: hexes[i % len(hexes)] for i, variant in enumerate(dict.fromkeys(variants))}


def bar_charts(
    table: pd.DataFrame,
    metrics: Sequence[str],
    out: Path,
    baseline: str,
    chance: float | None = None,
    colors: dict[str, str] | None = None,
) -> list[Path]:
    """One bar chart per metric (mean over seeds, error bars = std), saved as ``bar_<metric>.png``.

    Bars of a variant reported by its ensemble metric are hatched and marked † (as in the table); error bars stop at
    the metric's range; a fraction metric is drawn on a 0-100 % axis with the chance level as a dashed line.

    Args:
        table: the tidy table from ``toolkit.report.table.aggregate``.
        metrics: the metrics to draw.
        out: folder for the PNGs.
        baseline: the baseline variant (its bar has a black edge).
        chance: chance accuracy (majority-class share) of the test split, if known.
        colors: each variant's colour (`variant_colors`), shared by every figure of the report.
    """
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        rows = table[(table["metric"] == metric) & (table["n"] > 0)]
        bounded = is_fraction(metric)
        scale = 100.0 if bounded else 1.0
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.5))
        palette = colors or variant_colors(list(rows["variant"]))
        bar_colors = [palette.get(v, "grey") for v in rows["variant"]]
        ensemble = rows["note"].fillna("").str.contains("ensemble:")
        labels = [
            f"{v}{' †' if e else ''}\n(n={n})" for v, n, e in zip(rows["variant"], rows["n"], ensemble, strict=True)
        ]
        bars = ax.bar(
            labels, rows["mean"] * scale, yerr=clipped_error(rows["mean"], rows["std"], scale, bounded), capsize=4,
            color=bar_colors,
        )  # fmt: skip
        low_cut, high_cut = clipped_ends(rows["mean"], rows["std"], bounded)
        for cut, level, marker in ((high_cut, 100.0, CLIPPED_UP), (low_cut, 0.0, CLIPPED_DOWN)):
            xs = [bar.get_x() + bar.get_width() / 2 for bar, c in zip(bars, cut, strict=True) if c]
            if xs:  # the std runs past the metric's range: the bar stops there, and a marker beyond it says so
                beyond = level + (3.0 if level else -3.0)
                ax.plot(xs, [beyond] * len(xs), marker, color="black", markersize=6, linestyle="none", clip_on=False,
                        label=f"std past {level:.0f} %: error bar cut", zorder=5)  # fmt: skip
        for bar, is_ensemble, variant in zip(bars, ensemble, rows["variant"], strict=True):
            if is_ensemble:
                bar.set_hatch("//")
            if variant == baseline:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.5)
        if bounded:
            ax.set_ylim(0, PERCENT_TOP)
            ax.set_yticks(range(0, 101, 20))
            if chance is not None and "acc" in metric:
                ax.axhline(
                    100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance {100 * chance:.0f} %"
                )
        if ax.get_legend_handles_labels()[0]:  # beside the axes: bars fill it from the bottom up
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            fig.set_figwidth(fig.get_figwidth() + 2.2)
        ax.set_ylabel(display_name(metric) + (" (%)" if scale != 1 else ""))
        title = f"{display_name(metric)} by variant (mean ± std over seeds)"
        ax.set_title(title + ("\n† snapshot/checkpoint ensemble" if ensemble.any() else ""), fontsize=10)
        ax.tick_params(axis="x", rotation=30)
        paths.append(save(fig, out / f"bar_{slug(metric)}.png"))
    return paths


def _percent_band(ax: object, x: object, mean: pd.Series, std: pd.Series, color: object, alpha: float) -> None:
    """A ±std band around a curve in percent, clipped to the metric's 0-100 % range."""
    ax.fill_between(x, (mean - std).clip(lower=0), (mean + std).clip(upper=100), alpha=alpha, color=color)


def _percent_axes(ax: object, chance: float | None, xlabel: str, ylabel: str, title: str, ncol: int = 1) -> None:
    """The shared frame of an accuracy-by-x figure: 0-100 % axis, chance line, integer x ticks, legend."""
    from matplotlib.ticker import MaxNLocator

    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0, PERCENT_TOP)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=ncol, loc="best", framealpha=0.9)


def val_overlay(
    history: pd.DataFrame,
    variants: Sequence[str],
    out: Path,
    baseline: str,
    chance: float | None = None,
    colors: dict[str, str] | None = None,
) -> Path | None:
    """``val_acc_by_epoch.png``: every variant's val accuracy per epoch (mean over seeds, ±std band) on one axis."""
    plt = pyplot()

    palette = colors or variant_colors(variants)
    fig, ax = plt.subplots(figsize=(7, 4))
    for variant in variants:
        curve = _by_epoch(history[history["variant"] == variant], keys.VAL_ACC)
        if curve.empty:
            continue
        width = 2.5 if variant == baseline else 1.2
        x, color = curve.index, palette.get(variant)  # epochs counted from 0, as W&B's epoch and the epoch lines
        (line,) = ax.plot(x, curve["mean"] * 100, marker="o", markersize=3, linewidth=width, label=variant, color=color)
        _percent_band(ax, x, curve["mean"] * 100, curve["std"] * 100, line.get_color(), 0.15)
    if not ax.lines:
        pyplot().close(fig)
        return None
    ylabel = "val accuracy (%), mean ± std over seeds"
    _percent_axes(ax, chance, "epoch", ylabel, "validation accuracy by epoch, all variants", ncol=2)
    out.mkdir(parents=True, exist_ok=True)
    return save(fig, out / "val_acc_by_epoch.png")


def smoothing_window(points: int) -> int:
    """Moving-average window for a loss curve of ``points`` points: about a fifth of the curve, at least 3 points
    (a window of 1 or 2 would not smooth), never longer than the curve."""
    return max(1, min(points, max(3, points // 5)))


def _by_epoch(history: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean and std over seeds, per epoch, of the last value each run logged for ``key`` in that epoch."""
    rows = history[(history["key"] == key) & history["epoch"].notna()]
    last = rows.groupby(["run", "epoch"])["value"].last().reset_index()
    return last.groupby("epoch")["value"].agg(["mean", "std"]).fillna({"std": 0.0})


def learning_curves(
    history: pd.DataFrame, variants: Sequence[str], out: Path, colors: dict[str, str] | None = None
) -> list[Path]:
    """Per variant ``curves_<variant>.png``: train loss by step (points, moving average) and accuracy by epoch.

    The accuracy panel shows train and val accuracy per epoch as the mean over seeds with a ±std band.

    Args:
        history: the long history table (``toolkit.report.sources.HISTORY_COLUMNS``) of the counted runs.
        variants: the variants to draw, one file each (a variant without history gets none).
        out: folder for the PNGs.
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    palette = colors or variant_colors(variants)
    paths = []
    for variant in variants:
        mine = history[history["variant"] == variant]
        if mine.empty:
            continue
        color = palette.get(variant)  # the variant's colour, as in the overlay and the bars
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
        acc_ax.set_ylim(0, PERCENT_TOP)  # every variant's figure on the same accuracy scale
        acc_ax.set_yticks(range(0, 101, 20))

        loss = mine[(mine["key"] == keys.TRAIN_LOSS) & mine["step"].notna()].sort_values("step")
        if not loss.empty:
            loss_ax.scatter(loss["step"], loss["value"], s=8, alpha=0.4, color="grey", label="train loss (each seed)")
            per_step = loss.groupby("step")["value"].mean()
            window = smoothing_window(len(per_step))
            smooth = per_step.rolling(window, min_periods=1, center=True).mean()
            loss_ax.plot(per_step.index, smooth, color=color, label=f"moving average ({window} points)")
            loss_ax.legend(fontsize=8)
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("train loss")
        # train and val tell apart without colour too: dashes and big hollow squares vs a solid line and small filled
        # circles (where they coincide, the circle sits inside the square)
        for key, label, style, marker, face, size in (
            (keys.TRAIN_ACC, "train acc", "--", "s", "none", 8),
            (keys.VAL_ACC, "val acc", "-", "o", color, 4),
        ):
            curve = _by_epoch(mine, key)
            if curve.empty:
                continue
            x = curve.index  # epochs counted from 0, as W&B's epoch and the epoch lines
            acc_ax.plot(
                x, curve["mean"] * 100, marker=marker, markerfacecolor=face, markersize=size, linestyle=style,
                color=color, label=label,
            )  # fmt: skip
            low, high = (curve["mean"] - curve["std"]).clip(lower=0), (curve["mean"] + curve["std"]).clip(upper=1)
            acc_ax.fill_between(x, low * 100, high * 100, alpha=0.15 if style == "-" else 0.08, color=color)
        if acc_ax.lines:
            acc_ax.legend(fontsize=8, loc="lower right", framealpha=0.9)  # curves rise to the top: the legend below
        acc_ax.set_xlabel("epoch")
        acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        acc_ax.set_ylabel("accuracy (%) mean ± std over seeds")
        fig.suptitle(f"{variant}: learning curves")
        paths.append(save(fig, out / f"curves_{slug(variant)}.png"))
    return paths


#: the ``residual`` switch's column (the switch's own option, ``model.residual``)
RESIDUAL_KEY = keys.config_key("model.residual")


def lesion_curve(
    runs: pd.DataFrame, out: Path, chance: float | None = None, colors: dict[str, str] | None = None
) -> Path | None:
    """``lesion_curve.png`` (Veit et al. 2016): test accuracy against the number of blocks lesioned at test time.

    One line per variant whose runs logged ``test/acc_lesion_k<k>`` (k = 0 is the intact ``test/acc``), the mean
    over its counted seeds with a ±std band; a variant trained without shortcuts (``model.residual`` false) is drawn
    as a horizontal reference line at its mean test accuracy.

    Args:
        runs: the runs table (``runs.csv``) with ``counted``; only counted runs are drawn.
        out: folder for the PNG.
        chance: chance accuracy of the test split, if known.

    Returns:
        the PNG, or None when no counted run has a lesion sweep.
    """
    counted = runs[runs["counted"]]
    ks = sorted((k, c) for c in counted.columns if (k := keys.lesion_k_of(c)) is not None)
    swept = counted.dropna(subset=[c for _, c in ks], how="all") if ks else counted.iloc[0:0]
    if swept.empty:
        return None
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, group in swept.groupby("variant", sort=False):
        columns = [(0, keys.TEST_ACC), *ks]
        values = pd.DataFrame({k: pd.to_numeric(group[c], errors="coerce") for k, c in columns}) * 100
        mean, std = values.mean(), values.std().fillna(0.0)
        color = (colors or {}).get(variant)
        (line,) = ax.plot(
            mean.index, mean, marker="o", color=color, label=f"{variant}: blocks lesioned (n={len(group)})"
        )
        _percent_band(ax, mean.index, mean, std, line.get_color(), 0.2)
    if RESIDUAL_KEY in counted.columns:
        removed = counted[counted[RESIDUAL_KEY].astype(str).str.lower() == "false"]
        for variant, group in removed.groupby("variant", sort=False):
            acc = 100 * pd.to_numeric(group[keys.TEST_ACC], errors="coerce").mean()
            ax.axhline(acc, color="black", linestyle="-.", linewidth=1.2, label=f"{variant}: shortcuts removed")
    xlabel, ylabel = "residual blocks lesioned at test time (k)", "test accuracy (%), mean ± std over seeds"
    _percent_axes(ax, chance, xlabel, ylabel, "lesion study (Veit et al. 2016)")
    out.mkdir(parents=True, exist_ok=True)
    return save(fig, out / "lesion_curve.png")
