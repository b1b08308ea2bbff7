"""The ablation's live view as a user sees it: true states, one line per row, and a footer that always shows.

The screen test runs the real runner in a real pseudo-terminal of 80x25 with a 35-run study whose runs are real
processes (a stand-in for ``toolkit fit`` that starts, logs an epoch line, writes ``result.json`` and exits: the
runner cannot tell it from a fit), and reads what the terminal shows with a small VT emulator (:class:`Screen`):
pyte is not installed, and rich's live display needs only a handful of escape sequences.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.console import Console

from toolkit.ablation.progress import build_table
from toolkit.study.ledger import Ledger, ledger_path, runner_active, runner_lock
from toolkit.study.spec import load_spec

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"


def write_spec(folder: Path, variants: int, seeds: int) -> Path:
    path = folder / "spec.yaml"
    rows = {"full": {}} | {f"epochs{i}": {"trainer.max_epochs": 2 + i} for i in range(variants - 1)}
    path.write_text(json.dumps({"name": "live", "base": [str(DIGITS)], "seeds": list(range(seeds)), "variants": rows}))
    return path


def rendered(spec_path: Path, root: Path, height: int | None = None) -> str:
    spec = load_spec(spec_path)
    console = Console(width=80, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(build_table(spec, Ledger(ledger_path(root, spec.name)).read(), root, width=80, height=height))
    return console.export_text()


def test_a_run_whose_process_exited_is_finishing_while_its_runner_lives_and_interrupted_once_it_is_gone(
    tmp_path: Path,
) -> None:
    """The race of issue 31: a forked run is reaped (its pid gone) before its runner records how it ended. While a
    runner holds the study, such a record is `finishing`; only without one is it `interrupted`."""
    spec_path = write_spec(tmp_path, variants=1, seeds=2)
    spec, root = load_spec(spec_path), tmp_path / "runs"
    gone_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_pid.wait()  # reaped: its pid names no process, as a warm parent's child after the parent reaped it
    finishing, alive = spec.runs()
    ledger = Ledger(ledger_path(root, spec.name))
    common = {"status": "running", "host": socket.gethostname(), "started_at": time.time() - 5, "attempts": 1}
    ledger.update(finishing.id, **common, pid=gone_pid.pid)
    ledger.update(alive.id, **common, pid=os.getpid())
    assert runner_active(root / spec.name) is False  # no runner ever ran here
    with runner_lock(root / spec.name):  # a runner lives: in this process, as inside the runner's own live view
        assert runner_active(root / spec.name) is True
        text = rendered(spec_path, root)
        rows = [line for line in text.splitlines() if " full " in line]
        assert "finishing" in rows[0] and "running" in rows[1] and "interrupted" not in text, text
        assert "2 running" in text
    text = rendered(spec_path, root)  # the runner is gone (the kernel dropped its lock)
    rows = [line for line in text.splitlines() if " full " in line]
    assert "interrupted" in rows[0] and "interrupted" in rows[1], text
    assert "2 interrupted" in text


def test_a_long_note_ends_in_an_ellipsis_and_a_short_terminal_gets_a_row_per_variant(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, variants=5, seeds=7)
    spec, root = load_spec(spec_path), tmp_path / "runs"
    ledger = Ledger(ledger_path(root, spec.name))
    failed, *rest = spec.runs()
    ledger.update(failed.id, status="failed", reason="RuntimeError: " + "a long reason " * 20, log="/x/run.log")
    for run in [r for r in rest if r.variant == "epochs0"][:3]:
        run.directory(root).mkdir(parents=True)
        result = {"status": "done", "best_val": 0.5 + run.seed / 10}
        (run.directory(root) / "result.json").write_text(json.dumps(result))
        ledger.update(run.id, status="done", duration_s=3.0)
    tall = rendered(spec_path, root)  # `ablate status`: no height, a row per run
    lines = tall.splitlines()
    assert max(len(line) for line in lines) <= 80 and len(lines) == 35 + 6, tall
    (row,) = [line for line in lines if "RuntimeError" in line]
    assert row.rstrip().endswith("… │")
    short = rendered(spec_path, root, height=25)
    lines = short.splitlines()
    assert len(lines) <= 25 and max(len(line) for line in lines) <= 80, short
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]] for line in lines if "│ " in line}
    # done, running, queued, failed, mean best val/acc of the done runs (seeds 0-2: 0.5, 0.6, 0.7), best
    assert rows["epochs0"] == ["3", "", "4", "", "0.600 n=3", "0.700"]
    assert rows["full"] == ["", "", "6", "1", "", ""]
    assert lines[-1].startswith("3 done, 1 failed, 31 pending; ETA ")
    tiny = rendered(spec_path, root, height=9).splitlines()  # 3 rows: two variants and the rest summed up
    assert len(tiny) == 9 and "+3 variants" in tiny[-3] and tiny[-1].startswith("3 done")


class Screen:
    """The part of a VT100 that rich's live display uses: printable text with autowrap, CR, LF (scrolling), cursor
    moves (``CSI n A/B/C/D/G/H``), erase (``CSI n K/J``); colours and modes are ignored. Counts every autowrap: a
    line the program wrote wider than the terminal."""

    CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")
    OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.lines = [[" "] * cols for _ in range(rows)]
        self.row = self.col = 0
        self.wraps = 0

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]

    def _linefeed(self) -> None:
        if self.row == self.rows - 1:
            self.lines = [*self.lines[1:], [" "] * self.cols]
        else:
            self.row += 1

    def feed(self, data: str) -> None:
        i = 0
        while i < len(data):
            char = data[i]
            if char == "\x1b":
                match = self.CSI.match(data, i) or self.OSC.match(data, i)
                if match is None:
                    i += 2  # a two-character escape (charset selection and the like)
                    continue
                if match.re is self.CSI:
                    self._csi(match.group(1), match.group(2))
                i = match.end()
                continue
            if char == "\r":
                self.col = 0
            elif char == "\n":
                self.col = min(self.col, self.cols - 1)
                self._linefeed()
            elif char == "\b":
                self.col = max(self.col - 1, 0)
            elif char >= " ":
                if self.col >= self.cols:  # pending wrap: the line was full
                    self.wraps += 1
                    self.col = 0
                    self._linefeed()
                self.lines[self.row][self.col] = char
                self.col += 1
            i += 1

    def _csi(self, params: str, final: str) -> None:
        if params.startswith("?"):
            return  # modes (cursor visibility)
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = max(numbers[0], 1) if numbers else 1
        if final == "A":
            self.row = max(self.row - n, 0)
        elif final == "B":
            self.row = min(self.row + n, self.rows - 1)
        elif final == "C":
            self.col = min(self.col + n, self.cols - 1)
        elif final == "D":
            self.col = max(min(self.col, self.cols - 1) - n, 0)
        elif final == "G":
            self.col = min(n, self.cols) - 1
        elif final == "H":
            self.row = min(n, self.rows) - 1
            self.col = min(numbers[1] if len(numbers) > 1 and numbers[1] else 1, self.cols) - 1
        elif final == "K":
            mode = numbers[0] if numbers else 0
            col = min(self.col, self.cols)
            span = {0: range(col, self.cols), 1: range(0, col + 1), 2: range(self.cols)}[mode]
            for c in span:
                if c < self.cols:
                    self.lines[self.row][c] = " "
        elif final == "J":
            mode = numbers[0] if numbers else 0
            rows = {0: range(self.row + 1, self.rows), 1: range(self.row), 2: range(self.rows)}.get(mode, ())
            for r in rows:
                self.lines[r] = [" "] * self.cols


#: a run of the stand-in: starts, logs one epoch line to run.log, writes result.json (toolkit fit's last act), exits
STAND_IN = """
import json, os, sys, time
args = sys.argv[1:]
root = args[args.index("--trainer.default_root_dir") + 1]
seed = int(args[args.index("--seed_everything") + 1]) if "--seed_everything" in args else 0
time.sleep(0.2)
print(f"epoch 0/0: val/acc {0.5 + seed / 100:.4f} (0.2 s)", flush=True)
os.makedirs(root, exist_ok=True)
with open(os.path.join(root, "result.json"), "w") as fh:
    json.dump({"status": "done", "finished_at": time.time(), "best_val": 0.5 + seed / 100}, fh)
