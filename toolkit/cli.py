"""The ``toolkit`` console script: dispatches to the ablation runner, the report, the weights list, or LightningCLI.

``toolkit ablate``, ``toolkit report`` and ``toolkit weights`` read ledgers, logs or a registry only, so they must
start fast: this module imports neither torch nor Lightning at import time; each branch imports what it needs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from toolkit import DISTRIBUTION
from toolkit.atomic import NO_RIGHTS, NO_SPACE
from toolkit.crash_log import write_crash_log
from toolkit.errors import ToolkitError

#: every subcommand, in the order ``toolkit --help`` lists them
SUBCOMMANDS = {
    "fit": "train a model: a timm backbone and a linear head (LightningCLI)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (also checkpoint ensembles)",
    "predict": "write predictions.csv for a checkpoint",
    "ablate": "run an ablation spec (variants x seeds), or show its status",
    "report": "build an ablation's table and plots from its W&B logs",
    "doctor": "check a config before tuning: initial loss, overfit, lr range",
    "search": "hyperparameter search (Optuna, coarse -> fine) of ablation runs",
    "weights": "list the backbones with offline pretrained weights",
}

USAGE = "usage: toolkit <subcommand> ...\n\nTransfer learning and honest ablations with timm backbones.\n"


def print_help() -> None:
    """The top-level help: every subcommand with one line (``toolkit <subcommand> --help`` has the details)."""
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [USAGE, "subcommands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "toolkit <subcommand> --help: its options; toolkit --version: the version."]
    lines += ["-q/--quiet: errors and results only; -v/--verbose: everything (any subcommand)"]
    print("\n".join(lines))


#: the subcommands that are not LightningCLI's, and the module whose ``main(argv) -> int`` runs each
_COMMANDS = {
    "ablate": "toolkit.ablation.cli",
    "report": "toolkit.report.cli",
    "weights": "toolkit.weights.cli",
    "doctor": "toolkit.doctor.cli",
    "search": "toolkit.search.cli",
    # internal: the runner's pre-launch check, forked from its warm parent (toolkit.ablation.check_process)
    "_check": "toolkit.ablation.check_process",
}


#: the optional packages, by the pip extra that installs them (pyproject.toml's optional-dependencies)
EXTRAS = {
    "report": ("statsmodels", "matplotlib", "tabulate", "jinja2"),
    "search": ("optuna",),
    "slurm": ("submitit",),
}
#: the extras a command needs before it starts (a study must not train for an hour, then fail at its table)
_NEEDS = {("report",): ("report",), ("ablate", "run"): ("report",), ("search",): ("search", "report")}


def extra_of(module: str | None) -> str | None:
    """The pip extra that installs ``module`` (a top-level package name), or None for a core dependency."""
    top = (module or "").split(".")[0]
    return next((extra for extra, packages in EXTRAS.items() if top in packages), None)


def missing_extra_message(command: str, module: str, extra: str) -> str:
    """The one line for a command whose optional dependency is not installed."""
    return f"toolkit {command} needs {module}, from the '{extra}' extra: pip install '{DISTRIBUTION}[{extra}]'"


def needed_extras(args: list[str]) -> tuple[str, list[str]]:
    """The command's name and the extras it needs before it starts (an executor's own, such as Slurm's submitit,
    is checked when the executor is built)."""
    for prefix, extras in _NEEDS.items():
        if tuple(args[: len(prefix)]) == prefix:
            return " ".join(prefix), list(extras)
    return (args[0] if args else ""), []


def check_extras(args: list[str]) -> None:
    """Refuse, with the pip line, a command whose extras are not installed (``find_spec`` imports nothing)."""
    if "-h" in args or "--help" in args:
        return
    command, extras = needed_extras(args)
    for extra in extras:
        for module in EXTRAS[extra]:
            if importlib.util.find_spec(module) is None:
                raise ToolkitError(missing_extra_message(command, module, extra))


_LIGHTNING = ("fit", "validate", "test", "predict")


def _dispatch(args: list[str], argv: list[str] | None) -> None:
    from toolkit import quiet

    plain, level = quiet.take_verbosity(args)  # -q/-v: every subcommand, filtered in one place
    if plain != args:
        args = argv = plain
    quiet.set_verbosity(level)
    if not args or args[0] in ("-h", "--help"):
        print_help()
        sys.exit(0 if args else 2)
    if args[0] in ("-V", "--version"):
        from toolkit import __version__

        print(f"toolkit {__version__} ({DISTRIBUTION})")
        sys.exit(0)
    check_extras(args)
    if args[0] in _COMMANDS:
        module = importlib.import_module(_COMMANDS[args[0]])  # lazily: `report` must not import torch
        code = module.main(args[1:])
        if argv is None and args[0] == "ablate":  # the command itself, not a caller in Python (tests, a warm child)
            _exit_now(code)
        sys.exit(code)
    from toolkit.lightning_cli import short_help

    if args[0] in _LIGHTNING and short_help.wants_short_help(args):
        print(short_help.render(args[0]))  # written by hand: it imports neither torch nor Lightning
        sys.exit(0)
    shows_only = any(a in ("-h", "--help") or a.startswith(("--print_config", "--print-config")) for a in args)
    if args[0] in _LIGHTNING and not shows_only:  # help and --print_config print only what they are asked for
        from toolkit.threads import apply_threads, choose_threads

        threads = choose_threads()  # before torch loads; every run's entry point, hand-run or the runner's
        apply_threads(threads)
        if level > quiet.QUIET:
            print(threads.line(), flush=True)
    from toolkit.cli_options import snake
    from toolkit.lightning_cli import run_cli, short_help

    if args[0] in _LIGHTNING and "full" in args:
        args = argv = short_help.full_help_args(args)
    # LightningCLI declares snake_case keys; --trainer.max-epochs works as well as --trainer.max_epochs
    spelled = snake(args)
    run_cli(None if argv is None and spelled == args else spelled)  # None: LightningCLI reads sys.argv itself


def _exit_now(code: int) -> None:
    """Exit a finished ``toolkit ablate`` without the interpreter's teardown of pandas, scipy and matplotlib (~0.4 s
    of a small study, only freeing memory): the exit handlers run and the streams are flushed first; every file the
    runner writes (ledger, report) is already closed."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


