"""LightningCLI wiring of ``toolkit fit|validate|test|predict``: arguments, links, callbacks, logger, the subcommands.

The other jobs of the command live beside it: :mod:`.parsing` (the command line before LightningCLI; the parse
error becomes one line in :mod:`toolkit.parse_errors`), :mod:`.run_home` (the run folder, ``--ckpt_path last``,
the W&B run), :mod:`.checkpoint` (a checkpoint read once per command) and :mod:`.teardown` (``result.json``, the
summary, closing W&B).
"""

from __future__ import annotations

import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from toolkit import keys, safe_yaml
from toolkit.atomic import NO_RIGHTS, NO_SPACE
from toolkit.callbacks.early_stop import EarlyStop
from toolkit.callbacks.epoch_log import EpochLog
from toolkit.callbacks.health import DIVERGED, Diverged, DivergenceGuard, RunHealth
from toolkit.callbacks.model_summary import ModelSummary
from toolkit.callbacks.pruning import SearchTrial, TrialPruning
from toolkit.callbacks.random_state import RandomStateCheckpoint
from toolkit.callbacks.run_facts import RunFacts
from toolkit.callbacks.signal_save import SaveOnSignal
from toolkit.data.datamodule import ImageDataModule
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.checkpoint import CheckpointReaders
from toolkit.lightning_cli.checkpoint_io import OneWritePerState
from toolkit.lightning_cli.ckpt_model import check_resume_folder, evaluated_run
from toolkit.lightning_cli.parsed_checks import check_parsed, enforce_import_denylist
from toolkit.lightning_cli.parsing import check_config_files, help_pointer, model_args_given
from toolkit.lightning_cli.run_home import (
    EVAL_COMMANDS,
    check_run_home,
    check_subcommand_inputs,
    check_writable,
    is_toolkit_logger,
    name_wandb_run,
    resolve_ckpt,
    resume_wandb_run,
    set_checkpoint_dirs,
)
from toolkit.lightning_cli.teardown import finish_wandb, fit_summary, write_result
from toolkit.lightning_cli.tracking import RunIdCheckpoint
from toolkit.model.classifier import ImageClassifier
from toolkit.parse_errors import parse_quietly
from toolkit.quiet import QUIET, VERBOSE, quiet_third_party, verbosity
from toolkit.study.layout import RESULT_FILE


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


#: a parser built ahead of use, taken by the next CLI of this process that asks for the same parser arguments (the
#: warm parent builds it once before it forks the runs; see :func:`toolkit.lightning_cli.parse_only.prebuild_parser`):
#: ``(its setup_parser arguments, parser, subcommand parsers, method arguments)``
PREBUILT: list[tuple[str, LightningArgumentParser, dict[str, Any], dict[str, Any]]] = []


def parser_key(*setup_args: Any) -> str:
    """What :meth:`ToolkitCLI.setup_parser` was asked for, comparable: a prebuilt parser serves only the same."""
    return repr(setup_args)


