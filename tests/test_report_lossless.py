"""Lossless reports: a run whose ``result.json`` says it finished but whose W&B log was cut is counted from its
result, with a note; the same cut log without a result stays interrupted. Real W&B offline logs, no training."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from report_fixtures import cut_inside_a_record, write_run

from toolkit.report.sources import runs_from_logs
from toolkit.report.table import mark_counted
from toolkit.study.result import RunResult

CURVE = {"train_loss": [[1.0, 0.8], [0.6, 0.4]], "train_acc": [0.5, 0.7], "val_acc": [0.6, 0.8]}
HEALTH = {
    "status": "finished",
    "epochs_completed": 2,
    "max_epochs": 2,
    "train_loss_initial": 1.0,
    "train_loss_final": 0.5,
    "test_pred_classes": 10,
    "chance": 0.1,
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Study ``cut``: seed 0 finished with its result but a cut log; seed 1 the same cut log and no result."""
    root = tmp_path_factory.mktemp("lossless")
    for seed in (0, 1):
        run_dir = root / "cut" / "full" / f"seed{seed}"
        log = write_run(run_dir, "cut", "full", seed, test={"test/acc": 0.25, "test/f1": 0.2}, **CURVE)
        if seed == 0:
            run_id = log.stem.removeprefix("run-")
            metrics = {"test/acc": 0.875, "test/f1": 0.86, "test/loss": 0.4}
            RunResult("done", time.time(), run_id, metrics, HEALTH).write(run_dir / "result.json")
        data = log.read_bytes()
        log.write_bytes(data[: cut_inside_a_record(log, 0.3)])  # before the test metrics and the exit record
    return root


def test_a_finished_run_with_a_cut_log_counts_from_its_result(study: Path) -> None:
    runs = mark_counted(runs_from_logs(study, "cut").runs).set_index("seed")
    kept = runs.loc[0]
    assert kept["state"] == "finished" and bool(kept["counted"])
    assert kept["test/acc"] == 0.875 and kept["test/f1"] == 0.86  # the result's numbers, not the cut log's
    assert "W&B log unfinished" in kept["note"] and "counted from its result.json" in kept["note"]
    lost = runs.loc[1]
    assert lost["health"] == "interrupted" and not bool(lost["counted"])
