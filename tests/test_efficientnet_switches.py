"""Residual removal and lesions on timm's EfficientNet/MobileNet blocks, against the blocks' functions written out."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, EdgeResidual, InvertedResidual
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.backbone import create_backbone
from toolkit.model.components import apply_switches, list_residual_blocks


def _same_shape_blocks(model: nn.Module) -> list[str]:
    """Reference numbering: EfficientNet blocks whose output has their input's shape, found by running the model."""
    seen: list[str] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: seen.append(name) if inp[0].shape == out.shape else None
        )
        for name, m in model.named_modules()
        if isinstance(m, (DepthwiseSeparableConv, InvertedResidual, EdgeResidual))
    ]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    return seen


def _ir_branch(b: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """MBConv written out: expand, depthwise, squeeze-excite, project (bn3 has no activation)."""
    return b.bn3(b.conv_pwl(b.se(b.aa(b.bn2(b.conv_dw(b.bn1(b.conv_pw(x))))))))


def _ds_branch(b: DepthwiseSeparableConv, x: torch.Tensor) -> torch.Tensor:
    return b.bn2(b.conv_pw(b.se(b.aa(b.bn1(b.conv_dw(x))))))


def _er_branch(b: EdgeResidual, x: torch.Tensor) -> torch.Tensor:
    return b.bn2(b.conv_pwl(b.se(b.aa(b.bn1(b.conv_exp(x))))))


def test_lite0_blocks_are_numbered_in_forward_order() -> None:
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    assert list_residual_blocks(model) == _same_shape_blocks(model)
    assert len(list_residual_blocks(model)) == 9  # repeats 1,2,2,3,3,4,1: every repeat after a stage's first


@pytest.mark.parametrize("index", [0, 8])
def test_lite0_block_without_shortcut_computes_its_branch(index: int) -> None:
    model = create_backbone("tf_efficientnet_lite0").eval()
    name = list_residual_blocks(model)[index]
    block = model.get_submodule(name)
    x = torch.randn(2, block.conv_pw.in_channels, 8, 8)
    with torch.no_grad():
        intact = block(x)
        assert torch.allclose(intact, _ir_branch(block, x) + x, atol=1e-5)
        changes = apply_switches(model, residual=False, residual_blocks=[index])
        assert torch.allclose(block(x), _ir_branch(block, x), atol=1e-5)
    assert changes == [f"residual=False: 1 of 9 blocks [{index}] without shortcut"]
    others = [model.get_submodule(n) for n in list_residual_blocks(model) if n != name]
    assert all(type(b) is InvertedResidual and b.has_skip for b in others)


def test_lite0_lesion_keeps_only_the_shortcut_and_the_state_dict() -> None:
    model = create_backbone("tf_efficientnet_lite0").eval()
    keys = set(model.state_dict())
    apply_switches(model, lesion_blocks=[2, 5])
    block = model.get_submodule(list_residual_blocks(model)[5])
    x = torch.randn(2, block.conv_pw.in_channels, 4, 4)
    assert torch.equal(block(x), x)
    assert set(model.state_dict()) == keys  # a checkpoint trained intact loads into the lesioned model


def test_removed_shortcut_with_drop_path_is_refused() -> None:
    # timm applies drop_path inside its `if has_skip`; without the skip, stochastic depth would zero the whole block
    block = InvertedResidual(8, 8, exp_ratio=2.0, drop_path_rate=0.5).eval()
    with pytest.raises(ToolkitError, match=r"drop_path_rate > 0 with residual=False"):
        apply_switches(nn.Sequential(block), residual=False)


@pytest.mark.parametrize(
    ("block", "branch"),
    [
        (DepthwiseSeparableConv(8, 8), _ds_branch),
        (EdgeResidual(8, 8, exp_ratio=2.0), _er_branch),
        (InvertedResidual(8, 8, exp_ratio=3.0), _ir_branch),
    ],
    ids=["DepthwiseSeparableConv", "EdgeResidual", "InvertedResidual"],
)
def test_each_block_type_without_shortcut_and_lesioned(block: nn.Module, branch) -> None:
    x = torch.randn(2, 8, 6, 6)
    plain, lesioned = nn.Sequential(block).eval(), nn.Sequential(copy.deepcopy(block)).eval()
    with torch.no_grad():
        ref = branch(block, x)
        apply_switches(plain, residual=False)
        apply_switches(lesioned, lesion_blocks=[0])
        assert torch.allclose(plain(x), ref, atol=1e-5)
        assert torch.equal(lesioned(x), x)


def test_test_efficientnet_has_no_skip_block_and_says_so() -> None:
    model = create_backbone("test_efficientnet")
    assert _same_shape_blocks(model) == [] == list_residual_blocks(model)
    with pytest.raises(ToolkitError, match=r"no supported residual block; supported: .*EfficientNet"):
        apply_switches(model, residual=False)


@pytest.mark.parametrize(
    ("backbone", "option"),
    [
        ("test_efficientnet", {"zero_init_last": False}),
        ("test_vit", {"zero_init_last": True}),
        ("vgg11", {"drop_path_rate": 0.1}),
    ],
)
def test_an_option_the_family_does_not_take_is_one_line(backbone: str, option: dict) -> None:
    (key,) = option
    with pytest.raises(ToolkitError, match=f"backbone '{backbone}' does not take {key}") as err:
        create_backbone(backbone, **option)
    assert "\n" not in str(err.value)
