"""How many epochs a Lightning checkpoint has finished, read without torch (``toolkit ablate status`` stays light).

Used by the run lifecycle (a resumed attempt says where it starts) and by the progress table.
"""

from __future__ import annotations

import builtins
import collections
import pickle
import zipfile
from functools import lru_cache
from pathlib import Path

from typing_extensions import override


class _Opaque:
    """Stands in for every object of a checkpoint except plain containers and numbers."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


class _HeaderUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's ``data.pkl`` without torch: tensors and classes become inert stand-ins.

    ``torch.load`` would import torch (seconds; ``toolkit ablate status`` must not) and load every tensor; we only
    want two integers. Nothing is imported or executed, so this is also safe on a file we did not write.
    """

    _PLAIN = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool")}

    @override
    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self._PLAIN:
            return getattr(builtins, name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Opaque

    @override
    def persistent_load(self, pid: object) -> None:
        return None


def epochs_done(ckpt: Path) -> int | None:
    """Epochs a Lightning checkpoint has finished (its ``epoch`` + 1, or its ``epoch`` when it was saved mid-epoch on a
    stop signal), or None if it cannot be read right now."""
    try:
        stat = ckpt.stat()
    except OSError:
        return None
    return _epochs_done(str(ckpt), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _epochs_done(path: str, mtime_ns: int, size: int) -> int | None:
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
            with archive.open(name) as fh:
                data = _HeaderUnpickler(fh).load()
    except (OSError, zipfile.BadZipFile, StopIteration, pickle.UnpicklingError, EOFError, ValueError):
        return None  # being written, or not a zip checkpoint
    epoch = data.get("epoch") if isinstance(data, dict) else None
    if not isinstance(epoch, int):
        return None
    callbacks = data.get("callbacks")
    states = callbacks.values() if isinstance(callbacks, dict) else []
    # saved mid-epoch on a stop signal (toolkit.callbacks.signal_save): that epoch has not finished
    mid_epoch = any(isinstance(s, dict) and s.get("mid_epoch") for s in states)
    return epoch if mid_epoch else epoch + 1
