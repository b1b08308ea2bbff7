"""The toolkit's fine-tuning step and test pass vs today's plain loop, and its thread policy beside a busy process.

Three comparisons, each measured side by side in this one run:

1. **Step** (in-process, torch pinned to ``--threads``): the toolkit's training step on the quickstart config
   (``configs/quickstart.yaml``: ``tf_efficientnet_lite0`` at 32 px, frozen BN, AdamW, W&B offline; through
   Lightning, timed from ``on_train_batch_start`` to ``on_train_batch_end`` in the fine-tuning epochs, with the
   toolkit's defaults and ``--batch_size``) vs a plain eager NCHW batch-16 loop on the same model (today's step),
   interleaved round by round; CPU time per image, and the fraction of this core's measured sgemm rate (training
   FLOPs = 3x the forward's, counted by ``torch.utils.flop_counter``: its depthwise backward over-counts).
2. **Test pass**: the same fit's test pass over the 1,377 test digits (``on_test_epoch_start`` to ``_end``) vs a
   plain eager NCHW batch-16 inference loop over the same images.
3. **Threads** (``--threads-check``): a hand-run ``toolkit fit`` (the quickstart, 1 fine-tuning epoch, no test)
   beside one busy process (a spinning Python loop), as the user would start it (no ``OMP_NUM_THREADS``), vs the
   same command with ``OMP_NUM_THREADS=1``; wall and CPU time of each subprocess, alternating (the feature cache
   is warm for both after a first, untimed fit).

    python benchmarks/finetune_step.py [--rounds 3] [--batch_size 64] [--threads 1] [--threads-check]

Targets (issue 27): step >= 2.5x, test pass >= 3.5x, hand-run fit beside a busy process <= 1.3x of
``OMP_NUM_THREADS=1``. Run it on an idle machine for the figures; the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
MODEL = "tf_efficientnet_lite0"
SIZE = 32


class StepTimer(pl.Callback):
    """CPU time of each fine-tuning step (backbone trainable) and of the test pass, with their image counts."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []
        self.test: tuple[float, int] = (0.0, 0)
        self._start = 0.0
        self._images = 0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._start = time.process_time()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, idx: int) -> None:
        if not pl_module.freezer.frozen:  # a fine-tuning step (the probe epoch takes none)
            self.steps.append((time.process_time() - self._start, len(batch[1])))

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._images = time.process_time(), 0

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, *args) -> None:
        self._images += len(batch[1])

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.test = (time.process_time() - self._start, self._images)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"  # __main__.StepTimer when run as a script


def toolkit_round(root: Path, batch_size: int) -> tuple[list[float], float]:
    """One quickstart fit with its test: per-image CPU times of its fine-tuning steps (the first one, a warm-up, left
    out) and of its test pass."""
    from toolkit.lightning_cli import run_cli

    cli = run_cli(
        [
            "fit",
            "--config",
            QUICKSTART,
            "--trainer.default_root_dir",
            str(root),
            "--data.batch_size",
            str(batch_size),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.callbacks+",
            _class_path(StepTimer),
        ]
    )
    timer = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "StepTimer")
    steps = [t / n for t, n in timer.steps[1:] if n == batch_size]  # full batches only
    test_s, test_n = timer.test
    return steps, test_s / test_n


def quickstart_test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The quickstart's 1,377 test digits as one tensor (its data options), and their labels."""
    from toolkit.data.datamodule import ImageDataModule

    data = ImageDataModule(backbone=MODEL, image_size=SIZE, augment="none", train_subset=300, eval_subset=120,
                           test_split="rest")  # fmt: skip
    data.setup("test")
    samples = data.splits.test
    return torch.stack([samples[i][0] for i in range(len(samples))]), torch.as_tensor(samples.labels)


def plain_model() -> torch.nn.Module:
    model = timm.create_model(MODEL, pretrained=False, num_classes=10)
    return model.eval()  # frozen BatchNorm (running statistics), as the quickstart; no dropout


def plain_steps(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, steps: int) -> list[float]:
    """Today's step: eager, NCHW, batch 16, AdamW; per-image CPU time of each step after the first."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    times = []
    for step in range(steps + 1):
        index = torch.arange(step * 16, step * 16 + 16) % len(images)
        x, y = images[index], labels[index]
        start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append((time.process_time() - start) / 16)
    return times[1:]


@torch.inference_mode()
def plain_test(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Today's test pass: eager, NCHW, batch 16; CPU time per image."""
    start = time.process_time()
    for chunk in images.split(16):
        model(chunk)
    return (time.process_time() - start) / len(images)


