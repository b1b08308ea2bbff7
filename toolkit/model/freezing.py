"""The frozen-backbone contract (linear probe) and its gated release for LP->FT, in plain PyTorch."""

from __future__ import annotations

import torch.nn as nn

from toolkit.errors import ToolkitError


def check_unfreeze_epoch(unfreeze_at_epoch: int | None, max_epochs: int | None) -> None:
    """Refuse ``unfreeze_at_epoch >= max_epochs``: the backbone would never be released (LP->FT in name only)."""
    if unfreeze_at_epoch is not None and max_epochs is not None and 0 <= max_epochs <= unfreeze_at_epoch:
        raise ToolkitError(
            f"--model.unfreeze_at_epoch {unfreeze_at_epoch} is not below --trainer.max_epochs {max_epochs}: the "
            f"backbone would never be fine-tuned; raise max_epochs or lower unfreeze_at_epoch (epochs count from 0)"
        )


class BackboneFreezer:
    """Keeps a backbone frozen: no grads, eval mode on every ``.train()``, parameters and buffers unchanged.

    Lightning's ``BaseFinetuning.freeze`` only stops grads; BatchNorm would still update its running stats in
    train mode. Here the backbone stays in eval mode (BN uses running stats, dropout off) while frozen.

    Under DDP the set of parameters that are synchronised is fixed when the model is wrapped, so for LP->FT the
    backbone keeps ``requires_grad=True`` from the start and its grads are dropped before each optimizer step
    while it is frozen (``distributed=True`` in :meth:`prepare`): no group is added, no unused-parameter error.
    """

    def __init__(self, backbone: nn.Module, freeze: bool, unfreeze_at_epoch: int | None) -> None:
        self.backbone, self.unfreeze_at_epoch = backbone, unfreeze_at_epoch
        self.frozen = freeze
        self.grad_gated = False  # frozen through dropped grads rather than requires_grad (DDP LP->FT)
        if freeze:
            backbone.requires_grad_(False)
            backbone.eval()

    def prepare(self, distributed: bool) -> None:
        """Call before the model is wrapped for training."""
        if self.frozen and self.unfreeze_at_epoch is not None and distributed:
            self.backbone.requires_grad_(True)
            self.grad_gated = True

    def enforce_eval(self) -> None:
        """Put the backbone back into eval mode while it is frozen."""
        if self.frozen:
            self.backbone.eval()

    def maybe_unfreeze(self, epoch: int) -> bool:
        """Release the backbone at ``unfreeze_at_epoch``; True when it was released now."""
        if not self.frozen or self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return False
        self.frozen = False
        self.backbone.requires_grad_(True)
        self.backbone.train()
        return True

    def drop_gated_grads(self) -> None:
        """Discard the backbone's grads while it is frozen by gating, so the optimizer skips it."""
        if self.frozen and self.grad_gated:
            for param in self.backbone.parameters():
                param.grad = None
