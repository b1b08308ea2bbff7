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
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from toolkit import keys
from toolkit.backbone import weights_from_checkpoint
from toolkit.callbacks.epoch_log import EpochLog
from toolkit.callbacks.health import DIVERGED, FINISHED, Diverged, DivergenceGuard, RunHealth, health_summary
from toolkit.callbacks.random_state import RandomStateCheckpoint
from toolkit.classifier import ImageClassifier
from toolkit.data import ImageDataModule
from toolkit.errors import ToolkitError
from toolkit.quiet import quiet_third_party
from toolkit.tracking import CKPT_RUN_ID, RunIdCheckpoint


@dataclass
class AblationInfo:
    """Which ablation run this is; sets the W&B group, job type, tags and the ``ablation`` config block."""

    name: str
    variant: str
    seed: int


class LoggedConfig(SaveConfigCallback):
    """Writes config.yaml (overwriting) and sends the full resolved config, nested, to the logger.

    Args:
        resumed_from: the W&B id of the run an offline resume continues (logged as ``resumed_from``).
    """

    def __init__(self, *args: Any, resumed_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resumed_from = resumed_from

    @override
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

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, turning jsonargparse's usage dump + error into one ToolkitError line (``--help`` still prints)."""
        argv = list(sys.argv[1:] if args is None else args)
        check_config_files(argv)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                super().parse_arguments(parser, args)
            # before LightningCLI merges the checkpoint's hyperparameters over them
            self.model_args_given = _model_args_given(self.config, sys.argv[1:] if args is None else args)
            _check_given_checkpoint(self.config)  # LightningCLI reads it next, before any hook of ours
        except SystemExit as exit_:
            if exit_.code in (0, None):
                raise
            raise ToolkitError(_parse_error(err.getvalue(), _subcommand_of(argv))) from None
        finally:
            if err.getvalue() and "error:" not in err.getvalue():
                print(err.getvalue(), end="", file=sys.stderr)

    @override
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
                "checkpoint.filename": "best-epoch{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {"class_path": "toolkit.tracking.WandbLogger"},
            }
        )
        # last.ckpt, rewritten at the end of every epoch (``--last_checkpoint.save_top_k 0`` turns it off). Not the
        # top-k callback's save_last: Lightning 2.6 rewrites that one only in an epoch with a new top-k checkpoint,
        # so after an epoch without a new best ``--ckpt_path last`` would resume from an older epoch.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.filename": ModelCheckpoint.CHECKPOINT_NAME_LAST,
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        # on in every fit: a NaN loss stops the run with a diagnosis (``--divergence_guard.enabled false`` turns it off)
        parser.add_lightning_class_args(DivergenceGuard, "divergence_guard")
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir or ".")
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(root / "checkpoints")
        if config.last_checkpoint.dirpath is None:
            config.last_checkpoint.dirpath = config.checkpoint.dirpath
        if config.checkpoint.save_last and config.last_checkpoint.save_top_k != 0:
            raise ToolkitError(
                "--checkpoint.save_last and the last_checkpoint callback would both write last.ckpt; drop "
                "--checkpoint.save_last (last_checkpoint rewrites last.ckpt every epoch) or set "
                "--last_checkpoint.save_top_k 0"
            )
        check_subcommand_inputs(self.subcommand, config.get("ckpt_path"), config.get("ensemble_ckpts"))
        if self.subcommand == "fit" and not config.get("ckpt_path"):
            check_run_home(root, Path(config.checkpoint.dirpath))
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
        if self.subcommand in _EVAL_COMMANDS and config.get("ckpt_path"):
            _model_from_checkpoint(config.model, config.ckpt_path, getattr(self, "model_args_given", {}))
        if self.subcommand == "fit" and config.get("ckpt_path"):
            run_id = _run_id_in(config.ckpt_path)
            if run_id and _is_toolkit_logger(logger):
                if logger.init_args.mode in ("online",) or (logger.init_args.mode == "auto" and _online_auto()):
                    logger.init_args.id = logger.init_args.id or run_id
                else:
                    self.save_config_kwargs["resumed_from"] = run_id

    @override
    def instantiate_classes(self) -> None:
        """Build the model; with a checkpoint to evaluate, without pretrained weights (the checkpoint has them all)."""
        if _weights_from_checkpoints(self.subcommand, self.config):
            with weights_from_checkpoint():
                super().instantiate_classes()
        else:
            super().instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with the callbacks every toolkit run has beside the configured ones."""
        config = self.config_init.get(str(self.subcommand), self.config_init)
        given = config.trainer.get("callbacks") or []
        listed = list(given) if isinstance(given, list) else [given]
        callbacks = [*listed]
        if config.trainer.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in listed
        ):
            callbacks.append(RichProgressBar())
        callbacks.append(RunIdCheckpoint())
        if not any(isinstance(c, EpochLog) for c in listed):
            callbacks.append(EpochLog())
        callbacks.append(RandomStateCheckpoint())  # a resumed fit continues the same random stream
        callbacks.append(RunHealth())  # what result.json and the report's run-health classes need
        if self.subcommand == "test" and config.get("ensemble_ckpts"):
            from toolkit.callbacks.ensemble import CheckpointEnsemble

            callbacks.append(CheckpointEnsemble(config.ensemble_ckpts))
        trainer = super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})
        if trainer.logger is None:  # no logger: nothing to monitor the lr into (LearningRateMonitor would raise)
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        return trainer

    # the subcommand methods below are LightningCLI's documented extension: ``<subcommand>``/``after_<subcommand>``
    def predict(self, **kwargs: Any) -> None:
        """``toolkit predict``: ``<default_root_dir>/predictions.csv``, one row per image (``--data.predict_root``).

        The rows are written by a ``BasePredictionWriter`` on every rank and merged in dataset order by rank 0, so
        under DDP every image appears exactly once, with its path and (where known) its label.
        """
        from toolkit.callbacks.predictions import PredictionWriter

        samples = self.datamodule.predict_samples
        names = self.model.hparams.get("class_names") or self.datamodule.class_names
        writer = PredictionWriter(self.trainer.default_root_dir, samples.ids or [], samples.labels, names)
        self.trainer.callbacks.append(writer)
        self.trainer.predict(**{**kwargs, "return_predictions": False})  # the writer holds the rows
        if self.trainer.is_global_zero and writer.path is not None:
            print(f"predictions: {writer.path} ({len(samples)} rows)")

    def before_fit(self) -> None:
        """Refuse a fit whose options contradict each other (LightningCLI calls this before ``trainer.fit``)."""
        from toolkit.freezing import check_unfreeze_epoch

        check_unfreeze_epoch(self.model.hparams.get("unfreeze_at_epoch"), self.trainer.max_epochs)
        check_checkpoint_classes(self.config.fit.get("ckpt_path"), self.datamodule.num_classes, "the data")

    def before_validate(self) -> None:
        check_checkpoint_classes(self.config.validate.get("ckpt_path"), self.datamodule.num_classes, "the data")

    def before_test(self) -> None:
        check_checkpoint_classes(self.config.test.get("ckpt_path"), self.datamodule.num_classes, "the data")

    def before_predict(self) -> None:
        check_checkpoint_classes(self.config.predict.get("ckpt_path"), self.datamodule.num_classes, "the data")

    def fit(self, **kwargs: Any) -> None:
        """``toolkit fit``; a run stopped by the divergence guard is recorded as diverged before the error exits."""
        self._resumed_step = _global_step_in(kwargs.get("ckpt_path"))
        try:
            self.trainer.fit(**kwargs)
        except Diverged as err:
            if self.trainer.is_global_zero:
                _write_result(self.trainer, DIVERGED, reason=str(err))
            raise

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            self._test_best()
        if self.trainer.is_global_zero:
            result = Path(self.trainer.default_root_dir) / keys.RESULT_FILE
            idle = self._resumed_step is not None and self.trainer.global_step == self._resumed_step
            if idle and result.is_file() and not self.config.fit.test_after_fit:
                # resuming a finished run trains nothing: its result stays as it was, not replaced by an empty one
                print(f"nothing left to train (max_epochs reached); {result} kept as it was", flush=True)
            else:
                _write_result(self.trainer)
            print(fit_summary(self.trainer), flush=True)

    def _test_best(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            rank_zero_warn(f"no best {keys.MONITOR} checkpoint (no validation?): testing the final weights instead")
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"tested_checkpoint": "final weights"})
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def check_subcommand_inputs(subcommand: str, ckpt_path: str | None, ensemble_ckpts: list[str] | None) -> None:
    """Refuse options that a subcommand would otherwise ignore or answer with a meaningless number."""
    if subcommand in ("validate", "test", "predict") and not ckpt_path:
        raise ToolkitError(
            f"toolkit {subcommand} needs --ckpt_path (a .ckpt file, or 'last' for <default_root_dir>/checkpoints/"
            "last.ckpt); without it the model's freshly initialised weights would be evaluated"
        )
    if ensemble_ckpts and subcommand != "test":
        raise ToolkitError(f"--ensemble_ckpts is a `toolkit test` option; toolkit {subcommand} would ignore it")
    for member in ensemble_ckpts or []:
        if not Path(member).is_file():
            raise ToolkitError(f"--ensemble_ckpts: checkpoint {member} does not exist; pass existing .ckpt files")
        check_checkpoint(member)


def check_run_home(root: Path, ckpt_dir: Path) -> None:
    """A new fit never writes into a folder that holds another run's checkpoints or result (they would mix)."""
    found = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    found += [keys.RESULT_FILE] if (root / keys.RESULT_FILE).is_file() else []
    if found:
        shown = ", ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "")
        raise ToolkitError(
            f"{root} already holds a run ({shown}); resume it with --ckpt_path last, or start a new run in another "
            "folder with --trainer.default_root_dir (or delete the old one)"
        )


