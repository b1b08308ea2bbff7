"""``tune:`` in an ablation spec: each variant's values chosen on validation, then every seed run at them.

The choice logic is tested on hand-written ``result.json`` files (torch-free, fast); one slow test runs the real
thing: two optimizers whose good learning rates differ by two orders of magnitude pick different values on val, the
study runs at them, and the table prints them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.ablation import tune_stage
from toolkit.errors import ToolkitError
from toolkit.study import tuning
from toolkit.study.ledger import DONE, FAILED
from toolkit.study.result import DIVERGED, RunResult
from toolkit.study.spec import AblationSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
LR = "model.optimizer.init_args.lr"
SGD = {"model.optimizer.class_path": "torch.optim.SGD"}


def write_spec(folder: Path, **extra: object) -> Path:
    spec = {"name": "tuned", "base": [str(DIGITS)], "seeds": [3, 4], "variants": {"full": {}, "sgd": SGD}, **extra}
    path = folder / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def finish(spec: AblationSpec, root: Path, scores: dict[str, float | None], status: str = DONE) -> dict:
    """Write a result.json per tune run (``scores``: tune-stage variant -> best_val) and return the ledger records."""
    records = {}
    for run in tuning.tune_study(spec).runs():
        if run.variant not in scores:
            continue
        state = DIVERGED if scores[run.variant] is None else "done"
        RunResult(state, best_val=scores[run.variant]).write(run.directory(root) / "result.json")
        records[run.id] = {"status": status}
    return records


def test_tune_stage_runs_every_variant_at_every_value_at_the_first_seed(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.01], "model.drop_rate": [0.0, 0.2]}))
    stage = tuning.tune_study(spec)
    assert stage.name == "tuned-tune" and stage.seeds == [3]
    assert len(stage.variants) == 2 * 2 * 2
    assert stage.variants["sgd@lr=0.01+drop_rate=0.2"] == {**SGD, LR: 0.01, "model.drop_rate": 0.2}
    assert stage.baseline == "full@lr=0.001+drop_rate=0.0"
    folders = {run.directory(tmp_path) for run in stage.runs()}
    assert len(folders) == 8 and all(f.parent.parent == tmp_path / "tuned-tune" for f in folders)


def test_each_variant_gets_the_value_with_the_best_val_score_and_a_tie_keeps_the_first(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.01, 0.1]}))
    scores = {"full@lr=0.001": 0.8, "full@lr=0.01": 0.9, "full@lr=0.1": 0.85}
    scores |= {"sgd@lr=0.001": 0.5, "sgd@lr=0.01": 0.5, "sgd@lr=0.1": 0.4}
    chosen = tune_stage.choose(spec, tmp_path, finish(spec, tmp_path, scores))
    assert chosen["full"].values == {LR: 0.01}
    assert chosen["sgd"].values == {LR: 0.001}  # 0.5 twice: the first listed value
    assert chosen["sgd"].scores == {"lr=0.001": 0.5, "lr=0.01": 0.5, "lr=0.1": 0.4}
    study = tuning.tuned(spec, chosen)
    by_variant = {run.variant: run.overrides[LR] for run in study.runs()}
    assert by_variant == {"full": 0.01, "sgd": 0.001}
    assert {run.id for run in study.runs()}.isdisjoint({run.id for run in spec.runs()})  # new values, new run ids


def test_diverged_and_failed_tune_runs_do_not_compete(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.01, 0.1]}))
    records = finish(spec, tmp_path, {"full@lr=0.001": 0.5, "full@lr=0.01": None})  # 0.01 diverged
    records |= finish(spec, tmp_path, {"full@lr=0.1": 0.99}, status=FAILED)  # a failed run's score is not trusted
    records |= finish(spec, tmp_path, {"sgd@lr=0.001": 0.1, "sgd@lr=0.01": 0.2, "sgd@lr=0.1": 0.3})
    assert tune_stage.choose(spec, tmp_path, records)["full"].values == {LR: 0.001}


def test_a_variant_with_no_scored_tune_run_stops_the_study_with_one_line(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.01]}))
    records = finish(spec, tmp_path, {"full@lr=0.001": 0.5, "sgd@lr=0.001": None, "sgd@lr=0.01": None})
    with pytest.raises(ToolkitError, match=r"no run of variant 'sgd' finished with a validation score"):
        tune_stage.choose(spec, tmp_path, records)


def test_a_variant_that_sets_the_key_keeps_its_value_and_is_not_tuned(tmp_path: Path) -> None:
    path = write_spec(tmp_path, tune={LR: [0.001, 0.01]}, variants={"full": {}, "own": {LR: 0.05}})
    spec = load_spec(path)
    assert [v for v in tuning.tune_study(spec).variants] == ["full@lr=0.001", "full@lr=0.01"]
    chosen = tune_stage.choose(spec, tmp_path, finish(spec, tmp_path, {"full@lr=0.001": 0.3, "full@lr=0.01": 0.4}))
    # 0.01 is the largest value tried: the best may lie beyond it, and the table says so
    assert tuning.column(spec, chosen) == {"full": "lr=0.01 (grid edge)", "own": "lr=0.05 (fixed)"}


def test_a_value_inside_its_grid_is_not_marked_and_untuned_rows_that_change_the_optimisation_are() -> None:
    grid = [0.001, 0.01, 0.1]
    assert [tuning.at_edge(grid, v) for v in grid] == [True, False, True]
    assert tuning.at_edge([0.1, 0.001, 0.01], 0.1) and not tuning.at_edge([0.1, 0.001, 0.01], 0.01)  # numeric ends
    assert tuning.at_edge(["cosine", "step", "constant"], "constant") and not tuning.at_edge(["a", "b", "c"], "b")
    assert tuning.changes_optimisation({"model.freeze_backbone": False, "data.augment": "mild"}) == [
        "model.freeze_backbone"
    ]
    snapshot = {"trainer.callbacks": [{"class_path": "toolkit.SnapshotEnsemble"}]}
    assert tuning.changes_optimisation(snapshot) == ["trainer.callbacks"]
    assert tuning.changes_optimisation({"model.drop_path_rate": 0.1}) == []


def test_choices_are_recorded_and_only_read_back_for_the_same_tune(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.01]}))
    with pytest.raises(ToolkitError, match="tune stage has not finished"):
        tuning.resolve(spec, tmp_path)
    scores = {"full@lr=0.001": 0.3, "full@lr=0.01": 0.4, "sgd@lr=0.001": 0.6, "sgd@lr=0.01": 0.2}
    chosen = tune_stage.choose(spec, tmp_path, finish(spec, tmp_path, scores))
    tuning.write_choices(tmp_path, spec, chosen)
    assert tuning.read_choices(tmp_path, spec) == chosen
    assert tuning.resolve(spec, tmp_path).variants == {"full": {LR: 0.01}, "sgd": {**SGD, LR: 0.001}}
    other = load_spec(write_spec(tmp_path, tune={LR: [0.001, 0.03]}))  # another grid: those choices do not apply
    assert tuning.read_choices(tmp_path, other) is None


@pytest.mark.parametrize(
    "tune",
    [{LR: [0.001]}, {LR: 0.001}, {LR: [0.001, 0.001]}, {LR: [[1], [2]]}, {"-lr": [1, 2]}, [0.1, 0.2]],
)
def test_a_bad_tune_block_is_refused_with_one_line(tmp_path: Path, tune: object) -> None:
    with pytest.raises(ToolkitError, match=r"spec.yaml: tune"):
        load_spec(write_spec(tmp_path, tune=tune))


@pytest.mark.slow
def test_two_optimizers_get_their_own_lr_on_val_and_the_table_shows_it(tmp_path: Path) -> None:
    """AdamW and SGD on digits: measured on val, AdamW is best at lr 0.003 (0.5 destroys it), SGD at 0.5 (0.003 hardly
    moves it in 16 steps). The tune stage must find that, run every seed at it and print it in the table."""
    spec = {
        "name": "opt",
        "base": [str(DIGITS)],
        "overrides": {
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 8,
            "trainer.limit_val_batches": 2,
            "trainer.limit_test_batches": 1,
            "trainer.enable_progress_bar": False,
        },
        "seeds": [0, 1],
        "baseline": "adamw",
        "variants": {
            "adamw": {},
            "sgd": {"model.optimizer.class_path": "torch.optim.SGD"},
            "adamw-own-lr": {LR: 0.001},
        },
        "tune": {LR: [0.003, 0.5]},
    }
    path = tmp_path / "opt.yaml"
    path.write_text(json.dumps(spec))
    toolkit = str(Path(sys.executable).with_name("toolkit"))
    proc = subprocess.run(
        [toolkit, "ablate", "run", str(path), "--root", str(tmp_path / "runs"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "opt" / "tune.json").read_text())
    assert record["variants"]["adamw"]["values"] == {LR: 0.003}
    assert record["variants"]["sgd"]["values"] == {LR: 0.5}
    own = {"values": {LR: 0.001}, "fixed": [LR], "scores": {}, "inherited": False}
    assert record["variants"]["adamw-own-lr"] == own
    tuned_runs = sorted(p.parent.name for p in (tmp_path / "runs" / "opt-tune").glob("*/seed0"))
    assert tuned_runs == ["adamw@lr=0.003", "adamw@lr=0.5", "sgd@lr=0.003", "sgd@lr=0.5"]
    for variant, lr in (("adamw", 0.003), ("sgd", 0.5), ("adamw-own-lr", 0.001)):
        for seed in (0, 1):
            config = (tmp_path / "runs" / "opt" / variant / f"seed{seed}" / "config.yaml").read_text()
            assert f"lr: {lr}" in config
    table = (tmp_path / "runs" / "opt" / "report" / "table.md").read_text()
    rows = {line.split("|")[1].strip(" ⚠"): line for line in table.splitlines() if line.startswith("| ")}
    assert "Tuned on val" in rows["Variant"]
    assert "lr=0.003" in rows["adamw"] and "lr=0.5" in rows["sgd"] and "lr=0.001 (fixed)" in rows["adamw-own-lr"]
    assert "chosen for each row on validation accuracy" in table


def test_without_tune_the_table_says_every_row_shares_the_baselines_hyperparameters() -> None:
    from toolkit.report.render import legend

    assert "every row shares the baseline's, except the settings its variant changes (no `tune:`)" in legend(
        "full", ["test/acc"]
    )


def test_tune_auto_tunes_the_lr_of_the_baseline_and_the_rows_that_change_the_optimisation(tmp_path: Path) -> None:
    variants = {"full": {}, "ft": {"model.freeze_backbone": False}, "drop": {"model.drop_rate": 0.3},
                "own": {"model.pretrained": False, LR: 0.05},
                "probe": {"model.freeze_backbone": True, "model.probe": "lbfgs"}}  # fmt: skip
    spec = load_spec(write_spec(tmp_path, tune="auto", variants=variants))
    assert spec.tune == {LR: [0.003, 0.001, 0.009]}  # configs/digits.yaml's lr x (1, 1/3, 3), its own first
    # `own` sets the lr itself; `drop` changes no optimisation setting; `probe` (L-BFGS, never unfrozen) takes no step
    assert spec.tune_rows == ("full", "ft")
    stage = tuning.tune_study(spec)
    assert list(stage.variants) == [f"{v}@lr={lr}" for v in ("full", "ft") for lr in (0.003, 0.001, 0.009)]
    scores = {"full@lr=0.003": 0.5, "full@lr=0.001": 0.4, "full@lr=0.009": 0.6,
              "ft@lr=0.003": 0.5, "ft@lr=0.001": 0.7, "ft@lr=0.009": 0.1}  # fmt: skip
    chosen = tune_stage.choose(spec, tmp_path, finish(spec, tmp_path, scores))
    assert tuning.column(spec, chosen) == {
        "full": "lr=0.009 (grid edge)", "ft": "lr=0.001 (grid edge)", "drop": "lr=0.009 (baseline's)",
        "own": "lr=0.05 (fixed)", "probe": "lr=0.009 (baseline's)",
    }  # fmt: skip
    # a row tune: auto leaves alone differs from the baseline in its change only, at the baseline's chosen lr
    runs = {run.variant: run.overrides for run in tuning.tuned(spec, chosen).runs()}
    assert runs["drop"] == {**runs["full"], "model.drop_rate": 0.3}
    tuning.write_choices(tmp_path, spec, chosen)
    assert tuning.read_choices(tmp_path, spec) == chosen  # inherited choices read back as such


def test_tune_auto_without_a_base_lr_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bare.yaml"
    config.write_text("model: {backbone: test_resnet}\n")
    with pytest.raises(ToolkitError, match=r"tune: auto tunes the lr around the baseline's, but no base config sets"):
        load_spec(write_spec(tmp_path, base=[str(config)], tune="auto"))
