"""TrialPruning: a search trial reports its validation metric to its Optuna study every epoch, and stops early when
Optuna's median pruner finds it hopeless against the finished trials of the batches before it.

Determinism is the point of the design. Optuna's pruners compare a trial with the other trials of the study *as they
are when it asks*; with trials running side by side that depends on which of them finished first, so the same spec
and seed could prune differently. Here a trial of batch *b* is compared only with the trials of batches before *b*
(all finished before batch *b* was asked, listed in ``SearchTrial.against``): the pruner (``optuna.pruners.
MedianPruner``, unchanged) sees an in-memory study holding exactly those, so whether and when a trial is pruned is a
function of the spec and seed alone. The trial's own intermediate values are written to the study's journal (the
storage's public API) so the study, its dashboard and later batches see them.

A pruned run stops at the end of that epoch through ``trainer.should_stop`` (Lightning's public way to end a fit),
is tested and recorded like any finished run, and logs ``keys.PRUNED_AT`` (``search/pruned_at_epoch``) to W&B; the
search then tells the study the trial was pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from toolkit import keys


@dataclass
class SearchTrial:
    """Which Optuna trial a run is, and what it may be pruned against (set by ``toolkit search``).

    Attributes:
        journal: the search's Optuna journal file.
        study: the stage's study name.
        trial: the trial's number in that study.
        monitor: the metric reported each epoch (the stage's selection metric).
        against: numbers of the finished trials of earlier batches: the only ones it is compared with.
        warmup_epochs: epochs before pruning may stop it (``MedianPruner.n_warmup_steps``).
        min_trials: finished earlier trials needed before any pruning (``MedianPruner.n_startup_trials``).
    """

    journal: str
    study: str
    trial: int
    monitor: str = "val/acc"
    against: list[int] = field(default_factory=list)
    warmup_epochs: int = 1
    min_trials: int = 2


class TrialPruning(pl.Callback):
    """Report ``monitor`` to the trial each validation epoch; stop the fit when the median pruner says so."""

    def __init__(self, trial: SearchTrial) -> None:
        self.trial = trial
        self.pruned_at: int | None = None
        self._reference: Any = None  # the in-memory study of the earlier batches' trials, built once

    def _storage_and_ids(self) -> tuple[Any, int, int]:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(self.trial.journal))
        study_id = storage.get_study_id_from_name(self.trial.study)
        return storage, study_id, storage.get_trial_id_from_study_id_trial_number(study_id, self.trial.trial)

    def _decide(self, epoch: int, value: float) -> bool:
        import optuna
        from optuna.trial import TrialState

        storage, study_id, trial_id = self._storage_and_ids()
        storage.set_trial_intermediate_value(trial_id, epoch, value)
        if self._reference is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            wanted = set(self.trial.against)
            earlier = [t for t in storage.get_all_trials(study_id, states=(TrialState.COMPLETE,)) if t.number in wanted]
            self._reference = optuna.create_study(directions=storage.get_study_directions(study_id))
            self._reference.add_trials(earlier)
        own = storage.get_trial(trial_id)
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=self.trial.min_trials, n_warmup_steps=self.trial.warmup_epochs
        )
        return pruner.prune(self._reference, own)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_at is not None:
            return
        metric = trainer.callback_metrics.get(self.trial.monitor)
        prune = False
        if trainer.is_global_zero and metric is not None:
            prune = self._decide(trainer.current_epoch, float(metric))
        prune = trainer.strategy.broadcast(prune, src=0)  # every rank stops together
        if prune:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
            rank_zero_info(
                f"search: trial {self.trial.trial} pruned after epoch {trainer.current_epoch}: its "
                f"{self.trial.monitor} is below the median of {len(self.trial.against)} earlier trials at that epoch"
            )
            for logger in trainer.loggers:  # epochs counted from 0, as everywhere (epoch lines, W&B, checkpoints)
                logger.log_metrics({keys.PRUNED_AT: self.pruned_at}, step=trainer.global_step)
