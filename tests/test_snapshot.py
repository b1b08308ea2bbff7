"""Snapshot and checkpoint ensembles on digits with a tiny timm model, checked against references computed here."""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from conftest import DIGITS, ROOT, fit, toolkit_cmd
from sklearn.metrics import accuracy_score, f1_score

from toolkit.callbacks.ensemble import CheckpointEnsemble
from toolkit.callbacks.snapshot import CyclicSchedule, SnapshotEnsemble, cycle_length
from toolkit.errors import ToolkitError
from toolkit.lightning_cli import check_args, run_cli
from toolkit.model.classifier import ImageClassifier
from toolkit.study.result import RunResult

SNAPSHOT_YAML = str(ROOT / "configs" / "snapshot.yaml")
LR = 0.003  # configs/digits.yaml
TEST_BATCHES = 2  # conftest.QUICK's limit_test_batches


class LrRecorder(pl.Callback):
    """Records the lr of each param group that every optimizer step uses."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, list[float]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rows.append((trainer.global_step, [g["lr"] for g in optimizer.param_groups]))


class CrashAtEpoch2(pl.Callback):
    """Kills the run at the start of epoch 2, after the end-of-epoch-1 checkpoint was written."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


def snapshot_args(cycles: int, *extra: str) -> list[str]:
    return ["--trainer.callbacks+=toolkit.SnapshotEnsemble", "--trainer.callbacks.cycles", str(cycles), *extra]


#: every epoch's checkpoint kept, so last.ckpt is the latest epoch: Lightning 2.6 rewrites last.ckpt only when it
#: saves a top-k checkpoint at the same step, i.e. only when val/acc improves
EVERY_EPOCH = ["--checkpoint.save_top_k", "-1"]


def eval_args(root: Path, ckpt: Path) -> list[str]:
    """``toolkit validate|test`` options: digits, 2 batches, the given checkpoint."""
    return ["--config", DIGITS, "--trainer.default_root_dir", str(root), "--ckpt_path", str(ckpt),
            "--trainer.limit_val_batches", "2", "--trainer.limit_test_batches", str(TEST_BATCHES),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


def expected_lr(base_lr: float, step: int, total: int, cycles: int) -> float:
    period = math.ceil(total / cycles)
    return base_lr / 2 * (math.cos(math.pi * (step % period) / period) + 1)


def recorder_of(cli) -> LrRecorder:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, LrRecorder))


def first_test_batches(cli) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(cli.datamodule.test_dataloader(), TEST_BATCHES))


def softmax_of(state: dict[str, torch.Tensor], batches) -> torch.Tensor:
    """Test-split probabilities of one set of weights, in a freshly built classifier."""
    model = ImageClassifier(backbone="test_resnet", num_classes=10, drop_rate=0.1)  # configs/digits.yaml
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(images).softmax(-1) for images, _ in batches])


def scores(probs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    preds, y = probs.argmax(-1).numpy(), targets.numpy()
    return accuracy_score(y, preds), f1_score(y, preds, average="macro", labels=list(range(10)), zero_division=0)


def assert_metrics(metrics: dict[str, float], key: str, probs: torch.Tensor, targets: torch.Tensor) -> None:
    acc, f1 = scores(probs, targets)
    assert metrics[f"test/acc_{key}"] == pytest.approx(acc, abs=1e-6), key
    assert metrics[f"test/f1_{key}"] == pytest.approx(f1, abs=1e-6), key


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    """One fit: 3 epochs of 4 steps (T=12), 3 cycles, ensemble of the last 2, backbone lr x 0.1, then test."""
    root = tmp_path_factory.mktemp("snap")
    args = [*snapshot_args(3, "--trainer.callbacks.use_last", "2"), "--trainer.callbacks+=test_snapshot.LrRecorder"]
    cli = fit(root, *args, *EVERY_EPOCH, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4",
              "--model.backbone_lr_scale", "0.1", "--test_after_fit", "true")  # fmt: skip
    return root, cli


def test_lr_follows_the_cyclic_cosine_at_every_step(snap) -> None:
    _, cli = snap
    rows = recorder_of(cli).rows
    assert [step for step, _ in rows] == list(range(12))
    for step, (head, backbone) in rows:
        assert head == pytest.approx(expected_lr(LR, step, 12, 3), rel=1e-9)
        assert backbone == pytest.approx(expected_lr(LR * 0.1, step, 12, 3), rel=1e-9)
    restarts = [step for step, (head, _) in rows if head == pytest.approx(LR)]
    assert restarts == [0, 4, 8]


def test_a_snapshot_per_cycle_on_disk_not_on_the_gpu(snap) -> None:
    root, cli = snap
    files = sorted((root / "checkpoints").glob("snapshot-*"))
    assert [f.name for f in files] == ["snapshot-0.pt", "snapshot-1.pt", "snapshot-2.pt"]
    states = [torch.load(f, weights_only=True)["state_dict"] for f in files]
    model_keys = set(cli.model.state_dict())
    assert all(set(s) == model_keys for s in states)  # weights and BN buffers
    assert any("running_mean" in k for k in model_keys)
    assert all(t.device.type == "cpu" for s in states for t in s.values())
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0] if k.startswith("head."))
    last = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(states[2][k], last[k]) for k in last)  # the last cycle ends with the run


