"""One checkpoint write per training state: a second save of the same state hard-links the file just written.

Every fit has two checkpoint callbacks (``lightning_cli/program.py``): the best-val one and ``last.ckpt``, rewritten
every epoch. In an epoch with a new best both save the same training state at the same hook: before this, that was
two full writes of the model (13 MB for tf_efficientnet_lite0, 45 MB for resnet18) where one suffices. Lightning's
own ``save_last="link"`` avoids the second write but links ``last`` to the *best* file, which after an epoch without
a new best is an older epoch: ``--ckpt_path last`` would then resume from the past (why ``last_checkpoint`` exists).

:class:`OneWritePerState` is a ``CheckpointIO`` (Lightning's public plugin for how checkpoints reach storage). When it
is asked to save a state it has just written under another name (same epoch, global step and loop progress: no
optimizer step, batch or epoch end in between, so the weights, optimizer, schedulers and loops are the same), it
hard-links the new name to that file (a temporary link, then ``os.replace``) instead of writing again. Only the
checkpoint callbacks' own bookkeeping can differ between the two dumps (``last_checkpoint``'s record of its previous
file, which names the same ``last.ckpt`` from the second epoch on), and a resume reads the same training state
either way (``tests/test_checkpoint_io.py`` pins both). A local file is always replaced, never written in place:
the serialised bytes into a temporary file in the same folder, then ``os.replace``, so a later write to one name never
changes the other (Lightning's own save stages the file in the system temp folder, and where that is another file
system its move copies into the target in place). Remote paths and ``storage_options`` take Lightning's save; file
systems without hard links the ordinary write.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override


def _state_key(checkpoint: dict[str, Any]) -> str:
    """What identifies a training state in a checkpoint: its epoch, global step and loops' progress counters, and
    what the dump holds (a ``save_weights_only`` best checkpoint has no optimizer state: ``last.ckpt`` of the same
    epoch must not become a link to it, or a resume would lose the optimizer's state)."""
    return json.dumps(
        [checkpoint.get("epoch"), checkpoint.get("global_step"), checkpoint.get("loops"), sorted(checkpoint)],
        sort_keys=True,
        default=str,
    )


class OneWritePerState(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes a training state once and hard-links further saves of it (see the module)."""

    def __init__(self) -> None:
        super().__init__()
        self._written: tuple[str, Path] | None = None  # the state last written, and where

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote, or options only Lightning's save takes
            super().save_checkpoint(checkpoint, path, storage_options)
            self._written = None
            return
        target, key = Path(path), _state_key(checkpoint)
        if self._written is not None:
            previous_key, previous = self._written
            if previous_key == key and previous != target and self._link(previous, target):
                return
        _replace(checkpoint, target)
        self._written = (key, target)

    @staticmethod
    def _link(source: Path, target: Path) -> bool:
        """Make ``target`` another name of ``source`` (replacing what it was); False where that is not possible."""
        tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, target)
        except OSError:  # gone, another file system, no hard links: write it instead
            tmp.unlink(missing_ok=True)
            return False
        return True


def _replace(checkpoint: dict[str, Any], target: Path) -> None:
    """Write ``checkpoint`` to ``target`` as a new file: a temporary file beside it, then ``os.replace``.

    Not ``atomic.write_atomically``: that re-raises a write error under the output's own path, and a failed
    checkpoint is reported by the fit's handler under its run folder (as Lightning's own save fails).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    buffer = io.BytesIO()  # serialised first, as Lightning does: a full disk is then an OSError naming the file,
    torch.save(checkpoint, buffer)  # not the zip writer's RuntimeError
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
