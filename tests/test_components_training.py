"""Each component switch trains end to end on digits through the real CLI, and its checkpoint tests back the same."""

from __future__ import annotations

import copy
import itertools
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import QUICK, fit, weights_with_trained_statistics
from torch.nn import functional as F

from toolkit.lightning_cli import run_cli
from toolkit.model.classifier import ImageClassifier
from toolkit.model.components import active_dropout_modules
from toolkit.report.wandb_log import read_run

# what a study sets for all its variants: timm's zero-init of the last BN gamma would make these switches refused
STUDY = ["--model.zero_init_last", "false"]
# frozen/fused BatchNorm needs trained statistics (refused on random init): replaced by such a weights file
TRAINED_STATS = "<weights with trained BatchNorm statistics>"
# variant -> (CLI overrides, the line apply_switches records; test_resnet has 15 BatchNorm layers and 4 blocks)
SWITCHES = {
    "frozen": (
        ["--model.batchnorm", "frozen", *STUDY, "--model.pretrained", TRAINED_STATS],
        "batchnorm=frozen: 15 layers frozen",
    ),
    "fused": (
        ["--model.batchnorm", "fused", *STUDY, "--model.pretrained", TRAINED_STATS],
        "batchnorm=fused: 15 layers folded into the preceding conv",
    ),
    "off": (["--model.batchnorm", "off", *STUDY], "batchnorm=off: 15 layers removed (activations kept)"),
    "no_shortcut": (
        ["--model.residual", "false", "--model.residual_blocks", "[1, 2]", *STUDY],
        "residual=False: 2 of 4 blocks [1, 2] without shortcut",
    ),
}


def wandb_run(root: Path):
    """The run's W&B log once complete: after ``wandb.finish()`` the wandb-core service may still be writing it."""
    (path,) = root.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + 60
    while (run := read_run(path)).state != "finished" and time.monotonic() < deadline:
        time.sleep(0.2)
    return run


def test_args(root: Path, ckpt: str, *extra: str) -> list[str]:
    return ["test", *QUICK, "--trainer.default_root_dir", str(root), "--ckpt_path", ckpt, *extra]


test_args.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("variant", list(SWITCHES))
def test_switch_trains_logs_and_its_checkpoint_tests_back(tmp_path: Path, variant: str) -> None:
    overrides, change = SWITCHES[variant]
    weights = weights_with_trained_statistics(tmp_path / "w.pth")
    overrides = [weights if arg == TRAINED_STATS else arg for arg in overrides]
    cli = fit(tmp_path / "fit", *overrides, "--test_after_fit", "true", "--trainer.log_every_n_steps", "1")
    metrics = cli.trainer.callback_metrics  # after the in-process test: the best checkpoint's test metrics
    assert any(line.startswith(change) for line in cli.model.changes), cli.model.changes

    logged = wandb_run(tmp_path / "fit")
    assert any(line.startswith(change) for line in logged.config["changes"])
    assert {k: logged.config["model"][k] for k in ("batchnorm", "residual")} == {
        "batchnorm": cli.model.hparams.batchnorm,
        "residual": cli.model.hparams.residual,
    }
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):
        values = [row[key] for row in logged.history if key in row]
        assert values and all(math.isfinite(v) for v in values), (key, values)

    best = cli.trainer.checkpoint_callback.best_model_path
    tested = run_cli(test_args(tmp_path / "test", best, *overrides))  # a freshly switched model loads the checkpoint
    assert float(tested.trainer.callback_metrics["test/acc"]) == pytest.approx(float(metrics["test/acc"]), abs=1e-6)
    assert float(tested.trainer.callback_metrics["test/loss"]) == pytest.approx(float(metrics["test/loss"]), rel=1e-5)


def test_lesion_at_test_time_equals_deleting_the_block(tmp_path: Path) -> None:
    # without timm's zero-init, so that 3 training steps leave block 0 a branch whose deletion is measurable
    cli = fit(tmp_path / "fit", *STUDY)
    best = cli.trainer.checkpoint_callback.best_model_path
    tested = run_cli(test_args(tmp_path / "test", best, "--model.lesion_blocks", "[0]", *STUDY))
    assert tested.model.changes == ["lesion_blocks=[0]: 1 of 4 blocks reduced to shortcut"]

    # reference: the trained network with its first block (layer1 holds only that block) deleted, on the same batches
    trained = ImageClassifier.load_from_checkpoint(best, map_location="cpu").eval()
    reference = copy.deepcopy(trained)
    reference.backbone.layer1 = torch.nn.Identity()
    loss = intact_loss = 0.0
    correct = total = 0
    with torch.no_grad():
        for images, targets in itertools.islice(tested.datamodule.test_dataloader(), 2):  # limit_test_batches 2
            logits = reference(images)
            loss += float(F.cross_entropy(logits, targets, reduction="sum"))
            intact_loss += float(F.cross_entropy(trained(images), targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            total += len(targets)
    metrics = tested.trainer.callback_metrics
    assert float(metrics["test/loss"]) == pytest.approx(loss / total, rel=1e-5)
    assert float(metrics["test/acc"]) == pytest.approx(correct / total, abs=1e-6)
    assert abs(intact_loss - loss) / total > 1e-4  # the lesion changed the network's function


@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_classifier_has_no_active_dropout_with_both_rates_zero(backbone: str) -> None:
    model = ImageClassifier(backbone=backbone, num_classes=10, drop_rate=0.0, drop_path_rate=0.0)
    assert active_dropout_modules(model) == []
    noisy = ImageClassifier(backbone=backbone, num_classes=10, drop_rate=0.2, drop_path_rate=0.1)
    active = active_dropout_modules(noisy)
    assert any(n.startswith("head") for n in active), active  # head dropout
    assert any(n.startswith("backbone.") and "drop_path" in n for n in active), active  # stochastic depth in timm
