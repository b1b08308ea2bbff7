"""Run ablation runs as subprocesses on the device slots of this machine, a few at a time.

A slot is a set of GPUs (``CUDA_VISIBLE_DEVICES``) and a fixed number of CPU threads (``OMP_NUM_THREADS``/
``MKL_NUM_THREADS``, applied with ``torch.set_num_threads``). On CPU the thread count is 1 per run unless
``--cpus-per-run`` says otherwise, never derived from ``--workers``: the thread count changes the order of float
reductions, so a seed's numbers would depend on how many runs share the machine. Runs start as children of a warm
parent (:mod:`toolkit.ablation.warm`) when fork is safe, else as fresh processes. One loop in the main thread
starts runs on free slots and polls them; no threads, so ``preexec_fn`` is safe. Each run gets its own session
(process group) and the kernel kills it when the runner dies (``PR_SET_PDEATHSIG``), so a runner killed with
SIGKILL leaves no orphan training on; a restarted runner also kills any leftover process of an interrupted run
(matched by process group and run folder) before resuming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing_extensions import override

from toolkit.ablation import lifecycle
from toolkit.ablation.command import DEFAULT_LAUNCHER, resume_args, shell_command
from toolkit.ablation.executor import Executor, Options
from toolkit.ablation.slots import Slot, make_slots, parse_devices, run_env
from toolkit.ablation.warm import WarmPool, WarmProcess
from toolkit.study.layout import RUN_LOG
from toolkit.study.ledger import RUNNING, Ledger
from toolkit.study.spec import AblationSpec, Run

_PR_SET_PDEATHSIG = 1


@dataclass
class Job:
    """One run ready to start: what to execute, where to log, and how to report back.

    ``args`` (the arguments after ``toolkit``) lets a warm parent fork the run instead of executing ``argv``; None
    runs ``argv`` as a fresh process.
    """

    key: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    header: str = ""
    args: list[str] | None = None


def _die_with_parent(parent: int) -> Callable[[], None]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it

    def preexec() -> None:
        # Linux only: the kernel sends SIGKILL to this child when the runner dies, however it dies.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the runner died before prctl took effect
            os._exit(137)

    return preexec


def fork_unsafe_reason(slots: list[Slot]) -> str | None:
    """Why runs cannot be forked from a warm parent here (None: they can)."""
    if not sys.platform.startswith("linux"):
        return f"fork-based warm workers need Linux (this is {sys.platform})"
    if any(len(slot.gpus) > 1 for slot in slots):
        return "DDP runs relaunch their own command line per GPU"
    return None


Process = subprocess.Popen[bytes] | WarmProcess
_prestarted: list[WarmPool] = []


def prestart_warm_parent() -> None:
    """Start the warm parent now, so its imports overlap with the runner's own work (validating the variants).

    The next :class:`LocalExecutor` with ``warm=True`` uses it; a runner that stops before that ends it by exiting.
    """
    if not _prestarted and fork_unsafe_reason([]) is None:
        _prestarted.append(WarmPool(preexec_fn=_die_with_parent(os.getpid())))


def prestarted_pool() -> WarmPool | None:
    """The warm parent :func:`prestart_warm_parent` started (still unused by an executor), else None."""
    return _prestarted[0] if _prestarted else None


class LocalExecutor:
    """Start jobs on free slots and wait for them, calling back on every start and finish.

    Args:
        slots: from :func:`make_slots`.
        poll_s: seconds between polls of the running processes (a warm run's exit wakes the runner at once).
        warm: fork jobs that have ``args`` from a warm parent (see :mod:`toolkit.ablation.warm`); when the parent
            cannot start or fork, the jobs start as fresh processes and ``on_note`` says so.
        on_note: receives one line about how runs are started.
    """

    def __init__(
        self,
        slots: list[Slot],
        poll_s: float = 0.5,
        warm: bool = False,
        on_note: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.slots = slots
        self.poll_s = poll_s
        self.warm = warm
        self.on_note = on_note
        self.pool: WarmPool | None = None

    def run(
        self,
        jobs: list[Job],
        prepare: Callable[[Job, Slot], None],
        on_start: Callable[[Job, Slot, int], None],
        on_exit: Callable[[Job, int, bool], None],
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        """Run every job: ``prepare(job, slot)`` before its process starts (it may set ``job.header``),
        ``on_start(job, slot, pid)`` after, ``on_exit(job, returncode, interrupted)`` once it ended.

        On KeyboardInterrupt (Ctrl-C, or SIGTERM to the runner) the running jobs are stopped and reported as
        interrupted, then the interrupt propagates.
        """
        queue = list(jobs)
        free = list(self.slots)
        active: dict[int, tuple[Job, Slot, Process]] = {}
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        if self.warm and any(job.args is not None for job in jobs):
            self.pool = _prestarted.pop() if _prestarted else WarmPool(preexec_fn=_die_with_parent(os.getpid()))
        try:
            while queue or active:
                while queue and free:
                    job, slot = queue.pop(0), free.pop(0)
                    prepare(job, slot)
                    proc = self._start(job, slot)
                    active[proc.pid] = (job, slot, proc)
                    on_start(job, slot, proc.pid)
                for pid, (job, slot, proc) in list(active.items()):
                    code = proc.poll()
                    if code is not None:
                        del active[pid]
                        free.append(slot)
                        on_exit(job, code, False)
                on_tick()
                if active:
                    self._wait()
        except BaseException:  # Ctrl-C, SIGTERM, or an error of the runner itself: stop every run, mark it pending
            _stop_all([proc for _, _, proc in active.values()])
            for job, _, proc in active.values():
                on_exit(job, proc.returncode if proc.returncode is not None else -signal.SIGTERM, True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.pool is not None:
                self.pool.close()
                self.pool = None

    def _wait(self) -> None:
        """Until the warm parent reports something (a forked run's exit: its slot is refilled at once, not at the
        next poll) or ``poll_s`` passed; fresh processes are polled every ``poll_s``."""
        if self.pool is not None and self.pool.proc.poll() is None:
            self.pool.read(self.poll_s)
        else:
            time.sleep(self.poll_s)

    def _start(self, job: Job, slot: Slot) -> Process:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        env = run_env(slot)
        with open(job.log, "ab") as log:
            env_line = " ".join(f"{k}={v}" for k, v in env.items())
            how = "forked from the warm parent" if self.pool is not None and job.args is not None else "fresh process"
            log.write(f"{job.header}# slot {slot.index}: {env_line} ({how})\n".encode())
            log.flush()
            if self.pool is not None and job.args is not None:
                try:
                    return self.pool.start(job.args, {**env, **job.env}, job.log)
                except OSError as err:
                    self.on_note(f"warm workers off ({err}): runs start as fresh processes")
                    log.write(f"# {err}: starting a fresh process instead\n".encode())
                    log.flush()
                    self.pool.close()
                    self.pool = None
            return subprocess.Popen(
                job.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, **job.env},
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_all(procs: list[Process], grace_s: float = 20.0) -> None:
    """SIGTERM every run's process group at once (Lightning exits cleanly), wait together, then SIGKILL the rest."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [proc for proc in procs if proc.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        for proc in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class LocalOptions:
    """The local executor's options (``toolkit ablate run --workers 2 --devices 0,1``)."""

    workers: int | None = field(default=None, metadata={"help": "{what} at once (CPU default 1; GPU: all slots)"})
    devices: str | None = field(default=None, metadata={"help": "GPU ids like 0,1,2,3, or cpu (default: all)"})
    warm: bool = field(
        default=True,
        metadata={"help": "fork runs from a parent with torch loaded (<1 s)"},
    )


class LocalRuns(Executor):
    """The local executor: every run a ``toolkit fit`` process on a free slot of this machine (see the module doc).

    Args:
        slots: from :func:`make_slots`.
        launcher: the program each run starts.
        warm: fork runs from a warm parent when that is safe.
        parallel: rows of the live table.
    """

    name = "local"
    settings = LocalOptions

    def __init__(self, slots: list[Slot], launcher: list[str], warm: bool, parallel: int) -> None:
        self.slots, self.launcher, self.warm, self.parallel = slots, launcher, warm, parallel
        self.gpus = len(slots[0].gpus)

    @classmethod
    @override
    def build(cls, options: Options, spec: AblationSpec | None) -> LocalRuns:
        """Slots from ``--workers``/``--devices``/``--gpus-per-run``/``--cpus-per-run`` (a bad value fails here)."""
        given = LocalOptions(**{k: v for k, v in options.executor_options.items() if v is not None})
        slots = make_slots(
            workers=given.workers,
            devices=parse_devices(given.devices),
            gpus_per_run=options.gpus_per_run or 1,
            cpus_per_run=options.cpus_per_run,
        )
        return cls(slots, options.launcher, given.warm, len(slots))

    @override
    def start(
        self, spec: AblationSpec, todo: list[Run], following: list[Run], root: Path, ledger: Ledger, view: Any
    ) -> None:
        """Run ``todo`` on the slots (``following`` is empty: a local attempt lives only with its runner)."""
        by_id = {run.id: run for run in todo}
        # a warm parent can only stand in for the real `toolkit` entry point (tests inject other launchers)
        reason = None if self.launcher == DEFAULT_LAUNCHER else "a custom launcher"
        reason = reason or fork_unsafe_reason(self.slots)
        warm = self.warm and reason is None
        if self.warm and reason and todo:
            view.console.print(f"warm workers off ({reason}): runs start as fresh processes", soft_wrap=True)
        jobs = []
        for run in todo:
            argv = [*self.launcher, *resume_args(spec, run, root, gpus=self.gpus)]
            args = argv[len(self.launcher) :] if warm else None
            # unbuffered: run.log is live and keeps the last lines even when the run is killed
            jobs.append(Job(run.id, argv, run.directory(root) / RUN_LOG, env={"PYTHONUNBUFFERED": "1"}, args=args))

        def prepare(job: Job, slot: Slot) -> None:
            run = by_id[job.key]
            command = shell_command(self.launcher, job.argv[len(self.launcher) :])
            n = lifecycle.begin(ledger, run, root, env=slot.env(), command=command, executor="local")
            job.header = lifecycle.header(run, root, n, command)  # written by the executor before the run's output
            env = ", ".join(f"{k}={v}" for k, v in slot.env().items())
            view.event(run, RUNNING, f"(attempt {n}, {env})")

        def on_start(job: Job, slot: Slot, pid: int) -> None:
            ledger.update(job.key, pid=pid, pgid=pid)

        def on_exit(job: Job, code: int, interrupted: bool) -> None:
            record = lifecycle.finish(ledger, by_id[job.key], root, code, interrupted)
            view.event(by_id[job.key], record["status"], f"exit {code}")

        def note(line: str) -> None:
            view.console.print(line, soft_wrap=True)

        LocalExecutor(self.slots, warm=warm, on_note=note).run(jobs, prepare, on_start, on_exit, view.tick)
