"""Read a W&B run log through wandb's own reader, ``wandb leet inspect --json``, when the toolkit's reader cannot.

`toolkit.report.wandb_log` decodes the ``.wandb`` format of the wandb versions it was tested on, in this process (a
``wandb`` subprocess per log costs more: issue 29 measured 1.68 s against 1.03 s a run). A log it cannot decode
(another format version from a newer wandb, a record the installed protobuf schema does not parse, or a wandb
whose Python package no longer ships that schema) is read here instead: the installed wandb's ``leet inspect
--json`` prints one JSON object per record, which maps onto the fields of the same ``RunLog``
(``wandb_log.read_run_leet`` builds it). When that is not possible either, :func:`read_run_leet` raises one line
saying exactly why (this wandb has no ``leet inspect --json``, or what it answered).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

#: ``python -m wandb leet inspect --json PATH``: the installed wandb of this interpreter, never another on PATH
_COMMAND = [sys.executable, "-m", "wandb", "leet", "inspect", "--json"]


def _wandb_version() -> str:
    try:
        from importlib.metadata import version

        return version("wandb")
    except Exception:  # not installed, or no metadata
        return "unknown"


def read_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The log's records as wandb decodes them, and what it skipped as corrupt (None: nothing).

    Raises:
        ToolkitError: this wandb has no ``leet inspect``, or it could not read the log (its own words).
    """
    try:
        done = subprocess.run([*_COMMAND, str(path)], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ToolkitError(f"{path}: wandb leet inspect did not run ({err})") from None
    if done.returncode != 0:
        said = " ".join((done.stderr or done.stdout).split())[:300]
        if "No such command" in said or "No such option" in said:
            said = f"wandb {_wandb_version()} has no 'leet inspect --json' (wandb 0.31 has it)"
        raise ToolkitError(f"{path}: wandb leet inspect could not read it: {said}")
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    skipped = " ".join(line for line in done.stderr.splitlines() if "corrupt" in line) or None
    return records, skipped


def _seconds(stamp: Any) -> float:
    if isinstance(stamp, (int, float)):
        return float(stamp)
    if isinstance(stamp, str) and stamp:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return 0.0


def read_run_leet(path: Path, history_keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The fields of a ``wandb_log.RunLog`` for the log at ``path``, decoded by the installed wandb.

    Raises:
        ToolkitError: it cannot be read this way either (why, in one line).
    """
    records, skipped = read_records(Path(path))
    run: dict[str, Any] = {"path": Path(path), "config": {}, "summary": {}, "history": [], "n_records": 0}
    wanted = None if history_keys is None else set(history_keys)
    for record in records:
        run["n_records"] += 1
        kind = record.get("type")
        body = record.get(kind) or {}
        if kind == "history":
            items = body.get("item") or {}
            row = {k: v for k, v in items.items() if wanted is None or k in wanted}
            if row:
                run["history"].append(row)
        elif kind == "summary":
            run["summary"].update(body.get("update") or {})
            for key in body.get("remove") or {}:
                run["summary"].pop(key, None)
        elif kind == "config":
            run["config"].update(body.get("update") or {})
            for key in body.get("remove") or {}:
                run["config"].pop(key, None)
        elif kind == "run":
            run.update(run_id=body.get("run_id", ""), group=body.get("run_group", ""))
            run.update(job_type=body.get("job_type", ""), tags=list(body.get("tags") or []))
            run["start_time"] = _seconds(body.get("start_time"))
            run["config"].update((body.get("config") or {}).get("update") or {})
            run["summary"].update((body.get("summary") or {}).get("update") or {})
        elif kind == "exit":
            run["exit_code"] = int(body.get("exit_code", 0))
    if skipped:  # wandb read on past damage; the run stays corrupt for the report, with what wandb recovered
        run.update(damage=f"{skipped} (read through wandb leet inspect)", truncated=False)
    return run
