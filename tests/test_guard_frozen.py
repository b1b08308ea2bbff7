"""The divergence guard's weight check leaves a frozen backbone out (it cannot change) and still sees the rest."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from toolkit.callbacks.health import Diverged, DivergenceGuard
from toolkit.data.datamodule import ImageDataModule
from toolkit.model.classifier import ImageClassifier


class Poison(pl.Callback):
    """After the first training step, write a NaN into one tensor (the loss of that step was finite)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        module = pl_module.head[-1] if self.where == "head" else pl_module.backbone
        with torch.no_grad():
            param = next(module.parameters())
            param[(0,) * param.ndim] = float("nan")  # by index: a channels-last conv weight has no flat view


def fit(tmp_path: Path, where: str) -> None:
    model = ImageClassifier("test_resnet", freeze_backbone=True, lr_scheduler=None)
    data = ImageDataModule(source="digits", image_size=32, batch_size=32, augment="none")
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[DivergenceGuard(), Poison(where)],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=data)


def test_a_nan_written_into_the_trained_head_stops_the_run(tmp_path: Path) -> None:
    with pytest.raises(Diverged, match=r"non-finite weights \(head\.\S*weight\)"):
        fit(tmp_path, "head")


def test_the_frozen_backbone_is_not_scanned(tmp_path: Path) -> None:
    # nothing in training can change a frozen backbone; a NaN put there from outside is out of the check's scope
    fit(tmp_path, "backbone")
