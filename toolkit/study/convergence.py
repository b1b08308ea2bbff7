"""Was a run's training still improving when it stopped? The rule, pure and torch-free.

A run records its monitored validation score (``keys.MONITOR``) after every epoch. It is **still improving** when

- its best score came in its last epoch (a tie with an earlier epoch counts as the last), and
- that score beats the best of every epoch before its last ``WINDOW`` epochs by more than ``noise``: one validation
  image's worth for accuracy (``1 / n_val``), so a single image flipping is never called progress.

A run of fewer than ``WINDOW + 1`` epochs cannot show a trend: the rule answers None (unknown). A linear probe solved
to convergence (one probe epoch) is None too: it has no epochs to compare. A run that early stopping ended has by
definition gone ``patience`` epochs without improving, and the rule says False for it.

``toolkit fit`` writes the answer into ``result.json`` and the W&B summary (``health/still_improving``); the table
says per row how many of its seeds were still improving.
"""

from __future__ import annotations

from collections.abc import Sequence

#: how many of the last epochs must carry the improvement (compared with the best before them)
WINDOW = 2


def still_improving(scores: Sequence[float], noise: float = 0.0, higher_is_better: bool = True) -> bool | None:
    """The rule above on the per-epoch validation scores (oldest first); None when there are too few epochs.

    Args:
        scores: the monitored validation score after each epoch.
        noise: the least improvement that is not noise (``1 / n_val`` for accuracy).
        higher_is_better: the monitor's direction (False for a loss).
    """
    values = [float(s) if higher_is_better else -float(s) for s in scores]
    if len(values) < WINDOW + 1:
        return None
    if values[-1] < max(values):
        return False
    return values[-1] - max(values[:-WINDOW]) > noise
