"""Helpers of the report tests: write real W&B offline run logs shaped like an ablation's, and damage copies.

The runs are written by wandb itself (offline mode), with the keys, group, job type, tags, config and
``define_metric`` summaries that ``toolkit fit`` uses, but without training, so reader and table tests are fast.
Run as a script (``python report_fixtures.py killed DIR NAME VARIANT SEED``) it writes a run and SIGKILLs itself,
leaving the log of a run that never finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import sys
from pathlib import Path
from typing import Any

OFFLINE_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}


def log_path(run_dir: Path, run_id: str) -> Path:
    """The ``run-<id>.wandb`` log of run ``run_id`` written under ``run_dir``."""
    (path,) = Path(run_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    return path


def write_run(
    run_dir: Path,
    name: str,
    variant: str,
    seed: int,
    *,
    train_loss: list[list[float]],
    train_acc: list[float],
    val_acc: list[float],
    test: dict[str, float],
    exit_code: int | None = 0,
    config: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
) -> Path:
    """Write one offline run like ``toolkit fit --test_after_fit true --ablation.*`` logs it; return its log.

    Args:
        run_dir: the run's ``default_root_dir`` (the log goes to ``run_dir/wandb/offline-run-*/``).
        name: ablation name (group), ``variant`` (job type) and ``seed``.
        train_loss: per epoch, the train loss of each logged step.
        train_acc: train accuracy per epoch.
        val_acc: val accuracy per epoch (summary: max, as ``define_metric`` sets it).
        test: test metrics logged once at the end.
        exit_code: passed to ``finish``; None leaves the run open (the caller kills the process).
        config: extra config entries beside ``ablation``.
        health: ``health/*`` summary entries as ``toolkit fit`` writes them on completion; default (exit code 0):
            finished, every epoch completed, losses from ``train_loss``, 10 predicted classes, chance 0.1.
    """
    import wandb

    os.environ.update(OFFLINE_ENV)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        dir=run_dir,
        project="toolkit-tests",
        group=name,
        job_type=variant,
        tags=[variant, f"seed={seed}"],
        config={
            **(config or {}),
            "seed_everything": seed,
            "ablation": {"name": name, "variant": variant, "seed": seed},
        },
    )
    run.define_metric("val/acc", summary="max")
    run.define_metric("val/loss", summary="min")
    step = 0
    for epoch, losses in enumerate(train_loss):
        for loss in losses:
            run.log({"train/loss": loss, "epoch": epoch, "trainer/global_step": step})
            step += 1
        run.log(
            {"val/acc": val_acc[epoch], "val/loss": 1 - val_acc[epoch], "epoch": epoch, "trainer/global_step": step}
        )
        run.log({"train/acc": train_acc[epoch], "epoch": epoch, "trainer/global_step": step})
    run.log({**test, "epoch": len(train_loss), "trainer/global_step": step})
    if health is None and exit_code == 0:
        health = {
            "status": "finished",
            "epochs_completed": len(train_loss),
            "max_epochs": len(train_loss),
            "train_loss_initial": train_loss[0][0],
            "train_loss_final": sum(train_loss[-1]) / len(train_loss[-1]),
            "test_pred_classes": 10,
            "chance": 0.1,
        }
    run.summary.update({f"health/{key}": value for key, value in (health or {}).items()})
    if exit_code is None:
        return log_path(run_dir, run.id)
    run.finish(exit_code=exit_code)
    # finish() can return before wandb-core has written the log (seen on a loaded machine: a 7-byte file);
    # teardown waits for wandb-core to close it
    wandb.teardown()
    return log_path(run_dir, run.id)


def write_killed_run(run_dir: Path, name: str, variant: str, seed: int) -> Path:
    """Write a run whose process is SIGKILLed before ``finish`` (a subprocess); return its log."""
    import subprocess

    env = {**os.environ, **OFFLINE_ENV}
    cmd = [sys.executable, __file__, "killed", str(run_dir), name, variant, str(seed)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    return path


def chunk_offsets(log: Path) -> list[int]:
    """Byte offset of every chunk of a log (the last holds the exit record), walked here without the reader."""
    data, pos, offsets = log.read_bytes(), 7, []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        if left < 7 or kind == 0:
            pos += left
            continue
        offsets.append(pos)
        pos += 7 + length
    return offsets


def cut_inside_a_record(log: Path, fraction: float) -> int:
    """A length to cut ``log`` to that ends inside a chunk's payload, near ``fraction`` of its size: a cut at a plain
    fraction can land on a chunk boundary (the record sizes vary with timestamps and ids), which reads as a log
    that ended cleanly there, not as a truncated one."""
    data = log.read_bytes()
    chunks = [(pos, struct.unpack_from("<IHB", data, pos)[1]) for pos in chunk_offsets(log)]
    pos, length = min(((p, n) for p, n in chunks if n >= 2), key=lambda c: abs(c[0] - fraction * len(data)))
    return pos + 7 + length // 2


def damaged_copy(log: Path, run_dir: Path, *, keep: int | None = None, flip: int | None = None) -> Path:
    """Copy ``log`` into ``run_dir/wandb/offline-run-x/`` cut to ``keep`` bytes and/or with byte ``flip`` inverted."""
    dest = Path(run_dir) / "wandb" / "offline-run-00000000_000000-damaged" / log.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, dest)
    data = bytearray(dest.read_bytes())
    if flip is not None:
        data[flip] ^= 0xFF
    dest.write_bytes(bytes(data[:keep] if keep is not None else data))
    return dest


def _killed_main(folder: Path, name: str, variant: str, seed: int) -> None:
    """Log until wandb has written two 32 KiB blocks (it writes whole blocks until ``finish``), then SIGKILL."""
    import time

    import wandb

    os.environ.update(OFFLINE_ENV)
    run = wandb.init(
        dir=folder,
        group=name,
        job_type=variant,
        tags=[variant, f"seed={seed}"],
        project="toolkit-tests",
        config={"seed_everything": seed, "ablation": {"name": name, "variant": variant, "seed": seed}},
    )
    deadline, step = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        for _ in range(100):
            run.log({"train/loss": 1 / (step + 1), "epoch": 0, "trainer/global_step": step})
            step += 1
        logs = list(Path(folder).glob("wandb/offline-run-*/run-*.wandb"))
        if logs and logs[0].stat().st_size >= 2 * 32 * 1024:
            break
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__" and sys.argv[1] == "killed":
    _killed_main(Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))


