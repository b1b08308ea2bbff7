"""Lightning callbacks of the toolkit: snapshot ensembles, checkpoint ensembles, the random state in checkpoints."""

from toolkit.callbacks.ensemble import CheckpointEnsemble, EnsembleEvaluator
from toolkit.callbacks.random_state import RandomStateCheckpoint
from toolkit.callbacks.snapshot import SnapshotEnsemble

__all__ = ["CheckpointEnsemble", "EnsembleEvaluator", "RandomStateCheckpoint", "SnapshotEnsemble"]
