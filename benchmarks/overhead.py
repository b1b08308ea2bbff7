"""The toolkit's training epoch vs a hand-written PyTorch loop: same model, data, batches and optimizer.

For each model (timm ``test_resnet`` and ``resnet18`` at 32 px on digits, ``configs/digits.yaml``: AdamW lr 3e-3,
batch 64, ``augment: basic``), alternating in one process: a ``toolkit fit`` (in-process, W&B offline logging,
metrics, lr schedule; validation off so the epoch is the training epoch) and a plain loop over the same data
module's train loader (``zero_grad``, forward, cross-entropy, backward, ``step``). The first epoch of each fit is
a warm-up and is not counted. Also times one pass over the loader alone: the data loading and transform share.

    python benchmarks/overhead.py [--models test_resnet resnet18] [--rounds 2] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from typing_extensions import override

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yaml")


class TrainEpochTimer(pl.Callback):
    """Wall time of each training epoch (before the end-of-epoch checkpoint: callbacks run before checkpoints)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.epochs: list[float] = []

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self.start)


def _class_path(cls: type) -> str:
    """Where jsonargparse finds ``cls``: ``__main__.X`` when run as ``python benchmarks/overhead.py`` (the documented
    way, where no ``benchmarks`` package is importable), ``benchmarks.overhead.X`` under ``python -m``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def toolkit_epochs(model: str, epochs: int, root: Path) -> list[float]:
    from toolkit.lightning_cli import run_cli

    cli = run_cli(
        [
            "fit",
            "--config",
            DIGITS,
            "--model.backbone",
            model,
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            str(root),
            "--trainer.callbacks",
            json.dumps([{"class_path": _class_path(TrainEpochTimer)}]),
        ]
    )
    timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "TrainEpochTimer")  # imported by path
    return timer.epochs[1:]


def plain_epochs(model_name: str, epochs: int) -> tuple[list[float], float]:
    from toolkit.data.datamodule import ImageDataModule

    data = ImageDataModule(backbone=model_name, image_size=32, augment="basic", batch_size=64)
    data.setup("fit")
    loader = data.train_dataloader()
    model = timm.create_model(model_name, pretrained=False, num_classes=data.num_classes, drop_rate=0.1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for images, targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), targets)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in loader:
        pass
    return times[1:], time.perf_counter() - start


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["test_resnet", "resnet18"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both sides")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)  # pinned: both sides get the same threads whatever the machine has
    print(f"torch threads: {torch.get_num_threads()}, digits at 32 px, batch 64, AdamW, load {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            kit, plain, loading = [], [], []
            for round_ in range(args.rounds):  # the sides alternate: toolkit first in even rounds, plain in odd
                for side in ("toolkit", "plain") if round_ % 2 == 0 else ("plain", "toolkit"):
                    if side == "toolkit":
                        kit += toolkit_epochs(model, args.epochs, Path(tmp) / f"{model}-{round_}")
                    else:
                        epochs, load = plain_epochs(model, args.epochs)
                        plain += epochs
                        loading.append(load)
            k, p, load = statistics.median(kit), statistics.median(plain), statistics.median(loading)
            print(f"{model}_toolkit_epoch_s: {k:.3f}  (all: {', '.join(f'{t:.2f}' for t in kit)})")
            print(f"{model}_plain_epoch_s: {p:.3f}  (all: {', '.join(f'{t:.2f}' for t in plain)})")
            print(f"{model}_toolkit_over_plain: {k / p:.3f}  (target <= 1.05)")
            print(f"{model}_data_loading_share: {load / p:.1%}  ({load:.3f} s per pass over the train loader)")
        print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
