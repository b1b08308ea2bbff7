"""The data: image sources behind one loader signature (``datasets``), transforms, and the Lightning datamodule.

``datamodule.ImageDataModule`` is the Lightning side; everything else here is plain torch/torchvision. The
datamodule is exported lazily (``toolkit.data.ImageDataModule``, the class path of configs written before the move)
so that importing a plain module of this package never loads Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["ImageDataModule"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("toolkit.data.datamodule"), name)
    raise AttributeError(f"module 'toolkit.data' has no attribute {name!r}")
