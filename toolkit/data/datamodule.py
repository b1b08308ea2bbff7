"""ImageDataModule: digits, an image folder or a torchvision dataset, split by seed, with timm transforms."""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from toolkit.data import describe
from toolkit.data.datasets import (
    ImageSamples,
    Splits,
    load_predict_samples,
    sample_ids,
    stratified_subset,
    verify_images,
)
from toolkit.data.duplicates import SPLITS, Duplicates, check_duplicates
from toolkit.data.sources import SOURCES, SourceArgs, get_source
from toolkit.data.transforms import (
    Augment,
    DataConfig,
    create_eval_transform,
    create_train_transform,
    resolve_backbone_data_config,
    split_eval_transform,
)
from toolkit.errors import ToolkitError

#: the smallest ``eval_subset``: below 20 images one image moves val/acc by more than 5 points, so the best-val
#: checkpoint is chosen on noise; and each class is seen at least twice (a stratified subset, macro-F1 per class)
MIN_EVAL_SUBSET, MIN_EVAL_PER_CLASS = 20, 2


class ImageDataModule(pl.LightningDataModule):
    """Train/val/test image data for a timm backbone.

    Args:
        source: a source of ``data/sources.py``: ``digits`` (scikit-learn's bundled 8x8 digits, no download),
            ``folder`` (an ImageFolder root), ``torchvision`` (a named torchvision dataset) or ``fashion_mnist``
            (Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, offline).
        root: image folder root (``folder``), download directory (``torchvision``) or where Fashion-MNIST is
            unpacked (default ``$TOOLKIT_CACHE/data``).
        name: torchvision dataset class name, e.g. ``CIFAR10``.
        download: let torchvision download the dataset.
        backbone: timm model name whose data config (size, mean/std, interpolation, crop) sets the transforms;
            linked from ``model.backbone`` by the CLI.
        image_size: override the backbone's input size.
        normalize: ``backbone`` uses the backbone's mean/std; ``dataset`` computes them on the training split only.
        augment: training augmentation level; val and test are never augmented.
        mixup_alpha: timm Mixup alpha for training batches (0 = off); targets become soft.
        cutmix_alpha: timm CutMix alpha for training batches (0 = off).
        val_fraction: share of the data held out for validation where the source has no val split.
        test_fraction: share held out for testing where the source has no test split.
        split_seed: seed of the deterministic train/val/test split (and of the subsets); ``seed`` ties it to the
            run's seed (``seed_everything``), so each seed of a study also draws its own split.
        train_subset: use this many training samples (stratified, drawn from ``split_seed``); None = all.
        eval_subset: use at most this many validation and this many test samples (stratified); None = all. At
            least 20 and 2 per class (below, one image moves val/acc by more than 5 points: the checkpoint would be
            chosen on noise).
        test_split: ``split`` tests on the source's test split (cut to ``eval_subset``); ``rest`` tests on every
            sample not used for training or validation (the test split, and what the train and val subsets left
            out: 1,377 of the 1,797 digits with 300 train / 120 val), at the cost of one forward pass.
        test_subset: test on a stratified subset of this many test samples, drawn from ``split_seed`` after
            ``test_split`` (for sweeps that test many times, e.g. the lesion curve); None = the whole test split.
        duplicates: image files with identical bytes in two classes or two splits: ``refuse`` names them;
            ``drop`` keeps one copy (the first in train, val, test order; none of an image with two labels).
        batch_size: samples per training batch.
        eval_batch_size: samples per batch when no gradient is computed: validation, test, predict and feature
            extraction (large batches cost less per image: measured on the quickstart model, ``channels_last``, one
            CPU thread, batch 128 evaluates an image in a third of batch 16's time). None = ``batch_size``.
        num_workers: dataloader worker processes.
        pin_memory: pin host memory; None = only when CUDA is available.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        predict_root: what ``toolkit predict`` predicts: an image folder (searched recursively) or a text file of
            image paths (one a line, relative to the file's folder); None = the test split. An image whose parent
            folder is named like a class gets that label; the others have none.
    """

    def __init__(
        self,
        source: Literal[tuple(SOURCES)] = "digits",  # type: ignore[valid-type]
        root: str | None = None,
        name: str | None = None,
        download: bool = False,
        backbone: str = "test_resnet",
        image_size: int | None = None,
        normalize: Literal["backbone", "dataset"] = "backbone",
        augment: Augment = "basic",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int | Literal["seed"] = 0,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        test_split: Literal["split", "rest"] = "split",
        test_subset: int | None = None,
        duplicates: Duplicates = "refuse",
        batch_size: int = 64,
        eval_batch_size: int | None = 128,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        predict_root: str | None = None,
    ) -> None:
        super().__init__()
        eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        checked = (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
        )
        for option, value, low in checked:
            if value < low:
                raise ToolkitError(f"--data.{option} {value}: must be >= {low}")
        if image_size is not None and image_size < 1:
            raise ToolkitError(f"--data.image_size {image_size}: must be a positive number of pixels, or null")
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ToolkitError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ToolkitError("mixup_alpha and cutmix_alpha must be >= 0 (0 turns them off)")
        for option, size in (
            ("train_subset", train_subset),
            ("eval_subset", eval_subset),
            ("test_subset", test_subset),
        ):
            if size is not None and size < 1:
                raise ToolkitError(f"{option} must be a positive number of samples, or null for all; got {size}")
        if (mixup_alpha > 0 or cutmix_alpha > 0) and batch_size % 2:
            raise ToolkitError(f"mixup/cutmix pair samples within a batch: use an even batch_size, not {batch_size}")
        if split_seed != "seed" and not 0 <= split_seed <= 2**32 - 1:  # sklearn's range: else it blames the split
            raise ToolkitError(f"--data.split_seed {split_seed}: a seed is an integer in [0, 2**32 - 1], or 'seed'")
        if split_seed == "seed":  # `toolkit fit` gives it the run's seed_everything before building this
            raise ToolkitError(
                "data.split_seed: seed means the run's seed_everything, which toolkit fit passes in; give the seed "
                "itself (an integer) when building the data module in Python"
            )
        self.save_hyperparameters(logger=False)
        self.source, self.root, self.name, self.download = source, root, name, download
        self.backbone, self.image_size, self.normalize, self.augment = backbone, image_size, normalize, augment
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.train_subset, self.eval_subset, self.test_split = train_subset, eval_subset, test_split
        self.test_subset = test_subset
        self.duplicates = duplicates
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self._splits: Splits | None = None
        self.data_config: DataConfig = resolve_backbone_data_config(backbone, image_size)
        self._mixup: Mixup | None = None
        #: split name -> cached backbone features standing in for its images (set by toolkit.model.features)
        self.feature_splits: dict[str, Dataset] = {}
        #: the test split's cached features, looked up when the test loader is built (set by toolkit.model.features)
        self.test_features: Callable[[], Dataset] | None = None
        self._ready = False
        self.predict_root = predict_root
        self._predict: ImageSamples | None = None
        self.splits  # noqa: B018 - load now: a bad source fails before any model is built
        self._check_batches()
        if predict_root is not None:
            self.predict_samples  # noqa: B018 - a bad folder or list fails before the checkpoint is read

    @property
    def splits(self) -> Splits:
        """The train/val/test samples, loaded once."""
        if self._splits is None:
            self._splits = self._subsets(get_source(self.source).load(self.source_args()))
        return self._splits

    def source_args(self) -> SourceArgs:
        """What this module's source is loaded with."""
        return SourceArgs(self.root, self.name, self.download, self.val_fraction, self.test_fraction, self.split_seed)

    def _drop_last(self) -> bool:
        """Whether training drops its last, incomplete batch.

        timm's Mixup needs even batches; otherwise only a last batch of ONE sample is dropped: BatchNorm cannot
        normalise a single sample (1x1 feature maps) and would crash at the end of every epoch. Dropping it depends on
        the data and the batch size only, so every variant of an ablation sees the same samples.
        """
        mixing = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        return mixing or len(self.splits.train) % self.batch_size == 1

    def _check_batches(self) -> None:
        train = len(self.splits.train)
        if self._drop_last() and train < self.batch_size:
            why = "mixup/cutmix drop the incomplete last batch" if train != 1 else "one sample cannot be batch-normed"
            raise ToolkitError(
                f"--data.batch_size {self.batch_size} is larger than the training split ({train} images) and {why}, "
                "so no training batch would remain; lower --data.batch_size"
            )

    def _subsets(self, splits: Splits) -> Splits:
        """Apply ``train_subset``/``eval_subset``; the class list stays the source's."""
        seed = self.split_seed
        classes = len(splits.class_names)
        if self.train_subset is not None and self.train_subset < classes:
            raise ToolkitError(
                f"--data.train_subset {self.train_subset} is smaller than the {classes} classes: some classes would "
                f"get no training image (a stratified subset cannot hold); use at least {classes}"
            )
        least = max(MIN_EVAL_SUBSET, MIN_EVAL_PER_CLASS * classes)
        if self.eval_subset is not None and self.eval_subset < least:
            raise ToolkitError(
                f"--data.eval_subset {self.eval_subset}: checkpoints would be chosen and runs tested on so few images "
                f"that one image moves the accuracy by {100 / self.eval_subset:.0f} points; use at least {least} "
                f"({MIN_EVAL_PER_CLASS} per class, {MIN_EVAL_SUBSET} in all), or null for all"
            )
        full = Splits(splits.train, splits.val, splits.test, splits.class_names)
        if self.train_subset is not None:
            splits.train = stratified_subset(splits.train, self.train_subset, seed)
        if self.eval_subset is not None:
            splits.val = stratified_subset(splits.val, self.eval_subset, seed)
            splits.test = stratified_subset(splits.test, self.eval_subset, seed)
        if self.test_split == "rest":
            splits.test = unused_samples(full, splits)
        if self.test_subset is not None:
            splits.test = stratified_subset(splits.test, self.test_subset, seed)
        return splits

    @property
    def num_classes(self) -> int:
        """Number of classes (linked to ``model.num_classes``)."""
        return len(self.splits.class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self.splits.class_names)

    @override
    def prepare_data(self) -> None:
        fetch = get_source(self.source).fetch
        if fetch is not None:
            fetch(self.source_args())

    @override
    def setup(self, stage: str) -> None:
        if self._ready:  # fit then test in one process: the images are checked and the statistics known
            return
        self._ready = True
        splits = self.splits
        parts = (splits.train, splits.val, splits.test)
        digests = [verify_images(samples) for samples in parts]  # decoded and hashed: one read of each file
        kept = check_duplicates(list(zip(SPLITS, parts, digests, strict=True)), splits.class_names, self.duplicates)
        splits.train, splits.val, splits.test = kept["train"], kept["val"], kept["test"]
        config = self.data_config
        if self.normalize == "dataset":
            mean, std = dataset_mean_std(splits.train, config)
            config = replace(config, mean=mean, std=std)
        self.data_config = config
        splits.train.transform = create_train_transform(config, self.augment)
        eval_transform = create_eval_transform(config)
        splits.val.transform = splits.test.transform = eval_transform
        if stage in ("fit", "validate", "test"):
            describe.say(describe.data_line(self))
            warning = describe.small_test_warning(self) if stage != "validate" else None
            if warning:
                describe.say(warning, sys.stderr)
        if self.mixup_alpha > 0 or self.cutmix_alpha > 0:
            self._mixup = Mixup(
                mixup_alpha=self.mixup_alpha,
                cutmix_alpha=self.cutmix_alpha,
                label_smoothing=0.0,  # label smoothing stays on the model's loss
                num_classes=self.num_classes,
            )

    def _loader(self, samples: Dataset, train: bool) -> DataLoader:
        collate = getattr(samples, "collate_fn", None)  # cached features come in whole batches
        split = split_eval_transform(getattr(samples, "transform", None)) if not train and collate is None else None
        if split is not None:  # to float and normalised once a batch: the same numbers (transforms.BatchNormalize)
            samples = copy.copy(samples)
            samples.transform, collate = split
        return DataLoader(
            samples,
            collate_fn=collate,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train and self._drop_last(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    @override
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.feature_splits.get("train", self.splits.train), train=True)

    @override
    def val_dataloader(self) -> DataLoader:
        return self._loader(self.feature_splits.get("val", self.splits.val), train=False)

    @override
    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_features() if self.test_features else self.splits.test, train=False)

    @property
    def predict_samples(self) -> ImageSamples:
        """What ``toolkit predict`` predicts (``predict_root``, else the test split), with ``ids`` naming each row."""
        if self._predict is None:
            if self.predict_root is None:
                samples = self.splits.test
                ids = sample_ids(samples, f"{self.source}:test")
            else:
                samples, ids = load_predict_samples(self.predict_root, self.class_names)
            verify_images(samples)
            samples.ids = ids
            self._predict = samples
        return self._predict

    @override
    def predict_dataloader(self) -> DataLoader:
        samples = self.predict_samples
        samples.transform = create_eval_transform(self.data_config)
        return self._loader(samples, train=False)

    @override
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self._mixup is not None and self.trainer is not None and self.trainer.training:
            images, targets = batch
            return self._mixup(images, targets)
        return batch


