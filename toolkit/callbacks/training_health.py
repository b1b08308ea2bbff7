"""Training-health callbacks for any run: the update/parameter ratio per param group, and dead ReLU units per layer.

Switch them on from a config::

    trainer:
      callbacks:
        - class_path: toolkit.callbacks.training_health.UpdateRatioMonitor
        - class_path: toolkit.callbacks.training_health.DeadUnitMonitor

Rule of thumb (CS231n notes): a healthy step changes each weight by about 1e-3 of its size; far above, the lr is too
high; far below, too low. A ReLU unit that outputs zero for every sample of a batch passes no gradient: a layer made
mostly of such units is dead.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

#: the update/parameter ratio the rule of thumb aims at
TARGET_RATIO = 1e-3
RATIO_KEY = "health/update_ratio"
DEAD_KEY = "health/dead_fraction"


def group_name(group: dict[str, Any], index: int) -> str:
    """A param group's ``name`` (the classifier names ``head`` and ``backbone``), else ``group<i>``."""
    return str(group.get("name") or f"group{index}")


def update_ratio(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    """``||after - before|| / ||before||`` over all tensors of a group taken as one vector (NaN if ``before`` is 0)."""
    delta = math.sqrt(sum(float((a - b).double().pow(2).sum()) for a, b in zip(after, before, strict=True)))
    norm = math.sqrt(sum(float(b.double().pow(2).sum()) for b in before))
    return delta / norm if norm > 0 else math.nan


class UpdateRatioMonitor(Callback):
    """Log ``||Δw|| / ||w||`` of each optimizer step per param group (and per parameter on request).

    The ratio is measured, not estimated from gradients: the weights are copied before the optimizer step and
    compared after it, so momentum, Adam's scaling and weight decay are all included.

    Args:
        every_n_steps: measure every n-th optimizer step (copying the weights costs one model's memory and time).
        per_layer: also log each parameter tensor's ratio (``health/update_ratio/<group>/<param name>``).
        low: warn when a group's ratio falls below this (lr probably too low).
        high: warn when a group's ratio rises above this (lr probably too high).
    """

    def __init__(self, every_n_steps: int = 10, per_layer: bool = False, low: float = 1e-4, high: float = 1e-2) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.every_n_steps, self.per_layer, self.low, self.high = every_n_steps, per_layer, low, high
        #: every measured ratio by key, in step order (the doctor reads it)
        self.history: dict[str, list[float]] = {}
        self._before: list[tuple[str, list[tuple[str, torch.nn.Parameter, torch.Tensor]]]] | None = None
        self._warned: set[str] = set()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self._before = []
        for index, group in enumerate(optimizer.param_groups):
            params = [p for p in group["params"] if p.requires_grad and p.grad is not None]
            if params:  # a frozen or gated group has nothing to measure
                copies = [(names.get(id(p), "?"), p, p.detach().clone()) for p in params]
                self._before.append((group_name(group, index), copies))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._before is None:
            return
        before, self._before = self._before, None
        for group, copies in before:
            olds = [old for _, _, old in copies]
            news = [p.detach() for _, p, _ in copies]
            self._log(pl_module, f"{RATIO_KEY}/{group}", update_ratio(olds, news))
            self._check(group, self.history[f"{RATIO_KEY}/{group}"][-1])
            if self.per_layer:
                for name, p, old in copies:
                    self._log(pl_module, f"{RATIO_KEY}/{group}/{name}", update_ratio([old], [p.detach()]))

    def _log(self, pl_module: pl.LightningModule, key: str, value: float) -> None:
        self.history.setdefault(key, []).append(value)
        pl_module.log(key, value, on_step=True, on_epoch=False)

    def _check(self, group: str, ratio: float) -> None:
        if group in self._warned or not math.isfinite(ratio) or self.low <= ratio <= self.high:
            return
        self._warned.add(group)
        hint = "the lr is probably too high" if ratio > self.high else "the lr is probably too low"
        rank_zero_warn(
            f"update/parameter ratio of param group '{group}' is {ratio:.1e}, far from ~{TARGET_RATIO:.0e}: {hint}"
        )


def dead_fraction(output: torch.Tensor) -> float:
    """Share of the units of a ReLU output (all dims but the batch) that are zero for every sample of the batch."""
    if output.ndim < 2 or output.shape[0] == 0:
        return math.nan
    return float((output <= 0).all(dim=0).float().mean())


class DeadUnitMonitor(Callback):
    """Log the fraction of dead ReLU units per layer (``health/dead_fraction/<module name>``); warn on dead layers.

    Forward hooks on every ``nn.ReLU`` of the model read its output every n-th training batch; other batches run
    without the check.

    Args:
        every_n_steps: check every n-th training batch.
        threshold: a layer with at least this fraction of dead units is reported as dead.
    """

    def __init__(self, every_n_steps: int = 10, threshold: float = 0.9) -> None:
        if every_n_steps < 1 or not 0 < threshold <= 1:
            raise ValueError("every_n_steps must be >= 1 and threshold in (0, 1]")
        self.every_n_steps, self.threshold = every_n_steps, threshold
        #: every measured fraction by layer name, in step order
        self.history: dict[str, list[float]] = {}
        self._active = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._current: dict[str, float] = {}
        self._warned: set[str] = set()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name, module in pl_module.named_modules():
            if isinstance(module, torch.nn.ReLU):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        if not self._handles:
            rank_zero_warn("DeadUnitMonitor: the model has no nn.ReLU modules; nothing to check")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if self._active:
                self._current[name] = dead_fraction(output.detach())

        return hook

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._active = trainer.global_step % self.every_n_steps == 0
        self._current = {}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        self._active = False
        for name, fraction in self._current.items():
            self.history.setdefault(name, []).append(fraction)
            pl_module.log(f"{DEAD_KEY}/{name}", fraction, on_step=True, on_epoch=False)
            if fraction >= self.threshold and name not in self._warned:
                self._warned.add(name)
                rank_zero_warn(
                    f"layer '{name}': {fraction:.0%} of its ReLU units are zero for a whole batch (dead); "
                    "lower the lr, check the init, or use a leaky activation"
                )
