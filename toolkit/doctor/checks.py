"""The checks of the tuning recipe (steps 1-3) on a built model and data module, each with a verdict and advice.

1. initial loss with regularisation off is about ln C; 2. a small fixed sample is overfitted to 100 % train accuracy;
3. an lr range test (Lightning's ``Tuner.lr_find``) and a short run at each candidate rate on the full training data.
The short runs record their learning curves and update/parameter ratios (step 6 reads them).
"""

from __future__ import annotations

import copy
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.tuner import Tuner
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from toolkit.callbacks.training_health import RATIO_KEY, UpdateRatioMonitor

CANDIDATE_LRS = (1e-1, 1e-2, 1e-3, 1e-4)
#: weight decay of the lr checks: "small", as the recipe says (steps 1-2 run with none)
CHECK_WEIGHT_DECAY = 1e-5
#: the initial loss may differ from ln C by this share of ln C and still pass
LOSS_TOLERANCE = 0.25


@dataclass
class Curve:
    """Per-step training loss and batch accuracy of one short run; ``val_acc`` when validated after it."""

    name: str
    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    val_acc: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)

    def drop(self, window: int = 5) -> float:
        """Relative fall of the loss from the first to the last ``window`` steps (NaN if it went non-finite)."""
        if len(self.loss) < 2 or not all(math.isfinite(v) for v in self.loss):
            return math.nan
        w = max(1, min(window, len(self.loss) // 2))
        first, last = sum(self.loss[:w]) / w, sum(self.loss[-w:]) / w
        return (first - last) / first if first > 0 else math.nan


@dataclass
class Step:
    """One step's verdict: ``passed``, what was measured, and what to do when it failed."""

    name: str
    passed: bool
    measured: str
    advice: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    #: a rule of thumb is off: shown as a warning, not a failure
    warn: bool = False


class CurveRecorder(Callback):
    """Record each training step's loss and batch accuracy (from the model's logits); stop on a non-finite loss or
    when ``stop_at_full`` and an epoch had every sample right."""

    def __init__(self, curve: Curve, stop_at_full: bool = False) -> None:
        self.curve, self.stop_at_full = curve, stop_at_full
        self._logits: torch.Tensor | None = None
        self._handle: Any = None
        self.epoch_accs: list[float] = []
        self._right = self._seen = 0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def keep(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            if module.training:
                self._logits = output.detach()

        self._handle = pl_module.register_forward_hook(keep)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._handle.remove()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        targets = batch[1]
        right = int((self._logits.argmax(-1) == targets).sum()) if self._logits is not None else 0
        self._right, self._seen = self._right + right, self._seen + len(targets)
        self.curve.loss.append(loss)
        self.curve.acc.append(right / max(1, len(targets)))
        if not math.isfinite(loss):
            trainer.should_stop = True

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_accs.append(self._right / max(1, self._seen))
        self._right = self._seen = 0
        if self.stop_at_full and self.epoch_accs[-1] == 1.0:
            trainer.should_stop = True


def with_optimizer(model: pl.LightningModule, lr: float | None, weight_decay: float | None) -> pl.LightningModule:
    """A deep copy of ``model`` whose optimizer uses this lr and weight decay and no lr schedule (constant lr)."""
    model = copy.deepcopy(model)
    factory: Callable[[Any], torch.optim.Optimizer] = model.optimizer_factory

    def make(groups: Any) -> torch.optim.Optimizer:
        optimizer = factory(groups)
        for group in optimizer.param_groups:  # the classifier rescales the backbone group after this
            if lr is not None:
                group["lr"] = lr
            if weight_decay is not None and "weight_decay" in group:
                group["weight_decay"] = weight_decay
        return optimizer

    model.optimizer_factory, model.scheduler_factory = make, None
    return model


#: warnings of the doctor's own trainers that do not apply: step 2 trains on a sample without a val loop on purpose, and
#: step 6 measures and tabulates every update/parameter ratio itself (`callbacks.training_health` warns in a fit)
DOCTOR_WARNINGS = (r"You defined a `validation_step` but have no `val_dataloader`", r"update/parameter ratio of param")


def _trainer(max_steps: int, callbacks: list[Callback], accelerator: str = "cpu", **kwargs: Any) -> pl.Trainer:
    for message in DOCTOR_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    # lr_find saves and restores a checkpoint in default_root_dir: a private temporary folder, never the cwd
    kwargs.setdefault("default_root_dir", tempfile.gettempdir())  # its file name is unique
    return pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kwargs,
    )


def initial_loss(model: pl.LightningModule, loader: DataLoader, num_classes: int, batches: int = 4) -> Step:
    """Step 1: the mean cross-entropy of the untrained model on a few training batches against ln C."""
    probe = copy.deepcopy(model).train()  # train mode, as the first step sees it; the copy keeps BN stats clean
    losses = []
    with torch.no_grad():
        for i, (images, targets) in enumerate(loader):
            if i >= batches:
                break
            losses.append(float(F.cross_entropy(probe(images), targets)))
    measured, expected = sum(losses) / len(losses), math.log(num_classes)
    values = {"loss": measured, "expected": expected}
    text = f"{measured:.3f} vs ln {num_classes} = {expected:.3f}"
    if not math.isfinite(measured) or measured > expected * (1 + LOSS_TOLERANCE):
        advice = (
            "initial loss far above chance: the initial logits are too large (a badly scaled init, e.g. of the head); "
            "initialise the head small (model.head_init: zeros) and check the input normalisation"
        )
        return Step("1 initial loss", False, text, advice, values)
    if measured < expected * (1 - LOSS_TOLERANCE):
        advice = "initial loss below chance: the labels may leak into the inputs, or the loss is not cross-entropy"
        return Step("1 initial loss", False, text, advice, values)
    return Step("1 initial loss", True, text, values=values)


def small_sample(loader: DataLoader, batches: int) -> DataLoader:
    """The first ``batches`` batches of ``loader`` as a fixed sample, served in the same order every epoch."""
    images, targets = [], []
    for i, (x, y) in enumerate(loader):
        if i >= batches:
            break
        images.append(x)
        targets.append(y)
    data = TensorDataset(torch.cat(images), torch.cat(targets))
    return DataLoader(data, batch_size=loader.batch_size, shuffle=False)


def overfit(
    model: pl.LightningModule,
    sample: DataLoader,
    max_steps: int,
    accelerator: str = "cpu",
    callbacks: list[Callback] | None = None,
) -> tuple[Step, Curve]:
    """Step 2: train on the small sample (configured lr, no weight decay, no schedule) until 100 % train accuracy."""
    curve = Curve("overfit")
    recorder = CurveRecorder(curve, stop_at_full=True)
    _trainer(max_steps, [recorder, *(callbacks or [])], accelerator).fit(
        with_optimizer(model, None, 0.0), train_dataloaders=sample
    )
    size = len(sample.dataset)
    name = f"2 overfit {size} samples"
    values = {"steps": len(curve.loss), "epoch_acc": recorder.epoch_accs, "final_loss": curve.loss[-1]}
    if recorder.epoch_accs and recorder.epoch_accs[-1] == 1.0:
        return Step(name, True, f"100 % train accuracy after {len(curve.loss)} steps", values=values), curve
    best = max(recorder.epoch_accs, default=0.0)
    if not math.isfinite(curve.loss[-1]):
        text, advice = f"loss became {curve.loss[-1]}", "loss -> Inf/NaN: the lr is too high or the init is bad"
    elif not curve.drop() > 0.1:
        text, advice = (
            f"loss not falling ({curve.loss[0]:.3f} -> {curve.loss[-1]:.3f})",
            ("loss not falling: the lr is too low or the init is bad"),
        )
    else:
        text = f"{best:.0%} train accuracy after {len(curve.loss)} steps"
        text += f" (loss {curve.loss[0]:.3f} -> {curve.loss[-1]:.3f})"
        advice = (
            "loss falls but 100 % is not reached: allow more steps (--overfit-steps), raise the lr, or a bigger model"
        )
    return Step(name, False, text, advice, values), curve


def lr_range_test(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    steps: int,
    accelerator: str = "cpu",
    callbacks: list[Callback] | None = None,
) -> float | None:
    """Lightning's lr range test on the training data; its suggested lr (None when it cannot suggest one)."""
    trainer = _trainer(steps, list(callbacks or []), accelerator)
    finder = Tuner(trainer).lr_find(
        with_optimizer(model, None, CHECK_WEIGHT_DECAY),
        datamodule=datamodule,
        min_lr=1e-5,
        max_lr=1.0,
        num_training=steps,
        update_attr=False,
    )
    suggestion = finder.suggestion(skip_begin=min(10, steps // 4)) if finder is not None else None
    return float(suggestion) if suggestion else None


def check_lrs(
    model: pl.LightningModule,
    train: DataLoader,
    val: DataLoader,
    steps: int,
    lrs: tuple[float, ...] = CANDIDATE_LRS,
    accelerator: str = "cpu",
    callbacks: list[Callback] | None = None,
) -> list[Curve]:
    """Step 3's short runs: each candidate lr for ``steps`` steps from the same init, then validated once."""
    curves = []
    for lr in lrs:
        curve = Curve(f"lr={lr:g}")
        ratios = UpdateRatioMonitor(every_n_steps=max(1, steps // 10))
        candidate = with_optimizer(model, lr, CHECK_WEIGHT_DECAY)
        trainer = _trainer(steps, [CurveRecorder(curve), ratios, *(callbacks or [])], accelerator)
        trainer.fit(candidate, train_dataloaders=train)
        if all(math.isfinite(v) for v in curve.loss):
            metrics = trainer.validate(candidate, dataloaders=val, verbose=False)
            curve.val_acc = float(metrics[0].get("val/acc", math.nan)) if metrics else None
        prefix = f"{RATIO_KEY}/"
        for key, values in ratios.history.items():
            finite = [v for v in values if math.isfinite(v)]
            if key.count("/") == 2 and finite:
                curve.ratios[key[len(prefix) :]] = sum(finite) / len(finite)
        curves.append(curve)
    return curves


def loss_change(drop: float) -> str:
    """A relative fall of the loss as the change a reader expects: ``-38%`` (fell), ``+20%`` (rose), ``x160`` (rose
    160-fold; a percentage such as -16000 % reads as nonsense), ``diverged`` (non-finite)."""
    if not math.isfinite(drop):
        return "diverged"
    change = -drop
    return f"x{1 + change:.0f}" if change >= 9 else f"{change:+.0%}"


def steps_before_unfreeze(steps: int, unfreeze_at_epoch: int | None, batches_per_epoch: int) -> int:
    """Step 3's steps, cut before an LP->FT unfreeze: a check that crosses it would mix two optimisation problems."""
    if not unfreeze_at_epoch or batches_per_epoch <= 0:
        return steps
    return max(1, min(steps, unfreeze_at_epoch * batches_per_epoch))


def choose_lr(curves: list[Curve], lrs: tuple[float, ...] = CANDIDATE_LRS) -> tuple[Step, float | None]:
    """Step 3's verdict: the candidate whose loss falls most (finite throughout), if it falls clearly (> 10 %)."""
    drops = {lr: curve.drop() for lr, curve in zip(lrs, curves, strict=True)}
    finite = {lr: d for lr, d in drops.items() if math.isfinite(d)}
    text = ", ".join(f"{lr:g}: {loss_change(d)}" for lr, d in drops.items())
    values = {"drops": {str(lr): d for lr, d in drops.items()}}
    if not finite:
        return Step(
            "3 learning rate", False, f"loss change {text}", "every lr diverged: check the init and data", values
        ), None
    best = max(finite, key=finite.get)
    values["lr"] = best
    if finite[best] <= 0.1:
        advice = "no lr makes the loss fall clearly: check the data and labels, or run more steps (--check-steps)"
        return Step("3 learning rate", False, f"loss change {text}", advice, values), best
    return Step("3 learning rate", True, f"best {best:g}; loss change {text}", values=values), best
