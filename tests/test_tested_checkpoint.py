"""The tested checkpoint is part of the result: its epoch and phase reach result.json, W&B and runs.csv, and a run
that tested a checkpoint from before its variant's change acts is "change never tested", never averaged.

Real in-process LP->FT fits of timm's tiny ``test_resnet`` (an L-BFGS probe epoch, then one fine-tuning step) on
digits, logged to W&B offline, then the real report. The variant's fine-tuning step is a wrecking one (backbone lr
x1000), so its best-val checkpoint is the probe epoch's: its change (``model.backbone_lr_scale``) was never tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import timm
import torch
import wandb
from conftest import fit

from toolkit.model.features import CACHE_ENV
from toolkit.report.build import build_report
from toolkit.report.health import UNTESTED
from toolkit.report.untested import effect_epoch
from toolkit.report.wandb_log import read_run
from toolkit.study.result import RunResult

NAME = "tested"
VARIANTS = {"full": [], "wreck-ft": ["--model.backbone_lr_scale", "1000"]}


def test_a_probe_epoch_checkpoint_is_recorded_and_its_fine_tuning_change_never_tested(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "features"))
    torch.manual_seed(3)
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0, zero_init_last=False).state_dict(), weights)
    logs = {}
    for variant, extra in VARIANTS.items():
        run_dir = tmp_path / NAME / variant / "seed0"
        cli = fit(
            run_dir, "--test_after_fit", "true", "--model.pretrained", str(weights), "--model.drop_rate", "0.0",
            "--model.freeze_backbone", "true", "--model.probe", "lbfgs", "--model.probe_l2", "[1e-3]",
            "--model.unfreeze_at_epoch", "1", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1.0",
            "--trainer.limit_test_batches", "1.0", "--trainer.limit_train_batches", "1",
            "--ablation.name", NAME, "--ablation.variant", variant, "--ablation.seed", "0", *extra,
        )  # fmt: skip
        if variant == "wreck-ft":
            assert cli.trainer.checkpoint_callback.best_model_path.endswith("epoch000.ckpt")  # the precondition
            result = RunResult.read(run_dir / "result.json")
            assert (result.tested_epoch, result.tested_phase, result.finetune_from) == (0, "probe", 1)
            assert json.loads((run_dir / "result.json").read_text())["tested_epoch"] == 0
            logs[variant] = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    wandb.teardown()
    summary = read_run(logs["wreck-ft"]).summary  # the W&B summary, as the log on disk holds it
    assert summary["health/tested_epoch"] == 0 and summary["health/tested_phase"] == "probe"
    report = build_report(NAME, "full", ["test/acc"], root=tmp_path, out=tmp_path / "report")
    runs = pd.read_csv(tmp_path / "report" / "runs.csv").set_index("variant")
    assert runs.loc["wreck-ft", "health"] == UNTESTED and not runs.loc["wreck-ft", "counted"]
    assert runs.loc["wreck-ft", "health/tested_epoch"] == 0 and runs.loc["wreck-ft", "health/tested_phase"] == "probe"
    assert "model.backbone_lr_scale" in runs.loc["wreck-ft", "reason"]
    row = report.table.set_index("variant").loc["wreck-ft"]
    assert row["n"] == 0 and row["excluded"] == 1  # listed and flagged, not averaged
    assert UNTESTED in report.markdown


def test_when_a_change_acts() -> None:
    # fine-tuning switches act from the first fine-tuning epoch, never for a probe; head switches from epoch 0
    assert effect_epoch(["model.batchnorm"], 1, lbfgs_probe=False) == (1, "model.batchnorm")
    assert effect_epoch(["model.batchnorm"], None, lbfgs_probe=False) == (None, "model.batchnorm")
    assert effect_epoch(["model.drop_rate"], 1, lbfgs_probe=False) == (0, "model.drop_rate")
    assert effect_epoch(["model.label_smoothing"], 1, lbfgs_probe=True) == (0, "model.label_smoothing")
    # the L-BFGS solve starts from a zero head without dropout: head init and dropout act once fine-tuning starts
    assert effect_epoch(["model.drop_rate"], 1, lbfgs_probe=True) == (1, "model.drop_rate")
    # the lr acts in an SGD probe, but only after an L-BFGS probe (no optimizer step in its epochs)
    assert effect_epoch(["model.optimizer.init_args.lr"], 1, lbfgs_probe=False)[0] == 0
    assert effect_epoch(["model.optimizer.init_args.lr"], 1, lbfgs_probe=True)[0] == 1
    # a change of several keys has taken effect once all of them act
    assert effect_epoch(["trainer.callbacks", "data.augment"], 2, lbfgs_probe=True) == (2, "data.augment")
