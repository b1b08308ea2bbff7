"""The one YAML loader of every file and value the toolkit reads: safe, with a bound on what aliases expand to.

PyYAML shares an aliased node instead of copying it, so ``safe_load`` of a "billion laughs" file (each list repeating
the previous one nine times through aliases) returns at once, and whatever walks the result later (jsonargparse's
checks, a run id's hash, ``json.dumps``) hangs. PyYAML has no limit for this, so the composed node graph is measured
here, each shared node once (linear time), before anything is built from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ToolkitError

#: the most nodes a document may expand to; a config or spec has hundreds
MAX_EXPANDED_NODES = 100_000


class AliasBombError(yaml.YAMLError):
    """A YAML document whose aliases expand to more than `MAX_EXPANDED_NODES` nodes."""


def expanded_size(node: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """How many nodes ``node`` stands for once every alias is expanded; stops counting past ``limit``."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = 1  # a recursive alias counts once (PyYAML builds a cycle, not an expansion)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        sizes[id(n)] = total = min(total, limit + 1)
        return total

    return size(node)


class BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document expanding past `MAX_EXPANDED_NODES` nodes before building it."""

    def compose_document(self) -> yaml.Node:  # PyYAML's hook between parsing and constructing
        node = super().compose_document()
        if node is not None and expanded_size(node) > MAX_EXPANDED_NODES:
            raise AliasBombError(
                f"its aliases (*name) expand to more than {MAX_EXPANDED_NODES:,} values (a 'billion laughs' "
                "document); write the values out instead of nesting aliases"
            )
        return node


def load(text: str) -> Any:
    """``yaml.safe_load`` with the alias bound; raises `AliasBombError` (a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=BoundedLoader)


def check_aliases(text: str) -> None:
    """Raise `AliasBombError` when ``text`` is a YAML document whose aliases expand past the bound (else nothing)."""
    if "*" in text and "&" in text:  # no anchor or no alias: nothing shared, nothing to expand
        for _ in yaml.compose_all(text, Loader=BoundedLoader):
            pass


def read_config_text(path: Path, what: str) -> str:
    """The text of a config or spec file; a binary or unreadable file is refused naming ``what`` (e.g. the option)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ToolkitError(
            f"{what}: not a text (UTF-8) YAML file (byte {err.start} is {err.object[err.start : err.start + 1]!r}); "
            "pass the YAML config, not a checkpoint or other binary file"
        ) from None
    except OSError as err:
        raise ToolkitError(
            f"{what}: cannot read it ({err.strerror or err}); check the path and its permissions"
        ) from None


def bound_jsonargparse() -> None:
    """Make jsonargparse (LightningCLI's parser) load every YAML file and value through the alias bound too.

    ``jsonargparse.set_loader`` is its public way to replace the loader; the replacement checks the aliases, then
    calls jsonargparse's own loader (which keeps its rules for floats and timestamps).
    """
    from jsonargparse import get_loader, set_loader

    current = get_loader("yaml")
    if getattr(current, "_bounded", False):
        return

    def bounded(value: str) -> Any:
        if isinstance(value, str):
            check_aliases(value)
        return current(value)

    bounded._bounded = True  # type: ignore[attr-defined]
    set_loader("yaml", bounded, (yaml.YAMLError,))
