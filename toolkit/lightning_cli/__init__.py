"""``toolkit fit|validate|test|predict``: the training program's LightningCLI and its helpers, split by job.

``ToolkitCLI``, ``run_cli``, ``parse_config(s)`` and ``check_args`` are imported from here by the console command, the
ablation runner's checks, the doctor and the tests. They are loaded lazily (PEP 562), so that the torch-free helpers
of this package (``short_help``, ``parsed_checks``) can be imported without Lightning.
"""

from __future__ import annotations

from toolkit import lazy_exports

_EXPORTS = {
    "check_args": "toolkit.lightning_cli.parse_only",
    "parse_config": "toolkit.lightning_cli.parse_only",
    "parse_configs": "toolkit.lightning_cli.parse_only",
    "AblationInfo": "toolkit.lightning_cli.program",
    "LoggedConfig": "toolkit.lightning_cli.program",
    "ToolkitCLI": "toolkit.lightning_cli.program",
    "run_cli": "toolkit.lightning_cli.program",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
