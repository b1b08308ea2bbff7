"""Run ablation runs as a Slurm job array through submitit, one task per run, requeued on preemption or timeout.

Each task starts the same ``toolkit fit`` subprocess the local executor would, and reports its own start and end to
the ledger (the runs folder must be on a filesystem the nodes share). The runner only submits, then watches the
ledger and ``squeue``: a task whose job left the queue without reporting an end (``scancel``, node failure) goes
back to ``pending`` and resumes from its last checkpoint next time. On the timeout/preemption signal submitit calls
:meth:`SlurmTask.checkpoint`, which stops the training process and requeues the same task; the new attempt resumes
with ``--ckpt_path last``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typing_extensions import override

from toolkit import DISTRIBUTION
from toolkit.ablation import lifecycle, slurm_request
from toolkit.ablation.command import resume_args, shell_command
from toolkit.ablation.executor import Executor, Options
from toolkit.ablation.slurm_settings import SlurmSettings, settings_from_spec
from toolkit.ablation.squeue import ALIVE, alive_jobs, job_states
from toolkit.errors import ToolkitError
from toolkit.study.ledger import DONE, FAILED, PENDING, RUNNING, Ledger, ledger_path
from toolkit.study.spec import AblationSpec, Run

#: submitit's default lead of the pre-timeout signal on the time limit, seconds (``--signal-delay-s``)
SIGNAL_DELAY_S = 90


class SlurmTask:
    """The callable submitit runs on a node: one attempt of one run.

    Args:
        spec: the ablation.
        run: the run.
        root: the runs folder (absolute, shared with the nodes).
        launcher: the program to start (``python -m toolkit``).
        gpus: GPUs per run (per node).
        settings: the job's Slurm settings (one task per DDP process when it spans tasks).
    """

    def __init__(
        self, spec: AblationSpec, run: Run, root: str, launcher: list[str], gpus: int, settings: SlurmSettings
    ) -> None:
        self.spec, self.run, self.root, self.launcher, self.gpus = spec, run, root, launcher, gpus
        self.settings = settings
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_proc", "_stopped")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _proc=None, _stopped=False)

    def args(self) -> list[str]:
        """The ``toolkit fit`` arguments this task runs (resuming when the run has a checkpoint)."""
        per_process = self.settings.task_per_process(self.gpus)
        ddp = (self.settings.nodes, self.settings.tasks(self.gpus)) if per_process else None
        return resume_args(self.spec, self.run, self.root, gpus=self.gpus, ddp=ddp)

    def __call__(self) -> int:
        """Train, test and log the run; returns its exit code (the ledger holds the outcome)."""
        run_dir = self.run.directory(self.root)
        per_process = self.settings.task_per_process(self.gpus)
        args = self.args()
        command = shell_command(self.launcher, args)
        threads = os.environ.get("SLURM_CPUS_PER_TASK", "1")
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        if per_process:
            # every task is one DDP process: Lightning's SLURMEnvironment takes the ranks, world size and main
            # address from Slurm's variables; task 0 alone records the run
            rank = int(os.environ.get("SLURM_PROCID", "0"))
            if rank:
                return self._follow(run_dir, rank, args, env)
        else:
            # One Slurm task per run, and submitit owns requeueing: without the srun task layout Lightning neither
            # expects srun to start its DDP processes nor installs its own SLURM requeue handlers; the run behaves
            # as it does on a workstation.
            for key in ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NPROCS"):
                env.pop(key, None)
        job_id = _job_id()
        ledger = Ledger(ledger_path(self.root, self.spec.name))
        record_env = {k: env[k] for k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in env}
        n = lifecycle.begin(
            ledger, self.run, self.root, env=record_env, command=command, executor="slurm", slurm_job_id=job_id
        )
        # submitit ignores SIGTERM (it waits for its own signal to requeue); remember it: an attempt stopped by
        # scancel is interrupted, not failed, even if the training process exits 0 after Lightning's SIGTERM stop.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        log_path = run_dir / "run.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(lifecycle.header(self.run, self.root, n, command).encode())
            log.write(f"# slurm job {job_id} on {os.uname().nodename}\n".encode())
            log.flush()
            self._proc = _start(self.launcher, args, log, env)
        ledger.update(self.run.id, pid=self._proc.pid)
        code = self._proc.wait()
        note = f"slurm job {job_id} was stopped; run again to resume" if self._stopped else ""
        lifecycle.finish(ledger, self.run, self.root, code, self._stopped, note)
        return code

    def _follow(self, run_dir: Path, rank: int, args: list[str], env: dict[str, str]) -> int:
        """A DDP process of rank > 0: train beside task 0, logging to ``run.rank<k>.log``; the ledger is task 0's."""
        run_dir.mkdir(parents=True, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        with open(run_dir / f"run.rank{rank}.log", "ab") as log:
            self._proc = _start(self.launcher, args, log, env)
        return self._proc.wait()

    def checkpoint(self) -> Any:
        """Called by submitit on preemption or timeout: stop training, requeue this run (it resumes from last.ckpt)."""
        import submitit

        self._stopped = True
        if self._proc is not None:
            # Lightning stops a single-process fit on SIGTERM at the end of its epoch, after writing last.ckpt:
            # give it all of the signal's lead on the time limit but a margin for the requeue
            _stop_child(self._proc.pid, grace_s=max(10, (self.settings.signal_delay_s or SIGNAL_DELAY_S) - 15))
        again = SlurmTask(self.spec, self.run, self.root, self.launcher, self.gpus, self.settings)
        if int(os.environ.get("SLURM_PROCID", "0")):
            return submitit.helpers.DelayedSubmission(again)  # task 0 records the requeue
        ledger = Ledger(ledger_path(self.root, self.spec.name))
        note = f"slurm job {_job_id()} preempted or timed out; requeued, resumes from its last checkpoint"
        ledger.update(self.run.id, status=PENDING, note=note, pid=None)
        return submitit.helpers.DelayedSubmission(again)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._stopped = True


def _start(launcher: list[str], args: list[str], log: Any, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the training process with Slurm's USR2 ignored: Slurm signals every process of the job step, and
    USR2's default action would kill the run before it saves; submitit's handler in this process stops it with
    SIGTERM instead (:meth:`SlurmTask.checkpoint`), on which it saves (``toolkit.callbacks.signal_save``)."""
    return subprocess.Popen(
        [*launcher, *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=_ignore_usr2,  # an ignored signal stays ignored across exec
    )


def _ignore_usr2() -> None:
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _stop_child(pid: int, grace_s: float) -> None:
    """SIGTERM the training process, wait until it has exited, then SIGKILL it.

    Runs inside a signal handler that interrupted ``Popen.wait()``, which holds the Popen's wait lock: a nested
    ``Popen.wait``/``poll`` cannot reap and would always time out. ``waitid(WNOWAIT)`` sees the exit without
    reaping it, and the interrupted ``wait()`` reaps it afterwards.
    """
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        try:
            if os.waitid(os.P_PID, pid, flags) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "")


class SlurmRuns(Executor):
    """The Slurm executor: submits the runs as one submitit job array and waits; alive Slurm jobs are waited for.

    Args:
        launcher: the program each run starts.
        settings: the sbatch options of every run's job (its GPUs per run and node, array parallelism, ...).
    """

    name = "slurm"
    settings = SlurmSettings
    spec_key = "slurm"
    follows = True
    interrupted = "the Slurm jobs go on; "

    def __init__(self, launcher: list[str], settings: SlurmSettings) -> None:
        self.launcher, self.settings = launcher, settings
        self.gpus = settings.gpus
        self.parallel = settings.array_parallelism or 1

    @classmethod
    @override
    def build(cls, options: Options, spec: AblationSpec | None) -> SlurmRuns:
        """The spec's ``slurm:`` block with the command line's options over it; GPUs, nodes and CPUs from the runs'
        trainer settings (a contradiction is refused)."""
        if importlib.util.find_spec("submitit") is None:
            raise ToolkitError(
                f"--executor slurm needs submitit, from the 'slurm' extra: pip install '{DISTRIBUTION}[slurm]'"
            )
        where = spec.path if spec is not None else "spec"
        settings = settings_from_spec(spec.slurm if spec is not None else None, where)
        given = {"cpus_per_task": options.cpus_per_run, "gpus_per_node": options.gpus_per_run}
        settings = settings.merged({**options.executor_options, **given})
        if spec is not None:
            settings = slurm_request.resolve(spec, settings)
        return cls(options.launcher, settings)

    @classmethod
    @override
    def alive(cls, records: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """The unfinished runs whose Slurm job is still queued or running (asks ``squeue``): a new runner waits for
        them, never submits them twice."""
        jobs = {
            run_id: r["slurm_job_id"]
            for run_id, r in records.items()
            if r.get("slurm_job_id") and r.get("status") in (PENDING, RUNNING)
        }
        live = alive_jobs(list(jobs.values()))
        return {run_id for run_id, job in jobs.items() if job in live}

    @override
    def start(
        self, spec: AblationSpec, todo: list[Run], following: list[Run], root: Path, ledger: Ledger, view: Any
    ) -> None:
        """Submit ``todo`` as one job array, then wait for it and for the still-alive jobs of ``following``."""
        _submit(spec, todo, root, self, ledger, view)
        _wait(todo + following, ledger, view)

    @override
    def dry_run(self, spec: AblationSpec, todo: list[Run], root: Path) -> list[str]:
        """The job script submitit would submit (its own sbatch writer), then each task's ``toolkit fit`` command."""
        if not todo:
            return []
        from submitit.slurm.slurm import _make_sbatch_string

        # submitit's SlurmExecutor writes its script with this function (`_make_submission_file_text`); the
        # executor itself cannot be built where there is no srun, and a dry run must work on a laptop
        folder = _folder(root, spec)
        params = self.settings.parameters(f"ablate-{spec.name}")
        if len(todo) > 1:  # submitit submits one run as a plain job, several as an array
            params["map_count"] = len(todo)
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
        header = _make_sbatch_string(command=command, folder=folder, **params)
        tasks = [self.task(spec, run, root) for run in todo]
        return [header.rstrip("\n"), *(shell_command(self.launcher, task.args()) for task in tasks)]

    def task(self, spec: AblationSpec, run: Run, root: Path) -> SlurmTask:
        """The callable one array task runs for ``run``."""
        return SlurmTask(spec, run, str(root), self.launcher, self.gpus, self.settings)


def _folder(root: Path, spec: AblationSpec) -> Path:
    """submitit's folder for the study's jobs (``%j``: the job id), absolute as submitit makes it."""
    return (root / spec.name / "slurm" / "%j").expanduser().absolute()


def _submit(spec: AblationSpec, todo: list[Run], root: Path, options: SlurmRuns, ledger: Ledger, view: Any) -> None:
    """Submit ``todo`` as one submitit job array and record each run's job id."""
    if not todo:
        return
    import submitit

    settings = options.settings
    limits = {} if settings.max_num_timeout is None else {"slurm_max_num_timeout": settings.max_num_timeout}
    executor = submitit.AutoExecutor(folder=_folder(root, spec), cluster="slurm", **limits)
    params = settings.parameters(f"ablate-{spec.name}")
    executor.update_parameters(**{f"slurm_{key}": value for key, value in params.items()})
    try:
        with executor.batch():
            jobs = [executor.submit(options.task(spec, run, root)) for run in todo]
    except submitit.core.utils.FailedJobError as err:
        reason = " ".join(str(err).split())
        raise ToolkitError(
            f"Slurm refused the job array ({reason}); check --partition, --account, --qos, --mem, --constraint, "
            "--gpus-per-run, --time-min and --slurm-param"
        ) from None
    for run, job in zip(todo, jobs, strict=True):
        with ledger.edit() as records:
            record = records[run.id]
            record.update(slurm_job_id=job.job_id, executor="slurm")
            if record.get("status") == PENDING:  # the task may have started already and written its own state
                record["note"] = f"submitted as slurm job {job.job_id}"
        view.event(run, PENDING, f"submitted as slurm job {job.job_id}")


def _wait(runs: list[Run], ledger: Ledger, view: Any, poll_s: float = 2.0) -> None:
    """Until every run is done or failed, or its job ended without saying so (then it is pending again)."""
    waiting = {run.id: run for run in runs}
    reported: dict[str, str] = {}
    while waiting:
        records = ledger.read()
        states = job_states([records[i]["slurm_job_id"] for i in waiting if records[i].get("slurm_job_id")])
        for run_id, run in list(waiting.items()):
            record = records[run_id]
            status, job_id = record.get("status"), record.get("slurm_job_id")
            if status != reported.get(run_id):
                reported[run_id] = status
                if status != PENDING:
                    view.event(run, status, f"slurm job {job_id}")
            if status in (DONE, FAILED):
                del waiting[run_id]
            elif states is not None and states.get(job_id) not in ALIVE:
                if ledger.get(run_id).get("status") in (DONE, FAILED):
                    continue  # it ended between the two reads; the next round reports it
                why = states.get(job_id, "gone from the queue")
                ledger.update(run_id, status=PENDING, pid=None, note=f"slurm job {job_id} ended ({why}); run again")
                view.event(run, PENDING, f"slurm job {job_id} ended ({why}) before the run finished")
                del waiting[run_id]
        view.tick()
        if waiting:
            time.sleep(poll_s)
