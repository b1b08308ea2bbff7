"""The warm worker parent (``python -m toolkit.worker``): imports torch, Lightning, timm and wandb once, then forks
one child per run that executes ``toolkit <args>`` exactly as ``python -m toolkit`` would.

An entry point of its own process, like :mod:`toolkit.cli`: the ablation runner's side (``toolkit.ablation.warm``)
starts it and talks to it over JSON lines; see that module for the design, the fork-safety rules and the protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import sys
import traceback
from typing import Any

_PR_SET_PDEATHSIG = 1
# Before torch is imported: `torch.cuda.is_available()`/`device_count()` then ask NVML instead of initialising the CUDA
# driver, which would make every fork of this parent unusable for CUDA ("Cannot re-initialize CUDA in forked
# subprocess"). Lightning sets it on import too; this parent must not depend on import order.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
#: What the first ``wandb.init`` of a process imports, beyond ``import wandb``: ``wandb.sdk.launch`` (its pydantic
#: models read their own docstrings through ``inspect``, which scans every loaded module: 2.7-5 CPU-s per run once
#: torch is loaded) and the launch-input helpers ``Run._detect_and_apply_job_inputs`` loads. Imported once in the
#: parent, a child's ``wandb.init`` costs ~0.1 CPU-s. Imports only: nothing here starts a thread or the W&B service,
#: which a fork must not inherit (``tests/test_warm_workers.py`` checks both, and that the list is complete).
WANDB_INIT_IMPORTS = ("wandb.sdk.launch", "wandb.sdk.launch.inputs.internal")


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _emit(message: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(message) + "\n")
    sys.__stdout__.flush()


def _exit_code(error: SystemExit) -> int:
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _child(request: dict[str, Any], parent: int) -> None:
    """Become the run: own session, die with the parent, the run's streams, env and threads; never returns."""
    code = 1
    gc.enable()  # off in the parent only (see serve); a run collects as a fresh process does
    try:
        os.setsid()
        _die_with_parent()
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(137)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Lightning installs its own handler, as in a fresh process
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        sys.argv = ["toolkit", *request["args"]]
        from toolkit.cli import main

        try:
            main(list(request["args"]))
            code = 0
        except SystemExit as error:
            code = _exit_code(error)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def preload_check() -> None:
    """Import what the pre-launch check needs (torch, Lightning, timm, the toolkit's CLI) and build the CLI's parser
    once (every child parses with its copy: ~0.2 s a run)."""
    import lightning  # noqa: F401
    import timm  # noqa: F401
    import torch  # noqa: F401

    import toolkit.cli
    import toolkit.lightning_cli  # noqa: F401
    from toolkit.lightning_cli.parse_only import prebuild_parser

    prebuild_parser()


def preload_runs() -> None:
    """Import what a run needs beyond the check: wandb and what ``wandb.init`` loads."""
    import wandb  # noqa: F401

    for name in WANDB_INIT_IMPORTS:
        importlib.import_module(name)


def preload() -> None:
    """Import what every run imports: torch, Lightning, timm, wandb and what ``wandb.init`` loads, the toolkit's CLI."""
    preload_check()
    preload_runs()


def serve() -> None:
    """The parent: import the heavy modules, then fork a child per request until stdin closes.

    The runner starts it with ``PR_SET_PDEATHSIG``: the runner's death ends this parent, whose death ends its children.
    The garbage collector is off in the parent (the pattern ``gc.freeze``'s documentation gives for a parent that
    forks: disable early, freeze before forking, enable in the child): collections during the imports cost ~1-2 s of
    a ~5 s import on a 2-core machine, and the parent allocates little after them.
    """
    gc.disable()
    preload_check()
    gc.freeze()  # the imported objects stay out of every collection, in the parent and in each child
    parent = os.getpid()
    stdin = sys.stdin.buffer
    if select.select([stdin], [], [], 0)[0]:
        # the runner's pre-launch check, asked for before this parent was ready (WarmPool.start(early=True)): it is
        # forked now and runs on the other core while the rest is imported; its exit is reported once ready
        _serve_one(stdin, parent)
    preload_runs()
    gc.freeze()
    _emit({"ready": parent})
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.05)
        _reap()
        if readable:
            _serve_one(stdin, parent)


def _serve_one(stdin: Any, parent: int) -> None:
    """Fork a child for the request on ``stdin``; at its end (the runner is done or gone) exit at once: the children
    it still has die with this parent, and the interpreter's teardown of torch would only free memory (~0.3 s)."""
    import torch

    line = stdin.readline()
    if not line:
        sys.__stdout__.flush()
        os._exit(0)
    request = json.loads(line)
    if torch.cuda.is_initialized():
        _emit({"error": "CUDA was initialised in the warm parent; forking it is unsafe"})
        return
    pid = os.fork()
    if pid == 0:
        _child(request, parent)
    _emit({"pid": pid})


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _emit({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    serve()
