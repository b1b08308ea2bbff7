"""Edit the 2-D BatchNorm layers of a backbone in place: freeze them (statistics and affine, or the statistics
alone), fold them into their convs, or remove them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d, Conv2dSame, FrozenBatchNormAct2d, SyncBatchNormAct, freeze_batch_norm_2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d
from typing_extensions import override

from toolkit.errors import ToolkitError


@dataclass(frozen=True)
class NormFamily:
    """The BatchNorm layers of a family of backbones, as the BatchNorm switch needs them (registered by name in
    :data:`NORM_FAMILIES` with :func:`register_norms`; ``tests/test_backbone_family_recipe.py`` adds a toy one).

    Attributes:
        description: how messages name the family (architectures and timm model names).
        norms: layer types that normalise per channel with BatchNorm statistics (a subclass counts too).
        with_act: those of them that carry a dropout and an activation, kept when the norm is removed.
        convs: conv types a BatchNorm may be folded into (exact types: subclasses such as StdConv2d transform their
            weight in forward, which a fold would break).
    """

    description: str
    norms: tuple[type[nn.Module], ...]
    with_act: tuple[type[nn.Module], ...] = ()
    convs: tuple[type[nn.Module], ...] = ()


#: the supported families, by name
NORM_FAMILIES: dict[str, NormFamily] = {}


def register_norms(name: str, family: NormFamily) -> None:
    """Support a family's BatchNorm layers (see :class:`NormFamily`)."""
    NORM_FAMILIES[name] = family


# timm's CNNs share torch's BatchNorm2d and timm's norm-act layers (BatchNormAct2d subclasses BatchNorm2d)
register_norms(
    "timm-cnn",
    NormFamily(
        "ResNet (resnet*, resnext*, seresnet*), EfficientNet/MobileNet (efficientnet_*, mobilenetv*) and RegNet "
        "(regnet*)",
        norms=(nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d, FrozenBatchNormAct2d),
        with_act=(BatchNormAct2d, SyncBatchNormAct, FrozenBatchNormAct2d),
        convs=(nn.Conv2d, Conv2dSame),
    ),
)


def bn_families() -> str:
    """The supported families, for messages."""
    return ", ".join(family.description for family in NORM_FAMILIES.values())


def _norm_types() -> tuple[type[nn.Module], ...]:
    return tuple(t for family in NORM_FAMILIES.values() for t in family.norms)


def _act_types() -> tuple[type[nn.Module], ...]:
    return tuple(t for family in NORM_FAMILIES.values() for t in family.with_act)


def _conv_types() -> tuple[type[nn.Module], ...]:
    return tuple(t for family in NORM_FAMILIES.values() for t in family.convs)


_FUSE_RTOL = 1e-3


