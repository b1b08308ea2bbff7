"""An ablation run's lifecycle, in the order it happens: plan -> check -> start -> finish (each step records).

- **plan**: which runs to start now (:func:`check_stale`, :func:`plan`): pending and interrupted ones, failed ones
  only with ``--retry-failed``; a run whose ``result.json`` appeared while no runner watched is recorded done, and a
  ``done`` run whose ``result.json`` is gone or unreadable is planned again (the disk wins over the ledger).
- **check**: every variant parses and builds, and differs from the baseline, before anything starts (:func:`check`).
- **start**: one attempt begins (:func:`begin`, :func:`header` for ``run.log``), whichever executor runs it.
- **finish**: how the attempt ended (:func:`finish`). An attempt that ends because it was stopped (Ctrl-C, SIGTERM,
  ``scancel``, preemption) is not a failure: the run goes back to ``pending`` and the next ``toolkit ablate run``
  resumes it from its last checkpoint. So does a run whose write failed on a full disk or quota (the machine's state,
  not the run's). Only a process that exits non-zero on its own is ``failed``.

The ledger (:mod:`toolkit.study.ledger`) is the plain storage beneath it; the runner (:mod:`runner`) drives the
steps and the executors (``local``, ``slurm``) run the processes.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.ablation.check_process import check_spec
from toolkit.ablation.ckpt_epochs import epochs_done
from toolkit.ablation.command import last_checkpoint, parse_variants
from toolkit.ablation.executor import Executor, executor_class, executor_names
from toolkit.errors import ToolkitError
from toolkit.study.layout import CHECKPOINTS, RESULT_FILE, RUN_LOG, wandb_runs
from toolkit.study.ledger import DONE, FAILED, PENDING, RUNNING, Ledger
from toolkit.study.result import RunResult
from toolkit.study.spec import AblationSpec, Run

if TYPE_CHECKING:
    from toolkit.ablation.warm import WarmPool

ERROR_LINES = 20
#: the last line of a Python traceback: ``ValueError: ...``, ``torch.OutOfMemoryError: ...``
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


# -- plan ----------------------------------------------------------------------------------------------------------
def check_stale(spec: AblationSpec, runs: list[Run], ledger: Ledger, root: Path) -> None:
    """A ledger entry for the same (variant, seed) under another id means the config changed under old outputs."""
    ids = {(r.variant, r.seed): r.id for r in runs}
    for record in ledger.read().values():
        key = (record.get("variant"), record.get("seed"))
        if key in ids and ids[key] != record["id"] and record.get("attempts"):
            run_dir = record.get("run_dir")
            raise ToolkitError(
                f"{spec.name} variant '{key[0]}' seed {key[1]} in {run_dir} was trained from a different config "
                f"(the spec or a base config changed since); use another --root, or move {root / spec.name} away"
            )


def plan(
    runs: list[Run], ledger: Ledger, root: Path, retry_failed: bool, executor: Executor
) -> tuple[list[Run], list[Run]]:
    """Split the runs into those to start now and those ``executor`` follows (live attempts of its own kind).

    Each unfinished run's last attempt is asked of the kind that made it (the record's ``executor``): still alive
    (a queued Slurm job) is followed by an executor of that kind and refused by another; otherwise what its dead
    runner left is cleaned up and the run starts again.
    """
    records = ledger.read()
    todo, following = [], []
    unfinished = (PENDING, RUNNING)
    kinds: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        record = records.get(run.id, {})
        if record.get("status") in unfinished and record.get("executor"):
            kinds.setdefault(record["executor"], {})[run.id] = record
    live = {run_id: kind for kind, mine in kinds.items() for run_id in _kind(kind).alive(mine)}
    refused = [run for run in runs if run.id in live and not (live[run.id] == executor.name and executor.follows)]
    if refused:
        names = ", ".join(f"{r.variant} seed {r.seed}" for r in refused)
        kind = live[refused[0].id]
        raise ToolkitError(
            f"{names} still queued or running under the {kind} executor; wait for them there "
            f"(--executor {kind}) or cancel them"
        )
    for run in runs:
        record = records.get(run.id, {})
        status = record.get("status", PENDING)
        if status == DONE and result_missing(run.directory(root)):
            # the disk over the ledger's word: a done run whose result is gone (folder deleted, file cut) is redone
            ledger.update(run.id, status=PENDING, note=f"{RESULT_FILE} was missing or unreadable; run again")
            status = PENDING
        if status == DONE or (status == FAILED and not retry_failed):
            continue
        if run.id in live:
            following.append(run)
            continue
        run_dir = run.directory(root)
        _kind(record.get("executor") or executor.name).clean_up(record, run_dir)  # what a dead runner left
        if status in (RUNNING, PENDING) and completed_since(run_dir, record.get("started_at")):
            # the run finished (result.json is its last write) but the runner died, or stopped it during its
            # teardown, before recording it
            finish(ledger, run, root, 0, False, note="completed while the runner was down")
            continue
        if status == RUNNING:  # its runner died: queued again, not running, until this runner starts it
            ledger.update(run.id, status=PENDING, pid=None, note="interrupted (its runner was gone); resumes")
        todo.append(run)
    return todo, following


def _kind(name: str) -> type[Executor]:
    """The executor kind that made an attempt; one no longer registered is asked as the interface's defaults."""
    return executor_class(name) if name in executor_names() else Executor


