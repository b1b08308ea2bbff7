"""Optimizers and schedules from config: param groups, backbone lr scale, warmup + cosine/step/constant."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import fit

from toolkit.model.schedules import WarmupSchedule


def _sched(schedule: str, **kwargs) -> tuple[WarmupSchedule, torch.optim.Optimizer]:
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}, {"params": [], "lr": 0.01}])
    return WarmupSchedule(opt, schedule, **kwargs), opt


def test_warmup_then_cosine_matches_the_formula() -> None:
    sched, opt = _sched("cosine", warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for t, (head, backbone) in enumerate(lrs):
        expected = (t + 1) / 5 if t < 4 else 0.5 * (1 + math.cos(math.pi * (t - 4) / 16))
        assert head == pytest.approx(0.1 * expected) and backbone == pytest.approx(0.01 * expected)


def test_step_and_constant_schedules() -> None:
    sched, opt = _sched("step", warmup_steps=0, total_steps=10, step_every=3, gamma=0.5)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3 + [0.0125])
    sched, opt = _sched("constant", warmup_steps=0)
    assert opt.param_groups[0]["lr"] == 0.1


def test_sgd_nesterov_with_backbone_lr_scale_from_the_cli(tmp_path: Path) -> None:
    cli = fit(
        tmp_path,
        "--model.optimizer",
        "torch.optim.SGD",
        "--model.optimizer.lr",
        "0.05",
        "--model.optimizer.momentum",
        "0.9",
        "--model.optimizer.nesterov",
        "true",
        "--model.lr_scheduler",
        "toolkit.model.schedules.WarmupSchedule",
        "--model.lr_scheduler.schedule",
        "constant",
        "--model.lr_scheduler.warmup_steps",
        "0",
        "--model.backbone_lr_scale",
        "0.1",
    )
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    head, backbone = optimizer.param_groups
    assert (head["name"], backbone["name"]) == ("head", "backbone")
    assert head["lr"] == pytest.approx(0.05) and backbone["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("optimizer", ["torch.optim.Adagrad", "torch.optim.RMSprop", "torch.optim.Adam"])
def test_other_optimizers_with_a_torch_step_scheduler(tmp_path: Path, optimizer: str) -> None:
    cli = fit(
        tmp_path,
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.optimizer",
        optimizer,
        "--model.lr_scheduler",
        "torch.optim.lr_scheduler.StepLR",
        "--model.lr_scheduler.step_size",
        "1",
    )
    assert type(cli.trainer.optimizers[0]).__name__ == optimizer.rsplit(".", 1)[1]
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))


def test_schedules_sized_in_steps_get_the_trainers_estimate_unless_configured() -> None:
    from functools import partial

    from toolkit.model.schedules import build_lr_scheduler

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    scheduler, per_step = build_lr_scheduler(WarmupSchedule, optimizer(), 40)  # the classifier's default
    assert (scheduler.total_steps, per_step) == (40, True)
    scheduler, _ = build_lr_scheduler(partial(WarmupSchedule, schedule="cosine", total_steps=None), optimizer(), 40)
    assert scheduler.total_steps == 40
    scheduler, _ = build_lr_scheduler(partial(WarmupSchedule, total_steps=100), optimizer(), 40)  # set: kept
    assert scheduler.total_steps == 100
    one_cycle, per_step = build_lr_scheduler(partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1), optimizer(), 40)
    assert (one_cycle.total_steps, per_step) == (40, True)
    step_lr, per_step = build_lr_scheduler(partial(torch.optim.lr_scheduler.StepLR, step_size=1), optimizer(), 40)
    assert isinstance(step_lr, torch.optim.lr_scheduler.StepLR) and not per_step


def test_the_schedule_starts_when_the_backbone_does() -> None:
    # 8 probe steps at the initial lr, then warmup over 25 % of the 12 fine-tuning steps (3) and the cosine after it
    sched, opt = _sched("cosine", warmup_steps=0.25, total_steps=20, start_steps=8)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1.0] * 8 + [1 / 4, 2 / 4, 3 / 4] + [0.5 * (1 + math.cos(math.pi * k / 9)) for k in range(9)]
    assert lrs == pytest.approx([0.1 * e for e in expected])


def test_an_lp_ft_fit_warms_up_from_its_first_fine_tuning_step(tmp_path: Path) -> None:
    # 1 probe epoch (L-BFGS: no optimizer step) and 2 fine-tuning epochs of 3 steps: the classifier passes the 3
    # probe steps, so the warmup (half the 6 fine-tuning steps) starts at the first fine-tuning step
    cli = fit(tmp_path, "--trainer.max_epochs", "3", "--model.freeze_backbone", "true", "--model.unfreeze_at_epoch",
              "1", "--model.probe", "lbfgs", "--model.lr_scheduler.init_args.warmup_steps", "0.5")  # fmt: skip
    (config,) = cli.trainer.lr_scheduler_configs
    assert (config.scheduler.start_steps, config.scheduler.total_steps, config.scheduler.warmup_steps) == (3, 6, 3)
    assert config.scheduler.factor(3) == pytest.approx(1 / 4)  # the first fine-tuning step, warming up
