"""Real training on digits with a tiny timm model: accuracy, linear-probe contract, LP->FT, resume, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit

from toolkit.errors import ToolkitError
from toolkit.model.classifier import ImageClassifier


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _backbone_state_of(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}


def test_three_epochs_on_digits_are_well_above_chance(tmp_path: Path) -> None:
    cli = fit(tmp_path, "--test_after_fit", "true", quick=False)
    metrics = cli.trainer.callback_metrics  # the test metrics of the best checkpoint, tested after fit
    assert cli.trainer.checkpoint_callback.best_model_score > 0.5  # best val/acc; chance is 0.1
    assert metrics["test/acc"] > 0.5
    assert 0 < metrics["test/f1"] <= 1
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    result = json.loads((tmp_path / "result.json").read_text())  # the completion file the ablation runner reads
    assert result["status"] == "done" and result["metrics"]["test/acc"] == pytest.approx(float(metrics["test/acc"]))


class Recorder(pl.Callback):
    """Records the freezing state the optimizer sees at every training batch."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, bool, bool, int]] = []
        #: (epoch, tensors in the optimizer's backbone group): empty while frozen, the whole backbone once released
        self.in_optimizer: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        backbone = pl_module.backbone
        grads = all(p.requires_grad for p in backbone.parameters())
        bn_training = any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        groups = len(trainer.optimizers[0].param_groups)
        self.rows.append((trainer.current_epoch, grads, bn_training, groups))
        group = trainer.optimizers[0].param_groups[1]
        assert group["name"] == "backbone"
        self.in_optimizer.append((trainer.current_epoch, len(group["params"])))


def test_linear_probe_keeps_backbone_bit_identical(tmp_path: Path) -> None:
    weights = tmp_path / "init.pth"
    torch.save(ImageClassifier(num_classes=10).backbone.state_dict(), weights)
    reference = torch.load(weights, weights_only=True)
    cli = fit(tmp_path / "run", "--model.pretrained", str(weights), "--model.freeze_backbone", "true")
    model = cli.model
    after = _state(model.backbone)
    assert after.keys() == reference.keys()
    assert all(torch.equal(after[k], reference[k]) for k in reference), "backbone params or BN buffers moved"
    saved = _backbone_state_of(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    optimizer = cli.trainer.optimizers[0]  # the frozen tensors are not in the optimizer: AdamW never loops over them
    assert [g["name"] for g in optimizer.param_groups] == ["head", "backbone"] and optimizer.param_groups[1][
        "params"
    ] == []
    assert set(optimizer.state) == set(model.head.parameters())
    model.train()  # Lightning calls .train() every epoch: the frozen backbone must stay in eval mode
    assert not any(m.training for m in model.backbone.modules())
    assert model.head.training


def test_lp_to_ft_switches_at_epoch_without_new_groups(tmp_path: Path) -> None:
    weights = tmp_path / "init.pth"
    torch.save(ImageClassifier(num_classes=10).backbone.state_dict(), weights)
    reference = torch.load(weights, weights_only=True)
    lp_ft = ["--model.pretrained", str(weights), "--model.freeze_backbone", "true", "--model.unfreeze_at_epoch", "1"]
    two_epochs_recorded = ["--trainer.max_epochs", "2", "--trainer.callbacks+=test_training.Recorder"]
    cli = fit(tmp_path / "run", *lp_ft, *two_epochs_recorded)
    recorder = next(cb for cb in cli.trainer.callbacks if isinstance(cb, Recorder))
    epoch0 = [row for row in recorder.rows if row[0] == 0]
    epoch1 = [row for row in recorder.rows if row[0] == 1]
    assert epoch0 and all(not grads and not bn for _, grads, bn, _ in epoch0)
    assert epoch1 and all(grads and bn for _, grads, bn, _ in epoch1)
    assert {groups for *_, groups in recorder.rows} == {2}
    n_backbone = len(list(cli.model.backbone.parameters()))
    assert {size for epoch, size in recorder.in_optimizer if epoch == 0} == {0}
    assert {size for epoch, size in recorder.in_optimizer if epoch == 1} == {n_backbone}
    after = _state(cli.model.backbone)
    assert any(not torch.equal(after[k], reference[k]) for k in reference), "backbone did not fine-tune"

    # resume from the mid-way checkpoint (end of epoch 0): same two groups, unfrozen from epoch 1
    epoch0_ckpt = tmp_path / "epoch0.ckpt"
    run2 = tmp_path / "run2"
    fit(run2, *lp_ft, "--trainer.max_epochs", "2", "--trainer.max_steps", "3")  # stops after epoch 0 (3 batches)
    (run2 / "checkpoints" / "last.ckpt").rename(epoch0_ckpt)
    (run2 / "result.json").unlink()  # as after a killed run: a finished one is refused
    saved = torch.load(epoch0_ckpt, weights_only=False)
    assert len(saved["optimizer_states"][0]["param_groups"]) == 2
    resumed = fit(run2, *lp_ft, *two_epochs_recorded, "--ckpt_path", str(epoch0_ckpt))
    rows = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, Recorder)).rows
    assert rows and {r[0] for r in rows} == {1}
    assert all(grads and bn and groups == 2 for _, grads, bn, groups in rows)
    in_optimizer = next(cb for cb in resumed.trainer.callbacks if isinstance(cb, Recorder)).in_optimizer
    assert {size for _, size in in_optimizer} == {n_backbone}
    assert resumed.trainer.current_epoch == 2


