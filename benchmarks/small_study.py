"""A 4-run tiny study through the runner vs the same four ``toolkit fit`` commands as fresh processes, 2 at a time.

The study (2 variants x 2 seeds of ``configs/digits.yaml``: ``test_resnet``, 1 epoch of 3 batches, tested) runs as
``toolkit ablate run SPEC --workers 2`` (warm workers, pre-launch check, report); the other side starts the same
four fits by hand, two at a time (``xargs -P 2``), each with ``OMP_NUM_THREADS=1`` as the runner's workers get. The
sides alternate over ``--rounds``; the best time of each counts (other load only ever adds time). The runner's
output is timestamped to show where its time goes: before the first run starts (the pre-launch check), the runs,
and after the last run (the report).

    python benchmarks/small_study.py [--rounds 2]

Target (issue 27): the study >= 2x faster than the fresh processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")
TINY = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
    "trainer.enable_progress_bar": False,
    "test_after_fit": True,
}
VARIANTS = {"full": {}, "nodrop": {"model.drop_rate": 0.0}}
SEEDS = (0, 1)
TOOLKIT = str(Path(sys.executable).with_name("toolkit"))


def study(folder: Path) -> tuple[float, dict[str, float]]:
    """Wall time of the study and its phases (seconds from the start: first run started, last run done, exit)."""
    spec = folder / "tiny.yaml"
    spec.write_text(json.dumps({"name": "tiny", "base": [DIGITS], "overrides": TINY, "seeds": list(SEEDS),
                                "baseline": "full", "variants": VARIANTS, "metrics": ["test/acc"]}))  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(
        [TOOLKIT, "ablate", "run", str(spec), "--root", str(folder / "runs"), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    marks: dict[str, float] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        if "running " in line:
            marks.setdefault("first run started", now)
        if " done " in line and "exit" in line:
            marks["last run done"] = now
    if proc.wait() != 0:
        raise SystemExit(f"the study failed; see {folder / 'runs'}")
    elapsed = time.perf_counter() - start
    marks["exit"] = elapsed
    return elapsed, marks


def fresh(folder: Path) -> float:
    """Wall time of the four fits as fresh processes, two at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    overrides = [arg for key, value in TINY.items() for arg in (f"--{key}", json.dumps(value))]

    def one(job: tuple[str, int]) -> int:
        variant, seed = job
        extra = [arg for key, value in VARIANTS[variant].items() for arg in (f"--{key}", json.dumps(value))]
        cmd = [TOOLKIT, "fit", "--config", DIGITS, *overrides, *extra, "--seed_everything", str(seed),
               "--trainer.default_root_dir", str(folder / variant / f"seed{seed}")]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, cwd=ROOT).returncode

    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(one, [(v, s) for v in VARIANTS for s in SEEDS]))
    if any(codes):
        raise SystemExit(f"a fresh fit failed: exit codes {codes}")
    return time.perf_counter() - start


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    print(f"load before: {_load()}; 4 runs of test_resnet on digits, 2 at a time, {os.cpu_count()} CPUs")
    studies, fresh_times, phases = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for side in ("study", "fresh") if round_ % 2 == 0 else ("fresh", "study"):
                folder = Path(tmp) / f"{side}-{round_}"
                folder.mkdir()
                if side == "study":
                    elapsed, marks = study(folder)
                    studies.append(elapsed)
                    phases.append(marks)
                else:
                    fresh_times.append(fresh(folder))
    best = min(range(len(studies)), key=studies.__getitem__)
    marks = phases[best]
    print(f"study_s: {studies[best]:.1f}  (all: {', '.join(f'{t:.1f}' for t in studies)})")
    print(
        f"  pre-launch (to the first run): {marks.get('first run started', 0):.1f} s, runs: "
        f"{marks.get('last run done', 0) - marks.get('first run started', 0):.1f} s, after the last run (report, "
        f"exit): {marks['exit'] - marks.get('last run done', 0):.1f} s"
    )
    print(f"fresh_s: {min(fresh_times):.1f}  (all: {', '.join(f'{t:.1f}' for t in fresh_times)})")
    print(f"study_speedup_vs_fresh: {min(fresh_times) / studies[best]:.2f}x  (target >= 2x)")
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
