"""The search's Optuna study: a journal file under the search's folder, so a killed search resumes where it was.

Trials are created before any of their runs start and are found again on resume (by their ``stage`` user
attribute), so resuming never samples a configuration twice; the runs themselves keep the ablation ledger's
semantics (a done run is never trained again).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from toolkit.errors import ToolkitError
from toolkit.report.table import higher_is_better
from toolkit.search.spec import SearchSpec, Stage

STUDY_FILE = "study.journal"
STAGE_ATTR, RUN_ATTR, SPEC_ATTR = "stage", "run_id", "spec_fingerprint"


def distributions(spec: SearchSpec) -> dict[str, BaseDistribution]:
    """Each range as an Optuna distribution (log-uniform where ``log: true``)."""
    out: dict[str, BaseDistribution] = {}
    for key, r in spec.ranges.items():
        out[key] = (
            CategoricalDistribution(r.values) if r.values is not None else FloatDistribution(r.low, r.high, log=r.log)
        )
    return out


def trial_name(trial: FrozenTrial) -> str:
    """The trial's variant name in its stage's ablation (and W&B job type): ``trial-007``."""
    return f"trial-{trial.number:03d}"


def open_study(spec: SearchSpec, folder: Path) -> optuna.Study:
    """Create or load the study in ``folder``; a study started from a different spec is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))
    direction = "maximize" if higher_is_better(spec.stages[0].metric) else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # load first: a refused resume must not write to the journal
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=_sampler(spec, 0))
    except KeyError:
        study = optuna.create_study(
            storage=storage, study_name=spec.name, direction=direction, sampler=_sampler(spec, 0)
        )
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


def _sampler(spec: SearchSpec, offset: int) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: r.grid() for k, r in spec.ranges.items()}, seed=spec.seed)
    # offset: a resumed search that must top up its trials draws a fresh stream instead of repeating the first draws
    return optuna.samplers.RandomSampler(seed=spec.seed + offset)


def stage_trials(study: optuna.Study, stage: Stage) -> list[FrozenTrial]:
    """The trials of ``stage`` already in the study, in creation order."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STAGE_ATTR) == stage.name]


def sample_stage(study: optuna.Study, spec: SearchSpec, stage: Stage) -> list[FrozenTrial]:
    """Make sure the sampling stage has its ``trials`` trials (creating only the missing ones); return them."""
    existing = stage_trials(study, stage)
    missing = stage.trials - len(existing)
    if missing > 0:
        study.sampler = _sampler(spec, len(study.get_trials(deepcopy=False)))
        space = distributions(spec)
        for _ in range(missing):
            study.ask(space).set_user_attr(STAGE_ATTR, stage.name)
    return stage_trials(study, stage)


def promote(study: optuna.Study, spec: SearchSpec, stage: Stage, previous: Stage) -> list[FrozenTrial]:
    """Create the ``top`` stage's trials: the best ``top`` completed trials of ``previous``, same parameters."""
    space = distributions(spec)
    if not stage_trials(study, stage):
        done = [t for t in stage_trials(study, previous) if t.state == TrialState.COMPLETE]
        best = sorted(done, key=lambda t: t.value, reverse=higher_is_better(previous.metric))
        for source in best[: stage.top]:
            study.enqueue_trial(source.params, user_attrs={STAGE_ATTR: stage.name, "from_trial": source.number})
    for trial in stage_trials(study, stage):
        if trial.state == TrialState.WAITING:  # enqueued (maybe by a search that was killed right after)
            study.ask(space)  # takes the enqueued trial with its fixed parameters
    return stage_trials(study, stage)


def record(study: optuna.Study, trial: FrozenTrial, value: float | None, status: str) -> None:
    """Tell the study how a trial's run ended (only once: a finished trial is left as it is)."""
    if trial.state != TrialState.RUNNING:
        return
    if status == "done" and value is not None and math.isfinite(value):
        study.tell(trial.number, value)
    elif status in ("done", "failed"):
        study.tell(trial.number, state=TrialState.FAIL)


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """The trial's overrides: its parameters by dotted config key."""
    return dict(trial.params)
