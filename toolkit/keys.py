"""Metric keys shared by training, ablations and reports (defined once; imports nothing heavy).

The metrics behind ``<stage>/acc`` and ``<stage>/f1`` are built in one place, :mod:`toolkit.model.metrics`.
"""

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
VAL_LOSS = "val/loss"
VAL_ACC = "val/acc"
VAL_F1 = "val/f1"
TEST_ACC = "test/acc"
TEST_F1 = "test/f1"

#: best value of each validation metric goes into the W&B summary ("max" or "min")
VAL_SUMMARY = {VAL_ACC: "max", VAL_F1: "max", VAL_LOSS: "min"}

#: written by ``toolkit fit`` into its ``default_root_dir`` as its last act; the ablation runner reads it on restart
RESULT_FILE = "result.json"
#: the folder of an ablation's report beside its runs: ``<root>/<ablation>/report`` (so no variant may be named so)
REPORT_DIR = "report"

#: the metric the checkpoint callback monitors, and its direction
MONITOR = VAL_ACC
MONITOR_MODE = "max"


def snapshot_key(stage: str, name: str, index: int) -> str:
    """Key of one snapshot's metric, e.g. ``test/acc_snapshot_2``."""
    return f"{stage}/{name}_snapshot_{index}"


def ensemble_key(stage: str, name: str) -> str:
    """Key of an ensemble metric, e.g. ``test/acc_ensemble``."""
    return f"{stage}/{name}_ensemble"


def member_key(stage: str, name: str, index: int) -> str:
    """Key of one independent checkpoint's metric in a checkpoint ensemble, e.g. ``test/acc_member_1``."""
    return f"{stage}/{name}_member_{index}"


#: W&B summary key of the epoch (counted from 1) after which a search trial was pruned (``callbacks/pruning.py``)
PRUNED_AT = "search/pruned_at_epoch"
