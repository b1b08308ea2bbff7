"""Evaluate an ensemble at validate/test: each member's and the softmax-averaged ensemble's accuracy and macro-F1.

Shared by :class:`~toolkit.callbacks.snapshot.SnapshotEnsemble` (the snapshots of one run) and
:class:`CheckpointEnsemble` (independent checkpoints). Lightning's SWA and EMA callbacks average weights; this
averages predictions (Huang et al. 2017), which no maintained library does inside a Lightning test loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from typing_extensions import override

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.model.checkpoint_data import check_finite, load_data
from toolkit.model.metrics import classification_metrics


def average_probs(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' softmax probabilities (not of their logits or weights)."""
    return torch.stack([x.float().softmax(-1) for x in logits]).mean(0)


class EnsembleEvaluator(pl.Callback):
    """Base callback: on ``trainer.validate``/``trainer.test`` it runs every member on each batch and logs metrics.

    Subclasses say which members exist (:meth:`member_paths`) and how to read one (:meth:`read_state_dict`). Each
    member is a copy of the tested LightningModule (same architecture and test-time switches) holding the member's
    weights; all members sit on the model's device during the stage and are dropped after it. Validation inside
    ``fit`` is left alone (it would cost k extra forward passes every epoch).

    Args:
        use_last: the ensemble averages the last ``use_last`` members; None = all of them. Only those members are
            evaluated (and logged one by one): the others would cost a pass each for a number nothing uses.
    """

    #: metric key of member ``i``: ``key(stage, "acc", i)``
    key: Callable[[str, str, int], str] = staticmethod(keys.member_key)

    def __init__(self, use_last: int | None = None) -> None:
        if use_last is not None and use_last < 1:
            raise ToolkitError(f"use_last must be >= 1 (or null for all members), got {use_last}")
        self.use_last = use_last
        self._stage: str | None = None
        self._members: list[tuple[int, torch.nn.Module, MetricCollection]] = []
        self._ensemble_metrics: MetricCollection | None = None
        #: the files of the members the last ``test`` averaged, oldest first (what ``test/*_ensemble`` measured)
        self.tested_members: list[Path] = []

    # -- what subclasses provide -------------------------------------------------------------------------------
    def member_paths(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[int, Path]]:
        """The members as (index used in metric keys, file), oldest first."""
        raise NotImplementedError

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        """A member's LightningModule state_dict, on the CPU."""
        raise NotImplementedError

    # -- hooks -------------------------------------------------------------------------------------------------
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._start(trainer, pl_module, "val")

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    @override
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._update(trainer, batch)

    @override
    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        self._update(trainer, batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()

    # -- evaluation --------------------------------------------------------------------------------------------
    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        paths = self.member_paths(trainer, pl_module)
        if self.use_last:  # a member no ensemble averages costs a full pass and says nothing the table uses
            paths = paths[-self.use_last :]
        num_classes = int(pl_module.hparams["num_classes"])
        device = pl_module.device
        # the evaluation loop runs in inference mode; copies made there would be inference tensors
        with torch.inference_mode(False):
            members = []
            for index, path in paths:
                member = self._build_member(pl_module, path)
                members.append((index, member.to(device), classification_metrics(num_classes).to(device)))
        self._members, self._stage = members, stage
        self._ensemble_metrics = classification_metrics(num_classes).to(device)
        used = [index for index, _, _ in self._ensemble_members()]
        if stage == "test":
            self.tested_members = [path for index, path in paths if index in used]
        rank_zero_info(f"{type(self).__name__}: {stage} on {len(members)} members, ensemble of members {used}")

    def _build_member(self, pl_module: pl.LightningModule, path: Path) -> torch.nn.Module:
        state = self.read_state_dict(path)
        member = copy.deepcopy(pl_module)  # LightningModule.__getstate__ drops the trainer reference
        try:
            member.load_state_dict(state, strict=pl_module.strict_loading)
        except RuntimeError as err:
            lines = str(err).splitlines()
            detail = (lines[1] if len(lines) > 1 else lines[0]).strip()[:200]  # torch lists every key; keep a taste
            raise ToolkitError(
                f"{path} does not fit the model configured for this run ({detail}); "
                "pass the same --config/--model options the member was trained with"
            ) from None
        return member.eval().requires_grad_(False)

    def _ensemble_members(self) -> list[tuple[int, torch.nn.Module, MetricCollection]]:
        return self._members[-self.use_last :] if self.use_last else self._members

    def _update(self, trainer: pl.Trainer, batch: Any) -> None:
        if self._stage is None:
            return
        images, targets = batch[0], batch[1]
        with trainer.precision_plugin.forward_context():  # members run at the tested model's precision
            logits = {index: member(images) for index, member, _ in self._members}
        for index, _, metrics in self._members:
            metrics.update(logits[index].float().softmax(-1), targets)
        self._ensemble_metrics.update(average_probs([logits[i] for i, _, _ in self._ensemble_members()]), targets)

    def _log(self, pl_module: pl.LightningModule) -> None:
        if self._stage is None:
            return
        stage = self._stage
        # compute() syncs the metric states across processes, so each rank logs the same value
        for index, _, metrics in self._members:
            for name, value in metrics.compute().items():
                pl_module.log(self.key(stage, name, index), value)
        for name, value in self._ensemble_metrics.compute().items():
            pl_module.log(keys.ensemble_key(stage, name), value)

    def _release(self) -> None:
        self._members, self._ensemble_metrics, self._stage = [], None, None


class CheckpointEnsemble(EnsembleEvaluator):
    """A plain model ensemble of independent Lightning checkpoints (e.g. one run per seed), softmax-averaged.

    ``toolkit test --ckpt_path a.ckpt --ensemble_ckpts a.ckpt b.ckpt c.ckpt`` adds it; each checkpoint must hold the
    architecture the test's ``--config``/``--model`` options build. Logs ``<stage>/acc_member_<i>``,
    ``<stage>/f1_member_<i>`` (``i`` = position in ``ckpts``) and ``<stage>/acc_ensemble``, ``<stage>/f1_ensemble``.

    Args:
        ckpts: Lightning checkpoint files (``.ckpt``).
    """

    def __init__(self, ckpts: list[str]) -> None:
        super().__init__()
        if not ckpts:
            raise ToolkitError("--ensemble_ckpts needs at least one checkpoint file")
        missing = [c for c in ckpts if not Path(c).is_file()]
        if missing:
            raise ToolkitError(f"ensemble checkpoint(s) not found: {', '.join(missing)}; pass existing .ckpt files")
        self.ckpts = [Path(c) for c in ckpts]

    def member_paths(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[int, Path]]:
        return list(enumerate(self.ckpts))

    def read_state_dict(self, path: Path) -> dict[str, torch.Tensor]:
        # a full Lightning checkpoint, read as data (nothing in it runs); only its weights are used
        checkpoint = load_data(path, what="ensemble checkpoint")
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
            raise ToolkitError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt saved by fit")
        check_finite(checkpoint["state_dict"], path, what="ensemble checkpoint")
        return checkpoint["state_dict"]
