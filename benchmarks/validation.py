"""The runner's pre-launch check of ``ablations/quickstart.yaml``: before (issue 21) vs now, side by side.

Each side runs as a fresh process that starts like ``toolkit ablate run`` (no torch imported) and checks the spec:

- **before**: the runner imports torch/Lightning/timm itself and parses each variant with a new LightningCLI parser
  (one parser per variant), then builds each distinct model in the runner;
- **now**: ``lifecycle.check``: one parser for every variant, in a child process, so the runner never holds torch.

Printed per side: the check's wall time (imports included: the runner pays them either way) and the runner
process's own peak RSS (``ru_maxrss``; the child's memory is given back when it exits, and is shown separately).
The sides alternate over ``--rounds``; torch threads are pinned to ``--threads``.

    python benchmarks/validation.py [--rounds 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "ablations" / "quickstart.yaml"

BEFORE = """
import json, resource, sys, time
start = time.perf_counter()
import torch
torch.set_num_threads({threads})
from toolkit.ablation import command
from toolkit.lightning_cli import parse_config
from toolkit.study.spec import load_spec
spec = load_spec({spec!r})
first = {{}}
for run in spec.runs():
    first.setdefault(run.variant, run)
resolved = {{v: parse_config(command.fit_args(spec, r, {root!r})).fit for v, r in first.items()}}
command._check_no_op(spec, resolved)
built = set()
for variant, config in resolved.items():
    kwargs = command._model_kwargs(config)
    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key not in built:
        built.add(key)
        command._build_model(spec, variant, kwargs)
wall = time.perf_counter() - start
print(json.dumps({{"wall": wall, "runner_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_mb": 0.0}}))
"""

NOW = """
import json, resource, time
start = time.perf_counter()
from toolkit.ablation import lifecycle
from toolkit.study.spec import load_spec
lifecycle.check(load_spec({spec!r}), {root!r})
wall = time.perf_counter() - start
import sys
assert "torch" not in sys.modules, "the runner imported torch"
print(json.dumps({{"wall": wall, "runner_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""


def side(code: str, threads: int, root: str) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    script = code.format(spec=str(SPEC), root=root, threads=threads)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"load before: {_load()} (1/5/15 min); spec {SPEC.relative_to(ROOT)}")
    results: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as root:
        for round_ in range(args.rounds):
            order = ("before", "now") if round_ % 2 == 0 else ("now", "before")
            for name in order:
                results[name].append(side(BEFORE if name == "before" else NOW, args.threads, root))
    for name, runs in results.items():
        walls = [r["wall"] for r in runs]
        runner_mb, child_mb = max(r["runner_mb"] for r in runs), max(r["child_mb"] for r in runs)
        print(
            f"{name}: check {statistics.median(walls):.1f} s (all: {', '.join(f'{w:.1f}' for w in walls)}), "
            f"runner peak RSS {runner_mb:.0f} MB, check child {child_mb:.0f} MB"
        )
    before, now = (statistics.median(r["wall"] for r in results[k]) for k in ("before", "now"))
    ratio = before / now
    print(f"check_before_over_now: {ratio:.2f}x")
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
