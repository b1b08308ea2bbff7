"""Evaluation that costs what it must: a probe tests on cached features with the image pass's numbers, evaluation at
its own batch size, a stratified seeded test subset. Real in-process fits of ``test_resnet`` on digits."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import DIGITS, fit
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader

from toolkit.data.datamodule import ImageDataModule
from toolkit.lightning_cli import run_cli
from toolkit.model.features import CACHE_ENV, CachedSplit

PROBE = ["--model.freeze_backbone", "true", "--data.augment", "none", "--model.drop_rate", "0.0"]
TEST_KEYS = ("test/acc", "test/f1", "test/loss")


def test_a_probe_tests_on_cached_features_with_the_image_pass_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "features"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    cli = fit(tmp_path / "fit", *PROBE, "--test_after_fit", "true")
    assert isinstance(cli.trainer.test_dataloaders.dataset, CachedSplit)  # the backbone did not run on test images
    cached = {k: float(cli.trainer.callback_metrics[k]) for k in TEST_KEYS}
    assert len(list(cache.glob("*.pt"))) == 3  # train, val and test features
    # the plain pass over the same test images (2 batches: conftest.QUICK), with sklearn's scores
    model, data = cli.model.eval(), cli.datamodule
    batches = list(itertools.islice(DataLoader(data.splits.test, batch_size=data.eval_batch_size), 2))
    with torch.inference_mode():
        logits = torch.cat([model(images) for images, _ in batches])
    targets = torch.cat([t for _, t in batches]).numpy()
    preds = logits.argmax(-1).numpy()
    assert cached["test/acc"] == pytest.approx(accuracy_score(targets, preds), abs=1e-6)
    assert cached["test/f1"] == pytest.approx(f1_score(targets, preds, average="macro", zero_division=0), abs=1e-6)
    assert cached["test/loss"] == pytest.approx(F.cross_entropy(logits, torch.as_tensor(targets)).item(), abs=1e-6)

    best = cli.trainer.checkpoint_callback.best_model_path
    args = ["test", "--config", DIGITS, "--ckpt_path", best, "--trainer.default_root_dir", str(tmp_path / "again")]
    again = run_cli([*args, "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false", *PROBE])
    assert isinstance(again.trainer.test_dataloaders.dataset, CachedSplit)  # a second test: from the cache
    assert {k: float(again.trainer.callback_metrics[k]) for k in TEST_KEYS} == cached
    assert len(list(cache.glob("*.pt"))) == 3


def test_a_fine_tuned_backbone_tests_on_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "features"))
    cli = fit(tmp_path, "--data.augment", "none", "--test_after_fit", "true")
    assert not isinstance(cli.trainer.test_dataloaders.dataset, CachedSplit)
    assert not (tmp_path / "features").exists()


def test_evaluation_has_its_own_batch_size() -> None:
    data = ImageDataModule(backbone="test_resnet", batch_size=16, eval_batch_size=100, augment="none")
    data.setup("fit")
    assert data.train_dataloader().batch_size == 16
    assert data.val_dataloader().batch_size == data.test_dataloader().batch_size == 100
    assert data.predict_dataloader().batch_size == 100
    assert ImageDataModule(backbone="test_resnet", batch_size=16, eval_batch_size=None).eval_batch_size == 16


def test_test_subset_is_stratified_seeded_and_drawn_from_the_test_split() -> None:
    common = {"backbone": "test_resnet", "train_subset": 300, "eval_subset": 120, "test_split": "rest"}
    full = ImageDataModule(**common).splits.test
    subset = ImageDataModule(**common, test_subset=200).splits.test
    assert len(full) == 1377 and len(subset) == 200
    assert ImageDataModule(**common, test_subset=200).splits.test.labels == subset.labels  # same seed, same draw
    assert ImageDataModule(**common, test_subset=200, split_seed=1).splits.test.labels != subset.labels

    def pixels(samples) -> Counter:
        return Counter((image.tobytes(), label) for image, label in zip(samples.images, samples.labels, strict=True))

    assert not pixels(subset) - pixels(full)  # drawn from the test split: no image from the train or val split
    counts, whole = Counter(subset.labels), Counter(full.labels)
    for label, count in whole.items():  # each class at its share of the test split, to within one image
        assert abs(counts[label] - 200 * count / len(full)) <= 1
