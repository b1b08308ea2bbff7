"""The ablation ledger at 30, 300 and 1,000 runs: the cost of one edit, and of the status report of all runs.

For each size N, in a fresh folder: the runner's plan (one edit adding N pending records), then each run's life as
the runner writes it (``running`` with its pid, then ``done`` with its exit code and duration): 2N edits through one
:class:`~toolkit.study.ledger.Ledger`, as the runner's, each timed (fsync included; compactions fall where they
fall). Then, as ``toolkit ablate status`` does, a fresh reader loads the ledger and renders the table of all N runs.

    python benchmarks/ledger_scale.py [--sizes 30 300 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from toolkit.ablation.progress import build_table
from toolkit.study.ledger import DONE, PENDING, RUNNING, Ledger, ledger_path
from toolkit.study.spec import load_spec

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def one_size(folder: Path, runs: int) -> dict[str, float]:
    n_variants = 10 if runs >= 100 else 3
    seeds = list(range(-(-runs // n_variants)))
    names = [f"v{i}" for i in range(n_variants)]
    spec_path = folder / "scale.yaml"
    spec_data = {"name": "scale", "base": [str(DIGITS)], "seeds": seeds, "baseline": names[0]}
    variants = {name: {"model.drop_rate": i / 100} for i, name in enumerate(names)}  # distinct configs
    spec_path.write_text(json.dumps({**spec_data, "variants": variants}))
    spec = load_spec(spec_path)
    planned = spec.runs()[:runs]
    ledger = Ledger(ledger_path(folder / "runs", spec.name))
    with ledger.edit() as records:
        for run in planned:
            records[run.id] = {"id": run.id, "variant": run.variant, "seed": run.seed, "status": PENDING}
    edits = []
    for run in planned:
        start = time.perf_counter()
        ledger.update(run.id, status=RUNNING, pid=os.getpid(), started_at=time.time(), attempts=1)
        edits.append(time.perf_counter() - start)
        start = time.perf_counter()
        ledger.update(run.id, status=DONE, exit_code=0, finished_at=time.time(), duration_s=1.0)
        edits.append(time.perf_counter() - start)
    start = time.perf_counter()
    table = build_table(spec, Ledger(ledger.path).read(), folder / "runs", 1, 160)
    Console(file=io.StringIO(), width=160).print(table)
    status = time.perf_counter() - start
    return {"median": statistics.median(edits), "mean": statistics.fmean(edits), "status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[30, 300, 1000])
    args = parser.parse_args()
    print(f"load before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        for runs in args.sizes:
            folder = Path(tmp) / str(runs)
            folder.mkdir()
            got = one_size(folder, runs)
            print(
                f"runs {runs:5d}: per edit median {got['median'] * 1000:.2f} ms, mean {got['mean'] * 1000:.2f} ms "
                f"(compactions included); status table of all runs {got['status']:.2f} s"
            )
    print(f"load after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
