"""The command line before LightningCLI sees it: config files checked first, the subcommand, the ``--model.*`` given.

The parse error itself becomes one line in :mod:`toolkit.parse_errors` (shared with ``toolkit ablate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ToolkitError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def subcommand_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (None before one is given)."""
    return next((a for a in argv if a in SUBCOMMANDS), None)


def help_pointer(argv: list[str]) -> str:
    """Where the help for this command line is: `` (see toolkit fit --help)``."""
    return f" (see toolkit {subcommand_of(argv) or '<command>'} --help)"


def model_args_given(config: Any, argv: list[str]) -> dict[str, Any]:
    """The ``--model.<key>`` options on the command line, with their parsed values (first key level)."""
    subcommand = config.get("subcommand")
    model = config.get(subcommand, {}).get("model") if subcommand else None
    if model is None:
        return {}
    given = {a[len("--model.") :].split("=")[0].split(".")[0] for a in argv if str(a).startswith("--model.")}
    return {key: model.get(key) for key in sorted(given) if key in model}


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
