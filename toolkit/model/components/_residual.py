"""Remove the shortcut of residual blocks (residual ablation) or their residual branch (test-time lesion).

A switched block keeps its class's layers and state_dict keys; only its forward changes. The switch swaps the
block's class for a subclass below whose forward reads ``self.switch``: ``"branch"`` (no shortcut: the block outputs
its residual branch) or ``"shortcut"`` (lesion, Veit et al. 2016: the block outputs its shortcut alone). A subclass
rather than a patched bound method keeps the model picklable and deep-copyable.

The forwards mirror timm 1.0's block forwards with one term left out; the tests check them against the block's own
layers.

**Block families** are registered next to their block code: a :class:`ResidualFamily` (its description for messages,
each timm block type with its switched subclass, and whether a block of it counts) in :data:`RESIDUAL_BLOCKS` via
:func:`register_family`. A switched subclass defines ``forward`` (reading ``self.switch``) and, when its shortcut has a
projection, ``drop_projection`` (called once its shortcut is switched off). ``tests/test_backbone_family_recipe.py``
registers a toy family and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.vision_transformer import Block
from torch import nn
from typing_extensions import override

from toolkit.errors import ToolkitError


def _resnet_shortcut(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    # clone() so the in-place final activation cannot overwrite the block's input
    return block.downsample(x) if block.downsample is not None else x.clone()


def _resnet_branch_tail(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    if block.se is not None:
        x = block.se(x)
    if block.drop_path is not None:
        x = block.drop_path(x)
    return x


class _ResNetProjection:
    """A ResNet block's shortcut projection is ``downsample``: without the shortcut it computes nothing."""

    downsample: nn.Module | None

    def drop_projection(self) -> bool:
        removed = isinstance(self.downsample, nn.Module) and len(list(self.downsample.parameters())) > 0
        self.downsample = None
        return removed


