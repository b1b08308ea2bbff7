"""Run an ablation end to end: validate every variant, plan from the ledger, execute, summarise, report.

Planning is what makes a re-run safe: done runs are skipped, interrupted runs resume from their last checkpoint,
failed runs wait for ``--retry-failed``, and a run whose Slurm job is still queued or running is waited for, not
submitted twice.

A run counts as done when its process exits 0 and the runner has recorded that. If the runner is killed between
the two (the run has finished testing and logging, and is tearing down), the next runner resumes it from its last
checkpoint: training is already complete, so it only tests again, in a new W&B run whose config names the previous
one (``resumed_from``); the report keeps the latest. Nothing trains twice.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from toolkit import keys
from toolkit.ablation import lifecycle
from toolkit.ablation.executor import Executor, executor_class
from toolkit.ablation.local import prestarted_pool
from toolkit.ablation.options import Options
from toolkit.ablation.progress import LiveView
from toolkit.errors import ToolkitError
from toolkit.study import tuning
from toolkit.study.ledger import DONE, FAILED, PENDING, Ledger, ledger_path, runner_lock
from toolkit.study.spec import AblationSpec, Run


def run_ablation(spec: AblationSpec, options: Options, console: Console | None = None) -> int:
    """Run every run of ``spec`` that is not done yet; returns 0 when all are done, 1 otherwise.

    A spec with ``tune:`` first runs its tune stage (`toolkit.study.tuning`: every variant at every value, first
    seed), chooses each variant's values on validation, records them, then runs the study at them.

    Cheap checks first: the runner locks (a second runner is told at once), which also creates the study's folder
    (an unwritable root is one line now, not after the variants were validated); the names were checked when the spec
    was loaded. Only then are the variants validated (the slow parse), and not at all when every run is already done
    with its result on disk: a finished study's re-run only summarises and reports.
    """
    console = console or Console()
    root = Path(options.root).absolute()
    stage = tuning.tune_study(spec) if spec.tune else None
    with contextlib.ExitStack() as locks:
        for study in (stage, spec):
            if study is not None:
                locks.enter_context(runner_lock(root / study.name))
        if not options.dry_run and _finished(spec, stage, root):
            # nothing to run: no validation, and no executor (counting GPUs imports torch)
            if stage is not None:
                console.print(f"tune: values chosen earlier, in {tuning.tune_path(root, spec)}", soft_wrap=True)
                spec = tuning.tuned(spec, tuning.read_choices(root, spec) or {})
            return _summarise(spec, spec.runs(), Ledger(ledger_path(root, spec.name)), root, options, console)
        executor = make_executor(options, spec)  # bad --workers/--devices fail here
        preload = _preload_report() if options.report and not options.dry_run else None
        try:
            if options.validate:
                lifecycle.check(spec, root, executor.gpus, prestarted_pool())  # before anything is started
                if stage is not None:
                    lifecycle.check_parses(stage, root, executor.gpus)
        finally:
            if preload is not None:
                preload.join()  # no thread is alive when runs start (a fresh run's preexec_fn needs that)
        untuned = [v for v, cell in tuning.untuned_column(spec).items() if cell] if not spec.tune else []
        if untuned:  # said before anything runs, and again in the table
            console.print(
                f"note: {', '.join(untuned)} change how the model is optimised but run at the baseline's settings "
                "(not tuned on val); `tune: auto` in the spec tunes their lr",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
        if stage is not None:
            code = _run_stage(stage, options, executor, root, console)
            if code != 0 or options.dry_run:
                if options.dry_run:
                    console.print(f"then every seed of {spec.name} at each variant's values chosen on val")
                return code
            tune_ledger = Ledger(ledger_path(root, stage.name))
            if _summarise(stage, stage.runs(), tune_ledger, root, options, console, report=False) != 0:
                console.print(f"{spec.name}: not started; every tune run must finish before values are chosen")
                return 1
            records = tune_ledger.read()
            chosen = tuning.choose(spec, root, records)
            path = tuning.write_choices(root, spec, chosen)
            cells = tuning.column(spec, chosen)
            console.print(f"tune: chosen on {keys.MONITOR} (seed {spec.seeds[0]}), recorded in {path}", soft_wrap=True)
            for variant, cell in cells.items():
                console.print(f"  {variant}: {cell}", soft_wrap=True, markup=False, highlight=False)
            spec = tuning.tuned(spec, chosen)
        code = _run_stage(spec, options, executor, root, console)
        if code == 0 and not options.dry_run:
            code = _summarise(spec, spec.runs(), Ledger(ledger_path(root, spec.name)), root, options, console)
    return code


def _all_done(spec: AblationSpec, root: Path) -> bool:
    """Every run of ``spec`` recorded done, with its ``result.json`` readable on disk."""
    records = Ledger(ledger_path(root, spec.name)).read()
    return all(
        records.get(run.id, {}).get("status") == DONE and not lifecycle.result_missing(run.directory(root))
        for run in spec.runs()
    )


def _finished(spec: AblationSpec, stage: AblationSpec | None, root: Path) -> bool:
    """Nothing left to run: the study (and its tune stage, at the values it chose) is done."""
    if stage is None:
        return _all_done(spec, root)
    chosen = tuning.read_choices(root, spec)
    return chosen is not None and _all_done(stage, root) and _all_done(tuning.tuned(spec, chosen), root)


def _run_stage(spec: AblationSpec, options: Options, executor: Executor, root: Path, console: Console) -> int:
    """Plan and run the runs of one study (the tune stage or the study itself; its runner lock is held); 0 when none
    of them is unfinished."""
    ledger = Ledger(ledger_path(root, spec.name))
    runs = spec.runs()
    lifecycle.check_stale(spec, runs, ledger, root)
    todo, following = lifecycle.plan(runs, ledger, root, options.retry_failed, executor)
    if options.dry_run:
        _print_plan(spec, runs, todo, following, root, executor, console)
        return 0
    with ledger.edit() as records:
        for run in runs:
            record = records.setdefault(run.id, {**lifecycle.describe(run, root), "status": PENDING, "attempts": 0})
            if options.changes:
                record["cli_changes"] = options.changes
    try:
        with LiveView(spec, ledger, root, executor.parallel, console) as view:
            executor.start(spec, todo, following, root, ledger, view)
    except KeyboardInterrupt:
        console.print(f"interrupted: {executor.interrupted}run the same command again to resume", soft_wrap=True)
        return 130
    return 0


def make_executor(options: Options, spec: AblationSpec | None = None) -> Executor:
    """The executor ``options`` name, built by its kind (bad ``--workers``/``--devices`` fail here)."""
    return executor_class(options.executor).build(options, spec)


def _print_plan(
    spec: AblationSpec,
    runs: list[Run],
    todo: list[Run],
    following: list[Run],
    root: Path,
    executor: Executor,
    console: Console,
) -> None:
    console.print(f"[bold]{spec.name}[/]: {len(runs)} runs, {len(todo)} to start, {len(following)} already queued")
    for text in executor.dry_run(spec, todo, root):
        console.print(text, soft_wrap=True, markup=False, highlight=False)  # a command is one line: it pastes


def _summarise(
    spec: AblationSpec,
    runs: list[Run],
    ledger: Ledger,
    root: Path,
    options: Options,
    console: Console,
    report: bool = True,
) -> int:
    records = ledger.read()
    done = [r for r in runs if records.get(r.id, {}).get("status") == DONE]
    failed = [r for r in runs if records.get(r.id, {}).get("status") == FAILED]
    unfinished = [r for r in runs if r not in done and r not in failed]
    console.print(f"[bold]{spec.name}[/]: {len(done)} done, {len(failed)} failed, {len(unfinished)} unfinished")
    for run in failed:
        record = records[run.id]
        console.print(
            f"  [red]failed[/] {run.variant} seed {run.seed}: {escape(record.get('reason') or 'no reason recorded')} "
            f"(exit {record.get('exit_code')}, log {escape(record['log'])})",
            soft_wrap=True,
        )
    for run in unfinished:
        console.print(
            f"  [yellow]unfinished[/] {run.variant} seed {run.seed}: {records.get(run.id, {}).get('note', '')}",
            soft_wrap=True,
        )
    if failed:
        console.print("  rerun with --retry-failed to try the failed runs again")
    if done and options.report and report:
        _report(spec, root, console)
    return 0 if len(done) == len(runs) else 1


def _preload_report() -> threading.Thread:
    """Import what the report at the end needs, in a thread, while the variants are checked (the runner only waits
    for the check's child then): 2-3 s of pandas, scipy, statsmodels and matplotlib that a small study's report
    otherwise pays after its last run. A failed import is left for the report to meet and explain."""

    def load() -> None:
        with contextlib.suppress(Exception):
            from scipy import stats  # noqa: F401 - what report.stats and report.table import lazily
            from statsmodels.stats.multitest import multipletests  # noqa: F401

            from toolkit.report import build, untested  # noqa: F401
            from toolkit.report.figure import pyplot

            pyplot()

    thread = threading.Thread(target=load, name="report-imports", daemon=True)
    thread.start()
    return thread


def _report(spec: AblationSpec, root: Path, console: Console) -> None:
    from toolkit.report.build import print_report, report_spec  # lazily: the report is only needed at the end

    try:
        print_report(report_spec(spec, root))
    except ToolkitError as err:  # the runs are safe; say why there is no table
        console.print(f"no report: {err}", soft_wrap=True)
