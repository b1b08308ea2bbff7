"""The one-line-per-epoch format of a run's log: written by the ``EpochLog`` callback, read by ``ablate status``.

Torch-free, so the status table can read it without importing torch or Lightning. Epochs are numbered from 0, as
everywhere in the toolkit (Lightning's ``current_epoch`` and progress bar, W&B's ``epoch``, checkpoint names,
``tested_epoch``, ``unfreeze_at_epoch``, the report's plots): the line after the first epoch says ``epoch 0/11`` for
12 epochs, as Lightning's progress bar does.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

#: ``epoch 2/11: train/loss 0.4120, val/acc 0.9210 (3.2 s)``; groups: epoch, last epoch (both from 0), metrics, seconds
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+|\?): (.*) \(([\d.]+) s\)$")


def format_epoch_line(epoch: int, max_epochs: int | None, metrics: dict[str, float], seconds: float) -> str:
    """The line for a finished epoch: ``epoch`` counted from 0 (Lightning's ``current_epoch``), out of ``max_epochs``
    (shown as the last epoch's number, ``max_epochs - 1``, like Lightning's progress bar)."""
    shown = ", ".join(f"{k} {v:.4f}" if math.isfinite(v) else f"{k} {v}" for k, v in sorted(metrics.items()))
    total = str(max_epochs - 1) if max_epochs and max_epochs > 0 else "?"
    return f"epoch {epoch}/{total}: {shown} ({seconds:.1f} s)"


def parse_epoch_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(epoch, metrics)`` of a line written by :func:`format_epoch_line` (epoch from 0), else None."""
    match = EPOCH_LINE.match(line.strip())
    if not match:
        return None
    metrics = {}
    for part in match.group(3).split(", "):
        key, _, value = part.rpartition(" ")
        try:
            metrics[key] = float(value)
        except ValueError:
            continue
    return int(match.group(1)), metrics


def last_epoch_line(log: Path, tail_bytes: int = 16384) -> tuple[int, dict[str, float]] | None:
    """The newest epoch line in the last ``tail_bytes`` of a run's log, or None."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - tail_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        parsed = parse_epoch_line(line)
        if parsed:
            return parsed
    return None