class NormFreeAct(nn.Module):
    """What remains of timm's ``BatchNormAct2d`` without its norm: its dropout, then its activation.

    The children keep the names ``drop`` and ``act``, so state_dict keys (e.g. a PReLU weight) stay those of the
    original layer.
    """

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the kept dropout and activation."""
        return self.act(self.drop(x))


def find_batchnorms(module: nn.Module) -> list[str]:
    """Names of the BatchNorm layers of ``module``; raise for BatchNorm that is not 2-D.

    Args:
        module: the backbone.

    Returns:
        Qualified module names in registration order.
    """
    names = []
    for name, child in module.named_modules():
        if isinstance(child, _norm_types()):
            names.append(name)
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            raise ToolkitError(
                f"layer '{name}' is a {type(child).__name__}; the batchnorm switch handles 2-D BatchNorm "
                "(torch BatchNorm2d, timm BatchNormAct2d) only: use batchnorm=on for this backbone"
            )
    return names


def require_batchnorms(module: nn.Module, level: str) -> list[str]:
    """Like `find_batchnorms`, but raise when there is nothing to switch."""
    names = find_batchnorms(module)
    if not names:
        raise ToolkitError(
            f"batchnorm={level}: {type(module).__name__} has no BatchNorm layer; families with BatchNorm: "
            f"{bn_families()}. Use batchnorm=on for this backbone"
        )
    return names


def freeze_batchnorms(module: nn.Module, names: list[str]) -> str:
    """Replace every BatchNorm by a frozen one: running statistics and affine become fixed buffers.

    timm's ``freeze_batch_norm_2d`` keeps the activation and dropout of ``BatchNormAct2d``; the frozen layers
    behave the same in train and eval mode, so they stay frozen while the rest of the network fine-tunes.
    """
    frozen = [n for n in names if not isinstance(module.get_submodule(n), (FrozenBatchNorm2d, FrozenBatchNormAct2d))]
    if not frozen:
        raise ToolkitError(f"batchnorm=frozen: all {len(names)} BatchNorm layers are frozen already; use batchnorm=on")
    for name in frozen:
        module.set_submodule(name, freeze_batch_norm_2d(module.get_submodule(name)))
    return f"batchnorm=frozen: {len(frozen)} layers frozen (running statistics and affine fixed)"


class _RunningStatistics:
    """Mixin: normalise with the running statistics in training too (and never update them); the affine trains."""

    training: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's own forward as in eval mode: running statistics, no update; its affine keeps its gradients."""
        training, self.training = self.training, False
        try:
            return super().forward(x)  # type: ignore[misc]
        finally:
            self.training = training


_STATS_FROZEN: dict[type, type] = {}


def _stats_frozen_type(cls: type) -> type:
    """The subclass of a BatchNorm type that normalises with its running statistics in training too (one per type)."""
    if cls not in _STATS_FROZEN:
        _STATS_FROZEN[cls] = type(f"StatsFrozen{cls.__name__}", (_RunningStatistics, cls), {})
    return _STATS_FROZEN[cls]


def freeze_statistics(module: nn.Module, names: list[str]) -> str:
    """Fix every BatchNorm's running statistics but keep its affine (scale and shift) trainable.

    The control for ``fused``: folding makes each channel's scale and shift trainable (as conv weight and bias) on top
    of removing normalisation, while ``frozen`` fixes them. With this level a study separates the two: ``frozen`` vs
    ``frozen-stats`` is the trainable affine, ``frozen-stats`` vs ``fused`` the folding. The layers keep their type's
    parameters and state_dict keys; only their forward normalises with the running statistics in training too.
    """
    trainable = [n for n in names if not isinstance(module.get_submodule(n), (FrozenBatchNorm2d, FrozenBatchNormAct2d))]
    if not trainable:
        raise ToolkitError(f"batchnorm=frozen-stats: all {len(names)} BatchNorm layers are frozen already")
    without_affine = [n for n in trainable if getattr(module.get_submodule(n), "weight", None) is None]
    if without_affine:
        raise ToolkitError(
            f"batchnorm=frozen-stats: {len(without_affine)} BatchNorm layers have no affine ({without_affine[0]}, ...) "
            "to train; use batchnorm=frozen"
        )
    for name in trainable:
        layer = module.get_submodule(name)
        layer.__class__ = _stats_frozen_type(type(layer))
    return f"batchnorm=frozen-stats: {len(trainable)} layers with fixed running statistics (affine trained)"


def _without_norm(bn: nn.Module) -> nn.Module:
    return NormFreeAct(bn.drop, bn.act) if isinstance(bn, _act_types()) else nn.Identity()


def remove_batchnorms(module: nn.Module, names: list[str]) -> str:
    """Replace every BatchNorm by the identity, keeping the activation (and dropout) of ``BatchNormAct2d``."""
    for name in names:
        module.set_submodule(name, _without_norm(module.get_submodule(name)))
    return f"batchnorm=off: {len(names)} layers removed (activations kept)"


def _probe_input(module: nn.Module) -> torch.Tensor:
    """A small fixed input for the backbone, drawn without touching the global random state."""
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    _, height, width = getattr(module, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    param = next(module.parameters(), None)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, height, width, generator=generator)
    return x.to(param.device, param.dtype) if param is not None else x


