"""``toolkit report SPEC [--root DIR] [--out DIR] [--wandb ENTITY/PROJECT] [--log_to_wandb]``: the command line.

Imports neither torch nor Lightning (jsonargparse parses the arguments), so the report starts in about a second.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionYesNo, ArgumentParser


def build_parser() -> ArgumentParser:
    """The ``toolkit report`` argument parser."""
    parser = ArgumentParser(
        prog="toolkit report",
        description="Ablation table (mean ± std over seeds, Δ vs the baseline) and plots from the runs' W&B logs.",
    )
    parser.add_argument("spec", type=str, help="ablation spec (ablations/<name>.yaml)")
    parser.add_argument("--root", type=str, default="runs", help="runs root: logs are read from <root>/<name>/")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (default reports/<name>/)")
    parser.add_argument(
        "--wandb", type=str | None, default=None, help="read the runs from this W&B project (entity/project)"
    )
    parser.add_argument(
        "--log_to_wandb", action=ActionYesNo, default=False, help="log the table to W&B as an analysis run"
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``toolkit report``; print the Markdown table, and to stderr the runs that do not count.

    Returns:
        0 once the report is written.

    Raises:
        ToolkitError: a bad spec, or no runs of the ablation.
    """
    args = build_parser().parse_args(argv)
    from toolkit.report.build import print_report, report_spec
    from toolkit.study.spec import load_spec  # imported here to keep --help instant

    spec = load_spec(Path(args.spec))
    out = Path(args.out) if args.out else None
    print_report(report_spec(spec, Path(args.root), out, wandb_path=args.wandb, log_to_wandb=args.log_to_wandb))
    return 0
