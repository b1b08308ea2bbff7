"""Run a search stage by stage: each stage's trials become the variants of one ablation, run by the ablation runner.

So every trial is an ordinary ``toolkit fit`` run with the runner's executors (local slots, Slurm), ledger
(SIGKILL-safe, resumable, nothing trained twice), W&B grouping (group ``<search>.<stage>``, job type = trial) and
run-health rules. The search does not import the ablation runner (a peer package): the cli layer injects it as a
:class:`StageRunner` (``toolkit.search.cli.stage_runner``). Layout: ``<root>/<search>/study.journal`` (Optuna),
``<root>/<search>/<search>.<stage>/trial-NNN/seed<S>/`` (the runs, as an ablation's) and the outputs
``table.{md,csv}``, ``scatter_*.png``, ``best.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.report.health import describe
from toolkit.report.sources import runs_from_logs
from toolkit.report.table import higher_is_better, mark_counted
from toolkit.search import optuna_study as studies
from toolkit.search.spec import SearchSpec, Stage
from toolkit.study.ledger import DONE, Ledger, ledger_path, runner_lock
from toolkit.study.spec import AblationSpec

TEST_METRICS = (keys.TEST_ACC, keys.TEST_F1)


@dataclass(frozen=True)
class StageRunner:
    """How a stage's trials are checked and run: the ablation runner, bound to its options by the cli layer.

    Attributes:
        check: parse every variant of an ablation with the ``toolkit fit`` parser (runs folder given); raises
            ToolkitError naming a bad key.
        run: run (or resume) every run of an ablation under a runs folder, without its report; the exit status
            (0 all done, 1 some not, 130 interrupted).
    """

    check: Callable[[AblationSpec, Path], None]
    run: Callable[[AblationSpec, Path, Console], int]


def stage_ablation(spec: SearchSpec, stage: Stage, variants: dict[str, dict[str, Any]]) -> AblationSpec:
    """The ablation that runs a stage: one variant per trial (name -> its parameters), the search's seed."""
    return AblationSpec(
        name=f"{spec.name}.{stage.name}",
        base=spec.base,
        overrides={**spec.overrides, **stage.overrides},
        seeds=[spec.seed],
        baseline=next(iter(variants)),
        variants=variants,
        metrics=[stage.metric, *TEST_METRICS],
        project=spec.project,
        path=spec.path,
    )


def validate(spec: SearchSpec, folder: Path, check: Callable[[AblationSpec, Path], None]) -> None:
    """Parse one configuration of every stage with the ``toolkit fit`` parser (a bad key fails here, before anything
    is created); each range is probed at both of its ends."""
    for stage in spec.stages:
        for end in (0, -1):
            probe = {
                k: (r.values[end] if r.values is not None else (r.low, r.high)[end]) for k, r in spec.ranges.items()
            }
            ablation = stage_ablation(spec, stage, {"probe": probe})
            try:
                check(ablation, folder)
            except ToolkitError as err:
                message = str(err).split(": ", 1)[-1]
                raise ToolkitError(f"{spec.path}: stage '{stage.name}' or a range does not parse: {message}") from None


def stage_results(ablation: AblationSpec, folder: Path, metric: str) -> dict[str, dict[str, Any]]:
    """Per trial: ledger status, the selection metric (best over the run's W&B runs, so a resumed run keeps the
    epochs before its interruption) and the test metrics of the run that finished."""
    records = Ledger(ledger_path(folder, ablation.name)).read()
    out: dict[str, dict[str, Any]] = {}
    for run in ablation.runs():
        status = records.get(run.id, {}).get("status", "pending")
        out[run.variant] = {"status": status, "run_dir": str(run.directory(folder)), metric: None}
    try:
        logs = mark_counted(runs_from_logs(folder, ablation.name).runs)
    except ToolkitError:
        return out
    best = max if higher_is_better(metric) else min
    for variant, rows in logs.groupby("variant"):
        if variant not in out or out[variant]["status"] != DONE:
            continue
        # a pruned trial stopped early on purpose: pruned, whatever the health of its shortened run
        pruned = pd.to_numeric(rows.get(keys.PRUNED_AT, pd.Series(dtype=float)), errors="coerce").dropna()
        out[variant]["pruned_at_epoch"] = int(pruned.iloc[-1]) if len(pruned) else None
        if not rows["counted"].any():  # only a healthy finished run has a score; the trial's row says why not
            decided = rows.sort_values("start_time", kind="stable", na_position="first").iloc[-1]
            out[variant]["excluded"] = describe(decided)
            continue
        values = [v for v in rows.get(metric, pd.Series(dtype=float)) if isinstance(v, float) and math.isfinite(v)]
        out[variant][metric] = best(values) if values else None
        counted = rows[rows["counted"]].iloc[-1]
        for key in TEST_METRICS:
            value = counted.get(key)
            out[variant][key] = float(value) if value is not None and pd.notna(value) else None
    return out


