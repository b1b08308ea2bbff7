"""Image sources (digits, an image folder, a torchvision dataset, Fashion-MNIST offline) as samples and splits."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from toolkit.atomic import current_umask
from toolkit.data.image_files import FolderWalk, class_samples
from toolkit.data.pixels import check_mode, to_rgb
from toolkit.errors import ToolkitError


class ImageSamples(Dataset):
    """(image, label) pairs where an image is a PIL image or a file path; ``transform`` applies to the image."""

    def __init__(self, images: Sequence[Any], labels: Sequence[int], transform: Callable | None = None) -> None:
        self.images, self.labels, self.transform = images, list(labels), transform
        self.ids: list[str] | None = None  # what each row is called in predictions (set for the predicted samples)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if isinstance(image, (str, Path)):
            try:
                with Image.open(image) as handle:
                    image = to_rgb(handle)
            except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a file that changed since the check
                raise ToolkitError(
                    f"image {image} could not be read during training ({err}); it changed after the check before "
                    "training (a copy still running, NFS, rsync?): replace it, then resume with --ckpt_path last"
                ) from None
        return (self.transform(image) if self.transform else image), self.labels[index]

    def subset(self, indices: Sequence[int]) -> ImageSamples:
        return ImageSamples([self.images[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class Splits:
    """The train/val/test samples of a source and its class names."""

    train: ImageSamples
    val: ImageSamples
    test: ImageSamples
    class_names: list[str]


def split_indices(labels: Sequence[int], fractions: tuple[float, float], seed: int) -> tuple[list[int], list[int]]:
    """Deterministic stratified split of ``range(len(labels))`` into (rest, part) with ``part`` = fractions[1]."""
    rest_frac, part_frac = fractions
    indices = np.arange(len(labels))
    if part_frac <= 0:
        return indices.tolist(), []
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    try:
        rest, part = train_test_split(
            indices, test_size=part_frac / (rest_frac + part_frac), random_state=seed, stratify=stratify
        )
    except ValueError as err:  # sklearn: a split smaller than the number of classes, or an empty side
        raise ToolkitError(
            f"cannot split {len(labels)} images of {int((counts > 0).sum())} classes into train/val/test with "
            f"these fractions ({err}); add images, or give root/val and root/test folders, or lower "
            "--data.val_fraction/--data.test_fraction"
        ) from err
    return sorted(rest.tolist()), sorted(part.tolist())


def three_way(samples: ImageSamples, val_fraction: float, test_fraction: float, seed: int) -> tuple[ImageSamples, ...]:
    """Split one sample set into train/val/test by fractions, stratified by label, from ``seed``."""
    rest, test = split_indices(samples.labels, (1.0 - test_fraction, test_fraction), seed)
    rest_labels = [samples.labels[i] for i in rest]
    train_pos, val_pos = split_indices(rest_labels, (1.0 - test_fraction - val_fraction, val_fraction), seed)
    splits = (
        samples.subset([rest[i] for i in train_pos]),
        samples.subset([rest[i] for i in val_pos]),
        samples.subset(test),
    )
    classes = len(set(samples.labels))
    for name, part, fraction in zip(("train", "val", "test"), splits, (1.0, val_fraction, test_fraction), strict=True):
        # a class missing from a split makes its accuracy/F1 mean something else than for the others
        if fraction > 0 and len(set(part.labels)) < classes:
            raise ToolkitError(
                f"{len(samples)} images of {classes} classes are too few for a stratified train/val/test split: "
                f"the {name} split gets {len(part)} images and misses a class; add images, or give root/val and "
                "root/test folders"
            )
    return splits


def load_digits_samples() -> tuple[ImageSamples, list[str]]:
    """scikit-learn's bundled 1,797 8x8 digit images as 3-channel PIL images (no download)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = [Image.fromarray(np.repeat(p[:, :, None], 3, axis=2), mode="RGB") for p in pixels]
    return ImageSamples(images, digits.target.tolist()), [str(c) for c in digits.target_names]