class ToolkitCLI(LightningCLI):
    """``toolkit fit|validate|test|predict`` for :class:`ImageClassifier` on :class:`ImageDataModule`."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        self.checkpoints = CheckpointReaders()  # every checkpoint file this command reads, each opened once
        safe_yaml.bound_jsonargparse()  # every YAML file and value the parser reads: aliases bounded
        enforce_import_denylist()  # a config naming os.system, subprocess, eval... is refused when parsed
        super().__init__(
            ImageClassifier,
            ImageDataModule,
            save_config_callback=LoggedConfig,
            save_config_kwargs={"overwrite": True},
            # a parse error raises jsonargparse's typed ArgumentError (see toolkit.parse_errors), printing nothing
            parser_kwargs={
                "prog": "toolkit",
                "description": "Transfer learning and ablations with timm backbones.",
                "exit_on_error": False,
            },
            args=args,
            run=run,
            auto_configure_optimizers=False,  # the model's optimizer/lr_scheduler arguments own this
            # what Lightning's default `true` gave (no PL_GLOBAL_SEED: seed 0), said as it is; `true` is refused
            seed_everything_default=0,
        )

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parser, or the one built ahead of use in this process (the same code built it; used once)."""
        if PREBUILT and PREBUILT[-1][0] == parser_key(add_subcommands, main_kwargs, subparser_kwargs):
            _, self.parser, self._subcommand_parsers, self._subcommand_method_arguments = PREBUILT.pop()
            return
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, turning jsonargparse's usage dump + error into one ToolkitError line (``--help`` still prints)."""
        argv = list(sys.argv[1:] if args is None else args)
        check_config_files(argv)

        def parse() -> None:
            super(ToolkitCLI, self).parse_arguments(parser, args)
            # before LightningCLI merges the checkpoint's hyperparameters over them
            self.model_args_given = model_args_given(self.config, argv)
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config.get(subcommand, {}).get("ckpt_path") if subcommand else None
            reader = self.checkpoints.get(ckpt_path)
            if reader is not None:
                reader.check()  # LightningCLI reads it next, before any hook of ours
            # before LightningCLI seeds or builds anything; no subcommand: built for toolkit doctor
            check_parsed(subcommand or "fit", self.config[subcommand] if subcommand else self.config)

        parse_quietly(parse, help_pointer(argv))

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
            "--search_trial",
            type=SearchTrial | None,
            default=None,
            help="the Optuna trial this fit is: report val metrics to it, stop when pruned (set by toolkit search)",
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
                "trainer.logger": {"class_path": "toolkit.lightning_cli.tracking.WandbLogger"},
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
        # the budget policy: trainer.max_epochs is the cap, ``--early_stopping.patience N`` stops each run at its own
        # convergence on val (off by default)
        parser.add_lightning_class_args(EarlyStop, "early_stopping")
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = Path(config.trainer.default_root_dir or ".")
        set_checkpoint_dirs(config, root)
        if "weights_only" in config:  # Lightning's own load as data too, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
            config.weights_only = True
        check_subcommand_inputs(
            self.subcommand, config.get("ckpt_path"), config.get("ensemble_ckpts"), self.checkpoints
        )
        check_writable(root)  # every subcommand writes its W&B run (and config) there
        if self.subcommand == "fit" and not config.get("ckpt_path"):
            check_run_home(root, Path(config.checkpoint.dirpath))
        logger = config.trainer.logger
        if is_toolkit_logger(logger):
            name_wandb_run(logger, root, config.ablation)
        if config.get("ckpt_path"):
            config.ckpt_path = resolve_ckpt(config.ckpt_path, config.checkpoint.dirpath, self.checkpoints)
        reader = self.checkpoints.get(config.get("ckpt_path"))
        if reader is not None:  # every subcommand: the checkpoint fixes the model
            reader.apply_to(config.model, getattr(self, "model_args_given", {}))
        if self.subcommand in EVAL_COMMANDS:
            # its own files beside a fit's (config.yaml stays the fit's), and its own W&B job type and group
            self.save_config_kwargs["config_filename"] = f"{self.subcommand}_config.yaml"
            if is_toolkit_logger(logger) and reader is not None:
                logger.init_args.job_type = logger.init_args.job_type or self.subcommand
                logger.init_args.group = logger.init_args.group or evaluated_run(reader.path, reader.run_id)
        elif is_toolkit_logger(logger):
            logger.init_args.job_type = logger.init_args.job_type or "fit"
        if self.subcommand == "fit" and reader is not None:
            check_resume_folder(reader.path, config.checkpoint.dirpath)
        if self.subcommand == "fit" and reader is not None and reader.run_id and is_toolkit_logger(logger):
            resume_wandb_run(logger, reader.run_id, self.save_config_kwargs)

    @override
    def instantiate_classes(self) -> None:
        """Build the model; with a checkpoint to evaluate, without pretrained weights (the checkpoint has them all).

        ``data.split_seed: seed`` is given the run's ``seed_everything`` here, explicitly, before the data module is
        built (the doctor's build too)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        if "data" in config and config.data is not None and config.data.get("split_seed") == "seed":
            seed = config.get("seed_everything")
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise ToolkitError("data.split_seed: seed needs the run's seed; set seed_everything (an integer)")
            config.data.split_seed = seed
        if _weights_from_checkpoints(self.subcommand, self.config):  # said to the model, explicitly
            config.model.weights_from_checkpoint = True
        super().instantiate_classes()

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with the callbacks every toolkit run has beside the configured ones."""
        config = self.config_init.get(str(self.subcommand), self.config_init)
        given = config.trainer.get("callbacks") or []
        listed = list(given) if isinstance(given, list) else [given]
        callbacks = [*listed]
        bar_listed = any(isinstance(c, ProgressBar) for c in listed)
        summary_listed = any(isinstance(c, LightningModelSummary) for c in listed)
        # a progress bar on a terminal only (in a CI log or an ablation's run.log the epoch lines say the same, and a
        # bar is a frame of box characters); -q: neither it nor the model summary. The config stays as given.
        bar = verbosity() >= VERBOSE or (verbosity() > QUIET and sys.stdout.isatty())
        if not bar and not bar_listed:
            kwargs.setdefault("enable_progress_bar", False)
        elif not bar_listed and config.trainer.get("enable_progress_bar", True) is not False:
            callbacks.append(RichProgressBar())
        if verbosity() <= QUIET and not summary_listed:
            kwargs.setdefault("enable_model_summary", False)
        elif not summary_listed and config.trainer.get("enable_model_summary", True) is not False:
            callbacks.append(ModelSummary())  # Lightning's, less the FLOPs column it never counts here (always 0)
        callbacks.append(RunIdCheckpoint())
        if not any(isinstance(c, EpochLog) for c in listed):
            callbacks.append(EpochLog())
        callbacks.append(RandomStateCheckpoint())  # a resumed fit continues the same random stream
        callbacks.append(SaveOnSignal())  # SIGTERM (Slurm's time limit, preemption): last.ckpt mid-epoch, exact resume
        callbacks.append(RunHealth())  # what result.json and the report's run-health classes need
        callbacks.append(RunFacts())  # device, precision, autocast, compile, world size: measured, into result.json
        if self.subcommand == "fit" and config.get("search_trial") is not None:
            callbacks.append(TrialPruning(config.search_trial))
        if self.subcommand == "test" and config.get("ensemble_ckpts"):
            from toolkit.callbacks.ensemble import CheckpointEnsemble

            callbacks.append(CheckpointEnsemble(config.ensemble_ckpts))
        trainer = super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default; a configured one stays
            trainer.strategy.checkpoint_io = OneWritePerState()  # best and last of one epoch: one write, a hard link
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
        from toolkit.model.freezing import check_unfreeze_epoch

        check_unfreeze_epoch(self.model.hparams.get("unfreeze_at_epoch"), self.trainer.max_epochs)
        self._check_classes("fit")

    def before_validate(self) -> None:
        """Refuse a checkpoint trained on other classes."""
        self._check_classes("validate")

    def before_test(self) -> None:
        """Refuse a checkpoint trained on other classes."""
        self._check_classes("test")

    def before_predict(self) -> None:
        """Refuse a checkpoint trained on other classes."""
        self._check_classes("predict")

    def _check_classes(self, subcommand: str) -> None:
        reader = self.checkpoints.get(self.config[subcommand].get("ckpt_path"))
        if reader is not None:
            reader.check_classes(self.datamodule.num_classes, "the data")

    def fit(self, **kwargs: Any) -> None:
        """``toolkit fit``; a run stopped by the divergence guard is recorded as diverged before the error exits."""
        _check_batch_of_one(self.model, self.datamodule)
        reader = self.checkpoints.get(kwargs.get("ckpt_path"))
        self._resumed_step = reader.global_step if reader is not None else None
        try:
            self.trainer.fit(**kwargs)
        except Diverged as err:
            if self.trainer.is_global_zero:
                write_result(self.trainer, DIVERGED, reason=str(err))
            raise
        except OSError as err:  # a checkpoint or log write failed: say where (Lightning's error names no file)
            if err.errno in NO_SPACE | NO_RIGHTS and not err.filename:
                raise OSError(err.errno, err.strerror, f"a file under {self.trainer.default_root_dir}") from err
            raise

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            self._test_best()
        if self.trainer.is_global_zero:
            result = Path(self.trainer.default_root_dir) / RESULT_FILE
            idle = self._resumed_step is not None and self.trainer.global_step == self._resumed_step
            if idle and result.is_file() and not self.config.fit.test_after_fit:
                # resuming a finished run trains nothing: its result stays as it was, not replaced by an empty one
                print(f"nothing left to train (max_epochs reached); {result} kept as it was", flush=True)
            else:
                write_result(self.trainer)
            print(fit_summary(self.trainer), flush=True)

    def _test_best(self) -> None:
        callback = self.trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not best:
            rank_zero_warn(f"no best {keys.MONITOR} checkpoint (no validation?): testing the final weights instead")
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"tested_checkpoint": "final weights"})
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)


