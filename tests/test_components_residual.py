"""Residual-shortcut removal, test-time lesions and dropout detection, checked against the blocks' own layers."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.components import active_dropout_modules, apply_switches, list_residual_blocks


def create(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A headless tiny model in eval mode with random BatchNorm statistics (so BN is not the identity)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.normal_(0, 0.2)
            module.weight.data.uniform_(0.5, 1.5)  # not timm's zero-init, which the residual switch refuses
    return model.eval()


def images(name: str, n: int = 2) -> torch.Tensor:
    size = 160 if name == "test_vit" else 64  # the tiny ViT has a fixed position embedding for 160 px
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def resnet_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual branch of a timm ResNet block, from its own layers, up to but excluding the final activation."""
    if isinstance(block, Bottleneck):
        x = block.act1(block.bn1(block.conv1(x)))
        x = block.act2(block.bn2(block.conv2(x)))
        return block.bn3(block.conv3(x))
    return block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))


def final_act(block: nn.Module) -> nn.Module:
    return block.act3 if isinstance(block, Bottleneck) else block.act2


def standalone(block: nn.Module) -> nn.Module:
    """A bare block inside a container, with random BN statistics, for the block kinds test_resnet lacks."""
    torch.manual_seed(0)
    model = nn.Sequential(block)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.bias.data.normal_(0, 0.2)
    return model.eval()


# (model, block index, input shape): BasicBlock without and with downsample, Bottleneck with downsample, and a
# Bottleneck without downsample (test_resnet has none, so a bare timm Bottleneck)
RESNET_CASES = [
    ("test_resnet", 0, (2, 32, 16, 16)),
    ("test_resnet", 1, (2, 32, 16, 16)),
    ("test_resnet", 2, (2, 48, 8, 8)),
    ("bottleneck", 0, (2, 64, 8, 8)),
]


def resnet_case(name: str) -> nn.Module:
    return standalone(Bottleneck(64, 16)) if name == "bottleneck" else create(name)


@pytest.mark.parametrize(("name", "index", "shape"), RESNET_CASES)
def test_resnet_block_without_shortcut_outputs_its_branch(name: str, index: int, shape: tuple[int, ...]) -> None:
    model = resnet_case(name)
    block_name = list_residual_blocks(model)[index]
    x = torch.randn(*shape).relu()  # block inputs follow a ReLU
    with torch.no_grad():
        original = model.get_submodule(block_name)(x.clone())
        changes = apply_switches(model, residual=False, residual_blocks=[index])
        block = model.get_submodule(block_name)
        expected = final_act(block)(resnet_branch(block, x))
        assert torch.equal(block(x), expected)
        assert not torch.allclose(original, expected, atol=1e-3)  # with its shortcut the block computed more
    assert block.downsample is None  # the projection computes nothing any more: removed, no dead parameters
    count = len(list_residual_blocks(model))
    assert changes[0].startswith(f"residual=False: 1 of {count} blocks [{index}] without shortcut")


def test_other_blocks_keep_their_shortcut() -> None:
    model = create("test_resnet")
    reference = copy.deepcopy(model)
    apply_switches(model, residual=False, residual_blocks=[1])
    x, z = torch.randn(2, 32, 16, 16).relu(), torch.randn(2, 48, 8, 8).relu()
    with torch.no_grad():
        block = model.layer1[0]
        assert type(block) is BasicBlock
        torch.testing.assert_close(block(x.clone()), block.act2(resnet_branch(block, x) + x))
        assert torch.equal(model.layer3[0](z), reference.layer3[0](z))
    assert model.layer3[0].downsample is not None


def test_all_blocks_by_default_and_projections_counted() -> None:
    model = create("test_resnet")
    assert apply_switches(model, residual=False) == [
        "residual=False: all 4 blocks without shortcut (3 unused shortcut projections removed)"
    ]
    assert not any(k.split(".")[2] == "downsample" for k in model.state_dict() if k.startswith("layer"))


