"""One plain line per epoch in a run's output (its metrics and time), for logs where no progress bar draws.

Lightning's rich progress bar writes nothing to a file or pipe until the run ends, so an ablation run's ``run.log``
would show no progress for hours. The line format is a contract: ``toolkit ablate status`` reads the latest one
(:mod:`toolkit.study.epoch_line`).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import lightning.pytorch as pl
import torch
from typing_extensions import override

from toolkit import keys
from toolkit.quiet import QUIET, verbosity
from toolkit.study.epoch_line import format_epoch_line


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
        self._loss_sum = self._loss_count = 0.0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.monotonic()
        self._loss_sum = self._loss_count = 0.0

    @override
    def state_dict(self) -> dict[str, Any]:
        # a fit stopped mid-epoch (toolkit.callbacks.signal_save) resumes without on_train_epoch_start: the epoch's
        # line then goes on from the loss sums and time of the batches before the stop (rank 0's under DDP)
        elapsed = time.monotonic() - self._started if self._started else 0.0
        return {"loss_sum": self._loss_sum, "loss_count": self._loss_count, "elapsed_s": elapsed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loss_sum = float(state_dict.get("loss_sum", 0.0))
        self._loss_count = float(state_dict.get("loss_count", 0.0))
        self._started = time.monotonic() - float(state_dict.get("elapsed_s", 0.0))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # ``train/loss`` is logged per step, so the callback metric is the last step's; the line shows the epoch's
        # mean (weighted by batch size, as Lightning's own epoch reduction), like the epoch-mean train/acc beside it
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            size = _batch_size(batch)
            self._loss_sum += float(loss.detach()) * size
            self._loss_count += size

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank reads the metrics: computing an epoch metric syncs it across ranks (a collective), so a
        # rank-zero-only read would hang under DDP
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(("train/", "val/")) and getattr(value, "numel", lambda: 1)() == 1
        }
        if self._loss_count:
            totals = torch.tensor([self._loss_sum, self._loss_count], dtype=torch.float64)
            totals = trainer.strategy.reduce(totals, reduce_op="sum")  # every rank: the mean over all ranks' batches
            metrics[keys.TRAIN_LOSS] = float(totals[0] / totals[1])
        stream = self.stream or sys.stdout
        if not trainer.is_global_zero or (self.only_without_tty and stream.isatty()) or verbosity() <= QUIET:
            return
        line = format_epoch_line(trainer.current_epoch, trainer.max_epochs, metrics, time.monotonic() - self._started)
        print(line, file=stream, flush=True)


def _batch_size(batch: Any) -> int:
    """Samples in a training batch: ``(images, labels)`` (labels soft under mixup) or cached features."""
    first = batch[-1] if isinstance(batch, (list, tuple)) and batch else batch
    return len(first) if hasattr(first, "__len__") else 1