def result_missing(run_dir: Path) -> bool:
    """Whether a run folder lacks a readable ``result.json`` (a ``done`` run without one has nothing to report)."""
    return RunResult.read(run_dir / RESULT_FILE) is None


def completed_since(run_dir: Path, started_at: float | None) -> bool:
    """Whether ``toolkit fit`` wrote its completion file during the attempt that started at ``started_at``."""
    result = RunResult.read(run_dir / RESULT_FILE)
    finished_at = result.finished_at if result is not None else None
    return started_at is not None and finished_at is not None and finished_at >= started_at


# -- check ---------------------------------------------------------------------------------------------------------
def check(
    spec: AblationSpec, root: str | Path, gpus: int = 0, warm: WarmPool | None = None
) -> dict[str, dict[str, Any]]:
    """Parse every variant's ``toolkit fit`` command and build each distinct model once; refuse a no-op variant.

    Runs in a short-lived child process when this one has not imported torch (see :mod:`check_process`), forked from
    ``warm`` (the runner's warm parent) when given. Returns each variant's model size facts (the cost estimate's).
    """
    return check_spec(spec, root, gpus, warm)


def check_parses(spec: AblationSpec, root: str | Path, gpus: int = 0) -> None:
    """Parse every variant's ``toolkit fit`` command (the tune stage's values: a bad value fails before any run)."""
    parse_variants(spec, root, gpus)


# -- start ---------------------------------------------------------------------------------------------------------
def describe(run: Run, root: str | Path) -> dict[str, Any]:
    """The fixed fields of a run's record: where its outputs are."""
    run_dir = run.directory(root)
    return {
        "id": run.id,
        "variant": run.variant,
        "seed": run.seed,
        "run_dir": str(run_dir),
        "log": str(run_dir / RUN_LOG),
        "ckpt_dir": str(run_dir / CHECKPOINTS),
    }


def header(run: Run, root: str | Path, attempt: int, command: str) -> str:
    """The lines the runner writes into ``run.log`` before each attempt's own output."""
    ckpt = last_checkpoint(run.directory(root))
    how = f"resuming from {ckpt} ({epochs_done(ckpt)} epochs done)" if ckpt else "from scratch"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"\n# toolkit ablate: attempt {attempt} of {run.variant} seed {run.seed}, {how}, {stamp}\n$ {command}\n"


