"""``toolkit search SPEC``: run or resume a staged hyperparameter search and write its table, plots and best config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import ArgumentParser
from rich.console import Console

from toolkit.parsed_checks import check_root_dir
from toolkit.search.spec import load_search

EXAMPLES = """examples:
  toolkit search searches/digits.yaml --workers 2
  toolkit search searches/digits.yaml --executor slurm --partition gpu
"""


def build_parser() -> ArgumentParser:
    """The ``toolkit search`` parser."""
    parser = ArgumentParser(prog="toolkit search", description="Staged hyperparameter search on Optuna (resumable).")
    parser.epilog = EXAMPLES
    parser.add_argument("spec", type=str, help="search spec, e.g. searches/digits.yaml")
    parser.add_argument("--root", type=str, default="runs", help="runs folder: <root>/<search>/")
    parser.add_argument("--executor", type=Literal["local", "slurm"], default="local", help="where trials run")
    parser.add_argument("--workers", type=int | None, default=None, help="trials at once (CPU default 1)")
    parser.add_argument("--devices", type=str | None, default=None, help="GPU ids like 0,1, or cpu (default: all)")
    parser.add_argument("--gpus-per-run", type=int | None, default=None, help="GPUs per trial")
    parser.add_argument("--cpus-per-run", type=int | None, default=None, help="CPU threads per trial")
    parser.add_argument("--partition", type=str | None, default=None, help="slurm: partition")
    parser.add_argument("--time-min", type=int, default=60, help="slurm: time limit per trial, minutes")
    return parser


def main(argv: list[str]) -> int:
    """Run ``toolkit search``; 0 when every stage finished."""
    from toolkit.ablation.cli import runner_options
    from toolkit.search.output import write_outputs
    from toolkit.search.run import run_search

    args = build_parser().parse_args(argv)
    check_root_dir(args.root, "--root")
    spec = load_search(args.spec)
    options = runner_options(args)  # the trials are ablation runs: the runner's own options
    console = Console()
    code, rows = run_search(spec, options, console)
    folder = (Path(args.root) / spec.name).absolute()
    written = write_outputs(spec, rows, folder)
    if "md" in written:
        console.print(written["md"].read_text(), markup=False, highlight=False, soft_wrap=True)
    if "best" in written:
        console.print(f"best config: {written['best']} (toolkit fit --config {written['best']})", soft_wrap=True)
    if code:
        console.print("search not finished; run the same command again to resume", soft_wrap=True)
    return code