def test_ensemble_is_the_mean_of_the_snapshots_softmax(snap) -> None:
    root, cli = snap
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    batches = first_test_batches(cli)
    targets = torch.cat([t for _, t in batches])
    assert set(targets.tolist()) == set(range(10))  # every class present: sklearn and torchmetrics F1 agree
    probs = [softmax_of(torch.load(root / "checkpoints" / f"snapshot-{i}.pt")["state_dict"], batches) for i in range(3)]
    for i, p in enumerate(probs[1:], start=1):
        assert_metrics(metrics, f"snapshot_{i}", p, targets)
    assert_metrics(metrics, "ensemble", (probs[1] + probs[2]) / 2, targets)  # use_last=2


def test_a_snapshot_no_ensemble_uses_is_not_tested(snap) -> None:
    _, cli = snap
    tested = {k for k in cli.trainer.callback_metrics if k.startswith("test/") and "_snapshot_" in k}
    assert tested == {f"test/{m}_snapshot_{i}" for m in ("acc", "f1") for i in (1, 2)}  # use_last=2 of 3 cycles


def test_the_result_names_the_phase_and_epoch_of_each_averaged_snapshot(snap) -> None:
    root, _ = snap
    # 3 epochs of 4 steps, 3 cycles: snapshot i is taken at the end of epoch i, a full fine-tune (every epoch trains
    # the backbone); the ensemble of the last 2 is snapshots 1 and 2
    assert [torch.load(root / "checkpoints" / f"snapshot-{i}.pt")["epoch"] for i in range(3)] == [0, 1, 2]
    result = RunResult.read(root / "result.json")
    assert result is not None and result.tested_snapshots == "fine-tune epoch 1, fine-tune epoch 2"


def test_validate_logs_each_snapshot_and_the_ensemble(snap) -> None:
    root, _ = snap
    cli = run_cli(["validate", *eval_args(root, root / "checkpoints" / "last.ckpt"), *snapshot_args(3)])
    metrics = cli.trainer.callback_metrics
    assert {"val/acc_snapshot_2", "val/f1_snapshot_0", "val/acc_ensemble", "val/f1_ensemble"} <= set(metrics)
    assert float(metrics["val/acc"]) == float(metrics["val/acc_snapshot_2"])  # last.ckpt is snapshot 2


@pytest.mark.slow
def test_toolkit_test_command_reports_snapshots_and_ensemble(snap) -> None:
    root, cli = snap
    result = toolkit_cmd("test", *eval_args(root, root / "checkpoints" / "last.ckpt"), "--config", SNAPSHOT_YAML)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = {k: float(v) for k, v in re.findall(r"(test/[a-z0-9_]+)\W+([-+0-9.e]+)", result.stdout)}
    batches = first_test_batches(cli)
    targets = torch.cat([t for _, t in batches])
    probs = [softmax_of(torch.load(root / "checkpoints" / f"snapshot-{i}.pt")["state_dict"], batches) for i in range(3)]
    for i, p in enumerate(probs):
        assert_metrics(printed, f"snapshot_{i}", p, targets)
    assert_metrics(printed, "ensemble", sum(probs) / 3, targets)  # configs/snapshot.yaml: all 3 cycles


def test_checkpoint_ensemble_averages_independent_checkpoints(snap, probe, tmp_path: Path) -> None:
    members = [snap[0] / "checkpoints" / "last.ckpt", probe[0] / "checkpoints" / "last.ckpt"]
    listing = tmp_path / "members.yaml"  # a config file: the same list in whichever command-line form the CLI takes
    listing.write_text(yaml.safe_dump({"ensemble_ckpts": [str(m) for m in members]}))
    cli = run_cli(["test", *eval_args(tmp_path, members[0]), "--config", str(listing)])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    batches = first_test_batches(cli)
    targets = torch.cat([t for _, t in batches])
    probs = [softmax_of(torch.load(m, weights_only=False)["state_dict"], batches) for m in members]
    for i, p in enumerate(probs):
        assert_metrics(metrics, f"member_{i}", p, targets)
    assert_metrics(metrics, "ensemble", (probs[0] + probs[1]) / 2, targets)
    assert metrics["test/acc"] == metrics["test/acc_member_0"]


