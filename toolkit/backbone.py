"""Build a headless timm backbone: hub weights, a local weights file, or random init, with clear errors."""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch.nn as nn

from toolkit.errors import ToolkitError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def check_backbone_name(name: str) -> None:
    """Raise a one-line error with close timm names when ``name`` is not a timm model."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() for the names"
    raise ToolkitError(f"unknown backbone '{name}'{hint}")


class _Records(logging.Handler):
    """Collects timm's load messages; timm reports missing/unexpected keys only through its logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _capture_timm_load_log() -> Iterator[_Records]:
    logger = logging.getLogger("timm.models._builder")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _few(keys: list[str], n: int = 5) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _load_from_file(name: str, path: Path, **kwargs: object) -> nn.Module:
    if not path.is_file():
        raise ToolkitError(f"weights file {path} does not exist; pass pretrained: true, false or an existing file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ToolkitError(f"weights file {path} has an unknown type; use one of {', '.join(WEIGHT_SUFFIXES)}")
    # timm's own loading path: it unwraps 'state_dict'/'model' keys, applies the model's checkpoint filter and
    # drops the classifier, so a full published timm state dict loads into the headless backbone.
    with _capture_timm_load_log() as log:
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except RuntimeError as err:
            keys = re.findall(r"size mismatch for ([\w.]+)", str(err))
            detail = f"shape mismatch for {_few(keys)}" if keys else str(err).splitlines()[0]
            raise ToolkitError(f"weights file {path} does not fit backbone '{name}': {detail}") from err
    bad = [m for m in log.messages if m.startswith(("Missing keys", "Unexpected keys"))]
    if bad:
        detail = "; ".join(m.split(" discovered")[0].split(" found")[0] for m in bad)
        raise ToolkitError(f"weights file {path} does not fit backbone '{name}': {detail}")
    return model


def create_backbone(
    name: str,
    pretrained: bool | str = False,
    drop_path_rate: float = 0.0,
    zero_init_last: bool | None = None,
) -> nn.Module:
    """Create ``name`` from timm without its classifier (``num_classes=0``).

    Args:
        name: any ``timm.list_models()`` name.
        pretrained: ``True`` loads timm hub weights, a path loads a local weights file, ``False`` is random init.
        drop_path_rate: stochastic depth rate passed to timm.
        zero_init_last: zero-init the last BN gamma of each residual block (timm's option); None keeps timm's default.
    """
    check_backbone_name(name)
    kwargs: dict[str, object] = {"num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if zero_init_last is not None:
        kwargs["zero_init_last"] = zero_init_last
    if isinstance(pretrained, str) and pretrained.lower() not in ("true", "false"):
        return _load_from_file(name, Path(pretrained).expanduser(), **kwargs)
    if isinstance(pretrained, str):
        pretrained = pretrained.lower() == "true"
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:  # no network, no cache, or no published weights
        raise ToolkitError(
            f"cannot fetch timm hub weights for '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
            f"offline, pass a local file instead: --model.pretrained /path/to/{name}.safetensors"
        ) from err
