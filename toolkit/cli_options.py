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

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jsonargparse import ActionYesNo, ArgumentParser

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


SPELLING = "options take dashes or underscores alike: --dry-run or --dry_run, --gpus-per-run or --gpus_per_run"


def add_runner_options(parser: ArgumentParser, what: str = "runs") -> None:
    """The options of every command that starts runs (``ablate run``, ``search``): executor, slots, Slurm."""
    parser.add_argument("--root", type=str, default="runs", help="runs folder: <root>/<name>/...")
    parser.add_argument("--executor", type=Literal["local", "slurm"], default="local", help=f"where {what} execute")
    parser.add_argument(
        "--workers", type=int | None, default=None, help=f"{what} at once (CPU default 1; GPU: all slots)"
    )
    parser.add_argument("--devices", type=str | None, default=None, help="GPU ids like 0,1,2,3, or cpu (default: all)")
    parser.add_argument(
        "--gpus-per-run",
        type=int | None,
        default=None,
        help="GPUs per run, DDP above 1 (default: 1 local; slurm: trainer.devices on gpu, else 0)",
    )
    parser.add_argument(
        "--cpus-per-run", type=int | None, default=None, help="CPU threads per run (default: 1 on CPU; GPU: split)"
    )
    parser.add_argument(
        "--warm",
        action=ActionYesNo(no_prefix="no-"),
        default=True,
        help="local: fork each run from a parent that imported torch once (starts in <1 s); --no-warm: fresh processes",
    )
    parser.add_argument(
        "--dry-run",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="validate, print the commands, start nothing",
    )
    parser.add_argument(
        "--retry-failed", action=ActionYesNo(no_prefix="no-"), default=False, help="run failed runs again (resuming)"
    )
    slurm = "slurm (also in the spec's slurm: block; the command line wins): "
    parser.add_argument("--partition", type=str | None, default=None, help=slurm + "partition")
    parser.add_argument("--time-min", type=int | None, default=None, help=slurm + "time limit per run, minutes (60)")
    parser.add_argument("--array-parallelism", type=int | None, default=None, help=slurm + "array tasks at once")
    parser.add_argument("--account", type=str | None, default=None, help=slurm + "account to charge")
    parser.add_argument("--qos", type=str | None, default=None, help=slurm + "quality of service")
    parser.add_argument("--mem", type=str | None, default=None, help=slurm + "memory per node, e.g. 32G")
    parser.add_argument("--mem-per-gpu", type=str | None, default=None, help=slurm + "memory per GPU, e.g. 16G")
    parser.add_argument("--constraint", type=str | None, default=None, help=slurm + "node features, e.g. a100")
    parser.add_argument(
        "--setup",
        type=str,
        action="append",
        default=None,
        help=slurm + "a shell line run before each run (module load ...); repeat the option for more",
    )
    parser.add_argument(
        "--slurm-param",
        type=str,
        action="append",
        default=None,
        help=slurm + "any other sbatch option as key=value (exclude=node7); repeat the option for more",
    )
    parser.add_argument("--nodes", type=int | None, default=None, help=slurm + "nodes per run (multi-node DDP)")
    parser.add_argument(
        "--tasks-per-node", type=int | None, default=None, help=slurm + "DDP processes per node, one Slurm task each"
    )
    parser.add_argument(
        "--signal-delay-s",
        type=int | None,
        default=None,
        help=slurm + "seconds before the time limit a run saves a checkpoint and requeues (90)",
    )
    parser.add_argument(
        "--max-num-timeout", type=int | None, default=None, help=slurm + "requeues after a time limit per run (3)"
    )


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
    from toolkit.ablation.slurm_settings import parse_slurm_params

    slurm = {
        "partition": args.partition,
        "time_min": args.time_min,
        "account": args.account,
        "qos": args.qos,
        "mem": args.mem,
        "mem_per_gpu": args.mem_per_gpu,
        "constraint": args.constraint,
        "setup": tuple(args.setup) if args.setup else None,
        "additional": parse_slurm_params(args.slurm_param) or None,
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
        "signal_delay_s": args.signal_delay_s,
        "max_num_timeout": args.max_num_timeout,
    }
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
