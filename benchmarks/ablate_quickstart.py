"""The README main job (`toolkit ablate run ablations/quickstart.yaml --workers 2`): warm workers vs fresh processes.

Runs the whole command as a subprocess, alternating ``--warm`` and ``--no-warm`` (each in a new runs folder, so
every run trains from scratch), and prints ``name: value`` lines: the wall time of each, their ratio, and whether
every (variant, seed) ended with the same test metrics both ways (it must: a forked run is the same computation).
Each side gets its own empty feature cache (``TOOLKIT_FEATURE_CACHE`` in a temporary folder, never ``~/.cache``), so
neither finds the other's features. ``--variants``/``--seeds`` run a slice of the spec (written to a temporary spec
with the same base and overrides).

    python benchmarks/ablate_quickstart.py [--rounds 1] [--spec ablations/quickstart.yaml] [--workers 2]
        [--variants full linear-probe] [--seeds 0]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_study(spec: str, root: Path, workers: int, warm: bool) -> float:
    command = [sys.executable, "-m", "toolkit", "ablate", "run", spec, "--root", str(root), "--workers", str(workers)]
    command.append("--warm" if warm else "--no-warm")
    cache = root.parent / f"{root.name}-features"  # private and empty: this side extracts its own features
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOOLKIT_FEATURE_CACHE": str(cache)}
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def metrics(root: Path) -> dict[str, dict[str, float]]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["metrics"] for p in root.rglob("result.json")}


def sliced(spec: str, variants: list[str] | None, seeds: list[int] | None, folder: Path) -> str:
    """``spec`` itself, or a copy in ``folder`` with only ``variants`` and ``seeds`` (bases made absolute)."""
    if not variants and not seeds:
        return spec
    data = yaml.safe_load((ROOT / spec).read_text())
    base = data["base"] if isinstance(data["base"], list) else [data["base"]]
    data["base"] = [str((ROOT / b).resolve()) for b in base]
    if variants:
        data["variants"] = {name: data["variants"][name] for name in variants}
        if data.get("baseline", "full") not in variants:
            data["baseline"] = variants[0]
    if seeds:
        data["seeds"] = seeds
    path = folder / Path(spec).name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="ablations/quickstart.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", nargs="+", help="run only these variants of the spec")
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these seeds")
    args = parser.parse_args()
    print(f"load before: {_load()}")
    times: dict[bool, list[float]] = {True: [], False: []}
    same = True
    metrics_seen: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        spec = sliced(args.spec, args.variants, args.seeds, Path(tmp))
        for round_ in range(args.rounds):
            roots = {}
            for warm in (False, True) if round_ % 2 == 0 else (True, False):
                roots[warm] = Path(tmp) / f"{'warm' if warm else 'fresh'}{round_}"
                times[warm].append(run_study(spec, roots[warm], args.workers, warm))
            metrics_seen = metrics(roots[True])
            same = same and metrics_seen == metrics(roots[False]) and bool(metrics_seen)
    fresh, warm = statistics.median(times[False]), statistics.median(times[True])
    shown = ", ".join(args.variants or ["all variants"])
    print(f"study: {args.spec} ({shown}), --workers {args.workers}, {args.rounds} round(s), cpus {os.cpu_count()}")
    print(f"fresh_processes_s: {fresh:.1f}  (all: {', '.join(f'{t:.1f}' for t in times[False])})")
    print(f"warm_workers_s: {warm:.1f}  (all: {', '.join(f'{t:.1f}' for t in times[True])})")
    runs = len(metrics_seen)
    print(f"runs_per_side: {runs}")
    print(f"speedup_warm_vs_fresh: {fresh / warm:.2f}x  (target >= 2.5x)")
    print(f"identical_test_metrics: {same}")
    print(f"load after: {_load()}")


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


if __name__ == "__main__":
    main()
