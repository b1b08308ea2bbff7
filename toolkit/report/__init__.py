"""Ablation reports from W&B runs: read logs (``wandb_log``, ``sources``), aggregate (``table``), write (``render``,
``plots``); ``build_report`` does all of it and ``toolkit report`` (``cli``) is its command line.

Nothing here imports torch or Lightning; the public names are imported lazily so that ``toolkit.report.cli`` loads
only what the command needs.
"""

from __future__ import annotations

from toolkit import lazy_exports

_EXPORTS = {
    "build_report": "toolkit.report.build",
    "ReportResult": "toolkit.report.build",
    "read_run": "toolkit.report.wandb_log",
    "RunLog": "toolkit.report.wandb_log",
    "LogDamageWarning": "toolkit.report.wandb_log",
    "aggregate": "toolkit.report.table",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
