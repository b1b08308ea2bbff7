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
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from toolkit import keys
from toolkit.ablation import estimate, lifecycle
from toolkit.ablation.command import DEFAULT_LAUNCHER
from toolkit.ablation.executor import Executor
from toolkit.ablation.local import LocalRuns, make_slots, prestarted_pool
from toolkit.ablation.progress import LiveView
from toolkit.errors import ToolkitError
from toolkit.study import tuning
from toolkit.study.ledger import DONE, FAILED, PENDING, Ledger, ledger_path, runner_lock
from toolkit.study.spec import AblationSpec, Run


@dataclass
class Options:
    """How to run an ablation (the options of ``toolkit ablate run``)."""

    root: Path = Path("runs")
    executor: str = "local"
    workers: int | None = None
    devices: list[str] | None = None
    #: GPUs per run; None: 1 on a local machine with GPUs; on Slurm the spec's slurm: gpus_per_node, else the runs'
    #: trainer.accelerator/devices, else 0 (CPU tasks)
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    dry_run: bool = False
    retry_failed: bool = False
    #: Slurm options given on the command line (``SlurmSettings`` fields; None: not given), over the spec's block
    slurm: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int | None = None
    #: the program each run starts; tests inject a stand-in, users never change it
    launcher: list[str] = field(default_factory=lambda: list(DEFAULT_LAUNCHER))
    validate: bool = True
    report: bool = True
    #: local: fork runs from a parent that imported torch/Lightning/timm/wandb once (see toolkit.ablation.warm)
    warm: bool = True
    #: ``--seeds``/``--set`` of the command line (`toolkit.ablation.cli_changes`), recorded in each run's ledger entry
    changes: dict[str, Any] = field(default_factory=dict)


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
        facts: dict[str, dict[str, Any]] = {}
        try:
            if options.validate:
                started = time.monotonic()
                _say(console, _checking_line(spec, stage))
                facts = lifecycle.check(spec, root, executor.gpus, prestarted_pool())  # before anything is started
                if stage is not None:
                    lifecycle.check_parses(stage, root, executor.gpus)
                _say(console, f"check passed in {time.monotonic() - started:.1f} s")
        finally:
            if preload is not None:
                preload.join()  # no thread is alive when runs start (a fresh run's preexec_fn needs that)
        for line in _estimate(spec, stage, root, facts, executor.parallel, options.retry_failed):
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


def _say(console: Console, line: str) -> None:
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
    todo, attach = lifecycle.plan(runs, ledger, root, options.retry_failed, executor)
    if attach and not executor.attaches:
        names = ", ".join(f"{r.variant} seed {r.seed}" for r in attach)
        raise ToolkitError(f"{names} still queued or running on Slurm; wait for them (--executor slurm) or scancel")
    if options.dry_run:
        _print_plan(spec, runs, todo, attach, root, executor, console)
        return 0
    with ledger.edit() as records:
        for run in runs:
            record = records.setdefault(run.id, {**lifecycle.describe(run, root), "status": PENDING, "attempts": 0})
            if options.changes:
                record["cli_changes"] = options.changes
    try:
        with LiveView(spec, ledger, root, executor.parallel, console) as view:
            executor.start(spec, todo, attach, root, ledger, view)
    except KeyboardInterrupt:
        console.print(f"interrupted: {executor.interrupted}run the same command again to resume", soft_wrap=True)
        return 130
    return 0


def make_executor(options: Options, spec: AblationSpec | None = None) -> Executor:
    """The executor ``options`` name (the one place that knows the kinds); bad ``--workers``/``--devices`` fail here.

    On Slurm the spec's ``slurm:`` block gives the job's settings and the command line's options go over it.
    """
    if options.executor == "local":
        slots = make_slots(
            workers=options.workers,
            devices=options.devices,
            gpus_per_run=options.gpus_per_run or 1,
            cpus_per_run=options.cpus_per_run,
        )
        return LocalRuns(slots, options.launcher, options.warm, max(len(slots), options.array_parallelism or 1))
    if options.executor == "slurm":
        from toolkit.ablation import slurm_request
        from toolkit.ablation.slurm import SlurmRuns  # lazily: only a Slurm run needs it
        from toolkit.ablation.slurm_settings import settings_from_spec

        where = spec.path if spec is not None else "spec"
        settings = settings_from_spec(spec.slurm if spec is not None else None, where)
        given = {"cpus_per_task": options.cpus_per_run, "gpus_per_node": options.gpus_per_run}
        settings = settings.merged({**options.slurm, **given, "array_parallelism": options.array_parallelism})
        if spec is not None:  # GPUs, nodes and CPUs from the runs' trainer settings; a contradiction is refused
            settings = slurm_request.resolve(spec, settings)
        return SlurmRuns(options.launcher, settings)
    raise ToolkitError(f"--executor {options.executor!r}: use local or slurm")


def _print_plan(
    spec: AblationSpec,
    runs: list[Run],
    todo: list[Run],
    attach: list[Run],
    root: Path,
    executor: Executor,
    console: Console,
) -> None:
    console.print(f"[bold]{spec.name}[/]: {len(runs)} runs, {len(todo)} to start, {len(attach)} already queued")
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
