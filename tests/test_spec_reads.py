"""A spec reads each base config once, when it is loaded, and the variants' check reads each once; run ids stay what
they were (issue 20)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import toolkit_cmd

from toolkit.ablation import cli_changes
from toolkit.ablation.progress import base_max_epochs
from toolkit.errors import ToolkitError
from toolkit.lightning_cli.parsing import check_config_files
from toolkit.study.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]

#: the run ids of ablations/quickstart.yaml computed on main before the base configs were read once per load
#: (10 variants x 5 seeds, spec order). Editing configs/quickstart.yaml's content or the spec names new runs by
#: design; then recompute these from the commit before the edit.
QUICKSTART_IDS = [
    "1b30e9cb3db1",
    "9bdfdc1c290a",
    "690fa644b18e",
    "1fc343848635",
    "5af9f1834533",
    "7d3bb8a74159",
    "c8a4d8ee7577",
    "c7339df62807",
    "e42d53082627",
    "edea345ce61a",
    "d6445d9f357d",
    "a704f86f2156",
    "7d0d9864a22c",
    "752f5a0770cc",
    "741f4be2f1e9",
    "9357c15c62dc",
    "f2e62c512457",
    "ae3b0e26ca10",
    "9b481e3485f9",
    "2f501e0d98fb",
    "3bf6ab77f6f6",
    "52d150cdc45e",
    "108889489965",
    "786fee55637b",
    "67b9885b7d89",
    "8eabcf919f9d",
    "eec041ed1809",
    "72f59bac24fe",
    "46fb22fa9e39",
    "7e2f883c1e0c",
    "c39c46a03299",
    "9fa2eb766440",
    "11b0debecc98",
    "49b753d56eb4",
    "18eea5812317",
    "b267b2d99e13",
    "2ca70b91ee2b",
    "5c8e0cd1bbcf",
    "1e2a981d6e1b",
    "11d0736b1282",
    "f841aa06ae4e",
    "1458a672357f",
    "80283742bba3",
    "19499cc6637d",
    "966d101e5dac",
    "1eed70f7f45c",
    "7ee81770aa1a",
    "18121d5802f7",
    "a4a43e08cdfb",
    "c3a358d98d57",
]


#: issue 30: `random-init` and `fine-tune` (no frozen backbone) now say `model.probe: sgd` (probe: lbfgs there is
#: refused: it did nothing), which names new runs for them, by design
QUICKSTART_IDS_ISSUE_30 = {
    "random-init": ["41881c52b314", "d708151e3a89", "670f318e7e64", "7f44418c6112", "b9ea21000de5"],
    "fine-tune": ["6626c9ba3f39", "a0a1061e6bdd", "4d11cff69463", "1c00f5d5f588", "a674a5e840c1"],
}


def test_quickstart_run_ids_are_unchanged() -> None:
    # the spec since lost its lesion callback on `full` and the bn-on, augment-mild and dropout rows; the runs of the
    # variants it kept as they were keep their ids
    kept = QUICKSTART_IDS[5:20] + QUICKSTART_IDS[25:30] + QUICKSTART_IDS[40:50]
    kept[0:5], kept[10:15] = QUICKSTART_IDS_ISSUE_30["random-init"], QUICKSTART_IDS_ISSUE_30["fine-tune"]
    runs = load_spec(ROOT / "ablations" / "quickstart.yaml").runs()
    assert [run.id for run in runs if run.variant != "full"] == kept


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
