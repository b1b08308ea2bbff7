"""Draw the report's PNG figures with matplotlib: a bar chart per metric and learning curves per variant."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from toolkit import keys
from toolkit.report.render import display_name
from toolkit.report.table import is_fraction


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported here: tables alone do not need matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    """A file-name-safe form of a metric or variant name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def bar_charts(table: pd.DataFrame, metrics: Sequence[str], out: Path, baseline: str) -> list[Path]:
    """One bar chart per metric (mean over seeds, error bars = std), saved as ``bar_<metric>.png``.

    Args:
        table: the tidy table from ``toolkit.report.table.aggregate``.
        metrics: the metrics to draw.
        out: folder for the PNGs.
        baseline: the baseline variant, drawn in another colour.
    """
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        rows = table[(table["metric"] == metric) & (table["n"] > 0)]
        scale = 100.0 if is_fraction(metric) else 1.0
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.5))
        colors = ["tab:orange" if v == baseline else "tab:blue" for v in rows["variant"]]
        labels = [f"{v}\n(n={n})" for v, n in zip(rows["variant"], rows["n"], strict=True)]
        ax.bar(labels, rows["mean"] * scale, yerr=rows["std"].fillna(0) * scale, capsize=4, color=colors)
        ax.set_ylabel(display_name(metric) + (" (%)" if scale != 1 else ""))
        ax.set_title(f"{display_name(metric)} by variant (mean ± std over seeds)")
        ax.tick_params(axis="x", rotation=30)
        paths.append(_save(fig, out / f"bar_{_slug(metric)}.png"))
    return paths


def _save(fig: object, path: Path) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _by_epoch(history: pd.DataFrame, key: str) -> pd.DataFrame:
    """Mean and std over seeds, per epoch, of the last value each run logged for ``key`` in that epoch."""
    rows = history[(history["key"] == key) & history["epoch"].notna()]
    last = rows.groupby(["run", "epoch"])["value"].last().reset_index()
    return last.groupby("epoch")["value"].agg(["mean", "std"]).fillna({"std": 0.0})


def learning_curves(history: pd.DataFrame, variants: Sequence[str], out: Path) -> list[Path]:
    """Per variant ``curves_<variant>.png``: train loss by step (points, moving average) and accuracy by epoch.

    The accuracy panel shows train and val accuracy per epoch as the mean over seeds with a ±std band.

    Args:
        history: the long history table (``toolkit.report.sources.HISTORY_COLUMNS``) of the counted runs.
        variants: the variants to draw, one file each (a variant without history gets none).
        out: folder for the PNGs.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for variant in variants:
        mine = history[history["variant"] == variant]
        if mine.empty:
            continue
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))

        loss = mine[(mine["key"] == keys.TRAIN_LOSS) & mine["step"].notna()].sort_values("step")
        if not loss.empty:
            loss_ax.scatter(loss["step"], loss["value"], s=8, alpha=0.4, label="train loss (each seed)")
            per_step = loss.groupby("step")["value"].mean()
            window = max(1, len(per_step) // 10)
            loss_ax.plot(per_step.index, per_step.rolling(window, min_periods=1).mean(), label=f"moving avg ({window})")
            loss_ax.legend(fontsize=8)
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("train loss")
        for key, label in ((keys.TRAIN_ACC, "train acc"), (keys.VAL_ACC, "val acc")):
            curve = _by_epoch(mine, key)
            if curve.empty:
                continue
            acc_ax.plot(curve.index, curve["mean"] * 100, marker="o", label=label)
            acc_ax.fill_between(
                curve.index, (curve["mean"] - curve["std"]) * 100, (curve["mean"] + curve["std"]) * 100, alpha=0.2
            )
        if acc_ax.lines:
            acc_ax.legend(fontsize=8)
        acc_ax.set_xlabel("epoch")
        acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        acc_ax.set_ylabel("accuracy (%) mean ± std over seeds")
        fig.suptitle(f"{variant}: learning curves")
        paths.append(_save(fig, out / f"curves_{_slug(variant)}.png"))
    return paths
