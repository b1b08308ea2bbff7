"""Refuse parsed ``toolkit fit|validate|test|predict`` options that jsonargparse lets through, before anything runs.

Each check names its option: a seed numpy cannot take, a negative optimizer number, a ``class_path`` that is not the
kind of class its option builds (a config may name any importable callable: ``class_path: os.system`` would run a
command when the optimizer is built), a run folder that is a file or empty, ``--weights_only false``, trainer values
Lightning would take late or loop on, ``probe: lbfgs`` without a frozen backbone.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

#: numpy's (and so Lightning's ``seed_everything``) seed range
SEED_MIN, SEED_MAX = 0, 2**32 - 1
#: optimizer arguments torch requires to be >= 0 (it raises a ValueError only when the optimizer is built)
NON_NEGATIVE_OPTIMIZER_ARGS = ("lr", "weight_decay", "eps", "momentum", "dampening")


def check_seed(value: Any, option: str) -> None:
    """A seed must be an integer in [0, 2**32 - 1] (``false``: not seeded). ``true`` is refused: Lightning then seeds
    with 0 (not a random seed), so a study's "random" seeds would all be one."""
    if value is True:
        raise ToolkitError(f"{option} true: Lightning seeds every such run with 0; pass an integer seed ({option} 1)")
    if value is False or value is None:
        return
    if not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise ToolkitError(f"{option} {value!r}: a seed must be an integer in [0, 2**32 - 1 = {SEED_MAX}]")


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _base_classes(option: str) -> tuple[type, ...]:
    import torch
    from lightning.pytorch.cli import ReduceLROnPlateau

    return {
        "model.optimizer": (torch.optim.Optimizer,),
        "model.lr_scheduler": (torch.optim.lr_scheduler.LRScheduler, ReduceLROnPlateau),
    }[option]


def check_class_path(value: Any, option: str) -> None:
    """``--<option>`` given as ``class_path``: it must name a class of the option's base type (not any callable).

    jsonargparse checks a class type's ``class_path`` itself but lets a ``Callable`` option (optimizer, lr_scheduler)
    name any function; that function would only be called when the model configures its optimizers.
    """
    class_path = getattr(value, "class_path", None)
    if not isinstance(class_path, str):
        return
    bases = _base_classes(option)
    target = _import(class_path)
    if not (isinstance(target, type) and issubclass(target, bases)):
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        raise ToolkitError(
            f"--{option}.class_path {class_path} is not a subclass of {names}; name an optimizer/scheduler class "
            "(a config may only build what its option is for)"
        )


def check_optimizer_args(value: Any) -> None:
    """The optimizer's lr, weight_decay, eps, momentum and dampening must not be negative."""
    init_args = getattr(value, "init_args", None)
    for name in NON_NEGATIVE_OPTIMIZER_ARGS:
        number = getattr(init_args, name, None) if init_args is not None else None
        if isinstance(number, (int, float)) and not isinstance(number, bool) and number < 0:
            raise ToolkitError(f"--model.optimizer.init_args.{name} {number}: must be >= 0")


def check_root_dir(path: str | None, option: str) -> None:
    """A run folder (or one of its parents) that exists as a file cannot hold the run: name the option. An empty one
    is refused too: it would write into the current folder without being asked to (``.`` asks for it)."""
    if path is None:
        return
    if not str(path).strip():
        raise ToolkitError(
            f"{option} {str(path)!r}: an empty folder would put the run's files in the current folder; pass a folder "
            "(or '.' to mean the current folder)"
        )
    folder = Path(path).expanduser()
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise ToolkitError(f"{option} {path}: {candidate} is a file, not a folder; pass a folder for the run")
            return


#: Lightning trainer options the toolkit passes on: (lowest allowed value, what the value means), checked here because
#: Lightning's own errors come late and without the option's name (accumulate_grad_batches 0: a ZeroDivisionError)
TRAINER_MINIMUM: dict[str, tuple[float, str]] = {
    "accumulate_grad_batches": (1, "batches per optimizer step"),
    "check_val_every_n_epoch": (1, "epochs between validations"),
    "log_every_n_steps": (1, "steps between logged values"),
    "min_epochs": (0, "epochs"),
    "min_steps": (0, "steps"),
    "num_sanity_val_steps": (-1, "batches (-1: all)"),
}


def check_trainer(trainer: Any) -> None:
    """Trainer values Lightning would reject late, misread or loop on forever, refused with the option's name."""
    for key, (low, meaning) in TRAINER_MINIMUM.items():
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise ToolkitError(f"--trainer.{key} {value}: must be >= {low} ({meaning})")
    epochs = trainer.get("max_epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and (epochs == 0 or epochs < -1):
        raise ToolkitError(f"--trainer.max_epochs {epochs}: must be >= 1 (or -1 with --trainer.max_steps for no limit)")
    steps = trainer.get("max_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and (steps == 0 or steps < -1):
        raise ToolkitError(f"--trainer.max_steps {steps}: must be >= 1, or -1 for no limit")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and not interval > 0:
        raise ToolkitError(
            f"--trainer.val_check_interval {interval}: must be > 0 (a fraction of an epoch, or a number of batches)"
        )
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        value = trainer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
            raise ToolkitError(f"--trainer.{key} {value}: must be >= 0 (a fraction of the batches, or a number)")
    clip = trainer.get("gradient_clip_val")
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and not clip >= 0:
        raise ToolkitError(f"--trainer.gradient_clip_val {clip}: must be >= 0 (0 or null: no clipping)")


def check_probe(model: Any) -> None:
    """``probe: lbfgs`` solves the head of a frozen backbone: without one it would do nothing, yet be recorded."""
    if model.get("probe") == "lbfgs" and not model.get("freeze_backbone"):
        raise ToolkitError(
            "--model.probe lbfgs solves the head on a frozen backbone's features, but freeze_backbone is false (a full "
            "fine-tune has no probe phase): set --model.probe sgd, or --model.freeze_backbone true"
        )


def check_weights_only(value: Any) -> None:
    """Checkpoints are data: ``--weights_only false`` (Lightning's arbitrary unpickler) is refused."""
    if value is False:
        raise ToolkitError(
            "--weights_only false: the toolkit reads checkpoints as data only (nothing in a checkpoint may run); drop "
            "--weights_only"
        )


def enforce_import_denylist() -> None:
    """Turn on jsonargparse's import-path denylist now (its default from v5): a config value naming ``os``,
    ``subprocess``, ``builtins.eval`` and the like is refused when parsed, whatever option it is given to."""
    from jsonargparse import set_parsing_settings

    set_parsing_settings(import_path_denylist=[])  # the default entries, enforced


def check_parsed(subcommand: str, config: Any) -> None:
    """Every check above on the parsed options of ``subcommand`` (``config[subcommand]``)."""
    check_seed(config.get("seed_everything"), "--seed_everything")
    check_weights_only(config.get("weights_only"))
    model = config.get("model")
    if model is not None:
        for option in ("model.optimizer", "model.lr_scheduler"):
            check_class_path(model.get(option.split(".")[1]), option)
        check_optimizer_args(model.get("optimizer"))
        if subcommand == "fit":
            check_probe(model)
    trainer = config.get("trainer")
    if trainer is not None:
        check_root_dir(trainer.get("default_root_dir"), "--trainer.default_root_dir")
        check_trainer(trainer)
