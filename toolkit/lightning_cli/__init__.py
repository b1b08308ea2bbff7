"""``toolkit fit|validate|test|predict``: the training program's LightningCLI, split by job (see :mod:`.program`).

``ToolkitCLI``, ``run_cli``, ``parse_config(s)`` and ``check_args`` are imported from here by the console command, the
ablation runner's checks, the doctor and the tests.
"""

from toolkit.lightning_cli.parse_only import check_args, parse_config, parse_configs
from toolkit.lightning_cli.program import (
    AblationInfo,
    LoggedConfig,
    ToolkitCLI,
    run_cli,
)

__all__ = ["AblationInfo", "LoggedConfig", "ToolkitCLI", "check_args", "parse_config", "parse_configs", "run_cli"]
