"""Scale a study from the command line without copying its spec: ``--seeds 0-9`` and ``--set key=value``.

``--seeds`` replaces the spec's seeds; ``--set`` adds common overrides (a variant's own setting of the same key still
wins, so every variant keeps its one change). Both change the runs' ids exactly as editing the spec would, and the
runner records them in each run's ledger entry (``cli_changes``), so the ledger says how a run was asked for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from toolkit import safe_yaml
from toolkit.errors import ToolkitError
from toolkit.study.fields import parse_overrides
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.spec import AblationSpec, _check_distinct, _seeds

#: the most seeds one command line may ask for (a typo such as 0-99999999 would plan a hundred million runs)
MAX_SEEDS = 10_000


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-9`` (inclusive) or a mix, as a list of seeds."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            low, dash, high = part.partition("-") if not part.startswith("-") else (part, "", "")
            first, last = (int(low), int(high)) if dash else (int(part), int(part))
            if last - first >= MAX_SEEDS or len(seeds) + last - first >= MAX_SEEDS:
                raise ToolkitError(f"--seeds {text!r}: more than {MAX_SEEDS:,} seeds; give fewer")
            seeds += list(range(first, last + 1))
    except ValueError:
        raise ToolkitError(f"--seeds {text!r}: give seeds like 0,1,2 or a range 0-9") from None
    return _seeds(seeds, Path("--seeds"))


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["trainer.max_epochs=5", ...]`` as ``{"trainer.max_epochs": 5}``; each value is read as YAML."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ToolkitError(f"--set {item!r}: write key=value, e.g. --set trainer.max_epochs=5")
        try:
            changes[key.strip()] = safe_yaml.load(text) if text.strip() else None
        except Exception as err:  # YAML syntax or an alias bomb: name the option
            raise ToolkitError(f"--set {item!r}: the value is not valid YAML ({err})") from None
    return parse_overrides(changes, "--set")


def apply(spec: AblationSpec, seeds: str | None, sets: list[str] | None) -> tuple[AblationSpec, dict[str, Any]]:
    """The spec with the command line's seeds and overrides, and what changed (recorded in the ledger)."""
    changes: dict[str, Any] = {}
    if seeds:
        changes["seeds"] = parse_seeds(seeds)
        spec = dataclasses.replace(spec, seeds=changes["seeds"])
    if sets:
        changes["set"] = parse_sets(sets)
        spec = dataclasses.replace(spec, overrides={**spec.overrides, **changes["set"]})
        _check_distinct(spec, Path(spec.path or "--set"))
    return spec, changes


def _recorded(spec: AblationSpec, root: Path) -> list[dict[str, Any]]:
    """The distinct ``--seeds``/``--set`` the ledger recorded for the study's runs ({} for runs made without)."""
    records = Ledger(ledger_path(root, spec.name)).read()
    found = {json.dumps(r.get("cli_changes") or {}, sort_keys=True) for r in records.values()}
    return [json.loads(text) for text in sorted(found)]


def _shown(changes: dict[str, Any]) -> str:
    parts = [f"--seeds {','.join(map(str, changes['seeds']))}"] if "seeds" in changes else []
    parts += [f"--set {json.dumps(changes['set'])}"] if "set" in changes else []
    return " ".join(parts) or "no --seeds/--set"


def check_recorded(spec: AblationSpec, root: Path, changes: dict[str, Any]) -> None:
    """Refuse ``--seeds`` or ``--set`` that differ from what the ledger recorded for the study's runs (``toolkit
    report`` of a study run with ``ablate run --seeds/--set``): the table would name seeds or settings its runs did
    not use."""
    recorded = _recorded(spec, root)
    if not recorded:
        return
    for key in ("seeds", "set"):
        if key not in changes:
            continue
        default = spec.seeds if key == "seeds" else {}
        made = [r.get(key, default) for r in recorded]
        if changes[key] not in made:
            plain = f"the spec's seeds ({','.join(map(str, default))})" if key == "seeds" else "no --set"
            shown = " or ".join(dict.fromkeys(_shown({key: m}) if m != default else plain for m in made))
            raise ToolkitError(
                f"{_shown({key: changes[key]})}: the runs of {spec.name} under {root} were made with {shown}; "
                f"pass the same --{key} as ablate run (or none)"
            )


def recorded_changes(spec: AblationSpec, root: Path) -> dict[str, Any]:
    """The ``--seeds``/``--set`` the study's runs were made with, for a report given neither: {} when none were
    used, the one set the ledger recorded, or a ToolkitError when several command lines made the runs."""
    recorded = _recorded(spec, root)
    if len(recorded) > 1:
        shown = " / ".join(_shown(r) for r in recorded)
        raise ToolkitError(
            f"the runs of {spec.name} under {root} were made by several command lines ({shown}); pass --seeds/--set "
            "to say which table you mean"
        )
    return recorded[0] if recorded else {}
