"""Find the dropout and drop-path layers of a model that actually drop something when training."""

from __future__ import annotations

from timm.layers import DropBlock2d, DropPath, PatchDropout
from torch import nn


def _drop_probability(module: nn.Module) -> float:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return float(module.p)
    if isinstance(module, (DropPath, DropBlock2d)):
        return float(module.drop_prob)
    if isinstance(module, PatchDropout):
        return float(module.prob)
    return 0.0


def active_dropout_modules(module: nn.Module) -> list[str]:
    """Names of the dropout, drop-path, drop-block and patch-dropout layers with a non-zero rate.

    timm models also apply dropout functionally before their classifier (``F.dropout(x, p=self.drop_rate)``); a
    module with a non-zero float ``drop_rate`` attribute is listed as ``"<name>.drop_rate"`` (``"drop_rate"`` for the
    root). Layers with rate 0 (``nn.Dropout(p=0)``, ``DropPath(0.0)``) are inactive and not listed.

    Args:
        module: any model, e.g. a backbone created with ``drop_rate=0, drop_path_rate=0``.

    Returns:
        Qualified names; empty when nothing in ``module`` drops anything.
    """
    active = []
    for name, child in module.named_modules():
        if _drop_probability(child) > 0:
            active.append(name)
        rate = getattr(child, "drop_rate", None)
        if isinstance(rate, float) and rate > 0:
            active.append(f"{name}.drop_rate" if name else "drop_rate")
    return active
