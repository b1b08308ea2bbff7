"""The study's cost estimate (`toolkit.ablation.estimate`) on hand-made ledgers and check facts, in-process.

The end-to-end lines (from a real study's check and ledger, against the checkpoint files and folders it wrote) are
tested in ``tests/test_ablation_runs.py``; here: the arithmetic, the hint to keep less and the free-space warning.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.ablation.estimate import KEEP_LESS, cost_lines, human_bytes, human_seconds
from toolkit.study.spec import Run


def _runs(variants: list[str], seeds: list[int]) -> list[Run]:
    return [Run(id=f"{v}{s}", ablation="a", variant=v, seed=s, overrides={}) for v in variants for s in seeds]


def test_units_are_rounded_as_people_read_them() -> None:
    assert [human_bytes(x) for x in (512, 13_795_857, 2.4e9)] == ["512 B", "13.8 MB", "2.4 GB"]
    assert [human_seconds(x) for x in (42, 130, 600, 7200)] == ["42 s", "2.2 min", "10 min", "2.0 h"]


def test_without_history_no_time_is_guessed_and_a_large_study_says_how_to_keep_less(tmp_path: Path) -> None:
    todo = _runs(["full", "probe"], [0, 1, 2])
    facts = {
        "full": {"params": 50_000_000, "ckpt_bytes": 600_000_000, "ckpts_kept": 2, "max_epochs": 10},
        "probe": {"params": 50_000_000, "ckpt_bytes": 200_000_000, "ckpts_kept": 2, "max_epochs": 1},
    }
    head, disk = cost_lines(todo, {}, facts, parallel=4, root=tmp_path)
    assert head.startswith("estimate: 6 runs to go, 4 at a time; time: none yet") and "up to 10 epochs" in head
    # 3 x 2 x 600 MB + 3 x 2 x 200 MB = 4.8 GB
    assert disk.startswith("disk: ~4.8 GB more (up to 2 checkpoints of ~600.0 MB a run")
    assert disk.endswith(f"to keep less: {KEEP_LESS}")


def test_history_gives_the_time_per_variant_over_the_runs_at_once(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "full" / "seed0"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").write_bytes(b"x" * 3000)
    (folder / "best.ckpt").hardlink_to(folder / "last.ckpt")  # one file, counted once
    records = {
        "f0": {"status": "done", "variant": "full", "duration_s": 100.0, "run_dir": str(folder)},
        "f1": {"status": "done", "variant": "full", "duration_s": 140.0, "run_dir": str(tmp_path / "gone")},
        "p0": {"status": "done", "variant": "probe", "duration_s": 10.0},
        "x": {"status": "failed", "variant": "full", "duration_s": 5.0},
    }
    todo = _runs(["full", "probe"], [1, 2])
    head, disk = cost_lines(todo, records, {}, parallel=2, root=tmp_path)
    # full: median 120 s x 2, probe: 10 s x 2, over 2 at a time = 130 s; overall median of 100, 140, 10 = 100 s
    assert head == "estimate: 4 runs to go, 2 at a time; time ~2.2 min (median 1.7 min a run over 3 finished runs)"
    assert disk == "disk: ~12.0 kB more (median 3.0 kB a run over the folders of 1 finished run)"
    assert cost_lines([], records, {}, parallel=2, root=tmp_path) == []


def test_more_than_the_free_space_is_said(tmp_path: Path) -> None:
    facts = {"full": {"params": 1, "ckpt_bytes": 10**17, "ckpts_kept": 2, "max_epochs": 1}}
    _, disk = cost_lines(_runs(["full"], [0]), {}, facts, parallel=1, root=tmp_path / "not" / "yet")
    assert f"free under {tmp_path / 'not' / 'yet'}" in disk and "to keep less" in disk
