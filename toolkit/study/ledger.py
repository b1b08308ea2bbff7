"""The ablation's state on disk: run id -> status, attempts, exit code, logs and W&B run, as a snapshot and a journal.

``ledger.json`` is a snapshot (``{"version", "runs"}``, replaced atomically: temporary file, fsync, ``os.replace``);
``ledger.journal`` holds the edits made since, one JSON line per changed record (``{"id", "record"}``, or
``{"id", "deleted": true}``), appended and fsynced. An edit costs one short line whatever the number of runs (it
used to rewrite the whole file: O(N) per edit, O(N^2) per study). When the journal holds more lines than
``max(COMPACT_MIN, runs)`` the writer folds it into a new snapshot and empties it: amortised O(1) per edit. A
:class:`Ledger` object keeps what it read and reads only the journal's new lines on the next access (the whole
snapshot again only after another process compacted it).

SIGKILL-safe: a writer killed mid-line leaves a torn last line, which every reader ignores and the next writer cuts
off before appending; a writer killed during compaction leaves the old snapshot, or the new one with the old
journal, whose lines (whole records) replay to the same state. Anything else that does not parse (a line in the
middle, a snapshot that is not JSON) is damage from outside: one :class:`~toolkit.errors.ToolkitError` line naming
the file, and nothing is overwritten.

An advisory ``flock`` on ``ledger.json.lock`` serialises writers (the local runner, and Slurm tasks that report their
own state from the compute nodes; readers take it shared, so they never see a compaction half done). A second
lock, held for the runner's lifetime, stops two ``toolkit ablate run`` processes from running the same ablation at
once; the kernel drops both locks when their holder dies, so :func:`runner_active` (a probe of the second) tells
whether a ``running`` record still has its runner (the live view and ``toolkit ablate status`` ask it).

Run states: ``pending`` (not started, or interrupted and resumable), ``running``, ``done``, ``failed``. A failed
record's ``reason`` is one line saying why (``toolkit.ablation.lifecycle.failure_reason``); the runner's summary and the
report show it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError
from toolkit.study.states import RunState

#: the ledger's run states (``study/states.RunState``), by their old names
PENDING, RUNNING, DONE, FAILED = (s.value for s in (RunState.PENDING, RunState.RUNNING, RunState.DONE, RunState.FAILED))
VERSION = 1
#: the journal is folded into the snapshot once it has more lines than this and than the ledger has runs
COMPACT_MIN = 256


def ledger_path(root: str | Path, ablation: str) -> Path:
    """Where the ledger of ``ablation`` lives under ``root``: ``<root>/<ablation>/ledger.json``."""
    return Path(root) / ablation / "ledger.json"


class _Touched(MutableMapping[str, dict[str, Any]]):
    """The runs of one :meth:`Ledger.edit`, remembering which records were handed out or replaced (and how they
    were), so that only those are compared and journaled: an edit of one record costs O(1), not O(N)."""

    def __init__(self, runs: dict[str, dict[str, Any]]) -> None:
        self.runs = runs
        self.before: dict[str, dict[str, Any] | None] = {}

    def _touch(self, key: str) -> None:
        if key not in self.before:
            record = self.runs.get(key)
            self.before[key] = copy.deepcopy(record) if record is not None else None

    def __getitem__(self, key: str) -> dict[str, Any]:
        self._touch(key)
        return self.runs[key]

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._touch(key)
        self.runs[key] = value

    def __delitem__(self, key: str) -> None:
        self._touch(key)
        del self.runs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.runs))

    def __len__(self) -> int:
        return len(self.runs)

    def __contains__(self, key: object) -> bool:
        return key in self.runs

    def changes(self) -> list[dict[str, Any]]:
        """Journal lines for the records that differ from how they were handed out."""
        lines = []
        for key, before in self.before.items():
            after = self.runs.get(key)
            if after is None and before is not None:
                lines.append({"id": key, "deleted": True})
            elif after is not None and after != before:
                lines.append({"id": key, "record": after})
        return lines


class Ledger:
    """Read and update the run records of one ablation.

    Args:
        path: the snapshot file (``ledger.json``); the journal is ``ledger.journal`` beside it. The folder is
            created on the first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.journal = self.path.with_suffix(".journal")
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._runs: dict[str, dict[str, Any]] = {}
        self._snapshot_key: tuple[int, int, int] | None = None  # the snapshot the cache started from
        self._offset = 0  # bytes of the journal applied (always at a line's end)
        self._lines = 0  # journal lines applied
        self._locked = False

    def read(self) -> dict[str, dict[str, Any]]:
        """Every run record by run id (an empty dict when the ledger does not exist yet); the caller's own copy."""
        with self._lock(fcntl.LOCK_SH):
            self._refresh()
            return copy.deepcopy(self._runs)

    def get(self, run_id: str) -> dict[str, Any]:
        """The record of one run, or an empty dict."""
        with self._lock(fcntl.LOCK_SH):
            self._refresh()
            return copy.deepcopy(self._runs.get(run_id, {}))

    @contextlib.contextmanager
    def edit(self) -> Iterator[MutableMapping[str, dict[str, Any]]]:
        """Lock the ledger and yield its runs for in-place changes; the changed records are journaled on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(fcntl.LOCK_EX):
            self._refresh()
            touched = _Touched(self._runs)
            try:
                yield touched
            except BaseException:
                self._snapshot_key = None  # drop what the failed edit changed in memory: reread on next access
                raise
            self._append(touched.changes())

    def update(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Set fields of one run's record (creating it) and return the new record."""
        with self.edit() as runs:
            record = runs.setdefault(run_id, {"id": run_id})
            record.update(fields)
            record["updated_at"] = time.time()
            return copy.deepcopy(record)

    @contextlib.contextmanager
    def _lock(self, kind: int) -> Iterator[None]:
        if self._locked:  # already held by this object (a read inside an edit)
            yield
            return
        if kind == fcntl.LOCK_SH and not self._lock_path.parent.is_dir():
            yield  # nothing written yet, nothing to lock
            return
        try:
            lock = open(self._lock_path, "a+")  # noqa: SIM115 (closed below)
        except OSError:
            if kind == fcntl.LOCK_EX:
                raise
            yield  # a read-only copy of a ledger: nobody writes it
            return
        with lock:
            fcntl.flock(lock, kind)
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Bring the cache up to date: the snapshot again if it was replaced, then the journal's new lines."""
        try:
            st = os.stat(self.path)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key is None or key != self._snapshot_key:
            self._runs = self._load_snapshot() if key is not None else {}
            self._snapshot_key, self._offset, self._lines = key, 0, 0
        try:
            with open(self.journal, "rb") as fh:
                fh.seek(self._offset)
                tail = fh.read()
        except FileNotFoundError:
            return
        complete = tail[: tail.rfind(b"\n") + 1]  # a torn last line (a writer killed mid-write) is ignored
        for number, line in enumerate(complete.splitlines(), start=self._lines + 1):
            self._apply(line, number)
        self._offset += len(complete)
        self._lines += complete.count(b"\n")

    def _apply(self, line: bytes, number: int) -> None:
        try:
            entry = json.loads(line)
            run_id = entry["id"]
            if entry.get("deleted"):
                self._runs.pop(run_id, None)
                return
            record = entry["record"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ToolkitError(
                f"ledger journal {self.journal} line {number} is damaged ({err!r}); restore it or move it away"
            ) from None
        self._runs[str(run_id)] = _checked(record, run_id, f"ledger journal {self.journal} line {number}")

    def _load_snapshot(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # The writer replaces the file atomically, so this is damage from outside; do not overwrite it.
            raise ToolkitError(f"ledger {self.path} is not valid JSON ({err}); restore it or move it away") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
            raise ToolkitError(f"{self.path} is not an ablation ledger; move it away or use another --root")
        return {run_id: _checked(record, run_id, f"ledger {self.path}") for run_id, record in data["runs"].items()}

    def _append(self, lines: list[dict[str, Any]]) -> None:
        """Journal ``lines`` (the lock is held and the cache is current), compacting when the journal is long."""
        if self._snapshot_key is None or self._lines + len(lines) > max(COMPACT_MIN, len(self._runs)):
            self._compact()
            return
        if not lines:
            return
        data = b"".join(json.dumps(line, sort_keys=True).encode() + b"\n" for line in lines)
        with open(self.journal, "r+b" if self.journal.exists() else "wb") as fh:
            fh.truncate(self._offset)  # cut a torn line a killed writer left, so the new lines start on their own
            fh.seek(self._offset)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._offset += len(data)
        self._lines += len(lines)

    def _compact(self) -> None:
        """Write the whole state as a new snapshot, then empty the journal (replaying it on top is harmless)."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": VERSION, "runs": self._runs}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        with open(self.journal, "wb") as fh:
            os.fsync(fh.fileno())
        st = os.stat(self.path)
        self._snapshot_key, self._offset, self._lines = (st.st_ino, st.st_mtime_ns, st.st_size), 0, 0


#: a record's fields whose type the runner relies on (the others are shown, never computed with)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "attempts": (int,),
    "started_at": (int, float, type(None)),
    "finished_at": (int, float, type(None)),
    "exit_code": (int, type(None)),
}


def _checked(record: Any, run_id: Any, where: str) -> dict[str, Any]:
    """``record`` if it is a run record the runner can act on, else one ToolkitError line naming it."""
    problem = None
    if not isinstance(record, dict):
        problem = f"is a {type(record).__name__}, not a mapping"
    elif record.get("status", PENDING) not in (PENDING, RUNNING, DONE, FAILED):
        problem = f"has status {record['status']!r} (one of {PENDING}, {RUNNING}, {DONE}, {FAILED})"
    else:
        for key, types in _FIELD_TYPES.items():
            value = record.get(key)
            if key in record and (not isinstance(value, types) or isinstance(value, bool)):
                problem = f"has {key} {value!r}"
                break
    if problem:
        raise ToolkitError(
            f"{where}: the record of run {run_id!r} {problem}; restore it, delete that record, or move the ledger away"
        )
    return dict(record)


@contextlib.contextmanager
def runner_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``<folder>/runner.lock`` while a runner works on the ablation; fail fast if another runner holds it.

    The runner takes it first, before the slow checks (a second runner is told at once); so that a refused study
    leaves nothing behind, a body that raises before anything else was written removes the folders this created.
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runner.lock"
    try:
        with open(path, "a+") as fh:
            if not _try_lock(fh, fcntl.LOCK_EX):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise ToolkitError(
                    f"{holder} is already running this ablation ({path} is locked); wait for it or stop it first"
                )
            fh.seek(0)
            fh.truncate()
            fh.write(f"toolkit ablate run (pid {os.getpid()})")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    except BaseException:
        locks = {path, folder / "ledger.json.lock"}  # the reader's lock of an empty ledger too
        if created and set(folder.iterdir()) <= locks:  # nothing but locks: leave no trace
            for lock in locks:
                lock.unlink(missing_ok=True)
            for made in created:  # deepest first; a folder something else wrote into stays
                with contextlib.suppress(OSError):
                    made.rmdir()
        raise


def _try_lock(fh: Any, kind: int, patience_s: float = 0.5) -> bool:
    """Take ``kind`` on ``fh`` without blocking, trying again for ``patience_s``: a `runner_active` probe holds the
    lock shared for a moment, which must not make a starting runner believe another one is running."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(fh, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def runner_active(folder: str | Path) -> bool | None:
    """Whether a runner holds the study's lock (`runner_lock`) in ``folder`` now; None when that cannot be read.

    A probe: takes the lock shared without waiting and lets it go at once (a runner holds it exclusively, and the
    kernel drops it when the runner dies, however it dies). Creates nothing.
    """
    try:
        fh = open(Path(folder) / "runner.lock")  # noqa: SIM115 (closed below); read-only: a probe writes nothing
    except FileNotFoundError:
        return False  # no runner ever ran here
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
