"""The local executor with a stand-in for ``toolkit fit``: device slots, thread split, failures, retries, leftovers.

The stand-in is a tiny script that records the environment and arguments it received, so these tests check what
each run process actually got (GPU ids on this CPU-only machine included) without paying for torch in each run.
The real ``toolkit fit`` runs are in test_ablation_runs.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from toolkit.ablation.executor import kill_leftovers
from toolkit.ablation.options import Options
from toolkit.ablation.runner import run_ablation
from toolkit.ablation.slots import make_slots
from toolkit.errors import ToolkitError
from toolkit.study.ledger import Ledger, ledger_path
from toolkit.study.result import RunResult
from toolkit.study.spec import AblationSpec, load_spec

DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits.yaml"
STAND_IN = """
import json, os, sys, time
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
root = opt("--trainer.default_root_dir")
os.makedirs(root, exist_ok=True)
start = time.time()
time.sleep(float(os.environ.get("STAND_IN_SLEEP", "0.8")))
keys = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONUNBUFFERED")
got = {"env": {k: os.environ.get(k) for k in keys}, "argv": args, "start": start, "end": time.time()}
with open(os.path.join(root, f"received-{os.getpid()}.json"), "w") as fh:
    json.dump(got, fh)
if opt("--ablation.variant") == "crash":
    sys.exit("RuntimeError: the stand-in crashed on purpose")
if opt("--ablation.variant") == "killed" and not os.path.exists(os.path.join(root, "killed-once")):
    open(os.path.join(root, "killed-once"), "w").close()
    print("TPU available: False, using: 0 TPU cores", flush=True)  # Lightning's line, last in the log
    os.kill(os.getpid(), 9)
if opt("--ablation.variant") == "nospace" and not os.path.exists(os.path.join(root, "full-once")):
    open(os.path.join(root, "full-once"), "w").close()
    print(f"error: cannot write {root}/last.ckpt: No space left on device; free space there", file=sys.stderr)
    sys.exit(2)
with open(os.path.join(root, "result.json"), "w") as fh:  # toolkit fit's last act
    json.dump({"status": "done", "finished_at": time.time()}, fh)
