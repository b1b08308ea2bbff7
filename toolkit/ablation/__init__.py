"""Ablation studies: a spec of variants x seeds, each run a ``toolkit fit`` process, locally or on Slurm, resumable.

``spec`` (torch-free) reads specs and names the runs; ``runner`` plans them from the ledger and executes them with
the ``local`` or ``slurm`` executor; ``cli`` is ``toolkit ablate``.
"""

from toolkit.ablation.spec import AblationSpec, Run, load_spec

__all__ = ["AblationSpec", "Run", "load_spec"]
