"""Lightning callbacks of the toolkit: snapshot and checkpoint ensembles, the divergence guard and run health."""

from toolkit.callbacks.ensemble import CheckpointEnsemble, EnsembleEvaluator
from toolkit.callbacks.health import Diverged, DivergenceGuard, RunHealth
from toolkit.callbacks.snapshot import SnapshotEnsemble

__all__ = ["CheckpointEnsemble", "Diverged", "DivergenceGuard", "EnsembleEvaluator", "RunHealth", "SnapshotEnsemble"]
