"""Silence third-party noise in every run's output: advertisements, hints that do not apply, deprecations.

Each filter names the exact message it drops, so a new warning from the same library still shows. Lightning and
W&B print these through ``warnings`` and ``logging``; neither offers a switch for them.
"""

from __future__ import annotations

import logging
import warnings

from typing_extensions import override

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

#: logging messages dropped by prefix, per logger
_LOG_PREFIXES = {
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip: For seamless cloud logging",),
}


class _DropPrefixes(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_third_party() -> None:
    """Install the filters (idempotent); call once per process before Lightning starts."""
    for message in _WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name, prefixes in _LOG_PREFIXES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefixes) for f in logger.filters):
            logger.addFilter(_DropPrefixes(prefixes))
