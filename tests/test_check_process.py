"""The runner's pre-launch check: one CLI parser for every variant, and (in a torch-free runner) a child process.

One parser parses each variant exactly as a parser of its own would (the resolved configs are compared whole), a
variant that does not parse is named; a runner that has not imported torch checks in a child and never imports
torch itself, refusing a bad variant with the same line as the in-process check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.errors import ToolkitError
from toolkit.lightning_cli import parse_config, parse_configs
from toolkit.lightning_cli.parse_only import prebuild_parser
from toolkit.lightning_cli.program import PREBUILT

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
QUICK = ROOT / "configs" / "quickstart.yaml"


UNFROZEN = ("--model.freeze_backbone", "false", "--model.probe", "sgd")


def test_one_parser_resolves_each_command_line_as_its_own_parser_does() -> None:
    argvs: list[list[str]] = [
        ["fit", "--config", str(QUICK)],
        ["fit", "--config", str(QUICK), "--model.batchnorm", "on", "--data.augment", "mild"],
        ["fit", "--config", str(DIGITS), "--model.drop_rate", "0.2", "--trainer.max_epochs", "2"],
        ["fit", "--config", str(QUICK), "--model.dropout_rat", "0.1"],  # a typo: its own error
        # no probe phase without a frozen backbone (probe lbfgs is then refused)
        ["fit", "--config", str(QUICK), "--model.pretrained", "false", *UNFROZEN],
    ]
    together = parse_configs(argvs)
    assert len(together) == len(argvs)
    for argv, result in zip(argvs, together, strict=True):
        if "--model.dropout_rat" in argv:
            assert isinstance(result, ToolkitError) and "dropout_rat" in str(result)
            with pytest.raises(ToolkitError, match="dropout_rat"):
                parse_config(argv)
            continue
        alone = parse_config(argv)
        assert json.dumps(result.as_dict(), sort_keys=True, default=str) == json.dumps(
            alone.as_dict(), sort_keys=True, default=str
        )
    assert together[1].fit.model.batchnorm == "on" and together[0].fit.model.batchnorm == "frozen"
    assert together[2].fit.trainer.max_epochs == 2 and together[4].fit.model.pretrained is False
    # the parser the warm parent builds ahead of use (each forked run or check takes its copy) resolves the same
    prebuild_parser()
    assert len(PREBUILT) == 1
    prebuilt = parse_configs(argvs)
    assert PREBUILT == []  # taken by that one CLI; the next builds its own
    for result, again in zip(together, prebuilt, strict=True):
        if isinstance(result, ToolkitError):
            assert isinstance(again, ToolkitError) and str(again) == str(result)
        else:
            assert json.dumps(again.as_dict(), sort_keys=True, default=str) == json.dumps(
                result.as_dict(), sort_keys=True, default=str
            )


CHECK_IN_RUNNER = """
import json, sys
from toolkit.ablation import lifecycle
from toolkit.errors import ToolkitError
from toolkit.study.spec import load_spec
try:
    lifecycle.check(load_spec(sys.argv[1]), sys.argv[2])
    outcome = "ok"
except ToolkitError as err:
    outcome = str(err)
print(json.dumps({"outcome": outcome, "torch": "torch" in sys.modules}))
"""


@pytest.mark.slow  # two processes that import torch
def test_a_torch_free_runner_checks_in_a_child_and_never_imports_torch(tmp_path: Path) -> None:
    tiny = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1}

    def check(variants: dict) -> dict:
        path = tmp_path / "spec.yaml"
        spec = {"name": "c", "base": [str(DIGITS)], "overrides": tiny, "seeds": [0, 1], "variants": variants}
        path.write_text(json.dumps(spec))
        out = subprocess.run(
            [sys.executable, "-c", CHECK_IN_RUNNER, str(path), str(tmp_path / "runs")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    good = check({"full": {}, "dropout": {"model.drop_rate": 0.2}})
    assert good == {"outcome": "ok", "torch": False}
    # refused in the child by a guard that builds the model (frozen BatchNorm on zero-initialised scales)
    bad = check({"full": {}, "frozen": {"model.batchnorm": "frozen"}})
    assert bad["torch"] is False
    assert bad["outcome"].startswith("variant 'frozen' of ") and "zero-initialised scale" in bad["outcome"]
    assert not (tmp_path / "runs").exists()


CHECK_IN_WARM_CHILD = """
import json, sys
from toolkit.ablation import lifecycle
from toolkit.ablation.local import prestart_warm_parent, prestarted_pool
from toolkit.errors import ToolkitError
from toolkit.study.spec import load_spec
prestart_warm_parent()
pool = prestarted_pool()
started = []
start = pool.start
pool.start = lambda args, *rest, **kw: started.append(args[0]) or start(args, *rest, **kw)
outcomes = []
for path in sys.argv[2:]:
    try:
        lifecycle.check(load_spec(path), sys.argv[1], 0, pool)
        outcomes.append("ok")
    except ToolkitError as err:
        outcomes.append(str(err))
print(json.dumps({"outcomes": outcomes, "torch": "torch" in sys.modules, "forked": started}))
"""


@pytest.mark.slow  # a runner and its warm parent
def test_a_runner_with_a_warm_parent_checks_in_a_child_of_it(tmp_path: Path) -> None:
    tiny = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1}
    paths = []
    for name, variants in (
        ("good", {"full": {}, "dropout": {"model.drop_rate": 0.2}}),
        ("bad", {"full": {}, "frozen": {"model.batchnorm": "frozen"}}),
    ):
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps({"name": name, "base": [str(DIGITS)], "overrides": tiny, "seeds": [0],
                                    "variants": variants}))  # fmt: skip
        paths.append(str(path))
    out = subprocess.run(
        [sys.executable, "-c", CHECK_IN_WARM_CHILD, str(tmp_path / "runs"), *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["forked"] == ["_check", "_check"]  # both checks forked, none fresh
    good, bad = result["outcomes"]
    assert good == "ok"
    # the same line as the in-process check
    assert bad.startswith("variant 'frozen' of ") and "zero-initialised scale" in bad
    assert not (tmp_path / "runs").exists()
