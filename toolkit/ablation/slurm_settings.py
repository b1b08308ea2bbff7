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
#: sbatch options a ``--slurm-param``/``additional:`` pass-through may not set, and what to use instead: those with an
#: option of their own here (a pass-through would contradict it), and those the executor writes itself (submitit's
#: job array, its requeue signal, one task per run or per DDP process, its log files)
_OWN = {
    "partition": "use --partition",
    "time": "use --time-min",
    "account": "use --account",
    "qos": "use --qos",
    "mem": "use --mem",
    "mem-per-gpu": "use --mem-per-gpu",
    "constraint": "use --constraint",
    "nodes": "use --nodes (or trainer.num_nodes)",
    "ntasks": "use --nodes and --tasks-per-node",
    "ntasks-per-node": "use --tasks-per-node",
    "gpus": "use --gpus-per-run (gpus_per_node in the spec's slurm: block, or trainer.devices)",
    "gpus-per-node": "use --gpus-per-run (gpus_per_node in the spec's slurm: block, or trainer.devices)",
    "gpus-per-task": "use --gpus-per-run (gpus_per_node in the spec's slurm: block, or trainer.devices)",
    "gres": "use --gpus-per-run (gpus_per_node in the spec's slurm: block, or trainer.devices)",
    "cpus-per-task": "use --cpus-per-run",
    "cpus-per-gpu": "use --cpus-per-run",
    "array": "the executor submits one array task per run; use --array-parallelism to limit how many run at once",
    "signal": "the executor's requeue needs submitit's signal; use --signal-delay-s to say how early it comes",
    "requeue": "the executor requeues on timeout and preemption; use --max-num-timeout to bound it",
    "no-requeue": "the executor requeues on timeout and preemption; use --max-num-timeout to bound it",
    "output": "submitit writes the job's logs under <root>/<name>/slurm/ and each run its run.log",
    "error": "submitit writes the job's logs under <root>/<name>/slurm/ and each run its run.log",
    "open-mode": "submitit writes the job's logs under <root>/<name>/slurm/ and each run its run.log",
    "job-name": "the executor names the job ablate-<name>",
}


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
        gpus_per_node: GPUs per run and node (``--gpus-per-run``; default: from the run's ``trainer.accelerator``
            and ``trainer.devices``, else 0).
        array_parallelism: how many runs of the job array run at once (default: Slurm's limit).
        signal_delay_s: how many seconds before the time limit Slurm signals the job, which then saves a checkpoint
            and requeues (submitit's default: 90).
        max_num_timeout: how many times a run is requeued after a timeout (submitit's default: 3; preemptions do
            not count).
    """

    partition: str | None = field(default=None, metadata={"help": "partition"})
    time_min: int = field(default=60, metadata={"help": "time limit per run, minutes (60)"})
    account: str | None = field(default=None, metadata={"help": "account to charge"})
    qos: str | None = field(default=None, metadata={"help": "quality of service"})
    mem: str | None = field(default=None, metadata={"help": "memory per node, e.g. 32G"})
    mem_per_gpu: str | None = field(default=None, metadata={"help": "memory per GPU, e.g. 16G", "rare": True})
    constraint: str | None = field(default=None, metadata={"help": "node features, e.g. a100", "rare": True})
    setup: tuple[str, ...] = field(
        default=(),
        metadata={"help": "a shell line before each run; repeatable", "read": tuple},
    )
    additional: Mapping[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "another sbatch option key=value; repeatable",
            "option": "--slurm-param",
            "rare": True,
            "read": lambda items: parse_slurm_params(items),
        },
    )
    nodes: int = field(default=1, metadata={"help": "nodes per run (DDP; default trainer.num_nodes)"})
    tasks_per_node: int | None = field(
        default=None, metadata={"help": "DDP processes per node, one Slurm task each", "rare": True}
    )
    #: from ``--cpus-per-run`` / ``--gpus-per-run``, the options every executor takes
    cpus_per_task: int | None = field(default=None, metadata={"cli": False})
    gpus_per_node: int | None = field(default=None, metadata={"cli": False})
    array_parallelism: int | None = field(default=None, metadata={"help": "array tasks at once"})
    signal_delay_s: int | None = field(
        default=None, metadata={"help": "save and requeue this long before the limit (90)", "rare": True}
    )
    max_num_timeout: int | None = field(
        default=None, metadata={"help": "requeues after a time limit per run (3)", "rare": True}
    )

    def __post_init__(self) -> None:
        for name in ("time_min", "nodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ToolkitError(f"slurm {name.replace('_', '-')} {value!r}: give a whole number >= 1")
        for name in ("tasks_per_node", "cpus_per_task", "array_parallelism", "signal_delay_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ToolkitError(f"slurm {name.replace('_', '-')} {value!r}: give a whole number >= 1")
        for name in ("gpus_per_node", "max_num_timeout"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ToolkitError(f"slurm {name.replace('_', '-')} {value!r}: give a whole number >= 0")
        if self.mem and self.mem_per_gpu:
            raise ToolkitError(
                f"slurm mem {self.mem!r} and mem-per-gpu {self.mem_per_gpu!r}: Slurm takes one of them; drop the other"
            )
        clash = sorted(k for k in self.additional if str(k).replace("_", "-") in _OWN)
        if clash:
            key = clash[0]
            hint = _OWN[str(key).replace("_", "-")]
            kind = "has an option of its own" if hint.startswith("use ") else "belongs to the executor"
            raise ToolkitError(f"slurm parameter {key!r} {kind}: {hint} (not --slurm-param or slurm: additional)")

    @property
    def gpus(self) -> int:
        """GPUs per run and node (0: a CPU run)."""
        return self.gpus_per_node or 0

    def tasks(self, gpus: int) -> int:
        """Tasks per node of one run's job."""
        return self.tasks_per_node or (max(gpus, 1) if self.nodes > 1 else 1)

    def task_per_process(self, gpus: int) -> bool:
        """Whether the run is one Slurm task per DDP process (multi-node or several tasks per node)."""
        return self.nodes > 1 or self.tasks(gpus) > 1

    def parameters(self, name: str) -> dict[str, Any]:
        """submitit's ``SlurmExecutor`` parameters for the job array of a study's runs."""
        gpus = self.gpus
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
        for key in ("array_parallelism", "signal_delay_s"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        if self.additional:
            params["additional_parameters"] = {str(k).replace("-", "_"): v for k, v in self.additional.items()}
        return params

    def merged(self, given: Mapping[str, Any]) -> SlurmSettings:
        """These settings with the options ``given`` (None: not given) put over them (command line over spec)."""
        changes = {k: v for k, v in given.items() if v is not None and v != () and v != {}}
        if "additional" in changes:
            changes["additional"] = {**self.additional, **changes["additional"]}
        return dataclasses.replace(self, **changes)


def slurm_field_names() -> list[str]:
    """The settings' field names: the spec's ``slurm:`` keys, and (dashed) the command line's Slurm options."""
    return [f.name for f in dataclasses.fields(SlurmSettings)]


def settings_from_spec(block: Any, where: str) -> SlurmSettings:
    """A spec's ``slurm:`` mapping as settings; an unknown key or a wrong type is one line naming it."""
    if block is None:
        return SlurmSettings()
    if not isinstance(block, dict):
        raise ToolkitError(f"{where}: 'slurm' maps options to values, e.g. slurm: {{account: proj, qos: normal}}")
    names = slurm_field_names()
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
