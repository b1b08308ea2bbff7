"""A result depends on the spec and the seed, not on interruptions: resume equals the uninterrupted run (issue 9 §4)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
from conftest import fit
from lightning.pytorch.callbacks import ModelCheckpoint

from toolkit.data.datamodule import ImageDataModule
from toolkit.model.classifier import ImageClassifier

# stop cleanly after the first validation, as a kill after epoch 1 would leave it: last.ckpt of epoch 0 on disk
STOP_AFTER_FIRST_EPOCH = json.dumps(
    [
        {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {"monitor": "val/loss", "mode": "min", "divergence_threshold": -1.0},
        }
    ]
)
# two epochs with dropout, augmentation and a shuffled loader: every random generator is in play
TWO_EPOCHS = ["--trainer.max_epochs", "2", "--trainer.logger", "false", "--seed_everything", "3"]


def _state(cli) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return metrics, {k: v.clone() for k, v in cli.model.state_dict().items()}


def test_a_run_stopped_after_epoch_1_and_resumed_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    whole_metrics, whole_weights = _state(fit(tmp_path / "whole", *TWO_EPOCHS))

    stopped = fit(tmp_path / "stopped", *TWO_EPOCHS, "--trainer.callbacks", STOP_AFTER_FIRST_EPOCH)
    assert stopped.trainer.current_epoch == 1 and stopped.trainer.global_step == 3  # one epoch of 3 batches
    assert not torch.equal(stopped.model.head[-1].weight, whole_weights["head.1.weight"])
    resumed_metrics, resumed_weights = _state(fit(tmp_path / "stopped", *TWO_EPOCHS, "--ckpt_path", "last"))

    assert resumed_metrics.keys() == whole_metrics.keys() and "val/acc" in whole_metrics
    assert resumed_metrics == whole_metrics
    assert resumed_weights.keys() == whole_weights.keys()
    unequal = [k for k in whole_weights if not torch.equal(whole_weights[k], resumed_weights[k])]
    assert unequal == []


def test_lp_ft_resumed_mid_epoch_keeps_the_backbone_training(tmp_path: Path) -> None:
    """Lightning skips on_train_epoch_start on a mid-epoch restart; the backbone must be released all the same."""

    def trainer(*callbacks: pl.Callback) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=2,
            limit_train_batches=3,
            limit_val_batches=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=list(callbacks),
            default_root_dir=tmp_path,
        )

    def system() -> tuple[ImageClassifier, ImageDataModule]:
        model = ImageClassifier("test_resnet", freeze_backbone=True, unfreeze_at_epoch=1, lr_scheduler=None)
        return model, ImageDataModule(source="digits", image_size=32, batch_size=32, augment="none")

    # a checkpoint at global step 4: epoch 1 (the first fine-tuning epoch), after its first batch
    every_step = ModelCheckpoint(dirpath=tmp_path / "ckpts", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    model, data = system()
    trainer(every_step).fit(model, datamodule=data)
    mid_epoch = tmp_path / "ckpts" / "step=4.ckpt"
    saved = torch.load(mid_epoch, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 1

    model, data = system()
    assert model.freezer.frozen
    trainer().fit(model, datamodule=data, ckpt_path=mid_epoch)
    assert not model.freezer.frozen and all(p.requires_grad for p in model.backbone.parameters())
    moved = [
        k for k, v in model.backbone.state_dict().items() if not torch.equal(v, saved["state_dict"][f"backbone.{k}"])
    ]
    assert any(k.endswith("conv1.weight") for k in moved)  # the remaining steps of epoch 1 trained the backbone


def test_a_snapshot_ensemble_never_averages_snapshots_left_by_an_earlier_run(tmp_path: Path) -> None:
    snapshots = ["--trainer.callbacks+=toolkit.SnapshotEnsemble", "--trainer.callbacks.cycles", "2"]
    # an earlier run in the same folder leaves snapshot-0.pt and snapshot-1.pt
    fit(tmp_path, *TWO_EPOCHS, *snapshots)
    earlier = (tmp_path / "checkpoints" / "snapshot-1.pt").read_bytes()
    for leftover in [*tmp_path.glob("checkpoints/*.ckpt"), tmp_path / "result.json"]:  # a partial clean-up
        leftover.unlink()  # (a folder with the earlier run's checkpoints would be refused as another run's home)
    # a new run there stops after its first cycle: it writes snapshot-0.pt only, then tests its best checkpoint
    cli = fit(
        tmp_path, *TWO_EPOCHS, "--trainer.callbacks", STOP_AFTER_FIRST_EPOCH, *snapshots, "--test_after_fit", "true"
    )
    assert (tmp_path / "checkpoints" / "snapshot-1.pt").read_bytes() == earlier  # the stale file is still there
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert "test/acc_snapshot_0" in metrics and "test/acc_snapshot_1" not in metrics
    assert metrics["test/acc_ensemble"] == metrics["test/acc_snapshot_0"]  # an ensemble of its one snapshot
