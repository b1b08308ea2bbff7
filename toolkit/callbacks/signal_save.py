"""Save on the signal: a fit stopped by SIGTERM writes ``last.ckpt`` after the batch it is training, and a fit
resumed from it goes on from the next batch of the same epoch, with the numbers of a run never stopped.

SIGTERM is what a run gets before its Slurm time limit (submitit turns Slurm's pre-timeout signal into it, see
``toolkit.ablation.slurm``), on preemption, from ``scancel`` and from the local runner's stop. Lightning notes it
(``trainer.received_sigterm``) but a single-process fit stops only at the end of its epoch, and a run whose epoch
is longer than what is left loses it. Lightning's ``SLURMEnvironment`` auto-requeue, the bar, saves on its signal
with ``trainer.save_checkpoint``; so does :class:`SaveOnSignal`, at the next batch end where the state is whole
(after the optimizer step of a gradient-accumulation window), then raises Lightning's own ``SIGTERMException``.
Under DDP (world size > 1) it does nothing: a DDP run stops as Lightning stops it (a save at a batch boundary,
with its collectives, hung a 2-process CPU run against the broadcast Lightning's SIGTERM handler makes).

Resuming mid-epoch exactly needs what Lightning leaves to the data loader (it restarts the loader from the start,
and skips ``on_train_epoch_start``): the checkpoint records how many batches of the epoch were trained, and the
resumed fit gives the training sampler its (seed, epoch) generator (``RandomStateCheckpoint.seed_loaders``) and
has it skip that many batches' indices without loading them, so no augmentation draw is made for them. The random
state saved with the checkpoint is the one after the last trained batch, and the states of the model's torchmetrics
metrics (the epoch's ``train/acc`` so far; Lightning does not checkpoint them) travel with it.

With ``num_workers > 0`` the loader hands indices to its workers when its iterator is made, before any callback
runs, and the workers' augmentation streams depend on which batches they loaded: such a fit is not stopped
mid-epoch (it stops at the end of the epoch as before), so that a resumed run never differs from an uninterrupted
one.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import CombinedLoader, rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Sampler
from torchmetrics import Metric
from typing_extensions import override

from toolkit.callbacks.random_state import RandomStateCheckpoint


class _SkipFirst(Sampler[Any]):
    """The wrapped sampler's order without its first ``n`` items, once; then the wrapped sampler itself again."""

    def __init__(self, inner: Any, n: int, owner: Any) -> None:
        self.inner, self.n, self.owner = inner, n, owner

    def __iter__(self) -> Iterator[Any]:
        self.owner.sampler = self.inner  # the next epoch draws the whole order again
        return itertools.islice(iter(self.inner), self.n, None)

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name: str) -> Any:  # set_epoch of a DistributedSampler, its generator, ...
        return getattr(self.inner, name)


def _train_loaders(trainer: pl.Trainer) -> list[DataLoader]:
    if trainer.train_dataloader is None:
        return []
    return [d for d in CombinedLoader(trainer.train_dataloader).flattened if isinstance(d, DataLoader)]


def _last_path(trainer: pl.Trainer) -> str | None:
    """``last.ckpt`` of the run's last-checkpoint callback (what ``--ckpt_path last`` resumes from), or None."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            names = (callback.filename, ModelCheckpoint.CHECKPOINT_NAME_LAST if callback.save_last else None)
            if ModelCheckpoint.CHECKPOINT_NAME_LAST in names:
                return f"{callback.dirpath}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return None


def _metric_states(pl_module: pl.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
    """Every torchmetrics metric's tensor states, on the CPU, with a leading rank axis (one rank: no DDP here)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, module in pl_module.named_modules():
        if isinstance(module, Metric):
            states = {k: v for k, v in module.metric_state.items() if isinstance(v, torch.Tensor)}
            out[name] = {k: v.detach().cpu().unsqueeze(0) for k, v in states.items()}
    return out


def _restore_metric_states(pl_module: pl.LightningModule, saved: dict[str, dict[str, torch.Tensor]]) -> None:
    modules = dict(pl_module.named_modules())
    rank = pl_module.trainer.global_rank
    for name, states in saved.items():
        metric = modules.get(name)
        if isinstance(metric, Metric):
            for key, value in states.items():
                current = getattr(metric, key)
                setattr(metric, key, value[rank].to(device=current.device, dtype=current.dtype))


class SaveOnSignal(pl.Callback):
    """On SIGTERM: ``last.ckpt`` after the current batch, then stop; a fit resumed from it continues that epoch."""

    def __init__(self) -> None:
        self._saving: tuple[int, int] | None = None  # (epoch, batches trained in it) while the signal's save runs
        self._metrics: dict[str, dict[str, torch.Tensor]] = {}
        self._restored: tuple[int, int] | None = None
        self._restored_metrics: dict[str, dict[str, torch.Tensor]] = {}
        self._done = 0  # batches of the current epoch trained so far

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._saving is None:
            return {"mid_epoch": None}
        return {"mid_epoch": list(self._saving), "metric_states": self._metrics}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        mid = state_dict.get("mid_epoch")
        self._restored = (int(mid[0]), int(mid[1])) if mid else None
        self._restored_metrics = state_dict.get("metric_states") or {}
        if self._restored is not None:  # this callback makes the loader resume (on_train_start): not unreliable
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored, self._restored = self._restored, None
        if restored is None or restored[0] != trainer.current_epoch:
            return
        epoch, batches = restored
        _restore_metric_states(pl_module, self._restored_metrics)
        self._restored_metrics = {}
        for callback in trainer.callbacks:
            if isinstance(callback, RandomStateCheckpoint):
                callback.seed_loaders(trainer)  # on_train_epoch_start, which Lightning skips on this restart
        for loader in _train_loaders(trainer):
            if loader.batch_sampler is not None:
                owner = loader.batch_sampler
                owner.sampler = _SkipFirst(owner.sampler, batches * owner.batch_size, owner)
        rank_zero_info(f"resuming epoch {epoch} after its batch {batches} (saved on a stop signal)")

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done = 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._done = batch_idx + 1
        # not under DDP: Lightning's SIGTERM handler broadcasts from inside the signal handler, and a save with its
        # collectives at this point (or in on_exception) hung a 2-process run; DDP stops as Lightning stops it
        if trainer.world_size > 1 or not trainer.received_sigterm:
            return
        if self._save(trainer, pl_module):
            raise SIGTERMException()

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """``last.ckpt`` after the epoch's ``self._done`` batches, where that resumes exactly; whether it saved."""
        if self._done % trainer.accumulate_grad_batches:
            return False  # a gradient-accumulation window is saved whole, at its optimizer step
        path = _last_path(trainer)
        if path is None or any(loader.num_workers > 0 for loader in _train_loaders(trainer)):
            return False  # Lightning stops at the end of the epoch (see the module docstring)
        self._saving = (trainer.current_epoch, self._done)
        self._metrics = _metric_states(pl_module)
        try:
            trainer.save_checkpoint(path)
        finally:
            self._saving, self._metrics = None, {}
        rank_zero_info(f"stop signal: saved {path} after batch {self._done} of epoch {trainer.current_epoch}")
        return True
