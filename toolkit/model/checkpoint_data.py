"""Checkpoints are data: every checkpoint file the toolkit reads is unpickled by torch's ``weights_only`` unpickler.

A ``.ckpt`` is a pickle; an ordinary unpickler runs whatever callable its ``__reduce__`` names (``os.system`` ...),
so a checkpoint from a colleague, a download or a shared folder could run code. ``torch.load(weights_only=True)``
builds tensors and plain containers only and refuses every other global; :func:`load_data` turns that refusal into
one line naming the file. Everything the toolkit stores in its checkpoints is plain data (hyperparameters of
``Literal``/number/string type, the W&B run id, the random state as lists of ints: ``callbacks/random_state.py``),
so a checkpoint written by ``toolkit fit`` always loads. :func:`check_finite` refuses weights holding NaN or inf (a
diverged run's model would otherwise test to a number).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ToolkitError

#: how many offending tensors a refusal names
_SHOWN = 3


def load_data(path: str | Path, *, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load`` of ``path`` as data only (tensors, numbers, strings, containers), onto the CPU.

    Args:
        path: the file.
        what: what the file is, for the message (``checkpoint``, ``snapshot``, ``ensemble checkpoint``...).
        mmap: map the tensors instead of reading them (cheap when only the small fields are wanted).

    Raises:
        ToolkitError: the file holds objects that only an arbitrary unpickler could build (nothing of it ran).
    """
    try:
        # explicit weights_only=True: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD changes only the default, never this
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ToolkitError(
            f"{what} {path} holds objects other than tensors and plain data ({_unsupported(err)}); the toolkit reads "
            "checkpoints as data and never runs code in them: pass a checkpoint written by toolkit fit"
        ) from None


def _unsupported(err: Exception) -> str:
    """The global torch refused (``... GLOBAL posix.system ...``), short; else the line that says what failed."""
    text = str(err)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return f"it names {named.group(1)}"
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return (lines[0] if lines else type(err).__name__)[:160]


def check_finite(state_dict: dict[str, Any], path: str | Path, *, what: str = "checkpoint") -> None:
    """Refuse a state dict whose floating-point tensors hold NaN or inf, naming the file and the first tensors."""
    bad = [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        shown = ", ".join(bad[:_SHOWN]) + (f" (+{len(bad) - _SHOWN} more)" if len(bad) > _SHOWN else "")
        raise ToolkitError(
            f"{what} {path} has non-finite weights (NaN or inf in {shown}); it comes from a diverged run: pass a "
            "checkpoint saved before the run diverged"
        )
