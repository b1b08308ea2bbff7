"""Build an ablation report: read the runs, aggregate, write ``runs.csv``, the tables and the plots into one folder."""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from toolkit import keys
from toolkit.atomic import write_atomically
from toolkit.errors import ToolkitError
from toolkit.keys import ensemble_key
from toolkit.report import plots, render
from toolkit.report.sources import runs_from_api, runs_from_logs
from toolkit.report.table import aggregate, mark_counted
from toolkit.report.wandb_log import LogDamageWarning
from toolkit.study import tuning

if TYPE_CHECKING:  # a peer in the same layer; only its type is needed here
    from toolkit.study.spec import AblationSpec


@dataclass
class ReportResult:
    """What ``build_report`` made.

    Attributes:
        out: the report folder.
        runs: the runs table with ``counted`` and ``note`` (as in ``runs.csv``).
        table: the tidy ablation table (as in ``table.csv``).
        files: written files by role: ``runs``, ``csv``, ``md``, ``tex``, ``html``, then one per plot.
        skipped: one line per run that does not count and whose seed no other run counts for (interrupted, failed,
            diverged, degenerate, not learning, corrupt, change never tested) with its class and reason; listed under
            the Markdown table.
        superseded: the earlier attempts of seeds a later run counts for, listed apart under the table.
        markdown: the text of ``table.md``.
    """

    out: Path
    runs: pd.DataFrame
    table: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    markdown: str = ""


