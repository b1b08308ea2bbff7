"""The fixed cost of one run: a 1-batch ``toolkit fit`` forked from the warm parent vs started as a fresh process.

A spec of N seeds of digits (``test_resnet``, 1 epoch of 1 training, 1 validation and 1 test batch, W&B offline) runs
through the ablation runner with ``--workers 1``, once warm and once with fresh processes, alternating over
``--rounds``; each run's ``duration_s`` from the ledger (the first warm run of a study, which also waits for the
parent's imports, left out) (start to exit, as the runner saw it) is what a run costs
beyond its training: CLI parsing, model build and guards, data set-up, W&B start and finish, checkpoint, test.

    python benchmarks/warm_child.py [--runs 4] [--rounds 2]
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

from toolkit.ablation.runner import Options, run_ablation
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.spec import load_spec

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
ONE_BATCH = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 1,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}


def durations(folder: Path, runs: int, warm: bool) -> tuple[list[float], float]:
    """Each run's ``duration_s`` and the study's wall time, one ablation of ``runs`` seeds in ``folder``."""
    spec = {"name": "child", "base": [str(DIGITS)], "overrides": ONE_BATCH, "seeds": list(range(runs))}
    path = folder / "child.yaml"
    path.write_text(json.dumps({**spec, "variants": {"full": {}}}))
    options = Options(root=folder / "runs", workers=1, devices=[], validate=False, report=False, warm=warm)
    start = time.perf_counter()
    if run_ablation(load_spec(path), options, Console(file=io.StringIO())) != 0:
        raise SystemExit(f"a run failed; see the logs under {folder}")
    wall = time.perf_counter() - start
    records = sorted(Ledger(ledger_path(folder / "runs", "child")).read().values(), key=lambda r: r["started_at"])
    # The first warm run also waits for the parent's imports (a fresh process's start-up, once per study): left out.
    return [float(r["duration_s"]) for r in records[1 if warm else 0 :]], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    print(f"load before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    runs: dict[bool, list[float]] = {True: [], False: []}
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for warm in (True, False) if round_ % 2 == 0 else (False, True):
                folder = Path(tmp) / f"{'warm' if warm else 'fresh'}{round_}"
                folder.mkdir()
                each, wall = durations(folder, args.runs, warm)
                runs[warm] += each
                walls[warm].append(wall)
    for warm, name in ((True, "warm_child"), (False, "fresh_process")):
        print(f"{name}_run_s: {statistics.median(runs[warm]):.2f}  (all: {', '.join(f'{t:.2f}' for t in runs[warm])})")
        print(f"{name}_study_s: {statistics.median(walls[warm]):.1f}  ({args.runs} runs, --workers 1, incl. start-up)")
    ratio = statistics.median(runs[False]) / statistics.median(runs[True])
    print(f"per_run_fixed_cost_warm_s: {statistics.median(runs[True]):.2f}  (target <= 1 s); fresh/warm {ratio:.1f}x")
    print(f"load after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
