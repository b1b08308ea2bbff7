"""The ``toolkit`` console script: dispatches to the ablation runner, the report, or LightningCLI.

``toolkit ablate`` and ``toolkit report`` read ledgers and logs only, so they must start fast: this module
imports neither torch nor Lightning at import time; each branch imports what it needs.
"""

from __future__ import annotations

import sys

from toolkit.errors import ToolkitError


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``toolkit`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "ablate":
            from toolkit.ablation.cli import main as ablate_main

            sys.exit(ablate_main(args[1:]))
        if args and args[0] == "report":
            from toolkit.report.cli import main as report_main

            sys.exit(report_main(args[1:]))
        if args and args[0] == "doctor":
            from toolkit.doctor.cli import main as doctor_main

            sys.exit(doctor_main(args[1:]))
        if args and args[0] == "search":
            from toolkit.search.cli import main as search_main

            sys.exit(search_main(args[1:]))
        from toolkit.lightning_cli import run_cli

        run_cli(argv)  # None: LightningCLI reads sys.argv itself
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
