"""LesionSweep logs what lesioning the blocks by hand and evaluating the tested checkpoint gives."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import fit

from toolkit.callbacks.lesion import lesion_k_key, lesion_key, lesion_sets
from toolkit.model.components import apply_switches, list_residual_blocks


def _accuracy(model: torch.nn.Module, loader, batches: int) -> float:
    correct = total = 0
    with torch.no_grad():
        for index, (images, targets) in enumerate(loader):
            if index == batches:
                break
            correct += int((model(images).argmax(-1) == targets).sum())
            total += len(targets)
    return correct / total


def test_lesion_sweep_matches_hand_lesions(tmp_path: Path) -> None:
    cli = fit(
        tmp_path / "run",
        "--trainer.callbacks+=toolkit.callbacks.lesion.LesionSweep",
        "--trainer.callbacks.samples",
        "2",
        "--test_after_fit",
        "true",
    )
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=False)
    blocks = len(list_residual_blocks(cli.model.backbone))
    assert blocks >= 2
    loader = cli.datamodule.test_dataloader()

    def lesioned(indices: list[int]) -> float:
        model = copy.deepcopy(cli.model).cpu()
        model.load_state_dict(best["state_dict"])
        apply_switches(model.backbone, lesion_blocks=indices)  # the component switch, applied by hand
        return _accuracy(model.eval(), loader, batches=2)

    singles = [lesioned([i]) for i in range(blocks)]
    for i, acc in enumerate(singles):
        assert logged[lesion_key(i)] == pytest.approx(acc, abs=1e-6)
    assert logged[lesion_k_key(1)] == pytest.approx(sum(singles) / blocks, abs=1e-6)
    sets = lesion_sets(blocks, blocks, samples=2, seed=0)[2]
    assert len(sets) == min(2, blocks * (blocks - 1) // 2)
    hand_k2 = sum(lesioned(list(s)) for s in sets) / len(sets)
    assert logged[lesion_k_key(2)] == pytest.approx(hand_k2, abs=1e-6)
    assert lesion_k_key(blocks) in logged and lesion_k_key(blocks + 1) not in logged
    # the sweep leaves the tested model intact: test/acc is the unlesioned checkpoint's accuracy
    intact = copy.deepcopy(cli.model).cpu()
    intact.load_state_dict(best["state_dict"])
    assert logged["test/acc"] == pytest.approx(_accuracy(intact.eval(), loader, batches=2), abs=1e-6)
    assert not any(hasattr(m, "switch") for m in cli.model.backbone.modules())


def test_the_sweep_can_run_on_the_first_test_batches_only(tmp_path: Path) -> None:
    sweep = ["--trainer.callbacks+=toolkit.callbacks.lesion.LesionSweep", "--trainer.callbacks.max_k", "1"]
    cli = fit(tmp_path / "run", *sweep, "--trainer.callbacks.max_batches", "1", "--test_after_fit", "true")
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    best = torch.load(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    loader = cli.datamodule.test_dataloader()
    model = copy.deepcopy(cli.model).cpu()
    model.load_state_dict(best["state_dict"])
    apply_switches(model.backbone, lesion_blocks=[0])
    assert logged[lesion_key(0)] == pytest.approx(_accuracy(model.eval(), loader, batches=1), abs=1e-6)
    intact = copy.deepcopy(cli.model).cpu()
    intact.load_state_dict(best["state_dict"])
    assert logged["test/acc"] == pytest.approx(_accuracy(intact.eval(), loader, batches=2), abs=1e-6)  # all of it


def test_lesion_sets_are_fixed_by_seed() -> None:
    assert lesion_sets(9, 4, 4, 0) == lesion_sets(9, 4, 4, 0)
    sets = lesion_sets(9, 9, 4, 0)
    assert sets[1] == [(i,) for i in range(9)]
    assert all(len(s) == k and len(set(v)) == len(v) for k, v in sets.items() for s in v)
    assert sets[9] == [tuple(range(9))] and len(sets[8]) == 4