def sgemm_gflops(n: int = 1024, reps: int = 10) -> float:
    """The fp32 matrix-multiply rate per CPU-second (best of ``reps``; CPU time, like the steps), GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - start)
    return 2 * n**3 / best / 1e9


def forward_flops_per_image(model: torch.nn.Module) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(16, 3, SIZE, SIZE))
    return counter.get_total_flops() / 16


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"


def _ms(values: list[float]) -> str:
    return ", ".join(f"{1000 * v:.2f}" for v in values)


def step_and_test(args: argparse.Namespace, tmp: Path) -> None:
    torch.set_num_threads(args.threads)  # pinned: both sides get the same threads whatever the machine has
    gflops = sgemm_gflops()
    model = plain_model()
    train_flops = 3 * forward_flops_per_image(model)
    print(f"sgemm: {gflops:.1f} GFLOP/s on {args.threads} thread(s); training step {train_flops / 1e6:.1f} MFLOP/image")
    images, labels = quickstart_test_images()
    kit_steps, kit_tests, plain_train, plain_tests = [], [], [], []
    for round_ in range(args.rounds):  # alternate which side goes first
        for side in ("toolkit", "plain") if round_ % 2 == 0 else ("plain", "toolkit"):
            if side == "toolkit":
                steps, test = toolkit_round(tmp / f"fit-{round_}", args.batch_size)
                kit_steps.append(statistics.median(steps))
                kit_tests.append(test)
            else:
                plain_train.append(statistics.median(plain_steps(model, images, labels, args.plain_steps)))
                plain_tests.append(plain_test(model, images))
    kit, plain = min(kit_steps), min(plain_train)  # other load only ever adds time
    kit_t, plain_t = min(kit_tests), min(plain_tests)
    print(f"plain_step_ms_per_image (eager NCHW batch 16): {1000 * plain:.2f}  (all: {_ms(plain_train)})")
    print(f"toolkit_step_ms_per_image (batch {args.batch_size}): {1000 * kit:.2f}  (all: {_ms(kit_steps)})")
    print(f"step_speedup: {plain / kit:.2f}x  (target >= 2.5x)")
    fraction = {
        name: train_flops / per_image / 1e9 / gflops for name, per_image in (("plain", plain), ("toolkit", kit))
    }
    print(f"sgemm_fraction: plain {fraction['plain']:.1%}, toolkit {fraction['toolkit']:.1%}")
    print(f"plain_test_ms_per_image (eager NCHW batch 16): {1000 * plain_t:.3f}  (all: {_ms(plain_tests)})")
    print(f"toolkit_test_ms_per_image: {1000 * kit_t:.3f}  (all: {_ms(kit_tests)})")
    print(f"test_speedup: {plain_t / kit_t:.2f}x  (target >= 3.5x)")


def threads_check(args: argparse.Namespace, tmp: Path) -> None:
    """A hand-run fit beside one busy process: the thread policy's pick vs OMP_NUM_THREADS=1 (wall seconds)."""
    exe = Path(sys.executable).with_name("toolkit")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    warm = [str(exe), "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2", "--test_after_fit", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp / "threads-warm")]  # fmt: skip
    done = subprocess.run(warm, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"toolkit fit failed: {done.stderr[-2000:]}")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    times: dict[str, list[float]] = {"policy": [], "OMP_NUM_THREADS=1": []}
    cpu: dict[str, list[float]] = {name: [] for name in times}
    firsts = []
    try:
        for round_ in range(args.rounds):
            for name in times if round_ % 2 == 0 else reversed(list(times)):
                run_env = env if name == "policy" else {**env, "OMP_NUM_THREADS": "1"}
                cmd = [str(exe), "fit", "--config", QUICKSTART, "--trainer.max_epochs", "2",
                       "--test_after_fit", "false", "--trainer.enable_progress_bar", "false",
                       "--trainer.default_root_dir", str(tmp / f"threads-{name}-{round_}")]  # fmt: skip
                start, used = time.perf_counter(), _children_cpu()
                done = subprocess.run(cmd, env=run_env, capture_output=True, text=True, cwd=ROOT)
                times[name].append(time.perf_counter() - start)
                cpu[name].append(_children_cpu() - used)
                if done.returncode != 0:
                    raise SystemExit(f"toolkit fit failed: {done.stderr[-2000:]}")
                if name == "policy":
                    firsts.append(done.stdout.splitlines()[0])
    finally:
        busy.kill()
    policy, one = min(times["policy"]), min(times["OMP_NUM_THREADS=1"])
    print(f"hand-run fit beside a busy process, first line: {firsts[0]}")
    print(f"fit_policy_s: {policy:.1f}  (all: {', '.join(f'{t:.1f}' for t in times['policy'])})")
    print(f"fit_omp1_s: {one:.1f}  (all: {', '.join(f'{t:.1f}' for t in times['OMP_NUM_THREADS=1'])})")
    print(f"policy_over_omp1: {policy / one:.2f}x  (target <= 1.3x)")
    print(f"cpu_s (user + sys): policy {min(cpu['policy']):.1f}, OMP_NUM_THREADS=1 {min(cpu['OMP_NUM_THREADS=1']):.1f}")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64, help="the toolkit side's training batch")
    parser.add_argument("--plain_steps", type=int, default=12, help="timed steps of the plain loop per round")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of both sides of the step")
    parser.add_argument("--threads-check", action="store_true", help="also time a hand-run fit beside a busy process")
    parser.add_argument("--no-step", action="store_true", help="skip the step and test pass comparison")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    print(f"load before: {_load()}; {MODEL} at {SIZE} px, quickstart config")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TOOLKIT_FEATURE_CACHE"] = str(Path(tmp) / "features")  # never the user's cache
        if not args.no_step:
            step_and_test(args, Path(tmp))
        if args.threads_check:
            threads_check(args, Path(tmp))
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
