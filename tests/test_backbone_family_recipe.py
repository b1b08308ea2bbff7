"""The backbone-family recipe of docs/architecture.md, followed: a toy family registered here, nothing else edited.

A toy backbone (a stem, two residual blocks of a type the toolkit does not know, each ``x + branch(x)`` with a
BatchNorm in its branch) gets the switches once its blocks are a ``ResidualFamily`` (``register_family``) and its norm
a ``NormFamily`` (``register_norms``). Before that each switch is refused with one line naming the supported families;
after it, ``residual=False`` makes every block output its branch alone, a lesion its shortcut alone (checked against
the block's own layers), and ``batchnorm=off`` removes the norm.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from toolkit.errors import ToolkitError
from toolkit.model.components import _batchnorm, _residual, apply_switches, find_batchnorms, list_residual_blocks


class ToyNorm(nn.BatchNorm2d):
    """A BatchNorm of the toy family (a type of its own, as timm's norm-act layers are)."""


class ToyBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(channels, channels, 3, padding=1, bias=False), ToyNorm(channels)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class SwitchedToyBlock(ToyBlock):
    switch: str

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.switch == "shortcut" else self.branch(x)


def toy_backbone() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), ToyBlock(4), ToyBlock(4)).eval()
    with torch.no_grad():  # trained-looking statistics, so no guard refuses the norm
        for norm in (m for m in model.modules() if isinstance(m, ToyNorm)):
            norm.running_mean.uniform_(-0.1, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
            norm.num_batches_tracked.fill_(10)
    return model


@pytest.fixture
def toy_family() -> Iterator[None]:
    _residual.register_family("toy", _residual.ResidualFamily("Toy (ToyBlock)", {ToyBlock: SwitchedToyBlock}))
    _batchnorm.register_norms("toy", _batchnorm.NormFamily("Toy (ToyNorm)", norms=(ToyNorm,)))
    yield
    del _residual.RESIDUAL_BLOCKS["toy"], _batchnorm.NORM_FAMILIES["toy"]


def test_an_unknown_family_is_refused_naming_the_supported_ones() -> None:
    assert list_residual_blocks(toy_backbone()) == []
    with pytest.raises(ToolkitError, match=r"residual=False: Sequential has no supported residual block; supported: "):
        apply_switches(toy_backbone(), residual=False)


@pytest.mark.usefixtures("toy_family")
def test_a_registered_family_gets_every_switch() -> None:
    x = torch.randn(2, 3, 8, 8)
    intact = toy_backbone()
    stem, first, second = intact[0], intact[1], intact[2]
    assert list_residual_blocks(intact) == ["1", "2"]
    with torch.no_grad():
        branch_only = second.branch(first.branch(stem(x)))  # the reference, from the blocks' own layers
        shortcut_first = second(stem(x))  # block 0 lesioned: it passes its input on

        model = toy_backbone()
        assert apply_switches(model, residual=False) == ["residual=False: all 2 blocks without shortcut"]
        assert torch.allclose(model(x), branch_only)
        lesioned = toy_backbone()
        apply_switches(lesioned, lesion_blocks=[0])
        assert torch.allclose(lesioned(x), shortcut_first)
        normless = toy_backbone()
        assert find_batchnorms(normless) == ["1.norm", "2.norm"]
        apply_switches(normless, batchnorm="off")
        assert find_batchnorms(normless) == [] and not any(isinstance(m, ToyNorm) for m in normless.modules())
