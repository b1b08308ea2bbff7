"""Show an ablation's runs as a table: a rich live view while it runs, the same table for ``toolkit ablate status``.

Torch-free. A running run's progress is the epoch count in its ``checkpoints/last.ckpt`` (Lightning writes it at
every epoch end) and its latest val/acc the newest epoch line of its ``run.log``; the ETA extrapolates the time per
epoch of the current attempt, and the ablation's ETA the mean time of finished runs. On a terminal the table redraws
in place; elsewhere (CI logs, pipes) each start and finish prints one line.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from toolkit.ablation.ckpt_epochs import epochs_done
from toolkit.study.epoch_line import last_epoch_line
from toolkit.study.layout import RESULT_FILE
from toolkit.study.ledger import DONE, FAILED, PENDING, RUNNING, Ledger
from toolkit.study.result import RunResult
from toolkit.study.spec import AblationSpec, Run
from toolkit.study.states import Health

#: shown for a ``running`` record whose process is gone (never written to the ledger: the next runner resumes it)
INTERRUPTED = Health.INTERRUPTED
#: shown for a ``done`` record whose ``result.json`` is gone or unreadable (the next runner redoes it)
MISSING = "missing"

_STYLE = {DONE: "green", FAILED: "red", RUNNING: "cyan", PENDING: "dim", INTERRUPTED: "yellow", MISSING: "red"}


def result_readable(path: Path) -> bool:
    """Whether ``path`` is a readable ``result.json`` (re-read only when its size or time changed: the live view
    redraws often)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return _readable(str(path), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=1024)
def _readable(path: str, mtime_ns: int, size: int) -> bool:
    return RunResult.read(path) is not None


def base_max_epochs(spec: AblationSpec) -> int | None:
    """``trainer.max_epochs`` of the last base config that sets it (from the data the spec read when it was loaded)."""
    value = None
    for data in spec.base_data or ():
        value = (data.get("trainer") or {}).get("max_epochs", value) if isinstance(data, dict) else value
    return value


def max_epochs(run: Run, base: int | None) -> int | None:
    """``trainer.max_epochs`` of a run: its override, else ``base`` (`base_max_epochs`)."""
    return run.overrides.get("trainer.max_epochs", base)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}:{sec:02d}" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}"


def runner_gone(record: dict[str, Any]) -> bool:
    """A ``running`` record whose process is gone from this host: its runner was killed (SIGKILL, power loss).

    Only decidable on the host that ran it; a Slurm run's record is the job's business (``squeue``).
    """
    if record.get("status") != RUNNING or record.get("slurm_job_id") or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


#: columns in the order shown; the optional ones go first when the console is narrow (80 columns, a pipe)
_COLUMNS = ("variant", "seed", "status", "epochs", "val/acc", "time", "ETA", "attempts", "W&B run", "note")
_OPTIONAL = ("W&B run", "attempts")


def build_table(
    spec: AblationSpec, records: dict[str, dict[str, Any]], root: str | Path, slots: int = 1, width: int = 80
) -> Table:
    """One row per run of the spec (runs not in the ledger show as pending), plus an ablation-wide ETA.

    A run's latest validation accuracy comes from the newest epoch line of its ``run.log``; a ``running`` run whose
    process is gone shows as ``interrupted``. Columns that do not fit in ``width`` are left out.
    """
    now = time.time()
    runs = spec.runs()
    base_epochs = base_max_epochs(spec)
    columns = [c for c in _COLUMNS if c not in _OPTIONAL or width >= 120]
    table = Table(title=f"ablation {spec.name}", title_justify="left")
    for column in columns:
        table.add_column(column, no_wrap=column != "note", overflow="fold")
    counts = dict.fromkeys((DONE, RUNNING, INTERRUPTED, MISSING, FAILED, PENDING), 0)
    durations, remaining = [], 0.0
    for run in runs:
        record = records.get(run.id, {})
        status = INTERRUPTED if runner_gone(record) else record.get("status", PENDING)
        if status == DONE and not result_readable(run.directory(root) / RESULT_FILE):
            status = MISSING
        counts[status] = counts.get(status, 0) + 1
        eta = elapsed = None
        total = max_epochs(run, base_epochs)
        epoch = epochs_done(run.directory(root) / "checkpoints" / "last.ckpt")  # None before the first epoch ends
        latest = last_epoch_line(run.directory(root) / "run.log") if status != PENDING else None
        if status == RUNNING and record.get("started_at"):
            elapsed = now - record["started_at"]
            epoch = epoch or record.get("start_epoch") or 0
            this_attempt = epoch - (record.get("start_epoch") or 0)
            if this_attempt > 0 and total:
                eta = elapsed / this_attempt * max(total - epoch, 0)
            remaining += 1 - epoch / total if total else 0.5
        elif status == DONE:
            elapsed = record.get("duration_s")
            durations.append(elapsed or 0.0)
        elif status in (PENDING, INTERRUPTED):
            remaining += 1
        note = record.get("note", "")
        if status == FAILED:
            note = record.get("reason") or f"exit {record.get('exit_code')}"
            note += f"; log: {record.get('log', '')}"
        elif status == INTERRUPTED:
            note = "its runner is gone; run `toolkit ablate run` again to resume"
        elif status == MISSING:
            note = f"done, but its {RESULT_FILE} is missing or unreadable; `toolkit ablate run` redoes it"
            remaining += 1
        val = latest[1].get("val/acc") if latest else None
        cells = {
            "variant": run.variant,
            "seed": str(run.seed),
            "status": f"[{_STYLE.get(status, '')}]{status}",
            "epochs": f"{epoch}/{total or '?'}" if epoch is not None else "",
            "val/acc": f"{val:.3f}" if val is not None else "",
            "time": _duration(elapsed),
            "ETA": _duration(eta),
            "attempts": str(record.get("attempts", 0)),
            "W&B run": record.get("wandb_id") or "",
            "note": note,
        }
        table.add_row(*(cells[c] for c in columns))
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if durations and remaining:
        summary += f"; ETA {_duration(statistics.mean(durations) * remaining / max(slots, 1))}"
    table.caption = summary
    table.caption_justify = "left"
    return table


class LiveView:
    """Redraw the table as the ledger changes (terminal), or print a line per start and finish (elsewhere).

    Args:
        spec: the ablation.
        ledger: its ledger.
        root: the runs folder.
        slots: runs at once (for the ETA).
        console: where to draw.
    """

    def __init__(self, spec: AblationSpec, ledger: Ledger, root: str | Path, slots: int, console: Console) -> None:
        self.spec, self.ledger, self.root, self.slots, self.console = spec, ledger, root, slots, console
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            # redrawn by tick() from the runner's loop: no refresh thread beside the forks of the local executor
            self._live = Live(self._table(), console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table(), refresh=True)
            self._live.__exit__(*exc)

    def event(self, run: Run, status: str, detail: str = "") -> None:
        """A run started or finished."""
        if self._live is None:
            style = _STYLE.get(status, "")
            line = f"[{style}]{status:>8}[/] {run.variant} seed {run.seed} {detail}"
            self.console.print(line, highlight=False, soft_wrap=True)
        self.tick(force=True)

    def tick(self, force: bool = False) -> None:
        """Redraw at most once a second."""
        if self._live is not None and (force or time.time() - self._last >= 1.0):
            self._last = time.time()
            self._live.update(self._table(), refresh=True)

    def _table(self) -> Table:
        return build_table(self.spec, self.ledger.read(), self.root, self.slots, self.console.width)
