"""Figure files, torch-free: matplotlib on the Agg backend, file-name-safe names, lay out + write + close.

Shared by the report's plots and by ``toolkit doctor`` and ``toolkit search``, which draw their own figures.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from toolkit.atomic import write_atomically


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
    """Lay out, write (atomically: a failed write leaves no partial PNG) and close one figure."""
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png"))
    pyplot().close(fig)
    return path
