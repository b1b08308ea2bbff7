"""Image folders read as a user means them: links followed once and never out of the root, hidden folders and
empty classes never classes, 16-bit images scaled (not clipped) to 8 bits. In-process, no training."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data.datasets import ImageSamples, load_folder_splits, load_predict_samples, verify_images
from toolkit.errors import ToolkitError


def _tree(root: Path, classes: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * c, 9 * i, 7)).save(root / name / f"{i}.png")
    return root


def _all(splits) -> list[str]:
    return [str(p) for part in (splits.train, splits.val, splits.test) for p in part.images]


def test_a_symlink_loop_counts_each_file_once_and_splits_stay_disjoint(tmp_path) -> None:
    root = _tree(tmp_path / "d", {"a": 10, "b": 10})
    os.symlink("..", root / "a" / "up")  # the loop torchvision's make_dataset follows (20 images became 820 samples)
    os.symlink(str(root / "b"), root / "a" / "sibling")  # a link to another class's folder
    with pytest.warns(UserWarning, match="2 link"):
        splits = load_folder_splits(str(root), 0.2, 0.2, 0)
    paths = _all(splits)
    assert len(paths) == 20 == len({os.path.realpath(p) for p in paths})
    assert splits.class_names == ["a", "b"]


def test_a_link_out_of_the_root_is_not_followed(tmp_path) -> None:
    outside = _tree(tmp_path / "elsewhere", {"x": 5})
    root = _tree(tmp_path / "d", {"a": 10, "b": 10})
    os.symlink(str(outside / "x"), root / "a" / "more")
    os.symlink(str(outside / "x" / "0.png"), root / "b" / "one.png")
    with pytest.warns(UserWarning, match="2 link"):
        splits = load_folder_splits(str(root), 0.2, 0.2, 0)
    assert len(_all(splits)) == 20 and not any("elsewhere" in os.path.realpath(p) for p in _all(splits))


def test_a_root_that_is_itself_a_link_is_read(tmp_path) -> None:
    root = _tree(tmp_path / "d", {"a": 10, "b": 10})
    os.symlink(str(root), tmp_path / "alias")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        assert len(_all(load_folder_splits(str(tmp_path / "alias"), 0.2, 0.2, 0))) == 20


def test_one_image_linked_into_two_classes_or_splits_is_refused(tmp_path) -> None:
    root = _tree(tmp_path / "d", {"a": 10, "b": 10})
    os.symlink("../a/0.png", root / "b" / "dup.png")
    with pytest.raises(ToolkitError, match=r"b/dup\.png is the file .*a/0\.png"):
        load_folder_splits(str(root), 0.2, 0.2, 0)
    split = tmp_path / "s"
    _tree(split / "train", {"a": 6, "b": 6})
    _tree(split / "val", {"a": 2, "b": 2})
    os.symlink(str(split / "train" / "a" / "0.png"), split / "val" / "a" / "leak.png")
    with pytest.raises(ToolkitError, match=r"val/a/leak\.png is the file"):
        load_folder_splits(str(split), 0.2, 0.2, 0)


def test_hidden_folders_and_files_are_no_classes_and_no_images(tmp_path) -> None:
    root = _tree(tmp_path / "d", {"a": 10, "b": 10})
    _tree(root / ".ipynb_checkpoints", {"a": 3})
    Image.new("RGB", (8, 8)).save(root / "a" / "._0.png")  # macOS AppleDouble file
    (root / "a" / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / ".cache" / "x.png")
    splits = load_folder_splits(str(root), 0.2, 0.2, 0)
    assert splits.class_names == ["a", "b"] and len(_all(splits)) == 20
    assert not any("/." in p for p in _all(splits))


@pytest.mark.parametrize("layout", ["flat", "train", "val"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, layout) -> None:
    root = tmp_path / "d"
    base = {"flat": root, "train": root / "train", "val": root / "train"}[layout]
    _tree(base, {"a": 10, "b": 10})
    if layout == "val":
        _tree(root / "val", {"a": 2, "b": 2})
    empty = (root / "val" / "b") if layout == "val" else (base / "c")
    for f in empty.glob("*"):
        f.unlink()
    empty.mkdir(parents=True, exist_ok=True)
    (empty / "notes.txt").write_text("no image here")
    with pytest.raises(ToolkitError, match=rf"class folder {empty} holds no images"):
        load_folder_splits(str(root), 0.2, 0.2, 0)


def test_predict_folder_with_a_loop_lists_each_image_once(tmp_path) -> None:
    root = _tree(tmp_path / "p", {"a": 3})
    os.symlink("..", root / "a" / "up")
    with pytest.warns(UserWarning, match="1 link"):
        samples, ids = load_predict_samples(str(root), ["a"])
    assert len(ids) == 3 and samples.labels == [0, 0, 0]


@pytest.mark.parametrize("big_endian", [False, True])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, big_endian) -> None:
    wide = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535 in steps of 257
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    if big_endian:
        path = tmp_path / "wide.tif"
        Image.frombytes("I;16B", (16, 16), wide.astype(">u2").tobytes()).save(path)
    with Image.open(path) as handle:
        assert handle.mode.startswith("I;16")  # the case PIL's convert("RGB") turns white
    verify_images(ImageSamples([str(path)], [0]))
    rgb = np.asarray(ImageSamples([str(path)], [0])[0][0])
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)  # independent: float rounding
    assert rgb.shape == (16, 16, 3) and (rgb == expected[..., None]).all()


def test_a_float_image_is_refused_naming_it(tmp_path) -> None:
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
    with pytest.raises(ToolkitError, match=r"depth\.tif has 'F' pixels"):
        verify_images(ImageSamples([str(path)], [0]))


def test_an_image_that_goes_bad_after_the_check_is_named_during_training(tmp_path) -> None:
    """Replaced after the decode check (a copy still running, NFS): the loader names the file, in a worker too."""
    from torch.utils.data import DataLoader

    from toolkit.cli import one_line

    root = _tree(tmp_path / "d", {"a": 4, "b": 4})
    samples = ImageSamples([str(p) for p in sorted(root.rglob("*.png"))], [0] * 4 + [1] * 4)
    verify_images(samples)
    bad = Path(samples.images[5])
    bad.write_bytes(bad.read_bytes()[:20])  # truncated after the check
    with pytest.raises(ToolkitError, match=rf"image {bad} could not be read during training .*--ckpt_path last"):
        samples[5]
    loader = DataLoader(samples, batch_size=8, num_workers=1, collate_fn=lambda batch: batch)
    with pytest.raises(ToolkitError) as err:
        next(iter(loader))
    line = one_line(err.value)
    assert "\n" not in line and line.startswith(f"image {bad} could not be read during training")
