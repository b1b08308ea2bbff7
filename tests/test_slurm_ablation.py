"""``toolkit ablate --executor slurm`` on a real single-node Slurm cluster (started by .ci/start_slurm.sh).

One ablation of 2 runs as a job array: one task is cancelled mid-run (``scancel``), the other gets the
preemption/timeout signal (``scancel --signal=USR2``, what Slurm sends before a time limit) and requeues itself;
submitting the ablation again resumes the cancelled run from its checkpoint. Skips where Slurm is absent or down.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.ablation.ckpt_epochs import epochs_done
from toolkit.report.wandb_log import read_run
from toolkit.study.ledger import Ledger, ledger_path

ROOT = Path(__file__).resolve().parents[1]
TOOLKIT = str(Path(sys.executable).with_name("toolkit"))
EPOCHS = 3


def slurm_unavailable() -> str | None:
    """Why the Slurm tests cannot run here, or None."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not found); .ci/start_slurm.sh installs and starts a single-node cluster"
    try:
        done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"Slurm does not answer ({err})"
    if done.returncode != 0:
        return f"Slurm is down: {done.stderr.strip()}"
    states = done.stdout.split()
    if not any(s.startswith(("idle", "mixed", "allocated", "completing")) for s in states):
        return f"no Slurm node takes jobs (node states: {', '.join(states) or 'none'})"
    return None


REASON = slurm_unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]


