"""BatchNorm switches (frozen, fused, off) on timm's tiny models, checked against references computed here."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from sklearn.datasets import load_digits
from timm.layers import BatchNormAct2d, FrozenBatchNormAct2d
from torch import nn
from torch.nn import functional as F
from torchvision.ops.misc import FrozenBatchNorm2d

from toolkit.errors import ToolkitError
from toolkit.model.components import apply_switches, find_batchnorms

BN_MODELS = ["test_resnet", "test_efficientnet"]
ANY_BN = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d, FrozenBatchNormAct2d)
ACTIVATIONS = (nn.ReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid)


def digits_batch(n: int = 16, size: int = 64) -> torch.Tensor:
    """A real batch: scikit-learn digits upsampled to ``size`` pixels, three channels, roughly standardised."""
    images = torch.tensor(load_digits().images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return ((images - 0.5) / 0.25).expand(-1, 3, -1, -1).contiguous()


def create(name: str, seed: int = 0, **kwargs) -> nn.Module:
    """A headless tiny model whose BatchNorm layers hold random statistics and affine, so BN is not a no-op."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def activations(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(m)) for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)]


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"])
def test_defaults_change_nothing(name: str) -> None:
    model = create(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    assert apply_switches(model) == []
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", BN_MODELS)
def test_fused_equals_unfused_in_eval_and_no_normalisation_left(name: str) -> None:
    model = create(name)
    reference = copy.deepcopy(model).eval()
    n_bn = len(find_batchnorms(model))
    changes = apply_switches(model, batchnorm="fused")
    assert changes == [f"batchnorm=fused: {n_bn} layers folded into the preceding conv"]
    assert not any(isinstance(m, ANY_BN) for m in model.modules())
    assert activations(model) == activations(reference)
    assert all(p.requires_grad for p in model.parameters())  # the folded shift lives on as a trainable conv bias

    x = digits_batch()
    with torch.no_grad():
        expected = reference(x)
        fused_eval = model.eval()(x)
        fused_train = model.train()(x)  # no batch statistics anywhere: train mode computes the same function
    assert relative_error(fused_eval, expected) < 1e-4
    assert torch.allclose(fused_train, fused_eval, rtol=0, atol=1e-6)
    # the unfused network in train mode normalises with batch statistics, so it differs: the check above means something
    with torch.no_grad():
        assert relative_error(reference.train()(x), expected) > 1e-2


def test_fused_conv_weights_by_hand() -> None:
    model = create("test_resnet")
    conv, bn = copy.deepcopy(model.layer1[0].conv1), copy.deepcopy(model.layer1[0].bn1)
    apply_switches(model, batchnorm="fused")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(model.layer1[0].conv1.weight, conv.weight * scale[:, None, None, None])
    torch.testing.assert_close(model.layer1[0].conv1.bias, bn.bias - bn.running_mean * scale)
    assert isinstance(model.layer1[0].bn1, nn.Identity)


@pytest.mark.parametrize("name", BN_MODELS)
def test_frozen_bn_bit_identical_after_sgd_steps_in_train_mode(name: str) -> None:
    model = create(name)
    reference = copy.deepcopy(model).eval()
    bn_state = {
        f"{n}.{k}": t.clone() for n in find_batchnorms(model) for k, t in model.get_submodule(n).state_dict().items()
    }
    bn_state = {k: v for k, v in bn_state.items() if not k.endswith("num_batches_tracked")}
    changes = apply_switches(model, batchnorm="frozen")
    assert changes == [
        f"batchnorm=frozen: {len(find_batchnorms(reference))} layers frozen (running statistics and affine fixed)"
    ]
    assert activations(model) == activations(reference)

    x = digits_batch()
    model.train()
    with torch.no_grad():  # frozen BN in train mode normalises with the running statistics, as eval mode does
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-6)

    head = nn.Linear(model.num_features, 10)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1)
    targets = torch.tensor(load_digits().target[: len(x)])
    conv_before = model.get_submodule(
        next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    ).weight.clone()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(head(model(x)), targets).backward()
        optimizer.step()

    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in bn_state.items()), "frozen BatchNorm changed while training"
    conv_after = model.get_submodule(next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))).weight
    assert not torch.equal(conv_after, conv_before), "the rest of the network did not train"


@pytest.mark.parametrize("name", BN_MODELS)
def test_off_removes_every_bn_and_keeps_activations(name: str) -> None:
    model = create(name)
    reference = copy.deepcopy(model)
    n_bn = len(find_batchnorms(model))
    assert apply_switches(model, batchnorm="off") == [f"batchnorm=off: {n_bn} layers removed (activations kept)"]
    assert not any(isinstance(m, ANY_BN) for m in model.modules())
    assert activations(model) == activations(reference)

    # a BatchNormAct2d becomes its activation alone; a plain BatchNorm2d the identity
    x = torch.randn(2, 8, 5, 5)
    for bn_name in find_batchnorms(reference):
        old, new = reference.get_submodule(bn_name), model.get_submodule(bn_name)
        expected = old.act(x.clone()) if isinstance(old, BatchNormAct2d) else x
        torch.testing.assert_close(new(x.clone()), expected, rtol=0, atol=0)

    images = digits_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.train()(images), model.eval()(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("level", ["frozen", "fused", "off"])
@pytest.mark.parametrize("name", BN_MODELS)
def test_switched_state_dict_round_trips(name: str, level: str) -> None:
    trained = create(name, seed=0)
    apply_switches(trained, batchnorm=level)
    fresh = create(name, seed=7)
    apply_switches(fresh, batchnorm=level)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = digits_batch(4)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), trained.eval()(x))


@pytest.mark.parametrize("name", ["test_vit", "test_convnext"])
@pytest.mark.parametrize("level", ["frozen", "fused", "off"])
def test_no_batchnorm_raises_naming_families(name: str, level: str) -> None:
    with pytest.raises(
        ToolkitError, match=r"no BatchNorm layer; families with BatchNorm: ResNet .*EfficientNet.*RegNet"
    ):
        apply_switches(create(name), batchnorm=level)


def test_unknown_level_raises() -> None:
    with pytest.raises(ToolkitError, match="not a level; choose one of on, frozen, frozen-stats, fused, off"):
        apply_switches(create("test_resnet"), batchnorm="none")  # type: ignore[arg-type]


def test_fused_refuses_bn_without_preceding_conv_and_changes_nothing() -> None:
    # pre-activation: BN -> ReLU -> conv, then a conv -> BN pair that alone could be folded
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ToolkitError, match=r"1 BatchNorm layers do not directly follow a conv \(0\).*batchnorm=frozen"):
        apply_switches(model, batchnorm="fused")
    assert isinstance(model[3], nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bn_after_inplace_change_is_not_folded() -> None:
    class ConvAddBn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y += x  # modifies the conv output in place before the BN: folding would be wrong
            return self.bn(y)

    with pytest.raises(ToolkitError, match=r"do not directly follow a conv \(bn\)"):
        apply_switches(ConvAddBn(), batchnorm="fused")


def test_non_2d_batchnorm_raises() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(4))
    with pytest.raises(ToolkitError, match=r"layer '3' is a BatchNorm1d.*2-D BatchNorm"):
        apply_switches(model, batchnorm="off")
    assert isinstance(model[1], nn.BatchNorm2d)
