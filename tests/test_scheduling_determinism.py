"""A result is a function of the spec and the seed, not of scheduling: ``--workers 1`` and ``--workers 2`` agree.

The CPU thread count decides the order of float reductions, so it used to make a seed's numbers follow the worker
count (74.81 vs 73.33 in issue 9). Runs now get a fixed thread count, recorded in the run's W&B config.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from toolkit import keys
from toolkit.ablation.runner import Options, run_ablation
from toolkit.report.wandb_log import read_run
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.spec import load_spec

pytestmark = pytest.mark.slow

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def test_workers_1_and_workers_2_give_identical_per_seed_metrics(tmp_path: Path) -> None:
    overrides = {
        "trainer.max_epochs": 2,
        "trainer.limit_train_batches": 4,
        "trainer.limit_val_batches": 2,
        "trainer.limit_test_batches": 3,
        "trainer.enable_progress_bar": False,
        "trainer.enable_model_summary": False,
    }
    spec_file = tmp_path / "sched.yaml"
    body = {"name": "sched", "base": [str(DIGITS)], "overrides": overrides, "seeds": [0, 1], "variants": {"full": {}}}
    spec_file.write_text(json.dumps(body))
    spec = load_spec(str(spec_file))
    results: dict[int, dict[int, dict[str, float]]] = {}
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        options = Options(
            root=root, executor_options={"workers": workers, "devices": "cpu"}, validate=False, report=False
        )
        assert run_ablation(spec, options, Console(file=io.StringIO())) == 0
        results[workers] = {}
        for record in Ledger(ledger_path(root, "sched")).read().values():
            run_dir = Path(record["run_dir"])
            assert record["env"]["OMP_NUM_THREADS"] == "1"
            (log,) = run_dir.glob("wandb/*run-*/run-*.wandb")
            assert read_run(log).config["cpu_threads"] == 1  # what the run really used, not what it was asked
            results[workers][record["seed"]] = json.loads((run_dir / keys.RESULT_FILE).read_text())["metrics"]
    assert set(results[1]) == {0, 1}
    assert results[1][0] != results[1][1]  # the seeds differ, so equality below is not a constant
    assert results[1] == results[2]
