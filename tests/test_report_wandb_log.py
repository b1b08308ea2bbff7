"""The .wandb log reader against real offline logs written by wandb: content, block layout, damage, run states."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import pytest
from report_fixtures import chunk_offsets, damaged_copy, synthetic_ablation, write_run

from toolkit.report.wandb_log import LogDamageWarning, iter_records, read_run

LOSSES = [[1.0, 0.9, 0.8], [0.7, 0.6, 0.5]]
VAL_ACC = [0.6, 0.8]
TRAIN_ACC = [0.55, 0.75]
BLOB = "x" * 70_000  # a config value larger than two 32 KiB blocks: its record spans FIRST/MIDDLE/LAST chunks


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One big finished run, one failed run (real wandb offline logs), plus the synthetic ablation's killed run."""
    root = tmp_path_factory.mktemp("wandb_log")
    big = write_run(
        root / "big", "abl", "full", 3, train_loss=LOSSES, train_acc=TRAIN_ACC, val_acc=VAL_ACC,
        test={"test/acc": 0.8, "test/f1": 0.7}, config={"model": {"lr": 0.01, "blob": BLOB}, "tags": ["a", "b"]},
    )  # fmt: skip
    failed = write_run(
        root / "failed", "abl", "no-bn", 0, train_loss=[[1.0]], train_acc=[0.1], val_acc=[0.2], test={}, exit_code=1
    )
    synth = synthetic_ablation(tmp_path_factory.mktemp("synth"))
    return {"big": big, "failed": failed, "killed": synth["killed"]}


def test_reads_identity_config_summary_and_history(logs: dict) -> None:
    run = read_run(logs["big"])
    assert run.state == "finished" and run.exit_code == 0 and run.damage is None
    assert (run.group, run.job_type, run.tags) == ("abl", "full", ["full", "seed=3"])
    assert run.run_id and logs["big"].name == f"run-{run.run_id}.wandb"
    assert run.config["ablation"] == {"name": "abl", "variant": "full", "seed": 3}
    assert run.config["model"] == {"lr": 0.01, "blob": BLOB}
    assert run.config["tags"] == ["a", "b"]
    # define_metric(summary="max"/"min") stores the best value as a dict; plain keys keep their last value
    assert run.summary["val/acc"] == {"max": max(VAL_ACC)}
    assert run.summary["val/loss"] == {"min": pytest.approx(min(1 - v for v in VAL_ACC))}
    assert run.summary["train/loss"] == LOSSES[-1][-1]
    assert (run.summary["test/acc"], run.summary["test/f1"]) == (0.8, 0.7)
    assert [r["train/loss"] for r in run.history if "train/loss" in r] == [x for epoch in LOSSES for x in epoch]
    assert [r["val/acc"] for r in run.history if "val/acc" in r] == VAL_ACC
    assert [r["epoch"] for r in run.history if "train/acc" in r] == [0, 1]
    assert run.start_time > 1e9


def test_chunk_layout_and_checksum_match_the_format(logs: dict) -> None:
    """Independent walk of the file: W&B header, 32 KiB blocks, CRC-32 of type byte + data on every chunk."""
    data = logs["big"].read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0)
    pos, kinds = 7, []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        if kind == 0:
            pos += 32768 - pos % 32768
            continue
        assert zlib.crc32(bytes([kind]) + data[pos + 7 : pos + 7 + length]) == crc
        kinds.append(kind)
        pos += 7 + length
    assert {2, 3, 4} <= set(kinds), "the 70 kB config record must span FIRST, MIDDLE and LAST chunks"
    assert len(kinds) - kinds.count(2) - kinds.count(3) == sum(1 for _ in iter_records(logs["big"]))


def test_history_keys_filter_keeps_only_those_keys(logs: dict) -> None:
    run = read_run(logs["big"], history_keys=["val/acc"])
    assert [row for row in run.history] == [{"val/acc": v} for v in VAL_ACC]


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_log_keeps_the_records_before_the_cut(logs: dict, tmp_path: Path, fraction: float) -> None:
    full = read_run(logs["big"])
    cut = damaged_copy(logs["big"], tmp_path, keep=int(logs["big"].stat().st_size * fraction))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = read_run(cut)
    assert run.state == "unfinished" and run.exit_code is None
    assert run.n_records < full.n_records
    assert run.history == full.history[: len(run.history)]
    if run.damage is not None:  # a cut exactly between two chunks is indistinguishable from a killed writer
        assert run.truncated and "truncated" in run.damage
        assert [w.category for w in caught] == [LogDamageWarning]
        assert str(cut) in str(caught[0].message)


def test_flipped_byte_is_corrupt_and_keeps_the_records_before_it(logs: dict, tmp_path: Path) -> None:
    full = read_run(logs["big"])
    offsets = chunk_offsets(logs["big"])
    bad = damaged_copy(logs["big"], tmp_path, flip=offsets[-3] + 8)  # a payload byte near the end
    with pytest.warns(LogDamageWarning, match="checksum mismatch"):
        run = read_run(bad)
    assert run.state == "corrupt" and not run.truncated
    assert 0 < len(run.history) < len(full.history) + 1 and run.history == full.history[: len(run.history)]
    assert run.config["ablation"] == full.config["ablation"]


def test_not_a_log_is_corrupt_with_no_records(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.warns(LogDamageWarning, match="bad file header"):
        run = read_run(path)
    assert (run.state, run.n_records, run.run_id) == ("corrupt", 0, "")


def test_failed_and_killed_runs(logs: dict) -> None:
    failed = read_run(logs["failed"])
    assert (failed.state, failed.exit_code, failed.job_type) == ("failed", 1, "no-bn")
    with warnings.catch_warnings():  # a real SIGKILL: wandb had written whole blocks, often ending inside a record
        warnings.simplefilter("ignore", LogDamageWarning)
        killed = read_run(logs["killed"])
    assert killed.state == "unfinished" and killed.exit_code is None and (killed.damage is None or killed.truncated)
    assert killed.config["ablation"] == {"name": "synth", "variant": "no-bn", "seed": 1}
    assert len(killed.history) > 10


def test_unknown_log_format_is_one_line_not_damage(logs: dict, tmp_path: Path) -> None:
    """A log of another W&B format version (a wandb outside the tested range) stops with one line, not 'corrupt'."""
    from toolkit.errors import ToolkitError

    data = bytearray(logs["big"].read_bytes())
    data[6] = 1  # the header's format version byte
    newer = tmp_path / "run-newer.wandb"
    newer.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match=r"version 1, which this toolkit cannot read .* wandb 0\.22-0\.31"):
        read_run(newer)
    # a header cut short stays what it was: a truncated log, read as far as it goes
    short = tmp_path / "run-short.wandb"
    short.write_bytes(bytes(data[:5]))
    with pytest.warns(LogDamageWarning, match="truncated inside the file header"):
        assert read_run(short).truncated
