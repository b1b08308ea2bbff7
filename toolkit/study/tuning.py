"""Fair tuning per row: a spec's ``tune:`` values, each variant's own choice made on validation data.

``tune: {model.optimizer.init_args.lr: [1.0e-4, 3.0e-4, 1.0e-3]}`` makes the ablation run in two stages:

1. **tune**: every variant at every value (every combination when several keys are tuned), at the spec's first seed,
   as the study ``<name>-tune`` (its own ledger and run folders, ``<root>/<name>-tune/<variant>@<label>/seed<k>``);
2. **choose** (the tune stage's policy, ``toolkit/ablation/tune_stage.py``): per variant, the value whose run reached
   the best validation score (``RunResult.best_val``, the
   metric its best checkpoint is chosen by: ``keys.MONITOR``); a tie keeps the value listed first. Runs that failed,
   diverged or scored nothing do not compete; a variant with no scored value stops the study with one line. The
   choices are written to ``<root>/<name>/tune.json``;
3. **run**: every seed of every variant at its chosen values (the study ``<name>`` as usual: the values are part of
   each variant's overrides, so they are part of its run ids).

``tune: auto`` (`toolkit.study.spec.auto_tune`) tunes the lr over the baseline's lr x (1, 1/3, 3) for the baseline and
the rows that change the optimisation (``AblationSpec.tune_rows``); every other row runs at the value chosen for the
baseline (``baseline's`` in the table), so it still differs from the baseline in its change alone.

The test split is never read. A variant that sets a tuned key itself keeps its own value (``fixed`` in the table). The
report reads ``tune.json`` to find the runs and prints the chosen values as a column; a chosen value at either end
of its grid is marked ``(grid edge)``: the best value may lie beyond what was tried. A study without ``tune:``
marks the rows whose change alters the optimisation (`toolkit.study.spec.OPTIMISATION_KEYS`) ``not tuned``: they run
at the baseline's settings, which were chosen for another recipe.

Torch-free: the runner, ``ablate status`` and the report all use it.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.study.spec import AblationSpec, changes_optimisation

TUNE_FILE = "tune.json"
#: joins a variant and the label of its tuned values in the tune stage's variant names
SEP = "@"


@dataclass(frozen=True)
class Choice:
    """What ``tune`` chose for one variant.

    Attributes:
        values: ``{key: value}`` it runs at (chosen ones and those the variant fixes itself).
        fixed: the keys the variant sets itself (not tuned).
        scores: ``{label: best validation score or None}`` of every tuned combination, in the listed order.
    """

    values: dict[str, Any]
    fixed: list[str]
    scores: dict[str, float | None]
    #: the values are the baseline's choice (a row ``tune: auto`` does not tune)
    inherited: bool = False


def short(key: str) -> str:
    """The last part of a dotted key: ``model.optimizer.init_args.lr`` -> ``lr``."""
    return key.rsplit(".", 1)[-1]


def label(values: dict[str, Any]) -> str:
    """``lr=0.0003`` (several keys: joined by ``+``); a folder-safe name for a combination of tuned values."""
    return "+".join(f"{short(k)}={v}" for k, v in values.items())


def combinations(spec: AblationSpec, variant: str) -> list[dict[str, Any]]:
    """Every combination of the values ``variant`` is tuned over (keys it sets itself are left out), listed order."""
    # only the variant's own overrides fix a key: the spec's common ones and the base configs are what `tune` replaces
    free = {k: v for k, v in spec.tune.items() if k not in spec.variants[variant]}
    if not free or (spec.tune_rows is not None and variant not in spec.tune_rows):
        return []
    return [dict(zip(free, combo, strict=True)) for combo in itertools.product(*free.values())]


def tune_study(spec: AblationSpec) -> AblationSpec:
    """The tune stage as a study of its own: ``<variant>@<label>`` variants at the spec's first seed."""
    variants = {}
    for variant in spec.variants:
        for combo in combinations(spec, variant):
            variants[f"{variant}{SEP}{label(combo)}"] = {**spec.variants[variant], **combo}
    baseline = next(iter(v for v in variants if v.split(SEP, 1)[0] == spec.baseline), "")
    return replace(
        spec,
        name=f"{spec.name}-tune",
        seeds=spec.seeds[:1],
        variants=variants,
        baseline=baseline,
        tune={},
        tune_rows=None,
    )


