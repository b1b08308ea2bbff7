"""The flat layout of before the domain packages still loads: old module paths, an old config, an old checkpoint.

``tests/fixtures/old_layout`` holds a fit's config and checkpoint written by the code before the move (its README
says how, and the test metrics that code printed for them: the reference here).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest
from conftest import ROOT

from toolkit import _moved

OLD = ROOT / "tests" / "fixtures" / "old_layout"


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_an_old_module_path_is_the_module_at_its_new_place(old: str) -> None:
    new = importlib.import_module(_moved.MOVED[old])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert importlib.import_module(old) is new
    # the first import of an old path warns with the new one (later ones find it in sys.modules)
    assert all(_moved.MOVED[old] in str(w.message) for w in caught if w.category is DeprecationWarning)


def test_old_class_paths_name_the_same_classes_and_short_names_are_exported() -> None:
    import toolkit
    from toolkit.data.datamodule import ImageDataModule
    from toolkit.lightning_cli.tracking import WandbLogger
    from toolkit.model.components.registry import BATCHNORM_LEVELS
    from toolkit.model.schedules import WarmupSchedule

    assert importlib.import_module("toolkit.schedules").WarmupSchedule is WarmupSchedule is toolkit.WarmupSchedule
    assert importlib.import_module("toolkit.tracking").WandbLogger is WandbLogger is toolkit.WandbLogger
    assert importlib.import_module("toolkit.data").ImageDataModule is ImageDataModule is toolkit.ImageDataModule
    assert importlib.import_module("toolkit.components.registry").BATCHNORM_LEVELS is BATCHNORM_LEVELS
    assert _moved.new_name("toolkit.keys") is None and _moved.new_name("toolkit.backbones") is None


def test_an_old_config_and_checkpoint_test_to_the_numbers_the_old_code_printed(tmp_path: Path) -> None:
    from toolkit.lightning_cli import run_cli

    config = tmp_path / "config.yaml"
    text = (OLD / "config.yaml").read_text()
    assert "toolkit.tracking.WandbLogger" in text  # written with the old class path
    config.write_text(text.replace("OLD_RUN_DIR", str(tmp_path / "run")))
    args = ["--config", str(config), "--ckpt_path", str(OLD / "model.ckpt"), "--trainer.limit_test_batches", "2"]
    cli = run_cli(["test", *args, "--trainer.enable_progress_bar", "false"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert metrics["test/acc"] == 0.46484375  # 119 of 256 images, as before the move
    assert metrics["test/f1"] == pytest.approx(0.41290396451950073, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(1.6713571548461914, abs=1e-5)
    hp = cli.model.hparams  # the checkpoint's switches took effect again
    assert hp.residual is False and list(hp.residual_blocks) == [1]
