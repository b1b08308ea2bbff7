"""A spec is checked as a whole before anything runs (issue 9 §2): contradictions, dead networks and no-op variants."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import DIGITS, toolkit_cmd
from rich.console import Console

from toolkit.ablation.runner import Options, run_ablation
from toolkit.errors import ToolkitError
from toolkit.study.spec import load_spec


def write_spec(folder: Path, variants: dict, baseline: str = "full", factors: dict | None = None) -> Path:
    spec = {"name": "checks", "base": [DIGITS], "seeds": [0, 1], "baseline": baseline, "variants": variants}
    spec["overrides"] = {"model.zero_init_last": False}  # study-wide, as in ablations/quickstart.yaml
    if factors is not None:
        spec["factors"] = factors
    path = folder / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def dry_run(spec_path: Path, root: Path) -> str:
    out = io.StringIO()
    run_ablation(load_spec(spec_path), Options(root=root, dry_run=True, report=False), Console(file=out, width=200))
    return out.getvalue()


def test_a_contradictory_variant_fails_dry_run_before_any_run_naming_it(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        {
            "full": {},
            "vit-fused": {"model.backbone": "test_vit", "model.batchnorm": "fused", "model.zero_init_last": None},
        },
    )
    done = toolkit_cmd("ablate", "run", str(spec), "--root", str(tmp_path / "runs"), "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert (
        line.startswith("error: variant 'vit-fused' of ")
        and "batchnorm=fused: VisionTransformer has no BatchNorm" in line
    )
    assert not (tmp_path / "runs").exists()  # nothing was created, nothing started


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        ({"model.residual": False, "model.zero_init_last": None}, "residual=False on blocks [0, 1, 2, 3] whose last"),
        ({"model.residual": False, "model.residual_blocks": [9]}, r"residual_blocks: block indices [9] out of range"),
        ({"model.batchnorm": "frozen", "model.zero_init_last": None}, "batchnorm=frozen: 4 BatchNorm layers"),
    ],
)
def test_variants_that_would_fail_per_run_fail_up_front(tmp_path: Path, delta: dict, reason: str) -> None:
    spec = write_spec(tmp_path, {"full": {}, "bad": delta})
    with pytest.raises(ToolkitError) as err:
        dry_run(spec, tmp_path / "runs")
    assert str(err.value).startswith("variant 'bad' of ") and reason in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_variant_that_resolves_to_the_baseline_is_refused_naming_both(tmp_path: Path) -> None:
    # configs/digits.yaml already has drop_rate 0.1: this variant changes nothing
    spec = write_spec(tmp_path, {"full": {}, "drop-0.1": {"model.drop_rate": 0.1}})
    with pytest.raises(ToolkitError, match=r"variant 'drop-0.1' .* same config as the baseline 'full'"):
        dry_run(spec, tmp_path / "runs")


def test_two_variants_that_resolve_alike_are_refused_naming_both(tmp_path: Path) -> None:
    # written differently (0 and 0.0 are distinct spec entries), parsed to the same float
    spec = write_spec(tmp_path, {"full": {}, "a": {"model.drop_rate": 0.0}, "b": {"model.drop_rate": 0}})
    with pytest.raises(ToolkitError, match=r"variant 'b' .* same config as variant 'a'"):
        dry_run(spec, tmp_path / "runs")


def test_distinct_variants_pass_and_the_plan_is_printed(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, {"full": {}, "no-residual": {"model.residual": False}, "no-drop": {"model.drop_rate": 0}}
    )
    out = dry_run(spec, tmp_path / "runs")
    assert "no-residual" in out and "no-drop" in out


def test_a_baseline_named_like_a_factor_variant_is_refused(tmp_path: Path) -> None:
    factors = {
        "design": "leave-one-out",
        "switches": {"augment": {"data.augment": "basic"}, "drop": {"model.drop_rate": 0}},
    }
    spec = write_spec(tmp_path, {}, baseline="no-augment", factors=factors)
    with pytest.raises(
        ToolkitError, match="baseline 'no-augment' is also the name of the variant that switches off augment"
    ):
        load_spec(spec)
