"""Build a headless timm backbone: hub weights, packaged offline weights, a local file, or random init."""

from __future__ import annotations

import difflib
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch.nn as nn
from typing_extensions import override

from toolkit.errors import ToolkitError
from toolkit.quiet import QUIET, verbosity

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

    @override
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


def _create(name: str, **kwargs: object) -> nn.Module:
    """``timm.create_model``, turning a model option this family does not take into one line."""
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        option = next((k for k in _OPTIONS if f"'{k}'" in str(err)), None)
        if option is None:
            raise
        default = "0.0" if option == "drop_path_rate" else "null"
        raise ToolkitError(
            f"backbone '{name}' does not take {option} (timm's model family has no such option); "
            f"leave {option} at {default} for this backbone"
        ) from err


_OPTIONS = ("zero_init_last", "drop_path_rate")


def _load_from_file(name: str, path: Path, **kwargs: object) -> nn.Module:
    if not path.is_file():
        raise ToolkitError(f"weights file {path} does not exist; pass pretrained: true, false or an existing file")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ToolkitError(f"weights file {path} has an unknown type; use one of {', '.join(WEIGHT_SUFFIXES)}")
    # timm's own loading path: it unwraps 'state_dict'/'model' keys, applies the model's checkpoint filter and
    # drops the classifier, so a full published timm state dict loads into the headless backbone.
    with _capture_timm_load_log() as log:
        try:
            model = _create(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except ToolkitError:
            raise
        except Exception as err:  # torch.load/safetensors raise pickle, EOF, zip and runtime errors for a bad file
            # torch's load_state_dict reports shape mismatches only as RuntimeError text (no structured form, and
            # strict=False still raises them); tests/test_bad_input.py checks this against a real mismatch
            keys = re.findall(r"size mismatch for ([\w.]+)", str(err))
            if keys or "Error(s) in loading state_dict" in str(err):
                detail = f"shape mismatch for {_few(keys)}" if keys else str(err).splitlines()[0]
                raise ToolkitError(f"weights file {path} does not fit backbone '{name}': {detail}") from err
            raise ToolkitError(
                f"weights file {path} cannot be read as a state dict ({type(err).__name__}); it is truncated or not "
                f"a weights file: pass a complete {'/'.join(WEIGHT_SUFFIXES)} file saved with torch.save or safetensors"
            ) from None
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
    from_checkpoint: bool = False,
) -> nn.Module:
    """Create ``name`` from timm without its classifier (``num_classes=0``).

    Args:
        name: any ``timm.list_models()`` name.
        pretrained: ``True`` loads timm hub weights, or the packaged offline weights (`toolkit.weights`) when the hub
            cannot be reached; a path loads a local weights file; ``False`` is random init.
        drop_path_rate: stochastic depth rate passed to timm.
        from_checkpoint: a checkpoint supplies every weight (``toolkit validate|test|predict``): random init,
            whatever ``pretrained`` says.
        zero_init_last: zero-init the last BN gamma of each residual block (timm's option); None keeps timm's default.
    """
    check_backbone_name(name)
    kwargs: dict[str, object] = {"num_classes": 0}
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    if zero_init_last is not None:
        kwargs["zero_init_last"] = zero_init_last
    if isinstance(pretrained, str) and pretrained.lower() in ("true", "false"):
        pretrained = pretrained.lower() == "true"
    if from_checkpoint or pretrained is False:
        return _create(name, pretrained=False, **kwargs)
    if isinstance(pretrained, str):
        return _load_from_file(name, Path(pretrained).expanduser(), **kwargs)
    return _load_pretrained(name, **kwargs)


def _load_pretrained(name: str, **kwargs: object) -> nn.Module:
    """timm's hub path when the hub answers; else the packaged offline weights, else timm's local hub cache."""
    from toolkit.weights import OFFLINE_WEIGHTS, hub_reachable, offline_weights_file

    if hub_reachable():
        try:
            return _create(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:  # no published weights, or the download failed
            raise ToolkitError(
                f"cannot fetch timm hub weights for '{name}' ({type(err).__name__}: {str(err).splitlines()[0][:120]}); "
                f"pass a local file instead: --model.pretrained /path/to/{name}.safetensors"
            ) from err
    entry = OFFLINE_WEIGHTS.get(name)
    if entry is not None:
        path = offline_weights_file(name)
        model = _load_from_file(name, Path(path), **kwargs)
        _say(
            f"pretrained weights: hub unreachable, loaded {name} ImageNet-1k weights from the package {entry.package} "
            f"({entry.licence}), converted at {path}"
        )
        return model
    cached = _hub_cache_file(name)
    if cached is not None:
        model = _load_from_file(name, cached, **kwargs)
        _say(f"pretrained weights: hub unreachable, loaded {name} from the local hub cache {cached}")
        return model
    raise ToolkitError(
        f"the timm hub is unreachable and '{name}' has no cached or offline weights; offline weights exist for "
        f"{', '.join(OFFLINE_WEIGHTS)} (toolkit weights); or pass a file: --model.pretrained /path/to/{name}.pth"
    )


_SAID: set[str] = set()


def _say(line: str) -> None:
    # one line on stderr, like Lightning's own notices; this layer has no Lightning logger to use. Once per process:
    # the ablation runner builds every variant's model to check it, and the notice is the same for each
    if line not in _SAID and verbosity() > QUIET:  # -q: results only
        _SAID.add(line)
        print(line, file=sys.stderr)


def _hub_cache_file(name: str) -> Path | None:
    """timm's weights for ``name`` already in the Hugging Face cache (what huggingface_hub would fall back to)."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None
