"""The data sources: every source is one loader with one signature, registered by name (``data.source``).

A :class:`Source` turns :class:`SourceArgs` (the datamodule's ``root``, ``name``, ``download``, fractions and split
seed) into ``datasets.Splits`` (train, val, test samples and the class names); ``fetch`` (optional) downloads once
per machine, before the ranks load (``LightningDataModule.prepare_data``). Adding a source is one
:func:`register_source` call next to its loader; ``tests/test_data_source_recipe.py`` adds a toy one and nothing else.
``ImageDataModule``'s ``source`` argument accepts the registered names (its ``Literal`` is read from
:data:`SOURCES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.datasets import (
    Splits,
    load_digits_samples,
    load_fashion_mnist_splits,
    load_folder_splits,
    load_torchvision_splits,
    three_way,
)
from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class SourceArgs:
    """What every loader is given (the datamodule's options)."""

    root: str | None
    name: str | None
    download: bool
    val_fraction: float
    test_fraction: float
    seed: int


@dataclass(frozen=True)
class Source:
    """A data source: ``load`` its splits; ``fetch`` them first where a download is needed (or None); ``carved``: the
    splits it holds out of its data by ``val_fraction``/``test_fraction`` (its others are its own); ``label``: how
    the data line names it (default: its registered name)."""

    load: Callable[[SourceArgs], Splits]
    fetch: Callable[[SourceArgs], None] | None = None
    carved: Callable[[SourceArgs], tuple[str, ...]] = lambda args: ()
    label: Callable[[SourceArgs], str] | None = None


#: the sources, by the name ``data.source`` takes
SOURCES: dict[str, Source] = {}


def register_source(name: str, source: Source) -> None:
    """Add a data source (see the module doc)."""
    SOURCES[name] = source


def get_source(name: str) -> Source:
    """The source called ``name``; an unknown one is one line naming the sources."""
    if name not in SOURCES:
        raise ToolkitError(f"data.source {name!r} is not a source; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def _digits(args: SourceArgs) -> Splits:
    samples, classes = load_digits_samples()
    train, val, test = three_way(samples, args.val_fraction, args.test_fraction, args.seed)
    return Splits(train, val, test, classes)


def _torchvision(args: SourceArgs) -> Splits:
    return load_torchvision_splits(args.name, args.root, args.download, args.val_fraction, args.seed)


def _torchvision_fetch(args: SourceArgs) -> None:
    if args.download:
        load_torchvision_splits(args.name, args.root, True, args.val_fraction, args.seed)


def _folder_carved(args: SourceArgs) -> tuple[str, ...]:
    """A folder without ``train/`` is one pool (val and test carved); with it, the splits it lacks are carved."""
    root = Path(args.root or "").expanduser()
    if not (root / "train").is_dir():
        return ("val", "test")
    return tuple(name for name in ("val", "test") if not (root / name).is_dir())


register_source("digits", Source(_digits, carved=lambda a: ("val", "test")))
register_source(
    "folder",
    Source(
        lambda a: load_folder_splits(a.root, a.val_fraction, a.test_fraction, a.seed),
        carved=_folder_carved,
        label=lambda a: f"folder {a.root}",
    ),
)
# torchvision: the dataset's own val split where it has one
register_source("torchvision", Source(_torchvision, fetch=_torchvision_fetch, label=lambda a: f"torchvision {a.name}"))
register_source(
    "fashion_mnist",
    Source(lambda a: load_fashion_mnist_splits(a.root, a.val_fraction, a.seed), carved=lambda a: ("val",)),
)
