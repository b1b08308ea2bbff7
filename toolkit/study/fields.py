"""Checked reading of the study files (ablation and search specs): YAML without duplicate keys, names, overrides.

Torch-free and public: ``toolkit.study.spec`` and ``toolkit.search.spec`` validate their files with these, so both
kinds of spec give the same one-line errors for the same mistakes.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from typing_extensions import override

from toolkit.errors import ToolkitError
from toolkit.safe_yaml import BoundedLoader, read_config_text

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
#: the longest name: a folder's name has at most 255 bytes (NAME_MAX), and a study's tune stage adds ``-tune``
MAX_NAME = 200
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class UniqueKeyLoader(BoundedLoader):
    """The bounded SafeLoader (`toolkit.safe_yaml`), rejecting duplicate keys too (PyYAML silently keeps the last
    one, which hides a typo)."""

    @override
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ToolkitError(f"{self.name}:{line}: duplicate key '{key}'; each name may appear once")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; a syntax error, a duplicate key, an alias bomb or a binary file is a ToolkitError naming
    the file (and line)."""
    loader = UniqueKeyLoader(read_config_text(path, str(path)))
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ToolkitError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)}); fix the syntax") from None
    finally:
        loader.dispose()


def resolve_base(entry: str, spec_path: Path) -> str:
    """A base config path, absolute: looked up beside the spec first (a copied preset finds its own configs wherever
    it is run from), then in the current directory."""
    for candidate in (spec_path.parent / entry, Path(entry)):
        if candidate.is_file():
            return str(candidate.resolve())
    raise ToolkitError(
        f"{spec_path}: base config '{entry}' not found (looked in {spec_path.parent} and in the current directory); "
        "fix the path"
    )


def check_name(value: Any, what: str) -> str:
    """``value`` if it can name a folder (letters, digits and ``. _ + = -``, at most :data:`MAX_NAME` of them), else
    a ToolkitError about ``what``."""
    if not isinstance(value, str) or not NAME.fullmatch(value):  # fullmatch: `$` would let a trailing line break in
        raise ToolkitError(f"{what} {value!r} must be a word of letters, digits and . _ + = - (it names folders)")
    if len(value) > MAX_NAME:
        raise ToolkitError(
            f"{what} '{value[:40]}...' is {len(value)} characters long; use at most {MAX_NAME} (it names a folder, "
            "and a file name has at most 255 bytes)"
        )
    return value


def str_list(value: Any, what: str) -> list[str]:
    """A string or a list of non-empty strings as a list, else a ToolkitError about ``what``."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ToolkitError(f"{what} must be a string or a list of strings")
    return list(items)


def parse_overrides(value: Any, what: str) -> dict[str, Any]:
    """``{dotted.key: value}`` overrides (None: none), else a ToolkitError naming the bad key of ``what``."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolkitError(f"{what} must map dotted keys to values, e.g. {{trainer.max_epochs: 5}}")
    for key in value:
        if not isinstance(key, str) or not DOTTED.match(key):
            fix = f"write '{key.lstrip('-')}'" if isinstance(key, str) and key.startswith("-") else "use a dotted key"
            raise ToolkitError(f"{what}: bad key {key!r}; {fix} such as model.drop_rate")
    return dict(value)


def parse_tune(value: Any, what: str) -> dict[str, list[Any]]:
    """``tune: {dotted.key: [value, ...]}`` (None: no tuning), else a ToolkitError naming the bad entry of ``what``.

    Each key needs at least two distinct values (one value is an override, not a choice); the first value is the one
    kept on a tie, so list the usual value first.
    """
    keys = parse_overrides(value, what)
    for key, values in keys.items():
        distinct = isinstance(values, list) and len({repr(v) for v in values}) == len(values)
        if not distinct or len(values) < 2 or not all(isinstance(v, (int, float, str, bool)) for v in values):
            raise ToolkitError(
                f"{what}: {key} needs a list of at least two distinct plain values to choose from on val, "
                f"e.g. {key}: [1.0e-4, 3.0e-4, 1.0e-3]"
            )
    return {key: list(values) for key, values in keys.items()}


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean a, b?)`` for the closest choices, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=2)
    return f" (did you mean {', '.join(close)}?)" if close else ""
