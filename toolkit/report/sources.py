"""Turn an ablation's W&B runs (local ``.wandb`` logs or the W&B API) into a flat runs table and a history table.

Rows are keyed on what the run says about itself: its config's ``ablation: {name, variant, seed}``, falling back to
the W&B group (ablation), job type (variant) and ``seed=N`` tag; never on folder or run names.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.report.wandb_log import RunLog, read_run
from toolkit.study.layout import RESULT_FILE
from toolkit.study.ledger import FAILED, Ledger, ledger_path
from toolkit.study.result import DONE, RunResult

#: history keys the learning-curve plots use; the others are not decoded
HISTORY_KEYS = (
    keys.TRAIN_LOSS,
    keys.TRAIN_ACC,
    keys.VAL_ACC,
    keys.VAL_LOSS,
    keys.VAL_F1,
    "epoch",
    "trainer/global_step",
    "_step",
)
#: prefix of the run-health entries ``toolkit fit`` writes into the W&B summary (as in ``toolkit.callbacks.health``;
#: repeated here because the report imports neither torch nor Lightning)
HEALTH_PREFIX = "health/"
#: columns every runs table starts with, in this order
RUN_COLUMNS = ["ablation", "variant", "seed", "run_id", "state", "damage", "start_time", "source"]
HISTORY_COLUMNS = ["run", "run_id", "variant", "seed", "step", "epoch", "key", "value"]
_API_STATE_EXIT = {"finished": 0, "failed": 1}  # other API states (crashed, killed, running) have no exit code


@dataclass
class RunSet:
    """An ablation's runs as tables.

    Attributes:
        runs: one row per run: ``RUN_COLUMNS``, then one column per numeric summary metric (``stage/name``),
            then ``config.<dotted key>`` columns.
        history: long table ``HISTORY_COLUMNS`` of the ``HISTORY_KEYS`` each run logged; ``run`` is the run's row
            in ``runs`` (run ids repeat when a run was resumed).
    """

    runs: pd.DataFrame
    history: pd.DataFrame


def find_logs(root: Path, name: str) -> list[Path]:
    """All ``run-*.wandb`` logs under ``<root>/<name>/``, each file once (``latest-run`` links are skipped)."""
    folder = Path(root) / name
    if not folder.is_dir():
        raise ToolkitError(f"no runs folder {folder}; run `toolkit ablate run` first or pass --root DIR")
    found: dict[Path, Path] = {}
    for path in sorted(folder.rglob("run-*.wandb")):
        if path.relative_to(folder).parts[0] != keys.REPORT_DIR:  # the report's own analysis run is no ablation run
            found.setdefault(path.resolve(), path)
    return sorted(found.values())


def summary_number(key: str, value: Any) -> float | None:
    """A summary value as a number; a ``define_metric`` summary dict (``{"max": 0.9}``) gives its best value.

    The direction comes from ``keys.VAL_SUMMARY`` for known keys, else the dict's only/"last"/"max"/"min" entry.
    """
    if isinstance(value, dict):
        order = [keys.VAL_SUMMARY.get(key, ""), "best", "last", "max", "min", "mean"]
        value = next((value[k] for k in order if k in value), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _flatten(config: dict[str, Any], prefix: str = "config.") -> dict[str, Any]:
    """Nested config -> ``{"config.model.lr": 0.1}``; lists and other values are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if not isinstance(value, list | dict) else str(value)
    return flat


def ablation_identity(config: dict[str, Any], group: str, job_type: str, tags: Iterable[str]) -> tuple:
    """``(ablation, variant, seed)`` of a run: config ``ablation`` first, then group, job type and ``seed=N`` tag."""
    info = config.get("ablation") if isinstance(config.get("ablation"), dict) else {}
    seed = info.get("seed")
    if seed is None:
        seed = next((tag.split("=", 1)[1] for tag in tags if tag.startswith("seed=")), None)
    try:
        seed = int(seed) if seed is not None else None
    except ValueError:
        seed = None
    return info.get("name") or group or None, info.get("variant") or job_type or None, seed


