"""The executor interface: what the lifecycle and the runner know of where runs execute (start, alive, kill).

An :class:`Executor` starts the runs it is given and records each attempt through the lifecycle
(``lifecycle.begin``/``finish``); tells which recorded attempts are still alive somewhere the runner cannot restart
them (a queued or running Slurm job: waited for, never started twice); and kills what a runner that died left
running on this machine. ``local.LocalRuns`` (subprocesses on this machine's slots) and ``slurm.SlurmRuns``
(a submitit job array) implement it; ``runner.make_executor`` is the one place that picks one.
"""

from __future__ import annotations

import os
import signal
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.ablation.command import DEFAULT_LAUNCHER, resume_args, shell_command
from toolkit.ablation.squeue import alive_jobs
from toolkit.study.ledger import PENDING, RUNNING, Ledger
from toolkit.study.spec import AblationSpec, Run


class Executor(ABC):
    """Where an ablation's runs execute.

    Attributes:
        gpus: GPUs each run gets (the variants are parsed and built for it).
        parallel: how many runs execute at once (rows of the live table).
        attaches: whether it can wait for runs whose Slurm job is still alive (else they are refused).
        interrupted: what Ctrl-C leaves behind, for the runner's message.
    """

    gpus: int = 0
    parallel: int = 1
    attaches: bool = False
    interrupted: str = "the running runs were stopped; "

    @abstractmethod
    def start(
        self, spec: AblationSpec, todo: list[Run], attach: list[Run], root: Path, ledger: Ledger, view: Any
    ) -> None:
        """Run ``todo`` (and wait for ``attach``) until each is recorded done, failed or pending again."""

    def dry_run(self, spec: AblationSpec, todo: list[Run], root: Path) -> list[str]:
        """What ``--dry-run`` prints for ``todo``: each run's ``toolkit fit`` command (an executor adds its job)."""
        launcher = getattr(self, "launcher", DEFAULT_LAUNCHER)
        return [shell_command(launcher, resume_args(spec, run, root, gpus=self.gpus)) for run in todo]

    def alive(self, records: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Ids of the unfinished runs whose Slurm job is still queued or running (asks ``squeue``)."""
        jobs = {
            run_id: r["slurm_job_id"]
            for run_id, r in records.items()
            if r.get("slurm_job_id") and r.get("status") in (PENDING, RUNNING)
        }
        live = alive_jobs(list(jobs.values()))
        return {run_id for run_id, job in jobs.items() if job in live}

    def kill(self, record: Mapping[str, Any], run_dir: Path) -> None:
        """Stop what a runner that died left of this run's attempt on this machine (its process group)."""
        if record.get("status") == RUNNING and record.get("pgid") and record.get("host") == socket.gethostname():
            kill_leftovers(record["pgid"], run_dir)


def kill_leftovers(pgid: int, run_dir: Path) -> int:
    """SIGKILL the processes of an interrupted run that outlived their runner; returns how many were killed.

    Only processes in the run's process group whose command line names the run folder, or whose stdout is a file in
    it (a run forked from a warm parent keeps that parent's command line), are touched, so a recycled process id
    never hits an unrelated process.
    """
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and (str(run_dir) in cmdline or _writes_into(entry, run_dir)):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def _writes_into(proc: Path, run_dir: Path) -> bool:
    try:
        return Path(os.readlink(proc / "fd" / "1")).is_relative_to(run_dir)
    except OSError:
        return False
