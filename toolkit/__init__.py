"""toolkit: transfer learning and ablation studies on images (Lightning + timm + W&B).

The public classes are imported lazily so that ``toolkit report`` and ``toolkit ablate status`` start without
importing torch or Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from toolkit import _moved

__version__ = "0.1.0"
#: the distribution users install (``toolkit`` on the package index is an unrelated project); the import package
#: and the command are ``toolkit``
DISTRIBUTION = "toolkit-ablate"

_moved.install()  # the old flat paths (``toolkit.schedules``, ...) still import: see toolkit/_moved.py

_EXPORTS = {
    "ImageClassifier": "toolkit.model.classifier",
    "ImageDataModule": "toolkit.data.datamodule",
    "SnapshotEnsemble": "toolkit.callbacks.snapshot",
    "WarmupSchedule": "toolkit.model.schedules",
    "ToolkitError": "toolkit.errors",
    "WandbLogger": "toolkit.lightning_cli.tracking",
}

__all__ = [*_EXPORTS, "__version__"]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` (PEP 562) that imports each exported name from its module on first use
    (``exports``: name -> module), so importing the package loads none of them."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
