"""Remove the shortcut of residual blocks (residual ablation) or their residual branch (test-time lesion).

A switched block keeps its class's layers and state_dict keys; only its forward changes. The switch swaps the
block's class for a subclass below whose forward reads ``self.switch``: ``"branch"`` (no shortcut: the block outputs
its residual branch) or ``"shortcut"`` (lesion, Veit et al. 2016: the block outputs its shortcut alone). A subclass
rather than a patched bound method keeps the model picklable and deep-copyable.

The forwards mirror timm 1.0's block forwards with one term left out; the tests check them against the block's own
layers.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from timm.models.convnext import ConvNeXtBlock
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.vision_transformer import Block
from torch import nn
from typing_extensions import override

from toolkit.errors import ToolkitError

RESIDUAL_FAMILIES = (
    "timm ResNet (BasicBlock, Bottleneck: resnet*, resnext*, seresnet*), ConvNeXt (convnext*), "
    "ViT (vision_transformer Block: vit_*, deit_*) and EfficientNet/MobileNet blocks with a skip "
    "(DepthwiseSeparableConv, InvertedResidual, EdgeResidual: efficientnet*, tf_efficientnet*, mobilenetv2*/v3*)"
)


def _resnet_shortcut(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    # clone() so the in-place final activation cannot overwrite the block's input
    return block.downsample(x) if block.downsample is not None else x.clone()


def _resnet_branch_tail(block: BasicBlock | Bottleneck, x: torch.Tensor) -> torch.Tensor:
    if block.se is not None:
        x = block.se(x)
    if block.drop_path is not None:
        x = block.drop_path(x)
    return x


class SwitchedBasicBlock(BasicBlock):
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


class SwitchedBottleneck(Bottleneck):
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


class SwitchedDepthwiseSeparableConv(_SkipSwitch, DepthwiseSeparableConv):
    """timm ``DepthwiseSeparableConv`` without its skip or without its branch."""


class SwitchedInvertedResidual(_SkipSwitch, InvertedResidual):
    """timm ``InvertedResidual`` (MBConv) without its skip or without its branch."""


class SwitchedEdgeResidual(_SkipSwitch, EdgeResidual):
    """timm ``EdgeResidual`` (FusedMBConv) without its skip or without its branch."""


_SKIP_BLOCKS: dict[type[nn.Module], type[nn.Module]] = {
    DepthwiseSeparableConv: SwitchedDepthwiseSeparableConv,
    InvertedResidual: SwitchedInvertedResidual,
    EdgeResidual: SwitchedEdgeResidual,
}

_SWITCHED: dict[type[nn.Module], type[nn.Module]] = {
    **_SKIP_BLOCKS,
    BasicBlock: SwitchedBasicBlock,
    Bottleneck: SwitchedBottleneck,
    ConvNeXtBlock: SwitchedConvNeXtBlock,
    Block: SwitchedViTBlock,
}


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
    if type(module) in _SKIP_BLOCKS:
        return bool(module.has_skip)
    return type(module) in _SWITCHED or type(module) in _SWITCHED.values()


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
            f"{option}: {type(module).__name__} has no supported residual block; supported: {RESIDUAL_FAMILIES}"
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
    attr = "downsample" if isinstance(block, (BasicBlock, Bottleneck)) else "shortcut"
    projection = getattr(block, attr, None)
    removed = switch == "branch" and isinstance(projection, nn.Module) and len(list(projection.parameters())) > 0
    block.__class__ = _SWITCHED.get(type(block), type(block))
    block.switch = switch
    if switch == "branch" and isinstance(block, (BasicBlock, Bottleneck)):
        block.downsample = None
    elif switch == "branch" and isinstance(block, ConvNeXtBlock):
        block.shortcut = nn.Identity()
    elif switch == "branch" and isinstance(block, _SkipSwitch):
        block.has_skip = False
    return removed
