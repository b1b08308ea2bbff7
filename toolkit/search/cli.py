"""``toolkit search SPEC``: run or resume a staged hyperparameter search and write its table, plots and best config."""

from __future__ import annotations

import dataclasses
from argparse import SUPPRESS
from pathlib import Path
from typing import TYPE_CHECKING

from jsonargparse import ArgumentParser
from rich.console import Console

from toolkit.ablation.options import add_runner_options, runner_options
from toolkit.cli_options import SPELLING, CompactHelp, parse
from toolkit.lightning_cli.parsed_checks import check_root_dir
from toolkit.search.spec import load_search

if TYPE_CHECKING:
    from toolkit.ablation.options import Options
    from toolkit.search.run import StageRunner
    from toolkit.study.spec import AblationSpec

EXAMPLES = f"""{SPELLING}
toolkit search --help full: every Slurm option

examples:
  toolkit search searches/digits.yaml --workers 2
  toolkit search searches/digits.yaml --executor slurm --partition gpu
"""


def build_parser(full: bool = True) -> ArgumentParser:
    """The ``toolkit search`` parser: the spec and the runner's own options (the trials are ablation runs); ``full``:
    every option in ``--help`` (else the rare Slurm ones are left out of it; they still parse)."""
    parser = ArgumentParser(
        prog="toolkit search",
        usage="toolkit search SPEC [options]",
        description="Staged hyperparameter search on Optuna (resumable); SPEC: searches/x.yaml",
        formatter_class=CompactHelp,
    )
    parser.add_argument("spec", type=str, help=SUPPRESS)  # said in the usage and description: one screen
    add_runner_options(parser, what="trials", full=full)
    parser.epilog = EXAMPLES
    return parser


def stage_runner(options: Options) -> StageRunner:
    """The ablation runner, bound to ``options``, as the search's :class:`~toolkit.search.run.StageRunner`.

    Wired here, in the cli layer, so that ``toolkit.search`` and ``toolkit.ablation`` (peers) never import each other.
    """
    from toolkit.ablation.command import check_variants
    from toolkit.ablation.runner import run_ablation
    from toolkit.search.run import StageRunner

    gpus = 1 if options.gpus_per_run else 0

    def run(ablation: AblationSpec, folder: Path, console: Console) -> int:
        # every stage is validated before the first trial runs, and the search writes its own table
        stage = dataclasses.replace(options, root=folder, validate=False, report=False, dry_run=False)
        return run_ablation(ablation, stage, console)

    return StageRunner(check=lambda ablation, folder: check_variants(ablation, folder, gpus), run=run)


def main(argv: list[str]) -> int:
    """Run ``toolkit search``; 0 when every stage finished."""
    helping = "-h" in argv or "--help" in argv  # --help on one screen, --help full every option
    full = helping and "full" in argv
    argv = [a for a in argv if not (full and a == "full")]
    args = parse(build_parser(full=full or not helping), argv, "search")  # before Optuna: --help works without it
    from toolkit.search.output import write_outputs
    from toolkit.search.run import run_search, validate

    check_root_dir(args.root, "--root")
    spec = load_search(args.spec)
    options = runner_options(args)  # the trials are ablation runs: the runner's own options
    console = Console()
    if options.dry_run:  # every stage parses at both ends of every range; nothing is created or started
        validate(spec, (Path(args.root) / spec.name).absolute(), stage_runner(options).check)
        stages = ", ".join(f"{s.name} ({s.trials or s.top} trials)" for s in spec.stages)
        console.print(f"{spec.name}: {spec.sampler} search over {', '.join(spec.ranges)}; stages {stages}")
        return 0
    code, rows = run_search(spec, Path(args.root), stage_runner(options), console)
    folder = (Path(args.root) / spec.name).absolute()
    written = write_outputs(spec, rows, folder)
    if "md" in written:
        console.print(written["md"].read_text(), markup=False, highlight=False, soft_wrap=True)
    if "best" in written:
        console.print(f"best config: {written['best']} (toolkit fit --config {written['best']})", soft_wrap=True)
    if code:
        console.print("search not finished; run the same command again to resume", soft_wrap=True)
    return code