def test_checkpoint_of_another_architecture_is_refused(snap, tmp_path: Path) -> None:
    from toolkit.model.classifier import ImageClassifier

    other = tmp_path / "efficientnet.ckpt"  # a member whose weights belong to another backbone
    torch.save({"state_dict": ImageClassifier(backbone="test_efficientnet").state_dict()}, other)
    listing = tmp_path / "members.yaml"
    listing.write_text(yaml.safe_dump({"ensemble_ckpts": [str(other)]}))
    args = ["--config", DIGITS, "--config", str(listing), "--ckpt_path", str(snap[0] / "checkpoints" / "last.ckpt")]
    with pytest.raises(ToolkitError, match="does not fit the model configured"):
        run_cli(["test", *args, "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A linear probe with 2 cycles over 2 epochs of 2 steps."""
    root = tmp_path_factory.mktemp("probe")
    cli = fit(root, *snapshot_args(2), "--model.freeze_backbone", "true", "--trainer.max_epochs", "2",
              "--trainer.limit_train_batches", "2", "--test_after_fit", "true")  # fmt: skip
    return root, cli


def test_linear_probe_snapshots_share_the_frozen_backbone(probe) -> None:
    root, cli = probe
    first, second = (torch.load(root / "checkpoints" / f"snapshot-{i}.pt")["state_dict"] for i in range(2))
    backbone = [k for k in first if k.startswith("backbone.")]
    assert backbone and all(torch.equal(first[k], second[k]) for k in backbone)
    assert not all(torch.equal(first[k], second[k]) for k in first if k.startswith("head."))
    assert {"test/acc_ensemble", "test/f1_ensemble", "test/acc_snapshot_1"} <= set(cli.trainer.callback_metrics)


def test_resume_mid_cycle_keeps_schedule_and_snapshots(tmp_path: Path) -> None:
    # 3 epochs of 4 steps in 2 cycles of 6: the crash at step 8 falls inside cycle 1, after snapshot 0
    args = [*snapshot_args(2), *EVERY_EPOCH, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "4"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path, *args, "--trainer.callbacks+=test_snapshot.CrashAtEpoch2")
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in ckpts.glob("snapshot-*")] == ["snapshot-0.pt"]
    digest = hashlib.sha256((ckpts / "snapshot-0.pt").read_bytes()).hexdigest()

    cli = fit(tmp_path, *args, "--trainer.callbacks+=test_snapshot.LrRecorder", "--ckpt_path", "last")
    rows = recorder_of(cli).rows
    assert [step for step, _ in rows] == [8, 9, 10, 11]
    for step, lrs in rows:
        assert lrs == pytest.approx([expected_lr(LR, step, 12, 2)] * 2, rel=1e-9)
    assert sorted(p.name for p in ckpts.glob("snapshot-*")) == ["snapshot-0.pt", "snapshot-1.pt"]
    assert hashlib.sha256((ckpts / "snapshot-0.pt").read_bytes()).hexdigest() == digest
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, SnapshotEnsemble))
    assert [Path(p).name for p in callback.snapshots] == ["snapshot-0.pt", "snapshot-1.pt"]

    # a different budget cannot continue this schedule: clear error, the checkpoint untouched (result.json goes
    # first: a finished run is refused before its schedule is read)
    (tmp_path / "result.json").unlink()
    before = (ckpts / "last.ckpt").stat().st_mtime_ns
    with pytest.raises(ToolkitError, match="cannot resume"):
        fit(tmp_path, *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert (ckpts / "last.ckpt").stat().st_mtime_ns == before


def test_cycles_that_do_not_fit_the_budget_fail_before_training(tmp_path: Path) -> None:
    assert cycle_length(12, 3) == 4 and cycle_length(10, 3) == 4
    with pytest.raises(ToolkitError, match="only 3 cycles"):
        cycle_length(5, 4)  # 2 steps per cycle: the 4th would start after the run ends
    with pytest.raises(ToolkitError, match="does not fit a run of 3 optimizer steps"):
        fit(tmp_path, *snapshot_args(5))  # conftest.QUICK: 1 epoch of 3 steps
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ToolkitError, match="use_last"):
        SnapshotEnsemble(cycles=2, use_last=3)
    with pytest.raises(ToolkitError, match="not found: nowhere"):
        CheckpointEnsemble(["nowhere.ckpt"])


