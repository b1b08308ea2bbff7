"""Linear probe with cached features vs through the frozen backbone every epoch (``model.feature_cache on|off``).

``tf_efficientnet_lite0`` at 64 px on digits, frozen, ``data.augment none``, one process (``toolkit fit`` run
in-process, so both sides skip the same start-up). A callback times the set-up (from ``on_fit_start`` to
``on_train_start``: feature extraction or a cache load, plus the sanity check) and every epoch (train + val +
checkpoints). Prints ``name: value`` lines with the ratios against the issue's targets:

- per epoch: median uncached epoch / median cached epoch (target >= 50x);
- a 10-epoch probe: uncached set-up + 10 epochs vs cached set-up (extraction) + 10 epochs (target >= 8x);
- a 3-seed study: 3 uncached probes vs 3 cached ones, of which the first extracts and the others load (>= 15x).

The uncached probe runs ``--uncached-epochs`` epochs (default 3); its 10-epoch and study figures are that median
epoch times 10 (and 30) plus its set-up. The backbone weights are one random init of the architecture saved to a file
and loaded by every seed, as pretrained weights would be (the ImageNet weights come with the backbone-weights work):
the speed does not depend on the weights.

    python benchmarks/linear_probe.py [--uncached-epochs 3] [--epochs 10] [--seeds 3]
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
from typing_extensions import override

from toolkit.model.features import CACHE_ENV

ROOT = Path(__file__).resolve().parents[1]
PROBE = [
    "--config",
    str(ROOT / "configs" / "digits.yaml"),
    "--model.backbone",
    "tf_efficientnet_lite0",
    "--model.freeze_backbone",
    "true",
    "--data.augment",
    "none",
    "--data.image_size",
    "64",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


class EpochTimer(pl.Callback):
    """Wall times of the set-up and of each epoch (validation and checkpointing included)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.epochs: list[float] = []
        self.train_val: list[float] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.marks["fit_start"] = time.perf_counter()  # callbacks set up before the module (the extraction)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks["setup"] = time.perf_counter() - self.marks["fit_start"]

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.marks["epoch"] = time.perf_counter()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # before ModelCheckpoint's on_validation_end: checkpoint callbacks run last
            self.train_val.append(time.perf_counter() - self.marks["epoch"])

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(time.perf_counter() - self.marks["epoch"])


def probe(mode: str, seed: int, epochs: int, root: Path, weights: Path) -> dict[str, Any]:
    from toolkit.lightning_cli import run_cli

    cli = run_cli(
        [
            "fit",
            *PROBE,
            "--model.feature_cache",
            mode,
            "--model.pretrained",
            str(weights),
            "--seed_everything",
            str(seed),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.default_root_dir",
            str(root / f"{mode}-{seed}"),
            "--trainer.callbacks",
            json.dumps([{"class_path": f"{EpochTimer.__module__}.{EpochTimer.__qualname__}"}]),  # __main__.X: a script
        ]
    )
    timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "EpochTimer")  # imported by path
    assert cli.model._use_feature_cache == (mode == "on")
    return {
        "setup": timer.marks["setup"],
        "epochs": timer.epochs,
        "train_val": timer.train_val,
        "val_acc": float(cli.trainer.callback_metrics["val/acc"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncached-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both sides")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    import timm
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        weights = Path(tmp) / "tf_efficientnet_lite0-random.pth"
        torch.save(timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict(), weights)
        uncached: dict[str, Any] = {}
        cached: list[dict[str, Any]] = []
        # The two sides alternate, one seed at a time (uncached seed 0 after cached seed 0), so drifting load hits
        # both. The cached side's features go to a private cache made here, empty at its first seed: the "cold"
        # extraction is really cold, whatever ~/.cache or $TOOLKIT_FEATURE_CACHE hold.
        os.environ[CACHE_ENV] = str(Path(tmp) / "features")
        for seed in range(args.seeds):
            cached.append(probe("on", seed, args.epochs, Path(tmp), weights))
            if seed == 0:
                uncached = probe("off", 0, args.uncached_epochs, Path(tmp), weights)
    epoch_u = statistics.median(uncached["epochs"])
    epoch_c = statistics.median(cached[0]["epochs"])
    ten_u = uncached["setup"] + args.epochs * epoch_u
    ten_c = cached[0]["setup"] + sum(cached[0]["epochs"])
    study_u = args.seeds * ten_u
    study_c = sum(run["setup"] + sum(run["epochs"]) for run in cached)
    threads = torch.get_num_threads()
    print(f"model: tf_efficientnet_lite0 (fixed random-init weights file) at 64 px on digits, torch threads {threads}")
    print(f"uncached_epoch_s: {epoch_u:.3f}  (all: {', '.join(f'{t:.2f}' for t in uncached['epochs'])})")
    print(f"cached_epoch_s: {epoch_c:.4f}  (all: {', '.join(f'{t:.3f}' for t in cached[0]['epochs'])})")
    tv_u, tv_c = statistics.median(uncached["train_val"]), statistics.median(cached[0]["train_val"])
    print(f"uncached_train_val_s: {tv_u:.3f}  (the epoch before its checkpoints are written)")
    print(f"cached_train_val_s: {tv_c:.4f}  (all: {', '.join(f'{t:.3f}' for t in cached[0]['train_val'])})")
    print(f"per_epoch_speedup_train_val: {tv_u / tv_c:.1f}x  (target >= 50x)")
    print(f"extraction_setup_s: {cached[0]['setup']:.2f}  (train + val features, sanity check)")
    hits = [run["setup"] for run in cached[1:]] or [float("nan")]
    print(f"cache_hit_setup_s: {statistics.median(hits):.3f}")
    print(f"uncached_setup_s: {uncached['setup']:.3f}")
    print(f"per_epoch_speedup_with_checkpoints: {epoch_u / epoch_c:.1f}x  (2 full-model checkpoints per epoch)")
    print(f"ten_epoch_probe_speedup: {ten_u / ten_c:.1f}x  ({ten_u:.1f} s vs {ten_c:.1f} s; target >= 8x)")
    study = f"{study_u / study_c:.1f}x  ({study_u:.1f} s vs {study_c:.1f} s; target >= 15x)"
    print(f"study_{args.seeds}_seeds_speedup: {study}")
    accs = ", ".join(f"{run['val_acc']:.3f}" for run in cached)
    print(f"val_acc_after_{args.epochs}_epochs_cached: {accs}")


if __name__ == "__main__":
    main()
