"""Save the random state with each checkpoint and restore it on resume, so a resumed run equals an uninterrupted one.

Lightning checkpoints the weights, optimizer, schedulers and loop counters, but not the random generators: a run
resumed from ``last.ckpt`` would shuffle its next epoch differently (the sampler draws from the global torch
generator), draw other augmentations (timm transforms use Python's ``random``) and other dropout masks, and end
with other numbers than the run that was never stopped. Lightning has no public callback for this, so this one
saves Python's, NumPy's and torch's (CPU and CUDA) states in the checkpoint.

The shuffle order is made a function of (seed, epoch) as well: the uninterrupted run creates each epoch's
training iterator after ``on_train_epoch_start`` (drawing from the global generator), while Lightning creates the
resumed run's first iterator before any callback could restore the state. So at each epoch start the training
sampler and loader get private generators seeded from the run's seed and the epoch, and the global stream never
depends on when an iterator was made. (With ``num_workers > 0`` the workers of the resumed epoch are still seeded by
the loader's own draw; their augmentations differ from the uninterrupted run in that one epoch.)

When to restore matters: the state is captured when the checkpoint is written (end of an epoch, at validation end),
and the uninterrupted run goes on from there straight into the next epoch. The resumed run restores it at
``on_fit_start`` and then runs its sanity check, which draws a seed for each validation dataloader iterator; to
keep both streams equal, every run (resumed or not) runs its sanity check on a saved-and-restored random state.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, RandomSampler
from typing_extensions import override

_SAMPLER_STREAM, _LOADER_STREAM = 1, 2  # distinct streams: the loader's draw must not shift the sampler's order


def capture_random_state() -> dict[str, Any]:
    """The state of every random generator a training step can draw from."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain types and tensors only: Lightning loads checkpoints with ``weights_only=True``, which refuses ndarrays
    numpy = {
        "kind": kind,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "gauss": (has_gauss, gauss),
    }
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Set every generator back to ``state`` (from `capture_random_state`)."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], *numpy["gauss"]))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class RandomStateCheckpoint(pl.Callback):
    """Checkpoints the random state; a fit resumed from such a checkpoint continues the same random stream.

    Added by ``toolkit fit`` by default. Checkpoints without the state (older runs) resume as before.
    """

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None
        self._around_sanity: dict[str, Any] | None = None
        self.data_seed: int | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"random_state": capture_random_state(), "data_seed": self.data_seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # also called by trainer.test(ckpt_path=...): only a fit applies it (on_fit_start)
        self._restored = state_dict

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.data_seed = torch.initial_seed()  # the run's seed (seed_everything), before any restore
        if self._restored is not None:
            if self._restored.get("data_seed") is not None:
                self.data_seed = int(self._restored["data_seed"])
            if self._restored.get("random_state") is not None:
                restore_random_state(self._restored["random_state"])
            self._restored = None

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seed_loaders(trainer)

    def seed_loaders(self, trainer: pl.Trainer) -> None:
        """Give the training sampler and loader their private generators for (seed, current epoch).

        Lightning skips ``on_train_epoch_start`` when it restarts mid-epoch; `toolkit.callbacks.signal_save` calls
        this then, before the epoch's first batch is drawn.
        """
        if self.data_seed is None or trainer.train_dataloader is None:
            return
        for loader in CombinedLoader(trainer.train_dataloader).flattened:
            if not isinstance(loader, DataLoader):
                continue
            epoch_seed = (self.data_seed * 1_000_003 + trainer.current_epoch) * 4
            if isinstance(loader.sampler, RandomSampler):  # DistributedSampler already orders by (seed, epoch)
                loader.sampler.generator = torch.Generator().manual_seed(epoch_seed + _SAMPLER_STREAM)
            loader.generator = torch.Generator().manual_seed(epoch_seed + _LOADER_STREAM)

    @override
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._around_sanity = capture_random_state()

    @override
    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._around_sanity is not None:
            restore_random_state(self._around_sanity)
            self._around_sanity = None
