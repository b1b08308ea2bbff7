"""The run-folder layout every part of a study agrees on: ``<root>/<ablation>/<variant>/seed<k>/`` and its files.

``toolkit fit`` writes into a run folder, the ablation runner starts and watches it, the report reads it. A run
folder holds ``run.log`` (the process's output), ``config.yaml`` (the resolved config), ``checkpoints/``,
``wandb/`` (the W&B run folders, one per attempt) and ``result.json`` (:mod:`toolkit.study.result`). W&B's folder
naming is known here only.
"""

from __future__ import annotations

import re
from pathlib import Path

from toolkit.keys import REPORT_DIR, RESULT_FILE

RUN_LOG = "run.log"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
WANDB_DIR = "wandb"
#: what the runner keeps in ``<root>/<ablation>/`` beside the variant folders (the ledger, its journal and locks, the
#: tune stage's choices, the report): a variant of one of these names would mix its runs with them
STUDY_FILES = ("ledger.json", "ledger.journal", "ledger.json.lock", "runner.lock", "tune.json", REPORT_DIR)
__all__ = [
    "CHECKPOINTS",
    "CONFIG_FILE",
    "LAST_CHECKPOINT",
    "RESULT_FILE",
    "RUN_LOG",
    "STUDY_FILES",
    "WANDB_DIR",
    "run_dir",
]

#: a W&B run folder: ``[offline-]run-<YYYYmmdd_HHMMSS>-<id>``
_WANDB_RUN = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def run_dir(root: str | Path, ablation: str, variant: str, seed: int) -> Path:
    """Where one run keeps its outputs: ``<root>/<ablation>/<variant>/seed<seed>``."""
    return Path(root) / ablation / variant / f"seed{seed}"


def wandb_runs(folder: Path) -> list[tuple[str, str]]:
    """The W&B runs under ``<run folder>/wandb`` as ``(run id, folder)``, oldest first (one per attempt).

    The ablation runner records them in its ledger; the report finds each run's ``result.json`` from its log.
    """
    found = []
    for candidate in (folder / WANDB_DIR).glob("*run-*"):
        match = _WANDB_RUN.match(candidate.name)
        if match and candidate.is_dir():
            found.append((candidate.name.removeprefix("offline-"), match["id"], str(candidate)))
    return [(run_id, path) for _, run_id, path in sorted(found)]  # names start with the start time
