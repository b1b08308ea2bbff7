"""``toolkit search``: spec validation, resume safety, and a real TPE search killed mid-way and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import DIGITS, ROOT

from toolkit.errors import ToolkitError
from toolkit.search.spec import load_search
from toolkit.study.ledger import Ledger

LR = "model.optimizer.init_args.lr"
WD = "model.optimizer.init_args.weight_decay"
#: a tiny trial: 1 epoch of 10 batches at 16 px (enough to learn above chance: an unhealthy trial scores nothing)
TINY = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 10,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "data.image_size": 16,
    "model.lr_scheduler": None,
}


def _spec(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "s",
        "base": [DIGITS],
        "overrides": TINY,
        # lr above ~0.014 can collapse to one class in 10 steps at 16 px (a degenerate, uncounted trial)
        "ranges": {LR: {"low": 3e-3, "high": 1e-2, "log": True}, WD: {"low": 1e-6, "high": 1e-3, "log": True}},
        "stages": [{"name": "coarse", "trials": 8}],
    }
    raw.update(changes)
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ranges": {LR: {"low": 0.1, "high": 0.01}}}, "low 0.1 must be below high 0.01"),
        ({"ranges": {LR: {"low": 0.0, "high": 0.1, "log": True}}}, "log: true needs low > 0"),
        ({"ranges": {LR: {"low": -1, "high": 0.1, "log": True}}}, "log: true needs low > 0"),
        ({"stages": [{"name": "c", "trials": 2, "metric": "val/accuracy"}]}, "'val/accuracy' is not a metric the runs"),
        ({"metric": "test/acc"}, "use one of val/acc, val/f1, val/loss"),
        ({"stages": [{"name": "c", "top": 2}]}, "the first stage samples"),
        ({"ranges": {LR: {"low": 1e-3, "hi": 1}}}, "unknown key 'hi'"),
        ({"sampler": "grid"}, "a grid search needs 'n' grid points"),
    ],
)
def test_bad_specs_fail_with_one_line(tmp_path, changes, message):
    with pytest.raises(ToolkitError, match=message) as err:
        load_search(_spec(tmp_path, **changes))
    assert "\n" not in str(err.value)


def test_unknown_range_key_fails_in_the_cli_parser_before_anything_starts(tmp_path):
    from toolkit.ablation.runner import Options
    from toolkit.search.cli import stage_runner
    from toolkit.search.run import run_search

    spec = load_search(_spec(tmp_path, ranges={"model.optimizer.init_args.lrr": {"low": 1e-3, "high": 1e-1}}))
    with pytest.raises(ToolkitError, match="lrr"):
        run_search(spec, tmp_path / "runs", stage_runner(Options(root=tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()


def test_a_search_resumed_with_a_changed_spec_is_refused_and_loses_nothing(tmp_path):
    from toolkit.search import optuna_study as study

    folder = tmp_path / "runs" / "s"
    first = load_search(_spec(tmp_path))
    stage = first.stages[0]
    opened = study.open_study(first, folder, stage)
    assert len(study.sample_stage(opened, first, stage)) == stage.batch == 4  # TPE asks one batch at a time
    journal = (folder / study.STUDY_FILE).read_bytes()
    again = study.sample_stage(study.open_study(first, folder, stage), first, stage)
    assert [t.params for t in again] == [t.params for t in opened.trials]  # found again, not sampled anew
    assert (folder / study.STUDY_FILE).read_bytes() == journal  # no batch asked while the first is unfinished
    changed = load_search(_spec(tmp_path, ranges={LR: {"low": 1e-4, "high": 1e-1, "log": True}}))
    with pytest.raises(ToolkitError, match="was started from a different spec"):
        study.open_study(changed, folder, changed.stages[0])
    assert (folder / study.STUDY_FILE).read_bytes() == journal


def test_tpe_batches_learn_from_the_batches_before_and_stages_keep_their_own_study(tmp_path):
    """Batch 2 is asked only once batch 1 is told; int and log-int ranges draw whole numbers; a `top` stage's study
    holds only its retrained trials (its best is not compared with the cheaper stage's scores)."""
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState

    from toolkit.search import optuna_study as study

    ranges = {
        LR: {"low": 1e-4, "high": 1e-1, "log": True},
        "data.batch_size": {"low": 8, "high": 128, "log": True, "int": True},
        "model.unfreeze_at_epoch": {"low": 1, "high": 4, "int": True},
    }
    stages = [{"name": "coarse", "trials": 6, "batch": 3}, {"name": "fine", "top": 2}]
    spec = load_search(_spec(tmp_path, ranges=ranges, stages=stages))
    assert spec.sampler == "tpe" and study.distributions(spec)["data.batch_size"] == IntDistribution(8, 128, log=True)
    folder = tmp_path / "runs" / "s"
    coarse, fine = spec.stages
    opened = study.open_study(spec, folder, coarse)
    first = study.sample_stage(opened, spec, coarse)
    assert len(first) == 3
    for trial in first:
        assert isinstance(trial.params["data.batch_size"], int) and 8 <= trial.params["data.batch_size"] <= 128
        assert trial.params["model.unfreeze_at_epoch"] in (1, 2, 3, 4)
        study.record(opened, trial, trial.params[LR], "done")  # a score that TPE can learn: higher lr is better
    second = study.sample_stage(opened, spec, coarse)
    assert len(second) == 6 and [t.params for t in second[:3]] == [t.params for t in first]
    # the same history and seed draw the same batch (what a killed and resumed search relies on)
    other = study.open_study(spec, tmp_path / "other", coarse)
    for trial in study.sample_stage(other, spec, coarse):
        study.record(other, trial, trial.params[LR], "done")
    assert [t.params for t in study.sample_stage(other, spec, coarse)] == [t.params for t in second]
    for trial in second[3:]:
        study.record(opened, trial, trial.params[LR], "done")
    promoted = study.promote(study.open_study(spec, folder, fine), opened, spec, fine)
    ranked = sorted(second, key=lambda t: t.params[LR], reverse=True)
    assert [t.params for t in promoted] == [t.params for t in ranked[:2]]
    assert all(t.state == TrialState.RUNNING for t in promoted)
    assert study.study_name(spec, fine) == "s.fine" and len(study.stage_trials(opened)) == 6


def test_grid_points_are_log_spaced():
    from toolkit.search.spec import Range

    assert Range(1e-4, 1e-2, log=True, n=3).grid() == [1e-4, 1e-3, 1e-2]
    assert Range(0.0, 1.0, n=3).grid() == [0.0, 0.5, 1.0]


def test_best_config_names_its_own_run_folder_and_parses_as_a_fit(tmp_path, monkeypatch):
    from toolkit.lightning_cli import parse_config
    from toolkit.search.output import best_config

    spec = load_search(ROOT / "searches" / "digits.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)  # the base config's run folder holds a run already
    (tmp_path / "runs" / "digits" / "result.json").write_text("{}")
    best = tmp_path / "best.yaml"
    best.write_text(yaml.safe_dump(best_config(spec, {}, {}, tmp_path / "search" / "best")))
    config = parse_config(["fit", "--config", str(best)])
    assert config.fit.trainer.default_root_dir == str(tmp_path / "search" / "best")


def _toolkit(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("toolkit")), *args]


@pytest.mark.slow
def test_tpe_search_killed_and_resumed_runs_no_trial_twice_and_its_best_config_reproduces(tmp_path):
    spec = _spec(tmp_path)
    root = tmp_path / "runs"
    folder = root / "s"
    ledger = folder / "s.coarse" / "ledger.json"
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = _toolkit("search", str(spec), "--root", str(root), "--workers", "2")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 400
    done_before: set[str] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.is_file():  # the snapshot plus its journal: read through Ledger, as the runner writes it
            runs = Ledger(ledger).read()
            done_before = {k for k, r in runs.items() if r.get("status") == "done"}
            if len(done_before) >= 2:
                break
        time.sleep(0.5)
    assert proc.poll() is None, "the search ended before it could be killed; the test is too slow or too fast"
    proc.send_signal(signal.SIGKILL)  # mid-way: some trials done, others running
    proc.wait()
    from toolkit.search import optuna_study as studies

    searched = load_search(spec)
    stage = searched.stages[0]
    params_before = [t.params for t in studies.open_study(searched, folder, stage).trials]
    assert len(params_before) in (4, 8)  # TPE asks 4 at a time: the kill came in the first or the second batch

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    runs = Ledger(ledger).read()
    assert len(runs) == 8 and all(r["status"] == "done" for r in runs.values())
    assert all(runs[k]["attempts"] == 1 for k in done_before)  # no finished trial ran twice
    trials = studies.open_study(searched, folder, stage).trials
    assert len(trials) == 8 and [t.params for t in trials[: len(params_before)]] == params_before  # none sampled again
    assert all(t.state.name == "COMPLETE" for t in trials)

    with open(folder / "table.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 8
    scores = [float(r["metric_value"]) for r in table]
    assert scores == sorted(scores, reverse=True)
    assert sorted(p.name for p in folder.glob("scatter_*.png")) == sorted([f"scatter_{LR}.png", f"scatter_{WD}.png"])
    best = table[0]
    # the best config trains with `toolkit fit` to the reported score (same threads as a trial: one per worker)
    out = folder / "best"  # best.yaml names its own run folder: the command it suggests works as printed
    refit = subprocess.run(
        _toolkit("fit", "--config", str(folder / "best.yaml")),
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert refit.returncode == 0, refit.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["test/acc"] == pytest.approx(float(best["test/acc"]), abs=1e-6)
    assert result["metrics"]["test/f1"] == pytest.approx(float(best["test/f1"]), abs=1e-6)


@pytest.mark.parametrize("path", sorted((ROOT / "searches").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_search_specs_load(path):
    spec = load_search(path)
    assert spec.stages and spec.ranges
