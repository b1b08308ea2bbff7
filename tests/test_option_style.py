"""One option style for every subcommand: each option takes dashes or underscores, one error line for a bad one."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import yaml
from conftest import DIGITS

from toolkit.cli_options import dashed, parse
from toolkit.errors import ToolkitError


def _parsers() -> dict[str, object]:
    from toolkit.ablation.cli import build_parser as ablate
    from toolkit.doctor.cli import build_parser as doctor
    from toolkit.report.cli import build_parser as report
    from toolkit.search.cli import build_parser as search

    return {"ablate": ablate(), "search": search(), "report": report(), "doctor": doctor()}


def _declared(parser) -> set[str]:
    """The long options a parser's --help lists (its public face)."""
    text = parser.format_help()
    for sub in re.findall(r"\{(\w+(?:,\w+)*)\}", text):  # subcommands' own options too
        for name in sub.split(","):
            with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:
                parser.parse_args([name, "--help"])
            text += out.getvalue()
    entries = [line.strip().split("  ")[0] for line in text.splitlines() if line.strip().startswith("--")]
    return {name for entry in entries for name in re.findall(r"--[a-z][\w-]*", entry)} - {"--help"}


@pytest.mark.parametrize("command", ["ablate", "search", "report", "doctor"])
def test_every_option_is_declared_with_dashes_so_both_spellings_reach_it(command: str) -> None:
    declared = _declared(_parsers()[command])
    assert declared, command
    for option in declared:
        assert "_" not in option, f"toolkit {command} declares {option}: declare dashes, underscores then map to it"
        assert dashed(["--" + option[2:].replace("-", "_")]) == [option]


@pytest.mark.parametrize(
    ("command", "argv", "key", "value"),
    [
        ("ablate", ["run", "s.yaml", "--gpus_per_run", "2", "--no_warm", "--array_parallelism=3"], "run.warm", False),
        ("ablate", ["run", "s.yaml", "--mem_per_gpu", "16G", "--tasks_per_node", "2"], "run.mem_per_gpu", "16G"),
        ("search", ["s.yaml", "--dry_run", "--retry_failed", "--no-warm", "--time_min", "5"], "retry_failed", True),
        ("search", ["s.yaml", "--array-parallelism", "4", "--gpus-per-run", "1"], "array_parallelism", 4),
        ("report", ["s.yaml", "--log_to_wandb"], "log_to_wandb", True),
        ("report", ["s.yaml", "--log-to-wandb"], "log_to_wandb", True),
        ("doctor", ["--config", "c.yaml", "--lr_find_steps", "20"], "lr_find_steps", 20),
    ],
)
def test_both_spellings_parse_alike(command: str, argv: list[str], key: str, value: object) -> None:
    args = parse(_parsers()[command], argv, command)
    assert args[key] == value


@pytest.mark.parametrize("command", ["ablate", "search", "report", "doctor"])
def test_an_unknown_option_is_one_line_naming_it(command: str) -> None:
    argv = {"ablate": ["run", "s.yaml"], "search": ["s.yaml"], "report": ["s.yaml"], "doctor": ["--config", "c"]}
    with pytest.raises(ToolkitError) as err:
        parse(_parsers()[command], [*argv[command], "--bogus-option", "1"], command)
    message = str(err.value)
    assert "--bogus-option" in message and f"(see toolkit {command} --help)" in message
    assert "\n" not in message and "tip:" not in message


def test_doctor_passes_only_fit_options_on() -> None:
    from toolkit.doctor.cli import parse_args

    args, fit = parse_args(["--config", "c.yaml", "--model.head-init", "zeros", "--check_steps", "7", "--data.x=1"])
    assert (args.config, args.check_steps) == (["c.yaml"], 7)
    assert fit == ["--model.head_init", "zeros", "--data.x=1"]
    with pytest.raises(ToolkitError, match="--lr-typo"):
        parse_args(["--config", "c.yaml", "--lr-typo", "3"])  # refused, not passed on to the fit parser


def test_fit_takes_dashes_too(capsys: pytest.CaptureFixture[str]) -> None:
    from toolkit.cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", DIGITS, "--trainer.max-epochs", "3", "--data.batch-size", "8", "--print-config"])
    assert done.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["trainer"]["max_epochs"], printed["data"]["batch_size"]) == (3, 8)
