"""Ablation studies: a spec of variants x seeds, each run a ``toolkit fit`` process, locally or on Slurm, resumable.

The spec, the ledger and the run-folder layout are the run contract in :mod:`toolkit.study` (``AblationSpec``,
``Run`` and ``load_spec`` are re-exported here for users); ``runner`` plans the runs from the ledger and executes
them with an executor (``local`` or ``slurm``); ``cli`` is ``toolkit ablate``.
"""

from toolkit.study.spec import AblationSpec, Run, load_spec

__all__ = ["AblationSpec", "Run", "load_spec"]
