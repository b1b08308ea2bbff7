"""LesionSweep: test the tested model again with residual blocks lesioned (Veit et al. 2016), in the same W&B run.

Veit, Wilber and Belongie 2016, "Residual networks behave like ensembles of relatively shallow networks": delete the
residual branch of one block (the block outputs its shortcut alone) and the network barely suffers; delete k blocks
and accuracy falls smoothly with k. This callback measures both on the test split, on the checkpoint being tested
(the best-``val/acc`` one in ``toolkit fit --test_after_fit true``), using the lesion of
:func:`toolkit.model.components.apply_switches` (``lesion_blocks``): the same block forwards, switched per batch.

Logged keys: ``test/acc_lesion_<i>`` (block ``i`` alone lesioned, ``i`` as in ``list_residual_blocks``) and
``test/acc_lesion_k<k>`` (mean accuracy over the lesioned sets of ``k`` blocks: every set when there are at most
``samples`` of them, else ``samples`` distinct sets drawn from ``seed``; ``k1`` is the mean of all single lesions).
The sets depend on ``seed`` and the block count only, so every run and seed of a study lesions the same sets.

Lightning has no public way to run a second test loop from inside one; the sweep therefore evaluates each test batch
once per lesion set in ``on_test_batch_end`` (as the ensemble callback does for its members), with torchmetrics
accuracy (synchronised across processes by ``compute``).
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from toolkit.errors import ToolkitError
from toolkit.keys import lesion_k_key, lesion_key
from toolkit.model.components import list_residual_blocks
from toolkit.model.components._residual import switch_block


def lesion_sets(blocks: int, max_k: int, samples: int, seed: int) -> dict[int, list[tuple[int, ...]]]:
    """The block sets lesioned for each k = 1..max_k: all of them when C(blocks, k) <= samples, else ``samples``
    distinct sets drawn with ``random.Random(seed)``; k = 1 is always every single block."""
    rng = random.Random(seed)
    sets: dict[int, list[tuple[int, ...]]] = {1: [(i,) for i in range(blocks)]}
    for k in range(2, max_k + 1):
        if math.comb(blocks, k) <= samples:
            sets[k] = list(itertools.combinations(range(blocks), k))
            continue
        chosen: set[tuple[int, ...]] = set()
        while len(chosen) < samples:
            chosen.add(tuple(sorted(rng.sample(range(blocks), k))))
        sets[k] = sorted(chosen)
    return sets


class LesionSweep(pl.Callback):
    """After (and during) ``test``: the tested model's accuracy with each block, and with k blocks, lesioned.

    Args:
        max_k: largest number of blocks lesioned together; None = all blocks that have a shortcut.
        samples: sets of k blocks evaluated per k when there are more than this many (Veit et al. sample sets too).
        seed: seed of the drawn sets (fixed, so every run of a study lesions the same sets).
        max_batches: sweep the first ``max_batches`` test batches only (the test loader's fixed order; the sweep
            costs one pass per lesion set, the run's own ``test/*`` metrics still cover the whole test split);
            None: every batch.
    """

    def __init__(
        self, max_k: int | None = None, samples: int = 4, seed: int = 0, max_batches: int | None = None
    ) -> None:
        if max_k is not None and max_k < 1:
            raise ToolkitError(f"LesionSweep: max_k must be >= 1 (or null for all blocks), got {max_k}")
        if samples < 1:
            raise ToolkitError(f"LesionSweep: samples must be >= 1, got {samples}")
        if max_batches is not None and max_batches < 1:
            raise ToolkitError(f"LesionSweep: max_batches must be >= 1 (or null for every batch), got {max_batches}")
        self.max_k, self.samples, self.seed, self.max_batches = max_k, samples, seed, max_batches
        self._blocks: list[torch.nn.Module] = []
        self._sets: list[tuple[int, ...]] = []
        self._by_k: dict[int, list[tuple[int, ...]]] = {}
        self._metrics: dict[tuple[int, ...], MulticlassAccuracy] = {}

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backbone = pl_module.backbone
        names = list_residual_blocks(backbone)
        # blocks already switched (residual: false, lesion_blocks) have no shortcut-only form left to test
        self._blocks = [backbone.get_submodule(n) for n in names if not hasattr(backbone.get_submodule(n), "switch")]
        if len(self._blocks) != len(names) or not names:
            rank_zero_info(
                f"LesionSweep: {len(names) - len(self._blocks)} of {len(names)} residual blocks already switched "
                "(residual: false or lesion_blocks); no lesion sweep for this run"
            )
            self._blocks = []
            return
        max_k = min(self.max_k or len(names), len(names))
        self._by_k = lesion_sets(len(names), max_k, self.samples, self.seed)
        self._sets = list(dict.fromkeys(s for sets in self._by_k.values() for s in sets))
        num_classes = int(pl_module.hparams["num_classes"])
        self._metrics = {s: MulticlassAccuracy(num_classes, average="micro").to(pl_module.device) for s in self._sets}
        rank_zero_info(f"LesionSweep: {len(names)} blocks, {len(self._sets)} lesion sets, k = 1..{max_k}")

    @override
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        batch_idx = args[0] if args else 0
        if not self._blocks or (self.max_batches is not None and batch_idx >= self.max_batches):
            return
        images, targets = batch[0], batch[1]
        for lesioned in self._sets:
            classes = [type(self._blocks[i]) for i in lesioned]
            for i in lesioned:
                switch_block(self._blocks[i], "shortcut")
            try:
                with trainer.precision_plugin.forward_context():
                    logits = pl_module(images)
            finally:  # back to the intact block, whatever happened
                for i, cls in zip(lesioned, classes, strict=True):
                    self._blocks[i].__class__ = cls
                    del self._blocks[i].switch
            self._metrics[lesioned].update(logits.float().argmax(-1), targets)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._blocks:
            return
        accs = {s: m.compute() for s, m in self._metrics.items()}
        for (i,) in self._by_k[1]:
            pl_module.log(lesion_key(i), accs[(i,)])
        for k, sets in self._by_k.items():
            pl_module.log(lesion_k_key(k), torch.stack([accs[s] for s in sets]).mean())

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._blocks, self._sets, self._by_k, self._metrics = [], [], {}, {}