def run_row(run: RunLog, source: str) -> dict[str, Any]:
    """One runs-table row of a run."""
    name, variant, seed = ablation_identity(run.config, run.group, run.job_type, run.tags)
    row: dict[str, Any] = {
        "ablation": name,
        "variant": variant,
        "seed": seed,
        "run_id": run.run_id or None,
        "state": run.state,
        "damage": run.damage,
        "start_time": run.start_time,
        "source": source,
        "exit_code": run.exit_code,
        "last_epoch": summary_number("epoch", run.summary.get("epoch")),
    }
    for key, value in run.summary.items():
        number = summary_number(key, value)
        if "/" in key and number is not None and not math.isnan(number):
            row[key] = number
        elif key.startswith(HEALTH_PREFIX) and isinstance(value, str | bool):
            row[key] = value  # health/status, health/reason, health/still_improving
    row.update(_flatten(run.config))
    return row


def _history_rows(run: RunLog, row: dict[str, Any], position: int) -> list[tuple]:
    """Long history rows ``HISTORY_COLUMNS`` of one run."""
    out = []
    for entry in run.history:
        step = entry.get("trainer/global_step", entry.get("_step"))
        epoch = entry.get("epoch")
        for key, value in entry.items():
            if key in ("epoch", "trainer/global_step", "_step") or not isinstance(value, int | float):
                continue
            out.append((position, row["run_id"], row["variant"], row["seed"], step, epoch, key, float(value)))
    return out


def _runset(pairs: list[tuple[RunLog, str]], name: str) -> RunSet:
    """Runs of ablation ``name`` among ``(run, source)`` pairs as a ``RunSet``; unidentified damaged logs are kept."""
    rows, history = [], []
    for run, source in pairs:
        row = run_row(run, source)
        if row["ablation"] != name and not (row["ablation"] is None and run.damage):
            continue  # another ablation's run in the same folder
        if run.job_type in ("analysis", "validate", "test", "predict"):
            continue  # the report's own W&B run (``--log_to_wandb``), or a later evaluation of a checkpoint
        history.extend(_history_rows(run, row, len(rows)))
        rows.append(row)
    runs = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in runs:
            runs[column] = pd.Series(dtype=object)
    runs = runs[RUN_COLUMNS + [c for c in runs.columns if c not in RUN_COLUMNS]]
    runs["seed"] = runs["seed"].astype("Int64")
    hist = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    return RunSet(runs=runs.reset_index(drop=True), history=hist)


def runs_from_logs(root: Path, name: str) -> RunSet:
    """Read every run log of ablation ``name`` under ``<root>/<name>/``; damaged logs warn and keep their state.

    Each run also gets what its own folder and the ablation's ledger say about it: the health record of the
    ``result.json`` that names it (``<run_dir>/wandb/offline-run-*/run-*.wandb`` -> ``<run_dir>/result.json``) and
    the ledger's one-line reason of a failed run; a failed run that never started a W&B run gets a row of its own.
    """
    pairs = [(read_run(path, HISTORY_KEYS), os.fspath(path)) for path in find_logs(root, name)]
    runset = _runset(pairs, name)
    runs = _with_results(runset.runs)
    runset.runs = _with_ledger(runs, ledger_path(root, name), name)
    return runset


