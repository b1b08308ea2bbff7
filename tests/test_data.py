"""ImageDataModule: sources, deterministic splits, timm transforms, dataset normalisation, no eval augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.data.datamodule import ImageDataModule


def _folder(root: Path, classes: int = 3, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


def test_digits_split_is_deterministic_stratified_and_disjoint() -> None:
    a, b = ImageDataModule(image_size=16), ImageDataModule(image_size=16)
    for name in ("train", "val", "test"):
        assert getattr(a.splits, name).labels == getattr(b.splits, name).labels
    sizes = [len(a.splits.train), len(a.splits.val), len(a.splits.test)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 270
    assert a.num_classes == 10 and a.class_names == [str(i) for i in range(10)]
    ids = [id(img) for split in (a.splits.train, a.splits.val, a.splits.test) for img in split.images]
    assert len(set(ids)) == 1797
    assert set(a.splits.val.labels) == set(range(10))
    other = ImageDataModule(image_size=16, split_seed=1)
    assert other.splits.test.labels != a.splits.test.labels or other.splits.test.images != a.splits.test.images


def test_folder_tree_split_by_fractions(tmp_path: Path) -> None:
    data = ImageDataModule(source="folder", root=str(_folder(tmp_path)), val_fraction=0.2, test_fraction=0.2)
    assert data.class_names == ["c0", "c1", "c2"]
    assert (len(data.splits.train), len(data.splits.val), len(data.splits.test)) == (18, 6, 6)
    data.setup("fit")
    image, label = data.splits.train[0]
    assert image.shape == (3, 160, 160)  # test_resnet's timm input size
    assert 0 <= label < 3


def test_folder_with_train_val_test_subfolders(tmp_path: Path) -> None:
    _folder(tmp_path / "train", per_class=6)
    _folder(tmp_path / "val", per_class=2, seed=1)
    _folder(tmp_path / "test", per_class=3, seed=2)
    data = ImageDataModule(source="folder", root=str(tmp_path), image_size=24)
    assert (len(data.splits.train), len(data.splits.val), len(data.splits.test)) == (18, 6, 9)
    data.setup("test")
    assert next(iter(data.test_dataloader()))[0].shape[1:] == (3, 24, 24)


def test_dataset_normalisation_uses_training_split_only() -> None:
    data = ImageDataModule(image_size=8, normalize="dataset", augment="none")
    data.setup("fit")
    # reference: digits pixels at 8 px are the raw images; mean/std over the training split's pixels
    raw = np.stack([np.asarray(img, dtype=np.float64) / 255.0 for img in data.splits.train.images])
    assert np.allclose(data.data_config.mean, raw.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(data.data_config.std, raw.std(axis=(0, 1, 2)), atol=1e-6)
    all_pixels = np.stack(
        [np.asarray(i, dtype=np.float64) / 255.0 for s in (data.splits.val, data.splits.test) for i in s.images]
    )
    assert not np.allclose(data.data_config.mean, all_pixels.mean(axis=(0, 1, 2)), atol=1e-6)
    batch = torch.stack([data.splits.train[i][0] for i in range(len(data.splits.train))])
    assert abs(batch.mean().item()) < 1e-4 and abs(batch.std().item() - 1) < 1e-2


@pytest.mark.parametrize("augment", ["basic", "randaugment", "trivialaugment"])
def test_augmentation_on_train_only(augment: str) -> None:
    data = ImageDataModule(image_size=16, augment=augment)
    data.setup("fit")
    torch.manual_seed(0)
    train_views = [data.splits.train[0][0] for _ in range(6)]
    assert any(not torch.equal(train_views[0], v) for v in train_views[1:])
    for split in (data.splits.val, data.splits.test):
        assert torch.equal(split[0][0], split[0][0])


def test_mixup_gives_soft_targets_in_training_only() -> None:
    from lightning.pytorch import Trainer

    data = ImageDataModule(image_size=16, mixup_alpha=0.4, cutmix_alpha=1.0, batch_size=8)
    data.setup("fit")
    data.trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    images, labels = next(iter(data.train_dataloader()))
    data.trainer.training = True
    mixed_images, soft = data.on_after_batch_transfer((images.clone(), labels), 0)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8))
    assert not torch.equal(mixed_images, images)
    data.trainer.training = False
    assert data.on_after_batch_transfer((images, labels), 0)[1] is labels


def test_setup_says_the_split_sizes_and_warns_when_one_test_image_is_worth_points(tmp_path: Path, capsys) -> None:
    # a 120-image folder under the defaults (15 % val, 15 % test): 18 test images, one is 100/18 = 5.6 points
    folder = ImageDataModule(source="folder", root=str(_folder(tmp_path, classes=3, per_class=40)), image_size=16)
    folder.setup("fit")
    out, err = capsys.readouterr()
    sizes = [len(folder.splits.train), len(folder.splits.val), len(folder.splits.test)]
    assert sizes == [84, 18, 18]
    assert out.splitlines() == [
        f"data: folder {tmp_path}, 3 classes, train 84 / val 18 / test 18 (val 15% + test 15% held out, split seed 0)"
    ]
    assert "test split has 18 images: one image is 5.6 points" in err and "--data.test_fraction (now 0.15)" in err
    # a cut test split is named with the option that tests on everything left over; rest leaves no warning
    subset = ImageDataModule(image_size=16, train_subset=300, eval_subset=30)
    subset.setup("test")
    out, err = capsys.readouterr()
    assert "train 300 / val 30 / test 30" in out and "one image is 3.3 points" in err
    assert "--data.test_split rest" in err
    rest = ImageDataModule(image_size=16, train_subset=300, eval_subset=30, test_split="rest")
    rest.setup("fit")
    out, err = capsys.readouterr()
    assert f"test {1797 - 300 - 30}" in out and "test_split rest" in out and err == ""


def test_eval_batches_are_normalised_once_a_batch_to_the_same_numbers_bit_for_bit(tmp_path: Path) -> None:
    """The eval loaders convert and normalise whole batches (transforms.BatchNormalize): the reference is the
    per-image transform (torchvision's to_tensor + Normalize on each image), compared exactly."""
    from torch.utils.data import DataLoader

    from toolkit.data.transforms import split_eval_transform

    data = ImageDataModule(backbone="test_resnet", image_size=24, eval_batch_size=64, augment="none")
    data.setup("fit")
    for samples, loader in ((data.splits.val, data.val_dataloader()), (data.splits.test, data.test_dataloader())):
        reference = DataLoader(samples, batch_size=64)  # the per-image transform, default collate
        assert loader.collate_fn is not reference.collate_fn
        pairs = list(zip(loader, reference, strict=True))
        assert len(pairs) == 5  # 270 images
        for (images, labels), (ref_images, ref_labels) in pairs:
            assert images.dtype == ref_images.dtype == torch.float32
            assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    # RGB and grayscale PIL images (uint8, converted with the batch) beside a float tensor image (as it was)
    transform = data.splits.test.transform
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (9, 11), dtype=np.uint8)).convert("RGB"),
        torch.rand(3, 30, 30),
    ]
    per_image, collate = split_eval_transform(transform)
    for batch in (images[:2], images):
        got, labels = collate([(per_image(image), i) for i, image in enumerate(batch)])
        assert torch.equal(got, torch.stack([transform(image) for image in batch]))
        assert labels.tolist() == list(range(len(batch)))
    assert data.train_dataloader().collate_fn is DataLoader([]).collate_fn  # training batches: per image, as before
