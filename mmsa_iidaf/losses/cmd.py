"""Central Moment Discrepancy (CMD).

Zellinger, Grubinger, Lughofer, Natschläger, Saminger-Platz, "Central Moment Discrepancy (CMD) for
Domain-Invariant Representation Learning", ICLR 2017; used for modality alignment by MISA
(Hazarika et al., ACM MM 2020) and by IIDAF's similarity loss L_S (paper eq. 12-13).
"""

import torch
from torch import Tensor


def _safe_l2_norm(vector: Tensor) -> Tensor:
    """L2 norm whose value is 0 and whose gradient is 0 (a subgradient) at the zero vector.

    sqrt has an infinite derivative at 0, so a plain `sum(v**2) ** 0.5` returns NaN gradients when
    the two moment vectors coincide; adding an epsilon instead would bias the value away from 0.
    The inner `where` keeps sqrt's argument positive, the outer one selects the true value.
    """
    squared = vector.pow(2).sum()
    positive = squared > 0
    safe_squared = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe_squared.sqrt(), torch.zeros_like(squared))


def cmd(x1: Tensor, x2: Tensor, n_moments: int = 5) -> Tensor:
    """CMD_K between two samples: ||E(x1) - E(x2)|| + sum_{k=2..K} ||c_k(x1) - c_k(x2)||.

    x1: (B1, D), x2: (B2, D) samples; the expectations run over the batch dimension and c_k is the
    per-channel k-th central moment. n_moments is K (the paper uses K = 5).

    The paper's eq. 12 divides the k-th term by |b - a|^k for features bounded in [a, b]. IIDAF's
    shared features have no a-priori bound, so, as in MISA's implementation, |b - a| = 1.

    Returns a scalar; it is 0 with a finite (zero) gradient when x1 and x2 are identical.
    """
    if n_moments < 1:
        raise ValueError(f"cmd: n_moments must be >= 1, got {n_moments}")
    mean1, mean2 = x1.mean(dim=0), x2.mean(dim=0)
    centred1, centred2 = x1 - mean1, x2 - mean2
    discrepancy = _safe_l2_norm(mean1 - mean2)
    for order in range(2, n_moments + 1):
        moment1 = centred1.pow(order).mean(dim=0)
        moment2 = centred2.pow(order).mean(dim=0)
        discrepancy = discrepancy + _safe_l2_norm(moment1 - moment2)
    return discrepancy


def root_mean_square(x: Tensor) -> Tensor:
    """sqrt(mean(x²)) over all entries, floored so that a collapsed x cannot divide by zero."""
    return x.pow(2).mean().clamp_min(torch.finfo(x.dtype).eps).sqrt()


def scale_free_cmd(x1: Tensor, x2: Tensor, n_moments: int = 5) -> Tensor:
    """CMD_K between x1 / RMS(x1) and x2 / RMS(x2): invariant to rescaling either input.

    Eq. 12 assumes features bounded in [a, b]; unbounded features can lower plain CMD by
    shrinking towards 0, which aligns nothing. Dividing each input by its own RMS (with the RMS
    in the graph) removes that direction: only the shape of the two distributions counts.
    """
    return cmd(x1 / root_mean_square(x1), x2 / root_mean_square(x2), n_moments)


def range_cmd(x1: Tensor, x2: Tensor, n_moments: int = 5) -> Tensor:
    """Eq. 12 as written, with [a, b] the empirical range of both samples: the k-th moment term
    divided by |b − a|^k. Rescaling both inputs rescales the range with them, so the value is
    scale-invariant, and one input cannot lower it by shrinking alone (the other sets the range);
    unlike division by each input's RMS, every term stays bounded as in the bounded-feature CMD
    the paper's λ2 was set for. The range is in the graph: held fixed, its gradient would again
    point at shrinking.
    """
    low = torch.minimum(x1.min(), x2.min())
    span = (torch.maximum(x1.max(), x2.max()) - low).clamp_min(torch.finfo(x1.dtype).eps)
    return cmd(x1 / span, x2 / span, n_moments)
