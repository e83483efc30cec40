"""Hilbert-Schmidt Independence Criterion (HSIC), biased empirical estimator.

Gretton, Bousquet, Smola, Schölkopf, "Measuring Statistical Dependence with Hilbert-Schmidt
Norms", ALT 2005. IIDAF uses it for the independence loss L_H (paper eq. 14-15).
"""

import torch
from torch import Tensor


def _squared_distances(x: Tensor) -> Tensor:
    """(B, B) pairwise squared Euclidean distances between the rows of x (B, D)."""
    norms = x.pow(2).sum(dim=1, keepdim=True)
    # The expansion can go slightly negative through rounding; distances are >= 0 by definition.
    return (norms + norms.T - 2.0 * x @ x.T).clamp_min(0.0)


def _gaussian_gram(x: Tensor, sigma: float | None) -> Tensor:
    """Gaussian-kernel Gram matrix exp(-||x_i - x_j||^2 / (2 sigma^2)).

    With sigma None the bandwidth is the median pairwise distance (median heuristic, Gretton et al.
    2005/2008): the features' scale changes during training and differs between modalities, and
    the median keeps the kernel in its informative range (neither ~1 nor ~0 everywhere) without a
    tuned constant. The bandwidth is a setting of the measurement, not something to optimise, so it
    is detached: otherwise the model could lower HSIC by moving the bandwidth instead of removing
    dependence.
    """
    squared = _squared_distances(x)
    if sigma is None:
        batch = x.shape[0]
        rows, cols = torch.triu_indices(batch, batch, offset=1, device=x.device)
        off_diagonal = squared.detach()[rows, cols]
        sigma_sq = off_diagonal.median()
    else:
        sigma_sq = torch.as_tensor(float(sigma) ** 2, dtype=x.dtype, device=x.device)
    # Collapsed samples give a zero median; the floor keeps the division (and its gradient) finite.
    return torch.exp(-squared / (2.0 * sigma_sq.clamp_min(torch.finfo(x.dtype).eps)))


def hsic(x: Tensor, y: Tensor, sigma: float | None = None) -> Tensor:
    """Biased HSIC estimate tr(K H L H) / (B - 1)^2 between paired samples x (B, Dx) and y (B, Dy).

    K, L are Gaussian-kernel Gram matrices of x and y, H = I - 11^T / B the centring matrix.
    sigma: kernel bandwidth shared by both inputs; None picks each input's median pairwise distance.
    Near 0 for independent inputs, positive when they are dependent. With B < 2 there is no pair
    to measure dependence on, and the result is 0.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"hsic: x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    batch = x.shape[0]
    if batch < 2:
        return x.new_zeros(())
    gram_x = _gaussian_gram(x, sigma)
    gram_y = _gaussian_gram(y, sigma)
    # H K H subtracts the row and column means and adds back the grand mean; since L is symmetric,
    # tr((H K H) L) is the sum of their elementwise product. Same value as tr(K H L H), no B^3 matmul.
    centred_x = gram_x - gram_x.mean(dim=0, keepdim=True) - gram_x.mean(dim=1, keepdim=True) + gram_x.mean()
    return (centred_x * gram_y).sum() / (batch - 1) ** 2
