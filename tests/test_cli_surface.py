"""What a user sees around a run: one-line errors that name the culprit, per-epoch log lines, the end-of-fit
summary, no third-party noise, the run-home rule, and the status table after a runner was SIGKILLed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DIGITS, fit
from rich.console import Console

import toolkit.cli
from toolkit.ablation.progress import build_table
from toolkit.cli import main
from toolkit.study.epoch_line import format_epoch_line, last_epoch_line, parse_epoch_line
from toolkit.study.ledger import RUNNING, Ledger, ledger_path
from toolkit.study.spec import load_spec


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    # a logging handler left bound to an earlier test's closed capture stream reports itself; not the CLI's output
    err = re.sub(r"--- Logging error ---.*?\nArguments: .*?\n", "", capsys.readouterr().err, flags=re.S)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_yaml_syntax_error_names_the_stacked_file_and_line(capsys, tmp_path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  backbone: test_resnet\n  drop_rate: [0.1\n")
    line = _error(capsys, "fit", "--config", DIGITS, "--config", str(bad))
    assert str(bad) in line and "line 4" in line and "<unicode string>" not in line


def test_missing_config_file_is_named(capsys, tmp_path) -> None:
    line = _error(capsys, "fit", "--config", str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in line and "no such file" in line


def test_unquoted_off_gets_a_hint_and_the_real_subcommand(capsys, tmp_path) -> None:
    delta = tmp_path / "off.yaml"
    delta.write_text("model:\n  batchnorm: off\n")
    line = _error(capsys, "fit", "--config", DIGITS, "--config", str(delta))
    assert 'batchnorm: "off"' in line and line.endswith("(see toolkit fit --help)")


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluating_without_a_checkpoint_is_refused(capsys, subcommand) -> None:
    line = _error(capsys, subcommand, "--config", DIGITS)
    assert "--ckpt_path" in line and f"toolkit {subcommand}" in line


def test_ensemble_ckpts_outside_test_is_refused(capsys, tmp_path) -> None:
    line = _error(
        capsys, "fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), "--ensemble_ckpts", "a"
    )
    assert "--ensemble_ckpts" in line and "toolkit fit" in line


def test_fit_into_a_folder_with_another_run_is_refused_and_changes_nothing(capsys, tmp_path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.ckpt").write_bytes(b"an earlier run's checkpoint")
    (tmp_path / "result.json").write_text('{"status": "done"}')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    line = _error(capsys, "fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path))
    assert str(tmp_path) in line and "--ckpt_path last" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_fit_help_fits_a_screen_and_help_full_has_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--help"])
    short = capsys.readouterr().out
    assert done.value.code == 0 and len(short.splitlines()) <= 40  # tests/test_help.py: every subcommand's
    assert "model:" in short and "--model.backbone" in short and "--data.augment" in short
    assert "toolkit fit --help full" in short and "(type:" not in short
    with pytest.raises(SystemExit):
        main(["fit", "--help", "full"])
    full = capsys.readouterr().out
    assert len(full.splitlines()) > 500 and "--model.backbone BACKBONE" in full


def test_top_level_help_lists_every_subcommand(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "ablate", "report"):
        assert f"  {name} " in out


def test_an_unexpected_exception_is_one_line_pointing_to_the_traceback(capsys, monkeypatch) -> None:
    def crash(args: list[str], argv: list[str] | None) -> None:
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.delenv("TOOLKIT_TRACEBACK", raising=False)
    monkeypatch.setattr(toolkit.cli, "_dispatch", crash)
    with pytest.raises(SystemExit) as exit_:
        main(["fit"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unexpected RuntimeError: something nobody foresaw")
    log = Path(err[0].rsplit("full traceback: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "second line" in log.read_text()


def test_epoch_line_round_trip() -> None:
    line = format_epoch_line(3, 12, {"val/acc": 0.91234, "train/loss": float("nan")}, 4.25)
    assert line == "epoch 3/11: train/loss nan, val/acc 0.9123 (4.2 s)"  # epochs 0..11, as Lightning's progress bar
    epoch, metrics = parse_epoch_line(line)
    assert epoch == 3 and metrics["val/acc"] == pytest.approx(0.9123)


def test_fit_prints_epoch_lines_and_where_its_outputs_are_without_noise(capfd, tmp_path) -> None:
    fit(
        tmp_path,
        *("--trainer.max_epochs", "2", "--model.freeze_backbone", "true", "--trainer.log_every_n_steps", "1"),
        *("--test_after_fit", "true"),
    )
    out, err = capfd.readouterr()
    lines = [parse_epoch_line(line) for line in out.splitlines() if parse_epoch_line(line)]
    # one numbering, from 0, everywhere (issue 19): the epoch lines, W&B's epoch, the checkpoint's name and its
    # stored epoch, and tested_epoch in result.json
    assert [epoch for epoch, _ in lines] == [0, 1]
    assert re.search(r"^epoch 1/1: ", out, re.MULTILINE)  # the last of epochs 0..1, as Lightning's progress bar
    assert {"train/loss", "val/acc", "val/f1"} <= set(lines[-1][1])
    # train/loss is the epoch's mean, like train/acc beside it: the mean of the steps logged to W&B (3 equal batches)
    from toolkit.report.wandb_log import read_run

    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history = read_run(log).history
    assert [row["epoch"] for row in history if "val/acc" in row] == [0, 1]
    (best,) = (tmp_path / "checkpoints").glob("best-epoch*.ckpt")
    stored = torch.load(best, map_location="cpu", weights_only=False)["epoch"]
    assert best.name.startswith(f"best-epoch{stored:03d}") and stored in (0, 1)
    assert json.loads((tmp_path / "result.json").read_text())["tested_epoch"] == stored
    steps = [row["train/loss"] for row in history if "train/loss" in row]
    assert len(steps) == 6  # 2 epochs x 3 batches, each logged
    for (_, metrics), epoch_steps in zip(lines, (steps[:3], steps[3:]), strict=True):
        assert metrics["train/loss"] == pytest.approx(sum(epoch_steps) / 3, abs=1e-4)  # the line shows 4 decimals
    assert f"result: {tmp_path / 'result.json'}" in out and "best checkpoint: " in out and "W&B run: " in out
    for noise in ("litlogger", "anonymous setting", "in eval mode at the start of training", "LeafSpec"):
        assert noise not in out + err


@pytest.mark.slow
def test_status_after_the_runner_was_sigkilled_shows_interrupted_and_the_latest_val_acc(tmp_path) -> None:
    spec_path = tmp_path / "killed.yaml"
    overrides = {"trainer.max_epochs": 50, "trainer.limit_val_batches": 1, "trainer.enable_progress_bar": False}
    spec = {"name": "killed", "base": [DIGITS], "overrides": overrides, "seeds": [0], "variants": {"full": {}}}
    spec_path.write_text(json.dumps(spec))
    exe = str(Path(sys.executable).with_name("toolkit"))
    env = {**os.environ, "WANDB_MODE": "offline"}
    runner = subprocess.Popen([exe, "ablate", "run", str(spec_path), "--root", str(tmp_path / "runs")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = tmp_path / "runs" / "killed" / "full" / "seed0" / "run.log"
    deadline = time.monotonic() + 300
    while last_epoch_line(log) is None:  # wait for the first finished epoch
        assert runner.poll() is None and time.monotonic() < deadline, "the run never finished an epoch"
        time.sleep(0.5)
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    record = next(iter(Ledger(ledger_path(tmp_path / "runs", "killed")).read().values()))
    assert record["status"] == RUNNING  # the ledger could not be told
    for _ in range(100):  # the kernel kills the run with its runner (PR_SET_PDEATHSIG); give it a moment
        try:
            os.kill(record["pid"], 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(
        build_table(
            load_spec(spec_path), Ledger(ledger_path(tmp_path / "runs", "killed")).read(), tmp_path / "runs", width=80
        )
    )
    text = console.export_text()
    assert "interrupted" in text and f"{last_epoch_line(log)[1]['val/acc']:.3f}" in text
    assert max(len(line) for line in text.splitlines()) <= 80
