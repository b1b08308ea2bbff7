"""Data identity by content: copied image files in two classes or two splits are refused with their names, or dropped
under ``--data.duplicates drop``; the reference is a sha256 of each file's bytes computed here. In-process."""

from __future__ import annotations

import hashlib
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data.datamodule import ImageDataModule
from toolkit.errors import ToolkitError


def _tree(root: Path, classes: dict[str, int], offset: int = 0) -> Path:
    rng = np.random.default_rng(offset)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _data(root: Path, **options) -> ImageDataModule:
    data = ImageDataModule(
        source="folder", root=str(root), image_size=16, val_fraction=0.2, test_fraction=0.2, **options
    )
    data.setup("fit")
    return data


def _digests(data: ImageDataModule) -> dict[str, list[tuple[str, int]]]:
    """sha256 -> [(split, label)] over the splits in use (the independent reference)."""
    found = defaultdict(list)
    for name in ("train", "val", "test"):
        samples = getattr(data.splits, name)
        for path, label in zip(samples.images, samples.labels, strict=True):
            found[hashlib.sha256(Path(path).read_bytes()).hexdigest()].append((name, label))
    return found


def test_copies_in_two_classes_are_refused_naming_both_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 20, "b": 20})
    for i in range(5):  # the case: class-a images copied into class b
        shutil.copy(root / "a" / f"{i}.png", root / "b" / f"copy{i}.png")
    with pytest.raises(ToolkitError) as err:
        _data(root)
    message = str(err.value)
    assert "identical bytes" in message and "classes 'a' and 'b'" in message and "--data.duplicates drop" in message
    assert "/a/" in message and "/b/copy" in message and "(and 4 more such image(s))" in message


def test_a_copy_in_train_and_test_of_one_class_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _tree(root / "train", {"a": 12, "b": 12})
    _tree(root / "val", {"a": 4, "b": 4}, offset=1)
    _tree(root / "test", {"a": 4, "b": 4}, offset=2)
    shutil.copy(root / "train" / "a" / "3.png", root / "test" / "a" / "leak.png")
    with pytest.raises(ToolkitError, match=r"train/a/3\.png and .*test/a/leak\.png .* the train and test splits"):
        _data(root)


def test_copies_within_one_class_of_one_split_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _tree(root / "train", {"a": 12, "b": 12})
    _tree(root / "val", {"a": 4, "b": 4}, offset=2)
    _tree(root / "test", {"a": 4, "b": 4}, offset=3)
    shutil.copy(root / "train" / "a" / "0.png", root / "train" / "a" / "again.png")
    data = _data(root)
    assert [len(copies) for copies in _digests(data).values() if len(copies) > 1] == [2]


def test_drop_keeps_one_copy_and_none_of_an_image_with_two_labels(tmp_path: Path) -> None:
    root = _tree(tmp_path / "d", {"a": 30, "b": 30})
    for i in range(4):
        shutil.copy(root / "a" / f"{i}.png", root / "b" / f"copy{i}.png")  # two labels: no copy may stay
    for i in range(10, 16):
        shutil.copy(root / "b" / f"{i}.png", root / "b" / f"twin{i}.png")  # one label: one copy stays
    data = _data(root, duplicates="drop")
    found = _digests(data)
    assert all(len(copies) == 1 for copies in found.values())  # every image once, in one split
    labelled = {h for h in found}
    for i in range(4):
        assert hashlib.sha256((root / "a" / f"{i}.png").read_bytes()).hexdigest() not in labelled
    for i in range(10, 16):
        assert hashlib.sha256((root / "b" / f"{i}.png").read_bytes()).hexdigest() in labelled
    total = sum(len(getattr(data.splits, n)) for n in ("train", "val", "test"))
    assert total == 60 + 4 + 6 - 8 - 6  # 70 files; 8 with two labels gone, 6 twins gone
