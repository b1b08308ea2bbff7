"""Switches change only what their name says; a dead network is refused at build time (issue 9 §1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import fit, weights_with_trained_statistics
from safetensors.torch import save_file

from toolkit.errors import ToolkitError
from toolkit.model.classifier import ImageClassifier
from toolkit.model.components import check_liveness, zero_init_gammas
from toolkit.report.wandb_log import read_run

STUDY_FIX = "set model.zero_init_last: false for the whole study (base config or spec overrides)"


def test_timm_zero_init_is_found_in_the_built_module() -> None:
    # reference: timm's zero_init_last zeroes the last BN gamma of each ResNet block; EfficientNet has no such init
    resnet = timm.create_model("test_resnet", num_classes=0)
    expected = [n for n, m in resnet.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and (m.weight == 0).all()]
    assert len(expected) == 4 and zero_init_gammas(resnet) == expected
    assert zero_init_gammas(timm.create_model("test_resnet", num_classes=0, zero_init_last=False)) == []
    assert zero_init_gammas(timm.create_model("test_efficientnet", num_classes=0)) == []


def test_no_shortcut_on_zero_init_blocks_is_refused_on_a_real_digits_run(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError) as err:
        fit(tmp_path, "--model.residual", "false", "--model.zero_init_last", "null")
    assert "residual=False on blocks [0, 1, 2, 3]" in str(err.value) and STUDY_FIX in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything trained
    # the study-wide fix (ablations/quickstart.yaml has it): the variant trains, and its features depend on the input
    cli = fit(tmp_path, "--model.residual", "false", "--model.zero_init_last", "false", "--trainer.logger", "false")
    assert cli.trainer.global_step == 3


@pytest.mark.parametrize("level", ["frozen", "fused", "off"])
def test_batchnorm_levels_that_would_change_the_init_are_refused(level: str, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match=f"batchnorm={level}: 4 BatchNorm layers have a zero-initialised scale"):
        ImageClassifier("test_resnet", batchnorm=level)
    weights = weights_with_trained_statistics(tmp_path / "w.pth")  # frozen/fused need trained statistics
    model = ImageClassifier("test_resnet", pretrained=weights, batchnorm=level, zero_init_last=False)
    assert model.changes[0].startswith(level, 10)


@pytest.mark.parametrize("level", ["frozen", "fused"])
def test_frozen_or_fused_batchnorm_on_untrained_statistics_is_refused(level: str, tmp_path: Path) -> None:
    # random init: running mean 0, var 1 everywhere, so frozen/fused BatchNorm would be no normalisation at all
    with pytest.raises(ToolkitError) as err:
        ImageClassifier("test_resnet", batchnorm=level, zero_init_last=False)
    message = str(err.value)
    assert "\n" not in message and f"batchnorm={level} with untrained BatchNorm statistics (15 layers" in message
    assert "model.batchnorm: on" in message
    # the same weights with statistics trained on data (as pretrained ones are) are accepted; on/off never refused
    weights = weights_with_trained_statistics(tmp_path / "w.pth")
    ImageClassifier("test_resnet", pretrained=weights, batchnorm=level, zero_init_last=False)
    for ok in ("on", "off"):
        ImageClassifier("test_resnet", batchnorm=ok, zero_init_last=False)


def test_drop_path_on_blocks_without_shortcut_is_an_error() -> None:
    with pytest.raises(ToolkitError, match=r"drop_path_rate > 0 with residual=False.*blocks \[1, 2, 3\]"):
        ImageClassifier("test_resnet", residual=False, zero_init_last=False, drop_path_rate=0.1)
    # with the shortcuts kept, stochastic depth is fine; and only the listed blocks count
    ImageClassifier("test_resnet", zero_init_last=False, drop_path_rate=0.1)
    ImageClassifier("test_resnet", residual=False, residual_blocks=[0], zero_init_last=False, drop_path_rate=0.1)


def test_a_network_made_dead_on_purpose_is_refused_naming_the_layer(tmp_path: Path) -> None:
    # weights whose stem conv is all zero: every image gives the same features
    backbone = timm.create_model("test_resnet", num_classes=0, zero_init_last=False)
    stem, conv = next((n, m) for n, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d))
    torch.nn.init.zeros_(conv.weight)
    weights = tmp_path / "dead.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    with pytest.raises(ToolkitError) as err:
        fit(tmp_path / "run", "--model.pretrained", str(weights))
    message = str(err.value)
    assert message.startswith("dead network: the backbone gives the same features for every input")
    assert f"'{stem}' (Conv2d)" in message and not (tmp_path / "run" / "checkpoints").exists()


def test_liveness_probe_catches_zero_gradients_and_leaves_no_trace() -> None:
    backbone = timm.create_model("test_resnet", num_classes=0, zero_init_last=False)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    rng = torch.random.get_rng_state()
    check_liveness(backbone, [])  # alive
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's random stream is not shifted
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in state.items())  # no BN statistics updated
    assert all(p.grad is None for p in backbone.parameters()) and backbone.training

    # features that vary but do not depend on any trainable parameter: the backbone cannot learn
    frozen_but_one = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    frozen_but_one[1].weight.requires_grad_(False)
    frozen_but_one.extra = torch.nn.Parameter(torch.ones(3))  # trainable, unused
    with pytest.raises(ToolkitError, match="none of the 1 trainable backbone parameters gets a gradient"):
        _check_small(frozen_but_one)


def _check_small(module: torch.nn.Module) -> None:
    module.pretrained_cfg = {"input_size": (3, 2, 2)}  # a 3x2x2 probe; the Linear takes no other size
    module[1].bias.requires_grad_(False)
    check_liveness(module, ["test"])


def test_changes_and_adjustments_are_in_the_wandb_config(tmp_path: Path) -> None:
    fit(tmp_path, "--model.batchnorm", "off", "--model.zero_init_last", "false")
    (log,) = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    config = read_run(log).config
    assert config["changes"] == ["batchnorm=off: 15 layers removed (activations kept)"]
    assert config["adjusted"] == [
        "zero_init_last=False: no norm scale zero-initialised (timm's default zeroes the last of each block)"
    ]
    assert config["model"]["zero_init_last"] is False
