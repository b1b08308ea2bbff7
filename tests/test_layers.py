"""The layer rules of docs/architecture.md, enforced: imports point downwards, light commands stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "toolkit"

#: layer of each module, lowest first; a module may import its own layer and the layers below it
CLI, ORCHESTRATION, SYSTEM, TORCH, BASE = 4, 3, 2, 1, 0
#: the plain torch/timm layer: no Lightning, no W&B
PLAIN_TORCH = (
    "toolkit.backbone",
    "toolkit.components",
    "toolkit.heads",
    "toolkit.transforms",
    "toolkit.weights",
    "toolkit.metrics",
    "toolkit.schedules",
    "toolkit.freezing",
    "toolkit.datasets",
)
BASE_MODULES = ("toolkit", "toolkit.errors", "toolkit.keys", "toolkit.quiet", "toolkit.epoch_line")
ORCHESTRATION_PACKAGES = ("toolkit.ablation", "toolkit.report", "toolkit.doctor", "toolkit.search")


def layer(module: str) -> int:
    """The layer of a ``toolkit`` module (by name; a new module lands in its package's layer)."""
    if module in BASE_MODULES:
        return BASE
    # entry points: the console command, `python -m toolkit`, the warm worker parent that forks runs of the command
    if module in ("toolkit.cli", "toolkit.__main__", "toolkit.worker") or module.endswith(".cli"):
        return CLI
    if module.startswith(ORCHESTRATION_PACKAGES):
        return ORCHESTRATION
    if module.startswith(PLAIN_TORCH):
        return TORCH
    return SYSTEM  # classifier, data, callbacks, tracking, lightning_cli, features: the Lightning system


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "toolkit":  # `from toolkit import keys`: the submodules
                found.update(f"toolkit.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return found


def type_checking_only(path: Path) -> set[str]:
    """Modules imported only under ``if TYPE_CHECKING:`` (no import at run time)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom) and inner.module:
                    found.add(inner.module)
    return found


FILES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_are_known() -> None:
    assert layer("toolkit.ablation.cli") == CLI and layer("toolkit.report.sources") == ORCHESTRATION
    assert layer("toolkit.lightning_cli") == SYSTEM and layer("toolkit.components._residual") == TORCH
    assert layer("toolkit.keys") == BASE and len(FILES) > 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_imports(path: Path) -> None:
    me = module_name(path)
    runtime = imports_of(path) - type_checking_only(path)
    upward = sorted(m for m in runtime if m.startswith("toolkit") and layer(m) > layer(me))
    assert not upward, f"{me} (layer {layer(me)}) imports the higher layer(s): {upward}"


@pytest.mark.parametrize("path", [p for p in FILES if layer(module_name(p)) <= TORCH], ids=lambda p: p.stem)
def test_plain_torch_modules_import_no_lightning_or_wandb(path: Path) -> None:
    heavy = sorted(m for m in imports_of(path) if m.split(".")[0] in ("lightning", "pytorch_lightning", "wandb"))
    assert not heavy, f"{module_name(path)} is plain torch/timm but imports {heavy}"


def test_the_ledger_logic_does_not_import_the_ui() -> None:
    for path in ("study/ledger.py", "ablation/lifecycle.py", "ablation/command.py", "study/spec.py"):
        assert "toolkit.ablation.progress" not in imports_of(PACKAGE / path), path


def _loaded(code: str) -> set[str]:
    """The top-level packages loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split("\n")[-2].split())


def test_report_and_ablate_status_never_import_torch_or_lightning(tmp_path: Path) -> None:
    spec = ROOT / "ablations" / "quickstart.yaml"
    code = f"""
from toolkit.cli import main
for argv in (["ablate", "status", {str(spec)!r}, "--root", {str(tmp_path)!r}],
             ["report", {str(spec)!r}, "--root", {str(tmp_path)!r}]):
    try:
        main(argv)
    except SystemExit:
        pass
"""
    loaded = _loaded(code)
    assert {"toolkit", "rich", "wandb"} <= loaded  # the commands ran: the table and the log reader were loaded
    assert not loaded & {"torch", "lightning", "pytorch_lightning", "timm", "torchvision"}, sorted(loaded)


def test_plain_torch_modules_never_load_lightning() -> None:
    loaded = _loaded("\n".join(f"import {m}" for m in PLAIN_TORCH))
    assert "torch" in loaded and "timm" in loaded
    assert not loaded & {"lightning", "pytorch_lightning", "lightning_fabric"}, sorted(loaded)


def test_only_the_report_sources_read_wandb_data() -> None:
    # the ablation runner learns its runs' W&B ids through toolkit.report.sources, never from W&B itself
    readers = sorted(
        module_name(p)
        for p in (PACKAGE / "ablation").rglob("*.py")
        if any(m.split(".")[0] == "wandb" or m.startswith("toolkit.report.wandb_log") for m in imports_of(p))
        or "run-*" in p.read_text()
    )
    assert not readers, readers
