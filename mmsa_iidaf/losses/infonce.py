"""InfoNCE with learned bilinear critics and in-batch negatives.

van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding",
arXiv:1807.03748, 2018. IIDAF's relevant-MI loss L_R (paper eq. 16) uses it with the score
s(x, y) = f(x)^T h(y), f and h MLPs.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _critic(dim_in: int, hidden: int, proj_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, proj_dim))


class InfoNCE(nn.Module):
    """InfoNCE loss between paired samples x (B, dim_x) and y (B, dim_y).

    Row i of the score matrix S_ij = f(x_i)^T h(y_j) is classified against its diagonal entry:
    loss = -(1/B) sum_i log softmax_j(S_ij)[i]. log B - loss is the InfoNCE lower bound on I(x; y),
    so minimising the loss maximises the bound.

    One-sided (x is the anchor, the other y_j of the batch are its negatives) because that is the
    paper's eq. 16 as written: the softmax runs over y_j for a fixed x. Either direction alone is a
    valid lower bound on I(x; y); a symmetric version would change the loss scale against the
    paper's lambda weights.
    """

    def __init__(self, dim_x: int, dim_y: int, proj_dim: int, hidden: int | None = None):
        """f: dim_x -> hidden -> proj_dim and h: dim_y -> hidden -> proj_dim (ReLU MLPs);
        hidden defaults to proj_dim."""
        super().__init__()
        hidden = proj_dim if hidden is None else hidden
        self.f = _critic(dim_x, hidden, proj_dim)
        self.h = _critic(dim_y, hidden, proj_dim)

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        """(B, B) critic scores s(x_i, y_j)."""
        return self.f(x) @ self.h(y).T

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Scalar InfoNCE cross-entropy with the positives on the diagonal."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"InfoNCE: x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
        targets = torch.arange(x.shape[0], device=x.device)
        return F.cross_entropy(self.scores(x, y), targets)
