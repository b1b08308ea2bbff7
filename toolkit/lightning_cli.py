"""LightningCLI wiring: argument links, default callbacks and logger, config to W&B, test-after-fit, resume."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from toolkit import keys
from toolkit.classifier import ImageClassifier
from toolkit.data import ImageDataModule
from toolkit.errors import ToolkitError
from toolkit.tracking import CKPT_RUN_ID, RunIdCheckpoint


@dataclass
class AblationInfo:
    """Which ablation run this is; sets the W&B group, job type, tags and the ``ablation`` config block."""

    name: str
    variant: str
    seed: int


class LoggedConfig(SaveConfigCallback):
    """Writes config.yaml (overwriting) and sends the full resolved config, nested, to the logger."""

    resumed_from: str | None = None

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        config["cpu_threads"] = torch.get_num_threads()  # float reduction order depends on it: part of the result
        if self.resumed_from:
            config["resumed_from"] = self.resumed_from
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class ToolkitCLI(LightningCLI):
    """``toolkit fit|validate|test|predict`` for :class:`ImageClassifier` on :class:`ImageDataModule`."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            save_config_callback=LoggedConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "toolkit", "description": "Transfer learning and ablations with timm backbones."},
            args=args,
            run=run,
            auto_configure_optimizers=False,  # the model's optimizer/lr_scheduler arguments own this
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, turning jsonargparse's usage dump + error into one ToolkitError line (``--help`` still prints)."""
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                super().parse_arguments(parser, args)
        except SystemExit as exit_:
            if exit_.code in (0, None):
                raise
            raise ToolkitError(_parse_error(err.getvalue())) from None
        finally:
            if err.getvalue() and "error:" not in err.getvalue():
                print(err.getvalue(), end="", file=sys.stderr)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="fit: test the best checkpoint after training, same process and W&B run",
        )
        parser.add_argument(
            "--ablation", type=AblationInfo | None, default=None, help="ablation run identity (set by toolkit ablate)"
        )
        parser.add_argument(
            "--ensemble_ckpts",
            type=str,
            nargs="+",
            default=None,
            help="test: ensemble these checkpoints (softmax averaging)",
        )
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": keys.MONITOR,
                "checkpoint.mode": keys.MONITOR_MODE,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {"class_path": "toolkit.tracking.WandbLogger"},
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir or ".")
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(root / "checkpoints")
        logger = config.trainer.logger
        if _is_toolkit_logger(logger):
            args = logger.init_args
            if args.save_dir is None:
                args.save_dir = str(root)
            if config.ablation is not None:
                ab = config.ablation
                args.group = args.group or ab.name
                args.job_type = args.job_type or ab.variant
                args.tags = list(dict.fromkeys([*(args.tags or []), ab.variant, f"seed={ab.seed}"]))
                args.name = args.name or f"{ab.variant}-seed{ab.seed}"
        if config.get("ckpt_path"):
            config.ckpt_path = _resolve_ckpt(config.ckpt_path, config.checkpoint.dirpath)
        if self.subcommand == "fit" and config.get("ckpt_path"):
            run_id = _run_id_in(config.ckpt_path)
            if run_id and _is_toolkit_logger(logger):
                if logger.init_args.mode in ("online",) or (logger.init_args.mode == "auto" and _online_auto()):
                    logger.init_args.id = logger.init_args.id or run_id
                else:
                    LoggedConfig.resumed_from = run_id

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        if config.get("logger") in (False, None):  # no logger: nothing to monitor the lr into
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        listed = [*callbacks, *(config.get("callbacks") or [])]
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in listed):
            callbacks.append(RichProgressBar())
        callbacks.append(RunIdCheckpoint())
        callbacks.extend(_last_checkpoints(callbacks))
        if self.subcommand == "test" and self.config.test.get("ensemble_ckpts"):
            from toolkit.callbacks.ensemble import CheckpointEnsemble

            callbacks.append(CheckpointEnsemble(self.config.test.ensemble_ckpts))
        return super()._instantiate_trainer(config, callbacks)

    def predict(self, **kwargs: Any) -> None:
        """``toolkit predict``: predictions of the test split, written to ``<default_root_dir>/predictions.csv``."""
        batches = self.trainer.predict(**kwargs) or []
        if not batches or not self.trainer.is_global_zero:
            return
        import pandas as pd

        probs = torch.cat([b["probs"] for b in batches]).float()
        preds = probs.argmax(-1).tolist()
        names = self.model.hparams.get("class_names") or [str(i) for i in range(probs.shape[1])]
        table = pd.DataFrame({"pred": preds, "pred_name": [names[i] for i in preds], "prob": probs.max(-1).values})
        if self.datamodule is not None and len(self.datamodule.splits.test) == len(table):
            table.insert(0, "label", self.datamodule.splits.test.labels)
        out = Path(self.trainer.default_root_dir) / "predictions.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index_label="index")
        print(f"predictions: {out} ({len(table)} rows)")

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            self._test_best()
        if self.trainer.is_global_zero:
            _write_result(self.trainer)

    def _test_best(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            rank_zero_warn(f"no best {keys.MONITOR} checkpoint (no validation?): testing the final weights instead")
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"tested_checkpoint": "final weights"})
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def _write_result(trainer: Trainer) -> None:
    """``<default_root_dir>/result.json``: this fit completed (with its test metrics and W&B run id).

    Written last and atomically, so a runner restarted after a kill can tell a finished run from an interrupted one.
    """
    import json
    import os
    import time

    run_id = next((getattr(lg.experiment, "id", None) for lg in trainer.loggers if _is_wandb(lg)), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    result = {"status": "done", "finished_at": time.time(), "wandb_id": run_id, "metrics": metrics}
    path = Path(trainer.default_root_dir) / keys.RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def _is_wandb(logger: Any) -> bool:
    return isinstance(logger, LightningWandbLogger)


def _last_checkpoints(callbacks: list[Callback]) -> list[ModelCheckpoint]:
    """A ``last.ckpt`` written every epoch for each ModelCheckpoint with ``save_last``.

    Lightning 2.6's ``save_last`` rewrites last.ckpt only in an epoch where a top-k checkpoint was saved, so after
    an epoch without a new best, ``--ckpt_path last`` would resume from an older epoch.
    """
    extra = []
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.monitor is not None:
            callback.save_last = False
            extra.append(
                ModelCheckpoint(
                    dirpath=callback.dirpath,
                    filename=ModelCheckpoint.CHECKPOINT_NAME_LAST,
                    monitor=None,
                    save_top_k=1,
                    enable_version_counter=False,
                )
            )
    return extra


def _is_toolkit_logger(logger: Any) -> bool:
    return logger is not None and getattr(logger, "class_path", None) == "toolkit.tracking.WandbLogger"


def _online_auto() -> bool:
    from toolkit.tracking import resolve_mode

    return resolve_mode("auto") == "online"


def _resolve_ckpt(ckpt_path: str, dirpath: str) -> str:
    """``last`` -> ``<checkpoint dir>/last.ckpt`` (Lightning would look in the logger's per-run folder instead)."""
    if ckpt_path == "last":
        path = Path(dirpath) / "last.ckpt"
        if not path.is_file():
            raise ToolkitError(f"--ckpt_path last: no {path}; train first or pass a checkpoint file")
        return str(path)
    if ckpt_path not in ("best", "hpc", "registry") and not Path(ckpt_path).is_file():
        raise ToolkitError(f"checkpoint {ckpt_path} does not exist; pass an existing .ckpt file or 'last'")
    return ckpt_path


def _run_id_in(ckpt_path: str) -> str | None:
    if not Path(ckpt_path).is_file():
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)  # one key: map, don't read
    return checkpoint.get(CKPT_RUN_ID)