"""


def make_spec(folder: Path, variants: dict[str, dict], seeds: list[int]) -> AblationSpec:
    path = folder / "spec.yaml"
    text = {"name": "standin", "base": [str(DIGITS)], "seeds": seeds, "variants": variants}
    path.write_text(json.dumps(text))
    return load_spec(path)


def run(spec: AblationSpec, root: Path, tmp_path: Path, terminal: bool = False, **options: object) -> tuple[int, str]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    out = io.StringIO()
    local = {k: options.pop(k) for k in ("workers", "devices", "warm") if k in options}
    settings = {"validate": False, "report": False, "executor_options": local, **options}
    opts = Options(root=root, launcher=[sys.executable, str(script)], **settings)  # type: ignore[arg-type]
    console = Console(file=out, width=200, force_terminal=terminal, color_system=None)
    return run_ablation(spec, opts, console), out.getvalue()


def received(root: Path) -> list[dict]:
    """What every stand-in process recorded, with the run folder it was started for."""
    found = []
    for path in sorted(root.rglob("received-*.json")):
        found.append({**json.loads(path.read_text()), "run_dir": str(path.parent)})
    return found


def overlapping(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_gpu_slots_give_each_run_its_own_devices_and_ddp(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}, "other": {"model.drop_rate": 0.0}}, [0, 1, 2])
    code, _ = run(spec, tmp_path / "runs", tmp_path, devices="0,1,2,3", gpus_per_run=2, cpus_per_run=3)
    assert code == 0
    got = received(tmp_path / "runs")
    assert len(got) == 6 and len({g["run_dir"] for g in got}) == 6
    records = {r["run_dir"]: r for r in Ledger(ledger_path(tmp_path / "runs", "standin")).read().values()}
    for g in got:
        assert g["env"]["CUDA_VISIBLE_DEVICES"] in ("0,1", "2,3")
        assert g["env"]["OMP_NUM_THREADS"] == g["env"]["MKL_NUM_THREADS"] == "3"
        assert g["env"]["PYTHONUNBUFFERED"] == "1"
        argv = " ".join(g["argv"])
        assert "--trainer.accelerator gpu --trainer.devices 2 --trainer.strategy ddp" in argv
        # the ledger holds what the process received, and the log says it before the run's output
        assert records[g["run_dir"]]["env"] == {k: g["env"][k] for k in records[g["run_dir"]]["env"]}
        log = Path(g["run_dir"], "run.log").read_text()
        assert f"CUDA_VISIBLE_DEVICES={g['env']['CUDA_VISIBLE_DEVICES']}" in log
    pairs = [(a, b) for i, a in enumerate(got) for b in got[i + 1 :] if overlapping(a, b)]
    assert pairs, "two runs should have run at once on two slots"
    assert all(a["env"]["CUDA_VISIBLE_DEVICES"] != b["env"]["CUDA_VISIBLE_DEVICES"] for a, b in pairs)


def test_cpu_workers_get_a_fixed_thread_count_and_run_side_by_side(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}}, [0, 1, 2, 3])
    code, out = run(spec, tmp_path / "runs", tmp_path, terminal=True, devices="cpu", workers=2)
    assert code == 0
    table = out[out.rindex("ablation standin") :]  # the live view's last frame
    assert table.count("│ done") == 4 and "4 done" in table
    got = received(tmp_path / "runs")
    assert [g["env"]["OMP_NUM_THREADS"] for g in got] == ["1"] * 4  # not the CPUs split by --workers
    assert all(g["env"]["CUDA_VISIBLE_DEVICES"] == "" and "--trainer.devices" not in g["argv"] for g in got)
    most = max(sum(overlapping(a, b) for b in got) for a in got)  # counts itself
    assert most == 2


def test_a_crashing_run_is_failed_the_others_finish_and_retry_is_explicit(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}, "crash": {"model.drop_rate": 0.5}}, [0, 1])
    root = tmp_path / "runs"
    code, out = run(spec, root, tmp_path, devices="cpu", workers=2)
    assert code == 1
    records = {(r["variant"], r["seed"]): r for r in Ledger(ledger_path(root, "standin")).read().values()}
    assert {k: r["status"] for k, r in records.items()} == {
        ("full", 0): "done",
        ("full", 1): "done",
        ("crash", 0): "failed",
        ("crash", 1): "failed",
    }
    for seed in (0, 1):
        failed = records[("crash", seed)]
        assert failed["exit_code"] == 1 and "crashed on purpose" in failed["error_tail"][-1]
        assert "crashed on purpose" in failed["reason"]  # the exception's last line, not the whole tail
        assert f"failed crash seed {seed}: {failed['reason']} (exit 1, log {failed['log']})" in out
    assert "2 done, 2 failed, 0 unfinished" in out and "--retry-failed" in out

    code, out = run(spec, root, tmp_path, devices="cpu", workers=2)  # the same command again: nothing to do
    assert code == 1 and len(received(root)) == 4
    code, out = run(spec, root, tmp_path, devices="cpu", workers=2, retry_failed=True)
    assert code == 1 and len(received(root)) == 6
    attempts = {(r["variant"], r["seed"]): r["attempts"] for r in Ledger(ledger_path(root, "standin")).read().values()}
    assert attempts == {("full", 0): 1, ("full", 1): 1, ("crash", 0): 2, ("crash", 1): 2}


def test_a_run_killed_by_sigkill_is_recorded_as_killed_and_resumes_without_retry_failed(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}, "killed": {"model.drop_rate": 0.5}}, [0])
    root = tmp_path / "runs"
    code, out = run(spec, root, tmp_path, devices="cpu", workers=1)
    records = {r["variant"]: r for r in Ledger(ledger_path(root, "standin")).read().values()}
    killed = records["killed"]
    assert code == 1 and killed["status"] == "pending" and killed["exit_code"] == -signal.SIGKILL
    assert killed["reason"] == "killed by SIGKILL" and "TPU" not in out
    assert "unfinished killed seed 0: killed by SIGKILL; run again to resume" in out
    code, out = run(spec, root, tmp_path, devices="cpu", workers=1)  # no --retry-failed: a killed run resumes
    records = {r["variant"]: r for r in Ledger(ledger_path(root, "standin")).read().values()}
    assert code == 0 and records["killed"]["status"] == "done" and records["killed"]["attempts"] == 2


@pytest.mark.parametrize(
    ("code", "name"), [(-9, "SIGKILL"), (137, "SIGKILL"), (143, "SIGTERM"), (-11, "SIGSEGV"), (1, None), (2, None)]
)
def test_the_signal_is_read_from_the_exit_status(code: int, name: str | None) -> None:
    from toolkit.ablation.lifecycle import killed_by

    assert killed_by(code) == name


def test_seeds_and_set_from_the_command_line_scale_the_study_and_are_recorded_in_the_ledger(tmp_path: Path) -> None:
    from toolkit.study import cli_changes

    spec = make_spec(tmp_path, {"full": {}, "no-drop": {"model.drop_rate": 0.0}}, [0])
    scaled, changes = cli_changes.apply(spec, "1-2,5", ["trainer.max_epochs=4", "model.drop_rate=0.3"])
    assert changes == {"seeds": [1, 2, 5], "set": {"trainer.max_epochs": 4, "model.drop_rate": 0.3}}
    root = tmp_path / "runs"
    code, _ = run(scaled, root, tmp_path, devices="cpu", workers=2, changes=changes)
    assert code == 0
    records = list(Ledger(ledger_path(root, "standin")).read().values())
    assert sorted((r["variant"], r["seed"]) for r in records) == [
        (v, s) for v in ("full", "no-drop") for s in (1, 2, 5)
    ]
    assert all(r["cli_changes"] == changes for r in records)
    for got in received(root):
        argv = got["argv"]
        assert argv[argv.index("--trainer.max_epochs") + 1] == "4"
        drop = argv[argv.index("--model.drop_rate") + 1]
        assert drop == ("0.0" if "no-drop" in got["run_dir"] else "0.3")  # a variant's own change still wins
    with pytest.raises(ToolkitError, match="--set 'max_epochs'"):
        cli_changes.apply(spec, None, ["max_epochs"])
    with pytest.raises(ToolkitError, match="--seeds"):
        cli_changes.apply(spec, "0-4294967296", None)


def test_slots_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ToolkitError, match="--gpus-per-run 3 does not fit on GPUs 0,1"):
        make_slots(workers=None, devices=["0", "1"], gpus_per_run=3)
    with pytest.raises(ToolkitError, match="--workers 0"):
        make_slots(workers=0, devices=[])
    assert [s.gpus for s in make_slots(workers=1, devices=["0", "1", "2", "3"], gpus_per_run=2)] == [("0", "1")]
    assert [s.threads for s in make_slots(workers=3, devices=[], cpu_count=8)] == [1, 1, 1]
    assert [s.threads for s in make_slots(workers=3, devices=[], cpus_per_run=2, cpu_count=8)] == [2, 2, 2]
    with pytest.raises(ToolkitError, match="--cpus-per-run 0"):
        make_slots(workers=1, devices=[], cpus_per_run=0)


def _group(pgid: int) -> dict[int, str]:
    """Live processes of a process group by pid, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            if entry.name.isdigit() and int(stat[2]) == pgid and stat[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


def test_leftovers_of_an_interrupted_run_are_killed_and_nothing_else(tmp_path: Path) -> None:
    run_dir = tmp_path / "abl" / "full" / "seed0"
    leader_code = (
        "import subprocess, sys, time\n"
        "sleep = [sys.executable, '-c', 'import time; time.sleep(60)']\n"
        "subprocess.Popen([*sleep, sys.argv[1]]); subprocess.Popen([*sleep, 'elsewhere'])\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", leader_code, str(run_dir)], start_new_session=True)
    try:
        deadline = time.time() + 20
        while len(_group(leader.pid)) < 3 and time.time() < deadline:
            time.sleep(0.1)
        assert len(_group(leader.pid)) == 3
        assert kill_leftovers(leader.pid, run_dir) == 2
        assert leader.wait(5) == -signal.SIGKILL
        time.sleep(0.3)
        left = _group(leader.pid)
        assert len(left) == 1 and "elsewhere" in next(iter(left.values()))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


