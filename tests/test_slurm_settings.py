"""Slurm job settings: the spec's ``slurm:`` block under the command line's options, as submitit parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import DIGITS

from toolkit.ablation.cli import build_parser
from toolkit.ablation.runner import make_executor
from toolkit.ablation.slurm_settings import CPUS_PER_GPU, SlurmSettings, settings_from_spec
from toolkit.cli_options import parse, runner_options
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
    params = executor.settings.parameters("ablate-s", executor.gpus, None)
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
    assert SlurmSettings().parameters("x", 0, None)["cpus_per_task"] == 1
    multi = SlurmSettings(nodes=2).parameters("x", 4, 8)
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
    argv = ["run", "s.yaml", "--slurm-param", "time=5"]
    options = runner_options(parse(build_parser(), argv, "ablate").run)
    with pytest.raises(ToolkitError, match="'time' has an option of its own: use --time"):
        SlurmSettings().merged(options.slurm)
