"""build_report end to end on real W&B offline logs of a synthetic ablation (finished, killed, failed, cut, corrupt)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from report_fixtures import SYNTH_FINISHED, synthetic_ablation

from toolkit.errors import ToolkitError
from toolkit.report.build import ReportResult, build_report
from toolkit.report.plots import clipped_ends, clipped_error, smoothing_window, val_overlay, variant_colors
from toolkit.report.wandb_log import read_run

METRICS = ["test/acc", "test/f1"]
VARIANTS = ["full", "no-bn", "snapshot"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return synthetic_ablation(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def report(synth: dict, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    out = tmp_path_factory.mktemp("report")
    return build_report("synth", "full", METRICS, root=synth["root"], out=out, variants=VARIANTS, seeds=[0, 1, 2])


def expected(variant: str, metric: str) -> list[float]:
    """The values logged for the finished runs of a variant (ensemble key when the run logged one)."""
    out = []
    for (v, _), (test, _) in sorted(SYNTH_FINISHED.items()):
        if v == variant:
            out.append(test.get(metric.replace("/", "/") + "_ensemble", test[metric]))
    return out


def test_table_csv_equals_the_logged_values(report: ReportResult) -> None:
    table = pd.read_csv(report.out / "table.csv")
    assert table.columns.tolist()[:8] == ["variant", "metric", "mean", "std", "n", "delta", "ci_low", "ci_high"]
    rows = table.set_index(["variant", "metric"])
    for metric in METRICS:
        base = statistics.mean(expected("full", metric))
        for variant in VARIANTS:
            values = expected(variant, metric)
            assert rows.loc[(variant, metric), "n"] == len(values)
            assert rows.loc[(variant, metric), "mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
            assert rows.loc[(variant, metric), "std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert rows.loc[(variant, metric), "delta"] == pytest.approx(100 * (statistics.mean(values) - base))
    assert "n=2 of 3 seeds (seed 2: failed: exit code 1)" in rows.loc[("no-bn", "test/acc"), "note"]
    assert "seed 2: interrupted: W&B log unfinished" in rows.loc[("snapshot", "test/acc"), "note"]
    assert "ensemble: test/acc_ensemble" in rows.loc[("snapshot", "test/acc"), "note"]
    assert rows.loc[("snapshot", "test/acc"), "best"] and not rows.loc[("full", "test/acc"), "best"]


def test_runs_csv_lists_every_run_with_why_it_does_not_count(report: ReportResult, synth: dict) -> None:
    runs = pd.read_csv(report.out / "runs.csv")
    assert runs["counted"].sum() == len(SYNTH_FINISHED)
    assert "another-ablation" not in set(runs["ablation"].dropna())
    assert len(runs) == len(SYNTH_FINISHED) + 5  # killed, failed, cut, corrupt copy, junk; latest-run links once
    by_source = runs.set_index("source")
    assert by_source.loc[str(synth["killed"]), "state"] == "unfinished"
    assert "superseded by" in by_source.loc[str(synth["killed"]), "note"]
    assert by_source.loc[str(synth["failed"]), "state"] == "failed"
    assert by_source.loc[str(synth["truncated"]), "state"] == "unfinished"
    assert "truncated" in by_source.loc[str(synth["truncated"]), "note"]
    assert by_source.loc[str(synth["corrupt"]), "state"] == "corrupt"
    assert "checksum mismatch" in by_source.loc[str(synth["corrupt"]), "note"]
    assert by_source.loc[str(synth["junk"]), "state"] == "corrupt"
    # an attempt whose seed counts through another run is listed apart from the real exclusions, once each
    counted = {(v, s) for v, s in runs.loc[runs["counted"], ["variant", "seed"]].itertuples(index=False)}
    apart = [r for r in runs[~runs["counted"]].itertuples() if (r.variant, r.seed) in counted]
    assert len(report.superseded) == len(apart) >= 1 and len(report.skipped) == 5 - len(apart)
    assert all(" run " in line for line in report.skipped + report.superseded)
    assert any(str(synth["killed"]) in line for line in report.superseded)
    assert any(str(synth["failed"]) in line for line in report.skipped)  # seed 2 of no-bn: no run counts for it
    assert "### Earlier attempts" in report.markdown and "### Runs not counted" in report.markdown
    assert runs.loc[runs["counted"], "config.model.batchnorm"].notna().all()


def test_markdown_has_variant_rows_and_metric_columns(report: ReportResult) -> None:
    lines = (report.out / "table.md").read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header == [
        "Variant",
        "Accuracy",
        "F1",
        "Δ Accuracy (pts)",
        "95 % CI (Holm)",
        "p (Holm)",
        "MDE (pts)",
        "Direction",
        "Seeds",
        "Epochs",
        "Notes",
    ]
    body = {cells[0]: cells for cells in ([c.strip() for c in row.strip("|").split("|")] for row in table[2:])}
    assert list(body) == ["full", "no-bn ⚠", "snapshot ⚠"]  # flagged: a seed excluded (failed / interrupted)
    body = {name.removesuffix(" ⚠"): cells for name, cells in body.items()}
    full = expected("full", "test/acc")
    assert body["full"][1] == f"{100 * statistics.mean(full):.2f} ± {100 * statistics.stdev(full):.2f}"
    assert body["full"][3] == "\u2013"  # en dash: no Δ for the baseline
    assert body["snapshot"][1].startswith("**") and body["snapshot"][1].endswith("†")
    delta = 100 * (statistics.mean(expected("no-bn", "test/acc")) - statistics.mean(full))
    assert body["no-bn"][3] == f"{delta:+.2f}"
    # 2 paired seeds: no p, so no adjusted CI and no MDE either (an interval on 1 df says next to nothing)
    assert body["no-bn"][4] == body["no-bn"][5] == body["no-bn"][6] == "\u2013"
    assert body["no-bn"][7] == "2/2 lower" and body["no-bn"][8] == "2" and "n=2 of 3 seeds" in body["no-bn"][10]
    assert "no p-value: 2 paired seeds" in body["no-bn"][10]
    # every run that does not count is listed under the table with its class and reason
    section = "\n".join(lines[lines.index("### Runs not counted") :])
    assert "no-bn seed 2 run" in section and "failed: exit code 1" in section
    assert "snapshot seed 2 run" in section and "interrupted: W&B log unfinished" in section


def test_latex_and_html_tables(report: ReportResult) -> None:
    tex = (report.out / "table.tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"$\pm$", r"\textbf{"))
    assert tex.count(r"\\") == len(VARIANTS) + 1
    html = (report.out / "table.html").read_text()
    assert html.count("<tr") == len(VARIANTS) + 1 and "<b>" in html and "no-bn" in html


def test_plots_are_non_empty_png_images(report: ReportResult) -> None:
    names = {path.name for path in report.out.glob("*.png")}
    expected = {"bar_test_acc.png", "bar_test_f1.png", "val_acc_by_epoch.png"} | {f"curves_{v}.png" for v in VARIANTS}
    assert names == expected
    for path in report.out.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01, path.name


def test_each_variant_has_one_colour_in_every_figure(report: ReportResult) -> None:
    """The variant's colour (and no other variant's) is drawn in the bars, the overlay and its own curves."""
    colors = variant_colors(VARIANTS)
    assert len(set(colors.values())) == len(VARIANTS)

    def drawn(name: str) -> set[str]:
        pixels = (imread(report.out / name)[..., :3] * 255).round().astype(int).reshape(-1, 3)
        present = {"#{:02x}{:02x}{:02x}".format(*p) for p in {tuple(p) for p in pixels.tolist()}}
        return {v for v, c in colors.items() if c in present}

    assert drawn("bar_test_acc.png") == drawn("val_acc_by_epoch.png") == set(VARIANTS)
    for variant in VARIANTS:
        assert drawn(f"curves_{variant}.png") == {variant}


def test_error_bars_stop_at_the_metric_range() -> None:
    mean, std = pd.Series([0.95, 0.5, 0.02]), pd.Series([0.1, 0.1, math.nan])
    low, high = clipped_error(mean, std, 100.0, bounded=True)
    # by hand: 0.95 ± 0.1 stops at 1.0 (up 5 points); 0.02 has no spread (one seed)
    assert low == pytest.approx([10.0, 10.0, 0.0]) and high == pytest.approx([5.0, 10.0, 0.0])
    assert clipped_error(pd.Series([5.0]), pd.Series([9.0]), 1.0, bounded=False) == [[9.0], [9.0]]
    # which were cut, so the chart marks them: 0.95 + 0.1 passes 1.0; 0.02 - 0.05 would pass 0
    assert clipped_ends(mean, std, bounded=True) == ([False, False, False], [True, False, False])
    assert clipped_ends(pd.Series([0.02]), pd.Series([0.05]), bounded=True) == ([True], [False])


def test_a_curve_at_100_percent_stands_clear_of_the_frame(tmp_path: Path) -> None:
    rows = [
        {"variant": "full", "run": f"r{seed}", "key": "val/acc", "epoch": epoch, "step": epoch, "value": value}
        for seed in range(2)
        for epoch, value in enumerate([0.5, 1.0, 1.0, 1.0])
    ]
    colors = {"full": "#1f77b4"}
    png = val_overlay(pd.DataFrame(rows), ["full"], tmp_path, "full", colors=colors)
    pixels = (imread(png)[..., :3] * 255).round().astype(int)
    frame = np.all(pixels < 40, axis=2)  # the black axes frame
    line = np.all(np.abs(pixels - [0x1F, 0x77, 0xB4]) < 8, axis=2)
    frame_rows = [r for r in range(len(frame)) if frame[r].sum() > 0.5 * frame.shape[1]]
    top = min(frame_rows)  # the top spine: a black row across the axes
    highest = min(r for r in range(len(line)) if line[r].any())  # the curve's top edge at 100 %
    assert highest > top + 4, (top, highest)  # pixels of background between the frame and the curve


def test_the_loss_moving_average_smooths() -> None:
    noisy = pd.Series([1.0, 0.0] * 20)  # alternating: a window of 2 would still zig-zag at the edges
    window = smoothing_window(len(noisy))
    smooth = noisy.rolling(window, min_periods=1, center=True).mean()
    assert window >= 3 and smooth.iloc[5:-5].std() < 0.2 * noisy.std()
    assert smoothing_window(2) == 2 and smoothing_window(1) == 1


def test_table_logged_back_to_wandb_as_an_analysis_run(synth: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = build_report("synth", "full", ["test/acc"], root=synth["root"], out=tmp_path, log_to_wandb=True)
    (log,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    run = read_run(log)
    assert (run.state, run.group, run.job_type) == ("finished", "synth", "analysis")
    (row,) = [row for row in run.history if "ablation_table._type" in row]  # nested values arrive flattened
    assert row["ablation_table._type"] == "table-file" and row["ablation_table.nrows"] == len(result.table)
    saved = json.loads((log.parent / "files" / row["ablation_table.path"]).read_text())
    assert saved["columns"] == result.table.columns.tolist()
    assert [r[:5] for r in saved["data"]] == result.table.iloc[:, :5].values.tolist()
    # every plot of the report, as an image of the same step
    pngs = sorted(p.stem for p in result.files.values() if p.suffix == ".png")
    assert (
        pngs
        and sorted(k[len("plots/") : -len("._type")] for k in row if k.endswith("._type") and "plots/" in k) == pngs
    )
    for stem in pngs:
        assert row[f"plots/{stem}._type"] == "image-file"
        logged = log.parent / "files" / row[f"plots/{stem}.path"]
        assert logged.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analysis_run_and_other_ablations_are_not_results(synth: dict, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="no W&B runs of ablation 'nothing-here'"):
        (synth["root"] / "nothing-here").mkdir(exist_ok=True)
        build_report("nothing-here", "full", ["test/acc"], root=synth["root"], out=tmp_path)
    with pytest.raises(ToolkitError, match="toolkit ablate run"):
        build_report("missing", "full", ["test/acc"], root=tmp_path / "nowhere", out=tmp_path)


def test_a_metric_no_run_logged_is_a_clear_error(synth: dict, tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match=r"metric 'test/accuracy'; did you mean test/acc\b.*fix `metrics`"):
        build_report("synth", "full", ["test/acc", "test/accuracy"], root=synth["root"], out=tmp_path)
    assert not (tmp_path / "table.csv").exists()


def test_default_variants_and_seeds_come_from_the_runs(synth: dict, tmp_path: Path) -> None:
    result = build_report("synth", "full", ["test/acc"], root=synth["root"], out=tmp_path)
    assert list(dict.fromkeys(result.table["variant"])) == ["full", "no-bn", "snapshot"]
    row = result.table.set_index("variant").loc["no-bn"]
    assert math.isnan(row["p_value"]) and not math.isnan(row["ci_low"])  # 2 paired seeds: no p-value
