"""The doctor's outputs: the rich verdict table, the learning-curve PNGs, ``doctor.json`` and the search ranges file.

The ranges file maps dotted config keys to ``{low, high, log}``: a search spec's ``ranges:`` takes it as is, either
pasted or named by path.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from toolkit.atomic import write_text
from toolkit.doctor.checks import Curve, Step, loss_change
from toolkit.report.figure import pyplot, save

LR_KEY = "model.optimizer.init_args.lr"
WD_KEY = "model.optimizer.init_args.weight_decay"
#: the weight decay range around the recipe's 1e-4, 1e-5 (a log range cannot hold its 0; 1e-6 is as good as none)
WD_RANGE = (1e-6, 1e-3)


def search_ranges(lr: float) -> dict[str, dict[str, Any]]:
    """The search ranges around a suggested lr: lr in [lr/10, 3 lr] and weight decay in ``WD_RANGE``, log scale."""
    return {
        LR_KEY: {"low": float(f"{lr / 10:.3g}"), "high": float(f"{lr * 3:.3g}"), "log": True},
        WD_KEY: {"low": WD_RANGE[0], "high": WD_RANGE[1], "log": True},
    }


def moving_average(values: list[float], window: int = 10) -> list[float]:
    """Trailing mean over up to ``window`` points (the recipe's "loss as points with a moving average")."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(curves: list[Curve], out: Path) -> list[Path]:
    """Step 6: one PNG per short run: loss as points with a moving average, and the train accuracy (moving average)
    with the val accuracy measured after the run."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for curve in curves:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        steps = list(range(1, len(curve.loss) + 1))
        finite = [v if math.isfinite(v) else float("nan") for v in curve.loss]
        left.plot(steps, finite, ".", alpha=0.4, label="loss")
        left.plot(steps, moving_average(finite), "-", label="moving average")
        left.set_xlabel("step")
        left.set_ylabel("train loss")
        left.legend()
        right.plot(steps, moving_average(curve.acc), "-", label="train acc (moving average)")
        if curve.val_acc is not None:
            right.axhline(curve.val_acc, color="tab:orange", linestyle="--", label=f"val acc {curve.val_acc:.2f}")
        right.set_xlabel("step")
        right.set_ylabel("accuracy")
        right.set_ylim(0, 1.08)  # a margin above 1: a curve at 100 % stands clear of the frame
        right.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
        right.legend(loc="lower right")  # the curve rises to the top
        fig.suptitle(curve.name)
        slug = curve.name.replace("=", "_")
        paths.append(save(fig, out / f"curve_{slug}.png"))
    return paths


def render(steps: list[Step], curves: list[Curve], lr_find: float | None, console: Console) -> None:
    """Print the verdict table and the per-lr table (loss change, val accuracy, update/parameter ratio per group)."""
    table = Table(title="toolkit doctor")
    for column in ("step", "verdict", "measured", "advice"):
        table.add_column(column, overflow="fold")
    for step in steps:
        verdict = "[red]FAIL[/]" if not step.passed else "[yellow]warn[/]" if step.warn else "[green]pass[/]"
        table.add_row(step.name, verdict, step.measured, step.advice)
    console.print(table)
    if not curves:
        return
    groups = sorted({g for c in curves for g in c.ratios})
    lrs = Table(title=f"lr checks (lr_find suggests {lr_find:.2g})" if lr_find else "lr checks")
    for column in ("lr", "loss change", "val acc", *(f"update/param {g}" for g in groups)):
        lrs.add_column(column)
    for curve in curves:
        drop = curve.drop()
        lrs.add_row(
            curve.name.removeprefix("lr="),
            loss_change(drop),
            "-" if curve.val_acc is None else f"{curve.val_acc:.3f}",
            *(f"{curve.ratios[g]:.1e}" if g in curve.ratios else "-" for g in groups),
        )
    console.print(lrs)


def write_outputs(
    out: Path, steps: list[Step], curves: list[Curve], lr_find: float | None, lr: float | None
) -> dict[str, Path]:
    """``doctor.json`` (every number), ``ranges.yaml`` (when an lr was found) and the curve PNGs under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "doctor.json"}
    data = {
        "passed": all(s.passed for s in steps),
        "steps": [asdict(s) for s in steps],
        "lr_find": lr_find,
        "suggested_lr": lr,
        "curves": [asdict(c) for c in curves],
    }
    write_text(written["json"], json.dumps(data, indent=1, default=str))
    if lr is not None:
        written["ranges"] = out / "ranges.yaml"
        header = "# search ranges from toolkit doctor; a search spec takes them as `ranges: <this file>`\n"
        write_text(written["ranges"], header + yaml.safe_dump(search_ranges(lr), sort_keys=False))
    for i, path in enumerate(plot_curves(curves, out)):
        written[f"curve{i}"] = path
    return written
