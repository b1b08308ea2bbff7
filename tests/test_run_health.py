"""Run health end to end: the divergence guard, a run stopped by SIGTERM, and the report's classes for every kind.

An ablation folder ``health`` gets: ``full`` seed 0 a real ``toolkit fit`` stopped by SIGTERM after its first
epoch, ``full`` seed 1 a healthy finished run, ``hot`` seed 0 a real fit with lr 1e4 that the divergence guard
stops (seed 1: the same with the guard off), ``flat`` seed 0 a run that predicts one class and seed 1 one whose
loss never moved (written with wandb from the records such runs leave), and ``broken`` seed 0 a run the ledger
says failed before W&B started.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import QUICK, ROOT, fit
from report_fixtures import write_run

from toolkit.cli import main as toolkit_main
from toolkit.report.build import ReportResult, build_report
from toolkit.study.ledger import Ledger, ledger_path

NAME = "health"
VARIANTS = ["full", "hot", "flat", "broken"]
CURVE = {"train_acc": [0.5, 0.8], "val_acc": [0.5, 0.8]}
BROKEN_REASON = "unknown backbone 'resnet18x'; did you mean resnet18, resnet18d?"


def ablation_args(variant: str, seed: int) -> list[str]:
    return ["--ablation.name", NAME, "--ablation.variant", variant, "--ablation.seed", str(seed)]


def fit_until_sigterm(run_dir: Path) -> int:
    """A real ``toolkit fit`` of 40 epochs, sent SIGTERM once its first epoch's last.ckpt exists; its exit code."""
    exe = Path(sys.executable).with_name("toolkit")
    argv = [str(exe), "fit", *QUICK, "--trainer.max_epochs", "40", "--trainer.default_root_dir", str(run_dir)]
    proc = subprocess.Popen([*argv, *ablation_args("full", 0)], cwd=ROOT, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.ckpt").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert not (run_dir / "result.json").exists(), err  # stopped: no completion record
    return proc.returncode


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("health")
    base = root / NAME
    info: dict = {"root": root, "sigterm_code": fit_until_sigterm(base / "full" / "seed0")}
    losses = [[1.0, 0.9], [0.5, 0.4]]
    write_run(base / "full" / "seed1", NAME, "full", 1, train_loss=losses, test={"test/acc": 0.9}, **CURVE)
    one_class = {"status": "finished", "train_loss_initial": 2.3, "train_loss_final": 1.0, "test_pred_classes": 1}
    write_run(base / "flat" / "seed0", NAME, "flat", 0, train_loss=losses, test={"test/acc": 0.2}, health=one_class,
              **CURVE)  # fmt: skip
    stuck = {"status": "finished", "train_loss_initial": 2.3026, "train_loss_final": 2.3020, "chance": 0.1,
             "val_best": 0.125, "val_n": 120, "val_chance": 0.1}  # fmt: skip
    write_run(base / "flat" / "seed1", NAME, "flat", 1, train_loss=losses, test={"test/acc": 0.4}, health=stuck,
              **CURVE)  # fmt: skip
    Ledger(ledger_path(root, NAME)).update(
        "broken-0", variant="broken", seed=0, status="failed", exit_code=2, reason=BROKEN_REASON,
        log=str(base / "broken" / "seed0" / "run.log"), started_at=1.0,
    )  # fmt: skip
    # the diverging run, in this process through the console entry point (error line + exit 2)
    hot = base / "hot" / "seed0"
    argv = ["fit", *QUICK, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(hot)]
    with pytest.raises(SystemExit) as exit_:
        toolkit_main([*argv, "--model.optimizer.init_args.lr", "1e4", *ablation_args("hot", 0)])
    info["hot"], info["hot_code"] = hot, exit_.value.code
    # the same with the guard off: the fit runs to its end on NaN losses, and the health record says so
    unguarded = base / "hot" / "seed1"
    fit(unguarded, "--trainer.max_epochs", "2", "--model.optimizer.init_args.lr", "1e4",
        "--divergence_guard.enabled", "false", *ablation_args("hot", 1))  # fmt: skip
    info["unguarded"] = unguarded
    return info


@pytest.fixture(scope="module")
def report(study: dict, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    out = tmp_path_factory.mktemp("report")
    return build_report(NAME, "full", ["test/acc"], root=study["root"], out=out, variants=VARIANTS, seeds=[0, 1])


def test_the_guard_stops_at_the_first_nan_and_keeps_the_last_good_checkpoint(study: dict, capfd) -> None:
    assert study["hot_code"] == 2
    result = json.loads((study["hot"] / "result.json").read_text())
    assert result["status"] == "diverged" and result["health"]["status"] == "diverged"
    reason = result["health"]["reason"]
    # quick runs have 3 batches an epoch: epoch 0 ends with finite weights, step 4 (in epoch 1) gives a NaN loss
    assert reason.startswith("training diverged at step 4 (epoch 1): train loss nan at lr ")
    assert "learning rate is too high or the initialisation is bad" in reason and "last.ckpt" in reason
    assert result["health"]["epochs_completed"] == 1
    last = torch.load(study["hot"] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 3  # nothing was saved after the NaN
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_the_guard_can_be_turned_off_and_the_run_still_counts_as_diverged(study: dict, report: ReportResult) -> None:
    result = json.loads((study["unguarded"] / "result.json").read_text())
    assert result["status"] == "done" and result["health"]["epochs_completed"] == 2
    assert result["health"]["nonfinite_steps"] > 0
    row = report.runs.set_index(["variant", "seed"]).loc[("hot", 1)]
    assert row["health"] == "diverged" and "divergence guard off" in row["reason"] and not row["counted"]


def test_sigterm_exits_143_and_the_run_is_interrupted_not_averaged(study: dict, report: ReportResult) -> None:
    assert study["sigterm_code"] == 128 + signal.SIGTERM
    runs = report.runs.set_index(["variant", "seed"])
    row = runs.loc[("full", 0)]
    # W&B closes the run as finished on SIGTERM; the missing completion record is what says it was stopped
    assert row["state"] == "finished" and row["health"] == "interrupted" and not row["counted"]
    assert "no completion record" in row["reason"] and "max_epochs 40" in row["reason"]
    table = report.table.set_index("variant")
    assert table.loc["full", "n"] == 1 and table.loc["full", "mean"] == pytest.approx(0.9)  # seed 1 only
    assert "seed 0: interrupted: no completion record" in table.loc["full", "note"]


def test_every_unhealthy_run_is_listed_with_its_class_and_reason(report: ReportResult) -> None:
    runs = pd.read_csv(report.out / "runs.csv").set_index(["variant", "seed"])
    assert runs.loc[("full", 1), "health"] == "finished" and runs["counted"].sum() == 1
    assert runs.loc[("hot", 0), "health"] == "diverged"
    assert runs.loc[("hot", 0), "reason"].startswith("training diverged at step 4")
    assert runs.loc[("flat", 0), "health"] == "degenerate" and "one class" in runs.loc[("flat", 0), "reason"]
    assert runs.loc[("flat", 1), "health"] == "not learning" and "15/120" in runs.loc[("flat", 1), "reason"]
    assert runs.loc[("broken", 0), "health"] == "failed" and runs.loc[("broken", 0), "reason"] == BROKEN_REASON
    table = report.table.set_index("variant")
    assert (table["excluded"] > 0).all()  # every variant lost a seed to its health
    assert f"seed 0: failed: {BROKEN_REASON}" in table.loc["broken", "note"]  # the reason, never "no run"
    assert table.loc["hot", "n"] == 0 and math.isnan(table.loc["hot", "mean"])
    md = report.markdown
    assert "| full ⚠" in md and "| hot ⚠" in md and "| broken ⚠" in md
    section = md[md.index("### Runs not counted") :]
    for text in ("hot seed 0 run", "diverged: training diverged", "flat seed 0 run", "degenerate: predicts one class",
                 "not learning", f"failed: {BROKEN_REASON}", "full seed 0 run", "interrupted"):  # fmt: skip
        assert text in section, text