def _finish_wandb() -> None:
    """Close the W&B run, so a second run in the same process (tests, notebooks) starts a new one.

    ``wandb.finish`` returns before the service has written the whole run log; ``teardown`` waits for it, so the
    log is complete when the command returns (the ablation runner and reports read it right away).
    """
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


_ARGS_WARNING = ".*args parameter is intended to run from within Python"


def run_cli(args: list[str] | None = None) -> ToolkitCLI:
    """Run ``toolkit <subcommand> ...`` in this process (the console script calls this)."""
    LoggedConfig.resumed_from = None
    try:
        with warnings.catch_warnings():
            if args is not None:  # called from Python (tests, the runner's checks): sys.argv is the caller's
                warnings.filterwarnings("ignore", message=_ARGS_WARNING)
            return ToolkitCLI(args=args)
    except SIGTERMException:
        # Lightning stops cleanly on SIGTERM but its exception exits with status 0; a stopped run is no success
        sys.exit(128 + signal.SIGTERM)
    finally:
        _finish_wandb()


class _ParseOnlyCLI(ToolkitCLI):
    """Parses with the subcommand parsers and stops before anything is built."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass

    def _set_seed(self) -> None:
        pass  # a check seeds nothing (and prints no "Seed set to")


def check_args(argv: list[str]) -> None:
    """Parse ``argv`` (e.g. ``["fit", "--config", ...]``) with the CLI's parser; instantiate nothing.

    Raises:
        ToolkitError: naming the bad key when the arguments do not parse.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the check passes args while sys.argv holds the caller's command line: LightningCLI warns about that
        warnings.filterwarnings("ignore", message=_ARGS_WARNING)
        _ParseOnlyCLI(args=argv)


def _parse_error(stderr: str) -> str:
    """jsonargparse's ``error:`` line and its indented details as one line, with a pointer to --help."""
    lines = stderr.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=None)
    if start is None:
        return (lines[-1].strip() if lines else "invalid arguments") + " (see toolkit <command> --help)"
    message = " ".join(line.strip() for line in lines[start:] if line.strip())[len("error:") :].strip()
    message = re.sub(r"\s+", " ", message)
    return f"{message} (see toolkit <command> --help)"