class SwitchedBasicBlock(_ResNetProjection, BasicBlock):
    """timm ResNet ``BasicBlock`` without its shortcut or its residual branch; the final activation is kept."""

    switch: str

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act2(branch(x)) for ``"branch"``, act2(shortcut(x)) for ``"shortcut"``."""
        if self.switch == "shortcut":
            return self.act2(_resnet_shortcut(self, x))
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x = self.bn2(self.conv2(x))
        return self.act2(_resnet_branch_tail(self, x))


class SwitchedBottleneck(_ResNetProjection, Bottleneck):
    """timm ResNet ``Bottleneck`` without its shortcut or its residual branch; the final activation is kept."""

    switch: str

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """act3(branch(x)) for ``"branch"``, act3(shortcut(x)) for ``"shortcut"``."""
        if self.switch == "shortcut":
            return self.act3(_resnet_shortcut(self, x))
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        return self.act3(_resnet_branch_tail(self, x))


class SwitchedConvNeXtBlock(ConvNeXtBlock):
    """timm ``ConvNeXtBlock`` without its shortcut or its residual branch."""

    switch: str

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """drop_path(branch(x)) for ``"branch"``, shortcut(x) for ``"shortcut"``."""
        if self.switch == "shortcut":
            return self.shortcut(x)
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.mlp(self.norm(x))
        else:
            x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return self.drop_path(x)

    def drop_projection(self) -> bool:
        removed = len(list(self.shortcut.parameters())) > 0
        self.shortcut = nn.Identity()
        return removed


class SwitchedViTBlock(Block):
    """timm ViT ``Block`` without both shortcuts (attention and MLP) or without both residual branches."""

    switch: str

    @override
    def forward(self, x: torch.Tensor, **attn_kwargs: Any) -> torch.Tensor:
        """mlp_branch(attn_branch(x)) for ``"branch"``, x for ``"shortcut"``."""
        if self.switch == "shortcut":
            return x
        x = self.drop_path1(self.ls1(self.attn(self.norm1(x), **attn_kwargs)))
        return self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class _SkipSwitch:
    """Mixin for timm's EfficientNet/MobileNet blocks, whose forward adds ``drop_path(branch) + x`` when has_skip.

    Switching sets ``has_skip`` False, so the block's own forward returns its bare branch; drop_path, which timm
    applies inside the skip, is applied here so the branch is the same function as in the intact block.
    """

    switch: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """drop_path(branch(x)) for ``"branch"``, x for ``"shortcut"`` (the skip is an identity)."""
        if self.switch == "shortcut":
            return x
        return self.drop_path(super().forward(x))  # type: ignore[misc]

    def drop_projection(self) -> bool:
        self.has_skip = False  # the block's own forward then returns its bare branch
        return False


class SwitchedDepthwiseSeparableConv(_SkipSwitch, DepthwiseSeparableConv):
    """timm ``DepthwiseSeparableConv`` without its skip or without its branch."""


class SwitchedInvertedResidual(_SkipSwitch, InvertedResidual):
    """timm ``InvertedResidual`` (MBConv) without its skip or without its branch."""


class SwitchedEdgeResidual(_SkipSwitch, EdgeResidual):
    """timm ``EdgeResidual`` (FusedMBConv) without its skip or without its branch."""


@dataclass(frozen=True)
class ResidualFamily:
    """A family of residual blocks the switches support.

    Attributes:
        description: how messages name it (architectures and timm model names).
        blocks: each timm block type (exact type: a subclass may have another forward) -> its switched subclass.
        counts: whether a block of the family is residual (EfficientNet's blocks only where they have a skip).
    """

    description: str
    blocks: Mapping[type[nn.Module], type[nn.Module]]
    counts: Callable[[nn.Module], bool] = lambda block: True


#: the supported block families, by name
RESIDUAL_BLOCKS: dict[str, ResidualFamily] = {}


def register_family(name: str, family: ResidualFamily) -> None:
    """Support a block family (see the module doc)."""
    RESIDUAL_BLOCKS[name] = family


register_family(
    "resnet",
    ResidualFamily(
        "timm ResNet (BasicBlock, Bottleneck: resnet*, resnext*, seresnet*)",
        {BasicBlock: SwitchedBasicBlock, Bottleneck: SwitchedBottleneck},
    ),
)
register_family("convnext", ResidualFamily("ConvNeXt (convnext*)", {ConvNeXtBlock: SwitchedConvNeXtBlock}))
register_family("vit", ResidualFamily("ViT (vision_transformer Block: vit_*, deit_*)", {Block: SwitchedViTBlock}))
register_family(
    "efficientnet",
    ResidualFamily(
        "EfficientNet/MobileNet blocks with a skip (DepthwiseSeparableConv, InvertedResidual, EdgeResidual: "
        "efficientnet*, tf_efficientnet*, mobilenetv2*/v3*)",
        {
            DepthwiseSeparableConv: SwitchedDepthwiseSeparableConv,
            InvertedResidual: SwitchedInvertedResidual,
            EdgeResidual: SwitchedEdgeResidual,
        },
        counts=lambda block: bool(block.has_skip),
    ),
)


def residual_families() -> str:
    """The supported families, for messages."""
    return ", ".join(family.description for family in RESIDUAL_BLOCKS.values())


def _family_of(block_type: type) -> ResidualFamily | None:
    """The family of a timm block type or of its switched subclass."""
    return next(
        (f for f in RESIDUAL_BLOCKS.values() if block_type in f.blocks or block_type in f.blocks.values()), None
    )


def list_residual_blocks(module: nn.Module) -> list[str]:
    """Names of the residual blocks the switches support, in the order their indices count (forward order).

    Blocks are counted in registration order, which is forward order for timm's sequential stages. Exact types only:
    a subclass may have a different forward. EfficientNet/MobileNet blocks count only where they have a skip
    (``has_skip``: same shape in and out, stride 1).

    Args:
        module: the backbone.

    Returns:
        Qualified module names; index ``i`` of ``residual_blocks`` / ``lesion_blocks`` is ``names[i]``.
    """
    return [name for name, m in module.named_modules() if _is_residual(m)]


def _is_residual(module: nn.Module) -> bool:
    family = _family_of(type(module))
    if family is None:
        return False
    return type(module) in family.blocks.values() or family.counts(module)


def check_block_indices(option: str, indices: list[int], count: int) -> None:
    """Raise unless ``indices`` is a non-empty list of distinct block indices below ``count``."""
    if not indices:
        raise ToolkitError(f"{option} is an empty list; leave it unset (null) to switch nothing")
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
    if bad:
        raise ToolkitError(f"{option}: block indices {bad} out of range; this backbone has blocks 0..{count - 1}")
    if len(set(indices)) != len(indices):
        raise ToolkitError(f"{option}: {sorted(indices)} repeats a block; list each block once")


def require_blocks(module: nn.Module, option: str) -> list[str]:
    """`list_residual_blocks`, raising with the supported families when there are none."""
    names = list_residual_blocks(module)
    if not names:
        raise ToolkitError(
            f"{option}: {type(module).__name__} has no supported residual block; supported: {residual_families()}"
        )
    return names


def switch_block(block: nn.Module, switch: str) -> bool:
    """Make ``block`` output only its residual ``"branch"`` or only its ``"shortcut"``.

    Without its shortcut, a block's shortcut projection (ResNet ``downsample``, ConvNeXt ``shortcut``) computes
    nothing, so it is removed: parameters that get no gradient would make DDP fail and would count as model size.
    A lesioned block keeps every layer, so a checkpoint trained without the lesion loads into it.

    Returns:
        Whether a shortcut projection with parameters was removed.
    """
    family = _family_of(type(block))
    if family is not None:
        block.__class__ = family.blocks.get(type(block), type(block))
    block.switch = switch
    return block.drop_projection() if switch == "branch" and hasattr(block, "drop_projection") else False
