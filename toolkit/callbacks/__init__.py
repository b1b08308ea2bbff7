"""Lightning callbacks of the toolkit: snapshot ensembles and checkpoint ensembles."""

from toolkit.callbacks.ensemble import CheckpointEnsemble, EnsembleEvaluator
from toolkit.callbacks.snapshot import SnapshotEnsemble

__all__ = ["CheckpointEnsemble", "EnsembleEvaluator", "SnapshotEnsemble"]
