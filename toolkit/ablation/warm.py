"""Warm run workers: one parent imports torch, Lightning, timm and wandb once and forks one child per run.

Starting ``python -m toolkit fit`` costs ~8 s on a 2-core machine (imports ~4.6 s, interpreter teardown ~1.5 s);
a child forked from a parent that already holds those modules starts in a few milliseconds. Each run is still its
own process: its own session (process group), ``PR_SET_PDEATHSIG`` (it dies with its parent, which dies with the
runner), its environment and CPU thread count, stdout/stderr into its ``run.log``, and the kernel frees its memory.
The child runs exactly what ``python -m toolkit fit ...`` runs (:func:`toolkit.cli.main`) and exits with the same
status: 2 for a :class:`~toolkit.errors.ToolkitError`, 143 for SIGTERM, 1 for a crash.

Fork safety, from prototyping (issue 11): the parent never runs a tensor op (a child of a parent whose OpenMP pool
exists hangs at its first 2-thread op) and never touches CUDA (checked before each fork; the runner falls back to
fresh processes then); ``OMP_NUM_THREADS`` set after ``import torch`` has no effect, so the child calls
``torch.set_num_threads``; ``os._exit`` skips atexit, so the child ends its W&B run itself (``run_cli`` tears W&B
down) and flushes its streams. Plain ``os.fork`` instead of a multiprocessing forkserver, which on Python 3.11
ignores the parent's ``sys.path`` and swallows preload ImportErrors.

The parent is :mod:`toolkit.worker` (an entry point, like :mod:`toolkit.cli`); this module is the runner's side.

Protocol (JSON lines): the runner writes ``{"args", "env", "log", "cwd"}`` to the parent's stdin; the parent
answers ``{"pid": N}`` (or ``{"error": why}``) and later ``{"exit": N, "code": C}`` with Popen's convention for
the code (negative: killed by that signal). The parent imports in two steps: what the pre-launch check needs (and the
CLI's parser, built once), then wandb; a request already waiting after the first step (the check, sent with
``early=True`` before ``{"ready"}``) is forked then and runs while the parent imports the rest. At the end of its
stdin the parent exits at once (``os._exit``: no teardown of torch).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
#: seconds the runner waits for the parent's imports
READY_TIMEOUT_S = 300.0


class WarmProcess:
    """A run forked by the warm parent, with the part of :class:`subprocess.Popen` the executor uses."""

    def __init__(self, pool: WarmPool, pid: int) -> None:
        self.pool = pool
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.pool.read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            self.pool.read(0.05 if left is None else min(0.05, left))
        assert self.returncode is not None
        return self.returncode


class WarmPool:
    """The runner's side: starts the warm parent and asks it for runs.

    Raises ``OSError`` when the parent cannot start or dies; the executor then uses fresh processes.
    """

    def __init__(self, preexec_fn: Callable[[], None] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "toolkit.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=preexec_fn,
        )
        self.buffer = b""
        self.messages: list[dict[str, Any]] = []
        self.procs: dict[int, WarmProcess] = {}
        self.ready = False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise OSError(f"the warm worker parent did not start (exit {self.proc.poll()})")
            self.read(0.1)

    def start(self, args: list[str], env: dict[str, str], log: Path, early: bool = False) -> WarmProcess:
        """Fork one run: ``toolkit <args>`` with ``env`` added, output appended to ``log``.

        ``early``: ask before the parent is ready (the pre-launch check): the parent forks it once it holds what the
        check needs, and imports the rest while the check runs; the child imports whatever else it needs itself.
        """
        if not early:
            self.wait_ready()
        request = {"args": args, "env": env, "log": str(log), "cwd": os.getcwd()}
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + READY_TIMEOUT_S  # an early request waits for the parent's imports
        while True:
            for message in list(self.messages):
                if "pid" in message or "error" in message:
                    self.messages.remove(message)
                    if "error" in message:
                        raise OSError(message["error"])
                    proc = WarmProcess(self, message["pid"])
                    self.procs[proc.pid] = proc
                    return proc
            if self.proc.poll() is not None:
                raise OSError(f"the warm worker parent died (exit {self.proc.returncode})")
            if time.monotonic() > deadline:
                raise OSError("the warm worker parent did not answer")
            self.read(0.05)

    def read(self, timeout: float) -> None:
        """Take in what the parent said within ``timeout`` seconds; exits go straight to their process."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], timeout)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                self._parent_gone()
                break
            self.buffer += chunk
            timeout = 0.0
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            message = json.loads(line)
            if "ready" in message:
                self.ready = True
            elif "exit" in message and message["exit"] in self.procs:
                self.procs.pop(message["exit"]).returncode = message["code"]
            else:
                self.messages.append(message)

    def _parent_gone(self) -> None:
        # its children got SIGKILL through PR_SET_PDEATHSIG
        for proc in self.procs.values():
            proc.returncode = -signal.SIGKILL
        self.procs.clear()

    def close(self) -> None:
        """End the parent (its remaining children die with it)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
