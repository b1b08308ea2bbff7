"""Lightning callbacks of the toolkit: ensembles, the random state in checkpoints, divergence guard, run health."""

from toolkit.callbacks.ensemble import CheckpointEnsemble, EnsembleEvaluator
from toolkit.callbacks.health import Diverged, DivergenceGuard, RunHealth
from toolkit.callbacks.random_state import RandomStateCheckpoint
from toolkit.callbacks.snapshot import SnapshotEnsemble

__all__ = [
    "CheckpointEnsemble",
    "Diverged",
    "DivergenceGuard",
    "EnsembleEvaluator",
    "RandomStateCheckpoint",
    "RunHealth",
    "SnapshotEnsemble",
]
