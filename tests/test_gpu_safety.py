"""GPU safety of the local executor, on any machine: device ids through an inherited CUDA_VISIBLE_DEVICES, one
rendezvous port per DDP run, and a warm parent that never initialises CUDA (its forks could not use it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolkit.ablation.slots import Slot, make_slots, run_env
from toolkit.errors import ToolkitError


def test_devices_are_indices_into_an_inherited_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    slots = make_slots(workers=None, devices=["0", "2"], gpus_per_run=1)
    assert [s.gpus for s in slots] == [("4",), ("6",)]  # CUDA's 0 and 2 under 4,5,6
    assert [s.env()["CUDA_VISIBLE_DEVICES"] for s in slots] == ["4", "6"]
    with pytest.raises(ToolkitError, match=r"GPU 3 is not among the 3 visible .*CUDA_VISIBLE_DEVICES=4,5,6"):
        make_slots(workers=None, devices=["3"], gpus_per_run=1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [s.gpus for s in make_slots(workers=None, devices=["0", "2"], gpus_per_run=1)] == [("0",), ("2",)]


def test_each_multi_gpu_run_gets_its_own_rendezvous_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_PORT", "29500")  # e.g. a runner started inside another distributed job
    a, b = Slot(0, ("0", "1")), Slot(1, ("2", "3"))
    ports = {run_env(a)["MASTER_PORT"], run_env(b)["MASTER_PORT"], run_env(a)["MASTER_PORT"]}
    assert len(ports) == 3 and "29500" not in ports
    assert "MASTER_PORT" not in run_env(Slot(2, ("4",)))  # one GPU: no rendezvous


#: imported first by every Python process started with it on PYTHONPATH: records which process asks CUDA
PROBE = textwrap.dedent(
    """
    import os
    import torch

    def _probe(name, real):
        def called(*args, **kwargs):
            with open(os.environ["CUDA_PROBE_FILE"], "a") as fh:
                fh.write(f"{os.getpid()} {name}\\n")
            return real(*args, **kwargs)
        return called

    torch._C._cuda_getDeviceCount = _probe("getDeviceCount", torch._C._cuda_getDeviceCount)
    torch.cuda._lazy_init = _probe("lazy_init", torch.cuda._lazy_init)
    """
)


@pytest.mark.slow
def test_warm_parent_never_initialises_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent imports torch, Lightning, timm and wandb and forks runs, and never asks the CUDA driver."""
    from toolkit.ablation.warm import WarmPool

    (tmp_path / "sitecustomize.py").write_text(PROBE)
    records = tmp_path / "cuda-calls.txt"
    env = {"CUDA_PROBE_FILE": str(records), "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    # the probe sees a CUDA query when one happens (NVML-based check off, as in a process that did not set it)
    plain = {k: v for k, v in {**os.environ, **env}.items() if k != "PYTORCH_NVML_BASED_CUDA_CHECK"}
    subprocess.run([sys.executable, "-c", "import torch; torch.cuda.device_count()"], env=plain, check=True)
    assert records.read_text().split()[1] == "getDeviceCount"
    records.unlink()

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)  # the parent must set it itself
    pool = WarmPool()
    try:
        runs = [pool.start(["weights"], {}, tmp_path / f"run{i}.log") for i in range(2)]
        assert [run.wait(120) for run in runs] == [0, 0]
        parent = pool.proc.pid
    finally:
        pool.close()
    calls = records.read_text().splitlines() if records.exists() else []
    assert not [line for line in calls if line.split()[0] == str(parent)], calls
    assert "backbone" in (tmp_path / "run0.log").read_text()  # the forked runs did run
