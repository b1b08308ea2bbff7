"""W&B logging for toolkit runs: offline when there are no credentials, the resolved config, resumable run ids."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from toolkit import keys
from toolkit.errors import ToolkitError

CKPT_RUN_ID = "wandb_run_id"


def has_wandb_credentials() -> bool:
    """Whether W&B can authenticate: WANDB_API_KEY or a netrc entry for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """``auto`` -> WANDB_MODE if set, else ``online`` with credentials and ``offline`` without."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if has_wandb_credentials() else "offline"


#: the ``wandb.init`` arguments that `WandbLogger` sets from its own options (``dir`` is ``save_dir``)
_TYPED_INIT_ARGS = ("project", "name", "dir", "group", "job_type", "tags", "mode", "id", "resume", "entity")


def check_init_kwargs(init_kwargs: dict[str, Any] | None) -> None:
    """Refuse ``init_kwargs`` that would shadow one of the logger's typed options (the CLI checks before building)."""
    clash = [key for key in _TYPED_INIT_ARGS if key in (init_kwargs or {})]
    if clash:
        option = "save_dir" if clash[0] == "dir" else clash[0]
        raise ToolkitError(
            f"trainer.logger.init_args.init_kwargs sets {', '.join(clash)}: use the logger's own option "
            f"(--trainer.logger.init_args.{option}) instead"
        )


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with typed run fields, automatic offline mode and best-value val summaries.

    Args:
        project: W&B project.
        name: run display name; None lets W&B choose (an ablation run gets ``<variant>-seed<N>``).
        save_dir: where ``wandb/`` goes; None = the trainer's ``default_root_dir``.
        group: W&B group (an ablation's name).
        job_type: W&B job type (an ablation's variant).
        tags: W&B tags.
        mode: ``auto`` (WANDB_MODE, else online with credentials, offline without), ``online``, ``offline``,
            ``disabled``.
        id: W&B run id to create or continue.
        resume: W&B resume policy for ``id``.
        entity: W&B entity (user or team).
        log_model: upload checkpoints as W&B model artifacts: ``true`` at the end of a fit (the top-k and last
            checkpoints), ``all`` whenever one is saved (Lightning's ``WandbLogger.log_model``). Offline runs keep
            the artifacts in their run folder until ``wandb sync``.
        checkpoint_name: the artifact's name (default ``model-<run id>``).
        prefix: a string put before every logged metric key.
        init_kwargs: any other ``wandb.init`` argument (``notes``, ``config_exclude_keys``, ``settings``, ...); the
            arguments above have their own options and are refused here.
    """

    def __init__(
        self,
        project: str = "toolkit",
        name: str | None = None,
        save_dir: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        mode: Literal["auto", "online", "offline", "disabled"] = "auto",
        id: str | None = None,
        resume: Literal["allow", "must", "never"] = "allow",
        entity: str | None = None,
        log_model: bool | Literal["all"] = False,
        checkpoint_name: str | None = None,
        prefix: str = "",
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        check_init_kwargs(init_kwargs)
        self.mode = resolve_mode(mode)
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        if mode == "auto" and self.mode == "offline" and not os.environ.get("WANDB_MODE"):
            rank_zero_info(
                f"W&B: no credentials found, logging offline under {save_dir or '.'}/wandb; "
                "upload later with `wandb sync <run folder>` after `wandb login`"
            )
        super().__init__(
            name=name,
            save_dir=save_dir or ".",
            project=project,
            id=id,
            group=group,
            job_type=job_type,
            tags=tags,
            mode=self.mode,
            resume=resume,
            entity=entity,
            log_model=log_model,
            checkpoint_name=checkpoint_name,
            prefix=prefix,
            **(init_kwargs or {}),
        )
        # Lightning always passes `anonymous` (None when unset); wandb 0.31 deprecated the setting and warns on
        # every run even for None, so leave it out
        self._wandb_init.pop("anonymous", None)

    @property
    @override
    def experiment(self) -> Any:
        fresh = self._experiment is None
        run = super().experiment
        if fresh and getattr(run, "define_metric", None):
            for key, summary in keys.VAL_SUMMARY.items():
                run.define_metric(key, summary=summary, step_metric="trainer/global_step", step_sync=True)
        return run


class RunIdCheckpoint(pl.Callback):
    """Stores the W&B run id in every checkpoint, so ``--ckpt_path last`` can continue the same run."""

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, LightningWandbLogger) and logger.experiment is not None:
                checkpoint[CKPT_RUN_ID] = getattr(logger.experiment, "id", None)
