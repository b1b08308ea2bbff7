"""Ask Slurm which jobs are still queued or running (``squeue``), and what a partition's nodes hold (``sinfo``).

No submitit, no toolkit state. The runner asks before it plans (a run whose job is alive is waited for, never
submitted twice), whichever executor runs this time, and the Slurm executor asks while it waits.
"""

from __future__ import annotations

import shutil
import subprocess

from toolkit.errors import ToolkitError

#: squeue states of a job that is still going to run or running
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
ALIVE |= {"SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"}


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """``squeue`` state of each listed job still known to Slurm; None when Slurm cannot be asked right now."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    bases = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["squeue", "-h", "-r", "--states=all", "-o", "%i %T", "-j", ",".join(bases)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # every listed job was purged from the controller's memory: Slurm knows none of them any more
        return {} if "Invalid job id" in done.stderr else None
    states = dict(line.split(None, 1) for line in done.stdout.splitlines() if " " in line)
    return {j: states[j].strip() for j in job_ids if j in states}


def alive_jobs(job_ids: list[str]) -> set[str]:
    """The listed jobs that are queued or running."""
    states = job_states(job_ids)
    if states is None:
        raise ToolkitError(
            f"cannot ask Slurm (squeue) whether jobs {', '.join(job_ids)} still run; retry when it answers, so that no "
            "run is submitted twice"
        )
    return {j for j, state in states.items() if state in ALIVE}


def partition_gres(partition: str) -> str | None:
    """The generic resources of a partition's nodes as ``sinfo`` prints them (``gpu:a100:4``, ``(null)``); None when
    Slurm cannot be asked here or does not know the partition."""
    if shutil.which("sinfo") is None:
        return None
    try:
        done = subprocess.run(
            ["sinfo", "-h", "-p", partition, "-o", "%G"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = sorted({line.strip() for line in done.stdout.splitlines() if line.strip()})
    if done.returncode != 0 or not lines:
        return None
    return ",".join(line for line in lines if line != "(null)")