def begin(ledger: Ledger, run: Run, root: str | Path, **fields: Any) -> int:
    """Mark a run running; returns its attempt number (1 for the first)."""
    ckpt = last_checkpoint(run.directory(root))
    with ledger.edit() as runs:
        record = runs.setdefault(run.id, describe(run, root))
        record["attempts"] = record.get("attempts", 0) + 1
        record.update(
            status=RUNNING,
            started_at=time.time(),
            finished_at=None,
            host=socket.gethostname(),
            resumed=ckpt is not None,
            start_epoch=epochs_done(ckpt) if ckpt else 0,
            exit_code=None,
            error_tail=None,
            reason=None,
            note="",
            **fields,
        )
        record["updated_at"] = time.time()
        return record["attempts"]


# -- finish --------------------------------------------------------------------------------------------------------
def finish(ledger: Ledger, run: Run, root: str | Path, code: int, interrupted: bool, note: str = "") -> dict[str, Any]:
    """Record how an attempt ended and return the new record."""
    run_dir = run.directory(root)
    fields: dict[str, Any] = {"exit_code": code, "finished_at": time.time(), "pid": None}
    killed = killed_by(code)
    if killed and not interrupted:
        fields["reason"] = f"killed by {killed}"
    if not interrupted and killed in STOP_SIGNALS:
        # stopped from outside (kill -9, the OOM killer, SIGTERM to the run): no failure of its own; resumes like an
        # interrupted run, and the record says which signal, not the log's last line
        fields.update(status=PENDING, note=f"killed by {killed}; run again to resume from the last checkpoint")
    elif interrupted:
        fields.update(status=PENDING, note=note or "interrupted; run again to resume from the last checkpoint")
    elif code == 0:
        fields.update(status=DONE, note=note, error_tail=None, reason=None)
    else:
        tail = log_tail(run_dir / RUN_LOG)
        reason = fields.get("reason") or failure_reason(tail)
        if out_of_space(reason):
            # a full disk or quota is the machine's state, not the run's failure: it resumes like a killed run
            fields.update(status=PENDING, error_tail=tail, reason=reason, note="out of space: free space, run again")
        else:
            fields.update(status=FAILED, note=note, error_tail=tail, reason=reason)
    wandb = wandb_runs(run_dir)
    if wandb:
        # the newest is this attempt's; a resumed offline run is a new W&B run whose config names the one before
        fields.update(wandb_id=wandb[-1][0], wandb_dir=wandb[-1][1], wandb_ids=[run_id for run_id, _ in wandb])
    started = ledger.get(run.id).get("started_at")
    if started:
        fields["duration_s"] = round(fields["finished_at"] - started, 2)
    return ledger.update(run.id, **fields)


#: signals that stop a run from outside (a user, the OOM killer, a scheduler): the run resumes, it did not fail
STOP_SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP")


def killed_by(code: int | None) -> str | None:
    """The signal that ended a process (``SIGKILL``) from its exit status, else None.

    Popen reports a process killed by signal N as ``-N``; ``toolkit fit`` itself exits ``128 + 15`` after a SIGTERM
    (Lightning stops cleanly but would exit 0), and a shell reports ``128 + N`` for a killed child.
    """
    if code is None or code == 0:
        return None
    number = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


#: what ``toolkit fit``'s one line says when a write failed for want of space (``cli.main``: ``cannot write ...``)
_NO_SPACE = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


def out_of_space(reason: str | None) -> bool:
    """Whether a failed run's reason is a write that failed on a full disk, a quota or a file-size limit."""
    return bool(reason) and reason.startswith("cannot write") and any(text in reason for text in _NO_SPACE)


def log_tail(log: Path, lines: int = ERROR_LINES) -> list[str]:
    """The last lines of a run's log (where the traceback of a crash is)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


def failure_reason(tail: list[str]) -> str:
    """One line saying why a run failed: its ``error:`` line (toolkit's own errors), else the exception's last line.

    The toolkit prints bad input as ``error: <what to do>``; anything else ends in a traceback whose last line is
    ``SomeError: message``. Falls back to the last non-empty line of the log.
    """
    lines = [line.strip() for line in tail if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1][len("error:") :].strip()
    exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
    if exceptions:
        return exceptions[-1]
    return lines[-1] if lines else "no output in the run's log"