def _with_results(runs: pd.DataFrame) -> pd.DataFrame:
    """Fill ``health/*`` from the ``result.json`` of each run's folder where it names the run and the log did not;
    a run whose result says done but whose log is cut or open is finished, with its result's test metrics and a
    ``source_note`` saying so (nothing a run finished is lost to a damaged log)."""
    runs = runs.copy()
    for index, row in runs.iterrows():
        log = Path(str(row["source"]))
        if len(log.parents) < 3 or not row["run_id"]:
            continue
        result = RunResult.read(log.parents[2] / RESULT_FILE)
        if result is None or result.wandb_id != row["run_id"]:
            continue  # another attempt's record (a resumed run writes a new W&B run)
        tested = {key: getattr(result, key) for key in RunResult.TESTED_FIELDS}
        for key, value in {**result.health, **tested}.items():
            column = HEALTH_PREFIX + key
            if column not in runs or pd.isna(runs.at[index, column]):
                runs.loc[index, column] = value if value is not None else math.nan
        if result.status == DONE and row["state"] in ("unfinished", "corrupt"):
            # the fit finished (result.json is its last act) but its W&B log was cut or left open (a full disk, a
            # killed W&B service): count it from its result, and say so
            for key, value in result.metrics.items():
                number = summary_number(key, value)
                if number is not None and (key not in runs or pd.isna(runs.at[index, key])):
                    runs.loc[index, key] = number
            damage = f" ({row['damage']})" if isinstance(row["damage"], str) else ""
            runs.loc[index, "source_note"] = f"W&B log {row['state']}{damage}: counted from its {RESULT_FILE}"
            runs.loc[index, ["state", "exit_code"]] = ["finished", 0]
    return runs


def _read_ledger(path: Path) -> dict[str, Any]:
    """The ledger's run records (snapshot and journal); {} when absent or damaged (the report still shows the logs)."""
    try:
        return Ledger(path).read()
    except (OSError, ToolkitError):
        return {}


def _with_ledger(runs: pd.DataFrame, ledger: Path, name: str) -> pd.DataFrame:
    """Add ``ledger_reason`` to the runs of failed ledger records, and a row per failed run without a W&B run."""
    records = _read_ledger(ledger)
    runs = runs.copy()
    runs["ledger_reason"] = pd.Series(None, index=runs.index, dtype=object)
    extra = []
    for record in records.values() if isinstance(records, dict) else []:
        if record.get("status") != FAILED:
            continue
        reason = record.get("reason") or f"exit code {record.get('exit_code')}"
        ids = set(record.get("wandb_ids") or []) | ({record["wandb_id"]} if record.get("wandb_id") else set())
        mine = runs["run_id"].isin(ids)
        if mine.any():
            # the record's last attempt failed: its newest W&B run is that attempt's
            runs.loc[mine & (runs["run_id"] == record.get("wandb_id")), "ledger_reason"] = reason
            continue
        extra.append(
            {
                "ablation": name,
                "variant": record.get("variant"),
                "seed": record.get("seed"),
                "run_id": None,
                "state": "failed",
                "damage": None,
                "start_time": record.get("started_at"),
                "source": record.get("log") or str(ledger),
                "ledger_reason": reason,
            }
        )
    if extra:
        runs = pd.concat([runs, pd.DataFrame(extra)], ignore_index=True)
        runs["seed"] = runs["seed"].astype("Int64")
    return runs


def run_log_from_api(run: Any) -> RunLog:
    """A ``RunLog`` from a ``wandb.apis.public.Run`` (its id, group, job_type, tags, config, summary, state)."""
    summary = getattr(run, "summary_metrics", None)
    if summary is None:
        summary = dict(run.summary)
    created = getattr(run, "created_at", None)
    start = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() if created else 0.0
    history = [{k: v for k, v in row.items() if k in HISTORY_KEYS} for row in run.scan_history()]
    return RunLog(
        path=Path(*run.path) if getattr(run, "path", None) else Path(run.id),
        run_id=run.id,
        group=run.group or "",
        job_type=run.job_type or "",
        tags=list(run.tags or []),
        config=dict(run.config),
        summary=dict(summary),
        history=[row for row in history if row],
        start_time=start,
        exit_code=_API_STATE_EXIT.get(run.state),
    )


def runs_from_api(path: str, name: str, api: Any = None) -> RunSet:
    """Runs of group ``name`` in the W&B project ``path`` (``entity/project``) through ``wandb.Api``.

    Args:
        path: ``entity/project``.
        name: the ablation name (the W&B group).
        api: a ``wandb.Api``-like object; a new ``wandb.Api()`` when None.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    runs = api.runs(path, filters={"group": name})
    return _runset([(run_log_from_api(run), f"wandb:{path}/{run.id}") for run in runs], name)
