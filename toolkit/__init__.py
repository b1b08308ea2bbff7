"""toolkit: transfer learning and ablation studies on images (Lightning + timm + W&B).

The public classes are imported lazily so that ``toolkit report`` and ``toolkit ablate status`` start without
importing torch or Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImageClassifier": "toolkit.classifier",
    "ImageDataModule": "toolkit.data",
    "SnapshotEnsemble": "toolkit.callbacks.snapshot",
    "WarmupSchedule": "toolkit.schedules",
    "ToolkitError": "toolkit.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
