"""The README main job (`toolkit ablate run ablations/quickstart.yaml --workers 2`): warm workers vs fresh processes.

Runs the whole command as a subprocess, alternating ``--warm`` and ``--no-warm`` (each in a new runs folder, so
every run trains from scratch), and prints ``name: value`` lines: the wall time of each, their ratio, and whether
every (variant, seed) ended with the same test metrics both ways (it must: a forked run is the same computation).

    python benchmarks/ablate_quickstart.py [--rounds 1] [--spec ablations/quickstart.yaml] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_study(spec: str, root: Path, workers: int, warm: bool) -> float:
    command = [sys.executable, "-m", "toolkit", "ablate", "run", spec, "--root", str(root), "--workers", str(workers)]
    command.append("--warm" if warm else "--no-warm")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def metrics(root: Path) -> dict[str, dict[str, float]]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["metrics"] for p in root.rglob("result.json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="ablations/quickstart.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            roots = {}
            for warm in (False, True) if round_ % 2 == 0 else (True, False):
                roots[warm] = Path(tmp) / f"{'warm' if warm else 'fresh'}{round_}"
                times[warm].append(run_study(args.spec, roots[warm], args.workers, warm))
            same = same and metrics(roots[True]) == metrics(roots[False]) and bool(metrics(roots[True]))
    fresh, warm = statistics.median(times[False]), statistics.median(times[True])
    print(f"study: {args.spec}, --workers {args.workers}, {args.rounds} round(s), cpus {os.cpu_count()}")
    print(f"fresh_processes_s: {fresh:.1f}  (all: {', '.join(f'{t:.1f}' for t in times[False])})")
    print(f"warm_workers_s: {warm:.1f}  (all: {', '.join(f'{t:.1f}' for t in times[True])})")
    print(f"speedup_warm_vs_fresh: {fresh / warm:.2f}x  (target >= 2x)")
    print(f"identical_test_metrics: {same}")


if __name__ == "__main__":
    main()
