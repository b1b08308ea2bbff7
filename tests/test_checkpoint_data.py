"""Checkpoints are data: every path that reads a checkpoint refuses a pickle payload (nothing runs) and NaN weights.

The payload is real: an ordinary unpickler (``torch.load(weights_only=False)``) runs it and creates the marker file
(checked first), so a path that still unpickled arbitrary objects would create it too.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import QUICK, Payload, fit, payload_checkpoint, toolkit_cmd

from toolkit.errors import ToolkitError
from toolkit.model.checkpoint_data import check_finite, load_data


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good")
    fit(root)
    return root / "checkpoints" / "last.ckpt"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _nan_checkpoint(good: Path, out: Path, key: str = "backbone.conv1.0.weight", value: float = math.nan) -> Path:
    checkpoint = torch.load(good, map_location="cpu", weights_only=True)
    tensor = checkpoint["state_dict"][key]
    tensor[(0,) * tensor.ndim] = value  # its first element, whatever its memory format (channels_last weights)
    torch.save(checkpoint, out)
    return out


def test_the_payload_runs_under_an_ordinary_unpickler(good: Path, tmp_path: Path, marker: Path) -> None:
    """The reference: the same file loaded the unsafe way creates the marker (so its absence below means something)."""
    evil = payload_checkpoint(good, tmp_path / "evil.ckpt", marker)
    torch.load(evil, map_location="cpu", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("where", ["top", "hparams", "state_dict"])
def test_the_checkpoint_reader_refuses_a_payload_before_it_runs(good, tmp_path, marker, where) -> None:
    """``--ckpt_path`` of fit (resume), validate, test and predict, and every ``--ensemble_ckpts`` member."""
    from toolkit.lightning_cli.checkpoint import CheckpointReader

    evil = payload_checkpoint(good, tmp_path / "evil.ckpt", marker, where)
    with pytest.raises(ToolkitError) as err:
        CheckpointReader(evil).check()
    message = str(err.value)
    assert str(evil) in message and "posix.system" in message and "\n" not in message
    assert not marker.exists()


def test_a_checkpoint_ensemble_member_is_read_as_data(good, tmp_path, marker) -> None:
    from toolkit.callbacks.ensemble import CheckpointEnsemble

    evil = payload_checkpoint(good, tmp_path / "member.ckpt", marker)
    nan = _nan_checkpoint(good, tmp_path / "nan.ckpt")
    ensemble = CheckpointEnsemble([str(good), str(evil), str(nan)])
    assert set(ensemble.read_state_dict(good)) == set(torch.load(good, weights_only=True)["state_dict"])
    with pytest.raises(ToolkitError, match=r"ensemble checkpoint .*member\.ckpt holds objects other than"):
        ensemble.read_state_dict(evil)
    with pytest.raises(ToolkitError, match=r"nan\.ckpt has non-finite weights \(NaN or inf in backbone\.conv1\.0"):
        ensemble.read_state_dict(nan)
    assert not marker.exists()


def test_a_snapshot_file_is_read_as_data(good, tmp_path, marker) -> None:
    """A file planted among a run's snapshots: neither its header (run token) nor its weights unpickle the payload."""
    from toolkit.callbacks import snapshot

    state = torch.load(good, weights_only=True)["state_dict"]
    torch.save({"run": "r", "epoch": 0, "state_dict": state}, tmp_path / "plain.pt")
    evil = payload_checkpoint(tmp_path / "plain.pt", tmp_path / "snapshot-1.pt", marker)
    callback = snapshot.SnapshotEnsemble(cycles=2)
    for read in (snapshot._run_of, callback.read_state_dict):
        with pytest.raises(ToolkitError, match=r"snapshot .*snapshot-1\.pt holds objects other than"):
            read(evil)
    assert snapshot._run_of(tmp_path / "plain.pt") == "r"
    nan = dict(state)
    nan["head.1.weight"] = torch.full_like(state["head.1.weight"], math.inf)
    torch.save({"run": "r", "epoch": 0, "state_dict": nan}, tmp_path / "inf.pt")
    with pytest.raises(ToolkitError, match=r"inf\.pt has non-finite weights \(NaN or inf in head\.1\.weight\)"):
        callback.read_state_dict(tmp_path / "inf.pt")
    assert not marker.exists()


