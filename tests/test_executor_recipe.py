"""The executor recipe of docs/architecture.md, followed: a third kind written here, in this one file.

An in-process executor (every run a ``toolkit fit`` in this process, one after another) is a subclass of
``ablation.executor.Executor`` with its options dataclass, added with ``executor.register``. Nothing else is
edited: ``--executor inline`` and its option must then appear on the runner's command line, the runner must build it
and run a study through it to the end (ledger, result files), and an attempt it recorded must be asked of it (not
of the local or Slurm executor) when the next runner plans.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import DIGITS
from rich.console import Console
from typing_extensions import override

from toolkit.ablation import executor, lifecycle
from toolkit.ablation.command import resume_args, shell_command
from toolkit.ablation.executor import Executor, Options
from toolkit.study.layout import RESULT_FILE
from toolkit.study.ledger import DONE, RUNNING, Ledger, ledger_path
from toolkit.study.result import RunResult
from toolkit.study.spec import AblationSpec, Run, load_spec


@dataclass(frozen=True)
class InlineOptions:
    stop_after: int | None = field(default=None, metadata={"help": "run at most this many {what}, then stop"})


class InlineRuns(Executor):
    """Every run a ``toolkit fit`` in this process, in order (a process that already holds torch)."""

    name = "inline"
    settings = InlineOptions
    asked: list[set[str]] = []  # the records the planner asked about, per plan

    def __init__(self, stop_after: int | None) -> None:
        self.stop_after = stop_after

    @classmethod
    @override
    def build(cls, options: Options, spec: AblationSpec | None) -> InlineRuns:
        return cls(InlineOptions(**options.executor_options).stop_after)

    @classmethod
    @override
    def alive(cls, records: Mapping[str, Mapping[str, Any]]) -> set[str]:
        cls.asked.append(set(records))
        return set()

    @override
    def start(
        self, spec: AblationSpec, todo: list[Run], following: list[Run], root: Path, ledger: Ledger, view: Any
    ) -> None:
        from toolkit.lightning_cli import run_cli

        for run in todo[: self.stop_after]:
            args = resume_args(spec, run, root)
            lifecycle.begin(ledger, run, root, env={}, command=shell_command(["toolkit"], args), executor=self.name)
            view.event(run, RUNNING, "in process")
            try:
                run_cli([*args, "--trainer.enable_progress_bar", "false"])
                code = 0
            except (Exception, SystemExit):
                code = 1
            record = lifecycle.finish(ledger, run, root, code, interrupted=False)
            view.event(run, record["status"], f"exit {code}")


@pytest.fixture
def inline() -> Iterator[type[InlineRuns]]:
    executor.register(InlineRuns)
    InlineRuns.asked.clear()
    yield InlineRuns
    executor.unregister("inline")


def test_a_registered_executor_is_on_the_command_line_with_its_options(inline: type[InlineRuns]) -> None:
    from toolkit.ablation.cli import build_parser
    from toolkit.ablation.options import runner_options
    from toolkit.cli_options import parse

    run_help = build_parser(full=True)._subcommands_action._name_parser_map["run"].format_help()
    assert "inline executor" in run_help and "--stop-after" in run_help and "run at most this many runs" in run_help
    args = parse(build_parser(), ["run", "s.yaml", "--executor", "inline", "--stop_after", "1"], "ablate").run
    options = runner_options(args)
    assert options.executor == "inline" and options.executor_options == {"stop_after": 1}


def test_a_study_runs_through_the_registered_executor(inline: type[InlineRuns], tmp_path: Path) -> None:
    from toolkit.ablation.runner import run_ablation

    spec_path = tmp_path / "inline.yaml"
    spec_path.write_text(
        f"name: inline\nbase: [{DIGITS}]\nseeds: [0]\n"
        "overrides: {trainer.max_epochs: 1, trainer.limit_train_batches: 2, trainer.limit_val_batches: 1,"
        " trainer.limit_test_batches: 1, trainer.enable_model_summary: false}\n"
        "variants: {full: {}, dropout: {model.drop_rate: 0.5}}\n"
    )
    spec, root = load_spec(spec_path), tmp_path / "runs"
    options = Options(root=root, executor="inline", executor_options={"stop_after": 1}, report=False)
    out = io.StringIO()
    assert run_ablation(spec, options, Console(file=out, width=200)) == 1  # one run left: stop_after 1
    records = Ledger(ledger_path(root, "inline")).read()
    assert sorted(r["status"] for r in records.values()) == [DONE, "pending"]
    assert {r.get("executor") for r in records.values() if r["status"] == DONE} == {"inline"}

    # as if a runner died during the other run's attempt: the next plan asks the kind that made it
    (left,) = [run_id for run_id, r in records.items() if r["status"] != DONE]
    Ledger(ledger_path(root, "inline")).update(left, status=RUNNING, executor="inline", attempts=1)
    options.executor_options = {}
    assert run_ablation(spec, options, Console(file=out, width=200)) == 0, out.getvalue()
    assert inline.asked == [{left}]  # not squeue, not this host's process groups: the inline kind's own answer
    records = Ledger(ledger_path(root, "inline")).read()
    assert all(r["status"] == DONE for r in records.values()) and records[left]["attempts"] == 2
    for run in spec.runs():
        result = RunResult.read(run.directory(root) / RESULT_FILE)
        assert result is not None and result.status == "done" and "test/acc" in result.metrics
