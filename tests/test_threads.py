"""The thread policy of every run's entry point (toolkit.threads): never more threads than free CPUs, said and kept."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK, ROOT

from toolkit.errors import ToolkitError
from toolkit.study.layout import RESULT_FILE
from toolkit.threads import allowed_cpus, busy_cpus, choose_threads


def test_busy_cpus_reads_load_and_runnable_threads(tmp_path: Path) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("1.62 0.90 0.40 1/300 4242\n")  # one runnable: this process; the load says 2 busy
    assert busy_cpus(loadavg) == 2
    loadavg.write_text("0.10 0.05 0.01 3/300 4242\n")  # a process just started: 2 runnable besides this one
    assert busy_cpus(loadavg) == 2
    loadavg.write_text("0.49 0.05 0.01 1/300 4242\n")
    assert busy_cpus(loadavg) == 0
    assert busy_cpus(tmp_path / "missing") == 0


def test_allowed_cpus_takes_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert allowed_cpus(cpu_max) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one thread
    assert allowed_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 3) * 100000} 100000\n")  # a quota above the affinity mask: the mask
    assert allowed_cpus(cpu_max) == affinity


def test_choose_threads() -> None:
    assert choose_threads({"OMP_NUM_THREADS": "3"}, allowed=2, busy=2).threads == 3  # the user's (or runner's) word
    assert choose_threads({}, allowed=2, busy=1).threads == 1  # beside one busy process on 2 cores
    assert choose_threads({}, allowed=8, busy=3).threads == 5
    assert choose_threads({}, allowed=2, busy=6).threads == 1
    assert choose_threads({}, allowed=2, busy=0).line() == (
        "threads: 2 (2 CPUs allowed, 0 busy; set OMP_NUM_THREADS to repeat this run's numbers exactly)"
    )
    for bad in ("0", "two", "-1"):
        with pytest.raises(ToolkitError, match=f"OMP_NUM_THREADS='{bad}'"):
            choose_threads({"OMP_NUM_THREADS": bad})


def test_bad_thread_variable_is_one_error_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from toolkit.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *QUICK])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: OMP_NUM_THREADS='many': give a whole number of threads >= 1, or unset it"
    ]


def test_hand_run_fit_sets_its_threads(tmp_path: Path) -> None:
    """A fit started by hand (no OMP_NUM_THREADS) says its thread count first and computes with it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    exe = Path(sys.executable).with_name("toolkit")
    args = [str(exe), "fit", *QUICK, "--trainer.default_root_dir", str(tmp_path)]
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    first = run.stdout.splitlines()[0]
    said = re.fullmatch(r"threads: (\d+) \((\d+) CPUs allowed, (\d+) busy; set OMP_NUM_THREADS .*\)", first)
    assert said, first
    threads, allowed, busy = map(int, said.groups())
    assert allowed == allowed_cpus()
    assert threads == max(1, allowed - busy)
    # what the run computed with (torch.get_num_threads at its end) is what it said
    assert json.loads((tmp_path / RESULT_FILE).read_text())["cpu_threads"] == threads
