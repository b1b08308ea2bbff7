"""``result.json``, a run's completion record: :class:`RunResult`, written by ``toolkit fit`` as its last act.

The ablation runner reads it to tell a run that finished while no runner watched, and the report reads its health
record. No file means the run was interrupted. The format is a flat JSON object of the dataclass's fields; a reader
ignores keys it does not know and gives a missing field its default, so adding a field is one line here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toolkit.study.states import Outcome

#: ``status`` of a fit that completed, and of one the divergence guard stopped (``study/states.Outcome``)
DONE, DIVERGED = Outcome.DONE.value, Outcome.DIVERGED.value


@dataclass
class RunResult:
    """How one ``toolkit fit`` ended.

    Attributes:
        status: ``done`` or ``diverged``.
        finished_at: when it was written (``time.time()``).
        wandb_id: the W&B run this attempt logged to (None without W&B).
        metrics: the ``test/*`` values of the tested checkpoint.
        health: the run-health record (``callbacks.health.RunHealth.summary``).
        tested_epoch: the epoch of the checkpoint behind ``metrics`` (None: no checkpoint was tested, or the
            in-memory weights were).
        tested_phase: that checkpoint's phase: ``probe`` (backbone frozen) or ``fine-tune``.
        finetune_from: the first epoch the backbone trains (0: full fine-tune, None: a linear probe). With the
            tested epoch it tells the report whether the variant's change acted before the tested checkpoint
            (``toolkit.report.untested``); both also go into the W&B summary as ``health/<field>``.
        tested_snapshots: for a snapshot ensemble, the phase and epoch of each snapshot its ``test/*_ensemble``
            metrics averaged, oldest first (``fine-tune epoch 1, fine-tune epoch 2``); None otherwise.
        best_val: the best validation score (``keys.MONITOR``) of the fit, the one its best checkpoint was chosen by;
            ``tune:`` chooses each variant's value by it (`toolkit.study.tuning`). None: no checkpoint scored.
        val_scores: the monitored validation score after each epoch of the fit, oldest first (what
            ``health.still_improving`` was decided on: `toolkit.study.convergence`).
        cpu_threads: the CPU threads the run computed with (``toolkit.threads``; float sums depend on it).
        facts: what the fit ran on, measured inside it (``callbacks.run_facts.RunFacts``): ``device`` (``cpu`` or
            the GPU's UUID), ``precision``, ``autocast_dtype``, ``compile``, ``compiled_graphs``, ``recompiles``,
            ``world_size``...; also ``facts/<name>`` in the W&B summary.
    """

    status: str
    finished_at: float | None = None
    wandb_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    tested_epoch: int | None = None
    tested_phase: str | None = None
    finetune_from: int | None = None
    tested_snapshots: str | None = None
    best_val: float | None = None
    val_scores: list[float] = field(default_factory=list)
    cpu_threads: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    #: the fields that say which checkpoint was tested (also ``health/<field>`` in the W&B summary and runs.csv)
    TESTED_FIELDS = ("tested_epoch", "tested_phase", "finetune_from", "tested_snapshots")

    def write(self, path: str | Path) -> None:
        """Write atomically (a temporary file, then ``os.replace``): a reader sees the old file or the whole new one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str | Path) -> RunResult | None:
        """The record in ``path``; None when there is none or it is not a completion record."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            return None
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("metrics", "health", "facts"):
            if not isinstance(known.get(name, {}), dict):
                known[name] = {}
        return cls(**known)
