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


def lesion_key(block: int) -> str:
    """Test accuracy with residual block ``block`` alone lesioned (``callbacks/lesion.LesionSweep``)."""
    return f"test/acc_lesion_{block}"


def lesion_k_key(k: int) -> str:
    """Mean test accuracy with ``k`` residual blocks lesioned, e.g. ``test/acc_lesion_k2``."""
    return f"test/acc_lesion_k{k}"


def lesion_k_of(key: str) -> int | None:
    """``k`` of a :func:`lesion_k_key` (None for any other key): the report reads the lesion curve back by it."""
    prefix = lesion_k_key(0)[:-1]
    rest = key[len(prefix) :] if key.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def config_key(option: str) -> str:
    """The runs table's column of a run's config value, e.g. ``config_key("model.residual")`` ->
    ``config.model.residual`` (how the report finds a switch's level)."""
    return f"config.{option}"


#: W&B summary key of the epoch (counted from 1) after which a search trial was pruned (``callbacks/pruning.py``)
PRUNED_AT = "search/pruned_at_epoch"
