"""Slurm job settings: the spec's ``slurm:`` block under the command line's options, as submitit parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import DIGITS

from toolkit.ablation.cli import build_parser
from toolkit.ablation.options import runner_options
from toolkit.ablation.runner import make_executor
from toolkit.ablation.slurm_settings import CPUS_PER_GPU, SlurmSettings, settings_from_spec
from toolkit.cli_options import parse
from toolkit.errors import ToolkitError
from toolkit.study.spec import load_spec


def _spec(tmp_path: Path, slurm: object) -> Path:
    raw = {"name": "s", "base": [DIGITS], "seeds": [0], "variants": {"full": {}}, "slurm": slurm}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_spec_block_under_command_line_becomes_the_jobs_sbatch_options(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(tmp_path, {"account": "proj42", "qos": "low", "setup": ["module load cuda"], "time_min": 30})
    )
    argv = ["run", "s.yaml", "--executor", "slurm", "--qos", "high", "--mem_per_gpu", "16G", "--gpus-per-run", "2"]
    argv += ["--slurm-param", "exclude=node7", "--slurm_param", "exclusive", "--setup", "conda activate x"]
    options = runner_options(parse(build_parser(), argv, "ablate").run)
    executor = make_executor(options, spec)
    params = executor.settings.parameters("ablate-s")
    assert params == {
        "job_name": "ablate-s",
        "time": 30,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 2 * CPUS_PER_GPU,  # a GPU run is fed by 4 CPUs per GPU unless --cpus-per-run says
        "account": "proj42",  # from the spec
        "qos": "high",  # the command line wins
        "mem_per_gpu": "16G",
        "gpus_per_node": 2,
        "setup": ["conda activate x"],  # the command line's lines replace the spec's
        "additional_parameters": {"exclude": "node7", "exclusive": True},
    }
    # a CPU run keeps one thread (its numbers depend on it); multi-node DDP is one task per GPU
    assert SlurmSettings().parameters("x")["cpus_per_task"] == 1
    multi = SlurmSettings(nodes=2, gpus_per_node=4, array_parallelism=8).parameters("x")
    assert (multi["nodes"], multi["ntasks_per_node"], multi["cpus_per_task"], multi["array_parallelism"]) == (
        2,
        4,
        CPUS_PER_GPU,
        8,
    )


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"acount": "x"}, "slurm: unknown key 'acount'; allowed: partition, time_min, account"),
        ({"setup": [1]}, "slurm: setup lists shell lines"),
        ({"additional": {"qos": "x"}}, "slurm parameter 'qos' has an option of its own: use --qos"),
        ({"nodes": 0}, "slurm nodes 0: give a whole number >= 1"),
        ({"mem": "8G", "mem_per_gpu": "4G"}, "Slurm takes one of them"),
        ("gpu", "'slurm' maps sbatch options to values"),
    ],
)
def test_bad_slurm_blocks_are_one_line(tmp_path: Path, block: object, message: str) -> None:
    with pytest.raises(ToolkitError, match=message) as err:
        spec = load_spec(_spec(tmp_path, block))
        settings_from_spec(spec.slurm, spec.path)
    assert "\n" not in str(err.value)


def test_a_passed_through_option_cannot_contradict_its_own_option() -> None:
    argv = ["run", "s.yaml", "--executor", "slurm", "--slurm-param", "time=5"]
    options = runner_options(parse(build_parser(), argv, "ablate").run)
    with pytest.raises(ToolkitError, match="'time' has an option of its own: use --time-min "):
        SlurmSettings().merged(options.executor_options)


@pytest.mark.parametrize(
    ("param", "hint"),
    [
        ("array=0-3%1", "one array task per run; use --array-parallelism"),
        ("signal=USR1@300", "use --signal-delay-s"),
        ("gpus-per-node=4", "use --gpus-per-run"),
        ("gres=gpu:2", "use --gpus-per-run"),
        ("cpus_per_task=8", "use --cpus-per-run"),
        ("ntasks=2", "use --nodes and --tasks-per-node"),
        ("output=x.log", "under <root>/<name>/slurm/"),
        ("requeue", "use --max-num-timeout"),
    ],
)
def test_slurm_params_the_executor_owns_are_refused_naming_the_option(param: str, hint: str) -> None:
    options = runner_options(
        parse(build_parser(), ["run", "s.yaml", "--executor", "slurm", "--slurm-param", param], "ablate").run
    )
    with pytest.raises(ToolkitError, match="slurm parameter") as err:
        SlurmSettings().merged(options.executor_options)
    assert hint in str(err.value) and "\n" not in str(err.value)


def _executor(tmp_path: Path, argv: list[str], slurm: object = None, **spec: object) -> object:
    raw = {"name": "s", "base": [DIGITS], "seeds": [0], "variants": {"full": {}}, "slurm": slurm, **spec}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    options = runner_options(parse(build_parser(), ["run", str(path), "--executor", "slurm", *argv], "ablate").run)
    return make_executor(options, load_spec(path))


def test_gpus_nodes_and_cpus_come_from_the_spec_block_or_the_trainer_settings(tmp_path: Path) -> None:
    # the spec's slurm: block takes what --help says belongs there
    block = _executor(tmp_path, [], {"gpus_per_node": 2, "array_parallelism": 3, "signal_delay_s": 120})
    assert (block.gpus, block.parallel) == (2, 3)
    params = block.settings.parameters("x")
    assert (params["gpus_per_node"], params["array_parallelism"], params["signal_delay_s"]) == (2, 3, 120)
    # trainer.accelerator gpu + devices 4 + num_nodes 2 in the spec: a 2-node job of 4 GPUs and 4 tasks per node
    trainer = {"trainer.accelerator": "gpu", "trainer.devices": 4, "trainer.num_nodes": 2}
    derived = _executor(tmp_path, [], overrides=trainer)
    params = derived.settings.parameters("x")
    assert (params["gpus_per_node"], params["nodes"], params["ntasks_per_node"]) == (4, 2, 4)
    assert params["cpus_per_task"] == CPUS_PER_GPU
    # DDP on CPU in one task gets a CPU per process; the base config's cpu/devices 1 keeps a CPU run at one CPU
    cpu = _executor(tmp_path, [], overrides={"trainer.devices": 2})
    assert (cpu.gpus, cpu.settings.parameters("x")["cpus_per_task"]) == (0, 2)
    assert _executor(tmp_path, []).settings.parameters("x")["cpus_per_task"] == 1
    # the command line's request replaces the base config's cpu/devices 1 (as on a workstation)
    assert _executor(tmp_path, ["--gpus-per-run", "2"]).gpus == 2
    # submitit's requeue bound reaches the executor's settings
    assert _executor(tmp_path, ["--max-num-timeout", "5"]).settings.max_num_timeout == 5


@pytest.mark.parametrize(
    ("argv", "overrides", "message"),
    [
        (["--partition", "gpu"], {}, "--partition gpu: its name says GPUs, but each run asks for 0 GPUs"),
        (["--gpus-per-run", "4"], {"trainer.devices": 2}, "trainer.devices is 2 but each run asks for 4 GPUs"),
        (["--nodes", "2"], {"trainer.num_nodes": 3}, "trainer.num_nodes is 3 but each run asks for 2 nodes"),
        (["--gpus-per-run", "1"], {"trainer.accelerator": "cpu"}, "trainer.accelerator is cpu but each run asks"),
        ([], {"trainer.accelerator": "gpu", "trainer.devices": "auto"}, "asks for 0 GPUs; give --gpus-per-run"),
    ],
)
def test_a_request_without_gpus_on_a_gpu_partition_or_against_the_trainer_is_refused(
    tmp_path: Path, argv: list[str], overrides: dict, message: str
) -> None:
    with pytest.raises(ToolkitError, match=message) as err:
        _executor(tmp_path, argv, overrides=overrides)
    assert "\n" not in str(err.value)


def test_variants_asking_for_different_jobs_are_refused(tmp_path: Path) -> None:
    variants = {"full": {}, "wide": {"trainer.devices": 2}}
    with pytest.raises(ToolkitError, match="variants 'full' and 'wide' ask for different Slurm jobs"):
        _executor(tmp_path, [], variants=variants)


def test_the_dry_run_prints_submitits_job_script_and_each_tasks_command(tmp_path: Path) -> None:
    """Multi-node: the script asks for 2 nodes x 2 tasks with 2 GPUs each, and each task's command trains on them."""
    trainer = {"trainer.accelerator": "gpu", "trainer.devices": 2, "trainer.num_nodes": 2}
    executor = _executor(tmp_path, ["--signal-delay-s", "120"], seeds=[0, 1], overrides=trainer)
    spec = load_spec(tmp_path / "s.yaml")
    header, *commands = executor.dry_run(spec, spec.runs(), tmp_path / "runs")
    lines = header.splitlines()
    for flag in ("--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", "--array=0-1%2", "--signal=USR2@120"):
        assert f"#SBATCH {flag}" in lines, header
    assert lines[-1].startswith("srun --unbuffered --output ") and "-m submitit.core._submit" in lines[-1]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ddp = "--trainer.accelerator gpu --trainer.devices 2 --trainer.num_nodes 2 --trainer.strategy ddp"
    for command, run in zip(commands, spec.runs(), strict=True):
        assert command.endswith(ddp)
        assert f"--seed_everything {run.seed} " in command
