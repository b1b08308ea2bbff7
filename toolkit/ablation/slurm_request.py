"""The GPUs, CPUs and nodes a run's Slurm job asks for, derived from the run's trainer settings and checked.

Torch-free. A run's ``trainer.accelerator``, ``trainer.devices`` and ``trainer.num_nodes`` come from its base configs
with the spec's ``overrides:`` and its variant over them (``--set`` included). When neither ``--gpus-per-run`` nor
the spec's ``slurm: gpus_per_node`` says how many GPUs a run gets, ``accelerator: gpu`` (or ``cuda``) with an integer
``devices`` does; ``num_nodes`` gives the nodes the same way; a CPU run with ``devices: N`` (DDP on CPU inside its
one task) gets N CPUs. A request the spec itself contradicts (the spec's overrides set ``trainer.devices: 2`` and
the command line asks for 4 GPUs, or ``accelerator: cpu`` with GPUs) is refused, and so is a run without GPUs on a
partition whose nodes have GPUs: one line each, before anything is submitted. The runner appends the request to
every run's ``toolkit fit`` command (``command.fit_args``), so what the job asks for is what the run uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from toolkit.ablation.slurm_settings import SlurmSettings
from toolkit.ablation.squeue import partition_gres
from toolkit.errors import ToolkitError
from toolkit.study.spec import AblationSpec

#: the trainer settings a job's shape follows
_KEYS = ("accelerator", "devices", "num_nodes")
_GPU_ACCELERATORS = ("gpu", "cuda")


def trainer_settings(spec: AblationSpec) -> dict[str, dict[str, tuple[Any, bool]]]:
    """Per variant, each of ``trainer.accelerator|devices|num_nodes`` as (value, whether the spec itself sets it).

    The base configs give a default the runner's request may replace (as on a workstation); the spec's
    ``overrides:`` and variants (and ``--set``) state what the study asks for.
    """
    base: dict[str, Any] = {}
    for data in spec.base_data or ():
        trainer = data.get("trainer") if isinstance(data, dict) else None
        if isinstance(trainer, dict):
            base.update({k: trainer[k] for k in _KEYS if k in trainer})
    out = {}
    for variant, delta in spec.variants.items():
        merged = {**spec.overrides, **delta}
        settings = {k: (base.get(k), False) for k in _KEYS}
        settings.update({k: (merged[f"trainer.{k}"], True) for k in _KEYS if f"trainer.{k}" in merged})
        out[variant] = settings
    return out


def resolve(spec: AblationSpec, settings: SlurmSettings) -> SlurmSettings:
    """``settings`` with the GPUs, nodes and CPUs of every run filled in from the trainer settings, or a ToolkitError.

    Args:
        spec: the study (all its variants share one job shape: one job array).
        settings: the spec's ``slurm:`` block with the command line over it.
    """
    shapes = {variant: _shape(spec, variant, trainer, settings) for variant, trainer in trainer_settings(spec).items()}
    distinct = {shape: variant for variant, shape in shapes.items()}
    if len(distinct) > 1:
        (a, one), (b, other) = list(distinct.items())[:2]
        raise ToolkitError(
            f"{spec.path or spec.name}: variants '{one}' and '{other}' ask for different Slurm jobs (GPUs, nodes, "
            f"CPUs {a} vs {b}); one study is one job array: give every variant the same trainer.devices/num_nodes"
        )
    gpus, nodes, cpus = next(iter(shapes.values()))
    resolved = dataclasses.replace(settings, gpus_per_node=gpus, nodes=nodes, cpus_per_task=cpus)
    if not gpus:
        _refuse_gpu_partition(resolved.partition)
    return resolved


def _shape(
    spec: AblationSpec, variant: str, trainer: dict[str, tuple[Any, bool]], settings: SlurmSettings
) -> tuple[int, int, int | None]:
    """(GPUs per node, nodes, CPUs per task or None) of one variant's job."""
    where = f"{spec.path or spec.name}" + (f" variant '{variant}'" if len(spec.variants) > 1 else "")
    accelerator, stated_accelerator = trainer["accelerator"]
    devices, stated_devices = trainer["devices"]
    num_nodes, stated_nodes = trainer["num_nodes"]
    on_gpu = str(accelerator).lower() in _GPU_ACCELERATORS
    gpus = settings.gpus_per_node
    if gpus is None:
        gpus = _count(devices) if on_gpu else 0
    if stated_accelerator and gpus and str(accelerator).lower() == "cpu":
        raise ToolkitError(
            f"{where}: trainer.accelerator is cpu but each run asks for {gpus} GPUs; drop --gpus-per-run "
            "(slurm: gpus_per_node) or set trainer.accelerator gpu"
        )
    if stated_accelerator and on_gpu and not gpus:
        raise ToolkitError(
            f"{where}: trainer.accelerator is {accelerator} but each run asks for 0 GPUs; give --gpus-per-run N "
            "(slurm: gpus_per_node) or an integer trainer.devices"
        )
    if stated_devices and gpus and _count(devices) not in (None, gpus):
        raise ToolkitError(
            f"{where}: trainer.devices is {devices} but each run asks for {gpus} GPUs per node; make them agree "
            "(or drop one: the other gives both)"
        )
    nodes = settings.nodes
    if stated_nodes or (isinstance(num_nodes, int) and not isinstance(num_nodes, bool) and num_nodes > 1):
        if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
            raise ToolkitError(f"{where}: trainer.num_nodes {num_nodes!r}: give a whole number >= 1")
        if nodes not in (1, num_nodes):
            raise ToolkitError(
                f"{where}: trainer.num_nodes is {num_nodes} but each run asks for {nodes} nodes; make them agree "
                "(or drop --nodes: trainer.num_nodes gives it)"
            )
        nodes = num_nodes
    cpus = settings.cpus_per_task
    cpu_processes = _count(devices) if str(accelerator).lower() == "cpu" else None
    if cpus is None and not gpus and cpu_processes and cpu_processes > 1 and nodes == 1:
        cpus = cpu_processes  # DDP on CPU inside the run's one task: one CPU per process
    return gpus, nodes, cpus


def _count(devices: Any) -> int | None:
    """How many devices ``trainer.devices`` names per node (None: ``auto``/``-1``, not known before the run)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 0 else None
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text.isdigit():
            return int(text)
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
    return None


def _refuse_gpu_partition(partition: str | None) -> None:
    """A run without GPUs on a partition whose nodes have GPUs would hold a GPU node and train on its CPUs."""
    if not partition:
        return
    gres = partition_gres(partition)
    has_gpus = "gpu" in gres if gres is not None else "gpu" in partition.lower()
    if has_gpus:
        shown = f"its nodes have {gres}" if gres else "its name says GPUs"
        raise ToolkitError(
            f"--partition {partition}: {shown}, but each run asks for 0 GPUs; give --gpus-per-run N (slurm: "
            "gpus_per_node, or trainer.accelerator gpu with trainer.devices N), or pick a CPU partition"
        )