def test_snapshot_config_parses() -> None:
    check_args(["fit", "--config", DIGITS, "--config", SNAPSHOT_YAML])


def test_the_schedule_without_warmup_is_torchs_cosine_with_warm_restarts() -> None:
    # 60 steps in 4 cycles: torch's CosineAnnealingWarmRestarts(T_0=ceil(T/M)) is Huang et al.'s formula, and the
    # callback's schedule (LambdaLR of CyclicSchedule) without probe steps or warmup is the same at every step
    param = torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [param], "lr": LR}, {"params": [], "lr": LR * 0.1}]
    reference = torch.optim.SGD(groups)
    ours = torch.optim.SGD([{**g} for g in groups])
    restarts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(reference, T_0=cycle_length(60, 4))
    cyclic = torch.optim.lr_scheduler.LambdaLR(ours, CyclicSchedule(0, cycle_length(60, 4)))
    for step in range(60):
        lrs = [g["lr"] for g in reference.param_groups]
        assert lrs == pytest.approx([expected_lr(LR, step, 60, 4), expected_lr(LR * 0.1, step, 60, 4)], abs=1e-15)
        assert [g["lr"] for g in ours.param_groups] == pytest.approx(lrs, rel=1e-12, abs=1e-15)
        reference.step(), ours.step(), restarts.step(), cyclic.step()


def test_probe_steps_then_cycles_with_a_warmup_each_by_hand() -> None:
    schedule = CyclicSchedule(start=5, cycle_steps=6, warmup_steps=2)
    assert [schedule(t) for t in range(5)] == [1.0] * 5  # the probe epochs
    for cycle in range(2):  # each cycle: 1/3, 2/3, then the cosine from 1 to 0 over the 4 remaining steps
        t0 = 5 + 6 * cycle
        assert [schedule(t0 + i) for i in range(6)] == pytest.approx(
            [1 / 3, 2 / 3, *[(math.cos(math.pi * k / 4) + 1) / 2 for k in range(4)]]
        )


def test_lightning_steps_and_monitors_the_snapshot_scheduler(snap) -> None:
    _, cli = snap
    (config,) = cli.trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR)
    schedule = config.scheduler.lr_lambdas[0]  # one per param group, the same object
    assert (config.interval, schedule.cycle_steps, config.scheduler.last_epoch) == ("step", 4, 12)


def test_lp_ft_cycles_over_the_fine_tuning_steps_with_a_warmup_per_restart(tmp_path: Path) -> None:
    # LP->FT with the L-BFGS probe: epoch 0 is the probe (4 steps, no snapshot), epochs 1-3 (12 steps) are 3 cycles of
    # 4 steps, each warming up over 1 step; every snapshot is a fine-tuned one, and the ensemble averages all 3
    args = [*snapshot_args(3, "--trainer.callbacks.warmup", "0.25"), "--trainer.callbacks+=test_snapshot.LrRecorder"]
    lpft = ["--model.freeze_backbone", "true", "--model.unfreeze_at_epoch", "1", "--model.probe", "lbfgs"]
    cli = fit(tmp_path, *args, *lpft, *EVERY_EPOCH, "--trainer.max_epochs", "4", "--trainer.limit_train_batches", "4",
              "--test_after_fit", "true")  # fmt: skip
    rows = dict(recorder_of(cli).rows)  # the steps that stepped the optimizer, with their lrs
    fine_tuning = sorted(step for step in rows if step >= 4)
    assert fine_tuning == list(range(4, 16))
    for step in fine_tuning:  # the head's lr: warmup 1/2 at each cycle's first step, then the cosine over 3 steps
        position = (step - 4) % 4
        factor = 0.5 if position == 0 else (math.cos(math.pi * (position - 1) / 3) + 1) / 2
        assert rows[step][0] == pytest.approx(LR * factor, rel=1e-9), step
    epochs = [torch.load(tmp_path / "checkpoints" / f"snapshot-{i}.pt")["epoch"] for i in range(3)]
    assert epochs == [1, 2, 3]  # no probe snapshot
    result = RunResult.read(tmp_path / "result.json")
    assert result is not None
    assert result.tested_snapshots == "fine-tune epoch 1, fine-tune epoch 2, fine-tune epoch 3"
