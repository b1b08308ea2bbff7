"""Turn a run into the ``toolkit fit`` command a user could type, and check it with the LightningCLI parser.

Override values are written the way jsonargparse reads them from a command line: it parses a value according to
the argument's type, so strings go through verbatim (quoting ``'off'`` would make the quotes part of the string)
and everything else (numbers, booleans, null, lists, mappings) is written as JSON, which YAML reads back exactly.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from toolkit.ablation.spec import AblationSpec, Run
from toolkit.errors import ToolkitError

#: the program every run starts: the ``toolkit`` entry point of this interpreter
DEFAULT_LAUNCHER = [sys.executable, "-m", "toolkit"]
_WANDB_RUN = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def format_value(value: Any) -> str:
    """Write one override value for the command line (see the module docstring)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def last_checkpoint(run_dir: Path) -> Path | None:
    """``<run dir>/checkpoints/last.ckpt`` when it exists: the run then resumes with ``--ckpt_path last``."""
    path = run_dir / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def wandb_runs(run_dir: Path) -> list[tuple[str, str]]:
    """The W&B runs under ``<run dir>/wandb`` as ``(run id, folder)``, oldest first (one per attempt)."""
    found = []
    for folder in (run_dir / "wandb").glob("*run-*"):
        match = _WANDB_RUN.match(folder.name)
        if match and folder.is_dir():
            found.append((folder.name.removeprefix("offline-"), match["id"], str(folder)))
    return [(run_id, folder) for _, run_id, folder in sorted(found)]  # names start with the start time


def resume_args(spec: AblationSpec, run: Run, root: str | Path, gpus: int = 0) -> list[str]:
    """The run's ``toolkit fit`` arguments, resuming from ``checkpoints/last.ckpt`` when the run has one."""
    return fit_args(spec, run, root, resume=last_checkpoint(run.directory(root)) is not None, gpus=gpus)


def fit_args(
    spec: AblationSpec,
    run: Run,
    root: str | Path,
    *,
    resume: bool = False,
    gpus: int = 0,
) -> list[str]:
    """The arguments after ``toolkit`` that train, test and log one run.

    Args:
        spec: the ablation.
        run: one of ``spec.runs()``.
        root: the folder holding every ablation's runs.
        resume: add ``--ckpt_path last`` (the run dir holds ``checkpoints/last.ckpt``); ``toolkit fit`` then
            continues the W&B run stored in the checkpoint (online) or starts one with ``resumed_from`` (offline).
        gpus: GPUs given to the run; more than one trains with DDP inside the run.
    """
    args = ["fit"]
    for base in spec.base:
        args += ["--config", base]
    for key, value in run.overrides.items():
        args += [f"--{key}", format_value(value)]
    args += [
        "--seed_everything",
        str(run.seed),
        "--trainer.default_root_dir",
        str(run.directory(root)),
        "--test_after_fit",
        "true",
        "--ablation.name",
        spec.name,
        "--ablation.variant",
        run.variant,
        "--ablation.seed",
        str(run.seed),
        "--trainer.logger.init_args.project",
        spec.project,
    ]
    if gpus:
        args += ["--trainer.accelerator", "gpu", "--trainer.devices", str(gpus)]
        if gpus > 1:
            args += ["--trainer.strategy", "ddp"]
    if resume:
        args += ["--ckpt_path", "last"]
    return args


def shell_command(launcher: list[str], args: list[str]) -> str:
    """The command as one shell line (for logs and the ledger)."""
    return shlex.join([*launcher, *args])


def check_variants(spec: AblationSpec, root: str | Path, gpus: int = 0) -> None:
    """Parse one run of every variant with the ``toolkit fit`` parser; instantiates nothing, starts nothing.

    Imports torch and Lightning (through ``toolkit.lightning_cli``).

    Raises:
        ToolkitError: naming the variant and the bad key.
    """
    from toolkit.lightning_cli import check_args

    _check_each(spec, root, gpus, check_args)


def _check_each(spec: AblationSpec, root: str | Path, gpus: int, check_args: Any) -> None:
    seen = set()
    for run in spec.runs():
        if run.variant in seen:
            continue  # the seed does not change what parses
        seen.add(run.variant)
        try:
            check_args(fit_args(spec, run, root, gpus=gpus))
        except ToolkitError as err:
            raise ToolkitError(f"variant '{run.variant}' of {spec.path or spec.name}: {err}") from None
