"""The command line before LightningCLI sees it: config files checked first, the subcommand, the ``--model.*`` given.

The parse error itself becomes one line in :mod:`toolkit.parse_errors` (shared with ``toolkit ablate``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit import safe_yaml
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.ckpt_model import model_args_given as explicit_model_args

SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: config files already checked in this process, by (path, mtime, size): the ablation runner parses every variant
#: with the same base configs, and checks each once (an edited file has a new mtime or size and is checked again)
_CHECKED: set[tuple[str, int, int]] = set()


def subcommand_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (None before one is given)."""
    return next((a for a in argv if a in SUBCOMMANDS), None)


def help_pointer(argv: list[str]) -> str:
    """Where the help for this command line is: `` (see toolkit fit --help)``."""
    return f" (see toolkit {subcommand_of(argv) or '<command>'} --help)"


def model_args_given(config: Any, argv: list[str]) -> dict[str, Any]:
    """The ``model`` options given explicitly (command line, ``--config`` files, ``--model`` values), parsed."""
    subcommand = config.get("subcommand")
    return explicit_model_args(config.get(subcommand, {}).get("model") if subcommand else None, argv)


def check_config_files(argv: list[str]) -> None:
    """Read every ``--config`` file first, so a missing file or a YAML syntax error names the file and line.

    jsonargparse reports YAML errors against ``"<unicode string>"``, which does not say which of several stacked
    configs is broken. A file is read once per process while it stays unchanged.
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
        stat = file.stat()
        version = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
        if version in _CHECKED:
            continue
        try:
            safe_yaml.load(safe_yaml.read_config_text(file, f"--config {path}"))
        except safe_yaml.AliasBombError as err:
            raise ToolkitError(f"--config {path}: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ToolkitError(f"--config {path}:{where}: YAML syntax error ({problem}); fix the file") from None
        _CHECKED.add(version)
