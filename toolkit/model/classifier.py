"""ImageClassifier: a timm backbone + a new head, trained as a linear probe, LP->FT, or a full fine-tune."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.model import features
from toolkit.model import probe as probe_solver
from toolkit.model.backbone import create_backbone
from toolkit.model.components import (
    apply_switches,
    check_liveness,
    check_untrained_statistics,
    init_adjustments,
    untrained_batchnorms,
)
from toolkit.model.components.registry import BATCHNORM_LEVELS
from toolkit.model.features import FeatureCacheMode
from toolkit.model.freezing import BackboneFreezer
from toolkit.model.heads import HeadInit, create_head
from toolkit.model.metrics import classification_metrics
from toolkit.model.schedules import WarmupSchedule, build_lr_scheduler


class ImageClassifier(pl.LightningModule):
    """A headless timm backbone and a linear head, with accuracy and macro-F1 from torchmetrics.

    Args:
        backbone: any ``timm.list_models()`` name, built without its classifier.
        num_classes: number of classes (linked from ``data.num_classes`` by the CLI).
        pretrained: ``true`` loads timm hub weights, a path loads a local weights file, ``false`` is random init.
        freeze_backbone: linear probe: backbone frozen (no grads, eval mode, bit-identical after fit).
        probe: how the head is trained while the backbone is frozen: ``sgd`` (the optimizer's steps, like the rest
            of the run) or ``lbfgs`` (solved to convergence at the start of the first probe epoch by full-batch
            L-BFGS on the frozen features, its L2 strength chosen on val from ``probe_l2``; see
            :mod:`toolkit.model.probe`). With ``lbfgs`` the probe epochs take no optimizer step: they log the solved
            head's train and val metrics, and their checkpoints hold it. LP->FT fine-tunes from the solved head.
            The solve uses features of the un-augmented train images, so augmentation and mixup act only once
            the backbone trains. A full fine-tune (``freeze_backbone: false``) has no probe phase: ``probe`` is
            then unused.
        probe_l2: the L2 strengths ``lbfgs`` chooses from on val (scikit-learn's ``C = 1 / (l2 * n_train)``).
        unfreeze_at_epoch: with ``freeze_backbone``, fine-tune the backbone from this epoch on (LP->FT).
        backbone_lr_scale: backbone lr = head lr x this scale.
        drop_rate: dropout before the head's linear layer.
        head_init: init of the head's linear layer.
        label_smoothing: cross-entropy label smoothing.
        batchnorm: BatchNorm ablation: ``on``, ``frozen`` (running stats, fixed affine), ``fused`` (folded into the
            preceding conv), ``off`` (removed).
        residual: keep residual shortcuts; ``false`` removes the shortcut addition.
        residual_blocks: with ``residual: false``, only these blocks (0-based, forward order) lose their shortcut.
        lesion_blocks: test-time lesion: these blocks keep only their shortcut (residual branch deleted).
        drop_path_rate: stochastic depth rate (timm).
        zero_init_last: zero-init the last BN gamma of each residual block (timm); None keeps timm's default.
        class_names: class names in label order (linked from the data), used by ``predict``.
        optimizer: optimizer factory; receives the head and backbone param groups.
        lr_scheduler: lr scheduler factory; None for a constant lr.
        scheduler_interval: step the scheduler every ``step`` or ``epoch``; None = ``step`` for a schedule sized in
            optimizer steps (one with a ``total_steps`` argument, e.g. WarmupSchedule), else ``epoch``.
        feature_cache: train a frozen backbone's head on features computed once (:mod:`toolkit.model.features`):
            ``auto`` when valid (frozen backbone, ``data.augment: none``, no mixup, one process), ``on`` (an error
            when invalid), ``off``.
        channels_last: backbone weights and inputs in channels-last memory format: faster convs on CPUs (oneDNN)
            and GPUs. Measured on the quickstart model (EfficientNet-Lite0, 32 px, one CPU thread): a training step
            per image 1.4x (batch 16) to 2.2x (batch 64) faster, evaluation 2.3-4x; ``false`` for NCHW.
        compile: ``torch.compile`` the backbone (in place: checkpoints keep their keys).
        weights_from_checkpoint: set by ``toolkit validate|test|predict`` when a checkpoint supplies every weight:
            the backbone is built without its pretrained weights (``pretrained`` keeps its value in the record: the
            checkpoint needs neither the hub nor the weights file it was trained from) and the untrained-statistics
            guard is skipped. Not for configs.
    """

    def __init__(
        self,
        backbone: str = "test_resnet",
        num_classes: int = 10,
        pretrained: bool | str = False,
        freeze_backbone: bool = False,
        probe: Literal["sgd", "lbfgs"] = "sgd",
        probe_l2: list[float] | None = None,
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        drop_rate: float = 0.0,
        head_init: HeadInit = "default",
        label_smoothing: float = 0.0,
        # the levels of the switch registry, read when LightningCLI builds its parser (a level added there is accepted)
        batchnorm: Literal[tuple(BATCHNORM_LEVELS)] = "on",  # type: ignore[valid-type]
        residual: bool = True,
        residual_blocks: list[int] | None = None,
        lesion_blocks: list[int] | None = None,
        drop_path_rate: float = 0.0,
        zero_init_last: bool | None = None,
        class_names: list[str] | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = WarmupSchedule,
        scheduler_interval: Literal["step", "epoch"] | None = None,
        feature_cache: FeatureCacheMode = "auto",
        channels_last: bool = True,
        compile: bool = False,
        weights_from_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and not freeze_backbone:
            raise ToolkitError("unfreeze_at_epoch needs freeze_backbone: true (probe first, then fine-tune)")
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 1:
            raise ToolkitError("unfreeze_at_epoch must be >= 1; for a full fine-tune set freeze_backbone: false")
        if probe_l2 is not None and (not probe_l2 or any(v <= 0 for v in probe_l2)):
            raise ToolkitError(f"model.probe_l2 {probe_l2}: give one or more L2 strengths > 0, e.g. [1e-4, 1e-3]")
        if backbone_lr_scale < 0:
            raise ToolkitError("backbone_lr_scale must be >= 0")
        for option, rate in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0 <= rate < 1:
                raise ToolkitError(f"--model.{option} {rate}: a drop probability must be in [0, 1) (0 = off)")
        if not 0 <= label_smoothing < 1:
            raise ToolkitError(f"--model.label_smoothing {label_smoothing}: must be in [0, 1) (0 = off)")
        # lesion_blocks is a test-time switch: kept out of checkpoints so `toolkit test --model.lesion_blocks` applies
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "lesion_blocks"], logger=False)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.backbone = create_backbone(
            backbone, pretrained, drop_path_rate, zero_init_last, from_checkpoint=weights_from_checkpoint
        )
        self._setup_logged = False
        self.lesion_blocks = lesion_blocks
        # a checkpoint brings its own (trained) statistics: the placeholders built for it are not checked
        untrained = [] if weights_from_checkpoint else untrained_batchnorms(self.backbone)
        self.changes: list[str] = apply_switches(
            self.backbone,
            batchnorm=batchnorm,
            residual=residual,
            residual_blocks=residual_blocks,
            lesion_blocks=lesion_blocks,
        )
        check_untrained_statistics(untrained, batchnorm)  # after the zero-init guard, whose fix comes first
        check_liveness(self.backbone, self.changes)  # a dead network is refused before anything trains
        self.adjusted: list[str] = init_adjustments(zero_init_last)
        self.head = create_head(self.backbone.num_features, num_classes, drop_rate, head_init)
        self.channels_last, self._use_feature_cache = channels_last, False
        self._probe_solved = False  # travels in checkpoints: a resumed run never solves again
        #: train loss of the L-BFGS probe's zero head and of its solution (RunHealth's loss trajectory starts there)
        self.probe_losses: tuple[float, float] | None = None
        #: ``(epoch, global_step)`` of the checkpoint last loaded for testing (see :meth:`tested_checkpoint`)
        self.loaded_checkpoint: tuple[int, int] | None = None
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()  # nn.Module.compile: in place, so the state dict keeps its keys
        self.freezer = BackboneFreezer(self.backbone, freeze_backbone, unfreeze_at_epoch)
        self._resumed_with_backbone = False
        metrics = classification_metrics(num_classes)
        # training logs accuracy only (F1 on augmented, possibly mixed batches says little); val and test log both
        self.train_acc = metrics["acc"].clone()
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # -- freezing policy ---------------------------------------------------------------------------------------
    @override
    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        self.freezer.enforce_eval()
        return self

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.lesion_blocks:
            raise ToolkitError("lesion_blocks is a test-time lesion; use it with `toolkit test`, not `toolkit fit`")
        if stage == "fit":
            self.freezer.prepare(distributed=self.trainer.world_size > 1)
            reasons = features.blockers(self, features.data_of(self.trainer), self.trainer.world_size)
            self._use_feature_cache = features.decide(self.hparams.feature_cache, reasons)
            if self._use_feature_cache:  # here: Lightning builds the train loader before on_fit_start
                data = features.data_of(self.trainer)
                assert data is not None, "decide() refuses the cache without the data contract"
                notes = features.attach(self, data, self.trainer.strategy.root_device)
                rank_zero_info(f"feature cache ({features.cache_dir()}): " + ", ".join(notes))
        if stage == "test":  # a linear probe tests on cached features (the same numbers, no backbone pass per run)
            features.attach_test(self, self.trainer)

    @override
    def on_train_start(self) -> None:
        # Lightning skips on_train_epoch_start when it resumes mid-epoch: a run resumed inside the first
        # fine-tuning epoch must find its backbone released here
        self.on_train_epoch_start()

    @override
    def on_train_epoch_start(self) -> None:
        if self.freezer.maybe_unfreeze(self.current_epoch):
            self._release_backbone()
            rank_zero_info(f"epoch {self.current_epoch}: backbone unfrozen, fine-tuning (LP->FT)")
        if self.hparams.probe == "lbfgs" and self.freezer.frozen and not self._probe_solved:
            self._solve_probe()
        if self._use_feature_cache:  # cached features are valid only while the backbone stays frozen
            features.set_active(features.data_of(self.trainer), self.freezer.frozen)

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.freezer.drop_gated_grads()

    @override
    def on_fit_start(self) -> None:
        self._log_setup()
        if self.logger is not None:
            self.logger.log_hyperparams({"feature_cache_used": self._use_feature_cache})

    @override
    def on_test_start(self) -> None:
        self._log_setup()

    def _log_setup(self) -> None:
        if self._setup_logged:
            return
        self._setup_logged = True
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if self.freezer.frozen and self.freezer.grad_gated:
            trainable -= sum(p.numel() for p in self.backbone.parameters())
        frozen = sum(p.numel() for p in self.parameters()) - trainable
        rank_zero_info(
            f"parameters: {trainable:,} trainable, {frozen:,} frozen" + "".join(f"; {c}" for c in self.changes)
        )
        if self.logger is not None:
            self.logger.log_hyperparams(
                {
                    "parameters": {"trainable": trainable, "frozen": frozen},
                    "changes": self.changes,
                    "adjusted": self.adjusted,
                }
            )

    def _solve_probe(self) -> None:
        if self.trainer.world_size > 1:
            raise ToolkitError("model.probe lbfgs solves on one process; use probe: sgd for distributed training")
        datamodule = features.data_of(self.trainer)
        if datamodule is None:
            raise ToolkitError("model.probe lbfgs solves on the data module's splits; use toolkit's ImageDataModule")
        train, val = features.probe_features(self, datamodule, self.device)
        grid = self.hparams.probe_l2 or probe_solver.DEFAULT_L2_GRID
        solution = features.solve_probe_cached(train, val, self.hparams.num_classes, grid, self.hparams.label_smoothing)
        linear = self.head[-1]
        with torch.no_grad():
            linear.weight.copy_(solution.weight)
            linear.bias.copy_(solution.bias)
        self._probe_solved = True
        self.probe_losses = (math.log(self.hparams.num_classes), solution.train_loss)
        rank_zero_info(
            f"linear probe solved (L-BFGS): l2 {solution.l2:g} chosen on val (acc {solution.val_acc:.4f}), "
            f"train loss {solution.train_loss:.4f}"
        )
        if self.logger is not None:
            self.logger.log_hyperparams({"probe_solution": {"l2": solution.l2, "val_acc": solution.val_acc}})

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["probe_solved"] = self._probe_solved

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._probe_solved = bool(checkpoint.get("probe_solved", False))
        # called before configure_optimizers on resume: learn whether the saved backbone group was filled
        states = checkpoint.get("optimizer_states") or []
        groups = states[0].get("param_groups", []) if states else []
        self._resumed_with_backbone = len(groups) > 1 and bool(groups[1].get("params"))
        try:
            testing = self.trainer.testing
        except RuntimeError:  # loaded outside a trainer (load_from_checkpoint)
            testing = False
        if testing:  # what `test` evaluates, not what a fit resumes from
            self.loaded_checkpoint = (int(checkpoint.get("epoch", -1)), int(checkpoint.get("global_step", -1)))

    def phase_of(self, epoch: int) -> str:
        """``probe`` for an epoch the backbone spent frozen, else ``fine-tune``."""
        ft = self.finetune_from
        return "probe" if ft is None or epoch < ft else "fine-tune"

    @property
    def finetune_from(self) -> int | None:
        """The first epoch the backbone trains: 0 (full fine-tune), ``unfreeze_at_epoch`` (LP->FT), None (probe)."""
        if not self.hparams.freeze_backbone:
            return 0
        return self.hparams.unfreeze_at_epoch

    def probe_steps(self) -> int:
        """Optimizer steps of the probe epochs before the backbone trains (LP->FT; 0 for a full fine-tune or a probe
        alone): where a schedule starts, so it means the same for every transfer mode."""
        total, epochs = int(self.trainer.estimated_stepping_batches), self.trainer.max_epochs
        if not self.finetune_from or not epochs or epochs < 1:
            return 0
        return self.finetune_from * (total // epochs)

    def tested_checkpoint(self) -> dict[str, Any]:
        """Epoch and phase of the checkpoint the last test loaded (``tested_epoch`` None: the in-memory weights),
        and the first fine-tuning epoch, for the run's health record."""
        epoch = self.loaded_checkpoint[0] if self.loaded_checkpoint is not None else None
        return {
            "tested_epoch": epoch,
            "tested_phase": self.phase_of(epoch) if epoch is not None and epoch >= 0 else None,
            "finetune_from": self.finetune_from,
        }

    # -- steps -------------------------------------------------------------------------------------------------
    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features of a batch of images."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        # a 2-D batch is cached backbone features (toolkit.model.features), a 4-D batch is images
        return self.head(inputs) if inputs.ndim == 2 else self(inputs)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # soft targets (mixup/cutmix) are class probabilities; cross_entropy takes both forms
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        images, targets = batch
        logits = self._logits(images)
        loss = self._loss(logits, targets)
        hard = targets.argmax(-1) if targets.ndim == 2 else targets
        self.train_acc(logits, hard)
        self.log(keys.TRAIN_LOSS, loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(images))
        self.log(keys.TRAIN_ACC, self.train_acc, on_step=False, on_epoch=True, batch_size=len(images))
        if self.hparams.probe == "lbfgs" and self.freezer.frozen:
            return None  # the head is solved already: log its metrics, take no optimizer step (Lightning skips it)
        return loss

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch
        logits = self._logits(images)
        loss = self._loss(logits, targets)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, targets)
        size = len(images)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=size)
        for key, metric in metrics.items(keep_base=False):  # "val/acc", "val/f1": the collection's prefix
            self.log(key, metric, on_epoch=True, prog_bar=key.endswith("/acc"), batch_size=size)
        return logits

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("val", batch)

    @override
    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("test", batch)

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return {"probs": self(images).softmax(-1)}

    # -- optimisation ------------------------------------------------------------------------------------------
    def _backbone_params(self) -> list[torch.nn.Parameter]:
        return list(self.backbone.parameters())

    def _backbone_in_optimizer(self) -> bool:
        """Whether the backbone group holds the backbone: it trains, its grads are gated (DDP LP->FT), or the
        checkpoint being resumed had it there (its optimizer state must load into groups of the same sizes)."""
        return not self.freezer.frozen or self.freezer.grad_gated or self._resumed_with_backbone

    def _release_backbone(self) -> None:
        """LP->FT: put the released backbone into its (empty) optimizer group; AdamW's state starts lazily."""
        for optimizer in self.trainer.optimizers:
            group = next((g for g in optimizer.param_groups if g.get("name") == "backbone"), None)
            if group is not None and not group["params"]:
                group["params"] = self._backbone_params()

    @override
    def configure_optimizers(self) -> Any:
        # both groups exist from the start; a frozen backbone's group is empty (the optimizer would loop over its
        # tensors every step for nothing) and is filled when the backbone is released (_release_backbone)
        groups = [
            {"params": list(self.head.parameters()), "name": "head"},
            {"params": self._backbone_params() if self._backbone_in_optimizer() else [], "name": "backbone"},
        ]
        optimizer = self.optimizer_factory(groups)
        optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * self.hparams.backbone_lr_scale
        if self.scheduler_factory is None:
            return optimizer
        # a schedule callback (SnapshotEnsemble) swaps this scheduler for its own, as Lightning's SWA callback does
        total = int(self.trainer.estimated_stepping_batches)
        scheduler, per_step = build_lr_scheduler(self.scheduler_factory, optimizer, total, self.probe_steps())
        interval = self.hparams.scheduler_interval or ("step" if per_step else "epoch")
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = keys.VAL_LOSS
        return {"optimizer": optimizer, "lr_scheduler": config}
