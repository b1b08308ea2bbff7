"""The converged (L-BFGS) linear probe: scikit-learn's logistic regression on the same frozen features agrees.

Real in-process fits of timm's tiny ``test_resnet`` (fixed random weights loaded as "pretrained") on digits; the
reference extracts the features itself with plain torch and fits ``sklearn.linear_model.LogisticRegression`` for
each C of the same grid, choosing C on val by the same rule (accuracy, then log-loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import fit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from torch.utils.data import DataLoader

from toolkit.model.features import CACHE_ENV
from toolkit.model.probe import DEFAULT_L2_GRID

LBFGS = ["--model.freeze_backbone", "true", "--model.probe", "lbfgs", "--model.drop_rate", "0.0"]
STOP = json.dumps(
    [
        {
            "class_path": "lightning.pytorch.callbacks.EarlyStopping",
            "init_args": {"monitor": "val/loss", "mode": "min", "divergence_threshold": -1.0},
        }
    ]
)
FULL = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--test_after_fit", "true"]


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "features"))
    torch.manual_seed(3)
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0, zero_init_last=False).state_dict(), path)
    return str(path)


def _features(backbone: torch.nn.Module, samples) -> tuple[np.ndarray, np.ndarray]:
    backbone.eval()
    with torch.no_grad():
        feats = torch.cat([backbone(images) for images, _ in DataLoader(samples, batch_size=256)])
    return feats.double().numpy(), np.asarray(samples.labels)


def test_lbfgs_probe_matches_sklearn_logistic_regression(tmp_path: Path, weights: str) -> None:
    cli = fit(tmp_path / "run", *LBFGS, *FULL, "--model.pretrained", weights, "--trainer.max_epochs", "1", quick=False)
    splits = cli.datamodule.splits
    (xtr, ytr), (xva, yva), (xte, yte) = (
        _features(cli.model.backbone, s) for s in (splits.train, splits.val, splits.test)
    )
    best = None
    for l2 in sorted(DEFAULT_L2_GRID, reverse=True):  # the same grid and rule, in scikit-learn's C
        ref = LogisticRegression(C=1 / (l2 * len(ytr)), max_iter=5000, tol=1e-8).fit(xtr, ytr)
        key = (ref.score(xva, yva), -log_loss(yva, ref.predict_proba(xva), labels=ref.classes_))
        if best is None or key > best[0]:
            best = (key, l2, ref)
    _, l2, ref = best
    sk_acc = ref.score(xte, yte)
    run_acc = float(cli.trainer.callback_metrics["test/acc"])
    assert abs(run_acc - sk_acc) <= 0.01, (run_acc, sk_acc, l2)
    assert run_acc > 0.5  # a real probe on these features, not chance
    # converged: the head's objective at the chosen l2 is no worse than scikit-learn's optimum
    linear = cli.model.head[-1]
    logits = torch.as_tensor(xtr) @ linear.weight.double().T + linear.bias.double()
    ours = float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(ytr))) + 0.5 * l2 * float(
        linear.weight.double().pow(2).sum()
    )
    theirs = log_loss(ytr, ref.predict_proba(xtr), labels=ref.classes_) + 0.5 * l2 * float((ref.coef_**2).sum())
    assert ours <= theirs + 1e-4, (ours, theirs)


def test_lbfgs_lp_ft_resumes_exactly_and_fine_tunes_from_the_solved_head(tmp_path: Path, weights: str) -> None:
    common = [*LBFGS, "--model.pretrained", weights, "--model.unfreeze_at_epoch", "1", "--seed_everything", "5"]
    common += ["--model.probe_l2", "[1e-3]"]  # one strength: the solve is tested above, here its resume
    straight = fit(tmp_path / "straight", *common, "--trainer.max_epochs", "2")
    # stopped cleanly after the probe epoch, as a kill there would leave it (last.ckpt of epoch 0 on disk)
    probe_only = fit(tmp_path / "stopped", *common, "--trainer.max_epochs", "2", "--trainer.callbacks", STOP)
    assert probe_only.trainer.current_epoch == 1 and probe_only.model._probe_solved
    solved = {k: v.clone() for k, v in probe_only.model.head.state_dict().items()}
    resumed = fit(tmp_path / "stopped", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.model._probe_solved  # restored from the checkpoint, not solved again
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(value, resumed.model.state_dict()[name], rtol=0, atol=0)
    # the probe epoch took no optimizer step; fine-tuning then moved the head away from the solution
    ckpt = torch.load(next((tmp_path / "stopped" / "checkpoints").glob("last*.ckpt")), weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["probe_solved"]
    assert not torch.equal(straight.model.head.state_dict()["0.weight"], solved["0.weight"])


def test_a_solved_probe_is_cached_by_its_inputs_and_a_damaged_entry_is_solved_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolkit.model.features import solve_probe_cached
    from toolkit.model.probe import solve_probe

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 8, generator=gen), torch.arange(60) % 3
    val = (torch.randn(30, 8, generator=gen), torch.arange(30) % 3)
    first = solve_probe_cached((x, y), val, 3, DEFAULT_L2_GRID, 0.0)
    (entry,) = (tmp_path / "cache").glob("probe-*.pt")
    again = solve_probe_cached((x, y), val, 3, DEFAULT_L2_GRID, 0.0)
    reference = solve_probe((x, y), val, 3, DEFAULT_L2_GRID, 0.0)  # solved without any cache
    for solution in (first, again):
        assert torch.equal(solution.weight, reference.weight) and torch.equal(solution.bias, reference.bias)
        assert (solution.l2, solution.val_acc, solution.grid) == (reference.l2, reference.val_acc, reference.grid)
    other = solve_probe_cached((x, (y + 1) % 3), val, 3, DEFAULT_L2_GRID, 0.0)  # other labels: another entry
    assert len(list((tmp_path / "cache").glob("probe-*.pt"))) == 2 and not torch.equal(other.weight, first.weight)
    entry.write_bytes(b"damaged")
    assert torch.equal(solve_probe_cached((x, y), val, 3, DEFAULT_L2_GRID, 0.0).weight, reference.weight)
