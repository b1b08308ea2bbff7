"""Aggregation (pure, on hand-built runs tables) against references computed here, and the W&B API adapter."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pandas as pd
import pytest
from scipy import stats

from toolkit.report.sources import runs_from_api, summary_number
from toolkit.report.table import TABLE_COLUMNS, aggregate, mark_counted, paired_p_value

RUN_KEYS = ["variant", "seed", "run_id", "state", "start_time"]


def runs_table(rows: list[tuple], **metrics: list[float]) -> pd.DataFrame:
    """A runs table like ``sources`` makes: ``RUN_KEYS`` tuples plus metric columns."""
    frame = pd.DataFrame(rows, columns=RUN_KEYS).assign(ablation="a", damage=None, source="x")
    for key, values in metrics.items():
        frame[key.replace("__", "/")] = values
    frame["seed"] = frame["seed"].astype("Int64")
    # a run that completed has its health record (``toolkit fit`` writes it into the W&B summary)
    frame["health/status"] = frame["state"].where(frame["state"] == "finished", None)
    return frame


def manual_paired_p(a: list[float], b: list[float]) -> float:
    """Paired t-test written out: t = mean(d) / (sd(d) / sqrt(n)), two-sided with n - 1 degrees of freedom."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    return 2 * stats.t.sf(abs(t), len(d) - 1)


def test_latest_finished_run_counts_and_the_others_are_superseded() -> None:
    runs = runs_table(
        [
            ("full", 0, "old", "finished", 1.0),
            ("full", 0, "new", "finished", 2.0),
            ("full", 0, "crash", "unfinished", 3.0),
            ("full", 1, "f1", "failed", 1.0),
            (None, None, None, "corrupt", 0.0),
        ]
    )
    marked = mark_counted(runs).set_index("run_id", drop=False)
    assert marked["counted"].tolist() == [False, True, False, False, False]
    assert marked.loc["old", "note"] == "superseded by new"
    assert marked.loc["crash", "note"] == "interrupted: W&B log unfinished; superseded by new"
    assert marked.loc["f1", "note"] == "failed: the process failed"
    assert marked["health"].tolist() == ["finished", "finished", "interrupted", "failed", "corrupt"]
    assert "no ablation variant/seed" in marked["note"].iloc[-1]


def test_aggregate_matches_reference_statistics() -> None:
    acc = {("full", s): v for s, v in enumerate([0.90, 0.92, 0.97])} | {("drop", 0): 0.80, ("drop", 1): 0.85}
    acc[("drop", 2)] = 0.84
    loss = {key: 1 - value for key, value in acc.items()}
    rows = [(v, s, f"{v}{s}", "finished", 1.0) for v, s in acc]
    runs = mark_counted(runs_table(rows, test__acc=list(acc.values()), test__loss=list(loss.values())))
    table = aggregate(runs, ["test/acc", "test/loss"], baseline="full")
    assert table.columns.tolist() == TABLE_COLUMNS
    assert table["variant"].tolist() == ["full", "drop", "full", "drop"]  # baseline first
    row = table.set_index(["variant", "metric"])
    for variant in ("full", "drop"):
        values = [acc[variant, s] for s in range(3)]
        assert row.loc[(variant, "test/acc"), "mean"] == pytest.approx(statistics.mean(values))
        assert row.loc[(variant, "test/acc"), "std"] == pytest.approx(statistics.stdev(values))
        assert row.loc[(variant, "test/acc"), "n"] == 3
    full, drop = ([acc[v, s] for s in range(3)] for v in ("full", "drop"))
    assert row.loc[("drop", "test/acc"), "delta"] == pytest.approx(
        100 * (statistics.mean(drop) - statistics.mean(full))
    )
    assert row.loc[("drop", "test/acc"), "p_value"] == pytest.approx(manual_paired_p(drop, full))
    # loss: lower is better and Δ stays in the metric's units
    assert row.loc[("drop", "test/loss"), "delta"] == pytest.approx(statistics.mean(full) - statistics.mean(drop))
    assert row.loc[("full", "test/acc"), "best"] and row.loc[("full", "test/loss"), "best"]
    assert not row.loc[("drop", "test/acc"), "best"] and not row.loc[("drop", "test/loss"), "best"]
    assert row.loc[("full", "test/acc"), "note"] == "baseline" and math.isnan(row.loc[("full", "test/acc"), "p_value"])


