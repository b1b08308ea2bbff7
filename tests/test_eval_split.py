"""Evaluation that can resolve effects: test on every image not trained or validated on; a split tied to the seed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import fit
from sklearn.datasets import load_digits

from toolkit.data.datamodule import ImageDataModule
from toolkit.errors import ToolkitError

SMALL = {"source": "digits", "train_subset": 300, "eval_subset": 120, "batch_size": 16}


def _ids(samples) -> set[int]:
    return {id(image) for image in samples.images}


def test_rest_tests_on_every_digit_not_used_for_training_or_validation() -> None:
    data = ImageDataModule(**SMALL, test_split="rest")
    splits = data.splits
    total = len(load_digits().target)  # reference: scikit-learn's own count
    assert (len(splits.train), len(splits.val), len(splits.test)) == (300, 120, total - 420)
    train, val, test = _ids(splits.train), _ids(splits.val), _ids(splits.test)
    assert not (train & test) and not (val & test) and len(train | val | test) == total
    # the same train and val as the default, and the default's 120 test images are among the rest
    default = ImageDataModule(**SMALL).splits
    assert splits.train.labels == default.train.labels and splits.val.labels == default.val.labels
    pixels = Counter(img.tobytes() for img in splits.test.images)
    assert not Counter(img.tobytes() for img in default.test.images) - pixels


def test_split_seed_seed_ties_the_split_to_the_run_seed(tmp_path: Path) -> None:
    def built(seed: int) -> ImageDataModule:  # toolkit fit passes the run's seed in (no environment variable)
        args = ["--seed_everything", str(seed), "--data.split_seed", "seed", "--trainer.limit_train_batches", "1"]
        args += [f"--data.{key}={value}" for key, value in SMALL.items() if key != "source"]
        return fit(tmp_path / str(seed), *args).datamodule

    tied = built(3)
    assert tied.split_seed == 3
    assert tied.splits.train.labels == ImageDataModule(**SMALL, split_seed=3).splits.train.labels
    other = built(4).splits
    assert [img.tobytes() for img in other.test.images] != [img.tobytes() for img in tied.splits.test.images]
    with pytest.raises(ToolkitError, match="give the seed itself"):  # in Python the seed is passed, not looked up
        ImageDataModule(**SMALL, split_seed="seed")


def test_rest_needs_one_pool_of_images() -> None:
    from toolkit.data.datamodule import unused_samples
    from toolkit.data.datasets import ImageSamples, Splits

    class Other(ImageSamples):
        pass

    part = Other([1, 2], [0, 1])
    with pytest.raises(ToolkitError, match="test_split rest needs a source"):
        unused_samples(Splits(part, part, part, ["a", "b"]), Splits(part, part, part, ["a", "b"]))