def convnext_branch(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = block.norm(block.conv_dw(x).permute(0, 2, 3, 1))
    y = block.mlp(y).permute(0, 3, 1, 2)
    return y * block.gamma.reshape(1, -1, 1, 1) if block.gamma is not None else y


def vit_branches(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    a = block.ls1(block.attn(block.norm1(x)))
    return block.ls2(block.mlp(block.norm2(a)))


@pytest.mark.parametrize(
    ("name", "index", "shape", "branch"),
    [("test_convnext", 1, (2, 32, 8, 8), convnext_branch), ("test_vit", 2, (2, 101, 64), vit_branches)],
)
def test_convnext_and_vit_blocks_without_shortcut(name: str, index: int, shape: tuple[int, ...], branch) -> None:
    model = create(name)
    block_name = list_residual_blocks(model)[index]
    x = torch.randn(*shape)
    with torch.no_grad():
        original = model.get_submodule(block_name)(x)
        apply_switches(model, residual=False, residual_blocks=[index])
        block = model.get_submodule(block_name)
        expected = branch(block, x)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(original, expected, atol=1e-3)


@pytest.mark.parametrize(("name", "index", "shape"), RESNET_CASES)
def test_lesioned_resnet_block_outputs_its_shortcut(name: str, index: int, shape: tuple[int, ...]) -> None:
    model = resnet_case(name)
    block_name = list_residual_blocks(model)[index]
    apply_switches(model, lesion_blocks=[index])
    block = model.get_submodule(block_name)
    x = torch.randn(*shape)  # not post-ReLU, so the kept final activation shows
    x_before = x.clone()
    with torch.no_grad():
        shortcut = block.downsample(x) if block.downsample is not None else x
        expected = final_act(block)(shortcut.clone())
        assert torch.equal(block(x), expected)
    assert torch.equal(x, x_before), "the lesioned block modified its input in place"


@pytest.mark.parametrize(
    ("name", "index", "shape"), [("test_convnext", 1, (2, 32, 8, 8)), ("test_vit", 2, (2, 101, 64))]
)
def test_lesioned_convnext_and_vit_blocks_are_the_identity(name: str, index: int, shape: tuple[int, ...]) -> None:
    model = create(name)
    apply_switches(model, lesion_blocks=[index])
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(model.get_submodule(list_residual_blocks(model)[index])(x), x)


@pytest.mark.parametrize(("name", "index", "stage"), [("test_resnet", 0, "layer1"), ("test_vit", 3, "blocks.3")])
def test_whole_model_lesion_equals_deleting_the_block(name: str, index: int, stage: str) -> None:
    """Veit et al.: a lesioned identity block is the network with that block deleted; trained weights load strictly."""
    trained = create(name, seed=1)
    lesioned = create(name, seed=2)
    assert apply_switches(lesioned, lesion_blocks=[index]) == [
        f"lesion_blocks=[{index}]: 1 of {len(list_residual_blocks(trained))} blocks reduced to shortcut"
    ]
    lesioned.load_state_dict(trained.state_dict(), strict=True)  # a checkpoint of the unlesioned model
    reference = copy.deepcopy(trained)
    reference.set_submodule(stage, nn.Identity())  # layer1 holds one block; its input follows a ReLU
    with torch.no_grad():
        torch.testing.assert_close(lesioned(images(name)), reference(images(name)), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(trained(images(name)), reference(images(name)), atol=1e-3)


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
@pytest.mark.parametrize(
    "switches", [{"residual": False}, {"residual": False, "residual_blocks": [0]}, {"lesion_blocks": [1]}]
)
def test_switched_state_dict_round_trips(name: str, switches: dict) -> None:
    trained, fresh = create(name, seed=0), create(name, seed=5)
    apply_switches(trained, batchnorm="fused" if name == "test_resnet" else "on", **switches)
    apply_switches(fresh, batchnorm="fused" if name == "test_resnet" else "on", **switches)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(images(name)), trained(images(name)))


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_no_active_dropout_with_rates_zero(name: str) -> None:
    model = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=0.0, drop_path_rate=0.0).train()
    assert active_dropout_modules(model) == []
    x = images(name)
    with torch.no_grad():  # reference: in train mode two passes agree only when nothing is random
        assert torch.equal(model(x), model(x))

    noisy = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=0.3, drop_path_rate=0.3).train()
    active = active_dropout_modules(noisy)
    assert any("drop_path" in a for a in active), active  # stochastic depth
    assert any("drop_path" not in a for a in active), active  # dropout before the (removed) classifier
    with torch.no_grad():
        assert not torch.equal(noisy(x), noisy(x))


def test_dropout_listing_names_layers_and_functional_rate() -> None:
    model = nn.Sequential(nn.Dropout(0.0), nn.Dropout(0.2), nn.Linear(2, 2))
    model.drop_rate = 0.5
    assert active_dropout_modules(model) == ["drop_rate", "1"]


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        ({"residual_blocks": [0]}, "residual_blocks only applies with residual=False"),
        (
            {"residual": False, "residual_blocks": [4]},
            r"block indices \[4\] out of range; this backbone has blocks 0..3",
        ),
        ({"residual": False, "residual_blocks": [-1]}, r"block indices \[-1\] out of range"),
        ({"residual": False, "residual_blocks": []}, "residual_blocks is an empty list"),
        ({"residual": False, "residual_blocks": [1, 1]}, r"repeats a block"),
        ({"lesion_blocks": [9]}, r"lesion_blocks: block indices \[9\] out of range"),
        ({"residual": False, "lesion_blocks": [2]}, r"blocks \[2\] are both lesioned and without shortcut"),
        ({"batchnorm": "fused", "residual": False, "residual_blocks": [7]}, "out of range"),
    ],
)
def test_bad_block_options_raise_and_change_nothing(switches: dict, message: str) -> None:
    model = create("test_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    with pytest.raises(ToolkitError, match=message):
        apply_switches(model, **switches)
    assert [type(m) for m in model.modules()] == types  # validated before anything changed (BN not fused either)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("switches", [{"residual": False}, {"lesion_blocks": [0]}])
def test_unsupported_architecture_raises_listing_supported(switches: dict) -> None:
    with pytest.raises(ToolkitError, match=r"no supported residual block; supported: timm ResNet .*ConvNeXt.*ViT"):
        apply_switches(create("test_efficientnet"), **switches)


def test_standalone_basic_block_counts_as_block() -> None:
    model = standalone(BasicBlock(16, 16))
    assert list_residual_blocks(model) == ["0"]
