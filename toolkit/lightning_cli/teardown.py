"""How a fit ends: its ``result.json`` (:class:`~toolkit.study.result.RunResult`), the summary lines, W&B closed.

``status`` is ``done`` for a fit that completed and ``diverged`` for one the divergence guard stopped; a fit stopped
any other way (SIGTERM, crash) writes nothing, which is how the runner and the report tell an interrupted run from a
finished one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from toolkit import keys
from toolkit.callbacks.health import FINISHED, RunHealth, health_summary
from toolkit.callbacks.run_facts import RunFacts
from toolkit.callbacks.snapshot import tested_snapshots
from toolkit.study.layout import RESULT_FILE, WANDB_DIR
from toolkit.study.result import DONE, RunResult


def write_result(trainer: Trainer, status: str = FINISHED, reason: str | None = None) -> None:
    """``<default_root_dir>/result.json``: how this fit ended (with its test metrics, health record and W&B run id).

    The health record (``RunHealth``) also goes into the W&B summary as ``health/*``, so a report read from the W&B
    API classifies runs the same way. Written last and atomically.
    """
    health_cb = next((c for c in trainer.callbacks if isinstance(c, RunHealth)), None)
    health = health_cb.summary(trainer, status, reason) if health_cb is not None else {"status": status}
    # the epoch and phase of the checkpoint behind test/* (the report's "change never tested")
    describe = getattr(trainer.lightning_module, "tested_checkpoint", None)
    tested = describe() if callable(describe) else {}
    tested["tested_snapshots"] = tested_snapshots(trainer)
    facts_cb = next((c for c in trainer.callbacks if isinstance(c, RunFacts)), None)
    facts = facts_cb.summary() if facts_cb is not None else {}
    loggers = [lg for lg in trainer.loggers if is_wandb(lg)]
    for logger in loggers:
        logger.experiment.summary.update(health_summary({**health, **tested}))
        logger.experiment.summary.update({f"facts/{k}": v for k, v in facts.items()})
    run_id = next((getattr(lg.experiment, "id", None) for lg in loggers), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    done = DONE if status == FINISHED else status
    score = getattr(trainer.checkpoint_callback, "best_model_score", None)
    best_val = float(score) if score is not None else None
    scores = [round(v, 6) for v in health_cb.val_scores] if health_cb is not None else []
    threads = torch.get_num_threads()  # toolkit.threads: part of what the numbers depend on
    record = RunResult(
        done, time.time(), run_id, metrics, health, **tested, best_val=best_val, val_scores=scores,
        cpu_threads=threads, facts=facts,
    )  # fmt: skip
    record.write(Path(trainer.default_root_dir) / RESULT_FILE)


def fit_summary(trainer: Trainer) -> str:
    """Where a finished fit left its outputs, and its best validation metric (printed at the end of ``fit``)."""
    root = Path(trainer.default_root_dir)
    lines = []
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    score = getattr(callback, "best_model_score", None) if callback is not None else None
    if best:
        shown = f" ({keys.MONITOR} {float(score):.4f})" if score is not None else ""
        lines.append(f"best checkpoint: {best}{shown}")
    lines.append(f"result: {root / RESULT_FILE}")
    for logger in trainer.loggers:
        if is_wandb(logger):
            run = logger.experiment
            folder = Path(run.dir).parent if getattr(run, "dir", None) else root / WANDB_DIR
            lines.append(f"W&B run: {folder} (id {getattr(run, 'id', '?')})")
    return "\n".join(lines)


def is_wandb(logger: Any) -> bool:
    """Whether ``logger`` is a W&B logger."""
    return isinstance(logger, LightningWandbLogger)


def finish_wandb() -> None:
    """Close the W&B run, so a second run in the same process (tests, notebooks) starts a new one.

    ``wandb.finish`` returns before the service has written the whole run log; ``teardown`` waits for it, so the
    log is complete when the command returns (the ablation runner and reports read it right away).
    """
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()
