"""Show an ablation's runs as a table: a rich live view while it runs, the same table for ``toolkit ablate status``.

Torch-free. A running run's progress is the epoch count in its ``checkpoints/last.ckpt`` (Lightning writes it at
every epoch end) and its latest val/acc the newest epoch line of its ``run.log``; the ETA extrapolates the time per
epoch of the current attempt, and the ablation's ETA the mean time of finished runs. On a terminal the table redraws
in place; elsewhere (CI logs, pipes) each start and finish prints one line.

A ``running`` record is read together with its runner and its process (:func:`run_state`): the runner's lock says
whether a runner still supervises the study (the kernel drops it when the runner dies), the run's pid whether its
process still lives. A run whose process exited while its runner lives is ``finishing`` (the runner records how it
ended at its next poll); only a run whose runner is gone is ``interrupted``.

The table fits its console: every cell is one line (a long note ends in an ellipsis), and in a live view whose
terminal is too short for a row per run, a row per variant (its runs' counts and val/acc) replaces them, so the
footer (counts, ETA) always shows.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from toolkit.ablation.ckpt_epochs import epochs_done
from toolkit.quiet import QUIET, verbosity
from toolkit.study.epoch_line import last_epoch_line
from toolkit.study.layout import RESULT_FILE
from toolkit.study.ledger import DONE, FAILED, PENDING, RUNNING, Ledger, runner_active
from toolkit.study.result import RunResult
from toolkit.study.spec import AblationSpec, Run
from toolkit.study.states import Health

#: shown for a ``running`` record whose process is gone (never written to the ledger: the next runner resumes it)
INTERRUPTED = Health.INTERRUPTED.value
#: shown for a ``done`` record whose ``result.json`` is gone or unreadable (the next runner redoes it)
MISSING = "missing"
#: shown for a ``running`` record whose process exited while its runner lives: the runner is about to record it
FINISHING = "finishing"

_STYLE = {
    DONE: "green",
    FAILED: "red",
    RUNNING: "cyan",
    FINISHING: "cyan",
    PENDING: "dim",
    INTERRUPTED: "yellow",
    MISSING: "red",
}


def _result(path: Path) -> RunResult | None:
    """``path`` as a ``RunResult`` (None: missing or unreadable), re-read only when its size or time changed: the live
    view redraws often."""
    try:
        info = path.stat()
    except OSError:
        return None
    return _read_result(str(path), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=1024)
def _read_result(path: str, mtime_ns: int, size: int) -> RunResult | None:
    return RunResult.read(path)


def result_readable(path: Path) -> bool:
    """Whether ``path`` is a readable ``result.json``."""
    return _result(path) is not None


def _best_val(path: Path) -> float | None:
    """The ``best_val`` of a readable ``result.json``."""
    result = _result(path)
    return result.best_val if result is not None else None


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


def _alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists on this host (None: cannot tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return None  # it exists but is not ours to signal
    return True


def run_state(record: dict[str, Any], runner: bool | None) -> str:
    """What a run's record means now: its status, read together with its runner and its process.

    Args:
        record: the run's ledger record.
        runner: whether a runner holds the study's lock (`toolkit.study.ledger.runner_active`; None: cannot tell).

    A ``running`` record of this host is ``interrupted`` when no runner holds the study (killed: SIGKILL, power
    loss), ``finishing`` when its runner lives but its process has exited (the runner records the exit at its next
    poll; a forked run is reaped by the warm parent before the runner hears of it), else ``running``. Where the
    lock cannot be read, a gone process means interrupted. A Slurm run or one of another host is shown as recorded
    (the job is squeue's business; the process is not visible here).
    """
    status = record.get("status", PENDING)
    if status != RUNNING or record.get("slurm_job_id") or record.get("host") != socket.gethostname():
        return status
    if runner is False:
        return INTERRUPTED
    pid = record.get("pid")
    process = _alive(int(pid)) if pid else None  # no pid yet: the runner is starting it
    if process is False:
        return FINISHING if runner else INTERRUPTED
    return RUNNING


#: columns in the order shown; the optional ones go first when the console is narrow (80 columns, a pipe)
_COLUMNS = ("variant", "seed", "status", "epochs", "val/acc", "time", "ETA", "attempts", "W&B run", "note")
_OPTIONAL = ("W&B run", "attempts")
#: the columns of the per-variant summary (a live view too short for a row per run): val/acc is the mean best val/acc
#: of the done runs, best the highest of the done runs' best and the running runs' latest val/acc
_SUMMARY = ("variant", "done", "running", "queued", "failed", "val/acc", "best")
#: lines a table takes besides its rows: title, top border, header, header rule, bottom border, caption (footer)
_CHROME = 6


@dataclass
class _RunRow:
    """What the table knows of one run."""

    run: Run
    status: str
    epochs: str
    val: float | None  # the latest val/acc of its run.log
    best: float | None  # a done run's best val (result.json), else ``val``
    elapsed: float | None
    eta: float | None
    note: str


def _run_rows(
    spec: AblationSpec, records: dict[str, dict[str, Any]], root: str | Path, slots: int
) -> tuple[list[_RunRow], str]:
    """One row per run of the spec (runs not in the ledger are pending) and the footer: counts and the study's ETA."""
    now = time.time()
    base_epochs = base_max_epochs(spec)
    runner = runner_active(Path(root) / spec.name)
    counts = dict.fromkeys((DONE, RUNNING, FINISHING, INTERRUPTED, MISSING, FAILED, PENDING), 0)
    durations, remaining = [], 0.0
    rows = []
    for run in spec.runs():
        record = records.get(run.id, {})
        status = run_state(record, runner)
        result = run.directory(root) / RESULT_FILE
        if status == DONE and not result_readable(result):
            status = MISSING
        counts[status] = counts.get(status, 0) + 1
        eta = elapsed = None
        total = max_epochs(run, base_epochs)
        epoch = epochs_done(run.directory(root) / "checkpoints" / "last.ckpt")  # None before the first epoch ends
        latest = last_epoch_line(run.directory(root) / "run.log") if status != PENDING else None
        if status in (RUNNING, FINISHING) and record.get("started_at"):
            elapsed = now - record["started_at"]
            epoch = epoch or record.get("start_epoch") or 0
            this_attempt = epoch - (record.get("start_epoch") or 0)
            if this_attempt > 0 and total and status == RUNNING:
                eta = elapsed / this_attempt * max(total - epoch, 0)
            if status == RUNNING:  # a finishing run has nothing left to do
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
        elif status == FINISHING:
            note = "its process exited; the runner is recording how"
        elif status == MISSING:
            note = f"done, but its {RESULT_FILE} is missing or unreadable; `toolkit ablate run` redoes it"
            remaining += 1
        val = latest[1].get("val/acc") if latest else None
        best = _best_val(result) if status == DONE else None
        rows.append(
            _RunRow(
                run=run,
                status=status,
                epochs=f"{epoch}/{total or '?'}" if epoch is not None else "",
                val=val,
                best=best if best is not None else val,
                elapsed=elapsed,
                eta=eta,
                note=note,
            )
        )
    counts[RUNNING] += counts.pop(FINISHING)  # a finishing run is still one of the runs at work
    footer = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if durations and remaining:
        footer += f"; ETA {_duration(statistics.mean(durations) * remaining / max(slots, 1))}"
    return rows, footer


def _table(title: str, footer: str, columns: tuple[str, ...] | list[str]) -> Table:
    """A table whose every cell, title and footer is one line: what does not fit ends in an ellipsis."""
    table = Table(
        title=Text(title, no_wrap=True, overflow="ellipsis"),
        title_justify="left",
        caption=Text(footer, no_wrap=True, overflow="ellipsis"),
        caption_justify="left",
    )
    for column in columns:
        # the free-text columns give way when the table is too wide (their cells are one line each: `_cell`); the
        # others keep their width
        table.add_column(column, no_wrap=column not in _FREE, overflow="ellipsis")
    return table


#: the columns whose width gives way to the others'
_FREE = ("variant", "note")


def _cell(text: str) -> Text:
    """A cell of a free column: one line, ending in an ellipsis where the column is narrower."""
    return Text(text, no_wrap=True, overflow="ellipsis")


def build_table(
    spec: AblationSpec,
    records: dict[str, dict[str, Any]],
    root: str | Path,
    slots: int = 1,
    width: int = 80,
    height: int | None = None,
) -> Table:
    """One row per run of the spec (runs not in the ledger show as pending), plus the counts and the study's ETA.

    A run's latest validation accuracy comes from the newest epoch line of its ``run.log``; a ``running`` record is
    read with :func:`run_state`. Columns that do not fit in ``width`` are left out; a cell longer than its column
    ends in an ellipsis. With a ``height`` (a live view's terminal) too short for a row per run, each variant gets
    one row (:func:`variant_table`); the footer always shows.
    """
    rows, footer = _run_rows(spec, records, root, slots)
    title = f"ablation {spec.name}"
    if height is not None and len(rows) + _CHROME > height:
        return variant_table(title, footer, rows, height)
    columns = [c for c in _COLUMNS if c not in _OPTIONAL or width >= 120]
    table = _table(title, footer, columns)
    for row in rows:
        record = records.get(row.run.id, {})
        cells = {
            "variant": _cell(row.run.variant),
            "seed": str(row.run.seed),
            "status": Text(row.status, style=_STYLE.get(row.status, "")),
            "epochs": row.epochs,
            "val/acc": f"{row.val:.3f}" if row.val is not None else "",
            "time": _duration(row.elapsed),
            "ETA": _duration(row.eta),
            "attempts": str(record.get("attempts", 0)),
            "W&B run": record.get("wandb_id") or "",
            "note": _cell(row.note),
        }
        table.add_row(*(cells[c] for c in columns))
    return table


def variant_table(title: str, footer: str, rows: list[_RunRow], height: int) -> Table:
    """A row per variant: how many of its runs are done, running, queued (pending, interrupted, missing) and
    failed, the mean best val/acc of its done runs (with their count) and the highest val/acc so far (a done run's
    best, a running run's latest). Variants beyond ``height`` are summed up in one last row (``+N variants``)."""
    by_variant: dict[str, list[_RunRow]] = {}
    for row in rows:
        by_variant.setdefault(row.run.variant, []).append(row)
    table = _table(f"{title}: a row per variant (too many runs for this terminal)", footer, _SUMMARY)
    room = max(height - _CHROME, 1)
    variants = list(by_variant)
    groups = [(v, by_variant[v]) for v in variants]
    if len(variants) > room:
        rest = [row for v in variants[room - 1 :] for row in by_variant[v]]
        groups = [*groups[: room - 1], (f"+{len(variants) - room + 1} variants", rest)]
    for name, group in groups:
        count = {s: sum(r.status in states for r in group) for s, states in _GROUPS.items()}
        done = [r.best for r in group if r.status == DONE and r.best is not None]
        reached = [r.best for r in group if r.best is not None]
        table.add_row(
            _cell(name),
            *(str(count[s]) if count[s] else "" for s in _GROUPS),
            f"{statistics.mean(done):.3f} n={len(done)}" if done else "",
            f"{max(reached):.3f}" if reached else "",
        )
    return table


#: the summary's count columns and the run states each counts
_GROUPS = {
    "done": (DONE,),
    "running": (RUNNING, FINISHING),
    "queued": (PENDING, INTERRUPTED, MISSING),
    "failed": (FAILED,),
}


def failure_lines(spec: AblationSpec, records: dict[str, dict[str, Any]]) -> list[str]:
    """A line per failed run with its whole reason and log (the table's note column ends in an ellipsis)."""
    lines = []
    for run in spec.runs():
        record = records.get(run.id, {})
        if record.get("status") == FAILED:
            reason = record.get("reason") or f"exit {record.get('exit_code')}"
            lines.append(f"failed {run.variant} seed {run.seed}: {reason} (log: {record.get('log', '')})")
    return lines


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
        if self.console.is_terminal and verbosity() > QUIET:  # -q: the summary at the end only
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
        if self._live is None and verbosity() > QUIET:
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
        size = self.console.size  # read at every redraw: the terminal may have been resized
        return build_table(self.spec, self.ledger.read(), self.root, self.slots, size.width, size.height)
