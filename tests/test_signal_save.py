"""Save on the signal: SIGTERM mid-epoch writes last.ckpt after the batch, and the resumed fit equals a fit never
stopped (weights and metrics bit for bit), with augmentation, dropout and a shuffled loader in play."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit

from toolkit.ablation.ckpt_epochs import epochs_done

# 2 epochs of 5 batches, basic augmentation (random crops and flips, drawn in this process), dropout, shuffling
RUN = ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "5", "--trainer.logger", "false"]
RUN += ["--seed_everything", "3", "--data.augment", "basic", "--data.batch_size", "16"]


class _SignalAt(pl.Callback):
    """Sends this process SIGTERM at the end of one batch, as Slurm (through submitit) would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if (trainer.current_epoch, args[-1]) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


def _state(cli) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return metrics, {k: v.clone() for k, v in cli.model.state_dict().items()}


def _stopped(root: Path, epoch: int, batch: int, *extra: str) -> None:
    import toolkit.lightning_cli.program as program

    original = program.ToolkitCLI.instantiate_trainer

    def with_signal(self, **kwargs):  # the test's signal source beside the toolkit's callbacks
        trainer = original(self, **kwargs)
        trainer.callbacks.insert(0, _SignalAt(epoch, batch))
        return trainer

    program.ToolkitCLI.instantiate_trainer = with_signal
    try:
        with pytest.raises(SystemExit) as stopped:
            fit(root, *RUN, *extra)
    finally:
        program.ToolkitCLI.instantiate_trainer = original
    assert stopped.value.code == 128 + signal.SIGTERM  # a stopped run is no success


def test_a_run_stopped_mid_epoch_by_sigterm_resumes_from_that_batch_and_equals_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    whole_metrics, whole_weights = _state(fit(tmp_path / "whole", *RUN))

    _stopped(tmp_path / "stopped", 1, 1)  # after batch 2 of epoch 1 (batch_idx 1)
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (1, 7)  # 5 batches of epoch 0, 2 of epoch 1
    assert epochs_done(last) == 1  # epoch 1 has not finished
    resumed_metrics, resumed_weights = _state(fit(tmp_path / "stopped", *RUN, "--ckpt_path", "last"))

    assert "val/acc" in whole_metrics and resumed_metrics == whole_metrics
    unequal = [k for k in whole_weights if not torch.equal(whole_weights[k], resumed_weights[k])]
    assert unequal == []


def test_with_loader_workers_no_mid_epoch_checkpoint_is_written(tmp_path: Path) -> None:
    """The guard: workers take their indices when the loader's iterator is made, before a resumed fit could skip
    them, so a mid-epoch checkpoint would resume into another order; the signal then stops the run as Lightning
    does (at the end of the epoch), and no checkpoint of a partial epoch exists to resume from."""
    _stopped(tmp_path / "stopped", 0, 1, "--data.num_workers", "1")
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    if last.exists():  # the epoch's own end-of-epoch checkpoint, if Lightning got that far
        saved = torch.load(last, map_location="cpu", weights_only=False)
        assert saved["global_step"] % 5 == 0