#: write failures the user fixes (a full disk or quota, a file-size limit, a read-only or forbidden folder)
_CANNOT_WRITE = NO_SPACE | NO_RIGHTS


def one_line(err: ToolkitError) -> str:
    """The error's own line. A ToolkitError raised in a DataLoader worker comes back re-raised by torch as
    ``Caught ToolkitError in DataLoader worker process 0.`` + the worker's traceback: its last line is the message."""
    text = str(err)
    if text.startswith("Caught ToolkitError"):
        last = text.strip().splitlines()[-1]
        return last.split("ToolkitError: ", 1)[-1]
    return text


def _unexpected(err: BaseException) -> str:
    """Write the traceback of an unexpected error to a private file; return the one line that points to it."""
    path = write_crash_log(err)
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"error: unexpected {type(err).__name__}: {first} (full traceback: {path})"


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``toolkit`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _dispatch(args, argv)
    except ToolkitError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit):
        raise
    except OSError as err:
        if os.environ.get("TOOLKIT_TRACEBACK"):
            raise
        if err.errno in _CANNOT_WRITE:
            fix = (
                "pick a folder you can write to"
                if err.errno in NO_RIGHTS
                else "free space there or pick another folder"
            )
            print(f"error: cannot write {err.filename or 'an output file'}: {err.strerror}; {fix}", file=sys.stderr)
            sys.exit(2)
        print(_unexpected(err), file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # never a bare traceback: one line and where the whole story is
        if os.environ.get("TOOLKIT_TRACEBACK"):
            raise
        extra = extra_of(err.name) if isinstance(err, ModuleNotFoundError) else None
        if extra is not None:  # an optional package reached on a path check_extras does not cover (Slurm)
            print(f"error: {missing_extra_message(args[0], str(err.name), extra)}", file=sys.stderr)
            sys.exit(2)
        print(_unexpected(err), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
