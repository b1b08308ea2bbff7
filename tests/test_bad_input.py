"""Each bad input ends in one `error:` line and exit status 2 before any training (in-process `toolkit.cli.main`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import DIGITS
from PIL import Image

from toolkit.cli import main


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", DIGITS, "--trainer.enable_progress_bar", "false", *args])
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def _image_folder(root: Path, classes: int = 2, per_class: int = 4) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (12, 12), (40 * c, 10 * i, 0)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_unknown_backbone_suggests_names(capsys, tmp_path) -> None:
    line = _error(capsys, "--model.backbone", "resnet18x", "--trainer.default_root_dir", str(tmp_path))
    assert "unknown backbone 'resnet18x'" in line and "resnet18" in line


def test_missing_folder_root(capsys, tmp_path) -> None:
    line = _error(capsys, "--data.source", "folder", "--data.root", str(tmp_path / "nope"))
    assert "does not exist" in line and "--data.root" in line


def test_folder_without_class_subfolders(capsys, tmp_path) -> None:
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    line = _error(capsys, "--data.source", "folder", "--data.root", str(tmp_path / "flat"))
    assert "no class subfolders" in line


def test_undecodable_image_is_named(capsys, tmp_path) -> None:
    root = _image_folder(tmp_path / "imgs")
    (root / "class1" / "broken.png").write_bytes(b"not an image at all")
    line = _error(
        capsys, "--data.source", "folder", "--data.root", str(root), "--trainer.default_root_dir", str(tmp_path / "r")
    )
    assert "broken.png" in line and "cannot decode" in line
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_unknown_config_key(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbon: resnet18\n")
    line = _error(capsys, "--config", str(bad))
    assert "backbon" in line


def test_unfreeze_without_freeze(capsys) -> None:
    line = _error(capsys, "--model.unfreeze_at_epoch", "2")
    assert "freeze_backbone" in line


def test_weights_file_that_does_not_fit_names_keys(capsys, tmp_path) -> None:
    other = tmp_path / "efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), other)
    line = _error(capsys, "--model.pretrained", str(other))
    assert "does not fit backbone 'test_resnet'" in line and "bn1.weight" in line
    partial = tmp_path / "partial.pth"
    state = timm.create_model("test_resnet").state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    line = _error(capsys, "--model.pretrained", str(partial))
    assert "layer1.0.conv1.weight" in line and "extra.weight" in line


def test_offline_hub_weights_say_how_to_pass_a_file(capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _error(capsys, "--model.pretrained", "true")
    assert "timm hub is unreachable" in line and "--model.pretrained /path/to/" in line
    assert "offline weights exist for tf_efficientnet_lite0" in line
