"""Cached features for a frozen backbone: same predictions as the image path, a cache keyed by what matters.

Real in-process fits of timm's tiny ``test_resnet`` on digits; the cache lives in a per-test folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import fit

from toolkit.data.datamodule import ImageDataModule
from toolkit.errors import ToolkitError
from toolkit.model.classifier import ImageClassifier
from toolkit.model.features import CACHE_ENV, CachedSplit, blockers, decide

PROBE = ["--model.freeze_backbone", "true", "--data.augment", "none", "--model.drop_rate", "0.0"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "features"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def weights_file(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    path = folder / f"test_resnet-{seed}.pth"
    # without timm's zero-init of the last BN gamma: like real pretrained weights, every block is alive
    torch.save(timm.create_model("test_resnet", num_classes=0, zero_init_last=False).state_dict(), path)
    return str(path)


def first_test_images(cli) -> torch.Tensor:  # cli: a ToolkitCLI
    return torch.stack([cli.datamodule.splits.test[i][0] for i in range(64)])


def test_cached_probe_gives_the_uncached_predictions(tmp_path: Path, cache: Path) -> None:
    runs = {}
    for mode in ("off", "on"):
        extra = [*PROBE, "--model.feature_cache", mode, "--trainer.max_epochs", "2", "--seed_everything", "7"]
        cli = fit(tmp_path / mode, *extra, "--trainer.limit_train_batches", "5")
        runs[mode] = cli
    assert runs["on"].model._use_feature_cache and not runs["off"].model._use_feature_cache
    # the loaders Lightning trained and validated with served features (the backbone did not run per epoch)
    assert isinstance(runs["on"].trainer.train_dataloader.dataset, CachedSplit)
    assert isinstance(runs["on"].trainer.val_dataloaders.dataset, CachedSplit)
    assert not isinstance(runs["off"].trainer.train_dataloader.dataset, CachedSplit)
    assert len(list(cache.glob("*.pt"))) == 2  # train and val, computed once
    with torch.no_grad():
        logits = {mode: cli.model.eval()(first_test_images(cli)) for mode, cli in runs.items()}
    torch.testing.assert_close(logits["on"], logits["off"], rtol=1e-4, atol=1e-5)
    assert torch.equal(logits["on"].argmax(-1), logits["off"].argmax(-1))
    for key in ("val/acc", "val/loss"):
        torch.testing.assert_close(runs["on"].trainer.callback_metrics[key], runs["off"].trainer.callback_metrics[key])
    # the checkpoint holds the whole model: the backbone is there, unchanged
    ckpt = torch.load(next((tmp_path / "on" / "checkpoints").glob("last*.ckpt")), weights_only=False)
    assert any(k.startswith("backbone.") for k in ckpt["state_dict"])


def test_lp_ft_leaves_the_cache_at_the_unfreeze_epoch(tmp_path: Path, cache: Path) -> None:
    runs = {}
    for mode in ("off", "on"):
        extra = [*PROBE, "--model.feature_cache", mode, "--model.unfreeze_at_epoch", "1", "--trainer.max_epochs", "2"]
        runs[mode] = fit(tmp_path / mode, *extra, "--data.persistent_workers", "false")
    on, off = runs["on"], runs["off"]
    assert not any(split.active for split in on.datamodule.feature_splits.values())  # images after unfreezing
    for name, param in on.model.backbone.named_parameters():  # the backbone trained in epoch 1, on images
        torch.testing.assert_close(param, dict(off.model.backbone.named_parameters())[name], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(
            on.model.eval()(first_test_images(on)), off.model.eval()(first_test_images(off)), rtol=1e-4, atol=1e-4
        )


def test_cache_is_shared_across_seeds_and_rebuilt_when_weights_switches_or_transform_change(
    tmp_path: Path, cache: Path
) -> None:
    weights = weights_file(tmp_path, 0)
    base = [*PROBE, "--model.pretrained", weights, "--trainer.limit_train_batches", "1"]

    runs = iter(range(100))

    def entries_after(*extra: str) -> int:
        fit(tmp_path / f"run{next(runs)}", *base, *extra)  # each fit in its own folder (the run-home rule)
        return len(list(cache.glob("*.pt")))

    assert entries_after("--seed_everything", "0") == 2
    assert entries_after("--seed_everything", "1") == 2  # another seed: same backbone, same features
    assert entries_after("--model.residual", "false") == 4  # a switch
    assert entries_after("--data.image_size", "24") == 6  # the transform
    assert entries_after("--model.pretrained", weights_file(tmp_path, 1)) == 8  # the weights


@pytest.mark.parametrize(
    ("model", "data", "world_size", "valid"),
    [
        ({}, {}, 1, True),
        ({"unfreeze_at_epoch": 2}, {"persistent_workers": False}, 1, True),
        ({"freeze_backbone": False}, {}, 1, False),
        ({}, {"augment": "basic"}, 1, False),
        ({}, {"mixup_alpha": 0.2}, 1, False),
        ({}, {}, 2, False),
        ({"unfreeze_at_epoch": 2}, {"num_workers": 2}, 1, False),
    ],
)
def test_auto_turns_the_cache_on_exactly_when_valid(model: dict, data: dict, world_size: int, valid: bool) -> None:
    classifier = ImageClassifier("test_resnet", **{"freeze_backbone": True, **model})
    reasons = blockers(classifier, ImageDataModule(**{"augment": "none", **data}), world_size)
    assert decide("auto", reasons) is valid
    assert decide("off", reasons) is False
    if valid:
        assert decide("on", reasons) is True
    else:
        with pytest.raises(ToolkitError, match="feature_cache on is invalid here: "):
            decide("on", reasons)


def test_on_when_invalid_is_a_one_line_error(tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture) -> None:
    from toolkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        digits = str(Path(__file__).parents[1] / "configs" / "digits.yaml")
        probe = ("--model.freeze_backbone", "true", "--model.feature_cache", "on", "--data.augment", "basic")
        main(["fit", "--config", digits, *probe, "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.feature_cache on is invalid here: data.augment is 'basic'"), err
    assert not list(cache.glob("*.pt"))
