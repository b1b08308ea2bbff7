"""The classification metrics of every stage and every ensemble member: one torchmetrics MetricCollection factory.

The logged keys are ``<stage>/<name>`` (``val/acc``, ``test/f1``; see :mod:`toolkit.keys`), so the names here are
the one place a metric is defined; the classifier clones the collection per stage with the stage as prefix.
"""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def classification_metrics(num_classes: int, prefix: str | None = None) -> MetricCollection:
    """Accuracy (micro: the fraction of correct predictions) and macro-F1, keyed ``<prefix>acc``, ``<prefix>f1``."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=prefix,
        # each metric keeps its own state: Lightning logs and resets them one by one
        compute_groups=False,
    )
