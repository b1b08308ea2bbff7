"""Run health at the source: stop a diverging fit (``DivergenceGuard``) and record what the report classifies.

``RunHealth`` records what the ablation report needs to tell a healthy run from a diverged, degenerate or
not-learning one: the first step's train loss, the first and the last epoch's mean train loss, the epochs completed
of ``max_epochs``, the monitored validation score of every epoch with the validation set's size and chance level
(majority-class share) and whether the run was still improving when it stopped
(:mod:`toolkit.study.convergence`), whether early stopping ended it, the number of distinct classes the model
predicted on the test split and the chance level there. ``toolkit fit`` writes these into ``result.json`` and the
W&B summary (``health/*`` keys, see :func:`health_summary`).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from toolkit import keys
from toolkit.callbacks.early_stop import stopped_early
from toolkit.errors import ToolkitError
from toolkit.model.freezing import BackboneFreezer
from toolkit.study.convergence import still_improving
from toolkit.study.states import Health

#: prefix of the health keys in the W&B summary (``health/status``, ``health/epochs_completed``, ...)
HEALTH_PREFIX = "health/"
FINISHED, DIVERGED = Health.FINISHED.value, Health.DIVERGED.value


class Diverged(ToolkitError):
    """Training stopped at a non-finite loss; the message is the one-line diagnosis."""


class DivergenceGuard(Callback):
    """Stop ``fit`` at the first non-finite training loss, before it reaches the weights or a checkpoint.

    The loss is checked before ``backward`` (``on_before_backward``): the optimizer never steps on a NaN/inf loss.
    Weights and buffers (BN statistics) are checked before each epoch's checkpoint (validation start, train epoch
    end), because a finite loss can still leave them non-finite. Raising (instead of ``trainer.should_stop``, which
    would run validation and save the NaN weights over ``last.ckpt``) leaves the last good epoch's checkpoints as
    they are. ``toolkit fit`` catches
    :class:`Diverged`, records the run as diverged (``result.json``, W&B summary) and exits 2 with the diagnosis.

    ``toolkit fit`` adds it by default; ``--divergence_guard.enabled false`` turns it off.

    Args:
        enabled: check the loss (False: the guard does nothing).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        #: the diagnosis once the guard fired, else None
        self.diagnosis: str | None = None

    @override
    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if not self.enabled:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        # any rank's NaN stops every rank at the same step (one rank raising alone would leave the others hanging)
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(trainer, f"train loss {float(loss.detach().float().mean())}")

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a finite loss can still leave non-finite weights or BN statistics behind (the step after it overflows);
        # the epoch's checkpoint is saved after validation, so this is the last moment to keep it from disk
        if self.enabled and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._check_weights(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.enabled:  # runs before ModelCheckpoint's own hook (Lightning calls checkpoint callbacks last)
            self._check_weights(trainer, pl_module)

    def _check_weights(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a frozen backbone (BackboneFreezer: no grads, eval mode) cannot change, so its millions of values are not
        # scanned every epoch; what trains (and every buffer outside it) is
        freezer = getattr(pl_module, "freezer", None)
        frozen = freezer.backbone if isinstance(freezer, BackboneFreezer) and freezer.frozen else None
        skip = {id(t) for t in (*frozen.parameters(), *frozen.buffers())} if frozen is not None else set()
        tensors = [t for t in (*pl_module.parameters(), *pl_module.buffers()) if id(t) not in skip]
        bad = next((t for t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            named = [*pl_module.named_parameters(), *pl_module.named_buffers()]
            name = next((n for n, t in named if t is bad), "on another rank")
            self._stop(trainer, f"non-finite weights ({name}) after a finite loss")

    def _stop(self, trainer: Trainer, what: str) -> None:
        lrs = sorted({group["lr"] for opt in trainer.optimizers for group in opt.param_groups})
        saved = [Path(c.dirpath) / "last.ckpt" for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)]
        last = next((str(path) for path in saved if path.is_file()), "")
        self.diagnosis = (
            f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): {what} "
            f"at lr {', '.join(f'{lr:g}' for lr in lrs) or '?'}; the learning rate is too high or the initialisation "
            "is bad (lower the learning rate, or check the head init); "
            f"last good checkpoint: {last or 'none (diverged in the first epoch)'}"
        )
        raise Diverged(self.diagnosis)


class RunHealth(Callback):
    """Record the train-loss trajectory, epochs completed and test prediction spread of a run (see the module).

    Its state travels in checkpoints, so a resumed run keeps the loss it started from.
    """

    #: its ``on_test_batch_end`` reads the predictions and labels only: a probe's test may run on cached features
    reads_test_images = False

    def __init__(self) -> None:
        self.initial_loss: float | None = None
        self.final_loss: float | None = None
        #: the mean train loss of the first epoch that trained (the probe's solution for an L-BFGS probe)
        self.first_epoch_loss: float | None = None
        #: the monitored validation score after each epoch, oldest first
        self.val_scores: list[float] = []
        self._val_labels: Counter[int] = Counter()
        #: the validation set's size and its majority-class share (counted in the first validation epoch)
        self.val_n: int | None = None
        self.val_chance: float | None = None
        #: training steps whose loss was NaN/inf (only possible with the divergence guard off)
        self.nonfinite_steps = 0
        self._epoch_sum, self._epoch_count = 0.0, 0
        self._preds: Counter[int] = Counter()
        self._labels: Counter[int] = Counter()
        self._restored: dict[str, Any] | None = None  # a checkpoint's record, applied when a fit resumes
        #: whether early stopping ended the fit (read when training ends: testing a checkpoint restores the
        #: early-stopping callback's state of that checkpoint's epoch)
        self._stopped_early: bool | None = None

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        value = float(loss.detach().float().mean())
        if not math.isfinite(value):
            self.nonfinite_steps += 1
            return
        if self.initial_loss is None:
            self.initial_loss = value
        self._epoch_sum += value
        self._epoch_count += 1

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # an L-BFGS probe (model.probe lbfgs) trains its head without optimizer steps: its loss went from the zero
        # head's to the solution's, which is where this run's trajectory starts (and ends, for a probe alone)
        probe = getattr(pl_module, "probe_losses", None)
        if probe is not None and self.initial_loss is None:
            self.initial_loss = probe[0]
        if probe is not None and not self._epoch_count:
            self.final_loss = probe[1]
        if self._epoch_count:
            self.final_loss = self._epoch_sum / self._epoch_count  # the last epoch's mean: less noisy than a step
        if self.first_epoch_loss is None and self.final_loss is not None:
            self.first_epoch_loss = self.final_loss
        self._epoch_sum, self._epoch_count = 0.0, 0

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # the chance level of the validation set, counted once (the set is the same every epoch)
        if trainer.sanity_checking or self.val_n is not None:
            return
        targets = batch[1] if isinstance(batch, list | tuple) and len(batch) >= 2 else None
        if isinstance(targets, torch.Tensor) and targets.ndim == 1:
            self._val_labels.update(targets.tolist())

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # after the epoch's metrics are computed (as EarlyStopping reads them); not in the sanity check
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        classes = int(getattr(pl_module, "hparams", {}).get("num_classes") or 0)
        if self.val_n is None and classes:  # every rank takes part in the reduce, whatever batches it saw
            # per-class counts summed over the ranks, then the majority (a rank's own majority may be another class)
            counts = torch.zeros(classes, dtype=torch.float64)
            for label, count in self._val_labels.items():
                counts[label] = count
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
            if counts.sum() > 0:
                self.val_n, self.val_chance = int(counts.sum()), float(counts.max() / counts.sum())
        score = trainer.callback_metrics.get(keys.MONITOR)
        if score is not None:
            self.val_scores.append(float(score))

    @override
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._preds, self._labels = Counter(), Counter()

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, torch.Tensor) or not isinstance(batch, list | tuple) or len(batch) < 2:
            return
        targets = batch[1]
        if targets.ndim != 1 or outputs.ndim != 2:
            return
        self._preds.update(outputs.argmax(-1).tolist())
        self._labels.update(targets.tolist())

    def summary(self, trainer: Trainer, status: str, reason: str | None = None) -> dict[str, Any]:
        """The health record of the run: status, epochs, losses, test prediction spread and chance level."""
        total = sum(self._labels.values())
        noise = 1 / self.val_n if self.val_n and keys.MONITOR.rsplit("/", 1)[-1].startswith("acc") else 0.0
        early = self._stopped_early if self._stopped_early is not None else stopped_early(trainer)
        improving = False if early else still_improving(self.val_scores, noise, keys.MONITOR_MODE == "max")
        record: dict[str, Any] = {
            "status": status,
            "epochs_completed": int(trainer.fit_loop.epoch_progress.current.completed),
            "max_epochs": trainer.max_epochs,
            "stopped_early": early,
            "still_improving": improving,
            "val_best": max(self.val_scores) if keys.MONITOR_MODE == "max" and self.val_scores else None,
            "val_n": self.val_n,
            "val_chance": self.val_chance,
            "train_loss_initial": self.initial_loss,
            "train_loss_first_epoch": self.first_epoch_loss,
            "train_loss_final": self.final_loss,
            "nonfinite_steps": self.nonfinite_steps,
            "test_pred_classes": len(self._preds) if total else None,
            "chance": max(self._labels.values()) / total if total else None,
        }
        if reason:
            record["reason"] = reason
        return record

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_loss": self.initial_loss,
            "final_loss": self.final_loss,
            "first_epoch_loss": self.first_epoch_loss,
            "nonfinite": self.nonfinite_steps,
            "val_scores": list(self.val_scores),
            "val_n": self.val_n,
            "val_chance": self.val_chance,
        }

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stopped_early = stopped_early(trainer)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # applied when a fit resumes (on_train_start), never when a test loads a checkpoint: testing the best
        # checkpoint of this fit must not roll its record back to that epoch's
        self._restored = dict(state_dict)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state, self._restored = self._restored, None
        if state is None:
            return
        self.initial_loss = state.get("initial_loss")
        self.final_loss = state.get("final_loss")
        self.nonfinite_steps = state.get("nonfinite", 0)
        self.first_epoch_loss = state.get("first_epoch_loss")
        self.val_scores = list(state.get("val_scores") or [])
        self.val_n = state.get("val_n")
        self.val_chance = state.get("val_chance")


def health_summary(record: dict[str, Any]) -> dict[str, Any]:
    """A health record as W&B summary entries ``health/<field>`` (non-finite numbers as None)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[HEALTH_PREFIX + key] = value
    return out