#: the synthetic ablation's finished runs: (variant, seed) -> (test metrics, val acc per epoch)
SYNTH_NAME = "synth"
SYNTH_FINISHED = {
    ("full", 0): ({"test/acc": 0.90, "test/f1": 0.88}, [0.70, 0.80]),
    ("full", 1): ({"test/acc": 0.92, "test/f1": 0.91}, [0.72, 0.83]),
    ("full", 2): ({"test/acc": 0.91, "test/f1": 0.87}, [0.71, 0.79]),
    ("no-bn", 0): ({"test/acc": 0.85, "test/f1": 0.83}, [0.60, 0.70]),
    ("no-bn", 1): ({"test/acc": 0.86, "test/f1": 0.80}, [0.62, 0.71]),
    ("snapshot", 0): (
        {"test/acc": 0.80, "test/f1": 0.78, "test/acc_ensemble": 0.94, "test/f1_ensemble": 0.93},
        [0.8, 0.9],
    ),
    ("snapshot", 1): (
        {"test/acc": 0.81, "test/f1": 0.79, "test/acc_ensemble": 0.95, "test/f1_ensemble": 0.92},
        [0.8, 0.9],
    ),
}
_SYNTH_CACHE: dict[str, Any] = {}


def synthetic_ablation(root: Path) -> dict[str, Any]:
    """Write (once per session) ablation ``synth`` under ``root/synth/`` with every kind of run a report meets.

    ``SYNTH_FINISHED`` runs finish; besides them: ``no-bn`` seed 1 also has an earlier run killed mid-way (a real
    SIGKILL), ``no-bn`` seed 2 only a failed run (exit code 1, with test metrics that must not count),
    ``snapshot`` seed 2 a finished run whose log was then cut short, ``full`` seed 0 a copy of its log with a flipped
    byte, a file that is not a W&B log, and a run of another ablation in the same folder.

    Returns:
        ``root``, ``name``, ``logs`` ((variant, seed) -> log of the finished run), ``killed``, ``failed``,
        ``truncated``, ``corrupt``, ``junk`` and ``other`` log paths.
    """
    if "synth" in _SYNTH_CACHE:
        return _SYNTH_CACHE["synth"]
    base = Path(root) / SYNTH_NAME
    info: dict[str, Any] = {"root": Path(root), "name": SYNTH_NAME, "logs": {}}
    info["killed"] = write_killed_run(base / "no-bn" / "seed1-attempt1", SYNTH_NAME, "no-bn", 1)
    for (variant, seed), (test, val_acc) in SYNTH_FINISHED.items():
        losses = [[1.0 - 0.1 * seed - 0.05 * i for i in range(4)], [0.6 - 0.05 * i for i in range(4)]]
        info["logs"][variant, seed] = write_run(
            base / variant / f"seed{seed}", SYNTH_NAME, variant, seed,
            train_loss=losses, train_acc=[v - 0.05 for v in val_acc], val_acc=val_acc, test=test,
            config={"model": {"batchnorm": "off" if variant == "no-bn" else "on"}},
        )  # fmt: skip
    curve = {"train_loss": [[0.9, 0.8]], "train_acc": [0.5], "val_acc": [0.4]}
    info["failed"] = write_run(
        base / "no-bn" / "seed2", SYNTH_NAME, "no-bn", 2, test={"test/acc": 0.1, "test/f1": 0.1}, exit_code=1, **curve
    )
    full = write_run(
        base / "snapshot" / "seed2",
        SYNTH_NAME,
        "snapshot",
        2,
        test={"test/acc": 0.5, "test/acc_ensemble": 0.99},
        **curve,
    )
    full.write_bytes(full.read_bytes()[: cut_inside_a_record(full, 0.6)])
    info["truncated"] = full
    source = info["logs"]["full", 0]
    middle = chunk_offsets(source)[len(chunk_offsets(source)) // 2]
    info["corrupt"] = damaged_copy(source, base / "full" / "seed0-copy", flip=middle + 8)  # a payload byte
    junk = base / "junk" / "run-junk.wandb"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"this is not a W&B run log")
    info["junk"] = junk
    info["other"] = write_run(base / "stray", "another-ablation", "full", 0, test={"test/acc": 0.0}, **curve)
    _SYNTH_CACHE["synth"] = info
    return info
