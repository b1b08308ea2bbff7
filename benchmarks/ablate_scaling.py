"""Wall time of N short ablation runs with K parallel workers against one after another, measured in one process.

Each run is a real ``toolkit fit`` subprocess on digits (tiny model, a few batches), exactly what
``toolkit ablate run`` starts; the variants are validated once, outside the timings, and a warm-up run fills the
file caches first. Both schedules run the same runs (same seeds) in fresh folders, side by side in this process.

    python benchmarks/ablate_scaling.py --runs 4 --workers 2
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

from jsonargparse import auto_cli
from rich.console import Console

from toolkit.ablation.command import check_variants
from toolkit.ablation.runner import Options, run_ablation
from toolkit.study.spec import load_spec

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def _spec(folder: Path, runs: int, epochs: int, batches: int) -> Path:
    overrides = {
        "trainer.max_epochs": epochs,
        "trainer.limit_train_batches": batches,
        "trainer.limit_val_batches": 2,
        "trainer.limit_test_batches": 2,
        "trainer.enable_progress_bar": False,
    }
    spec = {"name": "scaling", "base": [str(DIGITS)], "overrides": overrides, "seeds": list(range(runs))}
    path = folder / "scaling.yaml"
    path.write_text(json.dumps({**spec, "variants": {"full": {}}}))
    return path


def _time(spec_path: Path, root: Path, workers: int) -> float:
    spec = load_spec(spec_path)
    options = Options(root=root, workers=workers, devices=[], validate=False, report=False)
    start = time.perf_counter()
    code = run_ablation(spec, options, Console(file=io.StringIO()))
    elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"a run failed; see the logs under {root}")
    return elapsed


def main(runs: int = 4, workers: int = 2, epochs: int = 2, batches: int = 10, repeats: int = 2) -> None:
    """Time ``runs`` runs with ``workers`` workers and with one, and print the speed-up.

    Args:
        runs: runs in the ablation (one variant, that many seeds).
        workers: parallel runs of the parallel schedule (the CPU threads are split between them).
        epochs: epochs per run.
        batches: training batches per epoch.
        repeats: rounds of both schedules, in alternating order; the best time of each counts (the machine may
            be shared, and other load only ever adds time).
    """
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    times: dict[int, list[float]] = {1: [], workers: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_path = _spec(folder, runs, epochs, batches)
        check_variants(load_spec(spec_path), folder)
        warm = folder / "warm"
        warm.mkdir()
        _time(_spec(warm, 1, 1, 2), warm / "runs", 1)  # fills the file caches both schedules then share
        for repeat in range(repeats):
            for k in (1, workers) if repeat % 2 == 0 else (workers, 1):
                times[k].append(_time(spec_path, folder / f"r{repeat}-k{k}", k))
    sequential, parallel = min(times[1]), min(times[workers])
    cpus = len(os.sched_getaffinity(0))
    print(
        f"{runs} runs x {epochs} epochs x {batches} batches on {cpus} CPUs, toolkit fit subprocesses, best of {repeats}"
    )
    print(f"  one after another : {sequential:7.1f} s  ({sequential / runs:.1f} s per run)  all: {_fmt(times[1])}")
    print(f"  {workers} workers         : {parallel:7.1f} s  all: {_fmt(times[workers])}")
    print(f"  speed-up          : {sequential / parallel:7.2f}x  (ideal {min(workers, runs, cpus)}x)")
    print(f"  load average after: {os.getloadavg()[0]:.1f} (other processes on the machine slow both schedules)")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    auto_cli(main)
