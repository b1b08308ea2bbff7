"""The option layer every ``toolkit`` subcommand shares: one spelling rule, the runner's options, one error line.

- **Both spellings.** ``toolkit fit`` (LightningCLI) declares snake_case keys, the torch-free subcommands declare
  dashes; every option takes either (``--dry-run``/``--dry_run``, ``--trainer.max-epochs``/``--trainer.max_epochs``).
  :func:`dashed` and :func:`snake` rewrite an option's *name* to the declared style (values are never touched).
- **The runner's options** (:func:`add_runner_options`, :func:`runner_options`): every command that starts runs
  (``ablate run``, ``search``) takes the same ones, Slurm's included.
- **One error line** (:func:`parse`, through :mod:`toolkit.parse_errors`): jsonargparse's usage dump, tip and
  multi-line error become one ``ToolkitError`` line that points to the subcommand's ``--help``.

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import shutil
from argparse import SUPPRESS, Action, RawDescriptionHelpFormatter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jsonargparse import ActionYesNo, ArgumentParser, DefaultHelpFormatter
from typing_extensions import override

from toolkit.errors import ToolkitError
from toolkit.parse_errors import parse_quietly

if TYPE_CHECKING:
    from toolkit.ablation.runner import Options


def _rename(argv: list[str], old: str, new: str) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace(old, new) + sep + value
        out.append(arg)
    return out


def dashed(argv: list[str]) -> list[str]:
    """Option names with dashes (``--dry_run`` -> ``--dry-run``): the torch-free subcommands' style."""
    return _rename(argv, "_", "-")


def snake(argv: list[str]) -> list[str]:
    """Option names in snake_case (``--trainer.max-epochs`` -> ``--trainer.max_epochs``): LightningCLI's style."""
    return _rename(argv, "-", "_")


def parse(parser: ArgumentParser, argv: list[str], command: str) -> Any:
    """Parse ``argv`` (either spelling) with a dash-style parser; a bad option is one ToolkitError line (the toolkit's
    one rewriter, :mod:`toolkit.parse_errors`). ``--help`` still prints and exits 0."""
    parser.exit_on_error = False  # argparse's public switch: jsonargparse then raises its typed ArgumentError
    return parse_quietly(lambda: parser.parse_args(dashed(argv)), f" (see toolkit {command} --help)")


SPELLING = "every option takes dashes or underscores alike (--an-option or --an_option)"


class CompactHelp(DefaultHelpFormatter, RawDescriptionHelpFormatter):
    """``--help`` on one screen: each option's own text (which states its default), without the type and default
    that jsonargparse appends, the help column at 30 and 120 columns wide; the description and the epilog as written
    (argparse's ``RawDescriptionHelpFormatter``: examples stay one per line, copyable)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        super().__init__(prog, max_help_position=30, width=min(120, shutil.get_terminal_size().columns), **kwargs)

    @override
    def _get_help_string(self, action: Action) -> str:
        return action.help or ""

    @override
    def _format_args(self, action: Action, default_metavar: str) -> str:
        return super()._format_args(action, "VALUE")


#: the Slurm options a short ``--help`` leaves out (``--help full`` lists them)
RARE_SLURM = (
    "--mem-per-gpu",
    "--constraint",
    "--slurm-param",
    "--tasks-per-node",
    "--signal-delay-s",
    "--max-num-timeout",
)


def add_runner_options(parser: ArgumentParser, what: str = "runs", full: bool = True) -> None:
    """The options of every command that starts runs (``ablate run``, ``search``), grouped: general, local, Slurm.

    Args:
        parser: the command's parser.
        what: what the command's runs are called in the help (runs, trials).
        full: list every option in ``--help``; False leaves out the rare Slurm ones (they still parse).
    """
    general = parser.add_argument_group("general")
    general.add_argument("--root", type=str, default="runs", help="runs folder: <root>/<name>/...")
    general.add_argument("--executor", type=Literal["local", "slurm"], default="local", help=f"where {what} execute")
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
    local = parser.add_argument_group("local executor")
    local.add_argument(
        "--workers", type=int | None, default=None, help=f"{what} at once (CPU default 1; GPU: all slots)"
    )
    local.add_argument("--devices", type=str | None, default=None, help="GPU ids like 0,1,2,3, or cpu (default: all)")
    local.add_argument(
        "--warm",
        action=yes_no,
        default=True,
        help="fork runs from a parent with torch loaded (<1 s)",
    )
    slurm = parser.add_argument_group(
        "slurm executor", "also in the spec's slurm: block (same names); the command line wins"
    )

    def option(name: str, kind: Any, text: str, **more: Any) -> None:
        shown = text if full or name not in RARE_SLURM else SUPPRESS
        slurm.add_argument(name, type=kind, default=None, help=shown, **more)

    option("--partition", str | None, "partition")
    option("--time-min", int | None, "time limit per run, minutes (60)")
    option("--array-parallelism", int | None, "array tasks at once")
    option("--account", str | None, "account to charge")
    option("--qos", str | None, "quality of service")
    option("--mem", str | None, "memory per node, e.g. 32G")
    option("--mem-per-gpu", str | None, "memory per GPU, e.g. 16G")
    option("--constraint", str | None, "node features, e.g. a100")
    option("--setup", str, "a shell line before each run; repeatable", action="append")
    option("--slurm-param", str, "another sbatch option key=value; repeatable", action="append")
    option("--nodes", int | None, "nodes per run (DDP; default trainer.num_nodes)")
    option("--tasks-per-node", int | None, "DDP processes per node, one Slurm task each")
    option("--signal-delay-s", int | None, "save and requeue this long before the limit (90)")
    option("--max-num-timeout", int | None, "requeues after a time limit per run (3)")
    if not full:
        parser.epilog = (parser.epilog or "") + "\ntoolkit ablate run --help full: every Slurm option"


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


def runner_options(args: Any) -> Options:
    """The runner's :class:`Options` from a command line parsed with :func:`add_runner_options`."""
    from toolkit.ablation.runner import Options
    from toolkit.ablation.slurm_settings import parse_slurm_params, slurm_field_names

    # the Slurm options named like SlurmSettings' fields, read by those names (one list: the dataclass);
    # the options with their own names (--gpus-per-run, --cpus-per-run, --array-parallelism) go through Options
    slurm = {name: getattr(args, name) for name in slurm_field_names() if name in args}
    slurm["setup"] = tuple(args.setup) if args.setup else None
    slurm["additional"] = parse_slurm_params(args.slurm_param) or None
    return Options(
        root=Path(args.root),
        executor=args.executor,
        workers=args.workers,
        devices=parse_devices(args.devices),
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
        warm=args.warm,
        array_parallelism=args.array_parallelism,
        slurm=slurm,
    )
