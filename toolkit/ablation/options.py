"""The runner's options: how to run a study (:class:`Options`) and the command line of every command that starts
runs (``toolkit ablate run``, ``toolkit search``), generated from the executor kinds' own option dataclasses
(``Options`` itself is defined with the executor interface, whose ``build`` takes it).

Each executor kind declares its options once, as the dataclass ``Executor.settings`` (``local.LocalOptions``,
``slurm_settings.SlurmSettings``); :func:`add_runner_options` makes one dashed option per field (its help from the
field's metadata) in a group per kind, and :func:`runner_options` reads the chosen kind's values back by field name
into ``Options.executor_options``. Imports neither torch nor Lightning.
"""

from __future__ import annotations

import dataclasses
import typing
from argparse import SUPPRESS
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonargparse import ActionYesNo, ArgumentParser

from toolkit.ablation.executor import Options, executor_class, executor_names

__all__ = ["Options", "add_runner_options", "cli_fields", "runner_options"]


def _option(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("option", "--" + f.name.replace("_", "-"))


def cli_fields(settings: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    """The fields of an options dataclass that are command-line options, with their resolved types."""
    hints = typing.get_type_hints(settings)
    return [(f, hints[f.name]) for f in dataclasses.fields(settings) if f.metadata.get("cli", True)]


def add_runner_options(parser: ArgumentParser, what: str = "runs", full: bool = True) -> None:
    """The options of every command that starts runs: general, then one group per executor kind.

    Args:
        parser: the command's parser.
        what: what the command's runs are called in the help (runs, trials).
        full: list every option in ``--help``; False leaves out the rare ones (they still parse).
    """
    kinds = executor_names()
    general = parser.add_argument_group("general")
    general.add_argument("--root", type=str, default="runs", help="runs folder: <root>/<name>/...")
    general.add_argument("--executor", type=typing.Literal[tuple(kinds)], default="local", help=f"where {what} execute")
    general.add_argument(
        "--gpus-per-run",
        type=int | None,
        default=None,
        help="GPUs a run, >1: DDP (1; Slurm: trainer.devices)",
    )
    general.add_argument(
        "--cpus-per-run", type=int | None, default=None, help="CPU threads per run (CPU: 1; GPU: split)"
    )
    yes_no = ActionYesNo(no_prefix="no-")
    general.add_argument("--dry-run", action=yes_no, default=False, help="validate, print what would start, start none")
    general.add_argument("--retry-failed", action=yes_no, default=False, help="run failed runs again (resuming)")
    rare = False
    for name in kinds:
        kind = executor_class(name)
        where = f"also in the spec's {kind.spec_key}: block (same names); the command line wins"
        group = parser.add_argument_group(f"{name} executor", where if kind.spec_key else None)
        for f, hint in cli_fields(kind.settings):
            text = f.metadata.get("help", f.name).replace("{what}", what)
            shown = text if full or not f.metadata.get("rare") else SUPPRESS
            rare = rare or bool(f.metadata.get("rare"))
            group.add_argument(_option(f), **_argument(f, hint), default=None, help=shown)
    if rare and not full:
        parser.epilog = (parser.epilog or "") + f"\n{parser.prog} --help full: every executor option"


def _argument(f: dataclasses.Field[Any], hint: Any) -> dict[str, Any]:
    """How jsonargparse reads a field: a flag for a bool, repeatable for a tuple or a ``key=value`` mapping."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return {"action": ActionYesNo(no_prefix="no-")}
    if origin is tuple or origin is Mapping or hint is Mapping or origin is dict:
        return {"type": str, "action": "append"}
    return {"type": hint if type(None) in typing.get_args(hint) else hint | None}


def runner_options(args: Any) -> Options:
    """The runner's :class:`Options` from a command line parsed with :func:`add_runner_options`."""
    kind = executor_class(args.executor)
    given: dict[str, Any] = {}
    for f, _ in cli_fields(kind.settings):
        value = getattr(args, _option(f)[2:].replace("-", "_"), None)
        read = f.metadata.get("read")
        given[f.name] = read(value) if read and value is not None else value
    return Options(
        root=Path(args.root),
        executor=args.executor,
        executor_options=given,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
    )