def test_the_torch_free_epoch_reader_never_runs_a_payload(good, tmp_path, marker) -> None:
    """``toolkit ablate status`` reads ``last.ckpt``'s epoch with its own header unpickler: inert stand-ins only."""
    from toolkit.ablation.ckpt_epochs import epochs_done

    evil = payload_checkpoint(good, tmp_path / "last.ckpt", marker)
    assert epochs_done(evil) == epochs_done(good) == 1
    assert not marker.exists()


def test_pretrained_weights_with_a_payload_are_refused(good, tmp_path, marker) -> None:
    from toolkit.model.backbone import create_backbone

    weights = tmp_path / "weights.pth"
    state = torch.load(good, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}, weights)
    evil = payload_checkpoint(weights, tmp_path / "evil.pth", marker)
    with pytest.raises(ToolkitError, match=r"evil\.pth cannot be read"):
        create_backbone("test_resnet", str(evil))
    assert not marker.exists()


def test_a_feature_cache_file_with_a_payload_is_refused(tmp_path, marker, monkeypatch) -> None:
    """The cached-feature path loads its cache files as data: a planted one is one line naming it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("TOOLKIT_FEATURE_CACHE", str(cache))
    probe = ["--model.freeze_backbone", "true", "--model.feature_cache", "on", "--trainer.logger", "false"]
    fit(tmp_path / "first", *probe)
    files = sorted(cache.glob("*.pt"))
    assert files
    for path in files:  # each holds a tensor: keep it, add the payload
        torch.save([torch.load(path, weights_only=True), Payload(marker)], path)
    with pytest.raises(ToolkitError, match=r"feature cache file .*\.pt holds objects other than"):
        fit(tmp_path / "second", *probe)
    assert not marker.exists()


def test_load_data_ignores_torch_force_no_weights_only_load(good, tmp_path, marker, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    evil = payload_checkpoint(good, tmp_path / "evil.ckpt", marker)
    with pytest.raises(ToolkitError, match="holds objects other than tensors"):
        load_data(evil)
    assert not marker.exists()


def test_check_finite_names_the_non_finite_tensors() -> None:
    finite = {"a": torch.ones(3), "steps": torch.tensor(5), "b": torch.zeros(2, 2)}
    check_finite(finite, "f.ckpt")
    bad = {**finite, "n": torch.tensor([1.0, math.nan]), "i": torch.tensor([-math.inf]), "h": torch.ones(2).half()}
    bad["h"][1] = math.inf
    with pytest.raises(ToolkitError, match=r"^checkpoint f\.ckpt has non-finite weights \(NaN or inf in n, i, h\)"):
        check_finite(bad, "f.ckpt")


def test_every_checkpoint_a_fit_writes_loads_as_data(tmp_path) -> None:
    """What the toolkit stores (hyperparameters, run id, random state, callback states, probe flag, snapshots) is
    plain data for this project's configs: a probe + fine-tune run with a snapshot ensemble and the L-BFGS probe."""
    from toolkit.lightning_cli.checkpoint import CheckpointReader

    fit(
        tmp_path,
        "--config",
        str(Path(__file__).resolve().parents[1] / "configs" / "snapshot.yaml"),
        "--test_after_fit",
        "true",
        "--trainer.max_epochs",
        "2",
        "--model.freeze_backbone",
        "true",
        "--model.unfreeze_at_epoch",
        "1",
        "--model.probe",
        "lbfgs",
    )
    files = [p for p in tmp_path.rglob("*") if p.suffix in (".ckpt", ".pt")]
    assert {p.suffix for p in files} == {".ckpt", ".pt"}  # checkpoints and snapshots
    for path in files:
        load_data(path)
        if path.suffix == ".ckpt":
            CheckpointReader(path).check()


@pytest.mark.slow
def test_toolkit_test_refuses_a_payload_checkpoint_and_runs_nothing(good, tmp_path, marker) -> None:
    """The issue's repro with the real console command (one process): exit 2, one line naming the file."""
    evil = payload_checkpoint(good, tmp_path / "evil.ckpt", marker)
    done = toolkit_cmd("test", *QUICK, "--trainer.default_root_dir", str(tmp_path / "t"), "--ckpt_path", str(evil))
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and str(evil) in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not marker.exists()
