"""The ablation's state on disk: one JSON file mapping run id to status, attempts, exit code, logs and W&B run.

Every change is a locked read-modify-write that replaces the file atomically (write a temporary file, fsync,
``os.replace``), so a reader never sees half a file and a process killed with SIGKILL at any moment leaves either
the old or the new ledger. An advisory ``flock`` on ``ledger.json.lock`` serialises writers: the local runner, and
Slurm tasks that report their own state from the compute nodes. A second lock, held for the runner's lifetime,
stops two ``toolkit ablate run`` processes from running the same ablation at once; the kernel drops both locks when
their holder dies.

Run states: ``pending`` (not started, or interrupted and resumable), ``running``, ``done``, ``failed``. A failed
record's ``reason`` is one line saying why (``toolkit.ablation.lifecycle.failure_reason``); the runner's summary and the
report show it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
VERSION = 1


def ledger_path(root: str | Path, ablation: str) -> Path:
    """Where the ledger of ``ablation`` lives under ``root``: ``<root>/<ablation>/ledger.json``."""
    return Path(root) / ablation / "ledger.json"


class Ledger:
    """Read and update the run records of one ablation.

    Args:
        path: the ledger file; its folder is created on the first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def read(self) -> dict[str, dict[str, Any]]:
        """Every run record by run id (an empty dict when the ledger does not exist yet)."""
        return self._load()["runs"]

    def get(self, run_id: str) -> dict[str, Any]:
        """The record of one run, or an empty dict."""
        return dict(self.read().get(run_id, {}))

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, dict[str, Any]]]:
        """Lock the ledger and yield its runs for in-place changes, written back atomically on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self._load()
                yield data["runs"]
                self._write(data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, run_id: str, **fields: Any) -> dict[str, Any]:
        """Set fields of one run's record (creating it) and return the new record."""
        with self.edit() as runs:
            record = runs.setdefault(run_id, {"id": run_id})
            record.update(fields)
            record["updated_at"] = time.time()
            return dict(record)

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {"version": VERSION, "runs": {}}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # The writer replaces the file atomically, so this is damage from outside; do not overwrite it.
            raise ToolkitError(f"ledger {self.path} is not valid JSON ({err}); restore it or move it away") from None
        if not isinstance(data, dict) or not isinstance(data.get("runs"), dict):
            raise ToolkitError(f"{self.path} is not an ablation ledger; move it away or use another --root")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)


@contextlib.contextmanager
def runner_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``<folder>/runner.lock`` while a runner works on the ablation; fail fast if another runner holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "runner.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ToolkitError(
                f"{holder} is already running this ablation ({path} is locked); wait for it or stop it first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"toolkit ablate run (pid {os.getpid()})")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
