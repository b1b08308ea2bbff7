"""The spec's trip through ``toolkit ablate run <spec> --dry-run``: toolkit files, stops and returns.

The command runs in this process as ``toolkit.ablation.cli.main`` runs it, except that the variants are not
validated (that builds every model: torch's trip, not the spec's; the command line has no switch for it). It runs
once untraced first, so that importing modules is no part of the trip, then under a profile hook
(``sys.setprofile``) that sees every Python call and return. After each event the innermost frame running toolkit
source says where the spec is: a **stop** is each change of that file (the first file counts), a **return** is a stop
in a file already left before, and **files** are the distinct toolkit files visited. A base config ends in
``read_yaml`` (``study/fields.py``) and the loader (``safe_yaml.py``), so a base config read again per run or per
caller shows as extra stops and returns; the script also counts those reads (``read_yaml`` of a file other than
the spec).

The parser's files (``cli_options.py``, ``parse_errors.py``...) are on the trip too and cost the same whatever the
spec: compare figures of one spec.

    python benchmarks/spec_trip.py [ablations/quickstart.yaml] [--top 8]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def dry_run(spec_path: str, root: str, validate: bool = False) -> int:
    """``toolkit ablate run <spec> --dry-run --root <root>`` as ``toolkit.ablation.cli.main`` runs it, without
    validating the variants (that builds every model: torch's trip, not the spec's; the command line has no switch)."""
    from rich.console import Console

    from toolkit.ablation import cli
    from toolkit.ablation.options import runner_options
    from toolkit.ablation.runner import run_ablation
    from toolkit.cli_options import parse
    from toolkit.lightning_cli.parsed_checks import check_root_dir
    from toolkit.study import cli_changes
    from toolkit.study.spec import load_spec

    args = parse(cli.build_parser(), ["run", spec_path, "--dry-run", "--root", root], "ablate <run|status>").run
    check_root_dir(args.root, "--root")
    spec, changes = cli_changes.apply(load_spec(args.spec), args.seeds, args.set)
    options = runner_options(args)
    options.changes, options.validate = changes, validate
    return run_ablation(spec, options, Console(file=io.StringIO()))


class BaseReads:
    """Counts every ``open()`` of a base config file (the ``open`` audit event: whoever opens it, the toolkit's
    readers or jsonargparse's) while ``counting`` is set."""

    def __init__(self, spec_path: str) -> None:
        from toolkit.study.spec import load_spec

        self.files = {str(Path(p).resolve()) for p in load_spec(spec_path).base}
        self.counting = False
        self.count = 0
        sys.addaudithook(self._hook)  # an audit hook stays for the process; `counting` switches it

    def _hook(self, event: str, args: tuple[Any, ...]) -> None:
        opened = args[0] if self.counting and event == "open" else None
        if isinstance(opened, str | Path) and str(Path(opened).resolve()) in self.files:
            self.count += 1

    def during(self, call: Any, *args: Any) -> Any:
        """``call(*args)``, counting its reads (from zero)."""
        self.count, self.counting = 0, True
        try:
            return call(*args)
        finally:
            self.counting = False


def trace_dry_run(spec_path: str, root: str) -> tuple[list[str], int]:
    """Run `dry_run` (variants not validated) under a profile hook.

    Returns:
        the toolkit files in the order the innermost toolkit frame moved through them (consecutive repeats merged),
        and the exit status.
    """
    import toolkit.safe_yaml

    package = str(Path(toolkit.safe_yaml.__file__).parent) + os.sep  # the toolkit imported (PYTHONPATH's)
    visits: list[str] = []

    def innermost_toolkit(frame: FrameType | None) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(package):
                return name[len(package) :]
            frame = frame.f_back
        return None

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event not in ("call", "return"):
            return
        where = innermost_toolkit(frame if event == "call" else frame.f_back)
        if where is not None and (not visits or visits[-1] != where):
            visits.append(where)

    sys.setprofile(hook)
    try:
        code = dry_run(spec_path, root)
    finally:
        sys.setprofile(None)
    return visits, code


def walk_loops_once(visits: list[str], longest: int = 60) -> list[str]:
    """The trip with each loop walked once: a block of stops repeated right after itself (one more run, one more
    variant) is dropped, shortest blocks first, until no block of up to ``longest`` stops follows a copy of itself."""
    trip = list(visits)
    changed = True
    while changed:
        changed = False
        for size in range(1, longest + 1):
            i = 0
            while i + 2 * size <= len(trip):
                if trip[i : i + size] == trip[i + size : i + 2 * size]:
                    del trip[i + size : i + 2 * size]
                    changed = True
                else:
                    i += 1
    return trip


def summarise(visits: list[str]) -> dict[str, Any]:
    """Files, stops and returns of a trip (see the module docstring), and the files entered most often."""
    left: set[str] = set()
    returns = 0
    entries: collections.Counter[str] = collections.Counter()
    for i, where in enumerate(visits):
        entries[where] += 1
        if where in left:
            returns += 1
        if i > 0:
            left.add(visits[i - 1])
    return {"files": len(entries), "stops": len(visits), "returns": returns, "entries": entries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "ablations" / "quickstart.yaml"))
    parser.add_argument(
        "--validate", action="store_true", help="count the reads of a validated dry run too (builds every model: slow)"
    )
    parser.add_argument("--trip", action="store_true", help="print the trip, each loop once")
    parser.add_argument("--top", type=int, default=8, help="list the files entered most often")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    reads = BaseReads(args.spec)
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as root:
        from toolkit.study.spec import load_spec

        runs = len(load_spec(args.spec).runs())
        reads.during(dry_run, args.spec, warm)  # imports every module first: importing is no part of the trip
        base_reads = reads.count
        visits, code = trace_dry_run(args.spec, root)
    print(f"toolkit ablate run {args.spec} --dry-run, variants not validated ({runs} runs, exit {code})")
    for what, trip in (("every call", visits), ("each loop once", walk_loops_once(visits))):
        figures = summarise(trip)
        print(
            f"  {what}: {figures['stops']} stops in {figures['files']} files, "
            f"{figures['returns']} returns to a file already left"
        )
    busiest = ", ".join(f"{name} {n}x" for name, n in figures["entries"].most_common(args.top))
    print(f"  entered most often (each loop once): {busiest}")
    if args.trip:
        print("  trip: " + " > ".join(walk_loops_once(visits)))
    print(f"  base config reads (open): {base_reads}")
    if args.validate:
        with tempfile.TemporaryDirectory() as root:
            code = reads.during(dry_run, args.spec, root, True)
        print(f"  base config reads (open) with the variants validated (exit {code}): {reads.count}")


if __name__ == "__main__":
    main()
