"""The tune stage of a study with ``tune:``, and its selection policy (the contract, ``study/tuning.py``, says what
is tuned, where the runs live and how choices are stored; choosing among the runs is this stage's business).

Every variant runs at every value at the first seed (the study ``<name>-tune``); once all have finished, each
variant's values are chosen on its best validation score (:func:`choose`), recorded in ``tune.json`` and printed, and
the study goes on at them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit import keys
from toolkit.ablation.stages import Ablation, run_stage, summarise
from toolkit.errors import ToolkitError
from toolkit.study import tuning
from toolkit.study.layout import RESULT_FILE
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.result import DONE, RunResult
from toolkit.study.spec import AblationSpec, Run
from toolkit.study.tuning import SEP, Choice, combinations, label, tune_study


def choose(spec: AblationSpec, root: str | Path, records: dict[str, dict[str, Any]]) -> dict[str, Choice]:
    """Each variant's values, chosen on the best validation score of its tune runs (``records``: the tune ledger).

    A tie keeps the value listed first; a failed, diverged or unscored run does not compete; rows ``tune: auto``
    leaves alone take the baseline's choice.

    Raises:
        ToolkitError: a variant none of whose tune runs finished with a validation score.
    """
    stage = tune_study(spec)
    by_name = {run.variant: run for run in stage.runs()}
    chosen = {}
    for variant in spec.variants:
        fixed = [k for k in spec.tune if k in spec.variants[variant]]
        scores: dict[str, float | None] = {}
        best: tuple[float, dict[str, Any]] | None = None
        for combo in combinations(spec, variant):
            score = _score(by_name[f"{variant}{SEP}{label(combo)}"], root, records)
            scores[label(combo)] = score
            if score is not None and (best is None or score > best[0]):  # strictly better: a tie keeps the first
                best = (score, combo)
        if scores and best is None:
            raise ToolkitError(
                f"tune: no run of variant '{variant}' finished with a validation score ({', '.join(scores)}); see "
                f"{Path(root) / stage.name / variant}{SEP}*/seed{stage.seeds[0]}/run.log, fix it, and run again"
            )
        values = {k: spec.variants[variant][k] for k in fixed} | (best[1] if best else {})
        chosen[variant] = Choice(values, fixed, scores)
    for variant, choice in chosen.items():  # rows `tune: auto` leaves alone run at the baseline's choice
        if spec.tune_rows is not None and variant not in spec.tune_rows:
            inherited = {k: v for k, v in chosen[spec.baseline].values.items() if k not in choice.fixed}
            chosen[variant] = Choice({**choice.values, **inherited}, choice.fixed, {}, inherited=True)
    return chosen


def _score(run: Run, root: str | Path, records: dict[str, dict[str, Any]]) -> float | None:
    """The run's best validation score, when it is done and healthy (a diverged or failed run does not compete)."""
    if records.get(run.id, {}).get("status") != DONE:
        return None
    result = RunResult.read(run.directory(root) / RESULT_FILE)
    if result is None or result.status != DONE or result.best_val is None:
        return None
    return result.best_val if keys.MONITOR_MODE == "max" else -result.best_val


def choose_and_record(spec: AblationSpec, root: Path) -> tuple[AblationSpec, list[str]]:
    """After every tune run finished: the study at the values chosen on val, and the lines that say them."""
    stage = tune_study(spec)
    chosen = choose(spec, root, Ledger(ledger_path(root, stage.name)).read())
    path = tuning.write_choices(root, spec, chosen)
    lines = [f"tune: chosen on {keys.MONITOR} (seed {spec.seeds[0]}), recorded in {path}"]
    lines += [f"  {variant}: {cell}" for variant, cell in tuning.column(spec, chosen).items()]
    return tuning.tuned(spec, chosen), lines


def tune(ablation: Ablation) -> int | None:
    """Run the tune stage (``tune:`` only), then choose each variant's values and go on at them."""
    stage, spec, console = ablation.stage, ablation.spec, ablation.console
    if stage is None:
        return None
    code = run_stage(ablation, stage)
    if code != 0 or ablation.options.dry_run:
        if ablation.options.dry_run:
            console.print(f"then every seed of {spec.name} at each variant's values chosen on val")
        return code
    tune_ledger = Ledger(ledger_path(ablation.root, stage.name))
    if summarise(stage, tune_ledger, ablation.root, ablation.options, console, report=False) != 0:
        console.print(f"{spec.name}: not started; every tune run must finish before values are chosen")
        return 1
    ablation.spec, lines = choose_and_record(spec, ablation.root)
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    return None
