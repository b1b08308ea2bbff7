"""Snapshot ensembles (Huang et al. 2017): cyclic cosine lr, a snapshot per cycle, softmax averaging at test.

Lightning has nothing like it: its SWA and EMA callbacks average weights, a different method.
"""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import StochasticWeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch.optim.lr_scheduler import LambdaLR
from typing_extensions import override

from toolkit import keys
from toolkit.callbacks.early_stop import EarlyStop
from toolkit.callbacks.ensemble import EnsembleEvaluator
from toolkit.errors import ToolkitError
from toolkit.model.checkpoint_data import check_finite, load_data

__all__ = ["CyclicSchedule", "SnapshotEnsemble", "cycle_length", "cyclic_cosine_lr", "snapshot_dir"]


def cycle_length(total_steps: int, cycles: int) -> int:
    """Optimizer steps per cycle, ``ceil(T / M)``; raises when ``M`` cycles do not fit a budget of ``T`` steps."""
    steps = math.ceil(total_steps / cycles)
    if (cycles - 1) * steps >= total_steps:
        fit = math.ceil(total_steps / steps) if total_steps > 0 else 0
        raise ToolkitError(
            f"SnapshotEnsemble(cycles={cycles}) does not fit a run of {total_steps} optimizer steps "
            f"({steps} steps per cycle give only {fit} cycles); lower cycles or raise max_epochs/max_steps"
        )
    return steps


def cyclic_cosine_lr(base_lr: float, step: int, cycle_steps: int) -> float:
    """Huang et al.'s lr at optimizer step ``step``: ``lr0/2 * (cos(pi * mod(step, c) / c) + 1)``.

    The training schedule itself is torch's CosineAnnealingWarmRestarts; this closed form serves the warnings.
    """
    return base_lr / 2 * (math.cos(math.pi * (step % cycle_steps) / cycle_steps) + 1)


class CyclicSchedule:
    """The lr factor at each optimizer step: ``start`` steps at the base lr, then cycles of ``cycle_steps`` steps,
    each a linear warmup of ``warmup_steps`` steps from ``1 / (warmup_steps + 1)`` of the base lr up to it, then
    Huang et al.'s cosine from the base lr down to 0 over the rest of the cycle.

    With ``start = warmup_steps = 0`` it is torch's ``CosineAnnealingWarmRestarts(T_0=cycle_steps)`` exactly (tested).
    A callable object of plain numbers, so torch's ``LambdaLR`` keeps it in the scheduler's state (and a checkpoint
    holds no code).
    """

    def __init__(self, start: int, cycle_steps: int, warmup_steps: int = 0) -> None:
        self.start, self.cycle_steps, self.warmup_steps = start, cycle_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 1.0  # the probe epochs: an SGD probe trains its head at the base lr, an L-BFGS probe takes no step
        position = (step - self.start) % self.cycle_steps
        if position < self.warmup_steps:
            return (position + 1) / (self.warmup_steps + 1)
        cosine_steps = self.cycle_steps - self.warmup_steps
        return (math.cos(math.pi * (position - self.warmup_steps) / cosine_steps) + 1) / 2


