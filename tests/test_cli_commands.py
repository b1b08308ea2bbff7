"""The real `toolkit` command as subprocesses: fit then test a checkpoint, help, and one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import QUICK, ROOT, toolkit_cmd

pytestmark = pytest.mark.slow


def test_fit_then_test_checkpoint_as_subprocesses(tmp_path: Path) -> None:
    """Also what they print (issue 31): a toolkit warning as one line, once, without its source line; no Lightning
    advert; a model summary without the FLOPs it never counts; and with -q only the test's results."""
    # a monitor that warns at any update/parameter ratio (high=1e-9): a toolkit rank_zero_warn in a real fit
    monitor = "toolkit.callbacks.training_health.UpdateRatioMonitor"
    warns = [f"--trainer.callbacks+={monitor}", "--trainer.callbacks.every_n_steps=1", "--trainer.callbacks.high=1e-9"]
    summary = ["--trainer.enable_model_summary", "true"]
    fit = toolkit_cmd("fit", *QUICK, *summary, *warns, "--trainer.default_root_dir", str(tmp_path))
    assert fit.returncode == 0, fit.stderr[-2000:]
    warned = [line for line in fit.stderr.splitlines() if "update/parameter ratio of param group 'head'" in line]
    assert len(warned) == 1 and "rank_zero_warn(" not in fit.stderr, fit.stderr
    assert "litlogger" not in fit.stdout + fit.stderr and "Tip:" not in fit.stderr
    assert "┃ Name" in fit.stdout and "FLOPs" not in fit.stdout, fit.stdout  # the summary, less its always-0 column
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    # one data line, early: the split sizes add up to scikit-learn's digits (the reference), 15 % held out twice
    from sklearn.datasets import load_digits

    (line,) = [line for line in fit.stdout.splitlines() if line.startswith("data: ")]
    sizes = [int(n) for n in re.findall(r"(?:train|val|test) (\d+) ", line.split(" (")[0] + " ")]
    assert line.startswith("data: digits, 10 classes, train ") and sum(sizes) == len(load_digits().target), line
    assert "val 15% + test 15% held out, split seed 0" in line and "warning: the test split" not in fit.stderr
    test = toolkit_cmd(
        "test", "-q", *QUICK, "--trainer.default_root_dir", str(tmp_path / "test"), "--ckpt_path", str(ckpt)
    )
    assert test.returncode == 0, test.stderr[-2000:]
    assert "test/acc" in test.stdout and "test/f1" in test.stdout
    assert test.stderr == "" and "threads:" not in test.stdout, test.stderr  # -q: errors and results only


def test_help_lists_model_and_data_arguments_with_types_and_defaults() -> None:
    result = toolkit_cmd("fit", "--help", "full")  # plain --help is the grouped one-screen summary
    assert result.returncode == 0
    for text in ("--model.backbone", "--model.freeze_backbone", "--data.source", "--data.augment", "--test_after_fit"):
        assert text in result.stdout
    assert "default: test_resnet" in result.stdout


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = toolkit_cmd("fit", "--config", str(ROOT / "configs" / "digits.yaml"), "--model.backbone", "resnet18x")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: unknown backbone 'resnet18x'; did you mean resnet18, resnet18d, skresnet18?"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_sigterm_stops_fit_with_a_non_zero_status(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("toolkit")
    args = [*QUICK, "--trainer.max_epochs", "500", "--trainer.default_root_dir", str(tmp_path)]
    proc = subprocess.Popen([str(exe), "fit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