def _skipped_lines(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``variant seed N run ID: note (source)`` for each run that does not count: the exclusions (a seed or a run
    the table lacks), and apart from them the superseded attempts (earlier runs of a seed that a later run counts
    for)."""
    counted = {(r.variant, r.seed) for r in runs[runs["counted"]].itertuples()}
    excluded, superseded = [], []
    for row in runs[~runs["counted"]].itertuples():
        known = pd.notna(row.variant) and pd.notna(row.seed)
        who = f"{row.variant} seed {row.seed}" if known else "unidentified"
        run_id = row.run_id if pd.notna(row.run_id) else "?"
        line = f"{who} run {run_id}: {row.note} ({row.source})"
        (superseded if known and (row.variant, row.seed) in counted else excluded).append(line)
    return excluded, superseded


def _check_metrics(runs: pd.DataFrame, metrics: Sequence[str]) -> None:
    """Raise for a metric that no counted run logged (a typo in the spec), naming the logged ones."""
    counted = runs[runs["counted"]]
    if counted.empty:
        return  # nothing finished yet: the table shows n=0, which says so
    logged = sorted(c for c in counted.columns if "/" in c and not c.startswith("config.") and counted[c].notna().any())
    for metric in metrics:
        stage, _, name = metric.partition("/")
        if metric not in logged and ensemble_key(stage, name) not in logged:
            close = difflib.get_close_matches(metric, logged, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ToolkitError(
                f"no finished run logged metric {metric!r}; {hint}logged: {', '.join(logged)}; "
                "fix `metrics` in the spec"
            )


def log_table_to_wandb(
    table: pd.DataFrame, name: str, project: str | None, out: Path, plots: Sequence[Path] = ()
) -> str:
    """Log the tidy table as a ``wandb.Table`` and the plots as ``wandb.Image`` in one analysis run.

    The run has job_type ``analysis`` and group ``name``; each plot is logged under ``plots/<file stem>``.

    The run is offline unless W&B credentials are configured; its files go under ``<out>/wandb``.

    Returns:
        the analysis run's id.
    """
    import wandb

    entity, _, proj = (project or "toolkit").rpartition("/")
    run = wandb.init(
        entity=entity or None,
        project=proj,
        group=name,
        job_type="analysis",
        name=f"{name}-report",
        dir=out,
        config={"report_of": name},
    )
    try:
        images = {f"plots/{path.stem}": wandb.Image(str(path)) for path in plots}
        run.log({"ablation_table": wandb.Table(dataframe=table.astype({"best": str})), **images})
    finally:
        run.finish()
        # finish() may return before wandb-core has written the run (seen on a loaded machine); teardown waits
        wandb.teardown()
    return run.id


def _chance(runs: pd.DataFrame) -> float | None:
    """The chance level (majority-class share of the test split) the counted runs recorded, if any."""
    if "health/chance" not in runs.columns:
        return None
    values = pd.to_numeric(runs.loc[runs["counted"], "health/chance"], errors="coerce").dropna()
    return float(values.median()) if len(values) else None


def build_report(
    name: str,
    baseline: str,
    metrics: list[str],
    root: Path,
    out: Path,
    wandb_path: str | None = None,
    log_to_wandb: bool = False,
    *,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    project: str | None = None,
    tuned: dict[str, str] | None = None,
) -> ReportResult:
    """Read the runs of ablation ``name`` and write its report into ``out``.

    Args:
        name: ablation name (the W&B group).
        baseline: the variant the others are compared with.
        metrics: metric keys of the table, the first one gets the Δ column, e.g. ``["test/acc", "test/f1"]``.
        root: runs root; logs are read from ``<root>/<name>/`` unless ``wandb_path`` is given.
        out: report folder (created).
        wandb_path: ``entity/project`` to read the runs from the W&B API instead of local logs.
        log_to_wandb: also log the table to W&B as an analysis run.
        variants: variants in table order (e.g. the spec's); default: found in the runs, baseline first.
        seeds: seeds every variant should have (e.g. the spec's); default: every seed found.
        project: W&B project (``[entity/]project``) for ``log_to_wandb``; default ``wandb_path`` or ``toolkit``.
        tuned: ``{variant: values chosen on val}`` of a spec with ``tune:`` (`toolkit.study.tuning.column`): the
            table's ``Tuned on val`` column.

    Raises:
        ToolkitError: no runs of the ablation were found, no metric was asked for, or a metric is in no finished
            run (a typo).
    """
    if not metrics:
        raise ToolkitError("no metrics to report; list them in the spec, e.g. `metrics: [test/acc, test/f1]`")
    out = Path(out)
    with warnings.catch_warnings():  # damaged logs are listed in runs.csv and ReportResult.skipped instead
        warnings.simplefilter("ignore", LogDamageWarning)
        runset = runs_from_api(wandb_path, name) if wandb_path else runs_from_logs(Path(root), name)
    if runset.runs.empty:
        where = f"W&B project {wandb_path}" if wandb_path else f"{Path(root) / name}"
        raise ToolkitError(f"no W&B runs of ablation {name!r} in {where}; run `toolkit ablate run` first")
    runs = mark_counted(runset.runs, baseline)
    _check_metrics(runs, metrics)
    first = ["ablation", "variant", "seed", "run_id", "state", "health", "reason", "counted", "note"]
    runs = runs[first + [c for c in runs.columns if c not in first]]
    table = aggregate(runs, metrics, baseline, variants=variants, seeds=seeds)
    if tuned:
        table["tuned"] = table["variant"].map(tuned).fillna("")

    out.mkdir(parents=True, exist_ok=True)
    files = {"runs": out / "runs.csv"}
    write_atomically(files["runs"], lambda tmp: runs.to_csv(tmp, index=False))
    skipped, superseded = _skipped_lines(runs)
    files.update(render.write_tables(table, metrics, out, name, baseline, skipped, superseded))
    chance = _chance(runs)
    order = list(dict.fromkeys(table["variant"]))
    colors = plots.variant_colors(order)  # one colour per variant in every figure
    for path in plots.bar_charts(table, metrics, out, baseline, chance, colors):
        files[path.stem] = path
    history = runset.history[runset.history["run"].isin(runs.index[runs["counted"]])]
    overlay = plots.val_overlay(history, order, out, baseline, chance, colors)
    if overlay is not None:
        files[overlay.stem] = overlay
    for path in plots.learning_curves(history, order, out, colors):
        files[path.stem] = path
    lesion = plots.lesion_curve(runs, out, chance, colors)
    if lesion is not None:
        files[lesion.stem] = lesion
    if log_to_wandb:
        pngs = [path for path in files.values() if path.suffix == ".png"]
        log_table_to_wandb(table, name, project or wandb_path, out, pngs)
    return ReportResult(
        out=out,
        runs=runs,
        table=table,
        files=files,
        skipped=skipped,
        superseded=superseded,
        markdown=files["md"].read_text(encoding="utf-8"),
    )


def default_out(root: str | Path, name: str) -> Path:
    """Where a report goes without ``--out``: ``<root>/<name>/report``, beside the runs it reports (two ``--root``s of
    one spec never overwrite each other's report)."""
    return Path(root) / name / keys.REPORT_DIR


def report_spec(
    spec: AblationSpec,
    root: Path,
    out: Path | None = None,
    wandb_path: str | None = None,
    log_to_wandb: bool = False,
) -> ReportResult:
    """The report of an ablation spec: its metrics, baseline, variants and seeds; ``out`` defaults to
    `default_out` (beside the runs). Used by ``toolkit report`` and at the end of ``toolkit ablate run``.

    A spec with ``tune:`` reports the values chosen for each row (its ``tune.json``; refused before its tune stage
    has finished)."""
    if spec.tune:
        chosen = tuning.read_choices(root, spec)
        if chosen is None:
            tuning.resolve(spec, root)  # raises the one-line "tune stage has not finished"
        tuned = tuning.column(spec, chosen or {})
    else:  # the rows that change the optimisation but run at the baseline's settings say so
        tuned = tuning.untuned_column(spec)
        tuned = tuned if any(tuned.values()) else None
    return build_report(
        spec.name,
        spec.baseline,
        list(spec.metrics),
        root=Path(root),
        out=Path(out) if out else default_out(root, spec.name),
        wandb_path=wandb_path,
        log_to_wandb=log_to_wandb,
        variants=list(spec.variants),
        seeds=list(spec.seeds),
        project=wandb_path or spec.project,
        tuned=tuned,
    )


def print_report(result: ReportResult) -> None:
    """The Markdown table to stdout (it lists the runs that do not count, once); to stderr where the report went."""
    print(result.markdown)
    print(f"report written to {result.out}/ (table.md, table.csv, runs.csv, plots)", file=sys.stderr)