def ablate(spec: Path, root: Path, cwd: Path) -> subprocess.Popen[str]:
    args = ["run", str(spec), "--root", str(root), "--executor", "slurm", "--partition", "debug", "--time-min", "15"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([TOOLKIT, "ablate", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)


def by_seed(root: Path) -> dict[int, dict]:
    path = ledger_path(root, "onslurm")
    return {r["seed"]: r for r in Ledger(path).read().values()} if path.exists() else {}


def midway(record: dict) -> bool:
    done = epochs_done(Path(record["ckpt_dir"]) / "last.ckpt")
    return record.get("status") == "running" and done is not None and 0 < done < EPOCHS


def test_cancelled_and_preempted_tasks_resume_from_their_checkpoints(tmp_path: Path) -> None:
    overrides = {
        "trainer.max_epochs": EPOCHS,
        "trainer.limit_train_batches": 8,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "trainer.enable_progress_bar": False,
    }
    spec = tmp_path / "onslurm.yaml"
    text = {"name": "onslurm", "base": [str(ROOT / "configs" / "digits.yaml")], "overrides": overrides}
    spec.write_text(json.dumps({**text, "seeds": [0, 1], "variants": {"full": {}}}))
    root = tmp_path / "runs"

    runner = ablate(spec, root, tmp_path)
    signalled: dict[int, str] = {}
    deadline = time.time() + 240
    while len(signalled) < 2 and time.time() < deadline and runner.poll() is None:
        for seed, record in by_seed(root).items():
            if seed not in signalled and midway(record):
                job = record["slurm_job_id"]
                how = [] if seed == 0 else ["--signal=USR2"]  # seed 0: cancelled; seed 1: preempted
                subprocess.run(["scancel", *how, job], check=True, timeout=30)
                signalled[seed] = job
        time.sleep(0.2)
    out, _ = runner.communicate(timeout=300)
    assert sorted(signalled) == [0, 1], f"both runs should have been caught mid-training: {signalled}\n{out}"
    first = by_seed(root)
    assert runner.returncode == 1
    assert (first[0]["status"], first[0]["attempts"]) == ("pending", 1), first[0]
    assert "1 done, 0 failed, 1 unfinished" in out
    requeued = first[1]
    assert (requeued["status"], requeued["attempts"], requeued["resumed"]) == ("done", 2, True)
    assert requeued["slurm_job_id"] == signalled[1] and 0 < requeued["start_epoch"] < EPOCHS

    again = ablate(spec, root, tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    final = by_seed(root)
    assert (final[0]["status"], final[0]["attempts"], final[0]["resumed"]) == ("done", 2, True)
    assert 0 < final[0]["start_epoch"] < EPOCHS and final[0]["slurm_job_id"] != signalled[0]
    for seed, record in final.items():
        log_text = Path(record["log"]).read_text()
        assert "Restoring states from the checkpoint path at" in log_text
        logs = [read_run(p) for p in sorted(Path(record["run_dir"]).glob("wandb/*run-*/run-*.wandb"))]
        superseded = {w.config.get("resumed_from") for w in logs}
        (current,) = [w for w in logs if w.run_id not in superseded and w.exit_code == 0]
        assert (current.group, current.job_type, current.run_id) == ("onslurm", "full", record["wandb_id"])
        assert {"full", f"seed={seed}"} <= set(current.tags) and "test/acc" in current.summary
        assert current.config["ablation"] == {"name": "onslurm", "variant": "full", "seed": seed}
    assert "## Ablation: onslurm" in out


def test_job_carries_cluster_settings_and_one_run_trains_ddp_over_two_tasks(tmp_path: Path) -> None:
    """account/qos/mem/setup/pass-through options reach the job (read back from Slurm), ``--tasks-per-node 2``
    makes one run a 2-process DDP fit, one Slurm task per process (what multi-node DDP is, on one node), and the
    dry run shows exactly the job script and the command that were then submitted and run."""
    overrides = {
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 4,
        "trainer.limit_val_batches": 1,
        "trainer.limit_test_batches": 1,
        "trainer.enable_progress_bar": False,
    }
    marker = tmp_path / "setup-ran"
    raw = {
        "name": "cluster",
        "base": [str(ROOT / "configs" / "digits.yaml")],
        "overrides": overrides,
        "seeds": [0],
        "variants": {"full": {}},
        "slurm": {"account": "proj42", "setup": [f"echo $SLURM_JOB_ID > {marker}"]},
    }
    spec = tmp_path / "cluster.yaml"
    spec.write_text(json.dumps(raw))
    root = tmp_path / "runs"
    args = ["ablate", "run", str(spec), "--root", str(root), "--executor", "slurm", "--partition", "debug"]
    args += ["--time-min", "15", "--qos", "normal", "--mem", "2G", "--slurm-param", "comment=toolkit-ddp"]
    args += ["--tasks-per-node", "2", "--no-warm"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    dry = subprocess.run([TOOLKIT, *args, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    done = subprocess.run([TOOLKIT, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = Ledger(ledger_path(root, "cluster")).read().values()
    # the dry run printed the job script submitit submitted and the command the task ran, to the byte
    (script,) = (root / "cluster" / "slurm").rglob("*_submission.sh")
    printed = dry.stdout.splitlines()
    start = printed.index("#!/bin/bash")
    end = next(i for i, line in enumerate(printed) if "submitit.core._submit" in line)
    assert "\n".join(printed[start : end + 1]) == script.read_text().rstrip("\n")
    assert printed[end + 1] == record["command"] and "--trainer.num_nodes 1" in record["command"]
    assert record["status"] == "done" and record["attempts"] == 1
    job = subprocess.run(["scontrol", "show", "job", record["slurm_job_id"]], capture_output=True, text=True)
    shown = job.stdout
    assert "Account=proj42" in shown and "Comment=toolkit-ddp" in shown, shown
    assert "MinMemoryNode=2G" in shown and "NumTasks=2" in shown, shown
    # without an accounting database Slurm does not keep a QOS on the job: read it from the submitted script
    assert "#SBATCH --qos=normal" in script.read_text()
    assert marker.read_text().strip() == record["slurm_job_id"].split("_")[0]  # the setup line ran in the job
    run_dir = Path(record["run_dir"])
    assert "MEMBER: 1/2" in (run_dir / "run.log").read_text()  # rank 0, recorded by task 0
    assert "MEMBER: 2/2" in (run_dir / "run.rank1.log").read_text()  # rank 1, the second Slurm task
    assert json.loads((run_dir / "result.json").read_text())["status"] == "done"


def test_a_run_signalled_mid_epoch_saves_resumes_from_that_batch_and_ends_with_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    """Slurm's pre-timeout signal (``scancel --signal=USR2``, as Slurm sends it ``--signal-delay-s`` before the time
    limit) arrives mid-epoch: the run saves after its current batch, the requeued attempt resumes from that batch,
    and its result equals that of the same run never stopped (a second study, submitted beside it)."""
    overrides = {
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 60,
        "trainer.limit_val_batches": 2,
        "trainer.limit_test_batches": 2,
        "trainer.enable_progress_bar": False,
        "data.image_size": 192,  # epochs of ~10 s: the signal lands inside one
        "data.batch_size": 16,
        "data.augment": "basic",
    }
    root = tmp_path / "runs"
    runners = {}
    for name in ("whole", "cut"):
        raw = {"name": name, "base": [str(ROOT / "configs" / "digits.yaml")], "overrides": overrides}
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(json.dumps({**raw, "seeds": [0], "variants": {"full": {}}}))
        runners[name] = ablate(spec, root, tmp_path)
    signalled = None
    deadline = time.time() + 300
    while signalled is None and time.time() < deadline and runners["cut"].poll() is None:
        path = ledger_path(root, "cut")
        (record,) = Ledger(path).read().values() if path.exists() else [{}]
        log = Path(record["log"]) if record.get("log") else None
        if record.get("status") == "running" and log and "parameters:" in log.read_text(errors="replace"):
            time.sleep(3)  # a few batches into epoch 0
            subprocess.run(["scancel", "--signal=USR2", record["slurm_job_id"]], check=True, timeout=30)
            signalled = record["slurm_job_id"]
        time.sleep(0.2)
    outs = {name: runner.communicate(timeout=600)[0] for name, runner in runners.items()}
    assert signalled, outs["cut"]
    assert all(runner.returncode == 0 for runner in runners.values()), outs
    (cut,) = Ledger(ledger_path(root, "cut")).read().values()
    (whole,) = Ledger(ledger_path(root, "whole")).read().values()
    assert (cut["status"], cut["attempts"], cut["resumed"], cut["slurm_job_id"]) == ("done", 2, True, signalled)
    text = Path(cut["log"]).read_text()
    saved = re.search(r"stop signal: saved \S+ after batch (\d+) of epoch (\d+)", text)
    resumed = re.search(r"resuming epoch (\d+) after its batch (\d+)", text)
    assert saved and resumed, text[-3000:]
    assert 0 < int(saved.group(1)) < 60 and (resumed.group(1), resumed.group(2)) == (saved.group(2), saved.group(1))
    lines = [re.findall(r"^(epoch \d+/\d+: .*) \([\d.]+ s\)$", Path(r["log"]).read_text(), re.M) for r in (cut, whole)]
    assert len(lines[0]) == 2 and lines[0] == lines[1]  # the epoch lines too (the interrupted epoch's mean loss)
    assert epochs_done(Path(cut["ckpt_dir"]) / "last.ckpt") == 2
    results = [json.loads((Path(r["run_dir"]) / "result.json").read_text()) for r in (cut, whole)]
    assert results[0]["metrics"] == results[1]["metrics"] and results[0]["best_val"] == results[1]["best_val"]
    assert results[0]["tested_epoch"] == results[1]["tested_epoch"]


def test_a_partition_without_gpus_is_told_apart_by_sinfo() -> None:
    """The CI's partition has no GPU GRES: a CPU run there is accepted (the tests above run there); a partition
    Slurm does not know falls back to its name (``--partition gpu`` without GPUs is refused, test_slurm_settings)."""
    from toolkit.ablation.squeue import partition_gres

    assert partition_gres("debug") == ""
    assert partition_gres("no-such-partition") is None
