"""Local weights files load through timm's own path into the headless backbone, tensor for tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from toolkit.model.backbone import create_backbone
from toolkit.model.heads import create_head


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_weights_file_gives_the_file_tensors(tmp_path: Path, suffix: str) -> None:
    full = timm.create_model("test_resnet", num_classes=1000)  # a published-style state dict, classifier included
    for module in full.modules():  # make buffers non-default so a silent skip would show
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    backbone = create_backbone("test_resnet", str(path))
    loaded = backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_head_init_and_dropout() -> None:
    assert torch.count_nonzero(create_head(8, 3, head_init="zeros")[-1].weight) == 0
    head = create_head(8, 3, drop_rate=0.3, head_init="xavier")
    assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.3
    assert not any(isinstance(m, torch.nn.Dropout) for m in create_head(8, 3))
