"""How much a command prints: ``-q``/``-v`` on every subcommand, and the one place third-party noise is filtered.

Three levels, set once per process by the ``toolkit`` entry point (:func:`take_verbosity`, :func:`set_verbosity`):

- **normal** (default): third-party adverts and hints that do not apply are dropped (each filter names the exact
  message it drops, so a new warning from the same library still shows), a warning or Lightning message already
  shown is not shown again, a warning is one line (no source line such as ``rank_zero_warn(``), and W&B is
  ``quiet`` (no version banner, no 20-line run history and summary at the end, no sync hint: the toolkit prints the
  W&B run's folder itself); progress bars (Lightning's, tqdm's) only on a terminal.
- **quiet** (``-q``): errors and the final result lines only: no warnings, no logging below ERROR, W&B ``silent``;
  the commands leave out their progress (bars, epoch lines, model summary, the live table).
- **verbose** (``-v``): everything, as the libraries print it (no filter at all).

Lightning and W&B print through ``warnings``, ``logging`` and their own settings (``WANDB_QUIET``/``WANDB_SILENT``);
neither offers one switch for all of it, so this module sets each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from typing import TextIO

from typing_extensions import override

QUIET, NORMAL, VERBOSE = -1, 0, 1
_FLAGS = {"-q": QUIET, "--quiet": QUIET, "-v": VERBOSE, "--verbose": VERBOSE}
_level = NORMAL

#: warnings.filterwarnings message regexes (matched at the start of the message)
_WARNINGS = (
    # the linear probe and `batchnorm: frozen` keep modules in eval mode on purpose (the frozen contract)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # `model.probe: lbfgs` solves the head before the probe epochs, whose training steps then return None on purpose
    r"`training_step` returned `None`. If this was on purpose",
    # the ablation runner starts runs inside a Slurm task without srun on purpose (one process per task)
    r"The `srun` command is available on your system but is not used",
    # Lightning 2.6 calls a torch pytree API that torch deprecates; not ours to fix
    r".*isinstance\(treespec, LeafSpec\)",
    r".*deprecated in v4\.49\.0",
    r".*skip_none parameter was deprecated",
)

#: logging messages dropped (regexes matched at the start), per logger
_ADVERTS = (r"💡 Tip: ",)  # Lightning's litlogger/litmodels adverts, once per Trainer
_LR_FIND = r".*[/\\]\.lr_find_[0-9a-f-]+\.ckpt"  # the lr finder's temporary checkpoint, deleted right after
_LOG_DROPS = {
    "lightning.pytorch.utilities.rank_zero": (
        *_ADVERTS,
        r"Restoring states from the checkpoint path at " + _LR_FIND,
        r"Restored all states from the checkpoint at " + _LR_FIND,
        # said before every fit with an lr schedule (the schedules need the step count): nothing for the user to do
        r"Loading `train_dataloader` to estimate number of stepping batches",
        # the toolkit's summary (`callbacks.model_summary`) stands in for Lightning's default on purpose
        r"Trainer already configured with model summary callbacks: \[<class 'toolkit\.callbacks\.model_summary\.",
    ),
    "lightning.fabric.utilities.rank_zero": _ADVERTS,
    # Lightning restoring its own lr-finder checkpoint
    "lightning.pytorch.trainer.connectors.checkpoint_connector": (r"`weights_only` was not set, defaulting to",),
}
#: loggers whose repeated messages are shown once (doctor builds several Trainers: "GPU available: ..." each time)
_ONCE = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _Drop(logging.Filter):
    """Drops the records whose message matches one of ``patterns``, and with ``once`` a message already let through."""

    def __init__(self, patterns: tuple[str, ...], once: bool) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.once = once
        self.seen: set[str] = set()

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if self.pattern is not None and self.pattern.match(text):
            return False
        if self.once:
            if text in self.seen:
                return False
            self.seen.add(text)
        return True


_shown: set[tuple[type, str]] = set()


def _show_once(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` of the normal level: each warning once per process, as one line (``line=""``: no
    source line, e.g. ``rank_zero_warn(`` under a toolkit callback's warning)."""
    key = (category, str(message))
    if key in _shown:
        return
    _shown.add(key)
    stream = file if file is not None else sys.stderr
    with contextlib.suppress(OSError, AttributeError):  # no stderr (a daemon): as the default hook does
        stream.write(warnings.formatwarning(message, category, filename, lineno, ""))


def take_verbosity(args: list[str]) -> tuple[list[str], int]:
    """The command line without ``-q``/``--quiet``/``-v``/``--verbose`` (every subcommand takes them, anywhere
    before a ``--``), and the level they ask for (the last one wins; none: normal)."""
    level, kept = NORMAL, []
    for i, arg in enumerate(args):
        if arg == "--":
            kept += args[i:]
            break
        if arg in _FLAGS:
            level = _FLAGS[arg]
        else:
            kept.append(arg)
    return kept, level


def verbosity() -> int:
    """The level this process prints at (`QUIET`, `NORMAL`, `VERBOSE`)."""
    return _level


def set_verbosity(level: int) -> None:
    """Set this process's level and install what it needs (once, before Lightning or W&B start).

    W&B's settings go through the environment (``WANDB_QUIET``/``WANDB_SILENT``, so a value the user set wins); the
    runs an ablation starts inherit the normal level's ``WANDB_QUIET`` (their ``run.log`` keeps every epoch line).
    """
    global _level
    _level = level
    if level >= VERBOSE:
        return
    os.environ.setdefault("WANDB_QUIET", "true")
    if level <= QUIET or not (sys.stderr and sys.stderr.isatty()):  # tqdm (Lightning's lr finder): on a terminal only
        os.environ.setdefault("TQDM_DISABLE", "1")
    quiet_third_party()
    if level <= QUIET:
        os.environ.setdefault("WANDB_SILENT", "true")
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # errors only


def quiet_third_party() -> None:
    """Install the normal level's filters (idempotent; nothing at the verbose level); call before Lightning starts."""
    if _level >= VERBOSE:
        return
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.showwarning = _show_once
    for name in {**_LOG_DROPS, **dict.fromkeys(_ONCE, ())}:
        _install(name, _LOG_DROPS.get(name, ()), once=name in _ONCE)


def _install(name: str, patterns: tuple[str, ...], once: bool) -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(f, _Drop) for f in logger.filters):
        logger.addFilter(_Drop(patterns, once))
