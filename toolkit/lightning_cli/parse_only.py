"""Parse ``toolkit fit ...`` command lines with the CLI's own parser and stop there: nothing is seeded or built.

Building LightningCLI's parser costs ~1.5 s (every class signature of the model, data, trainer and callbacks is
read); parsing one command line with it ~0.8 s. :func:`parse_configs` builds the parser once and parses every
command line with it, so the ablation runner's check of a 10-variant spec pays for one parser, not ten.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from toolkit.errors import ToolkitError
from toolkit.lightning_cli.program import ARGS_WARNING, PREBUILT, ToolkitCLI, parser_key


class _Parsed(Exception):
    """Stops the parse-only CLI right after parsing: nothing is seeded, built or run."""

    def __init__(self, results: list[Any]) -> None:
        super().__init__()
        self.results = results


class _ParseOnlyCLI(ToolkitCLI):
    """Parses every command line with the one parser LightningCLI built, then stops before anything is seeded."""

    def __init__(self, argvs: list[list[str]]) -> None:
        self.argvs = argvs
        super().__init__(args=argvs[0])

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        results: list[Any] = []
        for argv in self.argvs:
            try:
                super().parse_arguments(parser, argv)
                results.append(self.config)
            except ToolkitError as err:
                results.append(err)
        raise _Parsed(results)


class _Built(Exception):
    """Stops the CLI that :func:`prebuild_parser` runs right after its parser is built."""


class _PrebuildCLI(ToolkitCLI):
    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        self.key = parser_key(add_subcommands, main_kwargs, subparser_kwargs)
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        PREBUILT.append((self.key, parser, self._subcommand_parsers, self._subcommand_method_arguments))
        raise _Built


def prebuild_parser() -> None:
    """Build the CLI's parser now, for the next CLI of this process to take (:data:`~.program.PREBUILT`).

    The warm worker parent (:mod:`toolkit.worker`) calls it once: each forked run or check then parses with its own
    copy instead of reading every class signature again (~0.2 s a run). Builds only: parses, seeds, starts nothing.
    """
    if PREBUILT:
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        with contextlib.suppress(_Built):
            _PrebuildCLI(args=["fit"])


def parse_configs(argvs: list[list[str]]) -> list[Any]:
    """Parse each command line (e.g. ``["fit", "--config", ...]``) with one CLI parser; instantiate nothing.

    Returns:
        per command line, its parsed config (a jsonargparse Namespace; ``config.fit`` holds a fit's options) or
        the :class:`ToolkitError` naming why it does not parse.
    """
    if not argvs:
        return []
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # the check passes args while sys.argv holds the caller's command line: LightningCLI warns about that
        warnings.filterwarnings("ignore", message=ARGS_WARNING)
        try:
            _ParseOnlyCLI(argvs)
        except _Parsed as parsed:
            return parsed.results
    raise AssertionError("unreachable: _ParseOnlyCLI always stops after parsing")


def parse_config(argv: list[str]) -> Any:
    """Parse ``argv`` with the CLI's parser; instantiate nothing.

    Raises:
        ToolkitError: naming the bad key when the arguments do not parse.
    """
    (result,) = parse_configs([argv])
    if isinstance(result, ToolkitError):
        raise result
    return result


def check_args(argv: list[str]) -> None:
    """Parse ``argv`` with the CLI's parser and instantiate nothing; raises ToolkitError naming a bad key."""
    parse_config(argv)
