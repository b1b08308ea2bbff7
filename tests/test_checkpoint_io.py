"""One write per training state: best and last of one epoch share a file; other writes never touch it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from conftest import fit

from toolkit.lightning_cli.checkpoint_io import OneWritePerState


def _state(step: int, value: float) -> dict:
    return {"epoch": 0, "global_step": step, "loops": {"fit_loop": {"batches": step}}, "w": torch.full((3,), value)}


def test_the_same_state_is_linked_and_a_later_write_leaves_the_twin_alone(tmp_path: Path) -> None:
    io = OneWritePerState()
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint(_state(4, 1.0), best)
    io.save_checkpoint(_state(4, 1.0), last)  # same epoch, step and loops: a second name, not a second write
    assert os.stat(best).st_ino == os.stat(last).st_ino and os.stat(best).st_nlink == 2
    io.save_checkpoint(_state(8, 2.0), last)  # the next epoch: a new file under the name, the twin keeps its state
    assert os.stat(best).st_ino != os.stat(last).st_ino and os.stat(best).st_nlink == 1
    assert torch.equal(torch.load(best)["w"], torch.full((3,), 1.0))
    assert torch.equal(torch.load(last)["w"], torch.full((3,), 2.0))
    io.save_checkpoint(_state(8, 2.0), last)  # the same state to the same name again: rewritten, still one file
    assert os.stat(last).st_nlink == 1 and not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_another_state_is_written_not_linked(tmp_path: Path) -> None:
    io = OneWritePerState()
    io.save_checkpoint(_state(4, 1.0), tmp_path / "a.ckpt")
    moved = _state(4, 1.0)
    moved["loops"] = {"fit_loop": {"batches": 5}}  # same step, other loop progress (a mid-epoch save): its own file
    io.save_checkpoint(moved, tmp_path / "b.ckpt")
    assert os.stat(tmp_path / "a.ckpt").st_ino != os.stat(tmp_path / "b.ckpt").st_ino
    full = {**_state(4, 1.0), "optimizer_states": [{"step": 4}]}  # last.ckpt beside a save_weights_only best
    io.save_checkpoint(full, tmp_path / "c.ckpt")
    io.save_checkpoint(_state(4, 1.0), tmp_path / "d.ckpt")
    assert os.stat(tmp_path / "c.ckpt").st_ino != os.stat(tmp_path / "d.ckpt").st_ino
    assert "optimizer_states" in torch.load(tmp_path / "c.ckpt")


def test_a_fit_writes_each_epoch_once_and_last_holds_the_final_weights(tmp_path: Path) -> None:
    # every epoch's best-val checkpoint kept (save_top_k -1): each epoch saves best-epochN and last at one state
    cli = fit(tmp_path, "--trainer.max_epochs", "2", "--checkpoint.save_top_k", "-1")
    folder = tmp_path / "checkpoints"
    last, final = folder / "last.ckpt", folder / "best-epoch001.ckpt"
    assert os.stat(last).st_ino == os.stat(final).st_ino  # one write for the last epoch's two checkpoints
    assert os.stat(folder / "best-epoch000.ckpt").st_nlink == 1  # epoch 0's own file, untouched by epoch 1's writes
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == cli.trainer.global_step
    model = cli.model.state_dict()
    assert saved["state_dict"].keys() == model.keys()
    assert all(torch.equal(saved["state_dict"][k].cpu(), v.cpu()) for k, v in model.items())
