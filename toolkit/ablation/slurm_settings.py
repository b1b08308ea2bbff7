"""What a Slurm cluster asks of each run's job: account, QOS, memory, constraints, setup lines, any sbatch option.

Torch- and submitit-free: ``toolkit ablate run``/``toolkit search`` build it from their options and the spec's
``slurm:`` block (the command line wins), and :mod:`toolkit.ablation.slurm` turns it into submitit's parameters.
A run normally is one Slurm task that starts ``toolkit fit`` on the task's GPUs (DDP inside the process when it has
several). With ``nodes > 1`` or ``tasks_per_node > 1`` a run is one task per DDP process instead, across nodes:
Lightning's ``SLURMEnvironment`` reads the ranks from Slurm, and task 0 alone records the run in the ledger.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import ToolkitError

#: CPUs per GPU when a GPU run does not say (data loading feeds the GPU); a CPU run gets 1 (its thread count is
#: part of its numbers)
CPUS_PER_GPU = 4
#: sbatch options that have an option of their own here (a pass-through of them would contradict it)
_OWN = ("partition", "time", "account", "qos", "mem", "mem-per-gpu", "constraint", "nodes", "ntasks-per-node")


@dataclass(frozen=True)
class SlurmSettings:
    """The sbatch options of every run's job.

    Args:
        partition: the partition (None: the cluster's default).
        time_min: time limit per run, minutes.
        account: the account charged (``--account``).
        qos: quality of service (``--qos``).
        mem: memory per node, e.g. ``32G`` (``--mem``).
        mem_per_gpu: memory per GPU, e.g. ``16G`` (``--mem-per-gpu``).
        constraint: node features, e.g. ``a100`` (``--constraint``).
        setup: shell lines run before each task (``module load cuda``, ``source .venv/bin/activate``).
        additional: any other sbatch option, by its long name (``{exclude: node7, mail-type: END}``).
        nodes: nodes per run; above 1 a run trains with multi-node DDP (one task per process).
        tasks_per_node: DDP processes per node when a run is one task per process (default: its GPUs per node
            when ``nodes > 1``, else 1: one task that starts its own DDP processes).
        cpus_per_task: CPUs per task (default: 1 on CPU, ``CPUS_PER_GPU`` per GPU of the task).
    """

    partition: str | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    mem_per_gpu: str | None = None
    constraint: str | None = None
    setup: tuple[str, ...] = ()
    additional: Mapping[str, Any] = field(default_factory=dict)
    nodes: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None

    def __post_init__(self) -> None:
        for name in ("time_min", "nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ToolkitError(f"slurm {name.replace('_', '-')} {value!r}: give a whole number >= 1")
        for name in ("tasks_per_node", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ToolkitError(f"slurm {name.replace('_', '-')} {value!r}: give a whole number >= 1")
        if self.mem and self.mem_per_gpu:
            raise ToolkitError(
                f"slurm mem {self.mem!r} and mem-per-gpu {self.mem_per_gpu!r}: Slurm takes one of them; drop the other"
            )
        clash = sorted(k for k in self.additional if str(k).replace("_", "-") in _OWN)
        if clash:
            raise ToolkitError(
                f"slurm parameter {clash[0]!r} has an option of its own: use --{clash[0].replace('_', '-')} "
                "(or the spec's slurm: block) instead of passing it through"
            )

    def tasks(self, gpus: int) -> int:
        """Tasks per node of one run's job."""
        return self.tasks_per_node or (max(gpus, 1) if self.nodes > 1 else 1)

    def task_per_process(self, gpus: int) -> bool:
        """Whether the run is one Slurm task per DDP process (multi-node or several tasks per node)."""
        return self.nodes > 1 or self.tasks(gpus) > 1

    def parameters(self, name: str, gpus: int, array_parallelism: int | None) -> dict[str, Any]:
        """submitit's ``SlurmExecutor`` parameters for the job array of a study's runs (``gpus`` per node)."""
        tasks = self.tasks(gpus)
        gpus_per_task = max(1, gpus // tasks) if gpus else 0
        params: dict[str, Any] = {
            "job_name": name,
            "time": self.time_min,
            "nodes": self.nodes,
            "ntasks_per_node": tasks,
            "cpus_per_task": self.cpus_per_task or (CPUS_PER_GPU * gpus_per_task if gpus else 1),
        }
        for key in ("partition", "account", "qos", "mem", "mem_per_gpu", "constraint"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if gpus:
            params["gpus_per_node"] = gpus
        if self.setup:
            params["setup"] = list(self.setup)
        if array_parallelism:
            params["array_parallelism"] = array_parallelism
        if self.additional:
            params["additional_parameters"] = {str(k).replace("-", "_"): v for k, v in self.additional.items()}
        return params

    def merged(self, given: Mapping[str, Any]) -> SlurmSettings:
        """These settings with the options ``given`` (None: not given) put over them (command line over spec)."""
        changes = {k: v for k, v in given.items() if v is not None and v != () and v != {}}
        if "additional" in changes:
            changes["additional"] = {**self.additional, **changes["additional"]}
        return dataclasses.replace(self, **changes)


def settings_from_spec(block: Any, where: str) -> SlurmSettings:
    """A spec's ``slurm:`` mapping as settings; an unknown key or a wrong type is one line naming it."""
    if block is None:
        return SlurmSettings()
    if not isinstance(block, dict):
        raise ToolkitError(f"{where}: 'slurm' maps options to values, e.g. slurm: {{account: proj, qos: normal}}")
    names = [f.name for f in dataclasses.fields(SlurmSettings)]
    for key in block:
        if key not in names:
            raise ToolkitError(f"{where}: slurm: unknown key {key!r}; allowed: {', '.join(names)}")
    values = dict(block)
    if isinstance(values.get("setup"), str):
        values["setup"] = [values["setup"]]
    if not isinstance(values.get("setup", []), list) or not all(isinstance(s, str) for s in values.get("setup", [])):
        raise ToolkitError(f"{where}: slurm: setup lists shell lines, e.g. setup: [module load cuda]")
    values["setup"] = tuple(values.get("setup", ()))
    if not isinstance(values.get("additional", {}), dict):
        raise ToolkitError(f"{where}: slurm: additional maps sbatch options to values, e.g. {{exclude: node7}}")
    for key in ("partition", "account", "qos", "mem", "mem_per_gpu", "constraint"):
        if key in values and values[key] is not None and not isinstance(values[key], str):
            values[key] = str(values[key])
    return SlurmSettings(**values)


def parse_slurm_params(items: list[str] | None) -> dict[str, Any]:
    """``--slurm-param key=value`` items as a mapping (a bare ``key`` is a flag, e.g. ``exclusive``: ``True``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not key.strip() or key.strip().startswith("-"):
            raise ToolkitError(f"--slurm-param {item!r}: write key=value without dashes, e.g. exclude=node7")
        out[key.strip()] = value if sep else True
    return out
