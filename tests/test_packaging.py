"""The package as users install it: a license, every import declared, and a training-only install without extras.

The reference for "declared" is the installed distributions' own metadata (``importlib.metadata``), not a list kept
in this test: every third-party package a toolkit module imports must come from a distribution that pyproject.toml
names, in the core dependencies or in the extra of the command that imports it.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from conftest import DIGITS, ROOT

import toolkit
from toolkit.cli import EXTRAS

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, lazy imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_license_and_metadata() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert PYPROJECT["license"] == "MIT" and PYPROJECT["license-files"] == ["LICENSE"]
    assert PYPROJECT["authors"]
    versions = [c for c in PYPROJECT["classifiers"] if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    low = PYPROJECT["requires-python"].removeprefix(">=")
    assert versions and versions[0].endswith(low), "the classifiers start at requires-python"


def test_every_import_is_declared() -> None:
    """Each third-party import maps (through installed metadata) to a declared distribution."""
    declared = _names(PYPROJECT["dependencies"])
    extras = {name: _names(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}
    for name, modules in EXTRAS.items():  # the cli's extras table and pyproject agree
        assert {m.lower() for m in modules} <= extras[name], name
    everything = declared.union(*extras.values())
    dists = md.packages_distributions()
    stdlib = sys.stdlib_module_names
    undeclared = {}
    for path in (ROOT / "toolkit").rglob("*.py"):
        for top in _imports(path) - {"toolkit", "__future__"} - stdlib:
            names = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
            if not names & everything:
                undeclared.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


#: run inside a child whose site-packages lacks the extras' packages, as after `pip install toolkit` alone
_WITHOUT_EXTRAS = """
import io, contextlib
from toolkit.lightning_cli import run_cli
run_cli(["fit", "--config", {digits!r}, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar",
         "false", "--test_after_fit", "true", "--trainer.default_root_dir", {root!r}])
print("FIT-OK")
from toolkit.cli import main
for argv in (["report", "s.yaml"], ["ablate", "run", "s.yaml"], ["search", "s.yaml"],
             ["ablate", "run", "s.yaml", "--executor", "slurm"], ["search", "--help"], ["report", "--help"],
             ["ablate", "run", "--help"], ["ablate", "run", "--help", "full"], ["--version"]):
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main(argv)
    except SystemExit as exit_:
        print("EXIT", exit_.code, err.getvalue().strip() or out.getvalue().splitlines()[0])
"""


@pytest.mark.slow
def test_training_without_extras(tmp_path: Path) -> None:
    """``toolkit fit`` trains and tests with no extra; a command that needs one names the pip line, exit 2."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    blocked = {m.lower() for modules in EXTRAS.values() for m in modules}
    view = tmp_path / "site-packages"  # the environment's packages minus the extras', as links
    view.mkdir()
    for entry in site.iterdir():
        if re.split(r"[-.]", entry.name, maxsplit=1)[0].lower() not in blocked:
            (view / entry.name).symlink_to(entry)
    code = _WITHOUT_EXTRAS.format(digits=DIGITS, root=str(tmp_path / "run"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{view}"}
    # -S: no site-packages of the environment (and no .pth files): only the view and the checkout are importable
    out = subprocess.run(
        [sys.executable, "-S", "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, env=env
    )
    assert "FIT-OK" in out.stdout, out.stderr[-3000:]
    assert (tmp_path / "run" / "result.json").is_file()
    lines = [line for line in out.stdout.splitlines() if line.startswith("EXIT")]
    report = "needs statsmodels, from the 'report' extra: pip install 'toolkit-ablate[report]'"
    assert lines == [
        f"EXIT 2 error: toolkit report {report}",
        f"EXIT 2 error: toolkit ablate run {report}",
        "EXIT 2 error: toolkit search needs optuna, from the 'search' extra: pip install 'toolkit-ablate[search]'",
        f"EXIT 2 error: toolkit ablate run {report}",
        "EXIT 0 usage: toolkit search SPEC [options]",
        "EXIT 0 usage: toolkit report SPEC [options]",
        "EXIT 0 usage: toolkit ablate run SPEC [options]",
        "EXIT 0 usage: toolkit ablate run SPEC [options]",
        f"EXIT 0 toolkit {toolkit.__version__} (toolkit-ablate)",
    ], out.stdout


def test_the_distribution_has_a_free_name_and_its_extras_use_it() -> None:
    """``toolkit`` on the package index is an unrelated 2015 project: the distribution is ``toolkit-ablate`` (checked
    free with ``pip index versions``), every extra that names another extra names it, and so does every install hint."""
    from toolkit.cli import DISTRIBUTION, missing_extra_message

    assert PYPROJECT["name"] == DISTRIBUTION == "toolkit-ablate"
    for extra, requirements in PYPROJECT["optional-dependencies"].items():
        own = [r for r in requirements if r.split("[")[0] in ("toolkit", DISTRIBUTION)]
        assert all(r.startswith(f"{DISTRIBUTION}[") for r in own), (extra, own)
    assert "optuna-dashboard" in _names(PYPROJECT["optional-dependencies"]["search"])
    assert "pip install 'toolkit-ablate[search]'" in missing_extra_message("search", "optuna", "search")


def test_ablate_run_help_fits_a_screen_and_full_lists_every_option() -> None:
    from toolkit.ablation.cli import build_parser
    from toolkit.ablation.options import cli_fields
    from toolkit.ablation.slurm_settings import SlurmSettings

    rare = [f.metadata.get("option", "--" + f.name.replace("_", "-")) for f, _ in cli_fields(SlurmSettings)]
    rare = [name for name, (f, _) in zip(rare, cli_fields(SlurmSettings), strict=True) if f.metadata.get("rare")]
    assert "--slurm-param" in rare and "--constraint" in rare

    def run_help(full: bool) -> str:
        parser = build_parser(full=full)
        return parser._subcommands_action._name_parser_map["run"].format_help()

    short, full = run_help(False), run_help(True)
    assert len(short.splitlines()) <= 50, short
    for title in ("general:", "local executor:", "slurm executor:", "--help full"):
        assert title in short
    assert not any(name in short for name in rare)
    assert all(name in full for name in rare)