def _check_batch_of_one(model: Any, datamodule: Any) -> None:
    """Batches of one sample with BatchNorm that trains: its batch statistics would be one image's (and a 1x1 map
    cannot be normalised at all: PyTorch raises mid-epoch); refused before training with the options to change."""
    hparams = getattr(model, "hparams", {})
    if getattr(datamodule, "batch_size", None) != 1 or hparams.get("batchnorm") != "on":
        return
    if hparams.get("freeze_backbone") and hparams.get("unfreeze_at_epoch") is None:
        return  # a linear probe: the backbone's BatchNorm stays in eval mode
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ToolkitError(
            "--data.batch_size 1 with BatchNorm that trains (model.batchnorm: on): one image per batch cannot be "
            "batch-normalised; use --data.batch_size 2 or more, or --model.batchnorm frozen"
        )


def _weights_from_checkpoints(subcommand: str | None, config: Any) -> bool:
    """Whether every weight of the model to build comes from a checkpoint (evaluating one or an ensemble)."""
    if subcommand not in EVAL_COMMANDS:
        return False
    args = config[subcommand]
    return bool(args.get("ckpt_path") or args.get("ensemble_ckpts"))


#: the warning LightningCLI gives when called with ``args`` from Python (the caller's sys.argv is not the command)
ARGS_WARNING = ".*args parameter is intended to run from within Python"


def run_cli(args: list[str] | None = None) -> ToolkitCLI:
    """Run ``toolkit <subcommand> ...`` in this process (the console script calls this)."""
    quiet_third_party()
    try:
        with warnings.catch_warnings():
            if args is not None:  # called from Python (tests, the runner's checks): sys.argv is the caller's
                warnings.filterwarnings("ignore", message=ARGS_WARNING)
            return ToolkitCLI(args=args)
    except SIGTERMException:
        # Lightning stops cleanly on SIGTERM but its exception exits with status 0; a stopped run is no success
        sys.exit(128 + signal.SIGTERM)
    finally:
        finish_wandb()
