"""ImageClassifier: a timm backbone + a new head, trained as a linear probe, LP->FT, or a full fine-tune."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from typing_extensions import override

from toolkit import features, keys
from toolkit.backbone import create_backbone
from toolkit.components import BatchNormLevel, apply_switches, check_liveness, init_adjustments
from toolkit.errors import ToolkitError
from toolkit.features import FeatureCacheMode
from toolkit.freezing import BackboneFreezer
from toolkit.heads import HeadInit, create_head
from toolkit.schedules import TOTAL_STEPS_HINT, WarmupSchedule


class ImageClassifier(pl.LightningModule):
    """A headless timm backbone and a linear head, with accuracy and macro-F1 from torchmetrics.

    Args:
        backbone: any ``timm.list_models()`` name, built without its classifier.
        num_classes: number of classes (linked from ``data.num_classes`` by the CLI).
        pretrained: ``true`` loads timm hub weights, a path loads a local weights file, ``false`` is random init.
        freeze_backbone: linear probe: backbone frozen (no grads, eval mode, bit-identical after fit).
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
        scheduler_interval: step the scheduler every ``step`` or ``epoch``; None = ``step`` for WarmupSchedule,
            else ``epoch``.
        feature_cache: train a frozen backbone's head on features computed once (:mod:`toolkit.features`):
            ``auto`` when valid (frozen backbone, ``data.augment: none``, no mixup, one process), ``on`` (an error
            when invalid), ``off``.
        channels_last: backbone weights and inputs in channels-last memory format (faster convs on GPUs/CPUs).
        compile: ``torch.compile`` the backbone (in place: checkpoints keep their keys).
    """

    def __init__(
        self,
        backbone: str = "test_resnet",
        num_classes: int = 10,
        pretrained: bool | str = False,
        freeze_backbone: bool = False,
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        drop_rate: float = 0.0,
        head_init: HeadInit = "default",
        label_smoothing: float = 0.0,
        batchnorm: BatchNormLevel = "on",
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
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if unfreeze_at_epoch is not None and not freeze_backbone:
            raise ToolkitError("unfreeze_at_epoch needs freeze_backbone: true (probe first, then fine-tune)")
        if unfreeze_at_epoch is not None and unfreeze_at_epoch < 1:
            raise ToolkitError("unfreeze_at_epoch must be >= 1; for a full fine-tune set freeze_backbone: false")
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
        self.backbone = create_backbone(backbone, pretrained, drop_path_rate, zero_init_last)
        self._setup_logged = False
        self.lesion_blocks = lesion_blocks
        self.changes: list[str] = apply_switches(
            self.backbone,
            batchnorm=batchnorm,
            residual=residual,
            residual_blocks=residual_blocks,
            lesion_blocks=lesion_blocks,
        )
        check_liveness(self.backbone, self.changes)  # a dead network is refused before anything trains
        self.adjusted: list[str] = init_adjustments(zero_init_last)
        self.head = create_head(self.backbone.num_features, num_classes, drop_rate, head_init)
        self.channels_last, self._use_feature_cache = channels_last, False
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()  # nn.Module.compile: in place, so the state dict keeps its keys
        self.freezer = BackboneFreezer(self.backbone, freeze_backbone, unfreeze_at_epoch)
        self.metrics = torch.nn.ModuleDict(
            {
                "train_acc": MulticlassAccuracy(num_classes, average="micro"),
                "val_acc": MulticlassAccuracy(num_classes, average="micro"),
                "val_f1": MulticlassF1Score(num_classes, average="macro"),
                "test_acc": MulticlassAccuracy(num_classes, average="micro"),
                "test_f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )

    # -- freezing policy ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        self.freezer.enforce_eval()
        return self

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.lesion_blocks:
            raise ToolkitError("lesion_blocks is a test-time lesion; use it with `toolkit test`, not `toolkit fit`")
        if stage == "fit":
            self.freezer.prepare(distributed=self.trainer.world_size > 1)
            reasons = features.blockers(self, self.trainer.datamodule, self.trainer.world_size)
            self._use_feature_cache = features.decide(self.hparams.feature_cache, reasons)
            if self._use_feature_cache:  # here: Lightning builds the train loader before on_fit_start
                notes = features.attach(self, self.trainer.datamodule, self.trainer.strategy.root_device)
                rank_zero_info(f"feature cache ({features.cache_dir()}): " + ", ".join(notes))

    @override
    def on_train_start(self) -> None:
        # Lightning skips on_train_epoch_start when it resumes mid-epoch: a run resumed inside the first
        # fine-tuning epoch must find its backbone released here
        self.on_train_epoch_start()

    @override
    def on_train_epoch_start(self) -> None:
        if self.freezer.maybe_unfreeze(self.current_epoch):
            rank_zero_info(f"epoch {self.current_epoch}: backbone unfrozen, fine-tuning (LP->FT)")
        if self._use_feature_cache:  # cached features are valid only while the backbone stays frozen
            features.set_active(self.trainer.datamodule, self.freezer.frozen)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.freezer.drop_gated_grads()

    def on_fit_start(self) -> None:
        self._log_setup()
        if self.logger is not None:
            self.logger.log_hyperparams({"feature_cache_used": self._use_feature_cache})

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

    # -- steps -------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features of a batch of images."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        # a 2-D batch is cached backbone features (toolkit.features), a 4-D batch is images
        return self.head(inputs) if inputs.ndim == 2 else self(inputs)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # soft targets (mixup/cutmix) are class probabilities; cross_entropy takes both forms
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self._logits(images)
        loss = self._loss(logits, targets)
        hard = targets.argmax(-1) if targets.ndim == 2 else targets
        self.metrics["train_acc"](logits, hard)
        self.log(keys.TRAIN_LOSS, loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(images))
        self.log(keys.TRAIN_ACC, self.metrics["train_acc"], on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch
        logits = self._logits(images)
        loss = self._loss(logits, targets)
        acc, f1 = self.metrics[f"{stage}_acc"], self.metrics[f"{stage}_f1"]
        acc(logits, targets)
        f1(logits, targets)
        size = len(images)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=size)
        self.log(f"{stage}/acc", acc, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/f1", f1, on_epoch=True, batch_size=size)
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("test", batch)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return {"probs": self(images).softmax(-1)}

    # -- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        # both groups exist from the start; freezing gates the backbone's grads, it never adds a group
        groups = [
            {"params": list(self.head.parameters()), "name": "head"},
            {"params": list(self.backbone.parameters()), "name": "backbone"},
        ]
        optimizer = self.optimizer_factory(groups)
        optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * self.hparams.backbone_lr_scale
        setattr(optimizer, TOTAL_STEPS_HINT, int(self.trainer.estimated_stepping_batches))
        owner = next((cb for cb in self.trainer.callbacks if getattr(cb, "owns_lr_schedule", False)), None)
        if owner is not None or self.scheduler_factory is None:
            if owner is not None and self.scheduler_factory is not None:
                rank_zero_info(
                    f"{type(owner).__name__} sets the learning rate; the configured lr_scheduler is not used"
                )
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        interval = self.hparams.scheduler_interval or ("step" if isinstance(scheduler, WarmupSchedule) else "epoch")
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = keys.VAL_LOSS
        return {"optimizer": optimizer, "lr_scheduler": config}
