"""jsonargparse's usage dump and multi-line ``error:`` as one line: the one rewriter every parser of the toolkit uses.

jsonargparse (through argparse) prints the usage and an ``error:`` paragraph to stderr and exits 2; the toolkit's
rule is one ``error: ...`` line that says what to do. :func:`parse_quietly` turns a parse error into a ToolkitError:
from a parser built with ``exit_on_error=False`` (``ToolkitCLI``) jsonargparse raises its typed ``ArgumentError``
(the message alone, nothing printed); from the others it prints and exits 2, and the stderr captured meanwhile is the
only place the message exists (argparse offers no other), so that text is read. ``--help`` (exit 0) still prints.
Torch-free: ``toolkit ablate`` uses it too.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Callable
from typing import TypeVar

from jsonargparse import ArgumentError

from toolkit.errors import ToolkitError

T = TypeVar("T")


def one_line(stderr: str, pointer: str) -> str:
    """The last ``error:`` paragraph of ``stderr`` as one line, then ``pointer`` (`` (see toolkit fit --help)``)."""
    lines = stderr.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=None)
    if start is None:
        return (lines[-1].strip() if lines else "invalid arguments") + pointer
    return rewrite(" ".join(line.strip() for line in lines[start:] if line.strip())[len("error:") :]) + pointer


def rewrite(message: str) -> str:
    """A jsonargparse error message on one line, with a hint for the commonest config mistake."""
    message = re.sub(r"\s+", " ", message).strip()
    nonfinite = re.search(r"(?:Given|Got) value: ([-+]?(?:nan|inf(?:inity)?))(?:\s|\.|$)", message, re.IGNORECASE)
    if nonfinite:  # jsonargparse reports it as a failed path or import, not as the number it is not
        keys = re.findall(r'Parser key "([^"]+)"', message)
        where = f"--{keys[0]}: {keys[-1]}" if len(keys) > 1 else f"--{keys[0]}" if keys else "a value"
        return f"{where} {nonfinite.group(1)} is not a finite number; give a number such as 0.001"
    # jsonargparse gives no structured form of a type error (value, expected type): its message is the only source
    if re.search(r"Literal\[.*'(off|on|no|yes)'.*Got value: (False|True)", message):
        # YAML 1.1 reads unquoted off/on/no/yes as booleans: the most common config mistake with Literal switches
        message += '; YAML reads an unquoted off/on/no/yes as false/true: write it in quotes, e.g. batchnorm: "off"'
    return message


def parse_quietly(parse: Callable[[], T], pointer: str) -> T:
    """Run ``parse()``; a parse error (exit 2) becomes a ToolkitError of :func:`one_line`, other output is kept.

    Args:
        parse: the call that parses (and may go on to run, as LightningCLI does).
        pointer: appended to the message, saying where the help is.
    """
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse()
    except ArgumentError as error:  # typed: a parser with exit_on_error=False
        raise ToolkitError(rewrite(str(error)) + pointer) from None
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise
        raise ToolkitError(one_line(err.getvalue(), pointer)) from None
    finally:
        if err.getvalue() and "error:" not in err.getvalue():
            print(err.getvalue(), end="", file=sys.stderr)