def snapshot_dir(trainer: pl.Trainer) -> Path:
    """Where snapshots go: beside the run's checkpoints (``<default_root_dir>/checkpoints`` by default)."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"


class SnapshotEnsemble(EnsembleEvaluator):
    """Train one run, get ``cycles`` models: a cyclic cosine lr with a snapshot at the end of each cycle.

    The cycles share the run's fine-tuning steps: for an LP->FT model (``unfreeze_at_epoch``) the probe epochs come
    first (``S`` steps at the base lr, no snapshot: a probe snapshot would only average the probe into the ensemble),
    and the ``T - S`` steps after them (``T``: ``trainer.estimated_stepping_batches``) split into ``M`` cycles of
    ``c = ceil((T - S) / M)`` steps. Each cycle starts with a linear warmup over ``warmup`` of its steps (a fraction;
    0 by default, Huang et al.'s restart to the full lr) and then follows the cosine
    ``lr0/2 * (cos(pi * t / (c - w)) + 1)`` to 0, ``lr0`` being each param group's initial lr, so the ratio between
    the head and backbone groups holds (:class:`CyclicSchedule`, through torch's ``LambdaLR``, stepped every optimizer
    step). Like Lightning's StochasticWeightAveraging callback it takes the place of the model's scheduler in
    ``trainer.strategy.lr_scheduler_configs``, so Lightning steps, checkpoints, resumes and monitors it. It trains
    every cycle: an early-stopping policy (``early_stopping.patience``) is turned off for the run, with a line.

    At the end of cycle ``i`` (0-based) the LightningModule's state_dict (weights and BN buffers) is copied to the
    CPU and saved as ``snapshot-<i>.pt`` beside the checkpoints, as ``{"run": <run token>, "epoch": <epoch it was
    taken in>, "state_dict": ...}`` (the epoch goes into the run's result: :func:`tested_snapshots`). The
    run token is drawn when a fit starts fresh and kept in its checkpoints, so the ensemble only ever averages
    snapshots of the run being tested, never files an earlier run left in the same folder.
    When ``T`` is not a multiple of ``M`` the last cycle
    is shorter. ``trainer.validate``/``trainer.test`` then log ``<stage>/acc_snapshot_<i>``, ``<stage>/f1_snapshot_<i>``
    for every snapshot found and ``<stage>/acc_ensemble``, ``<stage>/f1_ensemble`` for the softmax average of the
    last ``use_last``. A resumed fit (``--ckpt_path last``) keeps the cycle position, base lrs and saved snapshots.

    Args:
        cycles: number of cycles M, i.e. snapshots.
        use_last: the ensemble averages the last ``use_last`` snapshots; None = all ``cycles``.
        warmup: the fraction of each cycle spent warming up linearly to the base lr (0: restart at the full lr).
    """

    key = staticmethod(keys.snapshot_key)

    def __init__(self, cycles: int, use_last: int | None = None, warmup: float = 0.0) -> None:
        if cycles < 1:
            raise ToolkitError(f"SnapshotEnsemble needs cycles >= 1, got {cycles}")
        if use_last is not None and not 1 <= use_last <= cycles:
            raise ToolkitError(f"use_last must be between 1 and cycles={cycles}, got {use_last}")
        if not 0.0 <= warmup < 1.0:
            raise ToolkitError(f"SnapshotEnsemble warmup is a fraction of each cycle in [0, 1), got {warmup}")
        super().__init__(use_last)
        self.cycles = cycles
        self.warmup = warmup
        self.start_step = 0
        self.total_steps: int | None = None
        self.cycle_steps: int | None = None
        self.snapshots: list[str] = []
        self.run_token: str | None = None  # ties snapshot files to the fit that wrote them
        self._restored: dict[str, Any] | None = None  # state from a checkpoint, applied when training starts

    # -- training: the schedule and the snapshots --------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        owners = [cb for cb in trainer.callbacks if isinstance(cb, (SnapshotEnsemble, StochasticWeightAveraging))]
        if len(owners) > 1:
            names = ", ".join(type(cb).__name__ for cb in owners)
            raise ToolkitError(f"several callbacks set the learning rate ({names}); keep one")
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ToolkitError("SnapshotEnsemble needs a known number of training steps; set max_epochs or max_steps")
        cycle_length(int(total) - _probe_steps(trainer, pl_module), self.cycles)  # fail before anything trains
        for callback in trainer.callbacks:
            if isinstance(callback, EarlyStop) and callback.active:
                callback.active = False
                rank_zero_info("SnapshotEnsemble: early stopping is off for this run (every cycle ends in a snapshot)")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before Lightning restores a checkpoint's scheduler state (restore_training_state), so a resumed fit
        # continues this scheduler where it stopped
        if len(trainer.optimizers) != 1:
            raise ToolkitError(f"SnapshotEnsemble works with one optimizer, the model has {len(trainer.optimizers)}")
        total = int(trainer.estimated_stepping_batches)
        optimizer = trainer.optimizers[0]
        start = _probe_steps(trainer, pl_module)
        steps = cycle_length(total - start, self.cycles)
        scheduler = LambdaLR(optimizer, CyclicSchedule(start, steps, round(self.warmup * steps)))
        replaced = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
        if replaced:
            rank_zero_info(f"SnapshotEnsemble: the cyclic cosine replaces the configured {', '.join(replaced)}")
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(scheduler, interval="step")]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        if self._restored is not None:
            self._resume(self._restored, total)
            self._restored = None
            missing = [p for p in self.snapshots if not Path(p).is_file()]
            if missing:
                rank_zero_warn(f"SnapshotEnsemble: saved snapshots are gone: {', '.join(missing)}")
        else:
            self.start_step = _probe_steps(trainer, pl_module)
            self.total_steps, self.cycle_steps = total, cycle_length(total - self.start_step, self.cycles)
            self.snapshots = []
            self.run_token = uuid.uuid4().hex  # os.urandom: draws nothing from the run's random generators
            if (total - self.start_step) % self.cycles:
                last = total - self.start_step - (self.cycles - 1) * self.cycle_steps
                rank_zero_warn(
                    f"SnapshotEnsemble: {total} steps do not split into {self.cycles} equal cycles; the last cycle "
                    f"has {last} of {self.cycle_steps} steps and ends at lr x "
                    f"{cyclic_cosine_lr(1.0, last - 1, self.cycle_steps):.2f}"
                )
        after = f" after {self.start_step} probe steps" if self.start_step else ""
        rank_zero_info(
            f"SnapshotEnsemble: {self.cycles} cycles of {self.cycle_steps} steps{after} ({self.total_steps} in all), "
            f"snapshots in {snapshot_dir(trainer)}"
        )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step - self.start_step
        if step <= 0 or (step % self.cycle_steps and trainer.global_step < self.total_steps):
            return
        cycle = (step - 1) // self.cycle_steps
        if cycle < self.cycles and cycle == len(self.snapshots):  # once per cycle, also with grad accumulation
            self._save(trainer, pl_module, cycle)

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, cycle: int) -> None:
        path = snapshot_dir(trainer) / f"snapshot-{cycle}.pt"
        if trainer.is_global_zero:
            state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".pt.partial")
            torch.save({"run": self.run_token, "epoch": trainer.current_epoch, "state_dict": state}, partial)
            os.replace(partial, path)  # a run killed while writing never leaves a truncated snapshot
            del state
        trainer.strategy.barrier("snapshot")
        self.snapshots.append(str(path))
        rank_zero_info(f"SnapshotEnsemble: cycle {cycle} done at step {trainer.global_step}, saved {path}")

    # -- resume ------------------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "start_step": self.start_step,
            "total_steps": self.total_steps,
            "cycle_steps": self.cycle_steps,
            "snapshots": list(self.snapshots),
            "run_token": self.run_token,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # also called by trainer.test(ckpt_path=...): only a fit applies it (on_train_start)
        self._restored = state_dict if state_dict.get("total_steps") is not None else None
        self.run_token = state_dict.get("run_token")  # a test of this checkpoint evaluates its own run's snapshots

    def _resume(self, state: dict[str, Any], total: int) -> None:
        if (state["cycles"], state["total_steps"]) != (self.cycles, total):
            raise ToolkitError(
                f"cannot resume: the checkpoint's snapshot schedule is cycles={state['cycles']} over "
                f"{state['total_steps']} steps, this run has cycles={self.cycles} over {total} steps; resume with "
                "the cycles, max_epochs/max_steps, limit_train_batches and accumulate_grad_batches of the first run"
            )
        self.total_steps, self.cycle_steps = state["total_steps"], state["cycle_steps"]
        self.start_step = int(state.get("start_step", 0))
        self.snapshots = list(state["snapshots"])
        self.run_token = state.get("run_token") or uuid.uuid4().hex

    # -- evaluation: which snapshots exist ---------------------------------------------------------------------
    def member_paths(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[int, Path]]:
        # found on disk, not taken from the state: the tested (best) checkpoint may predate the last snapshots
        folders = [snapshot_dir(trainer)]
        if trainer.ckpt_path:
            folders.append(Path(trainer.ckpt_path).parent)
        for folder in dict.fromkeys(folders):
            found = [(i, folder / f"snapshot-{i}.pt") for i in range(self.cycles)]
            found = self._own([(i, p) for i, p in found if p.is_file()])
            if found:
                if len(found) < self.cycles:
                    rank_zero_warn(f"SnapshotEnsemble: only {len(found)} of {self.cycles} snapshots in {folder}")
                return found
        where = " or ".join(str(f) for f in dict.fromkeys(folders))
        raise ToolkitError(
            f"no snapshot-<i>.pt in {where}; train with SnapshotEnsemble first, or set --trainer.default_root_dir "
            "to the run that saved them"
        )

    def _own(self, found: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
        """The snapshots written by this run; files left by another run in the same folder are skipped, loudly."""
        if self.run_token is None:  # nothing to tie them to: a test without a checkpoint of a SnapshotEnsemble fit
            return found
        own = [(i, p) for i, p in found if _run_of(p) == self.run_token]
        stale = [p.name for i, p in found if (i, p) not in own]
        if stale:
            rank_zero_warn(f"SnapshotEnsemble: ignoring {', '.join(stale)}: left in the folder by another run")
        return own

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        state = _state_of(load_data(path, what="snapshot"))
        check_finite(state, path, what="snapshot")
        return state


def _probe_steps(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
    """Optimizer steps before the backbone trains (`ImageClassifier.probe_steps`; 0 for another module)."""
    probe_steps = getattr(pl_module, "probe_steps", None)
    return int(probe_steps()) if callable(probe_steps) else 0


def tested_snapshots(trainer: pl.Trainer) -> str | None:
    """The snapshots behind ``test/*_ensemble``, as phase and epoch of each, oldest first, e.g.
    ``fine-tune epoch 1, fine-tune epoch 2`` (the run's ``tested_snapshots``); None without a snapshot ensemble test.

    An ensemble that averages a probe-phase snapshot says so here (and in the table's note): its number is partly the
    probe's, not only the fine-tuned schedule's.
    """
    callback = next((c for c in trainer.callbacks if isinstance(c, SnapshotEnsemble)), None)
    if callback is None or not callback.tested_members:
        return None
    phase_of = getattr(trainer.lightning_module, "phase_of", None)
    described = []
    for path in callback.tested_members:
        epoch = _epoch_of(path)
        if epoch is None:
            described.append("epoch ?")  # a snapshot written before epochs were recorded
        else:
            described.append(f"{phase_of(epoch)} epoch {epoch}" if callable(phase_of) else f"epoch {epoch}")
    return ", ".join(described)


def _epoch_of(path: Path) -> int | None:
    """The epoch stored in a snapshot file (None for older files or one that went missing)."""
    try:
        epoch = _header_of(path).get("epoch")
    except (OSError, RuntimeError):
        return None
    return int(epoch) if epoch is not None else None


def _state_of(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a snapshot file (``{"run", "state_dict"}``; a plain state dict from older versions)."""
    return saved["state_dict"] if "run" in saved and "state_dict" in saved else saved


def _run_of(path: Path) -> str | None:
    """The run token stored in a snapshot file (None for older files)."""
    return _header_of(path).get("run")


def _header_of(path: Path) -> dict[str, Any]:
    """The fields beside the weights of a snapshot file (``run``, ``epoch``; {} for a plain state dict of older
    versions); memory-mapped: the weights are not read."""
    saved = load_data(path, what="snapshot", mmap=True)
    if not isinstance(saved, dict):
        raise ToolkitError(f"snapshot {path} is not a state dict; delete it (it is not one this toolkit wrote)")
    return {k: v for k, v in saved.items() if k != "state_dict"} if "state_dict" in saved else {}
