"""Figure files, torch-free: matplotlib on the Agg backend, file-name-safe names, lay out + write + close.

Shared by the report's plots and by ``toolkit doctor`` and ``toolkit search``, which draw their own figures.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported here: tables alone do not need matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def slug(text: str) -> str:
    """A file-name-safe form of a metric or variant name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def save(fig: Any, path: Path) -> Path:
    """Lay out, write and close one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
