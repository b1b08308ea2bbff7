"""Per-step learning-rate schedules (cosine, constant, step) with optional linear warmup, as one LambdaLR."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class WarmupSchedule(LambdaLR):
    """Linear warmup, then a ``cosine`` decay, a ``constant`` lr, or ``step`` decay; stepped every optimizer step.

    The factor multiplies each param group's initial lr, so the ratio between the head and backbone groups holds.

    The schedule means the same for every transfer mode: it starts when the backbone starts training. An LP->FT run's
    probe epochs (``start_steps``: the classifier passes them) run at the initial lr (an SGD probe trains its head
    there, an L-BFGS probe takes no step), and the warmup and decay then span the fine-tuning steps, fractions
    included; for a full fine-tune or a probe alone ``start_steps`` is 0.

    Args:
        optimizer: the wrapped optimizer.
        schedule: shape after warmup.
        warmup_steps: linear warmup length in optimizer steps; a value below 1 is a fraction of the scheduled steps
            (``total_steps - start_steps``).
        total_steps: optimizer steps of the whole run; the classifier passes the trainer's estimate when it is None
            (see :func:`build_lr_scheduler`).
        start_steps: optimizer steps before the schedule starts (LP->FT's probe epochs; the classifier passes them
            when it is None).
        min_lr_ratio: the cosine's floor as a fraction of the initial lr.
        step_every: ``step`` schedule: steps between decays; a value below 1 is a fraction of the total steps.
        gamma: ``step`` schedule: decay factor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: Literal["cosine", "constant", "step"] = "cosine",
        warmup_steps: float = 0.05,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        step_every: float = 0.3,
        gamma: float = 0.1,
        start_steps: int | None = None,
    ) -> None:
        self.schedule, self.min_lr_ratio, self.gamma = schedule, min_lr_ratio, gamma
        total = total_steps
        if (schedule != "constant" or 0 < warmup_steps < 1) and not total:
            raise ValueError("WarmupSchedule needs total_steps (the classifier passes the trainer's estimate)")
        self.start_steps = int(start_steps or 0)
        self.total_steps = max(0, int(total) - self.start_steps) if total else 0  # the scheduled (fine-tuning) steps
        self.warmup_steps = round(warmup_steps * self.total_steps) if 0 < warmup_steps < 1 else int(warmup_steps)
        self.step_every = max(1, round(step_every * self.total_steps) if step_every < 1 else int(step_every))
        super().__init__(optimizer, self.factor)

    def factor(self, step: int) -> float:
        """The lr multiplier at optimizer step ``step`` (0-based, counted from the run's first step)."""
        if step < self.start_steps:
            return 1.0
        step -= self.start_steps
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.schedule == "constant":
            return 1.0
        after = step - self.warmup_steps
        if self.schedule == "step":
            return self.gamma ** (after // self.step_every)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, after / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_lr_scheduler(
    factory: Callable[..., LRScheduler], optimizer: Optimizer, total_steps: int, start_steps: int = 0
) -> tuple[LRScheduler, bool]:
    """``factory(optimizer)``, passing ``total_steps`` (and ``start_steps``) when the scheduler takes it and the
    config left it unset.

    Schedules sized in optimizer steps (WarmupSchedule, torch's OneCycleLR) need the run's length, which only the
    trainer knows (``estimated_stepping_batches``); it is passed as the plain ``total_steps`` argument, and the steps
    before the backbone trains as ``start_steps`` to a scheduler that takes that too (`WarmupSchedule`). Returns the
    scheduler and whether it was sized this way (then it is stepped every optimizer step).
    """
    target: Any = factory
    given: dict[str, Any] = {}
    if isinstance(factory, functools.partial):  # what jsonargparse builds from a class_path + init_args
        given = factory.keywords
        target = next((a for a in factory.args if inspect.isclass(a)), factory.func)
    try:
        takes = "total_steps" in inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature: nothing to pass
        takes = False
    if takes and given.get("total_steps") is None:
        extra = {}
        if "start_steps" in inspect.signature(target).parameters and given.get("start_steps") is None:
            extra["start_steps"] = start_steps
        return factory(optimizer, total_steps=total_steps, **extra), True
    return factory(optimizer), takes