def test_missing_seeds_are_flagged_and_ensemble_metrics_replace_plain_ones() -> None:
    rows = [
        ("full", 0, "a", "finished", 1.0),
        ("full", 1, "b", "finished", 1.0),
        ("snap", 0, "c", "finished", 1.0),
        ("snap", 1, "d", "finished", 1.0),
        ("thin", 0, "e", "finished", 1.0),
        ("thin", 1, "f", "unfinished", 1.0),
    ]
    runs = runs_table(
        rows,
        test__acc=[0.9, 0.8, 0.5, 0.6, 0.7, 0.99],
        test__acc_ensemble=[None, None, 0.95, 0.97, None, None],
    )
    table = aggregate(
        mark_counted(runs), ["test/acc"], "full", variants=["full", "snap", "thin", "ghost"], seeds=[0, 1]
    )
    row = table.set_index("variant")
    assert row.loc["snap", "mean"] == pytest.approx(0.96) and "ensemble: test/acc_ensemble" in row.loc["snap", "note"]
    assert row.loc["snap", "best"]
    assert row.loc["thin", "n"] == 1 and row.loc["thin", "mean"] == pytest.approx(0.7)  # never the unfinished 0.99
    assert "n=1 of 2 seeds (seed 1: interrupted: W&B log unfinished)" in row.loc["thin", "note"]
    assert row.loc["thin", "excluded"] == 1 and row.loc["ghost", "excluded"] == 0  # no run is not a health verdict
    assert math.isnan(row.loc["thin", "std"]) and math.isnan(row.loc["thin", "p_value"])
    assert row.loc["ghost", "n"] == 0 and "seed 0: no run" in row.loc["ghost", "note"]
    assert math.isnan(row.loc["ghost", "mean"])


def test_paired_p_value_needs_two_matching_seeds() -> None:
    a = pd.Series([0.5, 0.6, 0.7], index=[0, 1, 2])
    assert math.isnan(paired_p_value(a, pd.Series([0.4], index=[2])))
    assert paired_p_value(a, pd.Series([0.45, 0.5], index=[1, 2])) == pytest.approx(
        manual_paired_p([0.6, 0.7], [0.45, 0.5])
    )


def test_summary_number_resolves_define_metric_dicts() -> None:
    assert summary_number("val/acc", {"max": 0.9}) == 0.9
    assert summary_number("val/loss", {"min": 0.1, "last": 0.3}) == 0.1
    assert summary_number("custom", {"last": 2}) == 2.0
    assert summary_number("x", "text") is None and summary_number("x", True) is None


class ApiRun(SimpleNamespace):
    """Shaped like ``wandb.apis.public.Run``: attributes plus ``scan_history``."""

    def scan_history(self) -> list[dict]:
        return self.rows


class Api:
    """Shaped like ``wandb.Api``: ``runs(path, filters)``; records the query."""

    def __init__(self, runs: list[ApiRun]) -> None:
        self._runs, self.calls = runs, []

    def runs(self, path: str, filters: dict) -> list[ApiRun]:
        self.calls.append((path, filters))
        return [r for r in self._runs if r.group == filters["group"]]


