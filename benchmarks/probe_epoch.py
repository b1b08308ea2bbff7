"""A cached linear-probe epoch in the toolkit vs a plain PyTorch loop over the same feature tensors.

``tf_efficientnet_lite0`` (one fixed random init saved as a weights file) at 64 px on digits, frozen, cached
features (``model.feature_cache on``, a private cache folder), W&B off, torch threads pinned. The toolkit side is
``toolkit fit`` in-process (training + validation + checkpoints: what a probe epoch costs in a run); the plain side
takes the very batches the toolkit's train and val loaders served (the cached features) and runs ``zero_grad``,
head forward, cross-entropy, backward, AdamW ``step`` over them, then a no-grad pass over the val batches. The two
sides alternate over ``--rounds``; medians of the epochs after the first of each fit.

    python benchmarks/probe_epoch.py [--epochs 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from typing_extensions import override

ROOT = Path(__file__).resolve().parents[1]


class EpochTimer(pl.Callback):
    """Wall time of each epoch: training, validation and the end-of-epoch checkpoints."""

    def __init__(self) -> None:
        self.start = 0.0
        self.epochs: list[float] = []

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self.start)


def toolkit_side(root: Path, weights: Path, epochs: int) -> tuple[list[float], Any]:
    from toolkit.lightning_cli import run_cli

    timer = f"{EpochTimer.__module__}.{EpochTimer.__qualname__}"  # __main__.EpochTimer as a script
    args = ["fit", "--config", str(ROOT / "configs" / "digits.yaml"), "--model.backbone", "tf_efficientnet_lite0"]
    args += ["--model.freeze_backbone", "true", "--model.feature_cache", "on", "--model.pretrained", str(weights)]
    args += ["--data.augment", "none", "--data.image_size", "64", "--trainer.logger", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args += ["--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(root)]
    args += ["--trainer.callbacks", json.dumps([{"class_path": timer}])]
    cli = run_cli(args)
    found = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "EpochTimer")
    return found.epochs[1:], cli


def plain_side(cli: Any, epochs: int) -> list[float]:
    data = cli.trainer.datamodule
    train = [(x.clone(), y.clone()) for x, y in data.train_dataloader()]
    val = [(x.clone(), y.clone()) for x, y in data.val_dataloader()]
    assert train[0][0].ndim == 2, "the loaders served images, not cached features"
    head = torch.nn.Linear(train[0][0].shape[1], cli.model.hparams.num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        head.train()
        for features, targets in train:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(head(features), targets).backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            for features, targets in val:
                F.cross_entropy(head(features), targets)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    from toolkit.model.features import CACHE_ENV

    print(f"load before: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}, torch threads {torch.get_num_threads()}")
    kit: list[float] = []
    plain: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "features")
        torch.manual_seed(0)
        weights = Path(tmp) / "lite0.pth"
        torch.save(timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict(), weights)
        for round_ in range(args.rounds):
            epochs, cli = toolkit_side(Path(tmp) / f"r{round_}", weights, args.epochs)
            if round_ % 2 == 0:
                kit += epochs
                plain += plain_side(cli, args.epochs)
            else:  # alternate: the plain loop first (its tensors come from the fit before it)
                plain += plain_side(cli, args.epochs)
                kit += toolkit_side(Path(tmp) / f"r{round_}b", weights, args.epochs)[0]
    k, p = statistics.median(kit), statistics.median(plain)
    print(f"toolkit_cached_epoch_s: {k:.4f}  (all: {', '.join(f'{t:.3f}' for t in kit)})")
    print(f"plain_torch_epoch_s: {p:.4f}  (all: {', '.join(f'{t:.3f}' for t in plain)})")
    print(f"toolkit_over_plain: {k / p:.1f}x  (target <= 2x)")
    print(f"load after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