def _write_result(trainer: Trainer, status: str = FINISHED, reason: str | None = None) -> None:
    """``<default_root_dir>/result.json``: how this fit ended (with its test metrics, health record and W&B run id).

    ``status`` is ``done`` for a fit that completed and ``diverged`` for one the divergence guard stopped; a fit
    stopped any other way (SIGTERM, crash) writes nothing, which is how the runner and the report tell an interrupted
    run from a finished one. The health record (``RunHealth``) also goes into the W&B summary as ``health/*``, so a
    report read from the W&B API classifies runs the same way. Written last and atomically.
    """
    import json
    import os
    import time

    health_cb = next((c for c in trainer.callbacks if isinstance(c, RunHealth)), None)
    health = health_cb.summary(trainer, status, reason) if health_cb is not None else {"status": status}
    tested = getattr(trainer.lightning_module, "tested_checkpoint", None)
    if callable(tested):  # the epoch and phase of the checkpoint behind test/* (the report's "change never tested")
        health.update(tested())
    loggers = [lg for lg in trainer.loggers if _is_wandb(lg)]
    for logger in loggers:
        logger.experiment.summary.update(health_summary(health))
    run_id = next((getattr(lg.experiment, "id", None) for lg in loggers), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    result = {
        "status": "done" if status == FINISHED else status,
        "finished_at": time.time(),
        "wandb_id": run_id,
        "metrics": metrics,
        "health": health,
    }
    path = Path(trainer.default_root_dir) / keys.RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def fit_summary(trainer: Trainer) -> str:
    """Where a finished fit left its outputs, and its best validation metric (printed at the end of ``fit``)."""
    root = Path(trainer.default_root_dir)
    lines = []
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    score = getattr(callback, "best_model_score", None) if callback is not None else None
    if best:
        shown = f" ({keys.MONITOR} {float(score):.4f})" if score is not None else ""
        lines.append(f"best checkpoint: {best}{shown}")
    lines.append(f"result: {root / keys.RESULT_FILE}")
    for logger in trainer.loggers:
        if _is_wandb(logger):
            run = logger.experiment
            folder = Path(run.dir).parent if getattr(run, "dir", None) else root / "wandb"
            lines.append(f"W&B run: {folder} (id {getattr(run, 'id', '?')})")
    return "\n".join(lines)


def _is_wandb(logger: Any) -> bool:
    return isinstance(logger, LightningWandbLogger)


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
    if Path(ckpt_path).is_file():
        check_checkpoint(ckpt_path)
    return ckpt_path


def _check_given_checkpoint(config: Any) -> None:
    subcommand = config.get("subcommand")
    ckpt_path = config.get(subcommand, {}).get("ckpt_path") if subcommand else None
    if ckpt_path and Path(ckpt_path).is_file():
        check_checkpoint(ckpt_path)


def check_checkpoint(path: str | Path) -> None:
    """Refuse a checkpoint that cannot be read (truncated copy, another file type) before anything is built.

    ``mmap`` opens the zip archive and its index without reading the tensors, so the check is cheap; a truncated file
    has lost the archive's index at its end and fails here rather than as a traceback deep inside Lightning.
    """
    import zipfile

    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive whose index is at the end of the file
        raise ToolkitError(
            f"checkpoint {path} is not a complete checkpoint archive (truncated, or another kind of file); pass a "
            "complete .ckpt file (copy it again, or use another one)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # torch raises RuntimeError, pickle errors, EOFError... for a broken file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ToolkitError(
            f"checkpoint {path} cannot be read ({first}); it is truncated or not a Lightning checkpoint: pass a "
            "complete .ckpt file (copy it again, or use another one)"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ToolkitError(f"checkpoint {path} holds no state_dict: not a Lightning checkpoint; pass a .ckpt file")


def check_checkpoint_classes(ckpt_path: str | None, num_classes: int, where: str) -> None:
    """A checkpoint's head must have as many outputs as the data has classes (else its weights do not load)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get("hyper_parameters", {})
    saved = hparams.get("num_classes")
    if saved is not None and int(saved) != num_classes:
        raise ToolkitError(
            f"checkpoint {ckpt_path} was trained on {saved} classes but {where} has {num_classes}; evaluate it on "
            "data with the same classes (the same --data options as its fit)"
        )


_EVAL_COMMANDS = ("validate", "test", "predict")
#: model options that may differ from the checkpoint's: test-time switches, and pretrained (ignored: the weights come
#: from the checkpoint, which also sets the logged value)
TEST_TIME_OPTIONS = ("lesion_blocks", "pretrained")


def _model_args_given(config: Any, argv: list[str]) -> dict[str, Any]:
    """The ``--model.<key>`` options on the command line, with their parsed values (first key level)."""
    subcommand = config.get("subcommand")
    model = config.get(subcommand, {}).get("model") if subcommand else None
    if model is None:
        return {}
    keys = {a[len("--model.") :].split("=")[0].split(".")[0] for a in argv if str(a).startswith("--model.")}
    return {key: model.get(key) for key in sorted(keys) if key in model}


def _model_from_checkpoint(model: Any, ckpt_path: str, given: dict[str, Any]) -> None:
    """Set the model's arguments to the checkpoint's hyperparameters; refuse a ``--model.*`` value contradicting them.

    LightningCLI merges them only for a checkpoint path given as a file, not for ``--ckpt_path last``.
    """
    if not Path(ckpt_path).is_file():
        return
    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    for key, value in given.items():
        if key in TEST_TIME_OPTIONS or key not in hparams:
            continue
        saved = hparams[key]
        if _plain(value) != _plain(saved):
            raise ToolkitError(
                f"--model.{key}={_plain(value)!r} conflicts with the checkpoint's {key}={_plain(saved)!r} "
                f"({ckpt_path}); drop --model.{key}: the checkpoint fixes the model (only "
                f"{', '.join(TEST_TIME_OPTIONS)} may change at test time)"
            )
    for key, saved in hparams.items():
        # num_classes and class_names are linked from the data when the classes are built
        # pretrained too: the weights come from the checkpoint, and the logged config says how they were trained
        if key in model and key not in ("lesion_blocks", "num_classes", "class_names"):
            model[key] = saved


def _plain(value: Any) -> Any:
    """A namespace/tuple value as plain dicts and lists, for comparing a parsed option with a saved one."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def _weights_from_checkpoints(subcommand: str | None, config: Any) -> bool:
    """Whether every weight of the model to build comes from a checkpoint (evaluating one or an ensemble)."""
    if subcommand not in _EVAL_COMMANDS:
        return False
    args = config[subcommand]
    return bool(args.get("ckpt_path") or args.get("ensemble_ckpts"))


def _global_step_in(ckpt_path: str | None) -> int | None:
    """The optimizer steps a checkpoint had done (None without a checkpoint file)."""
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    return checkpoint.get("global_step")


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
    quiet_third_party()
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


class _Parsed(Exception):
    """Stops the parse-only CLI right after parsing: nothing is seeded, built or run."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config


class _ParseOnlyCLI(ToolkitCLI):
    """Parses with the subcommand parsers and stops before anything is seeded or built."""

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


def parse_config(argv: list[str]) -> Any:
    """Parse ``argv`` (e.g. ``["fit", "--config", ...]``) with the CLI's parser; instantiate nothing.

    Returns:
        the parsed config (a jsonargparse Namespace; ``config.fit`` holds a fit's options).

    Raises:
        ToolkitError: naming the bad key when the arguments do not parse.
    """
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the check passes args while sys.argv holds the caller's command line: LightningCLI warns about that
        warnings.filterwarnings("ignore", message=_ARGS_WARNING)
        try:
            _ParseOnlyCLI(args=argv)
        except _Parsed as parsed:
            return parsed.config
    raise AssertionError("unreachable: _ParseOnlyCLI always stops after parsing")


def check_args(argv: list[str]) -> None:
    """Parse ``argv`` with the CLI's parser and instantiate nothing; raises ToolkitError naming a bad key."""
    parse_config(argv)


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _subcommand_of(argv: list[str]) -> str | None:
    return next((a for a in argv if a in SUBCOMMANDS), None)


def _parse_error(stderr: str, subcommand: str | None = None) -> str:
    """jsonargparse's ``error:`` line and its indented details as one line, with a pointer to the right --help."""
    pointer = f" (see toolkit {subcommand or '<command>'} --help)"
    lines = stderr.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=None)
    if start is None:
        return (lines[-1].strip() if lines else "invalid arguments") + pointer
    message = " ".join(line.strip() for line in lines[start:] if line.strip())[len("error:") :].strip()
    message = re.sub(r"\s+", " ", message)
    if re.search(r"Literal\[.*'(off|on|no|yes)'.*Got value: (False|True)", message):
        # YAML 1.1 reads unquoted off/on/no/yes as booleans: the most common config mistake with Literal switches
        message += '; YAML reads an unquoted off/on/no/yes as false/true: write it in quotes, e.g. batchnorm: "off"'
    return message + pointer


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config`` file first, so a missing file or a YAML syntax error names the file and line.

    jsonargparse reports YAML errors against ``"<unicode string>"``, which does not say which of several stacked
    configs is broken.
    """
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        file = Path(path)
        if not file.is_file():
            raise ToolkitError(f"--config {path}: no such file; check the path")
        try:
            yaml.safe_load(file.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ToolkitError(f"--config {path}:{where}: YAML syntax error ({problem}); fix the file") from None