def _folder_samples(
    root: Path, walk: FolderWalk, class_to_idx: dict[str, int] | None = None
) -> tuple[ImageSamples, list[str]]:
    paths, labels, classes = class_samples(root, walk, class_to_idx)
    if not paths:
        raise ToolkitError(f"folder {root} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...) in class subfolders")
    return ImageSamples(paths, labels), classes


def _two_classes(root: Path, classes: list[str]) -> None:
    if len(classes) < 2:
        raise ToolkitError(
            f"folder {root} has only one class ({classes[0]}); a classifier needs at least two class subfolders"
        )


def _check_known_classes(folder: Path, mapping: dict[str, int]) -> None:
    """A ``val``/``test`` class that ``train`` lacks would be dropped silently (ImageFolder reads only known ones)."""
    # every class folder of val/ or test/ (hidden folders such as .ipynb_checkpoints are no classes)
    extra = sorted(
        d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in mapping
    )
    if extra:
        raise ToolkitError(
            f"folder {folder} has class(es) {', '.join(extra)} that {folder.parent / 'train'} lacks; add them to "
            "train/ or remove them"
        )


def load_folder_splits(root: str | None, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    """An ImageFolder tree: ``root/train`` (+ optional ``val``/``test``), or one class-per-folder tree split."""
    if not root:
        raise ToolkitError("source 'folder' needs a root: --data.root /path/to/images")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ToolkitError(f"folder root {path} does not exist; pass --data.root pointing at an image folder")
    walk = FolderWalk(path)  # one walk for all splits: an image linked into two of them is refused
    try:
        return _folder_splits(path, walk, val_fraction, test_fraction, seed)
    finally:
        walk.warn_skipped()


def _folder_splits(path: Path, walk: FolderWalk, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    if not (path / "train").is_dir():
        samples, classes = _folder_samples(path, walk)
        _two_classes(path, classes)
        train, val, test = three_way(samples, val_fraction, test_fraction, seed)
        return Splits(train, val, test, classes)
    train, classes = _folder_samples(path / "train", walk)
    _two_classes(path / "train", classes)
    mapping = {c: i for i, c in enumerate(classes)}
    for name in ("val", "test"):
        if (path / name).is_dir():
            _check_known_classes(path / name, mapping)
    given = {name: _folder_samples(path / name, walk, mapping)[0] for name in ("val", "test") if (path / name).is_dir()}
    carve = (0.0 if "val" in given else val_fraction, 0.0 if "test" in given else test_fraction)
    train, val, test = three_way(train, carve[0], carve[1], seed)
    return Splits(train, given.get("val", val), given.get("test", test), classes)


def verify_images(samples: ImageSamples) -> list[str | None]:
    """Decode every file-backed image once, so a broken or truncated file fails before training and is named; returns
    the digest of each image's bytes (None for an in-memory image), for ``duplicates.check_duplicates``.

    ``Image.verify`` checks headers and PNG checksums only; a truncated JPEG passes it, so each image is decoded in
    full (``load``), which is what the data loader will do. An image with pixels no 8-bit scaling fits is refused.
    The bytes are read once, then hashed and decoded from memory.
    """
    digests: list[str | None] = []
    for image in samples.images:
        if not isinstance(image, (str, Path)):
            digests.append(None)
            continue
        buffer = None
        try:
            data = Path(image).read_bytes()
            buffer = io.BytesIO(data)
            with Image.open(buffer) as handle:
                handle.load()
                mode = handle.mode
        except Exception as err:  # PIL raises many types for undecodable files
            detail = str(err).replace(repr(buffer), repr(str(image)))  # PIL names the buffer it was given
            raise ToolkitError(f"cannot decode image {image} ({detail}); remove or replace the file") from err
        check_mode(mode, str(image))
        digests.append(hashlib.blake2b(data, digest_size=16).hexdigest())
    return digests


#: the label of an image whose class is unknown (predicting a folder without class subfolders)
NO_LABEL = -1


def sample_ids(samples: ImageSamples, tag: str) -> list[str]:
    """A name for each sample: its file path, else ``<tag>[<index>]`` (in-memory and torchvision images)."""
    return [str(im) if isinstance(im, (str, Path)) else f"{tag}[{i}]" for i, im in enumerate(samples.images)]


def load_predict_samples(source: str, class_names: Sequence[str]) -> tuple[ImageSamples, list[str]]:
    """Images to predict: a folder (recursive, sorted) or a text file of paths; labelled where their folder is a class.

    Returns:
        The samples (label `NO_LABEL` where unknown) and each one's path as given.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        walk = FolderWalk(path)
        files = [Path(f) for f in walk.images(path)]
        walk.warn_skipped()
        where = f"folder {path}"
    elif path.is_file():
        try:
            lines = [line.strip() for line in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as err:
            raise ToolkitError(f"--data.predict_root {path}: not a text file of image paths ({err})") from err
        files = [(path.parent / line).expanduser() for line in lines if line and not line.startswith("#")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ToolkitError(
                f"--data.predict_root {path} lists {len(missing)} missing image(s), e.g. {missing[0]}; fix the list"
            )
        where = f"list {path}"
    else:
        raise ToolkitError(f"--data.predict_root {path} does not exist; pass an image folder or a text file of paths")
    if not files:
        raise ToolkitError(f"{where} holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); pass --data.predict_root")
    index = {name: i for i, name in enumerate(class_names)}
    labels = [index.get(f.parent.name, NO_LABEL) for f in files]
    return ImageSamples([str(f) for f in files], labels), [str(f) for f in files]


def _torchvision_split(cls: type, root: str, split: str, download: bool) -> Any:
    params = inspect.signature(cls).parameters
    if "split" in params:
        return cls(root, split=split, download=download)
    if "train" in params:
        return cls(root, train=split == "train", download=download)
    raise ToolkitError(f"torchvision dataset {cls.__name__} has neither a 'split' nor a 'train' argument")


def load_torchvision_splits(
    name: str | None, root: str | None, download: bool, val_fraction: float, seed: int
) -> Splits:
    """A named torchvision dataset (CIFAR10, Flowers102, ...): its own val split if it has one, else carved."""
    import torchvision.datasets as tvd

    if not name or not isinstance(getattr(tvd, name, None), type):
        raise ToolkitError(
            f"unknown torchvision dataset {name!r}; pass --data.name CIFAR10 (or CIFAR100, Flowers102, ...)"
        )
    cls, root = getattr(tvd, name), str(Path(root or "data").expanduser())
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        # every DDP rank builds the data module: one downloads at a time, the others find the files there
        with FileLock(str(Path(root) / f".{name}.lock")):
            train = _torchvision_split(cls, root, "train", download)
            test = _torchvision_split(cls, root, "test", download)
            has_val = "split" in inspect.signature(cls).parameters
            val = _torchvision_split(cls, root, "val", download) if has_val else None
    except RuntimeError as err:
        raise ToolkitError(
            f"{name} not found under {root} ({err}); add --data.download true or fix --data.root"
        ) from err
    except OSError as err:  # URLError and socket errors: the download needs the network
        reason = getattr(err, "reason", None) or err
        raise ToolkitError(
            f"{name} is not under {root} and could not be downloaded ({reason}); download it on a machine with "
            f"network access into {root} (or point --data.root at a copy), then run with --data.download false"
        ) from err

    def wrap(ds: Any) -> ImageSamples:
        return _TorchvisionSamples(ds)

    classes = [str(c) for c in getattr(train, "classes", [])] or [str(i) for i in range(_num_labels(train))]
    if val is None:
        samples = wrap(train)
        rest, part = split_indices(samples.labels, (1.0 - val_fraction, val_fraction), seed)
        return Splits(samples.subset(rest), samples.subset(part), wrap(test), classes)
    return Splits(wrap(train), wrap(val), wrap(test), classes)


def _labels_of(ds: Any) -> list[int]:
    for attr in ("targets", "_labels", "labels"):
        if hasattr(ds, attr):
            return [int(y) for y in getattr(ds, attr)]
    return [int(ds[i][1]) for i in range(len(ds))]


def _num_labels(ds: Any) -> int:
    return max(_labels_of(ds)) + 1


class _TorchvisionSamples(ImageSamples):
    """A torchvision dataset seen as samples: images are indices read lazily from the dataset."""

    def __init__(self, dataset: Any, indices: Sequence[int] | None = None, transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        all_labels = _labels_of(dataset)
        super().__init__(self.indices, [all_labels[i] for i in self.indices], transform)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[self.indices[index]]
        image = to_rgb(image) if isinstance(image, Image.Image) else image
        return (self.transform(image) if self.transform else image), label

    def subset(self, indices: Sequence[int]) -> ImageSamples:
        out = _TorchvisionSamples.__new__(_TorchvisionSamples)
        out.dataset, out.indices = self.dataset, [self.indices[i] for i in indices]
        ImageSamples.__init__(out, out.indices, [self.labels[i] for i in indices])
        return out


def stratified_subset(samples: ImageSamples, size: int, seed: int) -> ImageSamples:
    """``size`` samples drawn from ``samples`` with the class proportions kept, the same for the same seed."""
    if size >= len(samples):
        return samples
    labels = np.asarray(samples.labels)
    counts = np.bincount(labels)
    stratify = labels if size >= len(counts[counts > 0]) and counts[counts > 0].min() >= 2 else None
    _, part = train_test_split(np.arange(len(labels)), test_size=size, random_state=seed, stratify=stratify)
    return samples.subset(sorted(part.tolist()))


#: where Debian's ``dataset-fashion-mnist`` package installs the four IDX files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _unpack_fashion_mnist(raw: Path, source: Path) -> None:
    """Gunzip the Debian files into torchvision's raw folder once; each file is renamed into place when complete.

    torchvision reads the raw IDX files offline but would try to download for the ``.gz`` copies (their md5s differ
    from its list), so they are unpacked here.
    """
    raw.mkdir(parents=True, exist_ok=True)
    for name in _FASHION_FILES:
        if (raw / name).is_file():
            continue
        packed = source / f"{name}.gz"
        if not packed.is_file():
            raise ToolkitError(
                f"Fashion-MNIST file {packed} not found; install it (apt-get install dataset-fashion-mnist) or put "
                f"the four IDX files in {raw}"
            )
        fd, tmp = tempfile.mkstemp(dir=raw, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(packed, "rb") as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the umask decides who reads it
            os.replace(tmp, raw / name)
        finally:
            Path(tmp).unlink(missing_ok=True)


def load_fashion_mnist_splits(root: str | None, val_fraction: float, seed: int, source: Path | None = None) -> Splits:
    """Fashion-MNIST (60k train, 10k test, 28x28 grayscale shown as RGB) from Debian's package, no download.

    Args:
        root: data root; the files go to ``<root>/FashionMNIST/raw`` (default ``$TOOLKIT_CACHE/data``).
        val_fraction: share of the training set held out for validation (stratified, from ``seed``).
        seed: split seed.
        source: folder of the ``.gz`` files; default `DEBIAN_FASHION_MNIST`.
    """
    from toolkit.weights import cache_dir

    base = Path(root).expanduser() if root else cache_dir() / "data"
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / ".FashionMNIST.unpack.lock")):  # DDP ranks and parallel runs unpack once
        _unpack_fashion_mnist(base / "FashionMNIST" / "raw", source or DEBIAN_FASHION_MNIST)
    return load_torchvision_splits("FashionMNIST", str(base), False, val_fraction, seed)
