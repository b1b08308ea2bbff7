"""``toolkit fit --help`` in one screen: each option group with its option names; ``--help full`` has the rest.

LightningCLI's help lists every option of the model, the data, the Trainer and each callback with its description:
over a thousand lines. This keeps jsonargparse's own grouping and order and drops the descriptions; it reads the
help text jsonargparse printed, so it never disagrees with the parser.
"""

from __future__ import annotations

import re
import textwrap

#: an option line of jsonargparse's help: two spaces, then the option (``-c CONFIG, --config CONFIG``)
_OPTION = re.compile(r"^  (-\w, )?(--[\w.]+)")
_WIDTH = 118


def wants_short_help(args: list[str]) -> bool:
    """``-h``/``--help`` without ``full`` after it (``--help full`` asks for jsonargparse's whole help)."""
    for i, arg in enumerate(args):
        if arg in ("-h", "--help"):
            return not (i + 1 < len(args) and args[i + 1] == "full")
    return False


def full_help_args(args: list[str]) -> list[str]:
    """``args`` with the ``full`` after ``--help`` removed (jsonargparse's ``--help`` takes no value)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg in ("-h", "--help") and i + 1 < len(out) and out[i + 1] == "full":
            del out[i + 1]
            break
    return out


def condense(help_text: str, subcommand: str) -> str:
    """jsonargparse's help reduced to its groups and their option names (``.help`` options left out)."""
    groups: list[tuple[str, list[str]]] = []
    for line in help_text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":") and not line.startswith("usage"):
            groups.append((line[:-1], []))
            continue
        match = _OPTION.match(line)
        if match and groups and not match.group(2).endswith(".help") and match.group(2) != "--help":
            name = match.group(2)
            if name not in groups[-1][1]:
                groups[-1][1].append(name)
    lines = [f"usage: toolkit {subcommand} [--config FILE ...] [--<group>.<option> VALUE ...]", ""]
    for title, names in groups:
        if not names or title == "Linked arguments":
            continue
        key = names[-1].lstrip("-").split(".")[0] if title != "options" else "general"
        lines.append(f"{key}: {title}" if title != "options" else "general: --config FILE (stackable), and")
        lines += textwrap.wrap(", ".join(names), _WIDTH, initial_indent="  ", subsequent_indent="  ")
    lines += [
        "",
        f"toolkit {subcommand} --help full: every option with its type, default and description.",
        "The model and data options are explained in README.md (Training: toolkit fit|validate|test|predict).",
    ]
    return "\n".join(lines)
