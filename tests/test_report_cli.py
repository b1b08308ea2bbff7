"""``toolkit report`` as users run it: real subprocesses, a real spec file, the synthetic ablation's real logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import toolkit_cmd
from report_fixtures import SYNTH_FINISHED, synthetic_ablation

SPEC = """\
name: synth
base: [{base}]
seeds: [0, 1, 2]
baseline: full
variants:
  full: {{}}
  no-bn: {{model.batchnorm: "off"}}
  snapshot: {{model.batchnorm: "on"}}
metrics: [test/acc, test/f1]
project: toolkit-tests
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    synth = synthetic_ablation(root / "runs")
    base = root / "base.yaml"
    base.write_text("trainer: {max_epochs: 1}\n")
    path = root / "synth.yaml"
    path.write_text(SPEC.format(base=base))
    return {"path": path, "root": synth["root"], "dir": root}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_pulls_in_neither_torch_nor_lightning(tmp_path: Path) -> None:
    proc = run_python(
        "import sys, toolkit.report.cli, toolkit.report.build\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules)\n"
        "assert not heavy, heavy",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_report_command_writes_the_report_without_torch(spec: dict) -> None:
    """A whole report in a fresh process: still no torch or Lightning imported at the end."""
    out = spec["dir"] / "out-inproc"
    argv = [str(spec["path"]), "--root", str(spec["root"]), "--out", str(out)]
    proc = run_python(
        "import sys\nfrom toolkit.report.cli import main\n"
        f"rc = main({argv!r})\n"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules\nsys.exit(rc)",
        spec["dir"],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## Ablation: synth") and "| Variant" in proc.stdout
    table = pd.read_csv(out / "table.csv")
    assert set(table["variant"]) == {"full", "no-bn", "snapshot"}
    assert int(table.loc[table["variant"] == "full", "n"].iloc[0]) == 3
    # the runs that do not count are listed once, under the table on stdout, not again on stderr
    assert proc.stdout.count("### Runs not counted") == 1 and "not counted:" not in proc.stderr


@pytest.mark.slow
def test_console_command_default_out_and_errors(spec: dict) -> None:
    proc = toolkit_cmd("report", str(spec["path"]), "--root", str(spec["root"]), cwd=spec["dir"])
    assert proc.returncode == 0, proc.stderr
    out = Path(spec["root"]) / "synth" / "report"  # beside the runs, whatever the working directory
    assert (out / "table.md").read_text() in proc.stdout + "\n"
    assert len(pd.read_csv(out / "runs.csv")) == len(SYNTH_FINISHED) + 5

    missing = toolkit_cmd("report", "no-such-spec.yaml", cwd=spec["dir"])
    assert missing.returncode == 2 and missing.stderr.startswith("error: ablation spec 'no-such-spec.yaml' not found")
    empty = toolkit_cmd("report", str(spec["path"]), "--root", str(spec["dir"] / "elsewhere"), cwd=spec["dir"])
    assert empty.returncode == 2 and "error: no runs folder" in empty.stderr and "Traceback" not in empty.stderr


def test_a_full_disk_is_one_line_naming_the_file_and_the_earlier_report_stays_whole(spec: dict) -> None:
    """A file-size limit (EFBIG, as a full disk's ENOSPC) mid-report: exit 2 naming the file; no 0-byte runs.csv."""
    out = spec["dir"] / "out-full"
    argv = ["report", str(spec["path"]), "--root", str(spec["root"]), "--out", str(out)]
    first = run_python(f"from toolkit.cli import main\nmain({argv!r})", spec["dir"])
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    full = run_python(
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
        f"from toolkit.cli import main\nmain({argv!r})",
        spec["dir"],
    )
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and len(errors) == 1 and "Traceback" not in full.stderr, full.stderr
    assert errors[0].startswith(f"error: cannot write {out / 'runs.csv'}: File too large"), errors
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # whole, and no temporary file left


def test_report_takes_the_set_and_seeds_of_ablate_run_and_checks_them_against_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``toolkit report SPEC --seeds ... --set k=v`` as the study was run: its runs are found (the table has every
    seed); seeds or overrides the ledger does not record for the study are refused, naming what it recorded; and
    without them the report uses what the ledger recorded (never silently another table)."""
    from toolkit.errors import ToolkitError
    from toolkit.report.cli import main
    from toolkit.study.ledger import Ledger, ledger_path

    synth = synthetic_ablation(tmp_path / "runs")
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {max_epochs: 1}\n")
    path = tmp_path / "synth.yaml"
    path.write_text(SPEC.format(base=base).replace("seeds: [0, 1, 2]", "seeds: [0]"))
    with Ledger(ledger_path(synth["root"], "synth")).edit() as records:
        made = {"seeds": [0, 1, 2], "set": {"trainer.max_epochs": 1}}  # what ablate run --seeds 0-2 --set records
        records["x"] = {"id": "x", "variant": "full", "seed": 0, "cli_changes": made}
    out = tmp_path / "out"
    argv = [str(path), "--root", str(synth["root"]), "--out", str(out), "--seeds", "0-2"]
    assert main([*argv, "--set", "trainer.max_epochs=1"]) == 0
    table = pd.read_csv(out / "table.csv")
    assert int(table.loc[table["variant"] == "full", "n"].iloc[0]) == 3  # the spec alone says seed 0 only
    with pytest.raises(ToolkitError, match=r'--set \{"trainer.max_epochs": 2\}: the runs of synth .* were made with'):
        main([*argv, "--set", "trainer.max_epochs=2"])
    with pytest.raises(ToolkitError, match=r"--seeds 0,1: the runs of synth .* were made with --seeds 0,1,2"):
        main([str(path), "--root", str(synth["root"]), "--out", str(out), "--seeds", "0,1"])
    # no options: the ledger's --seeds and --set, said on stderr, and the same 3-seed table
    capsys.readouterr()
    assert main([str(path), "--root", str(synth["root"]), "--out", str(tmp_path / "plain")]) == 0
    assert "the runs were made with --seeds 0,1,2 --set trainer.max_epochs=1" in capsys.readouterr().err
    plain = pd.read_csv(tmp_path / "plain" / "table.csv")
    assert int(plain.loc[plain["variant"] == "full", "n"].iloc[0]) == 3
    # a study run without --seeds: other seeds than the spec's are refused, naming the spec's
    with Ledger(ledger_path(synth["root"], "synth")).edit() as records:
        records["x"] = {"id": "x", "variant": "full", "seed": 0}
    with pytest.raises(ToolkitError, match=r"--seeds 0,1: the runs of synth .* were made with the spec's seeds \(0\);"):
        main([str(path), "--root", str(synth["root"]), "--out", str(out), "--seeds", "0,1"])
    # runs made by two command lines: the report will not guess which table is meant
    with Ledger(ledger_path(synth["root"], "synth")).edit() as records:
        records["y"] = {"id": "y", "variant": "full", "seed": 1, "cli_changes": {"seeds": [0, 1]}}
    with pytest.raises(ToolkitError, match=r"were made by several command lines .*; pass --seeds/--set"):
        main([str(path), "--root", str(synth["root"]), "--out", str(tmp_path / "plain")])
