"""``toolkit predict`` on a new image folder or file list: a path per row, labels where known, every row once (DDP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import QUICK, fit, toolkit_cmd
from PIL import Image
from sklearn.datasets import load_digits

from toolkit.data.transforms import create_eval_transform, resolve_backbone_data_config
from toolkit.lightning_cli import run_cli
from toolkit.model.classifier import ImageClassifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits checkpoint (tiny fit)."""
    root = tmp_path_factory.mktemp("fit")
    fit(root)
    return root / "checkpoints" / "last.ckpt"


def _digit_folder(root: Path, per_class: dict[str, list[int]], unlabelled: list[int]) -> list[Path]:
    """Digits as PNG files: ``root/<class>/<i>.png`` for the labelled ones, ``root/new/<i>.png`` for the others."""
    digits = load_digits()
    files = []
    for folder, indices in [*per_class.items(), ("new", unlabelled)]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in indices:
            pixels = np.clip(digits.images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
            path = root / folder / f"{i}.png"
            Image.fromarray(np.repeat(pixels[:, :, None], 3, axis=2)).save(path)
            files.append(path)
    return sorted(files)


def _reference_probs(ckpt: Path, files: list[Path]) -> torch.Tensor:
    """The checkpoint's softmax on each file, computed here without the data module or the prediction loop."""
    model = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    transform = create_eval_transform(resolve_backbone_data_config("test_resnet", 32))
    with torch.no_grad():
        images = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        return model(images).softmax(-1)


def test_predict_a_new_folder_maps_rows_to_paths_and_keeps_earlier_files(tmp_path: Path, trained: Path) -> None:
    digits = load_digits()
    files = _digit_folder(tmp_path / "images", {"3": [3, 13], "7": [7, 17]}, unlabelled=[0, 1, 2])
    out = tmp_path / "pred"
    args = ["predict", *QUICK, "--ckpt_path", str(trained), "--trainer.default_root_dir", str(out)]
    run_cli([*args, "--data.predict_root", str(tmp_path / "images")])
    table = pd.read_csv(out / "predictions.csv", dtype={"label": "Int64", "pred_name": str})
    assert list(table.columns) == ["index", "path", "label", "label_name", "pred", "pred_name", "prob"]
    assert table["path"].tolist() == [str(f) for f in files] and table["index"].tolist() == list(range(len(files)))
    expected = [int(f.parent.name) if f.parent.name != "new" else None for f in files]
    assert [None if pd.isna(v) else int(v) for v in table["label"]] == expected
    assert all(int(digits.target[int(f.stem)]) == label for f, label in zip(files, expected, strict=True) if label)
    reference = _reference_probs(trained, files)
    assert table["pred"].tolist() == reference.argmax(-1).tolist()
    assert table["prob"].to_numpy() == pytest.approx(reference.max(-1).values.numpy(), abs=1e-5)
    assert table["pred_name"].tolist() == [str(p) for p in table["pred"]]  # digits class names are "0".."9"

    # a text file of paths (relative to its folder) predicts those images, in the file's order; nothing is overwritten
    listing = tmp_path / "list.txt"
    chosen = [files[4], files[0]]
    listing.write_text("# two images\n" + "\n".join(str(f.relative_to(tmp_path)) for f in chosen) + "\n")
    first = (out / "predictions.csv").read_bytes()
    run_cli([*args, "--data.predict_root", str(listing)])
    assert (out / "predictions.csv").read_bytes() == first
    again = pd.read_csv(out / "predictions_v1.csv")
    assert again["path"].tolist() == [str(f) for f in chosen]


def test_predict_without_root_keeps_test_split_labels_and_names_in_memory_images(tmp_path: Path, trained) -> None:
    out = tmp_path / "pred"
    run_cli(["predict", *QUICK, "--ckpt_path", str(trained), "--trainer.default_root_dir", str(out)])
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 270 and table["label"].notna().all()
    assert table["path"].tolist() == [f"digits:test[{i}]" for i in range(270)]


@pytest.mark.slow
def test_predict_under_ddp_writes_every_row_once_with_labels(tmp_path: Path, trained: Path) -> None:
    # 7 images on 2 ranks: DistributedSampler repeats one so both ranks get 4; the file must still hold 7 rows
    files = _digit_folder(tmp_path / "images", {"1": [1, 11, 21], "5": [5, 15]}, unlabelled=[0, 2])
    result = toolkit_cmd(
        "predict",
        *QUICK,
        "--ckpt_path",
        str(trained),
        "--trainer.default_root_dir",
        str(tmp_path / "pred"),
        "--data.predict_root",
        str(tmp_path / "images"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv", dtype={"label": "Int64"})
    assert table["path"].tolist() == [str(f) for f in files]
    assert table["label"].notna().sum() == 5
    assert table["pred"].tolist() == _reference_probs(trained, files).argmax(-1).tolist()
    assert not list((tmp_path / "pred").glob(".predictions.rank*"))
