"""The ``toolkit ablate`` command line: ``run`` an ablation spec, or show its ``status`` from the ledger.

Imports neither torch nor Lightning: ``status`` answers in about a second, and ``run`` validates the variants in a
child process (:mod:`toolkit.ablation.check_process`), so the runner stays small for the whole study.
"""

from __future__ import annotations

from argparse import SUPPRESS

from jsonargparse import ArgumentParser
from rich.console import Console

from toolkit.ablation.options import add_runner_options, runner_options
from toolkit.cli_options import SPELLING, CompactHelp, parse
from toolkit.lightning_cli.parsed_checks import check_root_dir
from toolkit.study import cli_changes, tuning
from toolkit.study.spec import load_spec

EXAMPLES = f"""{SPELLING}

examples:
  toolkit ablate run ablations/quickstart.yaml --workers 2
  toolkit ablate run ablations/quickstart.yaml --devices 0,1 --gpus-per-run 2
  toolkit ablate run ablations/quickstart.yaml --executor slurm \\
      --partition gpu --time-min 120 --account proj42 --mem-per-gpu 16G \\
      --setup "module load cuda/12.4"
  toolkit ablate status ablations/quickstart.yaml
"""


def build_parser(full: bool = True) -> ArgumentParser:
    """The ``toolkit ablate`` parser with its ``run`` and ``status`` subcommands (``full``: every option's help)."""
    parser = ArgumentParser(
        prog="toolkit ablate", description="Run ablation studies: variants x seeds.", formatter_class=CompactHelp
    )
    parser.epilog = EXAMPLES
    run = ArgumentParser(
        description="Run every variant x seed of SPEC (ablations/x.yaml) not done yet; resumable.",
        usage="toolkit ablate run SPEC [options]",
        formatter_class=CompactHelp,
    )
    run.add_argument("spec", type=str, help=SUPPRESS)  # said in the usage and description: one screen
    add_runner_options(run, full=full)
    _add_scaling(run)
    status = ArgumentParser(
        description="Print the ablation's runs from its ledger (imports no torch).",
        usage="toolkit ablate status SPEC [options]",
    )
    status.add_argument("spec", type=str, help="ablation spec")
    status.add_argument("--root", type=str, default="runs", help="runs folder")
    _add_scaling(status)
    subcommands = parser.add_subcommands(dest="command")
    subcommands.add_subcommand("run", run, help="run an ablation")
    run.formatter_class = CompactHelp  # after add_subcommand, which gives a subcommand its parent's formatter
    subcommands.add_subcommand("status", status, help="show an ablation's runs")
    status.formatter_class = CompactHelp
    return parser


def _add_scaling(parser: ArgumentParser) -> None:
    """``--seeds`` and ``--set``: scale a study without copying its spec (`toolkit.study.cli_changes`)."""
    parser.add_argument("--seeds", type=str | None, default=None, help="replace the spec's seeds: 0,1,2 or 0-9")
    parser.add_argument(
        "--set",
        type=str,
        nargs="+",
        default=None,
        help="add overrides key=value ... (trainer.max_epochs=5)",
    )


def main(argv: list[str]) -> int:
    """Run ``toolkit ablate <argv>``; returns the exit status (0: every run done)."""
    helping = "-h" in argv or "--help" in argv  # `run --help` on one screen, `run --help full` every option
    full = helping and "full" in argv
    argv = [a for a in argv if not (full and a == "full")]
    cfg = parse(build_parser(full=full or not helping), argv, "ablate <run|status>")
    command = cfg.command
    args = cfg[command]
    check_root_dir(args.root, "--root")
    spec, changes = cli_changes.apply(load_spec(args.spec), args.seeds, args.set)
    console = Console()
    if command == "status":
        from toolkit.ablation.progress import build_table, failure_lines
        from toolkit.study.ledger import Ledger, ledger_path

        if spec.tune:  # its tune stage first, then the study at the chosen values once they are recorded
            stage = tuning.tune_study(spec)
            console.print(build_table(stage, Ledger(ledger_path(args.root, stage.name)).read(), args.root))
            chosen = tuning.read_choices(args.root, spec)
            if chosen is None:
                console.print(f"{spec.name}: its seeds start once the tune stage has finished and values are chosen")
                return 0
            spec = tuning.tuned(spec, chosen)
        records = Ledger(ledger_path(args.root, spec.name)).read()
        console.print(build_table(spec, records, args.root, width=console.width))
        for line in failure_lines(spec, records):  # in full: the table's notes end in an ellipsis
            console.print(line, soft_wrap=True, markup=False, highlight=False)
        return 0
    options = runner_options(args)
    options.changes = changes
    if options.executor == "local" and options.executor_options.get("warm") is not False and not options.dry_run:
        from toolkit.ablation.local import prestart_warm_parent

        prestart_warm_parent()  # its imports run while the variants are validated
    from toolkit.ablation.runner import run_ablation

    return run_ablation(spec, options, console)
