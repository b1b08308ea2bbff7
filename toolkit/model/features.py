"""Cached features for a frozen backbone: compute them once per split, then train the head on them.

A linear probe recomputes the same backbone features every epoch and every seed; with a frozen backbone (eval mode,
fixed weights) and a deterministic training transform they are a function of the image only. The train and val
splits are pushed through the backbone once (eval mode, ``torch.inference_mode``, batched, on the run's device
with the run's precision) and kept on disk under a key of everything that determines them, so the runs of a study
that share the backbone (seeds, head variants) compute them once. Training stays in the same Lightning loop: the
data module's loaders yield features instead of images, in the same order (the same sampler draws the same
permutation), and the classifier feeds a 2-D batch to the head only. A linear probe's test pass runs on cached
features too (:func:`attach_test`: same numbers, one extraction shared by the seeds); predict runs on images, and the
checkpoint holds the whole model. LP->FT switches the loaders back to images at the unfreeze epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, default_collate

from toolkit.data.datasets import Splits
from toolkit.errors import ToolkitError
from toolkit.model.checkpoint_data import load_data
from toolkit.model.components.registry import cache_switches
from toolkit.model.probe import ProbeSolution, solve_probe

FeatureCacheMode = Literal["auto", "on", "off"]
#: where caches live unless ``TOOLKIT_FEATURE_CACHE`` says otherwise (set by the user; the runner leaves it alone)
CACHE_ENV = "TOOLKIT_FEATURE_CACHE"
#: bump when the file layout or the extraction changes: old entries are then never read
_VERSION = 1
#: bump when the probe solver changes: solutions cached by an older one are then never read
PROBE_CACHE_VERSION = 1


class FeatureModel(Protocol):
    """What the cache needs of the classifier (``classifier.ImageClassifier`` is one; it imports this module).

    ``hparams`` has ``backbone`` and the switches of `toolkit.model.components.registry`; ``freezer`` has ``frozen`` and
    ``unfreeze_at_epoch``; ``trainer`` is the Lightning trainer (precision and its plugin).
    """

    hparams: Any
    freezer: Any
    changes: Any
    channels_last: bool
    backbone: torch.nn.Module
    trainer: Any

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features of a batch of images."""
        ...


@runtime_checkable
class FeatureData(Protocol):
    """The model's contract with the data module (``toolkit.data.datamodule.ImageDataModule`` is one): what the
    feature cache and the probe read and set. The model asks the trainer's data module through :func:`data_of`.

    ``feature_splits`` receives the :class:`CachedSplit` of the train and val splits; ``test_features`` is looked up
    when the test loader is built.
    """

    splits: Splits
    feature_splits: dict[str, Dataset]
    test_features: Callable[[], Dataset] | None
    batch_size: int
    eval_batch_size: int
    num_workers: int
    persistent_workers: bool
    augment: str
    mixup_alpha: float
    cutmix_alpha: float


def data_of(trainer: Any) -> FeatureData | None:
    """The trainer's data module where it keeps the contract (None for another data module or loaders alone)."""
    datamodule = getattr(trainer, "datamodule", None)
    return datamodule if isinstance(datamodule, FeatureData) else None


def extraction_batch(datamodule: FeatureData) -> int:
    """Features are extracted at the evaluation batch size (``data.eval_batch_size``: no gradients, large batches)."""
    return int(datamodule.eval_batch_size or datamodule.batch_size)