def tuned(spec: AblationSpec, chosen: dict[str, Choice]) -> AblationSpec:
    """The study at its chosen values: each variant's overrides carry them (and so its run ids do)."""
    variants = {v: {**delta, **chosen[v].values} for v, delta in spec.variants.items()}
    return replace(spec, variants=variants)


def tune_path(root: str | Path, spec: AblationSpec) -> Path:
    """Where the choices are kept: ``<root>/<name>/tune.json``."""
    return Path(root) / spec.name / TUNE_FILE


def write_choices(root: str | Path, spec: AblationSpec, chosen: dict[str, Choice]) -> Path:
    """Record the choices (atomically) with what they were chosen from."""
    path = tune_path(root, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "tune": spec.tune,
        "seed": spec.seeds[0],
        "metric": keys.MONITOR,
        "variants": {
            v: {"values": c.values, "fixed": c.fixed, "scores": c.scores, "inherited": c.inherited}
            for v, c in chosen.items()
        },
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def read_choices(root: str | Path, spec: AblationSpec) -> dict[str, Choice] | None:
    """The recorded choices of ``spec`` under ``root``; None when tuning has not finished (or the spec's ``tune:``
    or first seed changed since: those choices were made for another study)."""
    try:
        data = json.loads(tune_path(root, spec).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tune") != spec.tune or data.get("seed") != spec.seeds[0]:
        return None
    found = data.get("variants") or {}
    if set(found) != set(spec.variants):
        return None
    return {
        v: Choice(dict(c["values"]), list(c["fixed"]), dict(c["scores"]), bool(c.get("inherited", False)))
        for v, c in found.items()
    }


def resolve(spec: AblationSpec, root: str | Path) -> AblationSpec:
    """The spec as its runs were run: at the recorded choices when it has ``tune:``, else unchanged.

    Raises:
        ToolkitError: the spec has ``tune:`` and its tuning has not finished under ``root``.
    """
    if not spec.tune:
        return spec
    chosen = read_choices(root, spec)
    if chosen is None:
        raise ToolkitError(
            f"{spec.name}: its tune stage has not finished under {root} ({tune_path(root, spec)} is missing or "
            f"was made for another tune:); run `toolkit ablate run {spec.path or spec.name}` first"
        )
    return tuned(spec, chosen)


def column(spec: AblationSpec, chosen: dict[str, Choice]) -> dict[str, str]:
    """The table's ``tuned`` cell per variant: ``lr=0.0003`` (``lr=0.003 (fixed)`` for a value the variant sets,
    ``lr=0.001 (grid edge)`` for a chosen value at either end of its grid)."""
    cells = {}
    for variant, choice in chosen.items():
        parts = []
        for key, value in choice.values.items():
            if key in choice.fixed:
                mark = " (fixed)"
            elif choice.inherited:
                mark = " (baseline's)"
            else:
                mark = " (grid edge)" if at_edge(spec.tune.get(key), value) else ""
            parts.append(f"{short(key)}={value}{mark}")
        cells[variant] = ", ".join(parts)
    return cells


def at_edge(grid: list[Any] | None, value: Any) -> bool:
    """Whether ``value`` is the smallest or largest of a numeric ``grid`` (the listed first/last otherwise)."""
    if not grid or value not in grid:
        return False
    numbers = [g for g in grid if isinstance(g, int | float) and not isinstance(g, bool)]
    if len(numbers) == len(grid):
        return value in (min(numbers), max(numbers))
    return value in (grid[0], grid[-1])


def untuned_column(spec: AblationSpec) -> dict[str, str]:
    """The ``tuned`` cell of a study without ``tune:``: ``not tuned (model.batchnorm)`` for a row that changes the
    optimisation at the baseline's settings, empty for the others."""
    cells = {}
    for variant, delta in spec.variants.items():
        keys_ = changes_optimisation(delta) if variant != spec.baseline else []
        cells[variant] = f"not tuned ({', '.join(keys_)})" if keys_ else ""
    return cells
