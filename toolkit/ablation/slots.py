"""The slots of this machine: which GPUs (``CUDA_VISIBLE_DEVICES``) and how many CPU threads each local run gets.

On CPU a run gets 1 thread unless ``--cpus-per-run`` says otherwise, never derived from ``--workers``: the thread
count changes the order of float reductions, so a seed's numbers would depend on how many runs share the machine.
GPUs are counted without the CUDA driver (the driver's nodes, ``CUDA_VISIBLE_DEVICES``, NVML), so the runner stays
torch-free. Used by the local executor (:mod:`toolkit.ablation.local`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.errors import ToolkitError

#: what a GPU driver creates: NVIDIA's (``/proc/driver/nvidia``, ``/dev/nvidiactl``) and ROCm's (``/dev/kfd``)
GPU_DRIVER_NODES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")


@dataclass(frozen=True)
class Slot:
    """Where one run executes: its GPUs (empty on CPU) and the CPU threads it may use."""

    index: int
    gpus: tuple[str, ...] = ()
    threads: int = 1

    def env(self) -> dict[str, str]:
        """The environment variables that pin a run to this slot."""
        threads = str(self.threads)
        return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    if not any(os.path.exists(node) for node in GPU_DRIVER_NODES):
        # no GPU driver, no GPU: the runner stays torch-free (importing torch to count 0 GPUs cost ~1-2.6 s, and a
        # runner holding torch checks the variants in-process, importing Lightning too: ~6 s on a 2-core machine)
        return []
    # count through NVML: a CUDA context in the runner is never needed (the runs own the GPUs)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def physical_gpus(devices: Sequence[str]) -> list[str]:
    """``--devices`` as the GPUs a run's ``CUDA_VISIBLE_DEVICES`` must name.

    Under an inherited ``CUDA_VISIBLE_DEVICES`` (a Slurm allocation, a shared node: ``4,5``) CUDA numbers the visible
    GPUs 0..n-1, so ``--devices 0,1`` means the first two of them, GPUs 4 and 5; writing ``0,1`` into a run's
    environment would put it on GPUs the runner was never given. Without one, the ids are the machine's own.
    """
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return list(devices)
    visible = visible_gpus()
    out = []
    for device in devices:
        if int(device) >= len(visible):
            raise ToolkitError(
                f"--devices {','.join(devices)}: GPU {device} is not among the {len(visible)} visible ones "
                f"(CUDA_VISIBLE_DEVICES={inherited}); give indices 0..{len(visible) - 1}"
            )
        out.append(visible[int(device)])
    return out


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for one DDP run's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_env(slot: Slot) -> dict[str, str]:
    """The environment a run gets on ``slot``: the slot's pinning, and its own ``MASTER_PORT`` when it trains DDP
    on several GPUs, so concurrent runs (or one that inherited the runner's ``MASTER_PORT``) never share a port."""
    env = slot.env()
    if len(slot.gpus) > 1:
        env["MASTER_PORT"] = str(free_port())
    return env


def make_slots(
    *,
    workers: int | None,
    devices: Sequence[str] | None,
    gpus_per_run: int = 1,
    cpus_per_run: int | None = None,
    cpu_count: int | None = None,
) -> list[Slot]:
    """Split the machine into slots.

    Args:
        workers: runs at once; on GPUs at most one per ``gpus_per_run`` devices (default: as many as fit), on CPU
            default 1.
        devices: GPU ids, or an empty list for CPU only; None means every visible GPU.
        gpus_per_run: GPUs per run (DDP inside the run when more than one).
        cpus_per_run: CPU threads per run; default on CPU 1 (fixed, so results do not depend on ``workers``), on
            GPUs the CPUs split evenly between the workers (they only feed the GPU).
        cpu_count: CPUs available (default: this process's CPU affinity).
    """
    cpu_count = cpu_count or len(os.sched_getaffinity(0))
    gpus = visible_gpus() if devices is None else physical_gpus(devices)
    if workers is not None and workers < 1:
        raise ToolkitError(f"--workers {workers}: give at least 1")
    if gpus:
        if gpus_per_run < 1 or gpus_per_run > len(gpus):
            raise ToolkitError(f"--gpus-per-run {gpus_per_run} does not fit on GPUs {','.join(gpus)}; lower it")
        count = len(gpus) // gpus_per_run
        count = min(count, workers) if workers else count
        threads = cpus_per_run or max(1, cpu_count // count)
        return [Slot(i, tuple(gpus[i * gpus_per_run : (i + 1) * gpus_per_run]), threads) for i in range(count)]
    if cpus_per_run is not None and cpus_per_run < 1:
        raise ToolkitError(f"--cpus-per-run {cpus_per_run}: give at least 1")
    return [Slot(i, (), cpus_per_run or 1) for i in range(workers or 1)]


def parse_devices(text: str | None) -> list[str] | None:
    """``None`` -> every visible GPU; ``cpu``/``none`` -> no GPU; ``0,1`` -> those GPU ids."""
    if text is None:
        return None
    if text.strip().lower() in ("cpu", "none", ""):
        return []
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if not all(d.isdigit() for d in devices):
        raise ToolkitError(f"--devices {text!r}: give GPU ids like 0,1,2,3, or cpu")
    return devices
