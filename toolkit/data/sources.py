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
    """A data source: ``load`` its splits; ``fetch`` them first where a download is needed (or None)."""

    load: Callable[[SourceArgs], Splits]
    fetch: Callable[[SourceArgs], None] | None = None


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


register_source("digits", Source(_digits))
register_source("folder", Source(lambda a: load_folder_splits(a.root, a.val_fraction, a.test_fraction, a.seed)))
register_source("torchvision", Source(_torchvision, fetch=_torchvision_fetch))
register_source("fashion_mnist", Source(lambda a: load_fashion_mnist_splits(a.root, a.val_fraction, a.seed)))
