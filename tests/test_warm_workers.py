"""Warm run workers: a forked run equals a fresh ``toolkit fit`` process, and stays an isolated, resumable process.

Real runs of the tiny digits model through the ablation runner; the warm parent pays the torch/Lightning import
once per runner, so each forked run costs about a second of training.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from toolkit import keys
from toolkit.ablation.runner import Options, run_ablation
from toolkit.report.wandb_log import read_run
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.spec import load_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
TINY = {
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 2,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}


def write_spec(folder: Path, name: str, variants: dict, seeds: list[int], overrides: dict) -> Path:
    path = folder / f"{name}.yaml"
    spec = {"name": name, "base": [str(DIGITS)], "overrides": overrides, "seeds": seeds, "variants": variants}
    path.write_text(json.dumps(spec))
    return path


def ablate(spec: Path, root: Path, **options: object) -> tuple[int, str]:
    out = io.StringIO()
    local = {"devices": "cpu", **{k: options.pop(k) for k in ("workers", "warm") if k in options}}
    opts = Options(root=root, executor_options=local, validate=False, report=False, **options)  # type: ignore[arg-type]
    code = run_ablation(load_spec(spec), opts, Console(file=out, width=200))
    return code, out.getvalue()


def records(root: Path, name: str) -> dict[tuple[str, int], dict]:
    return {(r["variant"], r["seed"]): r for r in Ledger(ledger_path(root, name)).read().values()}


def metrics(run_dir: str | Path) -> dict[str, float]:
    return json.loads((Path(run_dir) / keys.RESULT_FILE).read_text())["metrics"]


def test_warm_and_fresh_runs_give_identical_metrics_and_a_bad_run_fails_alone(tmp_path: Path) -> None:
    variants = {"full": {}, "broken": {"model.drop_rate": "high"}}  # a ToolkitError at parse time: exit 2
    spec = write_spec(tmp_path, "warmth", variants, [3], {**TINY, "trainer.max_epochs": 1})
    code, out = ablate(spec, tmp_path / "warm", workers=2, warm=True)
    assert code == 1, out
    warm = records(tmp_path / "warm", "warmth")
    assert warm["full", 3]["status"] == "done"
    assert "forked from the warm parent" in Path(warm["full", 3]["log"]).read_text()
    broken = warm["broken", 3]
    assert broken["status"] == "failed" and broken["exit_code"] == 2, broken
    log = Path(broken["log"]).read_text()
    assert "error: " in log and "model.drop_rate" in log and "Traceback" not in log, log

    spec_full = write_spec(tmp_path, "warmth", {"full": {}}, [3], {**TINY, "trainer.max_epochs": 1})
    code, out = ablate(spec_full, tmp_path / "fresh", workers=1, warm=False)
    assert code == 0, out
    fresh = records(tmp_path / "fresh", "warmth")["full", 3]
    assert "fresh process" in Path(fresh["log"]).read_text()
    warm_metrics, fresh_metrics = metrics(warm["full", 3]["run_dir"]), metrics(fresh["run_dir"])
    assert set(warm_metrics) >= {"test/acc", "test/f1", "test/loss"}
    assert warm_metrics == fresh_metrics


def wait_for(condition: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_killed_children_are_isolated_exit_like_fresh_processes_and_resume(tmp_path: Path) -> None:
    overrides = {**TINY, "trainer.limit_train_batches": 8, "trainer.max_epochs": 6}
    spec = write_spec(tmp_path, "kills", {"full": {}}, [0, 1], overrides)
    root = tmp_path / "runs"
    runner = subprocess.Popen(
        [sys.executable, "-m", "toolkit", "ablate", "run", str(spec), "--root", str(root), "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    ckpts = [root / "kills" / "full" / f"seed{seed}" / "checkpoints" / "last.ckpt" for seed in (0, 1)]
    wait_for(lambda: all(ckpt.is_file() for ckpt in ckpts) or runner.poll() is not None)
    assert runner.poll() is None, runner.communicate()[0]
    by_seed = {seed: records(root, "kills")["full", seed] for seed in (0, 1)}
    runner_pid = runner.pid
    for seed, sig in ((0, signal.SIGTERM), (1, signal.SIGKILL)):
        pid = by_seed[seed]["pid"]
        assert pid != runner_pid and os.getpgid(pid) == pid  # its own process and process group
        os.kill(pid, sig)
    out, _ = runner.communicate(timeout=120)
    assert runner.returncode == 1, out  # the runner survived its children and reported them
    after = records(root, "kills")
    # a run killed by a signal is interrupted, not failed: it resumes without --retry-failed
    assert after["full", 0]["status"] == "pending" and after["full", 0]["exit_code"] == 128 + signal.SIGTERM, out
    assert after["full", 1]["status"] == "pending" and after["full", 1]["exit_code"] == -signal.SIGKILL, out

    code, out = ablate(spec, root, workers=2)
    assert code == 0, out
    final = records(root, "kills")
    for seed in (0, 1):
        assert final["full", seed]["status"] == "done" and final["full", seed]["resumed"], final["full", seed]
        assert final["full", seed]["start_epoch"] >= 1


def test_two_runs_forked_from_one_parent_write_their_own_complete_wandb_logs(tmp_path: Path) -> None:
    """The parent has imported what ``wandb.init`` imports; its two children still each log a whole W&B run."""
    spec = write_spec(tmp_path, "twins", {"full": {}}, [0, 1], {**TINY, "trainer.max_epochs": 2})
    code, out = ablate(spec, tmp_path / "runs", workers=2, warm=True)
    assert code == 0, out
    seen = {}
    for (_, seed), record in records(tmp_path / "runs", "twins").items():
        run_dir = Path(record["run_dir"])
        assert "forked from the warm parent" in Path(record["log"]).read_text()
        result = json.loads((run_dir / keys.RESULT_FILE).read_text())
        (log,) = (run_dir / "wandb").glob("*run-*/run-*.wandb")
        run = read_run(log)
        assert run.state == "finished" and run.damage is None, (log, run.damage)
        assert run.run_id == result["wandb_id"]
        assert run.config["seed_everything"] == seed
        assert run.summary["test/acc"] == pytest.approx(result["metrics"]["test/acc"])
        assert [row["epoch"] for row in run.history if "val/acc" in row] == [0, 1]
        seen[seed] = run.run_id
    assert len(set(seen.values())) == 2, seen


def test_the_warm_parent_imports_what_wandb_init_imports_and_starts_no_thread(tmp_path: Path) -> None:
    """After ``preload`` a ``wandb.init`` imports nothing heavy, and the parent is still single-threaded (fork-safe)."""
    script = f"""
import json, sys, threading
from toolkit.worker import preload
preload()
threads, before = threading.active_count(), set(sys.modules)
import wandb
run = wandb.init(dir={str(tmp_path)!r}, project="p", mode="offline")
new = sorted(set(sys.modules) - before)
wandb.finish()
print(json.dumps({{"threads": threads, "new": new}}))
"""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["threads"] == 1
    heavy = [name for name in found["new"] if name.startswith(("wandb.sdk.launch", "wandb.apis"))]
    assert heavy == [], heavy