def test_api_runs_give_the_same_flat_table() -> None:
    def api_run(run_id: str, variant: str, seed: int, state: str, acc: float, job_type: str | None = None) -> ApiRun:
        return ApiRun(
            id=run_id, path=["ent", "proj", run_id], group="abl", job_type=job_type or variant,
            tags=[variant, f"seed={seed}"], state=state, created_at="2026-01-02T03:04:05Z",
            config={"ablation": {"name": "abl", "variant": variant, "seed": seed}, "model": {"lr": 0.1}},
            summary_metrics={
                "test/acc": acc, "val/acc": {"max": acc + 0.01}, "_runtime": 3,
                **({"health/status": "finished"} if state == "finished" else {}),
            },
            rows=[{"train/loss": 1.0, "trainer/global_step": 0, "epoch": 0, "_step": 0, "other": 5}],
        )  # fmt: skip

    api = Api([
        api_run("r1", "full", 0, "finished", 0.9), api_run("r2", "full", 1, "crashed", 0.5),
        api_run("r3", "full", 1, "finished", 0.8), api_run("an", "x", 0, "finished", 0.0, job_type="analysis"),
    ])  # fmt: skip
    runset = runs_from_api("ent/proj", "abl", api=api)
    assert api.calls == [("ent/proj", {"group": "abl"})]
    runs = runset.runs.set_index("run_id")
    assert runs.index.tolist() == ["r1", "r2", "r3"]  # the analysis run is not a result
    assert runs["state"].tolist() == ["finished", "unfinished", "finished"]
    assert runs.loc["r1", "val/acc"] == pytest.approx(0.91) and runs.loc["r1", "config.model.lr"] == 0.1
    assert runs.loc["r1", "source"] == "wandb:ent/proj/r1"
    assert set(runset.history["key"]) == {"train/loss"}
    table = aggregate(mark_counted(runset.runs), ["test/acc"], "full").set_index("variant")
    assert table.loc["full", "mean"] == pytest.approx(0.85) and table.loc["full", "n"] == 2


def test_seeds_outside_the_spec_and_half_ensembled_variants_do_not_count() -> None:
    rows = [
        ("full", 0, "a", "finished", 1.0),
        ("full", 1, "b", "finished", 1.0),
        ("full", 2, "c", "finished", 1.0),  # a seed the spec dropped
        ("half", 0, "d", "finished", 1.0),
        ("half", 1, "e", "finished", 1.0),
    ]
    runs = runs_table(rows, test__acc=[0.9, 0.8, 0.1, 0.5, 0.6], test__acc_ensemble=[None, None, None, 0.99, None])
    row = aggregate(mark_counted(runs), ["test/acc"], "full", seeds=[0, 1]).set_index("variant")
    assert row.loc["full", "n"] == 2 and row.loc["full", "mean"] == pytest.approx(0.85)
    # one seed has the ensemble metric, the other not: the plain metric for both, never a mix of the two
    assert row.loc["half", "mean"] == pytest.approx(0.55) and "ensemble" not in row.loc["half", "note"]
    assert row.loc["half", "delta"] == pytest.approx(-30.0)
    # two paired seeds: a CI, but no p-value, and the note says why
    assert math.isnan(row.loc["half", "p_value"]) and "no p-value: 2 paired seeds" in row.loc["half", "note"]
    assert row.loc["half", "direction"] == "2/2 lower"


def test_snapshot_row_shows_the_last_snapshot_alone_beside_the_ensemble() -> None:
    snaps = {s: (0.5 + s / 100, 0.88 + s / 100, 0.91 + s / 50) for s in range(3)}  # snapshot 0, 1, 2 per seed
    ensemble = [0.95, 0.96, 0.94]
    rows = [("full", s, f"f{s}", "finished", 1.0) for s in range(3)]
    rows += [("snapshot", s, f"s{s}", "finished", 1.0) for s in range(3)]
    runs = runs_table(rows, test__acc=[0.9, 0.91, 0.92, 0.5, 0.6, 0.7])
    runs["test/acc_ensemble"] = [math.nan] * 3 + ensemble
    for index in range(3):
        runs[f"test/acc_snapshot_{index}"] = [math.nan] * 3 + [snaps[s][index] for s in range(3)]
    runs["health/tested_snapshots"] = [math.nan] * 3 + ["fine-tune epoch 1, fine-tune epoch 2"] * 3
    table = aggregate(mark_counted(runs), ["test/acc"], "full").set_index("variant")
    last = [snaps[s][2] for s in range(3)]  # reference: the last snapshot's values, by hand
    assert table.loc["snapshot", "mean"] == pytest.approx(statistics.mean(ensemble))
    expected = f"last snapshot alone {100 * statistics.mean(last):.1f} ± {100 * statistics.stdev(last):.1f} (n=3)"
    assert expected in table.loc["snapshot", "note"]
    assert "ensemble members: fine-tune epoch 1, fine-tune epoch 2" in table.loc["snapshot", "note"]
    assert "last snapshot" not in table.loc["full", "note"] and "members" not in table.loc["full", "note"]
