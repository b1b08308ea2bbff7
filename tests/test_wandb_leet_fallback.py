"""The fallback W&B log reader (``wandb leet inspect --json``, the installed wandb's own) agrees with the toolkit's
reader on real offline logs, and a log neither can decode is one line with both reasons."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from report_fixtures import write_run

from toolkit.errors import ToolkitError
from toolkit.report.wandb_log import read_run, read_run_leet


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leet")
    return write_run(
        root / "run", "abl", "full", 3, train_loss=[[1.0, 0.9], [0.7, 0.6]], train_acc=[0.5, 0.7],
        val_acc=[0.6, 0.8], test={"test/acc": 0.8, "test/f1": 0.7}, config={"model": {"lr": 0.01}, "tags": ["a"]},
    )  # fmt: skip


def test_wandbs_reader_gives_the_same_run_as_ours(log: Path) -> None:
    try:
        theirs = read_run_leet(log)
    except ToolkitError as err:  # a wandb before 0.31 (checked with 0.29): one line that says so
        assert "has no 'leet inspect --json' (wandb 0.31 has it)" in str(err) and "\n" not in str(err)
        pytest.skip(str(err))
    ours = read_run(log)
    assert (theirs.run_id, theirs.group, theirs.job_type, theirs.tags) == (ours.run_id, "abl", "full", ours.tags)
    assert (theirs.exit_code, theirs.state, theirs.damage) == (0, "finished", None)
    assert theirs.config == ours.config and theirs.summary == ours.summary
    assert theirs.history == ours.history and len(ours.history) >= 4
    assert math.isclose(theirs.start_time, ours.start_time, abs_tol=1e-3)
    keys = ["val/acc"]
    assert read_run_leet(log, keys).history == read_run(log, keys).history


def test_a_log_neither_reader_decodes_is_one_line_with_both_reasons(log: Path, tmp_path: Path) -> None:
    data = bytearray(log.read_bytes())
    data[6] = 1  # a format version no installed reader knows
    newer = tmp_path / "run-newer.wandb"
    newer.write_bytes(bytes(data))
    with pytest.raises(ToolkitError) as err:
        read_run(newer)
    text = str(err.value)
    assert "version 1, which this toolkit cannot read" in text and "wandb leet inspect could not read it" in text
    assert "a newer wandb version is required" in text or "has no 'leet inspect --json'" in text
    assert "\n" not in text
