"""Outputs that never collide: a report beside its runs, never read back as a run. In-process, no training."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.report.build import default_out
from toolkit.report.sources import find_logs
from toolkit.study.spec import load_spec


def test_the_default_report_folder_is_beside_its_runs_and_its_own_w_and_b_run_is_not_read(tmp_path: Path) -> None:
    assert default_out(tmp_path / "a", "study") != default_out(tmp_path / "b", "study")  # two roots, two reports
    assert default_out(tmp_path / "a", "study") == tmp_path / "a" / "study" / "report"
    run = tmp_path / "a" / "study" / "full" / "seed0" / "wandb" / "offline-run-1" / "run-1.wandb"
    analysis = default_out(tmp_path / "a", "study") / "wandb" / "offline-run-2" / "run-2.wandb"
    for path in (run, analysis):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    assert find_logs(tmp_path / "a", "study") == [run]


def _spec(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(text)
    return folder / "spec.yaml"


def test_a_variant_named_like_the_report_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("trainer: {max_epochs: 1}\n")
    path = _spec(tmp_path, "name: s\nbase: [base.yaml]\nseeds: [0]\nbaseline: full\nvariants: {full: {}, report: {}}\n")
    with pytest.raises(ToolkitError, match="may not be named 'report'"):
        load_spec(path)
