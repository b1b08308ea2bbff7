"""One plain line per epoch in a run's output (its metrics and time), for logs where no progress bar draws.

Lightning's rich progress bar writes nothing to a file or pipe until the run ends, so an ablation run's ``run.log``
would show no progress for hours. The line format is a contract: ``toolkit ablate status`` reads the latest one
(:data:`EPOCH_LINE`).
"""

from __future__ import annotations

import math
import re
import sys
import time
from typing import TextIO

import lightning.pytorch as pl
from typing_extensions import override

#: ``epoch 2/12: train/loss 0.4120, val/acc 0.9210 (3.2 s)``; group 1 the epoch (1-based), 2 max epochs, 3 metrics
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+|\?): (.*) \(([\d.]+) s\)$")


def format_epoch_line(epoch: int, max_epochs: int | None, metrics: dict[str, float], seconds: float) -> str:
    """The line for a finished epoch (``epoch`` is 1-based)."""
    shown = ", ".join(f"{k} {v:.4f}" if math.isfinite(v) else f"{k} {v}" for k, v in sorted(metrics.items()))
    total = str(max_epochs) if max_epochs and max_epochs > 0 else "?"
    return f"epoch {epoch}/{total}: {shown} ({seconds:.1f} s)"


def parse_epoch_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(epoch, metrics)`` of a line written by :class:`EpochLog`, else None."""
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


class EpochLog(pl.Callback):
    """Prints :func:`format_epoch_line` after each training epoch (after its validation) on global rank 0.

    Args:
        only_without_tty: print only when the output is not a terminal (a terminal has the progress bar).
        stream: where to print (default: stdout).
    """

    def __init__(self, only_without_tty: bool = True, stream: TextIO | None = None) -> None:
        self.only_without_tty = only_without_tty
        self.stream = stream
        self._started = 0.0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stream = self.stream or sys.stdout
        if not trainer.is_global_zero or (self.only_without_tty and stream.isatty()):
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(("train/", "val/")) and getattr(value, "numel", lambda: 1)() == 1
        }
        line = format_epoch_line(
            trainer.current_epoch + 1, trainer.max_epochs, metrics, time.monotonic() - self._started
        )
        print(line, file=stream, flush=True)
