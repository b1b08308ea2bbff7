"""``toolkit report SPEC [--root DIR] [--out DIR] [--seeds S] [--set K=V ...] [--wandb E/P] [--log-to-wandb]``: the CLI.

Imports neither torch nor Lightning (jsonargparse parses the arguments), so the report starts in about a second.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jsonargparse import ActionYesNo, ArgumentParser

from toolkit.cli_options import SPELLING, CompactHelp, parse


def build_parser() -> ArgumentParser:
    """The ``toolkit report`` argument parser."""
    parser = ArgumentParser(
        prog="toolkit report",
        usage="toolkit report SPEC [options]",
        description="The ablation table (mean ± std over seeds, Δ vs the baseline) and plots.",
        formatter_class=CompactHelp,
    )
    parser.epilog = f"""{SPELLING}

examples:
  toolkit report ablations/quickstart.yaml
  toolkit report ablations/quickstart.yaml --root runs --out my_report/
"""
    parser.add_argument("spec", type=str, help="ablation spec (ablations/<name>.yaml)")
    parser.add_argument("--root", type=str, default="runs", help="runs folder: logs read from <root>/<name>/ (runs)")
    parser.add_argument("--out", type=str | None, default=None, help="report folder (<root>/<name>/report/)")
    parser.add_argument("--seeds", type=str | None, default=None, help="as given to ablate run (default: the ledger's)")
    parser.add_argument(
        "--set",
        type=str,
        nargs="+",
        default=None,
        help="as given to ablate run (default: the ledger's)",
    )
    parser.add_argument(
        "--wandb", type=str | None, default=None, help="read the runs from a W&B project (entity/project)"
    )
    parser.add_argument(
        "--log-to-wandb",
        action=ActionYesNo(no_prefix="no-"),
        default=False,
        help="log the table and plots to W&B (an analysis run)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run ``toolkit report``; print the Markdown table, and to stderr the runs that do not count.

    Returns:
        0 once the report is written.

    Raises:
        ToolkitError: a bad spec, or no runs of the ablation.
    """
    args = parse(build_parser(), argv, "report")
    from toolkit.lightning_cli.parsed_checks import check_root_dir
    from toolkit.report.build import print_report, report_spec
    from toolkit.study.spec import load_spec  # imported here to keep --help instant

    check_root_dir(args.root, "--root")
    check_root_dir(args.out, "--out")
    spec = load_spec(Path(args.spec))
    from toolkit.study.cli_changes import apply, check_recorded, recorded_changes

    if args.seeds or args.set:
        asked, changes = apply(spec, args.seeds, args.set)
        check_recorded(spec, Path(args.root), changes)  # against the spec as written: its seeds are the default
        spec = asked
    else:  # the seeds and settings the study's runs were made with, as its ledger recorded them
        recorded = recorded_changes(spec, Path(args.root))
        if recorded:
            seeds = ",".join(map(str, recorded["seeds"])) if "seeds" in recorded else None
            sets = [f"{k}={json.dumps(v)}" for k, v in recorded.get("set", {}).items()] or None
            spec, _ = apply(spec, seeds, sets)
            shown = " ".join(filter(None, [f"--seeds {seeds}" if seeds else "", *(f"--set {s}" for s in sets or [])]))
            print(f"report: the runs were made with {shown} (from the ledger)", file=sys.stderr)
    out = Path(args.out) if args.out else None
    print_report(report_spec(spec, Path(args.root), out, wandb_path=args.wandb, log_to_wandb=args.log_to_wandb))
    return 0
