"""-q/-v and the one place third-party noise is filtered (``toolkit.quiet``), each level in a fresh interpreter.

A level changes process-wide state (warnings, logging, the environment W&B reads), so each case runs in its own
interpreter (no torch: ~0.2 s): Lightning's loggers by their real names, W&B by a real offline run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.quiet import NORMAL, QUIET, VERBOSE, take_verbosity

#: what Lightning and a toolkit callback print, by the loggers and calls they use
NOISE = """
import logging, sys, warnings
from toolkit import quiet
quiet.set_verbosity(int(sys.argv[1]))
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)  # Lightning's handler prints INFO
rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
rank_zero.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)")
rank_zero.info("Restoring states from the checkpoint path at /tmp/.lr_find_0a1b2c3d-4e5f.ckpt")
rank_zero.info("Restoring states from the checkpoint path at /runs/a/checkpoints/best-epoch003.ckpt")
for _ in range(3):  # doctor builds several Trainers
    rank_zero.info("GPU available: False, used: False")
def rank_zero_warn(message):
    warnings.warn(message, UserWarning, stacklevel=2)
for _ in range(2):
    rank_zero_warn("update/parameter ratio of param group 'head' is 5.1e-02, far from ~1e-03")
rank_zero_warn("another warning")
print("result: runs/x/result.json")
import os
print("WANDB_QUIET", os.environ.get("WANDB_QUIET"), "WANDB_SILENT", os.environ.get("WANDB_SILENT"), file=sys.stderr)
"""


def noise(level: int, folder: Path) -> tuple[str, str]:
    script = folder / "noise.py"  # a file, so that a warning's source line can be read (and shown, unfiltered)
    script.write_text(NOISE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_QUIET", "WANDB_SILENT"))}
    done = subprocess.run([sys.executable, str(script), str(level)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_every_subcommand_takes_q_and_v_anywhere_before_a_double_dash() -> None:
    assert take_verbosity(["fit", "--config", "a.yaml"]) == (["fit", "--config", "a.yaml"], NORMAL)
    assert take_verbosity(["ablate", "run", "-q", "spec.yaml"]) == (["ablate", "run", "spec.yaml"], QUIET)
    assert take_verbosity(["doctor", "--verbose", "--config", "a.yaml"]) == (["doctor", "--config", "a.yaml"], VERBOSE)
    assert take_verbosity(["report", "-q", "s.yaml", "-v"]) == (["report", "s.yaml"], VERBOSE)  # the last wins
    assert take_verbosity(["fit", "--", "-q"]) == (["fit", "--", "-q"], NORMAL)  # after --: an argument


def test_the_normal_level_drops_adverts_temporary_paths_and_repeats_and_shows_a_warning_as_one_line(
    tmp_path: Path,
) -> None:
    out, err = noise(NORMAL, tmp_path)
    assert out == "result: runs/x/result.json\n"
    lines = err.splitlines()
    assert not [line for line in lines if "Tip:" in line or "lr_find" in line or "rank_zero_warn(" in line], err
    assert "Restoring states from the checkpoint path at /runs/a/checkpoints/best-epoch003.ckpt" in lines  # a real one
    assert lines.count("GPU available: False, used: False") == 1
    warned = [line for line in lines if "update/parameter ratio" in line]
    assert len(warned) == 1 and warned[0].endswith("UserWarning: update/parameter ratio of param group 'head' is "
                                                   "5.1e-02, far from ~1e-03")  # fmt: skip
    assert any(line.endswith("UserWarning: another warning") for line in lines)
    assert not [line for line in lines if line.startswith("  ")]  # no source line under a warning
    assert "WANDB_QUIET true WANDB_SILENT None" in lines


def test_verbose_shows_everything_and_quiet_only_results(tmp_path: Path) -> None:
    out, err = noise(VERBOSE, tmp_path)
    assert out == "result: runs/x/result.json\n"
    assert "Tip:" in err and ".lr_find_" in err and err.count("GPU available") == 3 and "rank_zero_warn(" in err
    assert "WANDB_QUIET None WANDB_SILENT None" in err
    out, err = noise(QUIET, tmp_path)
    assert out == "result: runs/x/result.json\n"
    assert err.splitlines() == ["WANDB_QUIET true WANDB_SILENT true"], err


WANDB_RUN = """
import sys
from toolkit import quiet
quiet.set_verbosity(quiet.NORMAL)
import wandb
run = wandb.init(project="quiet", mode="offline", dir=sys.argv[1])
for step in range(3):
    run.log({"train/loss": 1.0 / (step + 1), "val/acc": 0.1 * step})
run.summary["test/acc"] = 0.5
run.finish()
"""


@pytest.mark.slow
def test_a_w_and_b_run_at_the_normal_level_prints_no_run_summary_and_no_sync_hint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_QUIET", "WANDB_SILENT"))}
    done = subprocess.run(
        [sys.executable, "-c", WANDB_RUN, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for noise_line in ("Run history", "Run summary", "wandb sync", "Tracking run with wandb version", "Find logs at"):
        assert noise_line not in done.stdout + done.stderr, done.stderr
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))  # the run was logged all the same
