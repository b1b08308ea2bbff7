"""The layer rules of docs/architecture.md, enforced: imports point downwards, light commands stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "toolkit"

#: the floors, lowest first; a module may import its own floor and the floors below it:
#: cli > ablation | search | doctor > report > Lightning system > model + data > weights > run contract + base
CLI, PEERS, REPORT, SYSTEM, DOMAIN, TORCH, BASE = 6, 5, 4, 3, 2, 1, 0
#: the floor of each package of toolkit/, by folder: a module's floor is its folder's (the modules directly in
#: toolkit/ are the base, except the entry points); a new package must be given its floor here
FLOORS = {
    "study": BASE,
    "weights": TORCH,
    "model": DOMAIN,
    "data": DOMAIN,
    "callbacks": SYSTEM,
    "lightning_cli": SYSTEM,
    "report": REPORT,
    "ablation": PEERS,
    "search": PEERS,
    "doctor": PEERS,
}
#: entry points: the console command, `python -m toolkit`, the option layer of the torch-free commands, the warm
#: worker parent that forks runs of the command; and every package's ``cli.py``
ENTRY_POINTS = ("toolkit.cli", "toolkit.cli_options", "toolkit.__main__", "toolkit.worker")
#: the Lightning side of the domain packages; every other module of model/, data/ and weights/ is plain torch/timm
LIGHTNING_SIDE = (
    "toolkit.model.classifier",
    "toolkit.model.features",
    "toolkit.data.datamodule",
    "toolkit.data.describe",
)
#: packages on one floor: none imports another (they share through the contract or a lower floor)
PEER_PACKAGES = tuple(f"toolkit.{name}" for name, floor in FLOORS.items() if floor == PEERS)
#: at most this many modules directly in toolkit/ (the base and the entry points): the rest lives in its package
MAX_TOP_MODULES = 14


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> int:
    """The floor of a ``toolkit`` module, from its folder."""
    parts = module.split(".")
    if module in ENTRY_POINTS or parts[-1] == "cli":
        return CLI
    if len(parts) <= 2 and parts[-1] not in FLOORS:
        return BASE
    return FLOORS[parts[1]]


def peer_package(module: str) -> str | None:
    """The peer package (``toolkit.ablation`` ...) a non-cli module belongs to, else None."""
    if layer(module) != PEERS:
        return None
    return next(p for p in PEER_PACKAGES if _in(module, p))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def _resolve(name: str) -> str:
    """``toolkit.x.y`` -> the module that defines it (``toolkit.x`` when ``y`` is a name inside it)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _import_nodes(path: Path) -> Iterator[tuple[ast.AST, bool]]:
    """Every import statement of a file (top level, inside functions, under ``if``), and whether it is typing-only."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            typing_only.update(id(inner) for child in node.body for inner in ast.walk(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, id(node) in typing_only


def imports_of(path: Path, typing: bool = True) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too); ``from pkg import
    sub`` counts as ``pkg.sub`` where that is a module. ``typing=False`` leaves out the ``TYPE_CHECKING`` ones."""
    me = module_name(path)
    found = set()
    for node, typing_only in _import_nodes(path):
        if typing_only and not typing:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: resolve against this module's package
            base = me.split(".")[: len(me.split(".")) - node.level + (path.name == "__init__.py")]
            source = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source = node.module or ""
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            found.add(sub if sub in MODULES else source)
    return found


def toolkit_imports(path: Path, typing: bool = True) -> set[str]:
    """The ``toolkit`` modules a file imports (resolved to modules), itself left out."""
    return {_resolve(m) for m in imports_of(path, typing) if _in(m, "toolkit")} - {module_name(path)}


PLAIN_TORCH = sorted(m for m in MODULES if layer(m) in (DOMAIN, TORCH) and m not in LIGHTNING_SIDE)


def test_the_layers_are_known() -> None:
    assert layer("toolkit.ablation.cli") == CLI and layer("toolkit.ablation.runner") == PEERS
    assert layer("toolkit.search.run") == PEERS and layer("toolkit.report.sources") == REPORT
    assert layer("toolkit.lightning_cli") == SYSTEM and layer("toolkit.model.components._residual") == DOMAIN
    assert layer("toolkit.keys") == BASE and layer("toolkit.study.result") == BASE and len(FILES) > 40
    assert peer_package("toolkit.search.run") == "toolkit.search" and peer_package("toolkit.search.cli") is None
    assert "toolkit.data.datasets" in PLAIN_TORCH and "toolkit.model.backbone" in PLAIN_TORCH


def test_every_package_has_a_floor_and_the_top_holds_only_the_base() -> None:
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(FLOORS), f"give each package of toolkit/ its floor in FLOORS: {packages}"
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules directly in toolkit/ (at most {MAX_TOP_MODULES}): {top}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_imports(path: Path) -> None:
    """Run-time, lazy and ``TYPE_CHECKING`` imports alike: a type named from a higher floor is an arrow up too."""
    me = module_name(path)
    upward = sorted(m for m in toolkit_imports(path) if layer(m) > layer(me))
    assert not upward, f"{me} (floor {layer(me)}) imports the higher floor(s): {upward}"


@pytest.mark.parametrize("path", [p for p in FILES if peer_package(module_name(p))], ids=lambda p: p.stem)
def test_peer_packages_do_not_import_each_other(path: Path) -> None:
    mine = peer_package(module_name(path))
    others = sorted(m for m in toolkit_imports(path) if layer(m) == PEERS and peer_package(m) != mine)
    assert not others, f"{module_name(path)} imports its peer(s) {others}; share through toolkit.study or below"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}, "f": {"g"}, "g": {"f", "d"}}
    assert sorted(_cycles(graph)) == [["a", "b", "c"], ["f", "g"]]


def test_no_import_cycles() -> None:
    """Modules import each other in one direction only (lazy and ``TYPE_CHECKING`` imports count)."""
    graph = {module_name(p): {m for m in toolkit_imports(p) if m in MODULES} for p in FILES}
    assert not _cycles(graph), _cycles(graph)


@pytest.mark.parametrize(
    "path", [p for p in FILES if module_name(p) in PLAIN_TORCH or layer(module_name(p)) == BASE], ids=lambda p: p.stem
)
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