def unused_samples(full: Splits, used: Splits) -> ImageSamples:
    """Every sample of ``full`` that ``used`` does not train or validate on: the test split and what the train and
    val subsets left out, in a fixed order (``test_split: rest``)."""
    if any(type(part) is not ImageSamples for part in (full.train, full.val, full.test)):
        raise ToolkitError(
            "data.test_split rest needs a source whose splits are drawn from one pool of images (digits, folder); "
            "use test_split: split"
        )
    # the subsets hold the same image objects as the full splits: membership by identity, not by pixels
    taken = {id(image) for image in (*used.train.images, *used.val.images)}
    images, labels = [], []
    for part in (full.test, full.train, full.val):
        for image, label in zip(part.images, part.labels, strict=True):
            if id(image) not in taken:
                images.append(image)
                labels.append(label)
    return ImageSamples(images, labels)


def dataset_mean_std(samples: ImageSamples, config: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``samples`` after resizing, before normalisation (training split only)."""
    to_tensor = create_eval_transform(replace(config, mean=(0.0,) * 3, std=(1.0,) * 3))
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    for image, _ in ImageSamples(samples.images, samples.labels, to_tensor):
        pixels = image.reshape(image.shape[0], -1).double()
        total += pixels.sum(1)
        total_sq += (pixels**2).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
