"""Pruning search trials: a real fit reports val/acc to its Optuna trial each epoch and stops early only when it is
below the median of the finished trials of earlier batches, which makes the decision deterministic per trial."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import DIGITS, fit
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.report.wandb_log import read_run
from toolkit.search import optuna_study as studies
from toolkit.search.spec import load_search

LR = "model.optimizer.init_args.lr"


def _study_with_earlier_trials(journal: Path, level: float) -> int:
    """A study holding 3 finished trials whose val/acc was ``level`` at every epoch, and one running trial."""
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(storage=storage, study_name="s.coarse", direction="maximize")
    space = {LR: FloatDistribution(1e-4, 1e-1, log=True)}
    for i in range(3):
        values = {epoch: level for epoch in range(4)}
        study.add_trial(create_trial(value=level, params={LR: 1e-3 * (i + 1)}, distributions=space,
                                     intermediate_values=values))  # fmt: skip
    return study.ask(space).number


@pytest.mark.parametrize(("level", "pruned"), [(0.99, True), (0.0, False)])
def test_a_trial_below_the_earlier_median_stops_and_says_so(tmp_path: Path, level: float, pruned: bool) -> None:
    journal = tmp_path / "study.journal"
    number = _study_with_earlier_trials(journal, level)
    info = {"journal": str(journal), "study": "s.coarse", "trial": number, "monitor": keys.VAL_ACC,
            "against": [0, 1, 2], "warmup_epochs": 1, "min_trials": 2}  # fmt: skip
    root = tmp_path / "run"
    cli = fit(root, "--trainer.max_epochs", "4", "--search_trial", json.dumps(info))
    epochs = cli.trainer.current_epoch
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study_id = storage.get_study_id_from_name("s.coarse")
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))
    (log,) = root.glob("wandb/offline-run-*/run-*.wandb")
    summary = read_run(log).summary
    if pruned:  # no pruning in the warm-up epoch 0; at epoch 1 its accuracy is far below 0.99: stopped there
        assert sorted(trial.intermediate_values) == [0, 1] and epochs == 2
        assert summary[keys.PRUNED_AT] == 1  # after epoch 1, counted from 0 as everywhere
    else:  # above a median of 0: trains every epoch, each reported to the study
        assert sorted(trial.intermediate_values) == [0, 1, 2, 3] and epochs == 4
        assert keys.PRUNED_AT not in summary
    assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
    assert json.loads((root / "result.json").read_text())["status"] == "done"  # tested and recorded like any run


def test_trials_are_pruned_only_against_earlier_batches(tmp_path: Path) -> None:
    raw = {"name": "s", "base": [DIGITS], "ranges": {LR: {"low": 1e-4, "high": 1e-1, "log": True}},
           "stages": [{"name": "coarse", "trials": 6, "batch": 2}], "pruning": True}  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_search(path)
    assert spec.pruning == {"warmup_epochs": 1, "min_trials": 2}
    stage = spec.stages[0]
    opened = studies.open_study(spec, tmp_path / "runs", stage)
    first = studies.sample_stage(opened, spec, stage)
    studies.record(opened, first[0], 0.5, "done")
    studies.record(opened, first[1], 0.4, "done", pruned=True)
    trials = studies.sample_stage(opened, spec, stage)
    states = [t.state for t in studies.stage_trials(opened)]
    assert states[:2] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert studies.pruning_against(trials, trials[0], stage.batch) == []  # batch 0: nothing before it
    assert studies.pruning_against(trials, trials[3], stage.batch) == [0]  # the finished (not pruned) trial of batch 0
    path.write_text(yaml.safe_dump({**raw, "pruning": {"warmup_epochs": -1}}))
    with pytest.raises(ToolkitError, match="'warmup_epochs' is a whole number"):
        load_search(path)
