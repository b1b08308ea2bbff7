"""The control of ``bn-fused``: ``batchnorm: frozen-stats`` fixes the running statistics and trains the affine.

``fused`` changes two things at once against ``frozen``: it stops normalising (the statistics are folded into the
convs) and it makes each channel's scale and shift trainable. ``frozen-stats`` takes only the second step, so a study
with both rows separates them. Real in-process fits of timm's ``test_resnet`` on digits, from weights whose
statistics were trained (frozen statistics need trained ones).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from conftest import fit, weights_with_trained_statistics
from torch import nn

from toolkit.model.classifier import ImageClassifier
from toolkit.model.components import find_batchnorms


def _bn_state(model: ImageClassifier) -> dict[str, dict[str, torch.Tensor]]:
    backbone = model.backbone
    return {
        name: {k: v.detach().clone() for k, v in backbone.get_submodule(name).state_dict().items()}
        for name in find_batchnorms(backbone)
    }


def test_frozen_stats_trains_the_affine_and_never_the_statistics(tmp_path: Path) -> None:
    weights = weights_with_trained_statistics(tmp_path / "w.pth")
    args = ["--model.pretrained", weights, "--model.zero_init_last", "false", "--trainer.max_epochs", "2"]
    before = _bn_state(ImageClassifier(backbone="test_resnet", pretrained=weights, zero_init_last=False))
    cli = fit(tmp_path / "stats", *args, "--model.batchnorm", "frozen-stats")
    assert any(line.startswith("batchnorm=frozen-stats:") for line in cli.model.changes)
    after = _bn_state(cli.model)
    assert before.keys() == after.keys() and before
    for name in before:  # statistics bit-identical, affine moved
        assert torch.equal(before[name]["running_mean"], after[name]["running_mean"]), name
        assert torch.equal(before[name]["running_var"], after[name]["running_var"]), name
    assert any(not torch.equal(before[n]["weight"], after[n]["weight"]) for n in before)
    assert any(not torch.equal(before[n]["bias"], after[n]["bias"]) for n in before)
    # in training mode a layer normalises with its running statistics: F.batch_norm in eval form, by hand
    layer = cli.model.backbone.get_submodule(next(iter(after)))
    layer.train()
    x = torch.randn(4, layer.num_features, 5, 5)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
    if hasattr(layer, "act"):  # timm's BatchNormAct2d: its activation follows
        expected = layer.act(layer.drop(expected))
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert isinstance(layer, nn.BatchNorm2d) and layer.weight.requires_grad

    # the three levels of the study on the same data and seed: trainable parameters say what each one trains
    counts = {}
    for level in ("frozen", "frozen-stats", "fused"):
        model = ImageClassifier(backbone="test_resnet", pretrained=weights, zero_init_last=False, batchnorm=level)
        counts[level] = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
    channels = sum(t["weight"].numel() for t in before.values())
    assert counts["frozen-stats"] == counts["frozen"] + 2 * channels  # scale and shift, and nothing else, train
    # folding: the scales go into conv weights that train anyway, the shifts become new conv biases (no bias before)
    assert counts["fused"] == counts["frozen"] + channels
