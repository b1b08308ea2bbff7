"""The report on W&B logs written by real training runs (2 variants x 2 seeds of ``toolkit fit`` on digits).

Reference numbers come from the logs' history rows, read here record by record; the report's table uses the run
summaries and its own aggregation, so the two paths are independent.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import wandb
import yaml
from conftest import DIGITS, fit
from matplotlib.image import imread
from report_fixtures import chunk_offsets

from toolkit.report.cli import main
from toolkit.report.wandb_log import read_run

NAME = "real"
VARIANTS = {"full": {}, "no-drop": {"model.drop_rate": 0.0}}  # overrides, as in a spec
SEEDS = [0, 1]
METRICS = ["test/acc", "test/f1", "val/acc"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train the four runs in this process, then damage logs the way crashes and disks do."""
    root = tmp_path_factory.mktemp("real")
    logs = {}
    for variant, overrides in VARIANTS.items():
        extra = [str(x) for key, value in overrides.items() for x in (f"--{key}", value)]
        for seed in SEEDS:
            run_dir = root / NAME / variant / f"seed{seed}"
            fit(
                run_dir, "--test_after_fit", "true", "--seed_everything", str(seed),
                "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
                # no augmentation, a higher lr and 16 steps that learn: healthy runs (the report drops runs at chance)
                "--data.augment", "none", "--model.optimizer.init_args.lr", "0.02",
                "--trainer.limit_train_batches", "8",
                "--ablation.name", NAME, "--ablation.variant", variant, "--ablation.seed", str(seed), *extra,
            )  # fmt: skip
            (logs[variant, seed],) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    wandb.teardown()  # run_cli's wandb.finish() can return before wandb-core has written the last run's log
    originals = {key: read_run(path) for key, path in logs.items()}
    # no-drop seed 1 stops just before its exit record and has no result.json: a run that never finished (a finished
    # run's cut log is counted from its result.json: tests/test_report_lossless.py)
    unfinished = logs["no-drop", 1]
    unfinished.write_bytes(unfinished.read_bytes()[: chunk_offsets(unfinished)[-1]])
    (root / NAME / "no-drop" / "seed1" / "result.json").unlink()
    # copies of full's logs elsewhere in the tree: one cut inside a chunk two thirds in, one with a flipped byte
    copies = {}
    for seed, how in ((0, "cut"), (1, "flip")):
        dest = root / NAME / "full" / f"seed{seed}-{how}" / logs["full", seed].parent.name / logs["full", seed].name
        dest.parent.mkdir(parents=True)
        data = bytearray(logs["full", seed].read_bytes())
        offsets = chunk_offsets(logs["full", seed])
        if how == "flip":
            data[offsets[len(offsets) // 2] + 8] ^= 0x55  # a payload byte of a chunk in the middle
        dest.write_bytes(bytes(data[: offsets[len(offsets) * 2 // 3] + 5] if how == "cut" else data))
        copies[how] = dest
    spec = root / "real.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": NAME,
                "base": [DIGITS],
                "seeds": SEEDS,
                "baseline": "full",
                "variants": VARIANTS,
                "metrics": METRICS,
            }
        )
    )
    return {"root": root, "logs": logs, "originals": originals, "copies": copies, "spec": spec}


@pytest.fixture(scope="module")
def report(ablation: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``toolkit report SPEC --root ROOT --out OUT`` as the ablation runner calls it (in-process)."""
    out = tmp_path_factory.mktemp("report")
    assert main([str(ablation["spec"]), "--root", str(ablation["root"]), "--out", str(out)]) == 0
    return out


def history_value(path: Path, key: str, best: str = "last") -> float:
    """A metric from the log's history rows: the last logged value, or the max over the run."""
    values = [row[key] for row in read_run(path).history if key in row]
    return max(values) if best == "max" else values[-1]


def test_real_runs_are_logged_as_ablation_runs(ablation: dict) -> None:
    for (variant, seed), run in ablation["originals"].items():
        assert (run.state, run.group, run.job_type) == ("finished", NAME, variant)
        assert f"seed={seed}" in run.tags and run.config["ablation"] == {"name": NAME, "variant": variant, "seed": seed}
        assert run.summary["val/acc"] == {"max": history_value(ablation["logs"][variant, seed], "val/acc", "max")}


def test_table_csv_equals_means_and_stds_from_the_logs(ablation: dict, report: Path) -> None:
    table = pd.read_csv(report / "table.csv").set_index(["variant", "metric"])
    counted = {"full": [0, 1], "no-drop": [0]}  # no-drop seed 1 never finished
    for metric in METRICS:
        best = "max" if metric == "val/acc" else "last"  # the summary of val/acc is its best (define_metric max)
        base = statistics.mean(history_value(ablation["logs"]["full", s], metric, best) for s in counted["full"])
        for variant, seeds in counted.items():
            values = [history_value(ablation["logs"][variant, s], metric, best) for s in seeds]
            row = table.loc[(variant, metric)]
            assert row["n"] == len(values)
            assert row["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            if len(values) > 1:
                assert row["std"] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-15)
            else:
                assert math.isnan(row["std"])
            assert row["delta"] == pytest.approx(100 * (statistics.mean(values) - base), abs=1e-9)
    assert "n=1 of 2 seeds (seed 1: interrupted: W&B log unfinished" in table.loc[("no-drop", "test/acc"), "note"]


def test_damaged_and_unfinished_logs_are_reported_and_skipped(ablation: dict, report: Path) -> None:
    runs = pd.read_csv(report / "runs.csv").set_index("source")
    assert runs["counted"].sum() == 3 and len(runs) == 6
    # the three that count were judged healthy from the health record toolkit fit wrote (summary and result.json)
    assert set(runs.loc[runs["counted"], "health"]) == {"finished"}
    assert (runs.loc[runs["counted"], "health/epochs_completed"] == 2).all()
    assert (runs.loc[runs["counted"], "health/test_pred_classes"] > 1).all()
    unfinished = runs.loc[str(ablation["logs"]["no-drop", 1])]
    assert unfinished["state"] == "unfinished" and not unfinished["counted"]
    assert runs.loc[str(ablation["copies"]["cut"]), "state"] == "unfinished"
    assert "truncated" in runs.loc[str(ablation["copies"]["cut"]), "note"]
    assert runs.loc[str(ablation["copies"]["flip"]), "state"] == "corrupt"
    assert "superseded by" in runs.loc[str(ablation["copies"]["flip"]), "note"]


def test_markdown_shape_and_plots(report: Path) -> None:
    rows = [line for line in (report / "table.md").read_text().splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert header == [
        "Variant", "Accuracy", "F1", "Val accuracy", "Δ Accuracy (pts)", "95 % CI (Holm)", "p (Holm)", "MDE (pts)",
        "Direction", "Seeds", "Epochs", "Notes",
    ]  # fmt: skip
    assert [row.strip("|").split("|")[0].strip() for row in rows[2:]] == ["full", "no-drop ⚠"]  # seed 1 excluded
    assert all(" ± " in cell for cell in rows[2].strip("|").split("|")[1:4])  # full: 2 seeds
    pngs = sorted(p.name for p in report.glob("*.png"))
    expected = ["bar_test_acc.png", "bar_test_f1.png", "bar_val_acc.png", "curves_full.png", "curves_no-drop.png"]
    assert pngs == [*expected, "val_acc_by_epoch.png"]
    for name in pngs:
        image = imread(report / name)
        assert image.shape[0] > 100 and image.std() > 0.01, name
