"""Fair rows, part one: a run records whether it was still improving, early stopping ends each run at its own
convergence, the table shows both, and "not learning" is decided on robust evidence (val vs chance)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import fit, weights_with_trained_statistics
from scipy import stats

from toolkit.report.health import NOT_LEARNING, classify_run
from toolkit.report.render import wide_table
from toolkit.report.table import aggregate, mark_counted
from toolkit.study.convergence import still_improving


def test_the_convergence_rule_by_hand() -> None:
    one_image = 1 / 120
    assert still_improving([0.80, 0.90, 0.93], one_image) is True  # best last, 3 points above epoch 0
    assert still_improving([0.80, 0.93, 0.92], one_image) is False  # best before the last epoch
    assert still_improving([0.90, 0.90, 0.90 + one_image], one_image) is False  # one image flipping is noise
    assert still_improving([0.90, 0.95, 0.95], one_image) is True  # a tie at the top counts as the last
    assert still_improving([0.80, 0.90], one_image) is None  # too few epochs to show a trend
    assert still_improving([2.0, 1.5, 1.0], 0.0, higher_is_better=False) is True  # a loss going down


def _health(**fields: object) -> pd.Series:
    return pd.Series(
        {"state": "finished", "health/status": "finished", **{f"health/{k}": v for k, v in fields.items()}}
    )


def test_a_short_run_well_above_chance_is_learning_whatever_its_losses_say() -> None:
    # the seed: 3 classes, 18 val images, 12 right (66.7 %; chance 33.3 %), first step's loss below the last
    # epoch's mean (1.008 -> 1.041): the old rule dropped it and raised its row's mean
    row = _health(train_loss_initial=1.008, train_loss_final=1.041, val_best=12 / 18, val_n=18, val_chance=1 / 3)
    assert classify_run(row) == ("finished", "")
    # the same test by hand: P(X >= 12) for X ~ Binomial(18, 1/3)
    assert stats.binom.sf(11, 18, 1 / 3) < 0.05


def test_a_run_at_chance_on_val_is_not_learning_and_the_rule_is_the_binomial_test() -> None:
    n, chance = 120, 0.1
    # the smallest count whose one-sided binomial p is below 0.05, by hand: sum of the upper tail
    threshold = next(k for k in range(n + 1) if stats.binom.sf(k - 1, n, chance) < 0.05)
    below = classify_run(_health(val_best=(threshold - 1) / n, val_n=n, val_chance=chance))
    above = classify_run(_health(val_best=threshold / n, val_n=n, val_chance=chance))
    assert below[0] == NOT_LEARNING and f"{threshold - 1}/{n}" in below[1]
    assert above == ("finished", "")


def test_without_a_val_record_epoch_means_decide_and_one_epoch_cannot_be_told() -> None:
    flat = _health(train_loss_first_epoch=2.30, train_loss_final=2.29, epochs_completed=3)
    assert classify_run(flat)[0] == NOT_LEARNING and "first epoch" in classify_run(flat)[1]
    assert classify_run(_health(train_loss_first_epoch=2.30, train_loss_final=1.5, epochs_completed=3))[0] == "finished"
    single = _health(train_loss_initial=1.0, train_loss_first_epoch=1.04, train_loss_final=1.04, epochs_completed=1)
    assert classify_run(single)[0] == "finished"


def _record(root: Path) -> dict:
    return json.loads((root / "result.json").read_text())


def test_a_run_stopped_while_val_rises_is_recorded_as_still_improving(tmp_path: Path) -> None:
    # 5 epochs of 8 batches: val accuracy climbs every epoch and the run stops at max_epochs, still climbing
    cli = fit(tmp_path / "rising", "--trainer.max_epochs", "5", "--trainer.limit_train_batches", "8",
              "--trainer.limit_val_batches", "4")  # fmt: skip
    result = _record(tmp_path / "rising")
    health, scores = result["health"], result["val_scores"]
    assert len(scores) == 5 and result["best_val"] == pytest.approx(max(scores), abs=1e-6)
    # the val set's size and chance level, counted here from the data module's own val loader
    labels = Counter(int(y) for i, (_, batch) in enumerate(zip(range(4), cli.datamodule.val_dataloader(), strict=False))
                     for y in batch[1])  # fmt: skip
    assert health["val_n"] == sum(labels.values())
    assert health["val_chance"] == pytest.approx(max(labels.values()) / sum(labels.values()))
    # by hand: the last epoch is the best and beats the best before the last two by more than one val image
    assert scores[-1] == max(scores) and scores[-1] - max(scores[:-2]) > 1 / health["val_n"]
    assert health["still_improving"] is True and health["stopped_early"] is False
    assert health["val_best"] == pytest.approx(max(scores), abs=1e-6)


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path: Path) -> None:
    # lr 1e-9: the weights hardly move (BatchNorm statistics still do), so val soon stops improving and patience 1
    # ends the run at the first epoch that did not beat the best before it
    fit(tmp_path / "flat", "--trainer.max_epochs", "8", "--early_stopping.patience", "1",
        "--model.optimizer.init_args.lr", "1e-9", "--test_after_fit", "true")  # fmt: skip
    result = _record(tmp_path / "flat")
    health, scores = result["health"], result["val_scores"]
    # testing the best (an earlier) checkpoint restores the callbacks' state from it: the run's record stays whole
    assert result["tested_epoch"] < len(scores) - 1
    assert health["stopped_early"] is True and health["still_improving"] is False
    assert health["epochs_completed"] == len(scores) < health["max_epochs"] == 8
    assert scores[-1] <= max(scores[:-1])  # the epoch that stopped it did not improve
    assert all(scores[i] > max(scores[:i]) for i in range(1, len(scores) - 1))  # every earlier epoch did


def test_the_table_shows_epochs_used_and_how_many_seeds_were_still_improving() -> None:
    rows = []
    for variant, epochs, rising, early in (("full", [3, 3, 3], [False, True, False], [False] * 3),
                                           ("stop", [4, 7, 5], [False] * 3, [True, False, True])):  # fmt: skip
        for seed in range(3):
            rows.append({"ablation": "a", "variant": variant, "seed": seed, "run_id": f"{variant}{seed}",
                         "state": "finished", "damage": None, "start_time": 1.0, "source": "x",
                         "health/status": "finished", "test/acc": 0.8 + 0.01 * seed + (variant == "stop") * 0.02,
                         "health/epochs_completed": epochs[seed], "health/still_improving": rising[seed],
                         "health/stopped_early": early[seed]})  # fmt: skip
    table = aggregate(mark_counted(pd.DataFrame(rows)), ["test/acc"], "full").set_index("variant")
    assert table.loc["full", "epochs"] == "3" and table.loc["stop", "epochs"] == "4-7, early stop"
    assert "still improving at its last epoch: 1 of 3 seeds" in table.loc["full", "note"]
    assert "still improving" not in table.loc["stop", "note"]
    wide = wide_table(table.reset_index(), ["test/acc"]).set_index("Variant")
    assert wide.loc["stop", "Epochs"] == "4-7, early stop"


def test_early_stopping_counts_fine_tuning_epochs_only(tmp_path: Path) -> None:
    # LP->FT with an L-BFGS probe, BatchNorm frozen and lr 1e-9: fine-tuning changes nothing, so every epoch scores
    # the probe's val accuracy. The probe epoch is not counted: the first fine-tuning epoch sets the best and patience
    # 1 stops the run after the second (3 epochs in all); counted from the probe, it would have stopped after 2
    weights = weights_with_trained_statistics(tmp_path / "w.pth")  # frozen BatchNorm needs trained statistics
    fit(tmp_path / "lpft", "--trainer.max_epochs", "8", "--early_stopping.patience", "1",
        "--model.pretrained", weights, "--model.zero_init_last", "false", "--model.batchnorm", "frozen",
        "--model.freeze_backbone", "true", "--model.unfreeze_at_epoch", "1", "--model.probe", "lbfgs",
        "--model.optimizer.init_args.lr", "1e-9")  # fmt: skip
    result = _record(tmp_path / "lpft")
    assert len(set(result["val_scores"])) == 1  # nothing moved: the probe's score, epoch after epoch
    assert result["health"]["stopped_early"] is True and result["health"]["epochs_completed"] == 3