"""

RUNNER = """
import sys
from pathlib import Path
from toolkit.ablation.runner import Options, run_ablation
from toolkit.study.spec import load_spec
spec_path, root, script = sys.argv[1:]
options = Options(root=Path(root), launcher=[sys.executable, script], validate=False, report=False,
                  executor_options={"workers": 2, "devices": "cpu"})
sys.exit(run_ablation(load_spec(spec_path), options))
"""

#: what rich's live display writes before each redraw: back to the first line of the previous frame, erasing it
REDRAW = re.compile(r"\r\x1b\[2K(?:\x1b\[1A\x1b\[2K)*")


@pytest.mark.slow
def test_the_live_view_of_a_35_run_study_fits_an_80x25_terminal_and_never_says_interrupted(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, variants=5, seeds=7)
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 25, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "CI")}
    env["TERM"] = "xterm-256color"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(spec_path), str(tmp_path / "runs"), str(script)],
        stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    raw = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the runner exited and closed the terminal
                    break
                if not chunk:
                    break
                raw += chunk
            elif runner.poll() is not None:
                break
        assert runner.wait(30) == 0, raw.decode(errors="replace")[-3000:]
    finally:
        os.close(master)
        if runner.poll() is None:
            runner.kill()
    stream = raw.decode()
    screen, frames = Screen(25, 80), []
    position = stream.index("ablation live")  # the live view's first frame; what the runner printed before is not ours
    screen.feed(stream[:position])
    screen.wraps = 0
    for match in REDRAW.finditer(stream, position):  # the screen as it stood before each redraw: one whole frame
        screen.feed(stream[position : match.start()])
        frames.append(screen.text())
        screen.feed(match.group())
        position = match.end()
    screen.feed(stream[position:])
    frames.append(screen.text())
    footer = re.compile(r"^\d+ (done|running|pending)")
    tables = [frame for frame in frames if any(line.startswith("ablation live") for line in frame)]
    assert len(tables) > 10, stream[-3000:]
    for frame in tables:
        assert any(footer.match(line) for line in frame), "\n".join(frame)  # the counts are on screen
        assert not any(line.strip() == "..." for line in frame), "\n".join(frame)  # nothing cut off by rich
    assert screen.wraps == 0, stream[-3000:]  # no row wider than the terminal, so none wrapped
    assert "interrupted" not in stream and "finishing" not in stream.split("35 done")[-1]
    busy = [f for f in tables if any(re.match(r"^\d+ done, 2 running, \d+ pending; ETA \d+:\d\d$", line) for line in f)]
    assert busy, "\n".join(tables[-1])  # mid-study: two runs at work, the others counted, an ETA
    assert any("a row per variant" in line for line in busy[0])  # 35 rows do not fit in 25 lines
    final = screen.text()
    assert any(line.startswith("35 done") for line in final) and "live: 35 done, 0 failed, 0 unfinished" in final
    (full,) = [line for line in final if line.startswith("│ full ")]
    # 7 done, none running, queued or failed; mean of the seeds' best val/acc 0.50..0.56 (hand computed: 0.530)
    assert [c.strip() for c in full.split("│")[2:-1]] == ["7", "", "", "", "0.530 n=7", "0.560"]
