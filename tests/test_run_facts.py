"""In-run facts: what a fit ran on, measured inside it, in result.json and the W&B summary (CPU runs here;
benchmarks/gpu_smoke.sh asserts the same fields on GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import fit

from toolkit.report.wandb_log import read_run
from toolkit.study.result import RunResult


@pytest.mark.parametrize(("precision", "autocast"), [("32-true", None), ("bf16-mixed", "bfloat16")])
def test_a_cpu_fit_records_its_device_precision_autocast_and_world_size(
    tmp_path: Path, precision: str, autocast: str | None
) -> None:
    fit(tmp_path, "--trainer.precision", precision)
    result = RunResult.read(tmp_path / "result.json")
    assert result is not None
    facts = result.facts
    assert (facts["device"], facts["device_name"], facts["precision"]) == ("cpu", "cpu", precision)
    # what the training forward saw: autocast on only under mixed precision, the weights kept in float32
    assert (facts["autocast_dtype"], facts["param_dtype"]) == (autocast, "float32")
    assert (facts["world_size"], facts["num_nodes"]) == (1, 1)
    assert (facts["compile"], facts["compiled_graphs"], facts["recompiles"]) == (False, 0, 0)
    (log,) = tmp_path.glob("wandb/*run-*/run-*.wandb")
    summary = read_run(log).summary
    assert {k: summary[f"facts/{k}"] for k in ("device", "precision", "world_size")} == {
        "device": "cpu",
        "precision": precision,
        "world_size": 1,
    }