def run_search(
    spec: SearchSpec, root: Path, runner: StageRunner, console: Console | None = None
) -> tuple[int, list[dict]]:
    """Run or resume every stage under ``<root>/<search>/``; returns (exit status, one row per trial with its stage,
    parameters and scores)."""
    console = console or Console()
    folder = (Path(root) / spec.name).absolute()
    rows: list[dict[str, Any]] = []
    with runner_lock(folder):  # first: a second search of the same name is told at once, not after the validation
        validate(spec, folder, runner.check)
        previous: tuple[Stage, Any] | None = None
        for stage in spec.stages:
            study = studies.open_study(spec, folder, stage)
            while True:  # a sampling stage runs batch after batch; a `top` stage runs once
                if stage.trials:
                    trials = studies.sample_stage(study, spec, stage)
                else:
                    trials = studies.promote(study, previous[1], spec, stage)
                if not trials:
                    raise ToolkitError(
                        f"stage '{stage.name}': no trial of stage '{previous[0].name}' finished healthy"
                        + _exclusions(studies.stage_trials(previous[1]), rows)
                    )
                code, results = _run_trials(spec, stage, study, trials, runner, folder, console)
                if code == 130 or any(r["status"] not in ("done", "failed") for r in results.values()):
                    rows += _rows(stage, studies.stage_trials(study), results)
                    return (130 if code == 130 else 1), rows
                if len(trials) >= stage.trials:
                    break
            rows += _rows(stage, studies.stage_trials(study), results)
            previous = (stage, study)
    return 0, rows


def _run_trials(
    spec: SearchSpec,
    stage: Stage,
    study: Any,
    trials: list[Any],
    runner: StageRunner,
    folder: Path,
    console: Console,
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run the stage's trials as one ablation (the ledger skips the finished ones) and tell the study the results."""
    variants = {
        studies.trial_name(t): {**studies.params_of(t), **_pruning(spec, stage, t, trials, folder)} for t in trials
    }
    ablation = stage_ablation(spec, stage, variants)
    console.print(f"[bold]{spec.name}[/] stage [bold]{stage.name}[/]: {len(trials)} trials")
    code = runner.run(ablation, folder, console)
    results = stage_results(ablation, folder, stage.metric)
    for trial in trials:
        result = results[studies.trial_name(trial)]
        pruned = result.get("pruned_at_epoch") is not None
        studies.record(study, trial, result.get(stage.metric), result["status"], pruned)
    return code, results


def _pruning(spec: SearchSpec, stage: Stage, trial: Any, trials: list[Any], folder: Path) -> dict[str, Any]:
    """The ``--search_trial`` override of a sampling stage's trial when the spec prunes (see callbacks/pruning.py)."""
    if spec.pruning is None or not stage.trials:
        return {}
    info = {
        "journal": str(folder / studies.STUDY_FILE),
        "study": studies.study_name(spec, stage),
        "trial": trial.number,
        "monitor": stage.metric,
        "against": studies.pruning_against(trials, trial, stage.batch),
        **spec.pruning,
    }
    return {"search_trial": info}


def _exclusions(trials: list[Any], rows: list[dict[str, Any]]) -> str:
    """`` (trial-000: not learning: ...; ...)``: why the finished trials of the stage before were not scored."""
    names = {studies.trial_name(t) for t in trials}
    why = [f"{r['trial']}: {r['excluded']}" for r in rows if r.get("trial") in names and r.get("excluded")]
    return f" ({'; '.join(why)})" if why else ""


def _rows(stage: Stage, trials: list[Any], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for trial in trials:
        name = studies.trial_name(trial)
        source = trial.user_attrs.get("from_trial")  # a `top` stage's trial retrains this one of the stage before
        origin = {"from_trial": f"trial-{source:03d}"} if source is not None else {}
        rows.append({"stage": stage.name, "trial": name, **origin, **trial.params, **results[name]})
    return rows
