"""A checkpoint given to a command, opened once: is it readable, and what does it say (run id, step, hparams, classes).

``toolkit test --ckpt_path X`` used to open the same file five times (validity twice, hyperparameters, classes,
...). A :class:`CheckpointReader` opens it once, as data only (``checkpoint_data.load_data``: nothing in it can run),
memory-mapped, keeps the few small facts the command asks about and lets the mapping go (a resumed fit rewrites the
file it came from); its weights must be finite. ``ToolkitCLI`` keeps one reader per path for the whole command.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.lightning_cli.ckpt_model import check_against_checkpoint
from toolkit.lightning_cli.tracking import CKPT_RUN_ID
from toolkit.model.checkpoint_data import check_finite, load_data


class CheckpointReader:
    """One Lightning checkpoint file, read on the first question and answered from memory after.

    Args:
        path: the ``.ckpt`` file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._facts: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self._facts is None:
            checkpoint = _load(self.path)
            self._facts = {
                "run_id": checkpoint.get(CKPT_RUN_ID),
                "global_step": checkpoint.get("global_step"),
                "hparams": dict(checkpoint.get("hyper_parameters", {}) or {}),
            }
        return self._facts

    def check(self) -> None:
        """Refuse a checkpoint that cannot be read (truncated copy, another file type) before anything is built."""
        self._read()

    @property
    def run_id(self) -> str | None:
        """The W&B run id ``tracking.RunIdCheckpoint`` stored (None without one)."""
        return self._read()["run_id"]

    @property
    def global_step(self) -> int | None:
        """The optimizer steps done when it was saved."""
        return self._read()["global_step"]

    @property
    def hparams(self) -> dict[str, Any]:
        """The model's saved hyperparameters."""
        return self._read()["hparams"]

    def check_classes(self, num_classes: int, where: str) -> None:
        """Its head must have as many outputs as ``where`` has classes (else its weights do not load)."""
        saved = self.hparams.get("num_classes")
        if saved is not None and int(saved) != num_classes:
            raise ToolkitError(
                f"checkpoint {self.path} was trained on {saved} classes but {where} has {num_classes}; evaluate it on "
                "data with the same classes (the same --data options as its fit)"
            )

    def apply_to(self, model: Any, given: dict[str, Any]) -> None:
        """Set the model's arguments to its hyperparameters; refuse a ``--model.*`` value contradicting them.

        LightningCLI merges them only for a checkpoint path given as a file, not for ``--ckpt_path last``.

        Args:
            model: the parsed ``model`` arguments (a jsonargparse Namespace), changed in place.
            given: the model options given explicitly (command line and config files) with their parsed values.
        """
        hparams = self.hparams
        check_against_checkpoint(given, hparams, str(self.path))
        for key, saved in hparams.items():
            # num_classes and class_names are linked from the data when the classes are built
            # pretrained too: the weights come from the checkpoint, and the logged config says how they were trained
            if key in model and key not in ("lesion_blocks", "num_classes", "class_names"):
                model[key] = saved


class CheckpointReaders:
    """The readers of one command, one per path (so every file is opened once per command)."""

    def __init__(self) -> None:
        self._readers: dict[str, CheckpointReader] = {}

    def get(self, path: str | Path | None) -> CheckpointReader | None:
        """The reader of ``path``; None when it is not a file (no checkpoint, or a Lightning alias like ``best``)."""
        if not path or not Path(path).is_file():
            return None
        key = str(Path(path).resolve())
        if key not in self._readers:
            self._readers[key] = CheckpointReader(path)
        return self._readers[key]


def _load(path: str) -> dict[str, Any]:
    """The checkpoint's top-level dict, or a ToolkitError saying it is truncated, not a Lightning checkpoint, not
    plain data (it would need an arbitrary unpickler: refused before anything in it runs) or holds non-finite weights.

    ``mmap`` opens the zip archive and its index without reading the tensors up front; a truncated file has lost the
    archive's index at its end and fails here rather than as a traceback deep inside Lightning.
    """
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose index is at the end of the file
        raise ToolkitError(
            f"checkpoint {path} is not a complete checkpoint archive (truncated, or another kind of file); pass a "
            "complete .ckpt file (copy it again, or use another one)"
        )
    try:
        checkpoint = load_data(path, mmap=True)
    except ToolkitError:
        raise
    except Exception as err:  # torch raises RuntimeError, pickle errors, EOFError... for a broken file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ToolkitError(
            f"checkpoint {path} cannot be read ({first}); it is truncated or not a Lightning checkpoint: pass a "
            "complete .ckpt file (copy it again, or use another one)"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ToolkitError(f"checkpoint {path} holds no state_dict: not a Lightning checkpoint; pass a .ckpt file")
    check_finite(checkpoint["state_dict"], path)
    return checkpoint
