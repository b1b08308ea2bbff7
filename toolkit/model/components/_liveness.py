"""Refuse a backbone that is dead after its switches: the same features for every input, or no gradient at all.

This catches combinations nobody listed (a switch on a family with an unusual init, a lesion of everything, ...).
The probe is cheap and leaves no trace: a few random images from a private ``torch.Generator`` (the global random
state, and with it the run's random stream, is untouched), one forward and one backward in eval mode (BatchNorm
running statistics are not updated, no dropout), gradients taken with ``torch.autograd.grad`` (no ``.grad`` is set).
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.errors import ToolkitError

PROBE_IMAGES = 3
#: probe side in pixels for backbones that take any size (convnets); a fraction of the cost of 224 px
PROBE_SIZE = 64
_RTOL = 1e-6


def _constant(x: torch.Tensor) -> bool:
    """Whether every sample of the batch ``x`` is (numerically) the same."""
    x = x.detach().float()
    return bool((x - x[:1]).abs().amax() <= _RTOL * x.abs().amax().clamp_min(1e-30))


def probe_batch(backbone: nn.Module, images: int = PROBE_IMAGES, size: int | None = None) -> torch.Tensor:
    """``images`` random images the backbone accepts, drawn from a private generator (fixed seed)."""
    first_conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    _, height, width = getattr(backbone, "pretrained_cfg", {}).get("input_size", (3, 224, 224))
    if size is not None:
        height = width = size
    param = next(backbone.parameters(), None)
    x = torch.randn(images, channels, height, width, generator=torch.Generator().manual_seed(0))
    return x.to(param.device, param.dtype) if param is not None else x


def _first_constant_module(backbone: nn.Module, x: torch.Tensor) -> str | None:
    """The first module, in forward order, whose output is constant over the batch while its input was not."""
    found: list[str] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: object) -> None:
            if found or not isinstance(out, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
                return
            if out.shape[0] == x.shape[0] and _constant(out) and not _constant(args[0]):
                found.append(f"'{name}' ({type(module).__name__})")

        return record

    for name, module in backbone.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            backbone(x)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def _forward_probe(backbone: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe images and their features (with grad): small images first, the model's own size if it needs that."""
    with torch.enable_grad():
        try:
            x = probe_batch(backbone, size=PROBE_SIZE)
            return x, backbone(x)
        except (RuntimeError, AssertionError, ValueError):  # fixed-size models (ViT patch embedding)
            x = probe_batch(backbone)
            return x, backbone(x)


def check_liveness(backbone: nn.Module, changes: list[str]) -> None:
    """Raise when ``backbone`` gives the same features for every probe image, or no trainable parameter gets a grad.

    Args:
        backbone: the backbone after its switches, before an optimizer holds its parameters.
        changes: what the switches changed (`apply_switches`' lines), named in the diagnosis.

    Raises:
        ToolkitError: naming the first layer whose output no longer depends on the input, and the switches.
    """
    flags = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        x, features = _forward_probe(backbone)
        trainable = [p for p in backbone.parameters() if p.requires_grad]
        with torch.enable_grad():
            dead = _constant(features)
            grads: tuple[torch.Tensor | None, ...] = ()
            if not dead and trainable and features.requires_grad:
                # a fixed random readout, so that no feature is left out of the gradient
                readout = torch.randn(features.shape, generator=torch.Generator().manual_seed(1)).to(features)
                grads = torch.autograd.grad((features * readout).sum(), trainable, allow_unused=True)
        cause = "; ".join(changes) if changes else "no switch (the backbone as built)"
        if dead:
            where = _first_constant_module(backbone, x)
            at = f"; the first layer whose output no longer depends on the input is {where}" if where else ""
            raise ToolkitError(
                f"dead network: the backbone gives the same features for every input after [{cause}]{at}; "
                "change the switches (or the study's base config) so that the input reaches the features"
            )
        if trainable and all(g is None or not g.any() for g in grads):  # also: features need no parameter
            raise ToolkitError(
                f"dead network: none of the {len(trainable)} trainable backbone parameters gets a gradient after "
                f"[{cause}]; change the switches (or the study's base config) so that the backbone can learn"
            )
    finally:
        for module, flag in flags.items():
            module.training = flag