def test_same_seed_gives_same_metrics(tmp_path: Path) -> None:
    first = fit(tmp_path / "a", "--seed_everything", "7").trainer.callback_metrics
    second = fit(tmp_path / "b", "--seed_everything", "7").trainer.callback_metrics
    assert {k: float(v) for k, v in first.items()} == {k: float(v) for k, v in second.items()}
    third = fit(tmp_path / "c", "--seed_everything", "8").trainer.callback_metrics
    assert float(third["train/loss"]) != float(first["train/loss"])


def test_predict_writes_the_test_split_predictions(tmp_path: Path) -> None:
    import pandas as pd
    from conftest import QUICK

    from toolkit.lightning_cli import run_cli

    cli = fit(tmp_path / "fit", "--test_after_fit", "true", "--trainer.limit_test_batches", "1.0")
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    run_cli(["predict", *QUICK, "--trainer.default_root_dir", str(tmp_path / "pred"), "--ckpt_path", ckpt])
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == 270 and set(table.columns) >= {"label", "pred", "pred_name", "prob"}
    assert (table.label == table.pred).mean() == pytest.approx(float(cli.trainer.callback_metrics["test/acc"]))


def test_last_checkpoint_is_the_final_epoch_even_without_a_new_best(tmp_path: Path) -> None:
    # frozen backbone and lr 0: val/acc never improves after epoch 0, yet last.ckpt must follow every epoch
    cli = fit(tmp_path, "--trainer.max_epochs", "3", "--model.optimizer.lr", "0.0", "--model.freeze_backbone", "true")
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 9
    assert "epoch000" in cli.trainer.checkpoint_callback.best_model_path
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]


def test_last_checkpoint_is_a_declared_overridable_group(tmp_path: Path) -> None:
    # off: no last.ckpt at all; the top-k checkpoint alone
    fit(tmp_path / "off", "--last_checkpoint.save_top_k", "0")
    assert [p.name for p in (tmp_path / "off" / "checkpoints").iterdir()] == ["best-epoch000.ckpt"]
    # Lightning's save_last beside it would write the same file: refused before anything is built
    with pytest.raises(ToolkitError, match=r"both write last\.ckpt"):
        fit(tmp_path / "both", "--checkpoint.save_last", "true")
    assert not (tmp_path / "both").exists()
