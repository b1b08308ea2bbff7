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


def check_recorded(spec: AblationSpec, root: Path, changes: dict[str, Any]) -> None:
    """Refuse ``--set`` overrides that differ from those the ledger recorded for the study's runs (``toolkit report``
    of a study run with ``ablate run --set``): the table would name settings its runs did not use."""
    if "set" not in changes:
        return
    records = Ledger(ledger_path(root, spec.name)).read()
    recorded = {json.dumps(r.get("cli_changes", {}).get("set", {}), sort_keys=True) for r in records.values()}
    if recorded and json.dumps(changes["set"], sort_keys=True) not in recorded:
        made = " or ".join(sorted(recorded))
        raise ToolkitError(
            f"--set {json.dumps(changes['set'])}: the runs of {spec.name} under {root} were made with --set {made}; "
            "pass the same overrides as ablate run"
        )
