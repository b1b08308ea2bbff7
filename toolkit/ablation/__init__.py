"""Ablation studies: a spec of variants x seeds, each run a ``toolkit fit`` process, locally or on Slurm, resumable.

The spec, ledger and run layout live in :mod:`toolkit.study` (re-exported here: ``AblationSpec``, ``Run``, ``load_spec``); ``runner`` plans them from the ledger and executes them with
the ``local`` or ``slurm`` executor; ``cli`` is ``toolkit ablate``.
"""

from toolkit.study.spec import AblationSpec, Run, load_spec

__all__ = ["AblationSpec", "Run", "load_spec"]
