"""The run contract, torch-free: what ``toolkit fit``, the ablation runner, the search and the report agree on.

``spec`` (an ablation spec and its runs), ``fields`` (checked reading of study files), ``ledger`` (the runs' state
on disk), ``layout`` (the run-folder layout and W&B run lookup), ``result`` (``result.json`` as :class:`RunResult`).
Nothing here imports torch, Lightning, pandas or another toolkit package above the base.
"""
