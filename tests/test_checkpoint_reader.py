"""A checkpoint given to a command is opened once by the toolkit (``CheckpointReader``), whatever it is asked."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from conftest import QUICK, fit

from toolkit.errors import ToolkitError
from toolkit.lightning_cli import run_cli
from toolkit.lightning_cli.checkpoint import CheckpointReader
from toolkit.lightning_cli.tracking import CKPT_RUN_ID


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reader")
    fit(root)
    return root / "checkpoints" / "last.ckpt"


def _toolkit_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every ``torch.load`` the toolkit makes (Lightning's own loads are not counted)."""
    calls: list[str] = []
    real = torch.load

    def counting(path, *args, **kwargs):
        if "/toolkit/" in inspect.stack()[1].filename:  # the toolkit package (checkpoint_data.load_data), not a test
            calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def test_the_reader_answers_every_question_from_one_load(checkpoint: Path, monkeypatch) -> None:
    calls = _toolkit_loads(monkeypatch)
    reader = CheckpointReader(checkpoint)
    reader.check()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)  # the reference, read independently
    assert reader.run_id == saved[CKPT_RUN_ID] and reader.global_step == saved["global_step"]
    assert reader.hparams["num_classes"] == saved["hyper_parameters"]["num_classes"] == 10
    reader.check_classes(10, "the data")
    with pytest.raises(ToolkitError, match="trained on 10 classes but the data has 3"):
        reader.check_classes(3, "the data")
    assert calls == [str(checkpoint)]


def test_toolkit_test_opens_its_checkpoint_once(checkpoint: Path, monkeypatch, tmp_path: Path) -> None:
    calls = _toolkit_loads(monkeypatch)
    run_cli(["test", *QUICK, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(checkpoint)])
    assert calls == [str(checkpoint)]
