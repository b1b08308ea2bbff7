"""The module paths of the flat layout (before the domain packages), kept as thin aliases.

Configs and checkpoints written before the move name classes by those paths (``class_path:
toolkit.tracking.WandbLogger``, ``toolkit.schedules.WarmupSchedule``, ...). Importing an old path returns the module
at its new place (the same module object, so ``toolkit.schedules.WarmupSchedule is
toolkit.model.schedules.WarmupSchedule``) and warns once with a ``DeprecationWarning`` naming the new path. New code
and configs use the new paths or the short names exported by ``toolkit`` (``toolkit.WarmupSchedule``).

Written by hand: importlib has no declarative module alias; this is the documented finder/loader protocol
(``importlib.abc.MetaPathFinder``), installed by ``toolkit/__init__.py``, importing nothing heavy itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

from typing_extensions import override

#: old module -> new module (a package maps its submodules too: ``toolkit.components.registry``)
MOVED = {
    "toolkit.backbone": "toolkit.model.backbone",
    "toolkit.classifier": "toolkit.model.classifier",
    "toolkit.features": "toolkit.model.features",
    "toolkit.freezing": "toolkit.model.freezing",
    "toolkit.heads": "toolkit.model.heads",
    "toolkit.metrics": "toolkit.model.metrics",
    "toolkit.probe": "toolkit.model.probe",
    "toolkit.schedules": "toolkit.model.schedules",
    "toolkit.checkpoint_data": "toolkit.model.checkpoint_data",
    "toolkit.components": "toolkit.model.components",
    "toolkit.datasets": "toolkit.data.datasets",
    "toolkit.transforms": "toolkit.data.transforms",
    "toolkit.image_files": "toolkit.data.image_files",
    "toolkit.pixels": "toolkit.data.pixels",
    "toolkit.duplicates": "toolkit.data.duplicates",
    "toolkit.ckpt_model": "toolkit.lightning_cli.ckpt_model",
    "toolkit.checkpoint_io": "toolkit.lightning_cli.checkpoint_io",
    "toolkit.tracking": "toolkit.lightning_cli.tracking",
    "toolkit.short_help": "toolkit.lightning_cli.short_help",
    "toolkit.parsed_checks": "toolkit.lightning_cli.parsed_checks",
    "toolkit.epoch_line": "toolkit.study.epoch_line",
}


def new_name(old: str) -> str | None:
    """The module an old path now names, or None when ``old`` did not move."""
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before) :]
    return None


#: the short names ``toolkit`` exports (``toolkit.WarmupSchedule``) and the flat module that defined each
_SHORT = {
    "toolkit.ImageClassifier": "toolkit.classifier.ImageClassifier",
    "toolkit.ImageDataModule": "toolkit.data.ImageDataModule",
    "toolkit.WarmupSchedule": "toolkit.schedules.WarmupSchedule",
    "toolkit.WandbLogger": "toolkit.tracking.WandbLogger",
    "toolkit.data.datamodule.ImageDataModule": "toolkit.data.ImageDataModule",
}


def flat_path(class_path: str) -> str:
    """The spelling of a class path in the flat layout, whichever spelling was given (new module, old module or
    short name): what run ids hash and what code compares, so that a run's id and identity do not depend on where
    the class lives (``toolkit.model.schedules.WarmupSchedule`` -> ``toolkit.schedules.WarmupSchedule``)."""
    if class_path in _SHORT:
        return _SHORT[class_path]
    module, _, name = class_path.rpartition(".")
    for before, after in MOVED.items():
        if module == after or module.startswith(after + "."):
            return before + module[len(after) :] + "." + name
    return class_path


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    @override
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.target}; the old path is an alias for configs and checkpoints written "
            "before the move (write the new path, or the short name exported by toolkit)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.target)

    @override
    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at its new place is already imported."""


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` and loads them as their new modules."""

    @override
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        target_name = new_name(fullname)
        if target_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(target_name))


def install() -> None:
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        # first: an editable install's finder (or a stale copy of the package) must not answer an old path
        sys.meta_path.insert(0, MovedModules())
