"""A spec reads each base config once, when it is loaded, and the variants' check reads each once; run ids stay what
they were (issue 20)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import toolkit_cmd

from toolkit.ablation.progress import base_max_epochs
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.parsing import check_config_files
from toolkit.study import cli_changes
from toolkit.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

#: the run ids of ablations/quickstart.yaml as the fair main job (9 variants x 5 seeds, spec order, before `tune:`
#: adds each variant's chosen lr). Editing configs/quickstart.yaml's content or the spec names new runs by design;
#: then recompute these from the commit before the edit.
QUICKSTART_IDS = [
    "d4666f422748",
    "b59204b99306",
    "666053f808ee",
    "6fcf976713e8",
    "da5bd533c492",
    "572eda0ebd04",
    "3475d6cc3ec7",
    "eb5946b3477d",
    "4e8ed9848898",
    "a82784d8be55",
    "f0349548726e",
    "531ef6996dec",
    "a3e9e6732a55",
    "299f293f6222",
    "2def47850819",
    "05703d048237",
    "f1c8796fee44",
    "8ebe576f7768",
    "c40a68ea4c72",
    "32e6ec49fff9",
    "b633ef04b58b",
    "02b5a7a4fc36",
    "af47533fbc80",
    "d144a8224c83",
    "e8cf68047ac6",
    "b05dc08e4f18",
    "6b99245711d7",
    "77a8f6108ed0",
    "e509bffb6c2a",
    "86984d682065",
    "50aeea9df36f",
    "e3147415163f",
    "49a2db512ff8",
    "f8b0b4397a1c",
    "b561260e741d",
    "6fc06acfe558",
    "cbf92bb58fdf",
    "fcab22bf2ff6",
    "adcb348f3ebf",
    "c5061c0aa7d2",
    "c2b9522344ef",
    "719422dc9903",
    "7c48026d7975",
    "61d22985b985",
    "6c2f840d7af2",
]


def test_quickstart_run_ids_are_unchanged() -> None:
    runs = load_spec(ROOT / "ablations" / "quickstart.yaml").runs()
    assert [run.id for run in runs] == QUICKSTART_IDS


def write_study(folder: Path) -> tuple[Path, Path]:
    base = folder / "base.yaml"
    base.write_text("trainer: {max_epochs: 4}\nmodel: {backbone: test_resnet}\n")
    spec = folder / "spec.yaml"
    spec.write_text(
        "name: once\nbase: [base.yaml]\nseeds: [0, 1]\nvariants: {full: {}, small: {model.drop_rate: 0.1}}\n"
    )
    return spec, base


def test_base_configs_are_read_when_the_spec_is_loaded_and_never_again(tmp_path: Path) -> None:
    """After loading, the base file can change or vanish: runs, --seeds/--set and the status table use what was read.

    (Runs keep the ids they had when the runner started, whatever happens to the file meanwhile.)
    """
    spec_path, base = write_study(tmp_path)
    spec = load_spec(spec_path)
    ids = [run.id for run in spec.runs()]
    base.unlink()  # any later read would fail
    assert [run.id for run in spec.runs()] == ids
    scaled, _ = cli_changes.apply(spec, "0-2", ["trainer.accelerator=cpu"])  # dataclasses.replace underneath
    assert len(scaled.runs()) == 6 and scaled.base_data == spec.base_data
    assert base_max_epochs(spec) == 4  # the status table's epoch count
    base.write_text("trainer: {max_epochs: 9}\n")
    assert [run.id for run in spec.runs()] == ids and base_max_epochs(spec) == 4
    reloaded = load_spec(spec_path)  # a new load reads the new content
    assert [run.id for run in reloaded.runs()] != ids and base_max_epochs(reloaded) == 9


def test_a_broken_base_config_fails_when_the_spec_is_loaded(tmp_path: Path) -> None:
    spec_path, base = write_study(tmp_path)
    base.write_text("trainer: {max_epochs: 4\n")
    with pytest.raises(ToolkitError, match=r"base\.yaml.*not valid YAML"):
        load_spec(spec_path)


def test_config_file_check_reads_an_unchanged_file_once(tmp_path: Path) -> None:
    """The ablation runner parses every variant with the same base configs: each is checked once per process; an
    edited file (new mtime or size) is checked again."""
    good = tmp_path / "c.yaml"
    good.write_text("a: [1, 2]\n")
    check_config_files(["fit", "--config", str(good)])
    stat = good.stat()
    good.write_text("a: [1, 2 \n")  # same size, broken
    os.utime(good, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    check_config_files(["fit", "--config", str(good)])  # unchanged as far as the file system says: not read again
    os.utime(good, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    with pytest.raises(ToolkitError, match="YAML syntax error"):
        check_config_files(["fit", "--config", str(good)])


#: presets whose ``base:`` still relies on the current-directory fallback (the coordinator edits quickstart.yaml)
CWD_RELATIVE: set[str] = set()


def test_presets_resolve_their_base_configs_beside_the_spec_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: a shipped preset names its configs relative to its own file, so it loads from anywhere."""
    monkeypatch.chdir(tmp_path)  # no configs/ here
    presets = sorted((ROOT / "ablations").glob("*.yaml"))
    assert len(presets) >= 5
    for preset in presets:
        if preset.stem in CWD_RELATIVE:
            continue
        spec = load_spec(preset)
        assert all(b.startswith(str(ROOT / "configs")) for b in spec.base), preset.name
        assert all(entry.startswith("../configs/") for entry in yaml.safe_load(preset.read_text())["base"])


@pytest.mark.slow
def test_a_preset_dry_runs_from_another_directory(tmp_path: Path) -> None:
    """``toolkit ablate run <preset> --dry-run`` from a folder without configs/: validates and prints its commands."""
    proc = toolkit_cmd(
        "ablate", "run", str(ROOT / "ablations" / "bn-transfer.yaml"), "--dry-run", "--root", "runs", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count(f"--config {ROOT / 'configs' / 'quickstart.yaml'}") >= 3  # one command per run
