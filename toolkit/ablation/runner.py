"""Run an ablation end to end: validate every variant, plan from the ledger, execute, summarise, report.

Planning is what makes a re-run safe: done runs are skipped, interrupted runs resume from their last checkpoint,
failed runs wait for ``--retry-failed``, and a run whose Slurm job is still queued or running is waited for, not
submitted twice.

A run counts as done when its process exits 0 and the runner has recorded that. If the runner is killed between
the two (the run has finished testing and logging, and is tearing down), the next runner resumes it from its last
checkpoint: training is already complete, so it only tests again, in a new W&B run whose config names the previous
one (``resumed_from``); the report keeps the latest. Nothing trains twice.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

from toolkit.ablation import stages, tune_stage
from toolkit.ablation.executor import Options
from toolkit.ablation.stages import Ablation, make_executor
from toolkit.study.spec import AblationSpec

__all__ = ["Options", "make_executor", "run_ablation"]

#: a study's stages, in order; each returns None to go on, or the exit status to stop with
STAGES: tuple[Callable[[Ablation], int | None], ...] = (stages.prepare, tune_stage.tune, stages.execute, stages.report)


def run_ablation(spec: AblationSpec, options: Options, console: Console | None = None) -> int:
    """Run every run of ``spec`` that is not done yet; returns 0 when all are done, 1 otherwise.

    The stages (:data:`STAGES`, ``ablation/stages.py``) run under the study's runner locks: prepare (a finished
    study is only reported; else the executor is built and every variant checked), tune (``tune:`` only: every
    variant at every value at the first seed, then each variant's values chosen on val), execute, report.
    """
    ablation = Ablation.of(spec, options, console)
    with ablation.locked():
        for stage in STAGES:
            code = stage(ablation)
            if code is not None:
                return code
    return 0
