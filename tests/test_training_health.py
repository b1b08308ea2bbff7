"""Training-health callbacks: the update/parameter ratio against a hand computation, dead units, config switching."""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import fit
from torch.utils.data import DataLoader, TensorDataset

from toolkit.callbacks.training_health import DEAD_KEY, RATIO_KEY, DeadUnitMonitor, UpdateRatioMonitor
from toolkit.data.datamodule import ImageDataModule
from toolkit.model.classifier import ImageClassifier


@pytest.fixture(scope="module")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed, unaugmented batch of digits at 32 px."""
    data = ImageDataModule(source="digits", image_size=32, augment="none", batch_size=32)
    data.setup("fit")
    images, targets = next(iter(DataLoader(data.splits.train, batch_size=32, shuffle=False)))
    return images, targets


def _trainer(callbacks: list, steps: int = 1) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def test_update_ratio_equals_hand_computation_for_one_sgd_step(digits_batch):
    torch.manual_seed(0)
    lr = 0.05
    model = ImageClassifier("test_resnet", 10, optimizer=partial(torch.optim.SGD, lr=lr), lr_scheduler=None)
    reference = copy.deepcopy(model).train()
    images, targets = digits_batch
    # by hand: plain SGD moves each weight by lr * grad, so the ratio is lr * ||g|| / ||w|| over the group
    F.cross_entropy(reference(images), targets).backward()
    expected = {}
    for group, module in (("head", reference.head), ("backbone", reference.backbone)):
        params = [p for p in module.parameters() if p.grad is not None]
        grad = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params))
        weight = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
        expected[group] = lr * grad / weight

    monitor = UpdateRatioMonitor(every_n_steps=1, per_layer=True)
    loader = DataLoader(TensorDataset(images, targets), batch_size=len(images), shuffle=False)
    _trainer([monitor]).fit(model, train_dataloaders=loader)

    for group, value in expected.items():
        assert monitor.history[f"{RATIO_KEY}/{group}"] == [pytest.approx(value, rel=1e-4)]
    # per layer: the head's weight alone, by hand as well
    head_weight = reference.head[-1].weight
    by_hand = lr * float(head_weight.grad.norm()) / float(head_weight.detach().norm())
    assert monitor.history[f"{RATIO_KEY}/head/head.0.weight"] == [pytest.approx(by_hand, rel=1e-4)]


def test_update_ratio_warns_when_the_lr_is_far_too_high(digits_batch):
    model = ImageClassifier("test_resnet", 10, optimizer=partial(torch.optim.SGD, lr=50.0), lr_scheduler=None)
    loader = DataLoader(TensorDataset(*digits_batch), batch_size=32)
    with pytest.warns(UserWarning, match="update/parameter ratio of param group 'head'.*too high"):
        _trainer([UpdateRatioMonitor(every_n_steps=1)]).fit(model, train_dataloaders=loader)


def test_dead_units_reports_a_dead_layer_and_a_live_one(digits_batch):
    torch.manual_seed(0)
    model = ImageClassifier("test_resnet", 10, optimizer=partial(torch.optim.SGD, lr=0.0), lr_scheduler=None)
    # kill the stem: its BN shifts every pre-activation far below zero, so act1 outputs only zeros
    with torch.no_grad():
        model.backbone.bn1.bias.fill_(-1e4)
    monitor = DeadUnitMonitor(every_n_steps=1)
    loader = DataLoader(TensorDataset(*digits_batch), batch_size=32)
    with pytest.warns(UserWarning, match="layer 'backbone.act1'.*dead"):
        _trainer([monitor]).fit(model, train_dataloaders=loader)
    assert monitor.history["backbone.act1"] == [1.0]
    # reference for a live layer: a unit is dead when it is zero for every sample of the batch
    outputs = {}
    probe = copy.deepcopy(model).train()
    probe.backbone.bn1.bias.data.zero_()
    handle = probe.backbone.act1.register_forward_hook(lambda m, i, o: outputs.setdefault("act1", o.detach()))
    with torch.no_grad():
        probe(digits_batch[0])
    handle.remove()
    live = DeadUnitMonitor(every_n_steps=1)
    model.backbone.bn1.bias.data.zero_()
    _trainer([live]).fit(model, train_dataloaders=loader)
    expected = float((outputs["act1"] == 0).all(dim=0).float().mean())
    assert live.history["backbone.act1"] == [pytest.approx(expected)]
    assert expected < 0.9


def test_callbacks_switch_on_from_the_config_and_log(run_root):
    cli = fit(
        run_root,
        "--trainer.logger",
        "false",
        "--trainer.callbacks+=toolkit.callbacks.training_health.UpdateRatioMonitor",
        "--trainer.callbacks.every_n_steps=1",
        "--trainer.callbacks+=toolkit.callbacks.training_health.DeadUnitMonitor",
        "--trainer.callbacks.every_n_steps=1",
    )
    logged = cli.trainer.callback_metrics
    assert math.isfinite(float(logged[f"{RATIO_KEY}/head"])) and float(logged[f"{RATIO_KEY}/head"]) > 0
    assert 0.0 <= float(logged[f"{DEAD_KEY}/backbone.act1"]) <= 1.0
