"""The classification head put on a headless backbone: optional dropout, then one linear layer."""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

HeadInit = Literal["default", "xavier", "kaiming", "zeros"]


def create_head(
    num_features: int, num_classes: int, drop_rate: float = 0.0, head_init: HeadInit = "default"
) -> nn.Module:
    """A linear classifier, with ``nn.Dropout(drop_rate)`` before it when ``drop_rate > 0``.

    Args:
        num_features: width of the backbone's pooled features.
        num_classes: number of outputs.
        drop_rate: dropout probability on the features.
        head_init: weight init of the linear layer; biases start at zero except for ``default`` (PyTorch's init).
    """
    linear = nn.Linear(num_features, num_classes)
    if head_init == "xavier":
        nn.init.xavier_uniform_(linear.weight)
    elif head_init == "kaiming":
        nn.init.kaiming_normal_(linear.weight, nonlinearity="linear")
    elif head_init == "zeros":
        nn.init.zeros_(linear.weight)
    if head_init != "default":
        nn.init.zeros_(linear.bias)
    layers: list[nn.Module] = [nn.Dropout(drop_rate)] if drop_rate > 0 else []
    return nn.Sequential(*layers, linear)
