"""The CPU thread policy of ``toolkit fit|validate|test|predict``: how many threads a run may use, and why.

torch starts as many intra-op threads as the machine has cores, whatever else runs there. Beside one busy process
on 2 cores that oversubscribes: OpenMP threads spin waiting for the preempted one, and a quickstart epoch took
81-99 s instead of 9.1 s with ``OMP_NUM_THREADS=1``. The ablation runner's workers fix their count through
``OMP_NUM_THREADS`` (one per run on CPU) and ``torch.set_num_threads``; this module gives a hand-run command the same
treatment: ``OMP_NUM_THREADS`` when it is set, else the CPUs this process may use (``os.sched_getaffinity``, a cgroup
CPU quota) less the ones other processes keep busy (``/proc/loadavg``). No library decides this from the load, so it
is written here.

The thread count can change a run's numbers (float sums are split per thread: gradients differ in the 7th digit,
and training compounds that), so it is part of the run's record: the run's first lines say it, and the W&B config
(``cpu_threads``) and ``result.json`` (``cpu_threads``) keep it. A study's runs always get a fixed count from the
runner; ``OMP_NUM_THREADS=N`` repeats a hand-run fit exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import ToolkitError

#: the environment variable the runner's workers and OpenMP read
THREADS_ENV = "OMP_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason for it (the run's first line)."""

    threads: int
    reason: str

    def line(self) -> str:
        """``threads: 2 (2 CPUs allowed, 0 busy)``: what the run prints first."""
        return f"threads: {self.threads} ({self.reason})"


def allowed_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity mask is the limit
    return max(1, cpus)


def busy_cpus(loadavg: Path = Path("/proc/loadavg")) -> int:
    """How many CPUs other processes keep busy: the larger of the 1-minute load average (rounded) and the runnable
    threads right now, less this process (0 where the kernel does not say)."""
    try:
        fields = loadavg.read_text().split()
        load = float(fields[0])
        running = int(fields[3].split("/")[0]) - 1  # this process is runnable while it reads the file
    except (OSError, ValueError, IndexError):
        return 0
    return max(0, math.floor(load + 0.5), running)


def choose_threads(
    environ: Mapping[str, str] | None = None, allowed: int | None = None, busy: int | None = None
) -> ThreadChoice:
    """The thread count for this run: ``OMP_NUM_THREADS`` if set, else the allowed CPUs that are not busy (>= 1).

    Args:
        environ: the environment (default ``os.environ``).
        allowed: the CPUs this process may use (default :func:`allowed_cpus`).
        busy: the CPUs other processes keep busy (default :func:`busy_cpus`).
    """
    environ = os.environ if environ is None else environ
    given = environ.get(THREADS_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise ToolkitError(f"{THREADS_ENV}={given!r}: give a whole number of threads >= 1, or unset it")
        return ThreadChoice(int(given), f"{THREADS_ENV}={given}")
    allowed = allowed_cpus() if allowed is None else allowed
    busy = busy_cpus() if busy is None else busy
    threads = max(1, allowed - busy)
    return ThreadChoice(
        threads, f"{allowed} CPUs allowed, {busy} busy; set {THREADS_ENV} to repeat this run's numbers exactly"
    )


def apply_threads(choice: ThreadChoice) -> None:
    """Set the count the way the runner's workers do: ``torch.set_num_threads`` (loader workers take 1 each)."""
    import torch

    torch.set_num_threads(choice.threads)
