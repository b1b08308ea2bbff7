"""The executor interface: what the lifecycle and the runner know of where runs execute, and the registry of kinds.

An :class:`Executor` starts the runs it is given and records each attempt through the lifecycle
(``lifecycle.begin``/``finish``). Everything else about where runs execute is the implementation's business, asked
per recorded attempt by the kind that made it (the ledger records ``executor: <name>``): whether an attempt is
still alive somewhere (:meth:`Executor.alive`: a queued Slurm job), what to clean up of one whose runner died
(:meth:`Executor.clean_up`: leftover processes on this host), and whether a new runner of the same kind follows a
live attempt (``follows``: Slurm waits for its jobs) instead of refusing to start it twice.

Each kind declares its options once, as a dataclass (``settings``): the runner's command line
(``ablation/options.py``) generates one option per field (dashed, its ``help`` from the field's metadata), and a
kind with ``spec_key`` reads the same fields from that block of the spec. ``local`` (``local.LocalRuns``) and
``slurm`` (``slurm.SlurmRuns``) are registered here by path (imported when used); :func:`register` adds another
(``tests/test_executor_recipe.py`` adds an in-process one).
"""

from __future__ import annotations

import os
import signal
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

from toolkit.ablation.command import DEFAULT_LAUNCHER, resume_args, shell_command
from toolkit.errors import ToolkitError
from toolkit.study.ledger import RUNNING, Ledger
from toolkit.study.spec import AblationSpec, Run


@dataclass
class Options:
    """How to run an ablation (the options of ``toolkit ablate run``).

    ``executor_options`` holds the chosen kind's options given on the command line, by the field names of its
    ``settings`` dataclass (``{"workers": 2}``, ``{"partition": "gpu"}``); the kind's defaults (and, on Slurm, the
    spec's ``slurm:`` block) fill in the rest.
    """

    root: Path = Path("runs")
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)
    #: GPUs per run; None: 1 on a local machine with GPUs; on Slurm the spec's slurm: gpus_per_node, else the runs'
    #: trainer.accelerator/devices, else 0 (CPU tasks)
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    dry_run: bool = False
    retry_failed: bool = False
    #: the program each run starts; tests inject a stand-in, users never change it
    launcher: list[str] = field(default_factory=lambda: list(DEFAULT_LAUNCHER))
    validate: bool = True
    report: bool = True
    #: ``--seeds``/``--set`` of the command line (`toolkit.study.cli_changes`), recorded in each run's ledger entry
    changes: dict[str, Any] = field(default_factory=dict)


class Executor(ABC):
    """Where an ablation's runs execute.

    Class attributes (the kind):
        name: the ``--executor`` value, recorded in each attempt's ledger entry.
        settings: the dataclass of the kind's options (fields with ``metadata={"help": ...}``; ``"cli": False``
            leaves a field off the command line, ``"rare": True`` off the short ``--help``).
        spec_key: the spec block that holds the same settings (``slurm:``), or None.
        follows: whether :meth:`start` follows the live attempts of its kind (else the runner refuses them).

    Attributes:
        gpus: GPUs each run gets (the variants are parsed and built for it).
        parallel: how many runs execute at once (rows of the live table).
        interrupted: what Ctrl-C leaves behind, for the runner's message.
    """

    name: ClassVar[str]
    settings: ClassVar[type]
    spec_key: ClassVar[str | None] = None
    follows: ClassVar[bool] = False
    gpus: int = 0
    parallel: int = 1
    interrupted: str = "the running runs were stopped; "

    @classmethod
    @abstractmethod
    def build(cls, options: Options, spec: AblationSpec | None) -> Executor:
        """The executor for ``options`` (``options.executor_options``: the command line's values of ``settings``'
        fields, None where not given); a bad value is one ``ToolkitError`` line."""

    @abstractmethod
    def start(
        self, spec: AblationSpec, todo: list[Run], following: list[Run], root: Path, ledger: Ledger, view: Any
    ) -> None:
        """Run ``todo`` (and follow ``following``, the live attempts of this kind when ``follows``) until each is
        recorded done, failed or pending again."""

    def dry_run(self, spec: AblationSpec, todo: list[Run], root: Path) -> list[str]:
        """What ``--dry-run`` prints for ``todo``: each run's ``toolkit fit`` command (an executor adds its job)."""
        launcher = getattr(self, "launcher", DEFAULT_LAUNCHER)
        return [shell_command(launcher, resume_args(spec, run, root, gpus=self.gpus)) for run in todo]

    @classmethod
    def alive(cls, records: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """Ids of the unfinished attempts of this kind still alive where no runner can restart them (default:
        none: an attempt lives only as long as the runner that started it)."""
        return set()

    @classmethod
    def clean_up(cls, record: Mapping[str, Any], run_dir: Path) -> None:
        """Stop what a runner that died left of this attempt on this machine (default: its process group, when the
        record names one on this host)."""
        if record.get("status") == RUNNING and record.get("pgid") and record.get("host") == socket.gethostname():
            kill_leftovers(record["pgid"], run_dir)


#: the kinds: name -> the class, or "module:Class" until first used (the built-ins import only when chosen)
_KINDS: dict[str, type[Executor] | str] = {
    "local": "toolkit.ablation.local:LocalRuns",
    "slurm": "toolkit.ablation.slurm:SlurmRuns",
}


def register(cls: type[Executor]) -> type[Executor]:
    """Add an executor kind (usable as a class decorator); its ``name`` becomes an ``--executor`` value."""
    _KINDS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a kind added by :func:`register` (the built-ins stay)."""
    if name not in ("local", "slurm"):
        _KINDS.pop(name, None)


def executor_names() -> list[str]:
    """The registered kinds, ``local`` first."""
    return list(_KINDS)


def executor_class(name: str) -> type[Executor]:
    """The executor kind called ``name``; an unknown one is one line naming the kinds."""
    kind = _KINDS.get(name)
    if kind is None:
        raise ToolkitError(f"--executor {name!r}: use one of {', '.join(_KINDS)}")
    if isinstance(kind, str):
        module, _, attr = kind.partition(":")
        kind = _KINDS[name] = getattr(import_module(module), attr)
    return kind


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
