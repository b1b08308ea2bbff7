"""A search's outputs: the trials table sorted by the metric, a metric-vs-parameter scatter per parameter, and the
best configuration as one YAML file that ``toolkit fit --config`` and an ablation spec's ``base`` take as is."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from toolkit.atomic import write_atomically, write_text
from toolkit.report.figure import pyplot, save, slug
from toolkit.report.table import higher_is_better
from toolkit.search.spec import SearchSpec
from toolkit.study.fields import read_yaml


def trials_table(spec: SearchSpec, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: stage, trial, parameters, the stage's metric, test metrics, status; stages in spec order,
    each sorted by its metric (best first; trials without a score last)."""
    parts = []
    for stage in spec.stages:
        part = pd.DataFrame([r for r in rows if r["stage"] == stage.name])
        if part.empty:
            continue
        part = part.rename(columns={stage.metric: "metric_value"}).assign(metric=stage.metric)
        part = part.sort_values("metric_value", ascending=not higher_is_better(stage.metric), na_position="last")
        parts.append(part)
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    first = ["stage", "trial", "from_trial", *spec.ranges, "metric", "metric_value", "test/acc", "test/f1", "status"]
    return table[[c for c in first if c in table] + [c for c in table if c not in first]]


def best_trial(spec: SearchSpec, table: pd.DataFrame) -> pd.Series | None:
    """The best scored trial of the last stage that has scores (the table is sorted)."""
    for stage in reversed(spec.stages):
        scored = table[(table["stage"] == stage.name) & table["metric_value"].notna()] if len(table) else table
        if len(scored):
            return scored.iloc[0]
    return None


def best_config(
    spec: SearchSpec, stage_overrides: dict[str, Any], params: dict[str, Any], run_dir: Path | None = None
) -> dict[str, Any]:
    """The base configs merged in order, then the common, stage and trial overrides, and the search's seed.

    ``run_dir`` becomes ``trainer.default_root_dir``: the refit gets its own run folder (the base's would hold a run
    already, and ``toolkit fit`` refuses to mix two runs in one folder).
    """
    config: dict[str, Any] = {}
    for base in spec.base:
        config = _merge(config, read_yaml(Path(base)) or {})
    for key, value in {**spec.overrides, **stage_overrides, **params}.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config["seed_everything"] = spec.seed
    config["test_after_fit"] = True
    if run_dir is not None:
        config.setdefault("trainer", {})["default_root_dir"] = str(run_dir)
    return config


def _merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(into)
    for key, value in other.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def scatter_plots(spec: SearchSpec, table: pd.DataFrame, out: Path) -> list[Path]:
    """``scatter_<key>.png``: each scored trial's metric against one parameter, log x axis for log ranges."""
    plt = pyplot()
    paths = []
    scored = table[table["metric_value"].notna()] if len(table) else table
    for key, r in spec.ranges.items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for stage in spec.stages:
            part = scored[scored["stage"] == stage.name]
            ax.scatter(part[key], part["metric_value"], label=f"{stage.name} ({stage.metric})", alpha=0.8)
        if r.log:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("metric")
        ax.legend()
        ax.set_title(f"{spec.name}: metric vs {key.rsplit('.', 1)[-1]}")
        paths.append(save(fig, out / f"scatter_{slug(key)}.png"))
    return paths


def write_outputs(spec: SearchSpec, rows: list[dict[str, Any]], folder: Path) -> dict[str, Path]:
    """``table.md``, ``table.csv``, the scatter PNGs and ``best.yaml`` (when a trial has a score) under ``folder``."""
    table = trials_table(spec, rows)
    written: dict[str, Path] = {}
    if table.empty:
        return written
    folder.mkdir(parents=True, exist_ok=True)
    written["csv"] = folder / "table.csv"
    write_atomically(written["csv"], lambda tmp: table.to_csv(tmp, index=False))
    shown = table.drop(columns=["run_dir"], errors="ignore")
    written["md"] = folder / "table.md"
    write_text(written["md"], shown.to_markdown(index=False, floatfmt=".4g") + "\n")
    for i, path in enumerate(scatter_plots(spec, table, folder)):
        written[f"scatter{i}"] = path
    best = best_trial(spec, table)
    if best is not None:
        stage = next(s for s in spec.stages if s.name == best["stage"])
        config = best_config(spec, stage.overrides, {k: _plain(best[k]) for k in spec.ranges}, folder / "best")
        written["best"] = folder / "best.yaml"
        note = (
            f"# best trial of {spec.name}: {best['trial']} ({best['stage']}), {best['metric']} = {best['metric_value']}"
        )
        write_text(written["best"], note + "\n" + yaml.safe_dump(config, sort_keys=False))
    return written


def _plain(value: Any) -> Any:
    """numpy scalars from the table back to plain Python values (YAML writes those as numbers)."""
    return value.item() if hasattr(value, "item") else value