def _run_eval(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward in eval mode without gradients, restoring every submodule's training flag afterwards."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            return module(x)
    finally:
        for m, flag in flags.items():
            m.training = flag


def _trace_conv_feeding(module: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, str | None]:
    """For each BatchNorm, the conv whose output it receives unmodified, found by running the backbone once.

    Registration order does not tell which layer feeds which, so this follows the data: a BatchNorm is fed by a conv
    when its input is the very tensor that conv returned, not modified in place since (same version counter).
    """
    produced: dict[int, tuple[torch.Tensor, int, str]] = {}
    feeding: dict[str, str | None] = {}
    calls: dict[str, int] = {}
    handles = []

    def on_conv(name: str):
        def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            produced[id(out)] = (out, out._version, name)

        return hook

    def on_bn(name: str):
        def hook(_m: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            entry = produced.get(id(args[0]))
            fed = entry is not None and entry[0] is args[0] and entry[1] == args[0]._version
            feeding[name] = entry[2] if fed else None

        return hook

    for name, child in module.named_modules():
        if type(child) in _conv_types():
            handles.append(child.register_forward_hook(on_conv(name)))
    for name in names:
        handles.append(module.get_submodule(name).register_forward_pre_hook(on_bn(name)))
    try:
        _run_eval(module, x)
    finally:
        for handle in handles:
            handle.remove()
    convs = [c for c in feeding.values() if c is not None]
    for name in names:
        conv = feeding.get(name)
        if conv is not None and (calls[name] != 1 or calls[conv] != 1 or convs.count(conv) != 1):
            feeding[name] = None  # a shared or reused layer cannot be folded without changing its other uses
    return feeding


def plan_fusion(module: nn.Module, names: list[str]) -> dict[str, str]:
    """Map each BatchNorm to the conv it folds into; raise, naming them, if some BatchNorm has no such conv.

    A BatchNorm that does not directly follow a plain conv (pre-activation, after a linear or a pooling layer) has no
    weight to fold into. Replacing it by something else would no longer be "the same network without normalisation",
    so `fused` refuses such backbones instead of skipping those layers.
    """
    feeding = _trace_conv_feeding(module, names, _probe_input(module))
    orphans = [n for n in names if feeding.get(n) is None]
    if orphans:
        shown = ", ".join(orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        raise ToolkitError(
            f"batchnorm=fused: {len(orphans)} BatchNorm layers do not directly follow a conv ({shown}), so they "
            f"cannot be folded; fused supports {bn_families()}. Use batchnorm=frozen or batchnorm=off for this backbone"
        )
    return {bn: feeding[bn] for bn in names}  # type: ignore[misc]


def fuse_batchnorms(module: nn.Module, plan: dict[str, str]) -> str:
    """Fold each BatchNorm into its conv (inference-time fusion) and check the eval-mode function is unchanged.

    The conv gets the BatchNorm's eval-mode scale in its weight and shift in its (possibly new) bias; the BatchNorm
    becomes the identity, or its dropout and activation for ``BatchNormAct2d``. From then on the network trains with no
    normalisation at all.
    """
    probe = _probe_input(module)
    before = _run_eval(module, probe)
    for bn_name, conv_name in plan.items():
        bn, conv = module.get_submodule(bn_name), module.get_submodule(conv_name)
        trainable = conv.weight.requires_grad
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.bias.requires_grad_(trainable)  # torch makes a new bias from a constant zero tensor, not trainable
        module.set_submodule(bn_name, _without_norm(bn))
    after = _run_eval(module, probe)
    error = ((after - before).abs().max() / before.abs().max().clamp_min(1e-12)).item()
    if not error <= _FUSE_RTOL:
        raise RuntimeError(f"batchnorm=fused changed the backbone's eval output (relative error {error:.2e}); a bug")
    return f"batchnorm=fused: {len(plan)} layers folded into the preceding conv"
