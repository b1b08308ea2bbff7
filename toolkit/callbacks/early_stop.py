"""A run's budget policy: Lightning's ``EarlyStopping`` on the checkpoint's monitor, off unless given a patience.

``toolkit fit`` always has it (the argument group ``early_stopping``), so a study states its budget policy as common
overrides: ``trainer.max_epochs`` is the cap and ``early_stopping.patience`` the number of validation epochs without
an improvement of more than ``min_delta`` after which a run stops, each run at its own convergence. The epochs each
run used are in its ``result.json`` (``health.epochs_completed``) and the table.

For LP->FT the patience counts fine-tuning epochs only: the probe epochs before ``finetune_from`` neither set the
best score nor use up patience (fine-tuning often starts below the solved probe and needs a few epochs to pass it;
the best-val checkpoint still considers every epoch, and a run whose fine-tuning never beats its probe tests the
probe, which the report flags as "change never tested").

A snapshot ensemble trains all its cycles (its snapshots are the end of each): ``SnapshotEnsemble`` turns early
stopping off for its run and says so.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from typing_extensions import override

from toolkit import keys


class EarlyStop(EarlyStopping):
    """``EarlyStopping`` on ``keys.MONITOR`` (``val/acc``, max), inactive while ``patience`` is None.

    Args:
        patience: validation epochs without improvement before the run stops; None: never stop early.
        min_delta: the least change of the monitored value that counts as an improvement.
    """

    def __init__(self, patience: int | None = None, min_delta: float = 0.0) -> None:
        super().__init__(
            monitor=keys.MONITOR, mode=keys.MONITOR_MODE, patience=patience or 0, min_delta=min_delta, strict=False
        )
        self.active = patience is not None

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._counts(trainer, pl_module):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._counts(trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def _counts(self, trainer: Trainer, pl_module: LightningModule) -> bool:
        """Whether this epoch counts: the policy is on and the backbone trains (not an LP->FT probe epoch)."""
        finetune_from = getattr(pl_module, "finetune_from", None)
        return self.active and not (finetune_from and trainer.current_epoch < finetune_from)


def stopped_early(trainer: Trainer) -> bool:
    """Whether an active :class:`EarlyStop` ended this fit before ``max_epochs``."""
    return any(isinstance(c, EarlyStop) and c.active and c.stopped_epoch > 0 for c in trainer.callbacks)
