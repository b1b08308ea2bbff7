"""The search's Optuna studies: one per stage, in one journal file under the search's folder (resumable).

One study per stage keeps budgets apart: a stage retrains with more epochs, so its scores are not comparable with the
stage before, and each study's best trial compares like with like. A sampling stage asks its trials a batch at a
time (TPE learns from the batches before; the first batch is TPE's random start-up); a batch's trials are created
before any of their runs start and found again on resume, and no new batch is asked while a trial of the stage is
unfinished, so resuming never samples a configuration twice. Every batch is drawn by a sampler seeded from the
search's seed and the number of trials before it, so a killed and resumed search draws what an uninterrupted one
would. The runs themselves keep the ablation ledger's semantics (a done run is never trained again).
Open a study in the browser with ``optuna-dashboard <root>/<search>/study.journal``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from toolkit.errors import ToolkitError
from toolkit.report.table import higher_is_better
from toolkit.search.spec import SearchSpec, Stage

STUDY_FILE = "study.journal"
RUN_ATTR, SPEC_ATTR = "run_id", "spec_fingerprint"


def distributions(spec: SearchSpec) -> dict[str, BaseDistribution]:
    """Each range as an Optuna distribution (log-uniform where ``log: true``)."""
    out: dict[str, BaseDistribution] = {}
    for key, r in spec.ranges.items():
        if r.values is not None:
            out[key] = CategoricalDistribution(r.values)
        elif r.integer:
            out[key] = IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[key] = FloatDistribution(r.low, r.high, log=r.log)
    return out


def trial_name(trial: FrozenTrial) -> str:
    """The trial's variant name in its stage's ablation (and W&B job type): ``trial-007``."""
    return f"trial-{trial.number:03d}"


def study_name(spec: SearchSpec, stage: Stage) -> str:
    """The Optuna study of one stage: ``<search>.<stage>`` (also the stage's ablation name and W&B group)."""
    return f"{spec.name}.{stage.name}"


def open_study(spec: SearchSpec, folder: Path, stage: Stage) -> optuna.Study:
    """Create or load ``stage``'s study in ``folder``; a study started from a different spec is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))
    direction = "maximize" if higher_is_better(stage.metric) else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name(spec, stage)
    try:  # load first: a refused resume must not write to the journal
        study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec, stage, 0))
    except KeyError:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    fingerprint = spec.fingerprint()
    previous = study.user_attrs.get(SPEC_ATTR)
    if previous is None:
        study.set_user_attr(SPEC_ATTR, fingerprint)
    elif previous != fingerprint:
        raise ToolkitError(
            f"search '{spec.name}' in {folder} was started from a different spec (or base config); "
            f"restore it, or use another --root, or move {folder} away"
        )
    return study


def _sampler(spec: SearchSpec, stage: Stage, offset: int) -> optuna.samplers.BaseSampler:
    """The sampler of the batch after ``offset`` trials: seeded from both, so a resumed search draws the same batch."""
    seed = spec.seed + offset
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: r.grid() for k, r in spec.ranges.items()}, seed=seed)
    if spec.sampler == "tpe":
        # the first batch is TPE's random start-up; each later batch is drawn from the trials told before it
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=stage.batch, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def stage_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The stage's trials already in its study, in creation order."""
    return study.get_trials(deepcopy=False)


def sample_stage(study: optuna.Study, spec: SearchSpec, stage: Stage) -> list[FrozenTrial]:
    """The sampling stage's trials, with one more batch asked when every trial so far has its result.

    While a trial is unfinished (a resumed search) nothing new is asked: its run finishes first, so the next batch
    is drawn from the same history as in a search that was never stopped.
    """
    existing = stage_trials(study)
    unfinished = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in existing)
    missing = min(stage.batch, stage.trials - len(existing))
    if missing > 0 and not unfinished:
        study.sampler = _sampler(spec, stage, len(existing))
        space = distributions(spec)
        for _ in range(missing):
            study.ask(space)
    return stage_trials(study)


def promote(study: optuna.Study, previous: optuna.Study, spec: SearchSpec, stage: Stage) -> list[FrozenTrial]:
    """Create the ``top`` stage's trials: the best ``top`` completed trials of the ``previous`` stage's study."""
    space = distributions(spec)
    if not stage_trials(study):
        done = [t for t in stage_trials(previous) if t.state == TrialState.COMPLETE]
        best = sorted(done, key=lambda t: t.value, reverse=previous.direction == StudyDirection.MAXIMIZE)
        for source in best[: stage.top]:
            study.enqueue_trial(source.params, user_attrs={"from_trial": source.number})
    for trial in stage_trials(study):
        if trial.state == TrialState.WAITING:  # enqueued (maybe by a search that was killed right after)
            study.ask(space)  # takes the enqueued trial with its fixed parameters
    return stage_trials(study)


def record(study: optuna.Study, trial: FrozenTrial, value: float | None, status: str, pruned: bool = False) -> None:
    """Tell the study how a trial's run ended (only once: a finished trial is left as it is)."""
    if trial.state != TrialState.RUNNING:
        return
    if status == "done" and pruned:
        study.tell(trial.number, state=TrialState.PRUNED)  # its last reported value stays with it
    elif status == "done" and value is not None and math.isfinite(value):
        study.tell(trial.number, value)
    elif status in ("done", "failed"):
        study.tell(trial.number, state=TrialState.FAIL)


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's overrides: its parameters by dotted config key."""
    return dict(trial.params)


def pruning_against(trials: list[FrozenTrial], trial: FrozenTrial, batch: int) -> list[int]:
    """The trials ``trial`` may be pruned against: the finished ones of the batches asked before its own.

    Trials are numbered in the order they were asked, ``batch`` at a time, and a batch is only asked once every
    trial before it has finished: so this list, and every pruning decision made against it, is the same in a
    search that was killed and resumed or run with another ``--workers``.
    """
    own = trial.number // batch
    return [t.number for t in trials if t.number // batch < own and t.state == TrialState.COMPLETE]
