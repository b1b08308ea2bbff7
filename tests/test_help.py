"""Every ``--help`` on one 80 x 40 screen, listing only options its parser accepts, and fast (no torch imported)."""

from __future__ import annotations

import functools
import itertools
import re
import shlex
import subprocess
import sys

import pytest
from conftest import DIGITS, ROOT
from typing_extensions import override

from toolkit.cli import SUBCOMMANDS, main
from toolkit.lightning_cli import short_help

#: every command line whose --help a user reads (`toolkit --help` lists the subcommands)
HELPS = [
    [],
    ["fit"],
    ["validate"],
    ["test"],
    ["predict"],
    ["ablate"],
    ["ablate", "run"],
    ["ablate", "status"],
    ["report"],
    ["doctor"],
    ["search"],
    ["weights"],
]
#: what only `toolkit fit` does: never advertised by validate, test or predict
FIT_ONLY = (
    "--test_after_fit",
    "--early_stopping",
    "--trainer.max_epochs",
    "--model.",
    "--data.augment",
    "--data.train_subset",
    "--data.batch_size ",
    "--checkpoint.",
    "--last_checkpoint.",
    "--search_trial",
    "--ablation",
)


def _help(capsys: pytest.CaptureFixture, args: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*args, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_subcommand_is_covered() -> None:
    assert {args[0] for args in HELPS if args} == set(SUBCOMMANDS)


@pytest.mark.parametrize("args", HELPS, ids=lambda a: " ".join(a) or "toolkit")
def test_help_fits_one_screen_of_80_columns(capsys, monkeypatch, args: list[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    text = _help(capsys, args)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 40, text
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "%%" not in text and "(type:" not in text
    for above, line in itertools.pairwise(lines):  # one line per option: no description wrapped onto a second
        wrapped = re.match(r"^ {12,}\S", line) and re.match(r"^  -.*\S {2,}\S", above)
        assert not wrapped, f"{above}\n{line}"
    if args in (["ablate"], ["search"], ["doctor"], ["report"], ["fit"], ["test"]):
        # examples as written: each command on its own line, not reflowed into a paragraph
        examples = text[text.index("examples:") :].splitlines()[1:]
        assert examples and all(line.startswith(("  toolkit ", "      ")) for line in examples), text


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_help_lists_no_fit_only_option(capsys, subcommand: str) -> None:
    text = _help(capsys, [subcommand])
    assert "--ckpt_path" in text and "weights_only" not in text
    assert [name for name in FIT_ONLY if name in text] == []
    assert ("--ensemble_ckpts" in text) == (subcommand == "test")  # a test-only option
    assert "--ensemble_ckpts" not in _help(capsys, ["fit"])


class _Built(Exception):
    def __init__(self, parser: object) -> None:
        super().__init__()
        self.parser = parser


@functools.cache  # built once for the tests that parse with it (~1.5 s)
def _lightning_parser() -> object:
    """The parser `toolkit fit|validate|test|predict` parses with (LightningCLI's, built by ToolkitCLI)."""
    from toolkit.lightning_cli import ToolkitCLI

    class Grab(ToolkitCLI):
        @override
        def parse_arguments(self, parser, args):
            raise _Built(parser)

    with pytest.raises(_Built) as built:
        Grab(args=["fit"])
    return built.value.parser


def test_every_listed_option_parses_with_its_example_value() -> None:
    parser = _lightning_parser()
    groups = {a.dest.split(".")[0] for a in parser._subcommands_action._name_parser_map["fit"]._actions}
    for subcommand in ("fit", "validate", "test", "predict"):
        argv = [subcommand, "--config", DIGITS]
        for option, text, example in short_help.listed(subcommand):
            assert text and "\n" not in text, option
            name = re.findall(r"--[\w.]+", option)[0]
            if name != "--config":
                argv += [name, example]
        config = parser.parse_args(argv)[subcommand]  # raises on an option the parser does not take
        assert config.model.backbone == ("resnet18" if subcommand == "fit" else "test_resnet")
    for more in short_help.MORE_GROUPS.values():
        assert {g.strip(" -.*") for g in more.split(",")} - {""} <= groups


#: option-like words of help prose that name no option: the spelling note's placeholders
PLACEHOLDERS = {"--an-option", "--an_option", "--a_b", "--a-b", "--help"}


def _declared(args: list[str]) -> set[str]:
    """Every option string the parser of ``toolkit <args>`` (a torch-free command) takes."""
    from toolkit.ablation.cli import build_parser as ablate
    from toolkit.doctor.cli import build_parser as doctor
    from toolkit.report.cli import build_parser as report
    from toolkit.search.cli import build_parser as search

    parsers = {"ablate": ablate, "search": search, "report": report, "doctor": doctor}
    if args[0] not in parsers:
        return set()
    parser = parsers[args[0]]()
    if len(args) > 1:
        parser = parser._subcommands_action._name_parser_map[args[1]]
    return set(parser._option_string_actions)


@pytest.mark.parametrize("args", [a for a in HELPS if a[:1] in (["ablate"], ["search"], ["report"], ["doctor"])])
def test_torch_free_help_names_only_options_its_command_takes(capsys, args: list[str]) -> None:
    text = _help(capsys, args)
    prose = text.split("examples:")[0]  # the examples are parsed whole (test_every_example_parses)
    named = set(re.findall(r"--[a-z][\w-]*(?![\w.*-])", prose)) - PLACEHOLDERS
    assert named <= _declared(args), named - _declared(args)
    if args == ["doctor"]:  # toolkit fit overrides, passed on: named by their groups only
        assert {"--model.*", "--data.*", "--trainer.*"} <= set(re.findall(r"--[a-z]+\.\*", prose))


def _examples(text: str) -> list[list[str]]:
    """The example command lines of a help text (continuation lines joined, comments dropped), without `toolkit`."""
    block = text[text.index("examples:") :].split("\n", 1)[1]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line.split("#")[0])[1:] for line in joined.splitlines() if line.strip().startswith("toolkit ")]


def test_every_example_parses(capsys) -> None:
    from toolkit.ablation.cli import build_parser as ablate
    from toolkit.cli_options import parse
    from toolkit.doctor.cli import parse_args as doctor
    from toolkit.report.cli import build_parser as report
    from toolkit.search.cli import build_parser as search

    torch_free = {
        "ablate": lambda argv: parse(ablate(), argv, "ablate"),
        "search": lambda argv: parse(search(), argv, "search"),
        "report": lambda argv: parse(report(), argv, "report"),
        "doctor": doctor,
    }
    parser = None
    seen = 0
    for args in (["ablate"], ["search"], ["report"], ["doctor"], ["fit"], ["validate"], ["test"], ["predict"]):
        for example in _examples(_help(capsys, args)):
            assert example[0] == args[0], example
            if example[0] in torch_free:
                torch_free[example[0]](example[1:])  # raises ToolkitError naming an option it does not take
            else:
                parser = parser or _lightning_parser()
                parser.parse_args(example)
            seen += 1
    assert seen >= 14


def test_help_imports_neither_torch_nor_lightning() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from toolkit.cli import main\n"
        "for args in (['fit'], ['test'], ['doctor'], ['search'], ['report'], ['ablate', 'run']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main([*args, '--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'timm', 'optuna'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
