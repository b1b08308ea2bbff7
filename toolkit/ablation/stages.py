"""The stages of a study, run in order by ``runner.run_ablation``: prepare -> tune -> execute -> report.

Each stage takes the study's :class:`Ablation` (its spec, options, root, console and, once prepared, executor) and
returns None to go on or an exit status to stop with. The tune stage is ``tune_stage.tune``; the others are here:

- :func:`prepare`: a study whose runs are all done is only summarised and reported (no validation, no executor);
  otherwise the executor is built (bad ``--workers``/``--devices`` fail here) and every variant is checked before
  anything is created or started (``lifecycle.check``);
- :func:`execute`: plan from the ledger and run what is left (:func:`run_stage`);
- :func:`report`: summarise, and write the report.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from toolkit.ablation import estimate, lifecycle
from toolkit.ablation.executor import Executor, Options, executor_class
from toolkit.ablation.local import prestarted_pool
from toolkit.ablation.progress import LiveView
from toolkit.errors import ToolkitError
from toolkit.quiet import QUIET, verbosity
from toolkit.study import tuning
from toolkit.study.ledger import DONE, FAILED, PENDING, Ledger, ledger_path, runner_lock
from toolkit.study.spec import AblationSpec, Run


@dataclass
class Ablation:
    """One ``toolkit ablate run``: what its stages share. ``spec`` becomes the study at its tuned values once the
    tune stage has chosen them; ``stage`` is the tune stage's study (None without ``tune:``)."""

    spec: AblationSpec
    options: Options
    root: Path
    console: Console
    stage: AblationSpec | None = None
    executor: Executor | None = None

    @classmethod
    def of(cls, spec: AblationSpec, options: Options, console: Console | None) -> Ablation:
        stage = tuning.tune_study(spec) if spec.tune else None
        return cls(spec, options, Path(options.root).absolute(), console or Console(), stage)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The runner locks of the study and its tune stage: a second runner is told at once; the lock also creates
        the study's folder (an unwritable root is one line now, not after the variants were validated)."""
        with contextlib.ExitStack() as locks:
            for study in (self.stage, self.spec):
                if study is not None:
                    locks.enter_context(runner_lock(self.root / study.name))
            yield


def make_executor(options: Options, spec: AblationSpec | None = None) -> Executor:
    """The executor ``options`` name, built by its kind (bad ``--workers``/``--devices`` fail here)."""
    return executor_class(options.executor).build(options, spec)


def prepare(ablation: Ablation) -> int | None:
    """Report a finished study at once; else build the executor and check every variant before anything starts."""
    spec, options, root, console = ablation.spec, ablation.options, ablation.root, ablation.console
    if not options.dry_run and _finished(spec, ablation.stage, root):
        # nothing to run: no validation, and no executor (counting GPUs imports torch)
        if ablation.stage is not None:
            console.print(f"tune: values chosen earlier, in {tuning.tune_path(root, spec)}", soft_wrap=True)
            spec = tuning.tuned(spec, tuning.read_choices(root, spec) or {})
        return summarise(spec, Ledger(ledger_path(root, spec.name)), root, options, console)
    executor = ablation.executor = make_executor(options, spec)
    preload = _preload_report() if options.report and not options.dry_run else None
    facts: dict[str, dict[str, Any]] = {}
    try:
        if options.validate:
            started = time.monotonic()
            _say(console, _checking_line(spec, ablation.stage))
            facts = lifecycle.check(spec, root, executor.gpus, prestarted_pool())  # before anything is started
            if ablation.stage is not None:
                lifecycle.check_parses(ablation.stage, root, executor.gpus)
            _say(console, f"check passed in {time.monotonic() - started:.1f} s")
    finally:
        if preload is not None:
            preload.join()  # no thread is alive when runs start (a fresh run's preexec_fn needs that)
    for line in _estimate(spec, ablation.stage, root, facts, executor.parallel, options.retry_failed):
        _say(console, line)
    untuned = [v for v, cell in tuning.untuned_column(spec).items() if cell] if not spec.tune else []
    if untuned:  # said before anything runs, and again in the table
        console.print(
            f"note: {', '.join(untuned)} change how the model is optimised but run at the baseline's settings "
            "(not tuned on val); `tune: auto` in the spec tunes their lr",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    return None


def _say(console: Console, line: str) -> None:
    """A pre-launch line (what the check does, what the study will cost): not with -q."""
    if verbosity() > QUIET:
        console.print(line, soft_wrap=True, markup=False, highlight=False)


def _checking_line(spec: AblationSpec, stage: AblationSpec | None) -> str:
    """What the pre-launch check is about to do (it runs for seconds to a minute before any run starts)."""
    imports = "" if "torch" in sys.modules else "importing torch, Lightning and timm, then "
    tune = f", and the {len(stage.runs())} tune runs' commands" if stage is not None else ""
    return (
        f"checking {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds: {imports}parsing each "
        f"variant's command, comparing it with the others, building each distinct model once{tune} ..."
    )


def _estimate(
    spec: AblationSpec,
    stage: AblationSpec | None,
    root: Path,
    facts: dict[str, dict[str, Any]],
    parallel: int,
    retry_failed: bool,
) -> list[str]:
    """The cost lines (`toolkit.ablation.estimate`) for every run of the study and its tune stage that will run: not
    done (a done run whose result is gone is redone), failed ones only with ``--retry-failed``."""
    todo: list[Run] = []
    records: dict[str, dict[str, Any]] = {}
    for study in (stage, spec):
        if study is None:
            continue
        if study is spec and stage is not None:
            chosen = tuning.read_choices(root, spec)
            study = tuning.tuned(spec, chosen) if chosen is not None else spec  # else: every run is still to go
        found = Ledger(ledger_path(root, study.name)).read()
        records.update(found)
        for run in study.runs():
            status = found.get(run.id, {}).get("status")
            if status == DONE and not lifecycle.result_missing(run.directory(root)):
                continue
            if status != FAILED or retry_failed:
                todo.append(run)
    return estimate.cost_lines(todo, records, facts, parallel, root)


def execute(ablation: Ablation) -> int | None:
    """Run every run of the study that is not done yet."""
    code = run_stage(ablation, ablation.spec)
    return code if code != 0 or ablation.options.dry_run else None


def report(ablation: Ablation) -> int:
    """Summarise the study and write its report."""
    spec = ablation.spec
    return summarise(
        spec, Ledger(ledger_path(ablation.root, spec.name)), ablation.root, ablation.options, ablation.console
    )


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


def run_stage(ablation: Ablation, spec: AblationSpec) -> int:
    """Plan and run the runs of one study (the tune stage or the study itself; its runner lock is held); 0 when none
    of them is unfinished."""
    options, root, console = ablation.options, ablation.root, ablation.console
    executor = ablation.executor
    assert executor is not None, "prepare() builds the executor"
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


def summarise(
    spec: AblationSpec,
    ledger: Ledger,
    root: Path,
    options: Options,
    console: Console,
    report: bool = True,
) -> int:
    runs = spec.runs()
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
