"""What a study will cost before it starts: the runs to go, their time and disk, in two lines of ``ablate run``.

- **Time** comes from the ledger's history of this study: the median duration of its finished runs (per variant where
  that variant has one, else over all of them), times the runs to go, over the runs that execute at once. Without a
  finished run no time is given: a run's time depends on the data size, the machine and its load, none of which the
  pre-launch check measures (it builds each model once, on small probe images); the live view's ETA takes over
  once runs finish.
- **Disk** comes from the finished runs' folders (checkpoints, W&B logs) when there are any, else from each model's
  parameter count as the check built it: float32 weights and buffers, plus the optimizer's state of the trainable
  parameters, times the checkpoints a run keeps (the best and ``last.ckpt``; one file when the best is the last
  epoch, so an upper bound). Both say where they come from; the disk line adds how to keep less when it is large.
"""

from __future__ import annotations

import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.study.ledger import DONE
from toolkit.study.spec import Run

#: above this the disk line says how to keep less
LARGE_BYTES = 1 << 30
#: the existing option that keeps less: the best checkpoints without optimizer state (``last.ckpt`` keeps it, for
#: resuming); a spec override, so it is part of every run's config
KEEP_LESS = (
    "--set checkpoint.save_weights_only=true (best checkpoints without optimizer state: a third of the size with "
    "Adam; last.ckpt keeps it for resuming)"
)


def human_bytes(size: float) -> str:
    """``13.8 MB``, ``1.2 GB``: decimal units, as ``du -h --si`` and file managers show them."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def folder_bytes(folder: Path) -> int:
    """The size of every file under ``folder`` (a hard-linked file once)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def cost_lines(
    todo: Sequence[Run],
    records: dict[str, dict[str, Any]],
    facts: dict[str, dict[str, Any]],
    parallel: int,
    root: Path,
) -> list[str]:
    """The estimate's lines for the runs in ``todo``.

    Args:
        todo: the runs still to run (not done).
        records: the ledger records of this study (its tune stage's too): the finished ones are the history.
        facts: per variant, what the check found (:func:`toolkit.ablation.command.check_variants`); may be empty.
        parallel: how many runs execute at once.
        root: the runs folder (its free space is compared with the disk estimate).
    """
    if not todo:
        return []
    done = [r for r in records.values() if r.get("status") == DONE and r.get("duration_s")]
    at_once = max(1, min(parallel, len(todo)))
    head = f"estimate: {len(todo)} run{'s' if len(todo) != 1 else ''} to go, {at_once} at a time"
    if done:
        overall = statistics.median(r["duration_s"] for r in done)
        by_variant = {
            v: statistics.median(r["duration_s"] for r in done if r.get("variant") == v)
            for v in {r.get("variant") for r in done}
        }
        total = sum(by_variant.get(run.variant, overall) for run in todo) / at_once
        time = f"time ~{human_seconds(total)} (median {human_seconds(overall)} a run over {_runs(len(done))})"
    else:
        epochs = sorted({f.get("max_epochs") for f in facts.values() if f.get("max_epochs")})
        cap = f"; each run trains up to {epochs[-1]} epochs" if epochs else ""
        time = f"time: none yet (no run of this study has finished: the live view's ETA starts then){cap}"
    lines = [f"{head}; {time}"]
    disk = _disk(todo, done, facts)
    if disk is not None:
        size, source = disk
        line = f"disk: ~{human_bytes(size)} more ({source})"
        free = _free(root)
        if free is not None and size > free:
            line += f"; only {human_bytes(free)} free under {root}"
        if size >= LARGE_BYTES or (free is not None and size > free):
            line += f"; to keep less: {KEEP_LESS}"
        lines.append(line)
    return lines


def _disk(
    todo: Sequence[Run], done: list[dict[str, Any]], facts: dict[str, dict[str, Any]]
) -> tuple[float, str] | None:
    sizes = [folder_bytes(Path(r["run_dir"])) for r in done if r.get("run_dir") and Path(r["run_dir"]).is_dir()]
    if sizes:
        median = statistics.median(sizes)
        return median * len(todo), f"median {human_bytes(median)} a run over the folders of {_runs(len(sizes))}"
    per_run = [facts[r.variant]["ckpt_bytes"] * facts[r.variant]["ckpts_kept"] for r in todo if r.variant in facts]
    if not per_run:
        return None
    biggest = max(facts.values(), key=lambda f: f["ckpt_bytes"])
    return sum(per_run), (
        f"up to {biggest['ckpts_kept']} checkpoints of ~{human_bytes(biggest['ckpt_bytes'])} a run, estimated from "
        "the parameter count: weights and optimizer state"
    )


def _runs(count: int) -> str:
    return f"{count} finished run{'s' if count != 1 else ''}"


def _free(root: Path) -> float | None:
    for folder in (root, *root.parents):
        if folder.exists():
            try:
                return float(shutil.disk_usage(folder).free)
            except OSError:
                return None
    return None
