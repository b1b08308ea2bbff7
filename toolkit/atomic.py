"""Write an output file whole or not at all: into a temporary file beside it, then renamed over it.

A full disk or a killed process mid-write would otherwise leave a truncated or 0-byte file (``runs.csv``, a table)
that reads as a result. ``os.replace`` within one folder is atomic on POSIX; no maintained library is needed for it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

#: write failures a user fixes by freeing space: a full disk, a quota, a file-size limit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: write failures a user fixes by picking another folder: read-only, forbidden (EPERM: a folder no one may create in)
NO_RIGHTS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the content into ``tmp``; it replaces ``path`` only when complete. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; an output gets what open() would give it
        os.replace(tmp, path)
    except OSError as err:  # a full disk: name the output, not the temporary file
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def current_umask() -> int:
    """The process's umask (Linux reports it in ``/proc/self/status``; elsewhere it is read by setting it back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # the only portable read is a write: put it straight back
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    """``path.write_text(text)`` (UTF-8), atomically."""
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
