"""The ``toolkit ablate`` command line: ``run`` an ablation spec, or show its ``status`` from the ledger.

Imports neither torch nor Lightning: ``status`` answers in about a second, and ``run`` imports them only to
validate the variants.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jsonargparse import ActionYesNo, ArgumentParser
from rich.console import Console

from toolkit.errors import ToolkitError
from toolkit.parse_errors import parse_quietly
from toolkit.study.spec import load_spec

if TYPE_CHECKING:
    from toolkit.ablation.runner import Options

EXAMPLES = """options take dashes or underscores alike: --dry-run or --dry_run, --gpus-per-run or --gpus_per_run

examples:
  toolkit ablate run ablations/quickstart.yaml --workers 2
  toolkit ablate run ablations/quickstart.yaml --devices 0,1,2,3 --gpus-per-run 2
  toolkit ablate run ablations/quickstart.yaml --executor slurm --partition gpu --time-min 120
  toolkit ablate status ablations/quickstart.yaml
"""


def build_parser() -> ArgumentParser:
    """The ``toolkit ablate`` parser with its ``run`` and ``status`` subcommands."""
    parser = ArgumentParser(prog="toolkit ablate", description="Run ablation studies: variants x seeds.")
    parser.epilog = EXAMPLES
    run = ArgumentParser(description="Run every variant x seed of a spec that is not done yet (resumable).")
    run.add_argument("spec", type=str, help="ablation spec, e.g. ablations/quickstart.yaml")
    run.add_argument("--root", type=str, default="runs", help="runs folder: <root>/<name>/<variant>/seed<N>/")
    run.add_argument("--executor", type=Literal["local", "slurm"], default="local", help="where runs execute")
    run.add_argument("--workers", type=int | None, default=None, help="runs at once (CPU default 1; GPU: all slots)")
    run.add_argument("--devices", type=str | None, default=None, help="GPU ids like 0,1,2,3, or cpu (default: all)")
    run.add_argument(
        "--gpus-per-run", type=int | None, default=None, help="GPUs per run, DDP above 1 (default: 1 local, 0 slurm)"
    )
    run.add_argument(
        "--cpus-per-run", type=int | None, default=None, help="CPU threads per run (default: 1 on CPU; GPU: split)"
    )
    run.add_argument(
        "--warm",
        action=ActionYesNo(no_prefix="no-"),
        default=True,
        help="local: fork each run from a parent that imported torch once (starts in <1 s); --no-warm: fresh processes",
    )
    run.add_argument(
        "--dry-run",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="validate, print the commands, start nothing",
    )
    run.add_argument(
        "--retry-failed", action=ActionYesNo(no_prefix="no-"), default=False, help="run failed runs again (resuming)"
    )
    run.add_argument("--partition", type=str | None, default=None, help="slurm: partition (default: the cluster's)")
    run.add_argument("--time-min", type=int, default=60, help="slurm: time limit per task, minutes")
    run.add_argument("--array-parallelism", type=int | None, default=None, help="slurm: array tasks running at once")
    status = ArgumentParser(description="Print the ablation's runs from its ledger (imports no torch).")
    status.add_argument("spec", type=str, help="ablation spec")
    status.add_argument("--root", type=str, default="runs", help="runs folder")
    subcommands = parser.add_subcommands(dest="command")
    subcommands.add_subcommand("run", run, help="run an ablation")
    subcommands.add_subcommand("status", status, help="show an ablation's runs")
    return parser


def parse_devices(text: str | None) -> list[str] | None:
    """``None`` -> every visible GPU; ``cpu``/``none`` -> no GPU; ``0,1`` -> those GPU ids."""
    if text is None:
        return None
    if text.strip().lower() in ("cpu", "none", ""):
        return []
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not all(d.isdigit() for d in devices):
        raise ToolkitError(f"--devices {text!r}: give GPU ids like 0,1,2,3, or cpu")
    return devices


def normalize_options(argv: list[str]) -> list[str]:
    """Accept LightningCLI's snake_case too: ``--dry_run`` -> ``--dry-run`` (the spelling the parser declares).

    ``toolkit fit`` options are snake_case (LightningCLI) while these were declared with dashes; both spellings
    work, so a user need not remember which command uses which. Values (after ``=`` or as the next word) are kept.
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + sep + value
        out.append(arg)
    return out


def _parse(parser: ArgumentParser, argv: list[str]) -> Any:
    """Parse; jsonargparse's usage dump and multi-line error become one ToolkitError line (``--help`` still prints)."""
    return parse_quietly(lambda: parser.parse_args(argv), _HELP)


_HELP = " (see toolkit ablate <run|status> --help)"


#: options of `ablate run` that other commands running ablation runs (search) may lack: they keep their defaults
_OPTIONAL_RUN_OPTIONS = ("dry_run", "retry_failed", "array_parallelism", "warm")


def runner_options(args: Any) -> Options:
    """The runner's :class:`Options` from a parsed ``ablate run``-style command line (also ``toolkit search``)."""
    from toolkit.ablation.runner import Options

    given = vars(args)
    return Options(
        root=Path(args.root),
        executor=args.executor,
        workers=args.workers,
        devices=parse_devices(args.devices),
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        partition=args.partition,
        time_min=args.time_min,
        **{key: given[key] for key in _OPTIONAL_RUN_OPTIONS if key in given},
    )


def main(argv: list[str]) -> int:
    """Run ``toolkit ablate <argv>``; returns the exit status (0: every run done)."""
    cfg = _parse(build_parser(), normalize_options(argv))
    command = cfg.command
    args = cfg[command]
    spec = load_spec(args.spec)
    console = Console()
    if command == "status":
        from toolkit.ablation.progress import build_table
        from toolkit.study.ledger import Ledger, ledger_path

        ledger = Ledger(ledger_path(args.root, spec.name))
        console.print(build_table(spec, ledger.read(), args.root, width=console.width))
        return 0
    if args.executor == "local" and args.warm and not args.dry_run:
        from toolkit.ablation.local import prestart_warm_parent

        prestart_warm_parent()  # its imports run while this process validates the variants
    from toolkit.ablation.runner import run_ablation

    options = runner_options(args)
    return run_ablation(spec, options, console)
