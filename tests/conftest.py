"""Shared test set-up: offline W&B, quiet logs, and helpers to run the toolkit CLI in-process or as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")

#: a short digits run: tiny model, few batches, no progress bar
QUICK = [
    "--config",
    DIGITS,
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


def fit(root: Path, *extra: str, quick: bool = True):
    """Run ``toolkit fit`` in this process (saves the ~8 s import of a subprocess); returns the ToolkitCLI."""
    from toolkit.lightning_cli import run_cli

    args = ["fit", *(QUICK if quick else ["--config", DIGITS, "--trainer.enable_progress_bar", "false"])]
    return run_cli([*args, "--trainer.default_root_dir", str(root), *extra])


def toolkit_cmd(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real ``toolkit`` console command as a subprocess."""
    exe = Path(sys.executable).with_name("toolkit")
    return subprocess.run(
        [str(exe), *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def weights_with_trained_statistics(path: Path, backbone: str = "test_resnet", seed: int = 0) -> str:
    """A weights file of a random-init ``backbone`` (no zero-init gammas) whose BatchNorm statistics have been trained
    on a few random batches: like pretrained weights, frozen or fused BatchNorm then normalises (toolkit refuses
    frozen/fused BatchNorm on untrained statistics)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(backbone, num_classes=0, zero_init_last=False).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "run"


class Payload:
    """Unpickled by an ordinary unpickler, this runs ``touch <marker>`` (as an attacker's ``os.system`` would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payload_checkpoint(good: Path, out: Path, marker: Path, where: str = "top") -> Path:
    """A copy of the checkpoint ``good`` whose pickle also holds a ``__reduce__`` payload that would create ``marker``
    (``where``: ``top`` = a top-level key, ``hparams`` = inside its hyperparameters, ``state_dict`` = beside the
    weights)."""
    import torch

    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    target = checkpoint if where == "top" else checkpoint[{"hparams": "hyper_parameters"}.get(where, where)]
    target["payload"] = Payload(marker)
    torch.save(checkpoint, out)
    return out
