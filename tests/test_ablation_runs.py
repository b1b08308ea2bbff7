"""``toolkit ablate`` with real ``toolkit fit`` subprocesses on digits: logging, failures, typos, SIGKILL, status.

Each run costs a process start (~8 s: torch, Lightning, timm) plus a second of training, so the runs are tiny
(1-2 epochs of 2-3 batches) and the ablation of the first tests is shared by a module fixture.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from toolkit.ablation.ckpt_epochs import epochs_done
from toolkit.ablation.command import check_variants
from toolkit.ablation.estimate import human_seconds
from toolkit.ablation.runner import Options, run_ablation
from toolkit.errors import ToolkitError
from toolkit.report.wandb_log import read_run
from toolkit.study.layout import wandb_runs
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.spec import load_spec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
TOOLKIT = str(Path(sys.executable).with_name("toolkit"))
TINY = {
    "trainer.limit_train_batches": 3,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
}


def write_spec(folder: Path, name: str, variants: dict, seeds: list[int], epochs: int) -> Path:
    path = folder / f"{name}.yaml"
    spec = {"name": name, "base": [str(DIGITS)], "overrides": {**TINY, "trainer.max_epochs": epochs}}
    path.write_text(json.dumps({**spec, "seeds": seeds, "variants": variants}))
    return path


def ablate(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([TOOLKIT, "ablate", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)


def records_by_run(root: Path, name: str) -> dict[tuple[str, int], dict]:
    return {(r["variant"], r["seed"]): r for r in Ledger(ledger_path(root, name)).read().values()}


def wandb_logs(run_dir: str | Path) -> list:
    return [read_run(p) for p in sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"))]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int, str]:
    """2 variants x 2 seeds that train, and one variant that crashes at start-up, with 2 workers."""
    folder = tmp_path_factory.mktemp("ablate")
    # `broken` passes the up-front checks (its model builds) and fails at start-up on its data
    broken = {"data.source": "folder", "data.root": "no_such_folder"}
    variants = {"full": {}, "no-dropout": {"model.drop_rate": 0.0}, "broken": broken}
    spec = write_spec(folder, "real", variants, [0, 1], epochs=1)
    proc = ablate("run", str(spec), "--root", str(folder / "runs"), "--workers", "2", cwd=folder)
    out, _ = proc.communicate(timeout=400)
    return spec, folder / "runs", proc.returncode, out


def test_runs_are_done_and_logged_with_group_job_type_and_tags(finished: tuple[Path, Path, int, str]) -> None:
    _, root, _, out = finished
    records = records_by_run(root, "real")
    for variant in ("full", "no-dropout"):
        for seed in (0, 1):
            record = records[(variant, seed)]
            assert (record["status"], record["attempts"], record["exit_code"]) == ("done", 1, 0)
            assert record["run_dir"] == str(root / "real" / variant / f"seed{seed}")
            (log,) = wandb_logs(record["run_dir"])
            assert (log.group, log.job_type, log.exit_code) == ("real", variant, 0)
            assert {variant, f"seed={seed}"} <= set(log.tags)
            assert log.config["ablation"] == {"name": "real", "variant": variant, "seed": seed}
            assert log.config["seed_everything"] == seed and "test/acc" in log.summary
            assert record["wandb_id"] == log.run_id and record["wandb_dir"] == str(log.path.parent)
            threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
            assert record["env"] == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    assert "## Ablation: real" in out  # the report ran at the end


def test_a_crashing_variant_fails_alone_and_the_summary_points_at_its_log(
    finished: tuple[Path, Path, int, str],
) -> None:
    _, root, code, out = finished
    records = records_by_run(root, "real")
    assert code == 1
    for seed in (0, 1):
        record = records[("broken", seed)]
        assert record["status"] == "failed" and record["exit_code"] == 2
        assert any("no_such_folder" in line for line in record["error_tail"])
        assert "no_such_folder" in record["reason"]  # the error: line
        assert f"failed broken seed {seed}: {record['reason']} (exit 2, log {record['log']})" in out
    assert "4 done, 2 failed, 0 unfinished" in out


def _size_mb(text: str, before: str) -> float:
    """The number in ``~<number> MB`` that follows ``before`` in ``text``."""
    match = re.search(re.escape(before) + r"~([0-9.]+) MB", text)
    assert match is not None, (before, text)
    return float(match.group(1))


def test_the_check_says_what_it_does_and_the_cost_is_estimated_before_any_run(
    finished: tuple[Path, Path, int, str],
) -> None:
    _, root, _, out = finished
    lines = out.splitlines()
    first_run = next(i for i, line in enumerate(lines) if "running " in line)
    checking = next(i for i, line in enumerate(lines) if line.startswith("checking real: 3 variants x 2 seeds: "))
    passed = next(i for i, line in enumerate(lines) if re.fullmatch(r"check passed in [0-9.]+ s", line))
    estimate = next(i for i, line in enumerate(lines) if line.startswith("estimate: "))
    assert checking < passed < estimate < first_run, out
    # no history yet: no time is guessed; 6 runs (broken's 2 fail, but nothing knew that before they ran)
    assert lines[estimate].startswith("estimate: 6 runs to go, 2 at a time; time: none yet"), lines[estimate]
    # the disk estimate from the parameter count, against the checkpoint files the runs wrote
    disk = lines[estimate + 1]
    assert disk.startswith("disk: ~") and "estimated from the parameter count" in disk, disk
    per_ckpt = _size_mb(disk, "up to 2 checkpoints of ")
    written = (root / "real" / "full" / "seed0" / "checkpoints" / "last.ckpt").stat().st_size / 1e6
    assert per_ckpt == pytest.approx(written, rel=0.05)
    assert _size_mb(disk, "disk: ") == pytest.approx(6 * 2 * per_ckpt, rel=0.02)
    assert "to keep less" not in disk  # small: no hint


def test_checkpoint_epochs_read_without_torch_match_torch_load(finished: tuple[Path, Path, int, str]) -> None:
    import torch

    _, root, _, _ = finished
    for ckpt in sorted(root.glob("real/*/seed*/checkpoints/*.ckpt")):
        assert epochs_done(ckpt) == torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"] + 1


def test_status_prints_the_ledger_without_importing_torch(finished: tuple[Path, Path, int, str]) -> None:
    spec, root, _, _ = finished
    cmd = [sys.executable, "-X", "importtime", "-m", "toolkit", "ablate", "status", str(spec), "--root", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "jsonargparse" in imported and not imported & {"torch", "lightning", "timm", "wandb"}
    rows = [line for line in done.stdout.splitlines() if "│" in line and " seed" not in line]
    assert sum("done" in r for r in rows) == 4 and sum("failed" in r for r in rows) == 2
    records = records_by_run(root, "real")
    for seed in (0, 1):  # each failure's whole reason below the table, whose note column ends in an ellipsis
        record = records[("broken", seed)]
        assert f"failed broken seed {seed}: {record['reason']} (log: {record['log']})" in done.stdout.splitlines()


def test_a_done_run_whose_folder_was_deleted_is_redone(finished: tuple[Path, Path, int, str]) -> None:
    """The ledger says done, the disk says gone: the re-run redoes that run (one process) and only that one."""
    import shutil

    spec, root, _, _ = finished
    before = records_by_run(root, "real")
    shutil.rmtree(root / "real" / "full" / "seed1")
    again = ablate("run", str(spec), "--root", str(root), cwd=spec.parent)
    out, _ = again.communicate(timeout=300)
    after = records_by_run(root, "real")
    assert "4 done, 2 failed" in out, out
    assert after[("full", 1)]["attempts"] == 2 and after[("full", 1)]["status"] == "done"
    # the estimate from this study's history: 1 run to go (failed ones wait for --retry-failed), the median time of
    # the 4 finished runs, the median size of the 3 finished runs' folders still on disk
    durations = sorted(before[(v, seed)]["duration_s"] for v in ("full", "no-dropout") for seed in (0, 1))
    median_s = (durations[1] + durations[2]) / 2
    assert f"estimate: 1 run to go, 1 at a time; time ~{human_seconds(median_s)} (median " in out, out
    kept = [root / "real" / v / f"seed{seed}" for v, seed in (("full", 0), ("no-dropout", 0), ("no-dropout", 1))]
    du = [subprocess.run(["du", "-sb", str(f)], capture_output=True, text=True, check=True).stdout for f in kept]
    sizes = sorted(int(line.split()[0]) for line in du)  # apparent sizes, a hard-linked file once
    assert _size_mb(out, "disk: ") == pytest.approx(sizes[1] / 1e6, rel=0.05)
    assert "over the folders of 3 finished runs" in out
    assert (root / "real" / "full" / "seed1" / "result.json").is_file()
    for key in (("full", 0), ("no-dropout", 0), ("no-dropout", 1), ("broken", 0)):
        assert after[key]["attempts"] == before[key]["attempts"]


def test_a_typo_in_one_variant_fails_before_any_run_starts(tmp_path: Path) -> None:
    variants = {"full": {}, "typo": {"model.dropout_rat": 0.1}}
    spec = load_spec(write_spec(tmp_path, "typo", variants, [0], epochs=1))
    with pytest.raises(ToolkitError) as err:
        run_ablation(spec, Options(root=tmp_path / "runs", report=False), Console(file=io.StringIO()))
    assert "variant 'typo'" in str(err.value) and "dropout_rat" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_every_shipped_spec_parses_with_the_fit_parser(tmp_path: Path) -> None:
    snapshots = importlib.util.find_spec("toolkit.callbacks.snapshot") is not None
    for path in sorted((ROOT / "ablations").glob("*.yaml")):
        spec = load_spec(path)
        if not snapshots:  # the snapshot-ensemble callback (issue 4) is not merged yet
            variants = {k: v for k, v in spec.variants.items() if "SnapshotEnsemble" not in json.dumps(v)}
            spec = dataclasses.replace(spec, variants=variants)
        check_variants(spec, tmp_path)


def midway(ckpt_dir: Path, epochs: int) -> bool:
    done = epochs_done(ckpt_dir / "last.ckpt")
    return done is not None and 0 < done < epochs


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_runner_killed_with_sigkill_and_restarted_completes_every_run_once(tmp_path: Path) -> None:
    # side by side: `short` finishes while `full` is still training
    variants = {"full": {"trainer.limit_train_batches": 1.0}, "short": {"trainer.max_epochs": 1}}  # full: every batch
    spec = write_spec(tmp_path, "killed", variants, [0], epochs=6)
    root = tmp_path / "runs"
    runner = ablate("run", str(spec), "--root", str(root), "--workers", "2", cwd=tmp_path)
    deadline = time.time() + 300
    killed_with_ckpt: set[tuple[str, int]] = set()
    while time.time() < deadline:
        records = records_by_run(root, "killed") if ledger_path(root, "killed").exists() else {}
        done = [k for k, r in records.items() if r["status"] == "done"]
        # kill while a run is mid-training: it has a checkpoint, and epochs left to train
        resumable = [k for k, r in records.items() if r["status"] == "running" and midway(Path(r["ckpt_dir"]), 6)]
        if done and resumable:
            runner.send_signal(signal.SIGKILL)
            runner.communicate()
            killed_with_ckpt = set(resumable)
            break
        assert runner.poll() is None, "the ablation finished before it could be killed"
        time.sleep(0.1)
    assert killed_with_ckpt, "no moment with a finished run and a checkpointed running run"
    before = records_by_run(root, "killed")
    orphans = [r["pid"] for r in before.values() if r["status"] == "running" and r.get("pid")]
    time.sleep(3)
    assert not [pid for pid in orphans if _alive(pid)], "runs outlived their runner"

    again = ablate("run", str(spec), "--root", str(root), "--workers", "2", cwd=tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    after = records_by_run(root, "killed")
    assert {r["status"] for r in after.values()} == {"done"} and len(after) == 2
    assert killed_with_ckpt == {("full", 0)} and before[("short", 0)]["status"] == "done"
    for key, record in after.items():
        log_text = Path(record["log"]).read_text()
        logs = wandb_logs(record["run_dir"])
        # A resumed attempt is a new offline W&B run naming the one it continues; the report counts the latest.
        superseded = {w.config.get("resumed_from") for w in logs}
        current = [w for w in logs if w.run_id not in superseded and w.exit_code == 0 and "test/acc" in w.summary]
        assert len(current) == 1, f"{key}: one complete W&B run that nothing supersedes, not {len(current)}"
        assert record["wandb_id"] == current[0].run_id
        if before[key]["status"] == "done":  # finished before the kill: never started again
            assert record["attempts"] == 1 and log_text.count("# toolkit ablate: attempt") == 1 and len(logs) == 1
        else:
            assert record["attempts"] == before[key]["attempts"] + 1
        if key in killed_with_ckpt:
            assert record["resumed"] and 0 < record["start_epoch"] < 6 and "resuming from" in log_text
            assert "Restoring states from the checkpoint path at" in log_text
            previous_id = wandb_runs(Path(record["run_dir"]))[-2][0]  # from the folder name: the log may be cut short
            assert logs[-1].config.get("resumed_from") == previous_id
