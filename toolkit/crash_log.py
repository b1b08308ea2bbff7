"""The traceback of an unexpected error, written into a private per-user folder that nobody else can plant links in.

``$TMPDIR`` is shared: a fixed ``$TMPDIR/toolkit-errors/<time>-<pid>.log`` opened with ``open(path, "w")`` follows a
link another user planted under the next name and overwrites whatever it points to. Here the folder is
``$TMPDIR/toolkit-errors-<uid>``, created 0700 and used only if it is a real folder (not a link) owned by this user;
each log is created exclusively (``O_EXCL``), never through a link (``O_NOFOLLOW``), mode 0600. A folder that fails
the check is not used: the log goes to a fresh ``tempfile.mkstemp`` file instead (exclusive, 0600, random name).
``tempfile`` offers no named private folder shared by one user's processes, hence the few lines by hand.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import time
import traceback

#: how many ``-<n>`` suffixes are tried when a log of the same second and pid exists
_TRIES = 100
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def private_folder(parent: str, name: str) -> str | None:
    """``parent/name``, created 0700; None when it exists but is a link, not a folder, or not this user's."""
    path = os.path.join(parent, name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours, but opened to others (an older toolkit, a umask): private again
    return path


def _create(folder: str, stem: str) -> tuple[int, str]:
    """An exclusive, link-refusing, 0600 file ``stem[-n].log`` in ``folder``."""
    for n in range(_TRIES):
        path = os.path.join(folder, f"{stem}{'' if n == 0 else f'-{n}'}.log")
        try:
            return os.open(path, _FLAGS, 0o600), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: {_TRIES} logs named {stem}")


def write_crash_log(err: BaseException) -> str:
    """Write the command line and ``err``'s traceback to a private file; returns its path."""
    parent = tempfile.gettempdir()
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder = private_folder(parent, f"toolkit-errors-{os.getuid()}")
    try:
        if folder is None:
            raise OSError("no private folder")
        fd, path = _create(folder, stem)
    except OSError:
        fd, path = tempfile.mkstemp(prefix=f"toolkit-error-{stem}-", suffix=".log")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"$ toolkit {' '.join(sys.argv[1:])}\n")
        traceback.print_exception(err, file=fh)
    return path
