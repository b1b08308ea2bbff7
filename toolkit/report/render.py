"""Render the tidy ablation table as ``table.csv`` (tidy) and ``table.md`` / ``table.tex`` / ``table.html`` (wide).

The wide table has one row per variant: ``Variant | Accuracy | F1 | Δ Accuracy (pts) | 95 % CI (Holm) | p (Holm) |
MDE (pts) | Direction | Seeds | Epochs | Notes``. Metric cells read "mean ± std" (fractions in percent), the best mean
of each metric is bold, † marks ensemble metrics, ⚠ a variant with seeds excluded for their health (the notes say
which and why). Δ, its Holm-adjusted CI (the one that agrees with the adjusted p; none where there is no p), the
adjusted p, the minimum detectable effect and the direction count are the first metric's comparison with the
baseline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from toolkit.atomic import write_atomically, write_text
from toolkit.keys import ensemble_key
from toolkit.report.stats import ADJUST_METHOD, ALPHA, MIN_SEEDS_FOR_P, POWER
from toolkit.report.table import is_fraction

_DASH = "\u2013"  # en dash: "no value"
_STAGES = {"test": "", "val": "Val ", "train": "Train "}
_NAMES = {"acc": "accuracy", "f1": "F1", "loss": "loss"}
#: LaTeX specials; pandas escapes these only inside Styler.format, which cannot mix escaped and LaTeX cells
_TEX = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
)
#: per output format: escape for text, bold wrapper, then the ±, Δ, "no value", ensemble-mark and flag signs
_STYLES: dict[str, tuple[Callable[[str], str], str, str, str, str, str, str]] = {
    "md": (lambda s: s.replace("|", "\\|"), "**{}**", " ± ", "Δ", _DASH, "†", " ⚠"),
    "tex": (lambda s: s.translate(_TEX), r"\textbf{{{}}}", r" $\pm$ ", r"$\Delta$", "--", r"$^\dagger$", r" (!)"),
    "html": (html.escape, "<b>{}</b>", " ± ", "Δ", _DASH, "†", " ⚠"),
}


def display_name(metric: str) -> str:
    """Column title of a metric: ``test/acc`` -> ``Accuracy``, ``val/f1`` -> ``Val F1``, else the key itself."""
    stage, _, name = metric.partition("/")
    if stage not in _STAGES or name not in _NAMES:
        return metric
    label = _STAGES[stage] + _NAMES[name]
    return label[0].upper() + label[1:]


def format_value(value: float, metric: str) -> str:
    """A metric value as shown: fractions in percent with 2 decimals, others with 4."""
    if value is None or math.isnan(value):
        return ""
    return f"{100 * value:.2f}" if is_fraction(metric) else f"{value:.4f}"


def wide_table(table: pd.DataFrame, metrics: Sequence[str], style: str = "md") -> pd.DataFrame:
    """One row per variant with "mean ± std" metric columns, a Δ column, Seeds and Notes, as text for ``style``.

    Args:
        table: the tidy table from ``toolkit.report.table.aggregate``.
        metrics: metric keys in column order; the first one gets the Δ column.
        style: ``md``, ``tex`` or ``html`` (escaping, bold, ± and Δ signs).
    """
    escape, bold, pm, delta_sign, dash, dagger, flag = _STYLES[style]
    primary = metrics[0]
    delta_title = f"{delta_sign} {escape(display_name(primary))}" + (" (pts)" if is_fraction(primary) else "")
    rows = []
    for variant, group in table.groupby("variant", sort=False):
        by_metric = group.set_index("metric")
        flagged = bool((group["excluded"] > 0).any())
        row = {"Variant": escape(str(variant)) + (flag if flagged else "")}
        if "tuned" in group.columns:  # the spec's `tune:` values chosen for this row on val
            row["Tuned on val"] = escape(str(group["tuned"].iloc[0])) or dash
        for metric in metrics:
            cell = by_metric.loc[metric]
            if cell["n"] == 0:
                text = dash
            else:
                text = format_value(cell["mean"], metric)
                if not math.isnan(cell["std"]):
                    text += pm + format_value(cell["std"], metric)
                if cell["best"]:
                    text = bold.format(text)
            if f"ensemble: {ensemble_key(*metric.split('/', 1))}" in cell["note"]:
                text += " " + dagger
            row[escape(display_name(metric))] = text
        first = by_metric.loc[primary]
        baseline = "baseline" in first["note"].split("; ")
        decimals = 2 if is_fraction(primary) else 4
        row[delta_title] = dash if baseline or math.isnan(first["delta"]) else f"{first['delta']:+.{decimals}f}"
        ci = (first["ci_adj_low"], first["ci_adj_high"])
        unit = " (pts)" if is_fraction(primary) else ""
        row["95 % CI (Holm)"] = (
            dash if baseline or math.isnan(ci[0]) else f"[{ci[0]:+.{decimals}f}, {ci[1]:+.{decimals}f}]"
        )
        row["p (Holm)"] = dash if math.isnan(first["p_adjusted"]) else _p_text(first["p_adjusted"])
        row[f"MDE{unit}"] = dash if math.isnan(first["mde"]) else f"{first['mde']:.{decimals}f}"
        row["Direction"] = first["direction"] or dash
        row["Seeds"] = str(int(first["n"]))
        row["Epochs"] = escape(str(first["epochs"])) if first["epochs"] else dash
        # the first metric's notes: the others repeat them, with their own numbers where a note has some
        notes = [note for note in first["note"].split("; ") if note]
        ensemble = any(note.startswith("ensemble: ") for note in notes)
        notes = [escape(n) for n in dict.fromkeys(notes) if not n.startswith("ensemble: ")]
        row["Notes"] = "; ".join([f"{dagger} snapshot-ensemble metrics"] * ensemble + notes)
        rows.append(row)
    return pd.DataFrame(rows)


def _p_text(p: float) -> str:
    """An adjusted p-value as the table prints it: ``0.012``, or ``0.128 n.s.`` when not significant at ALPHA."""
    return f"{p:.3f}" if p < ALPHA else f"{p:.3f} n.s."


def legend(baseline: str, metrics: Sequence[str], table: pd.DataFrame | None = None) -> str:
    """The lines under the table saying what the numbers are (and, given the table, why p-values are missing)."""
    unit = "in percent, " if any(is_fraction(m) for m in metrics) else ""
    comparisons = 0 if table is None else int(table[table["metric"] == metrics[0]]["p_value"].notna().sum())
    text = (
        f"Mean ± sample std over the healthy finished seeds ({unit}best in bold); Δ: difference of means against "
        f"`{baseline}` (percentage points for accuracy/F1); p: two-sided paired t-test over matching seeds, "
        f"{ADJUST_METHOD.capitalize()}-adjusted for the {comparisons or 'k'} comparison(s) of each metric "
        f"(statsmodels `multipletests`), n.s.: not significant at {ALPHA:g} after adjustment; 95 % CI (Holm): the "
        f"paired t-interval widened as Holm's adjustment widens p (confidence 1 - {ALPHA:g} · p / p_Holm), so it "
        f"excludes 0 exactly when p (Holm) < {ALPHA:g}; MDE: the smallest true difference these seeds would detect "
        f"with {POWER:.0%} power at Holm's strictest level ({ALPHA:g} / comparisons), from the sd of the paired "
        "differences: a smaller effect may exist unseen; direction: how many paired seeds moved which way. No "
        f"p-value, adjusted CI or MDE with fewer than {MIN_SEEDS_FOR_P} paired seeds: a t-test on so few says next "
        "to nothing. A deterministic row (every seed gave the same value) is shown as n = 1 with no per-seed test. "
        "Epochs: what the counted runs trained; the notes say how many seeds were still improving when they "
        "stopped. ⚠: seeds excluded for their health (diverged, degenerate, not learning, change never tested, "
        "interrupted, failed), listed below. "
    )
    cells = [str(c) for c in table["tuned"]] if table is not None and "tuned" in table.columns else []
    if any(c and not c.startswith("not tuned") for c in cells):
        text += (
            "Hyperparameters: every row shares the baseline's, except the settings its variant changes and the "
            "values in `Tuned on val`, chosen for each row on validation accuracy at the study's first seed "
            "(`tune:`; (fixed): set by the variant itself; (grid edge): the best value tried is the grid's smallest "
            "or largest, so a better one may lie beyond it)."
        )
    else:
        text += (
            "Hyperparameters: every row shares the baseline's, except the settings its variant changes (no `tune:`)."
        )
        if any(c.startswith("not tuned") for c in cells):
            text += (
                " Rows marked `not tuned` change how the model is optimised but run at the baseline's settings, "
                "chosen for another recipe: their Δ mixes the component with settings not chosen for it (add "
                "`tune:` to the spec)."
            )
    if table is not None and not table["p_adjusted"].notna().any():
        text += f" This table has no p-values: no comparison has {MIN_SEEDS_FOR_P} paired seeds."
    return text


def not_counted_section(lines: Sequence[str], superseded: Sequence[str] = ()) -> str:
    """The Markdown sections under the table: every run that does not count, with its class and reason, and apart
    from them the earlier attempts of seeds that a later run counts for."""
    escape = _STYLES["md"][0]
    text = ""
    if lines:
        items = "\n".join(f"- {escape(line)}" for line in lines)
        text += f"\n### Runs not counted\n\n{items}\n"
    if superseded:
        items = "\n".join(f"- {escape(line)}" for line in superseded)
        text += f"\n### Earlier attempts (superseded: a later run of the same seed counts)\n\n{items}\n"
    return text


def to_markdown(
    table: pd.DataFrame,
    metrics: Sequence[str],
    name: str,
    baseline: str,
    not_counted: Sequence[str] = (),
    superseded: Sequence[str] = (),
) -> str:
    """The ``table.md`` text: a title, the wide table, a legend and the runs that do not count."""
    body = wide_table(table, metrics, "md").to_markdown(index=False, disable_numparse=True)
    listed = not_counted_section(not_counted, superseded)
    return f"## Ablation: {name}\n\n{body}\n\n{legend(baseline, metrics, table)}\n{listed}"


def to_latex(table: pd.DataFrame, metrics: Sequence[str]) -> str:
    """The ``table.tex`` text: a booktabs ``tabular`` (``\\toprule``/``\\midrule``/``\\bottomrule``)."""
    wide = wide_table(table, metrics, "tex")
    align = "l" + "r" * (len(wide.columns) - 2) + "l"
    return wide.style.hide(axis="index").to_latex(hrules=True, column_format=align)


def to_html(table: pd.DataFrame, metrics: Sequence[str]) -> str:
    """The ``table.html`` text: an HTML ``<table>`` of the wide table."""
    return wide_table(table, metrics, "html").to_html(index=False, escape=False, classes="ablation-table", border=0)


def write_tables(
    table: pd.DataFrame,
    metrics: Sequence[str],
    out: Path,
    name: str,
    baseline: str,
    not_counted: Sequence[str] = (),
    superseded: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``table.csv``, ``table.md``, ``table.tex`` and ``table.html`` into ``out``; return paths by suffix.

    ``not_counted``: one line per run that does not count, listed under the Markdown table; ``superseded``: the
    earlier attempts of counted seeds, listed apart.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = {suffix: out / f"table.{suffix}" for suffix in ("csv", "md", "tex", "html")}
    write_atomically(paths["csv"], lambda tmp: table.to_csv(tmp, index=False))
    write_text(paths["md"], to_markdown(table, metrics, name, baseline, not_counted, superseded))
    write_text(paths["tex"], to_latex(table, metrics))
    write_text(paths["html"], to_html(table, metrics))
    return paths
