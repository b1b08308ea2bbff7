"""The converged linear probe: multinomial logistic regression on frozen features, solved by full-batch L-BFGS.

An SGD probe of a few epochs stops far from the optimum of its (convex) problem, so a "linear probe" row would
measure an unfinished head. Here the head's linear layer is the minimiser of

    mean cross-entropy(x W^T + b, y) + l2 / 2 * ||W||^2        (the bias is not penalised, as in scikit-learn)

found by ``torch.optim.LBFGS`` with a strong-Wolfe line search in float64, for each ``l2`` of a small grid, the
one with the best validation accuracy (ties: lower validation loss, then the larger ``l2``) kept. In scikit-learn's
terms ``l2 = 1 / (C * n_train)``. Torch's own L-BFGS is used (not scikit-learn) so the label smoothing of the
classifier's loss and its head parameters are the ones solved for; scikit-learn is the reference in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: the default grid of L2 strengths (per-sample loss scale): scikit-learn C = 1 / (l2 * n_train)
DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class ProbeSolution:
    """A solved head and how it was chosen.

    Attributes:
        weight: ``(classes, features)`` float32.
        bias: ``(classes,)`` float32.
        l2: the chosen L2 strength.
        val_acc: validation accuracy at ``l2``.
        val_loss: validation cross-entropy at ``l2``.
        train_loss: training objective (without the penalty) at ``l2``.
        grid: ``(l2, val_acc, val_loss)`` of every strength tried.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    val_acc: float
    val_loss: float
    train_loss: float
    grid: tuple[tuple[float, float, float], ...]


def fit_logistic(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    l2: float,
    label_smoothing: float = 0.0,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise the L2-penalised mean cross-entropy of a linear layer on ``features`` (float64, full batch).

    Args:
        features: ``(n, d)`` inputs.
        labels: ``(n,)`` class indices.
        num_classes: output width.
        l2: penalty strength on the weights (not the bias).
        label_smoothing: as in ``F.cross_entropy``.
        start: initial ``(weight, bias)`` (a warm start); zeros otherwise.
        max_iter: L-BFGS iterations at most.

    Returns:
        ``(weight, bias)`` in float64.
    """
    x = features.detach().to(torch.float64)
    y = labels.detach().long()
    if start is None:
        weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
        bias = torch.zeros(num_classes, dtype=torch.float64)
    else:
        weight, bias = (t.detach().to(torch.float64).clone() for t in start)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y, label_smoothing=label_smoothing)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    # a problem this small runs fastest on one thread: more only spin and wait (10x slower on a loaded 2-core box)
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():  # Lightning hooks may run under no_grad/inference; the solve needs autograd
            solver.step(closure)
    finally:
        torch.set_num_threads(threads)
    return weight.detach(), bias.detach()


def _evaluate(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = x.to(torch.float64) @ weight.T + bias
    return float((logits.argmax(-1) == y).double().mean()), float(F.cross_entropy(logits, y.long()))


def solve_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: tuple[float, ...] | list[float] = DEFAULT_L2_GRID,
    label_smoothing: float = 0.0,
) -> ProbeSolution:
    """Solve the head for every ``l2`` of ``grid`` (strongest first, each warm-starting the next) and keep the one
    with the best validation accuracy (ties: lower validation loss, then the stronger penalty).

    Args:
        train: ``(features, labels)`` to fit.
        val: ``(features, labels)`` that choose ``l2``.
        num_classes: output width.
        grid: L2 strengths to try.
        label_smoothing: as in the classifier's loss.
    """
    with torch.no_grad():
        results = []
        start = None
        for l2 in sorted(grid, reverse=True):
            with torch.enable_grad():
                weight, bias = fit_logistic(*train, num_classes, l2, label_smoothing, start)
            start = (weight, bias)
            val_acc, val_loss = _evaluate(weight, bias, *val)
            results.append((l2, val_acc, val_loss, weight, bias))
    # best accuracy, then lower loss; the strongest penalty wins remaining ties (sorted first, max keeps the first)
    l2, val_acc, val_loss, weight, bias = max(results, key=lambda r: (r[1], -r[2]))
    train_loss = _evaluate(weight, bias, *train)[1]
    return ProbeSolution(
        weight=weight.float(),
        bias=bias.float(),
        l2=l2,
        val_acc=val_acc,
        val_loss=val_loss,
        train_loss=train_loss,
        grid=tuple((r[0], r[1], r[2]) for r in results),
    )
