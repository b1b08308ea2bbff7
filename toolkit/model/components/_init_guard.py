"""Refuse switch combinations that would silently change a variant's initialisation or kill whole blocks.

timm zero-initialises the last BatchNorm gamma of each residual block (``zero_init_last=True``), so that every block
starts as the identity through its shortcut. A switch that removes the shortcut, freezes or folds the BatchNorm, or
removes it, then changes more than its name says: without the shortcut each such block outputs 0 for every input
(a dead network), frozen zero gammas keep those branches dead for good, fused zero gammas zero the conv they fold
into, and removing BatchNorm also removes the zero-init the baseline has. A per-variant fix would make the variant
differ from its baseline in its initialisation as well, so these combinations are refused with the one setting that
fixes the whole study (``model.zero_init_last: false`` in the study's base config or spec ``overrides``).

Zero-initialised gammas are found in the built module, not from the model name: some families (EfficientNet, ViT)
take no ``zero_init_last`` argument.
"""

from __future__ import annotations

from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.components.registry import BATCHNORM_LEVELS

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
STUDY_FIX = (
    "set model.zero_init_last: false for the whole study (base config or spec overrides) so the baseline gets it too"
)


def zero_init_gammas(module: nn.Module) -> list[str]:
    """Names of the norm layers (and layer-scale ``gamma`` parameters) whose scale is all zero.

    Args:
        module: a built backbone (or one block of it).

    Returns:
        Qualified module names (for norm layers) or parameter names (for ``gamma``), in registration order.
    """
    found = []
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        if isinstance(child, _NORMS) and weight is not None and weight.numel() and not weight.detach().any():
            found.append(name)
    for name, param in module.named_parameters():
        if name.rsplit(".", 1)[-1] == "gamma" and param.numel() and not param.detach().any():
            found.append(name)
    # frozen BatchNorm keeps its (possibly zero) scale as a buffer
    for name, buf in module.named_buffers():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        frozen_bn = "BatchNorm" in type(module.get_submodule(owner)).__name__ and name.endswith("weight")
        if frozen_bn and owner not in found and buf.numel() and not buf.detach().any():
            found.append(owner)
    return found


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_zero_init(backbone: nn.Module, batchnorm: str, bn_names: list[str], no_shortcut: dict[int, str]) -> None:
    """Raise when a switch meets zero-initialised gammas (see the module docstring); checks only, changes nothing.

    Args:
        backbone: the built backbone, before any switch is applied.
        batchnorm: the BatchNorm level asked for (a key of `registry.BATCHNORM_LEVELS`, already validated).
        bn_names: the backbone's BatchNorm layers.
        no_shortcut: ``{block index: block name}`` of the blocks that lose their shortcut.
    """
    dead_blocks = [i for i, name in no_shortcut.items() if zero_init_gammas(backbone.get_submodule(name))]
    if dead_blocks:
        raise ToolkitError(
            f"residual=False on blocks {dead_blocks} whose last norm scale is zero-initialised (timm's "
            f"zero_init_last) makes each of them output 0 for every input (a dead network); {STUDY_FIX}"
        )
    effect = BATCHNORM_LEVELS[batchnorm].zero_init_effect  # the level's declaration in the switch registry
    if effect is not None:
        zero = [n for n in zero_init_gammas(backbone) if n in set(bn_names)]
        if zero:
            raise ToolkitError(
                f"batchnorm={batchnorm}: {len(zero)} BatchNorm layers have a zero-initialised scale (timm's "
                f"zero_init_last: {_shown(zero)}) and {batchnorm} would {effect}; {STUDY_FIX}"
            )


def untrained_batchnorms(backbone: nn.Module) -> list[str]:
    """Names of the BatchNorm layers whose running statistics are still the untrained defaults (mean 0, var 1)."""
    found = []
    for name, child in backbone.named_modules():
        stats = getattr(child, "running_mean", None), getattr(child, "running_var", None)
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and stats[0] is not None and stats[1] is not None:
            untrained = not stats[0].any() and bool((stats[1] == 1).all())
            found += [name] if untrained else []
    return found


def check_untrained_statistics(untrained: list[str], batchnorm: str) -> None:
    """Refuse frozen or fused BatchNorm whose running statistics were never trained (a randomly initialised net).

    Frozen BatchNorm normalises with its running statistics; untrained ones (mean 0, var 1, gamma 1, beta 0) make
    it the identity, so ``frozen``/``fused`` on random init means *no normalisation*, not "BatchNorm frozen": the
    variant would differ from a pretrained baseline in two things (its init and, silently, its normalisation).

    Args:
        untrained: :func:`untrained_batchnorms` of the backbone before any switch.
        batchnorm: the BatchNorm level asked for.
    """
    if BATCHNORM_LEVELS[batchnorm].needs_trained_statistics and untrained:
        raise ToolkitError(
            f"batchnorm={batchnorm} with untrained BatchNorm statistics ({len(untrained)} layers at mean 0, var 1: "
            f"random init, e.g. {_shown(untrained)}) normalises nothing; train them (model.batchnorm: on), remove "
            "them (off), or load pretrained weights"
        )


def check_drop_path(backbone: nn.Module, no_shortcut: dict[int, str]) -> None:
    """Raise when stochastic depth would drop a block that has no shortcut (the whole block output becomes 0)."""
    from toolkit.model.components._dropout import active_dropout_modules

    hit = [
        i
        for i, name in no_shortcut.items()
        if any("drop_path" in n for n in active_dropout_modules(backbone.get_submodule(name)))
    ]
    if hit:
        raise ToolkitError(
            f"drop_path_rate > 0 with residual=False: stochastic depth would zero whole blocks {hit} (they have no "
            "shortcut to fall back on); set model.drop_path_rate: 0 or keep the shortcuts of those blocks"
        )


def init_adjustments(zero_init_last: bool | None) -> list[str]:
    """What the toolkit set differently from timm's initialisation defaults, for the run's config (``adjusted``).

    These are settings of the whole study (the base config), never of one variant.
    """
    if zero_init_last is False:
        return ["zero_init_last=False: no norm scale zero-initialised (timm's default zeroes the last of each block)"]
    if zero_init_last is True:
        return ["zero_init_last=True: the last norm scale of each residual block starts at zero"]
    return []