RUNNER = """
import sys
from pathlib import Path
from rich.console import Console
from toolkit.ablation.options import Options
from toolkit.ablation.runner import run_ablation
from toolkit.study.spec import load_spec
spec_path, root, script = sys.argv[1:]
launcher = [sys.executable, script]
options = Options(root=Path(root), launcher=launcher, validate=False, report=False,
                  executor_options={"workers": 2, "devices": "cpu"})
sys.exit(run_ablation(load_spec(spec_path), options, Console(width=200)))
"""


def test_stopping_the_runner_stops_its_runs_and_leaves_them_resumable(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}}, [0, 1, 2])
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    root = tmp_path / "runs"
    env = {**os.environ, "STAND_IN_SLEEP": "60"}
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, spec.path, str(root), str(tmp_path / "stand_in.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    ledger = Ledger(ledger_path(root, "standin"))
    deadline = time.time() + 30
    while time.time() < deadline:
        running = [r for r in (ledger.read() if ledger.path.exists() else {}).values() if r.get("pid")]
        if len(running) == 2:
            break
        time.sleep(0.1)
    assert len(running) == 2
    runner.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends; Ctrl-C takes the same path
    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 130 and "run the same command again to resume" in out
    records = ledger.read()
    assert sorted(r["status"] for r in records.values()) == ["pending"] * 3
    assert all("interrupted" in records[r["id"]]["note"] for r in running)
    assert not [r["pid"] for r in running if Path(f"/proc/{r['pid']}").exists() and _group(r["pid"])]


def test_a_run_that_completed_while_the_runner_was_down_is_not_run_again(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, {"full": {}}, [0, 1])
    root = tmp_path / "runs"
    first, second = spec.runs()
    ledger = Ledger(ledger_path(root, spec.name))
    started = time.time() - 60
    for record_run in (first, second):
        ledger.update(record_run.id, status="running", started_at=started, attempts=1, variant="full")
    # `first` wrote its completion file (toolkit fit's last act) before the runner died; `second` did not
    first.directory(root).mkdir(parents=True)
    RunResult("done", time.time()).write(first.directory(root) / "result.json")
    code, _ = run(spec, root, tmp_path)
    assert code == 0
    records = ledger.read()
    assert records[first.id]["status"] == "done" and records[first.id]["attempts"] == 1
    assert records[second.id]["status"] == "done" and records[second.id]["attempts"] == 2
    assert [Path(r["run_dir"]).name for r in received(root)] == ["seed1"]


def test_a_machine_without_a_gpu_driver_counts_no_gpus_without_torch(tmp_path: Path) -> None:
    """The runner splits a CPU-only machine into slots without importing torch (it stays light; see check_process)."""
    code = (
        "import sys, toolkit.ablation.slots as slots\n"
        f"slots.GPU_DRIVER_NODES = ({str(tmp_path / 'no-driver')!r},)\n"
        "found = slots.make_slots(workers=2, devices=None)\n"
        "print(len(found), [s.gpus for s in found], 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split("\n")[0] == "2 [(), ()] False"


def test_a_done_run_whose_result_is_gone_is_shown_missing_and_redone(tmp_path: Path) -> None:
    """The disk wins over the ledger: a deleted run folder or a cut result.json is redone, the others are not."""
    from toolkit.ablation.progress import build_table

    spec = make_spec(tmp_path, {"full": {}}, [0, 1, 2])
    root = tmp_path / "runs"
    assert run(spec, root, tmp_path, devices="cpu", workers=1)[0] == 0
    gone, cut, kept = spec.runs()
    shutil.rmtree(gone.directory(root))
    (cut.directory(root) / "result.json").write_text('{"status": "do')
    out = io.StringIO()
    Console(file=out, width=250, color_system=None).print(
        build_table(spec, Ledger(ledger_path(root, "standin")).read(), root)
    )
    rows = {line.split("│")[2].strip(): line for line in out.getvalue().splitlines() if " full " in line}
    assert "missing" in rows["0"] and "missing" in rows["1"] and "done" in rows["2"], out.getvalue()
    assert "result.json is missing or unreadable" in rows["0"]
    code, printed = run(spec, root, tmp_path, devices="cpu", workers=1)
    assert code == 0 and "3 done" in printed
    records = Ledger(ledger_path(root, "standin")).read()
    assert [records[r.id]["attempts"] for r in (gone, cut, kept)] == [2, 2, 1]
    assert all(RunResult.read(r.directory(root) / "result.json") for r in (gone, cut, kept))


def test_cheap_checks_come_before_the_slow_validation(tmp_path: Path) -> None:
    """A second runner, an unwritable root: told before the variants are parsed (the variant below would be refused
    by that parse: it equals its baseline, so reaching it would say so instead)."""
    from toolkit.study.ledger import runner_lock

    spec = make_spec(tmp_path, {"full": {}, "same": {"model.drop_rate": 0.1}}, [0])
    root = tmp_path / "runs"
    with runner_lock(root / "standin"), pytest.raises(ToolkitError, match="is already running this ablation"):
        run(spec, root, tmp_path, validate=True)
    if Path("/sys/kernel").is_dir():  # sysfs refuses a new folder even to root (EPERM)
        with pytest.raises(OSError) as err:
            run(spec, Path("/sys/toolkit-runs"), tmp_path, validate=True)
        assert err.value.filename == "/sys/toolkit-runs"
    with pytest.raises(ToolkitError, match=r"same.*baseline"):
        run(spec, root, tmp_path, validate=True)  # the lock is free, the root writable: now the parse refuses it


def test_a_finished_study_is_not_validated_again(tmp_path: Path) -> None:
    """Every run done with its result on disk: the re-run plans nothing and parses nothing (the variant would be
    refused by the parse); once a result is gone there is something to run, and the parse runs first."""
    spec = make_spec(tmp_path, {"full": {}, "same": {"model.drop_rate": 0.1}}, [0])
    root = tmp_path / "runs"
    assert run(spec, root, tmp_path)[0] == 0  # validate=False: the runs are done
    code, out = run(spec, root, tmp_path, validate=True)
    assert code == 0 and "2 done, 0 failed, 0 unfinished" in out and len(received(root)) == 2
    (spec.runs()[1].directory(root) / "result.json").unlink()
    with pytest.raises(ToolkitError, match=r"same.*baseline"):
        run(spec, root, tmp_path, validate=True)
    assert len(received(root)) == 2


def test_a_run_that_failed_on_a_full_disk_resumes_without_retry_failed(tmp_path: Path) -> None:
    """A full disk is the machine's state, not the run's failure: pending with its reason, redone by a plain re-run."""
    spec = make_spec(tmp_path, {"full": {}, "nospace": {"model.drop_rate": 0.5}}, [0])
    root = tmp_path / "runs"
    code, out = run(spec, root, tmp_path, devices="cpu", workers=1)
    records = {r["variant"]: r for r in Ledger(ledger_path(root, "standin")).read().values()}
    assert code == 1 and records["nospace"]["status"] == "pending"
    assert "No space left on device" in records["nospace"]["reason"] and "out of space" in out
    code, out = run(spec, root, tmp_path, devices="cpu", workers=1)  # no --retry-failed
    records = {r["variant"]: r for r in Ledger(ledger_path(root, "standin")).read().values()}
    assert code == 0 and records["nospace"]["status"] == "done" and records["nospace"]["attempts"] == 2