def cache_dir() -> Path:
    """``$TOOLKIT_FEATURE_CACHE``, else ``~/.cache/toolkit/features``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "toolkit" / "features")


def blockers(model: FeatureModel, datamodule: FeatureData | None, world_size: int) -> list[str]:
    """Why features cannot stand in for images in this fit (empty: they can)."""
    reasons = []
    if not model.freezer.frozen:
        reasons.append("the backbone trains (freeze_backbone: false)")
    if datamodule is None:
        reasons.append("the data module is not an ImageDataModule")
        return reasons
    if datamodule.augment != "none":
        reasons.append(f"data.augment is {datamodule.augment!r} (a random transform: features differ per epoch)")
    if datamodule.mixup_alpha > 0 or datamodule.cutmix_alpha > 0:
        reasons.append("mixup/cutmix mix images")
    if world_size > 1:
        reasons.append("distributed training shards the data per process")
    if model.freezer.unfreeze_at_epoch is not None and datamodule.persistent_workers:
        reasons.append("LP->FT with persistent loader workers (they would keep serving features after unfreezing)")
    return reasons


def decide(mode: FeatureCacheMode, reasons: list[str]) -> bool:
    """``auto``: on exactly when valid; ``on`` when invalid raises; ``off``: never."""
    if mode == "on" and reasons:
        raise ToolkitError(f"model.feature_cache on is invalid here: {'; '.join(reasons)}; use auto or off")
    return mode != "off" and not reasons


class CachedSplit(Dataset):
    """A split that yields whole batches of cached features while ``active``, else its images.

    Batches come from ``__getitems__`` (one indexing per batch, not per sample); one loader serves both modes, so
    LP->FT switches back to images without rebuilding it.
    """

    def __init__(self, samples: Dataset, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.samples, self.features, self.labels = samples, features, labels
        self.active = True

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Any:
        return (self.features[index], self.labels[index]) if self.active else self.samples[index]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        if self.active:
            index = torch.as_tensor(indices)
            return self.features[index], self.labels[index]
        return default_collate([self.samples[i] for i in indices])

    @staticmethod
    def collate_fn(batch: Any) -> Any:
        """Batches are collated already (see ``__getitems__``)."""
        return batch


def _digest(*parts: Any) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else repr(part).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """A digest of every parameter and buffer (names, shapes, values)."""
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        hasher.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def data_fingerprint(samples: Any) -> str:
    """A digest of a split's images and labels: pixels for in-memory images, path + size + mtime for files, and
    dataset + index for a torchvision dataset's samples."""
    hasher = hashlib.sha256(repr(list(samples.labels)).encode())
    dataset = getattr(samples, "dataset", None)
    if dataset is not None:  # a torchvision dataset: its images are indices into the dataset's own files
        where = f"{type(dataset).__name__}:{getattr(dataset, 'root', '')}:{getattr(dataset, 'train', '')}"
        hasher.update(f"{where}:{len(dataset)}".encode())
    for image in samples.images:
        if isinstance(image, int):
            hasher.update(f"{image},".encode())
        elif isinstance(image, (str, Path)):
            stat = os.stat(image)
            hasher.update(f"{image}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            hasher.update(f"{image.mode}:{image.size}".encode())
            hasher.update(image.tobytes())
    return hasher.hexdigest()


def cache_key(model: FeatureModel, samples: Any, precision: str, device: torch.device, batch_size: int) -> str:
    """Everything the features depend on: backbone, weights, switches, transform, data, precision, device, and the
    extraction batch size (a conv's float sums can split differently per batch size)."""
    hp = model.hparams
    # the registry's switches with cache_key=True (batchnorm, residual, residual_blocks), then what they changed
    switches = (*cache_switches(hp), tuple(model.changes), model.channels_last)
    return _digest(
        _VERSION,
        hp.backbone,
        weights_hash(model.backbone),
        switches,
        repr(samples.transform),
        data_fingerprint(samples),
        precision,
        device.type,
        batch_size,
    )


@torch.inference_mode()
def extract(
    model: FeatureModel, samples: Dataset, batch_size: int, num_workers: int, device: torch.device
) -> torch.Tensor:
    """The backbone's features of ``samples`` in order (eval mode, batched, on ``device``, the run's precision)."""
    trainer = model.trainer
    was_training = model.backbone.training
    model.backbone.to(device).eval()  # the strategy moves the whole model to this device right after setup
    chunks = []
    # its own generator: iterating a loader draws a seed, and a draw from the global RNG here would shift the
    # shuffling of every later epoch (a cache hit, or the uncached path, draws nothing)
    loader = DataLoader(
        samples, batch_size=batch_size, shuffle=False, num_workers=num_workers, generator=torch.Generator()
    )
    try:
        for images, _ in loader:
            images = trainer.precision_plugin.convert_input(images.to(device, non_blocking=True))
            with trainer.precision_plugin.forward_context():
                chunks.append(model.backbone_features(images).float().cpu())
    finally:
        model.backbone.train(was_training)
    return torch.cat(chunks)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # two runs of a study that start together: the second waits and loads what the first wrote
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_or_extract(
    model: FeatureModel, samples: Any, batch_size: int, num_workers: int, device: torch.device
) -> tuple[torch.Tensor, bool]:
    """The split's features from the disk cache, computing and storing them (atomically) on a miss.

    Returns:
        the features, and whether they came from the cache.
    """
    key = cache_key(model, samples, str(model.trainer.precision), device, batch_size)
    path = cache_dir() / f"{key}.pt"
    with _locked(path):
        if path.is_file():
            return load_data(path, what="feature cache file"), True
        features = extract(
            model, samples, batch_size, num_workers, device
        ).clone()  # a normal tensor, not an inference one
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(features, tmp)
        os.replace(tmp, path)
    return features, False


def attach(model: FeatureModel, datamodule: FeatureData, device: torch.device) -> list[str]:
    """Serve cached train and val features through ``datamodule``; returns one note per split for the log.

    Called from the model's ``setup("fit")``: after the data module's setup, before any loader is built.
    """
    notes = []
    for name in ("train", "val"):
        samples = getattr(datamodule.splits, name)
        features, hit = load_or_extract(model, samples, extraction_batch(datamodule), datamodule.num_workers, device)
        labels = torch.as_tensor(samples.labels)
        datamodule.feature_splits[name] = CachedSplit(samples, features, labels)
        notes.append(f"{name} {tuple(features.shape)} {'from the cache' if hit else 'computed'}")
    return notes


def test_blockers(model: FeatureModel, trainer: Any) -> list[str]:
    """Why this test pass cannot run on cached features (empty: it can). Only a linear probe's: a fine-tuned
    backbone is new in every run, so its features would be computed once and never read again."""
    hp = model.hparams
    reasons = []
    if not hp.freeze_backbone or hp.unfreeze_at_epoch is not None:
        reasons.append("the backbone was trained")
    if hp.feature_cache == "off":
        reasons.append("model.feature_cache is off")
    if getattr(model, "lesion_blocks", None):
        reasons.append("a test-time lesion")
    if trainer.world_size > 1:
        reasons.append("distributed testing shards the data per process")
    if data_of(trainer) is None:
        reasons.append("the data module is not an ImageDataModule")
    # a callback that reads the test batch may need its images (ensemble members, lesion sweeps); one that reads
    # only the predictions and labels says so with ``reads_test_images = False`` (RunHealth)
    readers = [
        type(cb).__name__
        for cb in trainer.callbacks
        if type(cb).on_test_batch_end is not Callback.on_test_batch_end and getattr(cb, "reads_test_images", True)
    ]
    if readers:
        reasons.append(f"{', '.join(readers)} read the test images")
    return reasons


def attach_test(model: FeatureModel, trainer: Any) -> None:
    """Let the test loader serve the test split's cached features where :func:`test_blockers` allows it.

    Called from the model's ``setup("test")``; the features are looked up when Lightning builds the test loader,
    after it restored the tested checkpoint, so the cache key hashes the weights that are tested. The extraction is
    the test pass's own computation (eval mode, the same batches at ``data.eval_batch_size``, the run's precision),
    so the metrics are the ones the images would give; a probe's seeds share one backbone, so they share one entry.
    """
    datamodule = data_of(trainer)
    if datamodule is not None:
        datamodule.test_features = None
    if datamodule is None or test_blockers(model, trainer):
        return

    def provide() -> CachedSplit:
        samples = datamodule.splits.test
        device = trainer.strategy.root_device
        feats, hit = load_or_extract(model, samples, extraction_batch(datamodule), datamodule.num_workers, device)
        rank_zero_info(f"test on cached features: {tuple(feats.shape)} {'from the cache' if hit else 'computed'}")
        return CachedSplit(samples, feats, torch.as_tensor(samples.labels))

    datamodule.test_features = provide


def probe_features(
    model: FeatureModel, datamodule: FeatureData, device: torch.device
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``(features, labels)`` of the train and val splits for the L-BFGS probe (:mod:`toolkit.model.probe`), cached.

    The train images go through the eval transform when the train transform is random (``data.augment``): the
    probe is solved once, on the images themselves, and augmentation acts from the first fine-tuning epoch.
    """
    if not hasattr(datamodule, "splits"):
        raise ToolkitError("model.probe lbfgs needs an ImageDataModule (it solves on the train and val features)")
    splits = datamodule.splits
    train = splits.train
    if datamodule.augment != "none":
        train = copy.copy(train)
        train.transform = splits.val.transform
    out = []
    for samples in (train, splits.val):
        feats, _ = load_or_extract(model, samples, extraction_batch(datamodule), datamodule.num_workers, device)
        out.append((feats, torch.as_tensor(samples.labels)))
    return out[0], out[1]


def solve_probe_cached(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float],
    label_smoothing: float,
) -> ProbeSolution:
    """`probe.solve_probe`, kept in the cache beside the features it was solved on.

    The solve is deterministic (float64 L-BFGS from zeros on one thread), so its result is a function of the features,
    labels, grid and smoothing: every run of a study with the same frozen backbone and split (the LP->FT rows of an
    ablation: their switches act from the fine-tuning epochs on) loads one solution instead of solving it again.
    Keyed by the bytes of the inputs themselves, so a cache can never hand a run another problem's head.
    """
    parts = [t.detach().cpu().contiguous().numpy().tobytes() for pair in (train, val) for t in pair]
    key = _digest(*parts, num_classes, tuple(grid), label_smoothing, torch.__version__, PROBE_CACHE_VERSION)
    path = cache_dir() / f"probe-{key}.pt"
    with _locked(path):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            return ProbeSolution(**{**saved, "grid": tuple(tuple(g) for g in saved["grid"])})
        except (OSError, RuntimeError, EOFError, TypeError, KeyError, pickle.UnpicklingError):
            pass  # missing or damaged: solve (and replace it)
        solution = solve_probe(train, val, num_classes, grid, label_smoothing)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(dataclasses.asdict(solution), tmp)
        os.replace(tmp, path)
    return solution


def set_active(datamodule: FeatureData | None, active: bool) -> None:
    """Serve features (True) or images (False) from now on (LP->FT: images from the unfreeze epoch)."""
    for split in datamodule.feature_splits.values() if datamodule is not None else ():
        if isinstance(split, CachedSplit):
            split.active = active
