"""The data: image sources behind one loader signature (``datasets``), transforms, and the Lightning datamodule.

``datamodule.ImageDataModule`` is the Lightning side; everything else here is plain torch/torchvision. The
datamodule is exported lazily (``toolkit.data.ImageDataModule``, the class path of configs written before the move)
so that importing a plain module of this package never loads Lightning.
"""

from __future__ import annotations

from toolkit import lazy_exports

__all__ = ["ImageDataModule"]

__getattr__ = lazy_exports(__name__, {"ImageDataModule": "toolkit.data.datamodule"})
