"""Fashion-MNIST from Debian's dataset-fashion-mnist folder (no download, no manual gunzip), and stratified subsets."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from toolkit.data.datamodule import ImageDataModule
from toolkit.data.datasets import DEBIAN_FASHION_MNIST, load_fashion_mnist_splits
from toolkit.errors import ToolkitError

pytestmark = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"{DEBIAN_FASHION_MNIST} absent: apt-get install dataset-fashion-mnist",
)


def _idx(name: str) -> np.ndarray:
    """Reference reader of an IDX file (big-endian header: magic, dims), independent of torchvision."""
    with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def test_loads_from_the_debian_folder(tmp_path: Path) -> None:
    splits = load_fashion_mnist_splits(str(tmp_path), val_fraction=0.15, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (51_000, 9_000, 10_000)
    assert splits.class_names[0] == "T-shirt/top" and len(splits.class_names) == 10
    images, labels = _idx("t10k-images-idx3-ubyte"), _idx("t10k-labels-idx1-ubyte")
    for i in (0, 9_999):
        image, label = splits.test[i]
        assert image.mode == "RGB" and image.size == (28, 28)
        assert np.array_equal(np.asarray(image)[:, :, 0], images[i]) and label == labels[i]
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    )
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    load_fashion_mnist_splits(str(tmp_path), val_fraction=0.15, seed=0)
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before  # unpacked once


def test_missing_files_name_the_package(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_splits(str(tmp_path / "root"), 0.15, 0, source=tmp_path / "nothing-here")


def test_subsets_are_stratified_and_seeded(tmp_path: Path) -> None:
    def data(seed: int) -> ImageDataModule:
        return ImageDataModule(
            source="fashion_mnist", root=str(tmp_path), train_subset=1000, eval_subset=200, split_seed=seed
        )

    a, b, c = data(0).splits, data(0).splits, data(1).splits
    assert (len(a.train), len(a.val), len(a.test)) == (1000, 200, 200)
    assert Counter(a.train.labels) == dict.fromkeys(range(10), 100)  # Fashion-MNIST is balanced: 100 per class
    assert Counter(a.test.labels) == dict.fromkeys(range(10), 20)
    assert a.train.indices == b.train.indices and a.train.indices != c.train.indices
    assert not set(a.train.indices) & set(a.val.indices)  # still disjoint after subsetting
    with pytest.raises(ToolkitError, match="train_subset must be a positive number"):
        ImageDataModule(source="fashion_mnist", root=str(tmp_path), train_subset=0)
