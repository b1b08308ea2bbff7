"""Every shipped config parses with the CLI's own parser (delta configs on top of digits.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import DIGITS, ROOT

from toolkit.lightning_cli import check_args

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    stack = (
        ["--config", str(path)]
        if "model" in data or path.name == "digits.yaml"
        else ["--config", DIGITS, "--config", str(path)]
    )
    check_args(["fit", *stack])
