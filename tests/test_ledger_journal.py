"""The ledger as snapshot + journal: one line per edit whatever the ablation's size, compaction, torn and damaged
lines, and several writers (each with its own cached view) agreeing with a plain dict kept alongside."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.study.ledger import COMPACT_MIN, Ledger


def journal_lines(ledger: Ledger) -> list[dict]:
    return [json.loads(line) for line in ledger.journal.read_text().splitlines()] if ledger.journal.exists() else []


def numbers(records: dict[str, dict]) -> dict[str, int]:
    return {k: v["n"] for k, v in records.items()}


@pytest.mark.parametrize("runs", [10, 200])
def test_an_edit_appends_one_line_and_leaves_the_snapshot_alone(tmp_path: Path, runs: int) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    with ledger.edit() as records:  # the runner's plan: every run pending, in one edit (the first writes a snapshot)
        for i in range(runs):
            records[f"r{i}"] = {"id": f"r{i}", "status": "pending"}
    snapshot = ledger.path.read_bytes()
    assert len(json.loads(snapshot)["runs"]) == runs
    before = len(journal_lines(ledger))
    ledger.update("r3", status="running", pid=12)
    assert ledger.path.read_bytes() == snapshot
    added = journal_lines(ledger)[before:]
    assert [line["id"] for line in added] == ["r3"] and added[0]["record"]["pid"] == 12
    assert Ledger(ledger.path).read()["r3"]["status"] == "running"  # a fresh reader: snapshot + journal


def test_writers_with_their_own_views_agree_with_a_plain_dict_across_compactions(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    writers = [Ledger(path), Ledger(path)]  # as the runner and a Slurm task: each keeps its own cache
    expected: dict[str, dict] = {}
    rng = random.Random(0)
    for step in range(3 * COMPACT_MIN):
        ledger = rng.choice(writers)
        run_id = f"r{rng.randrange(40)}"
        if rng.random() < 0.1:
            with ledger.edit() as records:
                records.pop(run_id, None)
            expected.pop(run_id, None)
        else:
            ledger.update(run_id, n=step)
            expected.setdefault(run_id, {"id": run_id})["n"] = step
        if step % 50 == 0:
            assert numbers(rng.choice(writers).read()) == numbers(expected)
    assert len(journal_lines(writers[0])) <= COMPACT_MIN  # compacted along the way
    for ledger in (*writers, Ledger(path)):
        assert numbers(ledger.read()) == numbers(expected)


def test_a_torn_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.update("a", status="done")
    ledger.update("b", status="running")
    with open(ledger.journal, "ab") as fh:  # a writer SIGKILLed in the middle of its line
        fh.write(b'{"id": "b", "record": {"id": "b", "sta')
    assert Ledger(ledger.path).read()["b"]["status"] == "running"
    Ledger(ledger.path).update("c", status="pending")
    assert all(line["id"] in "abc" for line in journal_lines(ledger))  # every line parses: the torn one is gone
    assert {k: v["status"] for k, v in Ledger(ledger.path).read().items()} == {
        "a": "done",
        "b": "running",
        "c": "pending",
    }


def test_a_damaged_line_in_the_middle_is_one_error_line_and_nothing_is_overwritten(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.update("a", status="done")
    ledger.update("b", status="done")
    ledger.update("c", status="done")
    lines = ledger.journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join([lines[0], b"{not json\n", *lines[1:]])
    ledger.journal.write_bytes(damaged)
    with pytest.raises(ToolkitError, match=r"ledger journal .*ledger\.journal line 2 is damaged") as err:
        Ledger(ledger.path).update("d", status="pending")
    assert "\n" not in str(err.value)
    assert ledger.journal.read_bytes() == damaged


def test_a_failed_edit_writes_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    ledger.update("a", status="done")
    with pytest.raises(RuntimeError), ledger.edit() as records:
        records["a"]["status"] = "failed"
        raise RuntimeError("boom")
    assert ledger.read()["a"]["status"] == "done"
    assert Ledger(ledger.path).read()["a"]["status"] == "done"
