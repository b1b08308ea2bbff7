"""2-process DDP on CPU (gloo) for the linear probe and for LP->FT, as real `toolkit fit` subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import QUICK, ROOT, toolkit_cmd

from toolkit.study.result import RunResult

pytestmark = pytest.mark.slow


class RankDump(pl.Callback):
    """Saves each rank's backbone state at the end of fit, so the test can compare replicas."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.save(pl_module.backbone.state_dict(), Path(self.out) / f"rank{trainer.global_rank}.pt")


def _ddp_fit(tmp_path: Path, *extra: str) -> dict[int, dict[str, torch.Tensor]]:
    from toolkit.model.classifier import ImageClassifier

    weights = tmp_path / "init.pth"
    torch.save(ImageClassifier().backbone.state_dict(), weights)
    env_path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path
    result = toolkit_cmd(
        "fit",
        *QUICK,
        "--trainer.default_root_dir",
        str(tmp_path / "run"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--model.pretrained",
        str(weights),
        "--model.freeze_backbone",
        "true",
        "--trainer.callbacks+=test_ddp.RankDump",
        "--trainer.callbacks.out",
        str(tmp_path),
        *extra,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unused parameters" not in result.stderr.lower()
    dumps = {rank: torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}
    dumps[-1] = torch.load(weights, weights_only=True)
    return dumps


def test_ddp_linear_probe_keeps_backbone_frozen(tmp_path: Path) -> None:
    dumps = _ddp_fit(tmp_path)
    for rank in (0, 1):
        assert all(torch.equal(dumps[rank][k], dumps[-1][k]) for k in dumps[-1])
    # the in-run facts: measured inside the run, 2 processes
    facts = RunResult.read(tmp_path / "run" / "result.json").facts
    assert (facts["device"], facts["world_size"], facts["num_nodes"]) == ("cpu", 2, 1)


def test_ddp_lp_to_ft_unfreezes_and_keeps_replicas_in_sync(tmp_path: Path) -> None:
    dumps = _ddp_fit(tmp_path, "--model.unfreeze_at_epoch", "1", "--trainer.max_epochs", "2")
    params = [k for k in dumps[-1] if "running" not in k and "num_batches" not in k]
    assert any(not torch.equal(dumps[0][k], dumps[-1][k]) for k in params), "backbone never fine-tuned"
    # DDP synchronised the backbone's gradients after unfreezing: both replicas hold the same weights
    assert all(torch.allclose(dumps[0][k], dumps[1][k]) for k in params)
