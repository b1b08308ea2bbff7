"""``toolkit doctor`` on digits with a tiny model: a correct model passes, a x100 head fails step 1, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import DIGITS

from toolkit.doctor import checks
from toolkit.doctor.cli import build, main
from toolkit.errors import ToolkitError
from toolkit.search.spec import load_search


@pytest.fixture(scope="module")
def built():
    model, data, accelerator = build([DIGITS], ["--data.image_size=16", "--data.batch_size=32"])  # 16 px: 4x cheaper
    assert accelerator == "cpu"  # digits.yaml says so
    data.setup("fit")
    return model, data


def _ordered(data):
    return torch.utils.data.DataLoader(data.splits.train, batch_size=data.batch_size, shuffle=False)


def test_a_correct_model_passes_steps_1_and_2(built):
    model, data = built
    step1 = checks.initial_loss(model, _ordered(data), data.num_classes)
    assert step1.passed, step1
    assert step1.values["expected"] == pytest.approx(math.log(10))
    sample = checks.small_sample(_ordered(data), batches=2)
    step2, curve = checks.overfit(model, sample, max_steps=80)
    assert step2.passed, step2
    assert step2.values["epoch_acc"][-1] == 1.0 and len(curve.loss) <= 80
    assert curve.loss[-1] < curve.loss[0]


def test_a_head_initialised_x100_fails_step_1_with_the_diagnosis(built):
    model, data = built
    big = checks.with_optimizer(model, None, None)  # a copy
    with torch.no_grad():
        big.head[-1].weight.mul_(100)
        big.head[-1].bias.mul_(100)
    step = checks.initial_loss(big, _ordered(data), data.num_classes)
    # reference: the same loss by hand on the first batches
    images, targets = next(iter(_ordered(data)))
    with torch.no_grad():
        by_hand = float(torch.nn.functional.cross_entropy(big.train()(images), targets))
    assert not step.passed
    assert step.values["loss"] > 3 * math.log(10) and by_hand > 3 * math.log(10)
    assert "initial logits are too large" in step.advice and "head" in step.advice


@pytest.mark.slow  # the whole recipe: lr_find and four short lr runs
def test_doctor_command_writes_report_curves_and_ranges_the_search_takes(tmp_path, capsys):
    out = tmp_path / "doctor"
    quick = ["--sample-batches", "1", "--overfit-steps", "20", "--check-steps", "6", "--lr-find-steps", "12"]
    code = main(["--config", DIGITS, "--out", str(out), *quick, "--data.image_size=16", "--data.batch_size=32"])
    printed = capsys.readouterr().out
    # the budget before it starts (20 overfit + 12 lr range test + 4 lrs x 6), then the time left as measured
    data, budget = printed.splitlines()[:2]
    assert data.startswith("data: digits, 10 classes, train ") and "val 15% + test 15% held out" in data
    assert budget.startswith("doctor: at most 56 training steps of 32 images"), printed[:500]
    assert "left (" in printed and "s per step so far)" in printed  # the time left, measured
    assert "doctor: step 2 (overfit) took" in printed and "doctor: step 3 (lr checks) took" in printed
    report = json.loads((out / "doctor.json").read_text())
    assert [s["name"].split()[0] for s in report["steps"]] == ["1", "2", "3", "6"]
    assert code == (0 if all(s["passed"] for s in report["steps"][:3]) else 1)
    assert "1 initial loss" in printed and "lr checks" in printed
    assert report["suggested_lr"] in checks.CANDIDATE_LRS
    ranges = yaml.safe_load((out / "ranges.yaml").read_text())
    lr = ranges["model.optimizer.init_args.lr"]
    assert lr["log"] and lr["low"] < report["suggested_lr"] < lr["high"]
    assert sorted(p.name for p in out.glob("curve_*.png")) == sorted(
        ["curve_overfit.png", *(f"curve_lr_{lr:g}.png" for lr in checks.CANDIDATE_LRS)]
    )
    # every candidate run measured its update/param ratio per param group
    assert all(set(c["ratios"]) == {"head", "backbone"} for c in report["curves"][1:])
    # the search takes the ranges file as is
    spec = tmp_path / "search.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "s", "base": [DIGITS], "ranges": str(out / "ranges.yaml"), "stages": [{"name": "a", "trials": 2}]}
        )
    )
    assert set(load_search(spec).ranges) == set(ranges)


def test_the_time_left_is_the_time_per_unit_of_work_so_far_times_the_work_left():
    from types import SimpleNamespace

    from toolkit.doctor.budget import Budget, StepClock

    now = [0.0]
    said: list[str] = []
    budget = Budget(
        overfit_steps=10, lr_find_steps=12, check_steps=5, lrs=4, val_batches=2, batch_size=32, eval_batch_size=64
    )
    assert budget.train_steps == 10 + 12 + 4 * 5 and budget.val_weight == pytest.approx(64 / 96)
    clock = StepClock(budget, say=said.append, clock=lambda: now[0])
    clock.start("overfit", 10)
    for _ in range(6):  # 6 steps of 2 s; it reaches 100 % after 6 of its 10
        now[0] += 2.0
        clock.on_train_batch_end(None, None, None, None, 0)
    # after 5 steps (10 s): 2 s per unit x (37 steps + 8 validation batches x 2/3 of a step)
    assert said == [f"doctor: at most about {(37 + 8 * 64 / 96) * 2:.0f} s left (2.00 s per step so far)"]
    clock.end()  # the 4 steps it did not take leave the budget
    assert clock.left_steps == 42 - 10
    assert clock.seconds_left() == pytest.approx((32 + 8 * 64 / 96) * 2.0)
    for _ in range(3):  # a validation batch at 1 s: weighed as 2/3 of a step
        now[0] += 1.0
        clock.on_validation_batch_end(SimpleNamespace(validating=True), None, None, None, 0)
    per_unit = 15.0 / (6 + 3 * 64 / 96)
    assert clock.seconds_left() == pytest.approx(per_unit * (32 + 5 * 64 / 96))


def test_doctor_refuses_a_missing_config(tmp_path):
    with pytest.raises(ToolkitError, match=r"config 'nope\.yaml' not found"):
        main(["--config", "nope.yaml", "--out", str(tmp_path)])
    assert not tmp_path.joinpath("doctor.json").exists()


def test_a_loss_that_grows_reads_as_a_factor_not_minus_thousands_of_percent():
    from toolkit.doctor.checks import Curve, choose_lr, loss_change

    assert loss_change(0.38) == "-38%" and loss_change(-0.2) == "+20%" and loss_change(-159.0) == "x160"
    assert loss_change(float("nan")) == "diverged"
    falls = Curve("a", loss=[2.0] * 5 + [1.0] * 5)  # halves: -50 %
    grows = Curve("b", loss=[0.01] * 5 + [1.6] * 5)  # 160-fold
    step, best = choose_lr([falls, grows], (0.01, 1.0))
    assert best == 0.01 and "0.01: -50%" in step.measured and "1: x160" in step.measured
    assert "%" not in step.measured.split("1: ")[-1]


def test_step_3_stays_in_the_probe_phase_of_lp_ft():
    from toolkit.doctor.checks import steps_before_unfreeze

    assert steps_before_unfreeze(30, None, 10) == 30
    assert steps_before_unfreeze(30, 2, 10) == 20  # unfreezes at step 20: the check stops there
    assert steps_before_unfreeze(30, 1, 50) == 30


def test_a_zero_initialised_head_gets_no_lr_advice_from_its_update_ratio():
    from toolkit.doctor.checks import Curve
    from toolkit.doctor.cli import _ratio_step

    curve = Curve("lr=0.01", loss=[1.0, 0.5], ratios={"head": 3.0, "backbone": 1e-3})  # head: norm 0 at step 0
    assert "head" in _ratio_step([curve], 0.01).advice
    step = _ratio_step([curve], 0.01, zero_head=True)
    assert step.passed and not step.advice
