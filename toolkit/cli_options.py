"""The option layer every ``toolkit`` subcommand shares: one spelling rule, the runner's options, one error line.

- **Both spellings.** ``toolkit fit`` (LightningCLI) declares snake_case keys, the torch-free subcommands declare
  dashes; every option takes either (``--dry-run``/``--dry_run``, ``--trainer.max-epochs``/``--trainer.max_epochs``).
  :func:`dashed` and :func:`snake` rewrite an option's *name* to the declared style (values are never touched).
- The runner's options (every command that starts runs takes the same ones) are ``toolkit.ablation.options``'.
- **One error line** (:func:`parse`, through :mod:`toolkit.parse_errors`): jsonargparse's usage dump, tip and
  multi-line error become one ``ToolkitError`` line that points to the subcommand's ``--help``.

Imports neither torch nor Lightning.
"""

from __future__ import annotations

import shutil
from argparse import Action, RawDescriptionHelpFormatter
from typing import Any

from jsonargparse import ArgumentParser, DefaultHelpFormatter
from typing_extensions import override

from toolkit.parse_errors import parse_quietly


def _rename(argv: list[str], old: str, new: str) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--") and not arg.startswith("---"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace(old, new) + sep + value
        out.append(arg)
    return out


def dashed(argv: list[str]) -> list[str]:
    """Option names with dashes (``--dry_run`` -> ``--dry-run``): the torch-free subcommands' style."""
    return _rename(argv, "_", "-")


def snake(argv: list[str]) -> list[str]:
    """Option names in snake_case (``--trainer.max-epochs`` -> ``--trainer.max_epochs``): LightningCLI's style."""
    return _rename(argv, "-", "_")


def parse(parser: ArgumentParser, argv: list[str], command: str) -> Any:
    """Parse ``argv`` (either spelling) with a dash-style parser; a bad option is one ToolkitError line (the toolkit's
    one rewriter, :mod:`toolkit.parse_errors`). ``--help`` still prints and exits 0."""
    parser.exit_on_error = False  # argparse's public switch: jsonargparse then raises its typed ArgumentError
    return parse_quietly(lambda: parser.parse_args(dashed(argv)), f" (see toolkit {command} --help)")


SPELLING = "every option takes dashes or underscores alike (--an-option or --an_option)"


class CompactHelp(DefaultHelpFormatter, RawDescriptionHelpFormatter):
    """``--help`` on one screen: each option's own text (which states its default), without the type and default
    that jsonargparse appends, the help column at 30 and 120 columns wide; the description and the epilog as written
    (argparse's ``RawDescriptionHelpFormatter``: examples stay one per line, copyable)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        super().__init__(prog, max_help_position=30, width=min(120, shutil.get_terminal_size().columns), **kwargs)

    @override
    def _get_help_string(self, action: Action) -> str:
        return action.help or ""

    @override
    def _format_args(self, action: Action, default_metavar: str) -> str:
        return super()._format_args(action, "VALUE")
