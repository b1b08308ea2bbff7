"""Our ``.wandb`` log reader agrees with wandb's own reader (``wandb leet inspect --summary --json``) on real logs.

We read offline logs ourselves because wandb has no public Python reader (see toolkit/report/wandb_log.py); this
test pins that claim to the wandb versions in pyproject: run id, state, exit code, config, summary and the last step
must match wandb-core's view of the same file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import synthetic_ablation

from toolkit.report.wandb_log import read_run

#: our state names -> wandb-core's
STATES = {"finished": "finished", "failed": "failed", "unfinished": "running"}
WANDB = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))


def wandb_summary(log: Path) -> dict:
    # the environment's own wandb, even when PYTHONPATH puts another version first (how older versions' logs are
    # checked: written by that version, read by this one's wandb-core)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(log)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _plain(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if not k.startswith("_")}


def _same(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


@pytest.mark.slow
def test_reader_matches_wandb_leet_inspect(tmp_path_factory: pytest.TempPathFactory) -> None:
    synth = synthetic_ablation(tmp_path_factory.getbasetemp() / "report-synth")
    logs = [*synth["logs"].values(), synth["failed"], synth["killed"]]
    for log in logs:
        ours, theirs = read_run(log), wandb_summary(log)
        assert ours.run_id == theirs["run_id"], log
        assert ours.exit_code == theirs.get("exit_code"), log
        assert STATES[ours.state] == theirs["state"], log  # a killed run is still "running" to wandb
        assert _same(_plain(ours.summary), _plain(theirs["summary"])), (log, ours.summary, theirs["summary"])
        config = {k: v for k, v in theirs["config"].items() if k != "_wandb"}
        assert _same({k: v for k, v in ours.config.items() if k != "_wandb"}, config), log
        if ours.history:
            assert ours.history[-1].get("_step") == theirs["step"], log
