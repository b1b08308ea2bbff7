"""Each preset in ablations/ runs end to end at a tiny scale, and its report has the rows and plots it promises.

One `toolkit ablate run` per preset (warm workers, 2 workers), the preset's own spec with a few tiny-scale overrides
written next to it as a derived spec: 1 seed, a 64-image stratified subset, 3 epochs of 8 batches of 8. The backbone
stays the presets' ImageNet EfficientNet-Lite0 (offline weights); a handful of images per run keeps it cheap.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, toolkit_cmd

from toolkit.data.datasets import DEBIAN_FASHION_MNIST
from toolkit.study.spec import load_spec

pytestmark = pytest.mark.slow

#: tiny scale: enough steps for LP->FT (probe epoch, then fine-tune), a 3-cycle snapshot ensemble and val accuracy
#: above chance (the run-health check), at a lower lr than the presets' 1e-3 for batches of 8 (a full fine-tune from
#: step 0 at 1e-3 or 5e-3 predicts one class in so few steps)
TINY = {
    "data.train_subset": 64,
    "data.eval_subset": 30,
    "data.batch_size": 8,
    "model.optimizer.init_args.lr": 0.0003,
    "trainer.max_epochs": 3,
    "trainer.enable_progress_bar": False,
    "data.test_split": "split",  # a tiny test split: the quickstart tests on every unused digit
}
HEALTH = {"finished", "interrupted", "failed", "diverged", "degenerate", "not learning", "corrupt", "superseded"}
HEALTH |= {"change never tested"}


def _run_tiny(
    preset: str, tmp_path: Path, baseline: str | None = None
) -> tuple[dict, pd.DataFrame, pd.DataFrame, Path]:
    """Run ``ablations/<preset>.yaml`` at the tiny scale (optionally against another ``baseline``); return its spec,
    runs.csv, table.csv and report folder."""
    spec = yaml.safe_load((ROOT / "ablations" / f"{preset}.yaml").read_text())
    spec["baseline"] = baseline or spec["baseline"]
    derived = dict(spec, seeds=[0], base=load_spec(ROOT / "ablations" / f"{preset}.yaml").base)  # resolved as shipped
    derived["overrides"] = {**spec.get("overrides", {}), **TINY}
    path = tmp_path / f"{preset}.yaml"
    path.write_text(yaml.safe_dump(derived))
    done = toolkit_cmd("ablate", "run", str(path), "--root", str(tmp_path / "runs"), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "runs" / spec["name"] / "report"  # beside its runs
    return spec, pd.read_csv(out / "runs.csv"), pd.read_csv(out / "table.csv"), out


def _check_rows(spec: dict, runs: pd.DataFrame, table: pd.DataFrame, out: Path) -> None:
    """Every variant of the spec has its run and its table row; the baseline is healthy and drawn."""
    variants = list(spec["variants"])
    assert sorted(runs["variant"]) == sorted(variants)
    assert set(runs["health"]) <= HEALTH
    assert set(table["variant"]) == set(variants) and set(table["metric"]) == set(spec["metrics"])
    baseline = runs[runs["variant"] == spec["baseline"]]
    assert baseline["counted"].all(), baseline[["health", "reason"]].to_string()
    assert (out / "bar_test_acc.png").is_file() and (out / "table.md").is_file()


def test_quickstart(tmp_path: Path) -> None:
    spec, runs, table, out = _run_tiny("quickstart", tmp_path)
    _check_rows(spec, runs, table, out)
    snapshot = runs[runs["variant"] == "snapshot"].iloc[0]
    assert pd.notna(snapshot["test/acc_ensemble"])
    probe = runs[runs["variant"] == "linear-probe"].iloc[0]
    assert str(probe["config.model.freeze_backbone"]).lower() == "true"


def test_transfer_modes(tmp_path: Path) -> None:
    # its baseline fine-tunes everything at the head's lr from step 0, which in 24 tiny steps (batch 8) predicts one
    # class at any lr tried (1.5e-3, 5e-3): the tiny run is compared against the backbone-lr-x0.1 row instead
    _check_rows(*_run_tiny("transfer-modes", tmp_path, baseline="fine-tune-lr0.1"))


def test_bn_transfer(tmp_path: Path) -> None:
    _check_rows(*_run_tiny("bn-transfer", tmp_path))


def test_lesion_study(tmp_path: Path) -> None:
    spec, runs, table, out = _run_tiny("lesion-study", tmp_path)
    _check_rows(spec, runs, table, out)
    intact = runs[runs["variant"] == "intact"].iloc[0]
    blocks = [c for c in runs.columns if c.startswith("test/acc_lesion_") and not c.startswith("test/acc_lesion_k")]
    assert len(blocks) == 9  # tf_efficientnet_lite0 has 9 blocks with a skip
    assert [c for c in runs.columns if c.startswith("test/acc_lesion_k")] and pd.notna(intact["test/acc_lesion_k9"])
    assert (out / "lesion_curve.png").is_file()


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist(tmp_path: Path) -> None:
    spec, runs, table, out = _run_tiny("fashion-mnist", tmp_path)
    _check_rows(spec, runs, table, out)
    assert set(runs["config.data.source"]) == {"fashion_mnist"}
