"""Apply the ablation switches (BatchNorm level, residual shortcuts, test-time lesion) to a headless timm backbone.

Plain PyTorch and timm: no Lightning, no wandb. `ImageClassifier.__init__` calls `apply_switches` once, before the
optimizer exists, and logs the lines it returns; it then refuses a dead network (`check_liveness`). Each switch is
declared once in `registry` (levels, transform, init guard, cache key). The README's "Component switches" section says
what each switch means.
"""

from __future__ import annotations

from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.components._batchnorm import NormFreeAct, bn_families, find_batchnorms, require_batchnorms
from toolkit.model.components._dropout import active_dropout_modules
from toolkit.model.components._init_guard import (
    check_drop_path,
    check_untrained_statistics,
    check_zero_init,
    init_adjustments,
    untrained_batchnorms,
    zero_init_gammas,
)
from toolkit.model.components._liveness import check_liveness
from toolkit.model.components._residual import (
    check_block_indices,
    list_residual_blocks,
    require_blocks,
    residual_families,
    switch_block,
)
from toolkit.model.components.registry import batchnorm_level

__all__ = [
    "NormFreeAct",
    "active_dropout_modules",
    "apply_switches",
    "bn_families",
    "check_liveness",
    "check_untrained_statistics",
    "find_batchnorms",
    "init_adjustments",
    "list_residual_blocks",
    "residual_families",
    "untrained_batchnorms",
    "zero_init_gammas",
]


def _plan_blocks(
    backbone: nn.Module, residual: bool, residual_blocks: list[int] | None, lesion_blocks: list[int] | None
) -> tuple[list[str], list[int], list[int]]:
    """Validate the residual and lesion options; return block names, blocks without shortcut, lesioned blocks."""
    if residual_blocks is not None and residual:
        raise ToolkitError("residual_blocks only applies with residual=False; set residual=False or drop it")
    if residual and lesion_blocks is None:
        return [], [], []
    names = require_blocks(backbone, "residual=False" if not residual else "lesion_blocks")
    no_shortcut: list[int] = []
    if not residual:
        if residual_blocks is not None:
            check_block_indices("residual_blocks", residual_blocks, len(names))
        no_shortcut = sorted(residual_blocks) if residual_blocks is not None else list(range(len(names)))
    lesioned: list[int] = []
    if lesion_blocks is not None:
        check_block_indices("lesion_blocks", lesion_blocks, len(names))
        lesioned = sorted(lesion_blocks)
        both = sorted(set(lesioned) & set(no_shortcut))
        if both:
            raise ToolkitError(
                f"blocks {both} are both lesioned and without shortcut, which leaves them nothing to output; "
                "lesion other blocks or list the others in residual_blocks"
            )
    return names, no_shortcut, lesioned


def apply_switches(
    backbone: nn.Module,
    batchnorm: str = "on",
    residual: bool = True,
    residual_blocks: list[int] | None = None,
    lesion_blocks: list[int] | None = None,
) -> list[str]:
    """Edit ``backbone`` in place for an ablation variant; with all defaults change nothing.

    Every option is checked before anything changes, so an error leaves the backbone as it was.

    Args:
        backbone: headless timm model (``num_classes=0``), before an optimizer holds its parameters.
        batchnorm: a level of `registry.BATCHNORM_LEVELS`: ``on`` (unchanged); ``frozen`` (normalise with fixed
            running statistics, affine not trained, in train and eval mode); ``fused`` (fold each BatchNorm into the
            conv before it: same eval-mode function, then trains with no normalisation); ``off`` (remove BatchNorm;
            ``BatchNormAct2d`` keeps its activation).
        residual: False removes the shortcut addition of the supported residual blocks (see `residual_families`).
        residual_blocks: with ``residual=False``, only these blocks (0-based, forward order, see
            `list_residual_blocks`) lose their shortcut; None means all.
        lesion_blocks: test-time lesion (Veit et al. 2016): these blocks output their shortcut alone.

    Returns:
        One human-readable line per switch that changed something, e.g. ``"batchnorm=fused: 20 layers folded into
        the preceding conv"``; ``[]`` with all defaults.

    Raises:
        ToolkitError: an unknown level, a switch that finds nothing to change (the message names the supported
            families), ``residual_blocks`` without ``residual=False``, block indices out of range or repeated, a block
            both lesioned and without shortcut, ``fused`` on a BatchNorm that does not follow a conv, a switch that
            would meet timm's zero-initialised norm scales (see ``_init_guard``), or stochastic depth on blocks
            without shortcut.
    """
    level = batchnorm_level(batchnorm)
    bn_names = require_batchnorms(backbone, batchnorm) if level.transform is not None else []
    bn_plan = level.plan(backbone, bn_names) if level.transform is not None else None
    block_names, no_shortcut, lesioned = _plan_blocks(backbone, residual, residual_blocks, lesion_blocks)
    # a switch must not change the initialisation or drop whole blocks (see _init_guard)
    check_zero_init(backbone, batchnorm, bn_names, {i: block_names[i] for i in no_shortcut})
    check_drop_path(backbone, {i: block_names[i] for i in no_shortcut})

    changes = []
    if level.transform is not None:
        changes.append(level.transform(backbone, bn_plan))
    removed = sum(switch_block(backbone.get_submodule(block_names[i]), "branch") for i in no_shortcut)
    if no_shortcut:
        note = f" ({removed} unused shortcut projections removed)" if removed else ""
        which = (
            f"{len(no_shortcut)} of {len(block_names)} blocks {no_shortcut}"
            if residual_blocks
            else f"all {len(block_names)} blocks"
        )
        changes.append(f"residual=False: {which} without shortcut{note}")
    for index in lesioned:
        switch_block(backbone.get_submodule(block_names[index]), "shortcut")
    if lesioned:
        changes.append(f"lesion_blocks={lesioned}: {len(lesioned)} of {len(block_names)} blocks reduced to shortcut")
    return changes
