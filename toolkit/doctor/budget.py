"""The doctor's step budget, said before it starts, and its time left, measured on its first steps and updated.

The doctor's cost is its training steps (step 2's overfit, the lr range test, step 3's short runs) and step 3's
validations; what one step costs depends on the backbone, the image size and the machine, so nothing is guessed
before the first steps ran. The estimate is the wall time so far per unit of work (a training step; a validation
batch weighed at a third of a step per image, a forward pass without the backward), times the work left: setup and
data loading are in it, in proportion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch import Callback
from typing_extensions import override

#: the estimate is first said after this many training steps
FIRST_STEPS = 5


@dataclass(frozen=True)
class Budget:
    """The most work the doctor does: training steps per phase and validation batches."""

    overfit_steps: int
    lr_find_steps: int
    check_steps: int
    lrs: int
    val_batches: int
    batch_size: int
    eval_batch_size: int

    @property
    def train_steps(self) -> int:
        """Every training step the doctor may take (step 2 may stop early at 100 %, lr_find when the loss diverges)."""
        return self.overfit_steps + self.lr_find_steps + self.lrs * self.check_steps

    @property
    def val_weight(self) -> float:
        """A validation batch in training steps: a forward pass (a third of a step) per image."""
        return self.eval_batch_size / (3 * max(1, self.batch_size))

    def line(self) -> str:
        """The budget, said before the doctor starts."""
        return (
            f"doctor: at most {self.train_steps} training steps of {self.batch_size} images (overfit <= "
            f"{self.overfit_steps}, lr range test {self.lr_find_steps}, {self.lrs} lrs x {self.check_steps}) and "
            f"{self.lrs} validations of {self.val_batches} batch{'es' if self.val_batches != 1 else ''}; time "
            f"estimated after {FIRST_STEPS} steps"
        )


def duration(seconds: float) -> str:
    """``45 s``, ``3.2 min``, ``1.5 h``."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class StepClock(Callback):
    """Counts the doctor's work as it is done and says the time left: after the first steps and after each phase.

    Args:
        budget: the most work the doctor does.
        say: where the lines go (``print``).
        clock: the time source (``time.monotonic``).
    """

    def __init__(
        self, budget: Budget, say: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget, self.say, self.clock = budget, say, clock
        self.started = clock()
        self.steps = 0
        self.val_batches = 0
        self.left_steps = budget.train_steps
        self.left_val = budget.lrs * budget.val_batches
        self._allowance = 0
        self._phase = ""
        self._phase_started = self.started
        self._estimated = False  # the time left was said already (a phase may end before FIRST_STEPS steps)

    def start(self, phase: str, steps: int) -> None:
        """A phase that may take up to ``steps`` training steps begins."""
        self._phase, self._allowance, self._phase_started = phase, steps, self.clock()

    def end(self) -> None:
        """The phase ended: the steps it did not take leave the budget; say the time it took and the time left."""
        self.left_steps -= self._allowance
        self._allowance = 0
        took = duration(self.clock() - self._phase_started)
        self.say(f"doctor: {self._phase} took {took}; {self.left()}")
        self._estimated = self._estimated or self.steps > 0

    def seconds_left(self) -> float | None:
        """The estimated time left (None before a training step was measured)."""
        done = self.steps + self.val_batches * self.budget.val_weight
        if self.steps == 0 or done <= 0:
            return None
        per_unit = (self.clock() - self.started) / done
        return per_unit * (max(0, self.left_steps) + max(0, self.left_val) * self.budget.val_weight)

    def left(self) -> str:
        """``about 3.2 min left (12.0 s per step)``, or ``done``."""
        seconds = self.seconds_left()
        if seconds is None or self.left_steps + self.left_val <= 0:
            return "done" if self.left_steps + self.left_val <= 0 else "time left not measured yet"
        per_step = (self.clock() - self.started) / (self.steps + self.val_batches * self.budget.val_weight)
        return f"at most about {duration(seconds)} left ({per_step:.2f} s per step so far)"

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.steps += 1
        self.left_steps -= 1
        self._allowance = max(0, self._allowance - 1)
        if self.steps == FIRST_STEPS and not self._estimated:
            self._estimated = True
            self.say(f"doctor: {self.left()}")

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.validating:  # step 3's validations (trainer.validate), not a sanity check inside a fit
            self.val_batches += 1
            self.left_val -= 1
