"""Ablation specs, run expansion, the ``toolkit fit`` command of a run, the ledger and the status table (no torch)."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from jsonargparse import ArgumentParser
from rich.console import Console

from toolkit.ablation.command import fit_args, format_value
from toolkit.ablation.progress import build_table
from toolkit.errors import ToolkitError
from toolkit.study.ledger import Ledger, runner_lock
from toolkit.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"


def write_spec(folder: Path, text: str, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


EXAMPLE = f"""
name: digits-components
base: [{DIGITS}]
overrides: {{trainer.max_epochs: 5}}
seeds: [0, 1, 2]
baseline: full
variants:
  full: {{}}
  no-bn: {{model.batchnorm: "off"}}
  no-augment: {{data.augment: none}}
metrics: [test/acc, test/f1]
project: toolkit
"""


def test_every_shipped_spec_loads_and_quickstart_covers_each_component() -> None:
    paths = sorted((ROOT / "ablations").glob("*.yaml"))
    assert paths
    specs = {p.stem: load_spec(p) for p in paths}
    quick = specs["quickstart"]
    assert quick.baseline == "full" and len(quick.seeds) >= 5
    # the five components the toolkit exists for, beside the transfer rows
    switched = {key for delta in quick.variants.values() for key in delta}
    assert {"model.pretrained", "model.unfreeze_at_epoch", "model.batchnorm", "model.drop_rate", "data.augment"} <= (
        switched
    )
    callbacks = json.dumps([quick.variants[v].get("trainer.callbacks") for v in quick.variants])
    assert "SnapshotEnsemble" in callbacks and "LesionSweep" in callbacks  # snapshots; the shortcuts' lesion curve
    # fair by default: tuned on val, a budget policy, the split drawn per seed
    assert quick.tune_rows is not None and {"full", "lp-ft", "bn-affine", "bn-fused", "snapshot"} <= set(
        quick.tune_rows
    )
    assert "linear-probe" not in quick.tune_rows  # an L-BFGS probe alone takes no optimizer step
    base = yaml.safe_load(Path(quick.base[0]).read_text())
    assert base["early_stopping"]["patience"] >= 1 and base["data"]["split_seed"] == "seed"
    # each variant changes one thing; a transfer mode is spelled in several keys (frozen, the L-BFGS probe, when to
    # unfreeze; the probe alone needs one epoch); `random-init` is the from-scratch recipe: no weights, BatchNorm
    # trained (frozen untrained statistics are refused), its own lr and a longer cap; `full`'s only key is its
    # test-time sweep
    assert list(quick.variants["full"]) == ["trainer.callbacks"]
    transfer = ("full", "linear-probe", "lp-ft", "random-init")
    assert all(len(delta) == 1 for name, delta in quick.variants.items() if name not in transfer)
    probe = {"model.freeze_backbone": True, "model.probe": "lbfgs"}
    assert quick.variants["linear-probe"] == {**probe, "trainer.max_epochs": 1}
    assert quick.variants["lp-ft"] == {**probe, "model.unfreeze_at_epoch": 1}
    scratch = dict(quick.variants["random-init"])
    assert scratch.pop("model.optimizer.init_args.lr") > 0 and scratch.pop("trainer.max_epochs") > 8
    assert scratch == {"model.pretrained": False, "model.batchnorm": "on"}
    assert "LesionSweep" in json.dumps(specs["lesion-study"].overrides)  # the whole lesion study: its own preset


def test_issue_example_reads_into_the_fields(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, EXAMPLE))
    assert spec.name == "digits-components"
    assert spec.base == [str(DIGITS)]
    assert spec.overrides == {"trainer.max_epochs": 5}
    assert spec.seeds == [0, 1, 2]
    assert spec.variants == {"full": {}, "no-bn": {"model.batchnorm": "off"}, "no-augment": {"data.augment": "none"}}
    assert spec.metrics == ["test/acc", "test/f1"] and spec.project == "toolkit" and spec.baseline == "full"
    runs = spec.runs()
    assert [(r.variant, r.seed) for r in runs] == [(v, s) for v in ("full", "no-bn", "no-augment") for s in (0, 1, 2)]
    assert runs[3].overrides == {"trainer.max_epochs": 5, "model.batchnorm": "off"}
    assert runs[3].directory("R") == Path("R/digits-components/no-bn/seed0")


def test_run_ids_follow_the_resolved_config_not_its_formatting(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  max_epochs: 3\n")
    text = EXAMPLE.replace(str(DIGITS), str(base))
    ids = [r.id for r in load_spec(write_spec(tmp_path, text)).runs()]
    assert ids == [r.id for r in load_spec(write_spec(tmp_path, text)).runs()]
    assert len(set(ids)) == len(ids)
    base.write_text("# a comment\ntrainer: {max_epochs: 3}  # same data\n")
    assert ids == [r.id for r in load_spec(write_spec(tmp_path, text)).runs()]
    base.write_text("trainer:\n  max_epochs: 4\n")
    assert not set(ids) & {r.id for r in load_spec(write_spec(tmp_path, text)).runs()}
    base.write_text("trainer:\n  max_epochs: 3\n")
    changed = load_spec(write_spec(tmp_path, text.replace("data.augment: none", "data.augment: basic"))).runs()
    assert [r.id == i for r, i in zip(changed, ids, strict=True)] == [True] * 6 + [False] * 3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("  no-augment:", "  no-bn:"), "duplicate key 'no-bn'"),
        (
            lambda t: t.replace("baseline: full", "baseline: ful"),
            "baseline 'ful' is not a variant (did you mean full?)",
        ),
        (lambda t: t.replace("seeds: [0, 1, 2]", "seeds: []"), "'seeds' needs at least one integer seed"),
        (lambda t: t.replace("seeds: [0, 1, 2]", "seeds: [0, 0]"), "lists a seed twice"),
        (lambda t: t.replace(str(DIGITS), "configs/nope.yaml"), "base config 'configs/nope.yaml' not found"),
        (lambda t: t.replace("seeds:", "seed:"), "unknown key 'seed' (did you mean seeds?)"),
        (lambda t: t.replace("{trainer.max_epochs: 5}", "{--trainer.max_epochs: 5}"), "write 'trainer.max_epochs'"),
        (lambda t: t.replace('"off"}', '"off"}\n  bn-again: {model.batchnorm: "off"}'), "give the same config"),
        (lambda t: t.replace("name: digits-components", "name: a/b"), "must be a word"),
        (lambda t: t.replace("[0, 1, 2]", "[0, 1"), "not valid YAML"),
    ],
)
def test_bad_specs_fail_with_a_one_line_fix(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(ToolkitError) as err:
        load_spec(write_spec(tmp_path, edit(EXAMPLE)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_spec_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ToolkitError, match="not found; pass a YAML file"):
        load_spec(tmp_path / "none.yaml")


def test_base_paths_resolve_against_the_spec_folder_first_then_cwd(tmp_path: Path, monkeypatch: Any) -> None:
    """A copied preset finds its own configs wherever it is run from; a same-named file where the user stands loses."""
    spec_dir, cwd = tmp_path / "specs", tmp_path / "cwd"
    spec_dir.mkdir(), cwd.mkdir()
    (cwd / "only_here.yaml").write_text("trainer: {max_epochs: 3}\n")
    path = write_spec(spec_dir, "name: a\nbase: [local.yaml, only_here.yaml]\nseeds: [0]\nvariants: {full: {}}\n")
    (spec_dir / "local.yaml").write_text("trainer: {max_epochs: 1}\n")
    monkeypatch.chdir(cwd)
    expected = [str((spec_dir / "local.yaml").resolve()), str((cwd / "only_here.yaml").resolve())]
    assert load_spec(path).base == expected
    (cwd / "local.yaml").write_text("trainer: {max_epochs: 2}\n")
    assert load_spec(path).base == expected


def test_factors_expand_to_leave_one_out_and_full_factorial(tmp_path: Path) -> None:
    switches = {"bn": {"model.batchnorm": "off"}, "drop": {"model.drop_rate": 0.0}, "aug": {"data.augment": "none"}}
    block = yaml.safe_dump({"switches": switches}, default_flow_style=True, sort_keys=False).strip()
    text = (
        f"name: f\nbase: [{DIGITS}]\nseeds: [0]\nfactors: {block}\nvariants: {{extra: {{model.lr_scheduler: null}}}}\n"
    )
    spec = load_spec(write_spec(tmp_path, text))
    expected = {"full": {}, "extra": {"model.lr_scheduler": None}} | {f"no-{k}": v for k, v in switches.items()}
    assert spec.variants == expected and spec.design == "leave-one-out"
    spec = load_spec(write_spec(tmp_path, text.replace("{switches", "{design: factorial, switches")))
    reference = {"extra": {"model.lr_scheduler": None}}
    for flags in itertools.product([False, True], repeat=3):  # True: that factor switched off
        off = [name for name, flag in zip(switches, flags, strict=True) if flag]
        name = "+".join(f"no-{n}" for n in off) or "full"
        reference[name] = {k: v for n in off for k, v in switches[n].items()}
    assert spec.variants == reference and len(spec.variants) == 9


def test_override_values_reach_jsonargparse_as_the_yaml_value() -> None:
    parser = ArgumentParser()
    typed = {
        "s": (str, "off"),
        "lit": (Literal["on", "off"], "off"),
        "num": (float, 1e-3),
        "flag": (bool, False),
        "ints": (list[int], [1, 2]),
        "opt": (str | None, None),
        "map": (dict, {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}),
        "word": (str, "none"),
    }
    for key, (kind, _) in typed.items():
        parser.add_argument(f"--{key}", type=kind)
    argv = [part for key, (_, value) in typed.items() for part in (f"--{key}", format_value(value))]
    parsed = parser.parse_args(argv)
    assert {key: parsed[key] for key in typed} == {key: value for key, (_, value) in typed.items()}


def test_fit_args_are_the_documented_command(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, EXAMPLE))
    run = spec.runs()[4]  # no-bn, seed 1
    run_dir = tmp_path / "R" / "digits-components" / "no-bn" / "seed1"
    expected = ["fit", "--config", str(DIGITS), "--trainer.max_epochs", "5", "--model.batchnorm", "off"]
    expected += ["--seed_everything", "1", "--trainer.default_root_dir", str(run_dir), "--test_after_fit", "true"]
    expected += ["--ablation.name", "digits-components", "--ablation.variant", "no-bn", "--ablation.seed", "1"]
    expected += ["--trainer.logger.init_args.project", "toolkit"]
    assert fit_args(spec, run, tmp_path / "R") == expected
    ddp = fit_args(spec, run, tmp_path / "R", resume=True, gpus=2)
    gpu = ["--trainer.accelerator", "gpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    assert ddp == [*expected, *gpu, "--ckpt_path", "last"]


def _bump(path: str, worker: int, rounds: int) -> None:
    ledger = Ledger(path)
    for i in range(rounds):
        with ledger.edit() as runs:  # read-modify-write: loses counts unless writers are serialised
            shared = runs.setdefault("shared", {"count": 0})
            shared["count"] += 1
        ledger.update(f"w{worker}-{i}", status="done")


def test_ledger_serialises_writers_from_several_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.json")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_bump, args=(path, w, 25)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    runs = Ledger(path).read()
    assert runs["shared"]["count"] == 100
    assert {k for k in runs if k != "shared"} == {f"w{w}-{i}" for w in range(4) for i in range(25)}


def test_ledger_survives_sigkill_at_any_moment(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    writer = (
        "import sys; from toolkit.study.ledger import Ledger\n"
        "ledger = Ledger(sys.argv[1])\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1; ledger.update(f'run{i % 50}', status='done', blob='x' * 20000, n=i)\n"
    )
    seen = 0
    for delay in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(path)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        runs = Ledger(path).read()  # raises if the file were half written
        assert all(r["status"] == "done" and len(r["blob"]) == 20000 for r in runs.values())
        seen = max(seen, max((r["n"] for r in runs.values()), default=0))
    assert seen > 0


def test_runner_lock_lets_one_runner_in(tmp_path: Path) -> None:
    with (
        runner_lock(tmp_path),
        pytest.raises(ToolkitError, match="already running this ablation"),
        runner_lock(tmp_path),
    ):
        pass
    with runner_lock(tmp_path):  # released
        pass


def test_status_table_shows_every_run_of_the_spec(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, EXAMPLE))
    runs = spec.runs()
    now = time.time()
    records = {
        runs[0].id: {"id": runs[0].id, "status": "done", "attempts": 1, "duration_s": 65.0, "wandb_id": "abc123"},
        runs[1].id: {"id": runs[1].id, "status": "failed", "attempts": 2, "exit_code": 2, "log": "/x/run.log"},
        runs[2].id: {"id": runs[2].id, "status": "running", "attempts": 1, "started_at": now - 30},
    }
    runs[0].directory(tmp_path).mkdir(parents=True)
    (runs[0].directory(tmp_path) / "result.json").write_text('{"status": "done", "finished_at": 1.0}')  # its result
    console = Console(file=io.StringIO(), width=200)
    console.print(build_table(spec, records, tmp_path, width=200))
    text = console.file.getvalue()
    lines = [line for line in text.splitlines() if "│" in line and ("full" in line or "no-" in line)]
    assert len(lines) == 9
    assert "done" in lines[0] and "1:05" in lines[0] and "abc123" in lines[0]
    assert "failed" in lines[1] and "exit 2; log: /x/run.log" in lines[1]
    assert "running" in lines[2] and "0:30" in lines[2]
    assert all("pending" in line for line in lines[3:])
    assert "1 done, 1 running, 1 failed, 6 pending; ETA" in text
