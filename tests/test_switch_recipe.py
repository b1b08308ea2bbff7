"""The "where to add a switch" recipe of docs/architecture.md, followed: one registry entry plus its transform.

A toy BatchNorm level (``doubled``: every BatchNorm scale times two) is declared in
``toolkit.model.components.registry.BATCHNORM_LEVELS`` for the length of a test, and nothing else is edited. It
must then be
validated (an unknown level refused with one line), accepted by the ``toolkit fit`` parser, applied, part of the
feature-cache key, and refused by ``command.check_variants`` where it changes nothing. Real in-process fits of timm's
``test_resnet`` on digits.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch
from conftest import fit
from test_spec_checks import dry_run, write_spec
from torch import nn

from toolkit import keys
from toolkit.errors import ToolkitError
from toolkit.lightning_cli import parse_config
from toolkit.model.classifier import ImageClassifier
from toolkit.model.components import apply_switches, find_batchnorms
from toolkit.model.components.registry import BATCHNORM_LEVELS, SWITCHES, Level
from toolkit.model.features import CACHE_ENV
from toolkit.report.plots import RESIDUAL_KEY


def _double(backbone: nn.Module, bn_names: list[str]) -> str:
    """The toy level's transform: every BatchNorm scale times two (in place)."""
    with torch.no_grad():
        for name in bn_names:
            backbone.get_submodule(name).weight.mul_(2)
    return f"batchnorm=doubled: {len(bn_names)} scales doubled"


@pytest.fixture
def doubled(monkeypatch: pytest.MonkeyPatch) -> None:
    # the recipe, step 1 and the only one: the level's entry with its transform (a scale of 0 stays 0: harmless)
    monkeypatch.setitem(BATCHNORM_LEVELS, "doubled", Level(transform=_double))


def test_the_signature_literal_and_the_report_key_follow_the_registry() -> None:
    hints = typing.get_type_hints(ImageClassifier.__init__)
    assert (
        typing.get_args(hints["batchnorm"])
        == tuple(BATCHNORM_LEVELS)
        == ("on", "frozen", "frozen-stats", "fused", "off")
    )
    assert keys.config_key(f"model.{SWITCHES['residual'].name}") == RESIDUAL_KEY  # the report's column of it
    assert [s.name for s in SWITCHES.values()] == ["batchnorm", "residual", "residual_blocks", "lesion_blocks"]
    assert all(name in hints for name in SWITCHES)  # every switch is an argument of the model


@pytest.mark.usefixtures("doubled")
def test_a_declared_level_is_validated_and_applied() -> None:
    model = ImageClassifier(backbone="test_resnet", zero_init_last=False)
    with pytest.raises(ToolkitError) as err:
        apply_switches(model.backbone, batchnorm="tripled")
    assert (
        str(err.value)
        == "batchnorm='tripled' is not a level; choose one of on, frozen, frozen-stats, fused, off, doubled"
    )
    with pytest.raises(ToolkitError, match=r"Parser key \"model.batchnorm\".*Got value: tripled"):
        parse_config(["fit", "--model.batchnorm", "tripled"])
    assert parse_config(["fit", "--model.batchnorm", "doubled"]).fit.model.batchnorm == "doubled"

    torch.manual_seed(0)
    plain = ImageClassifier(backbone="test_resnet", zero_init_last=False)
    torch.manual_seed(0)
    toy = ImageClassifier(backbone="test_resnet", zero_init_last=False, batchnorm="doubled")
    names = find_batchnorms(plain.backbone)
    assert toy.changes == [f"batchnorm=doubled: {len(names)} scales doubled"] and plain.changes == []
    for name in names:  # an independent check: the scales are twice the unswitched model's, nothing else moved
        torch.testing.assert_close(
            toy.backbone.get_submodule(name).weight, 2 * plain.backbone.get_submodule(name).weight
        )
        torch.testing.assert_close(toy.backbone.get_submodule(name).bias, plain.backbone.get_submodule(name).bias)


@pytest.mark.usefixtures("doubled")
def test_a_declared_level_enters_the_feature_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "features"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    probe = ["--model.freeze_backbone", "true", "--data.augment", "none", "--model.drop_rate", "0.0"]
    probe += ["--model.zero_init_last", "false", "--trainer.limit_train_batches", "1", "--seed_everything", "0"]
    fit(tmp_path / "on", *probe)
    assert len(list(cache.glob("*.pt"))) == 2  # train and val features of the unswitched backbone
    fit(tmp_path / "doubled", *probe, "--model.batchnorm", "doubled")
    assert len(list(cache.glob("*.pt"))) == 4  # the level changes what the frozen backbone computes: new entries


@pytest.mark.usefixtures("doubled")
def test_check_variants_runs_a_declared_level_and_refuses_it_where_it_changes_nothing(tmp_path: Path) -> None:
    ok = write_spec(tmp_path, {"full": {}, "doubled": {"model.batchnorm": "doubled"}})
    assert "doubled" in dry_run(ok, tmp_path / "runs")
    # on a backbone without BatchNorm the level finds nothing to change
    vit = {"model.backbone": "test_vit", "model.batchnorm": "doubled", "model.zero_init_last": None}
    with pytest.raises(ToolkitError, match=r"variant 'vit' .*batchnorm=doubled: VisionTransformer has no BatchNorm"):
        dry_run(write_spec(tmp_path, {"full": {}, "vit": vit}), tmp_path / "runs")
    # a variant setting the level a base config already gives the baseline changes nothing
    again = write_spec(tmp_path, {"full": {}, "same": {"model.batchnorm": "doubled"}})
    (tmp_path / "doubled.yaml").write_text("model:\n  batchnorm: doubled\n")
    spec = json.loads(again.read_text())
    spec["base"].append(str(tmp_path / "doubled.yaml"))
    again.write_text(json.dumps(spec))
    with pytest.raises(ToolkitError, match=r"variant 'same' .* same config as the baseline 'full'"):
        dry_run(again, tmp_path / "runs")
