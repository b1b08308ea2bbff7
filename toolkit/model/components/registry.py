"""The switch registry: one declaration per model switch (its levels, how it applies, its init guard, its cache key).

Plain PyTorch: no Lightning, no wandb. `apply_switches` validates and applies from here, `_init_guard.check_zero_init`
reads a level's ``zero_init_effect``, `features.cache_key` keys on the switches with ``cache_key=True`` (in this
order), and `ImageClassifier.__init__`'s ``BatchNormLevel`` `Literal` is derived from ``BATCHNORM_LEVELS`` (so
LightningCLI's ``--model.batchnorm`` accepts exactly these levels). Adding a BatchNorm level is one `Level` entry in
``BATCHNORM_LEVELS`` plus its transform; `tests/test_switch_recipe.py` follows the recipe of docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.components._batchnorm import (
    freeze_batchnorms,
    freeze_statistics,
    fuse_batchnorms,
    plan_fusion,
    remove_batchnorms,
)


def _names(backbone: nn.Module, bn_names: list[str]) -> list[str]:
    return bn_names


@dataclass(frozen=True)
class Level:
    """One level of the ``batchnorm`` switch.

    Attributes:
        transform: ``(backbone, plan) -> change line``, edits the backbone in place; None leaves it unchanged (and
            then the backbone need not have any BatchNorm).
        plan: ``(backbone, bn_names) -> plan``, checks everything before anything changes (raise `ToolkitError`);
            its result is what ``transform`` gets. The default passes the BatchNorm names through.
        zero_init_effect: what the level would do to zero-initialised BatchNorm scales, completing "``<level>`` would
            ..."; the level is then refused on such a backbone (see ``_init_guard``). None: the level is harmless.
        needs_trained_statistics: the level normalises with the running statistics as they are (frozen, folded);
            on untrained ones (random init: mean 0, var 1) it normalises nothing and is refused (``_init_guard``).
    """

    transform: Callable[[nn.Module, Any], str] | None = None
    plan: Callable[[nn.Module, list[str]], Any] = _names
    zero_init_effect: str | None = None
    needs_trained_statistics: bool = False


#: the ``batchnorm`` switch, default first; `ImageClassifier`'s ``BatchNormLevel`` Literal is these keys
BATCHNORM_LEVELS: dict[str, Level] = {
    "on": Level(),
    "frozen": Level(
        transform=freeze_batchnorms,
        zero_init_effect="freeze them at 0, so those residual branches stay dead for good",
        needs_trained_statistics=True,
    ),
    # the control of `fused`: running statistics fixed as in `frozen`, the affine trained as folding makes it
    "frozen-stats": Level(transform=freeze_statistics, needs_trained_statistics=True),
    "fused": Level(
        transform=fuse_batchnorms,
        plan=plan_fusion,
        zero_init_effect="fold them into their convs as all-zero weights",
        needs_trained_statistics=True,
    ),
    "off": Level(
        transform=remove_batchnorms,
        zero_init_effect="remove them, so the variant would also lose the baseline's zero-init",
    ),
}


@dataclass(frozen=True)
class Switch:
    """One model switch: an argument of `ImageClassifier.__init__` (and so ``--model.<name>`` / ``model.<name>``).

    Attributes:
        name: the argument's name.
        default: the value that changes nothing.
        levels: the values it accepts (a tuple, or a mapping whose keys they are), or None when any value of its
            type is checked by `apply_switches` itself (block lists).
        cache_key: it changes what a frozen backbone computes, so it enters `features.cache_key`; False for a
            test-time switch (a training cache never sees it).
    """

    name: str
    default: Any
    levels: tuple[Any, ...] | Mapping[Any, Any] | None = None
    cache_key: bool = True

    def check(self, value: Any) -> None:
        """Refuse a value that is not one of ``levels`` with one line naming the switch and its levels."""
        if self.levels is not None and value not in self.levels:
            choices = ", ".join(str(level) for level in self.levels)
            raise ToolkitError(f"{self.name}={value!r} is not a level; choose one of {choices}")


#: every switch, in `features.cache_key` order
SWITCHES: dict[str, Switch] = {
    "batchnorm": Switch("batchnorm", "on", levels=BATCHNORM_LEVELS),
    "residual": Switch("residual", True, levels=(True, False)),
    "residual_blocks": Switch("residual_blocks", None),
    "lesion_blocks": Switch("lesion_blocks", None, cache_key=False),
}


def batchnorm_level(level: str) -> Level:
    """The `Level` named ``level``; an unknown one is refused with one line listing the levels."""
    SWITCHES["batchnorm"].check(level)
    return BATCHNORM_LEVELS[level]


def cache_switches(hparams: Any) -> tuple[Any, ...]:
    """The values of the switches that enter `features.cache_key`, in registry order."""
    return tuple(getattr(hparams, s.name) for s in SWITCHES.values() if s.cache_key)
