"""The offline W&B run of a fit: resolved config, ablation identity, best-value summaries, test metrics, resume."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import fit

from toolkit.report.wandb_log import read_run


def _logs(root: Path) -> list[Path]:
    return sorted(root.glob("wandb/offline-run-*/run-*.wandb"))


def test_offline_run_holds_config_identity_val_and_test_metrics(tmp_path: Path) -> None:
    cli = fit(
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--test_after_fit",
        "true",
        "--ablation.name",
        "study",
        "--ablation.variant",
        "no-bn",
        "--ablation.seed",
        "3",
        "--seed_everything",
        "3",
        "--trainer.log_every_n_steps",
        "1",
    )
    (log,) = _logs(tmp_path)
    run = read_run(log)
    assert run.state == "finished"
    assert (run.group, run.job_type) == ("study", "no-bn")
    assert set(run.tags) == {"no-bn", "seed=3"}
    config = run.config
    assert config["ablation"] == {"name": "study", "variant": "no-bn", "seed": 3}
    assert config["model"]["backbone"] == "test_resnet" and config["data"]["source"] == "digits"
    assert config["trainer"]["max_epochs"] == 2 and config["seed_everything"] == 3
    assert "backbone" not in config and "num_classes" not in config  # nested only, no flattened duplicates
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["model"] == config["model"]
    # val summaries hold the best epoch, not the last; test metrics come from the same run
    val_acc = [row["val/acc"] for row in run.history if "val/acc" in row]
    assert len(val_acc) == 2 and run.summary["val/acc"] == {"max": max(val_acc)}
    val_loss = [row["val/loss"] for row in run.history if "val/loss" in row]
    assert run.summary["val/loss"] == {"min": min(val_loss)}
    metrics = cli.trainer.callback_metrics
    assert abs(run.summary["test/acc"] - float(metrics["test/acc"])) < 1e-6
    assert "test/f1" in run.summary
    assert sum("train/loss" in row for row in run.history) == 6  # logged every step (2 epochs x 3 batches)


def test_resume_offline_starts_a_run_naming_the_one_it_resumes(tmp_path: Path) -> None:
    fit(tmp_path)
    (first,) = _logs(tmp_path)
    first_id = read_run(first).run_id
    (tmp_path / "result.json").unlink()  # as after a killed run: a finished one is refused
    fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")  # same folder: config.yaml exists already
    logs = _logs(tmp_path)
    assert len(logs) == 2
    second = next(read_run(p) for p in logs if p != first)
    assert second.run_id != first_id
    assert second.config["resumed_from"] == first_id
    assert any(row.get("epoch") == 1 for row in second.history)


def test_logger_arguments_reach_wandb(tmp_path: Path) -> None:
    """``log_model`` uploads the checkpoints as model artifacts; ``init_kwargs`` reach ``wandb.init``."""
    from toolkit.report.wandb_log import iter_records

    fit(
        tmp_path,
        "--trainer.logger.init_args.log_model",
        "true",
        "--trainer.logger.init_args.init_kwargs",
        '{"notes": "lr sweep, first pass"}',
    )
    (log,) = _logs(tmp_path)
    records = list(iter_records(log))
    run_id = read_run(log).run_id
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    # Lightning logs the top-k (best) and the last checkpoint at the end of the fit, each as model-<run id>
    assert len(artifacts) == 2
    assert {(a.name, a.type) for a in artifacts} == {(f"model-{run_id}", "model")}
    assert all([m.path for m in a.manifest.contents] == ["model.ckpt"] for a in artifacts)
    notes = [r.run.notes for r in records if r.WhichOneof("record_type") == "run"]
    assert notes == ["lr sweep, first pass"]


def test_logger_init_kwargs_cannot_shadow_typed_options(tmp_path: Path) -> None:
    import pytest

    from toolkit.errors import ToolkitError

    with pytest.raises(ToolkitError, match=r"init_kwargs sets group: use the logger's own option"):
        fit(tmp_path, "--trainer.logger.init_args.init_kwargs", '{"group": "x"}')


def test_test_and_predict_keep_the_fits_config_and_join_w_and_b_as_their_own_job_in_its_group(tmp_path: Path) -> None:
    from conftest import QUICK

    from toolkit.lightning_cli import run_cli

    fit(tmp_path)
    (fit_log,) = _logs(tmp_path)
    fit_run = read_run(fit_log)
    fit_config = (tmp_path / "config.yaml").read_bytes()
    for sub in ("test", "predict"):
        run_cli([sub, *QUICK, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])
        assert (tmp_path / f"{sub}_config.yaml").is_file()
    assert (tmp_path / "config.yaml").read_bytes() == fit_config  # the fit's config is the fit's
    runs = {run.job_type: run for run in map(read_run, _logs(tmp_path))}
    assert fit_run.job_type == "fit" and set(runs) == {"fit", "test", "predict"}
    assert runs["test"].group == runs["predict"].group == fit_run.run_id  # grouped with the run they evaluate
