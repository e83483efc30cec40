"""Discriminator estimate of the conditional mutual information I(u; z | r) (IIDAF eq. 17-19).

Samples of the joint p(u, z, r) are the batch triples (u_i, z_i, r_i). Samples of the conditional
product p(u | r) p(z | r) are built by swapping in the z of a k-nearest neighbour of r_i in r-space:
close r values make z_j a draw from (approximately) p(z | r_i) that is independent of u_i given r.
This is the kNN construction of Sen, Suresh, Shanmugam, Dimakis, Shakkottai, "Model-Powered
Conditional Independence Test", NeurIPS 2017, and of Mukherjee, Asnani, Kannan, "CCMI: Classifier
based Conditional Mutual Information Estimation", UAI 2020. A classifier phi trained with binary
cross-entropy to separate the two gives the likelihood ratio through its logit, and the paper's
eq. 18 estimate is E_joint[logit phi] - E_product[logit phi].
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def knn_negative_indices(r: Tensor, k: int) -> Tensor:
    """(B,) long: for each sample i, the batch index of one of the k nearest neighbours of r_i.

    Neighbours are by Euclidean distance, excluding i itself; the one used is drawn uniformly among
    the k with torch's global RNG, so torch.manual_seed reproduces it. A batch with fewer than k + 1
    samples uses all B - 1 others; a single-sample batch has no other sample and gets itself, which
    makes the positive and negative triple identical (no conditional information is measurable).
    """
    if k < 1:
        raise ValueError(f"knn_negative_indices: k must be >= 1, got {k}")
    batch = r.shape[0]
    neighbours = min(k, batch - 1)
    if neighbours == 0:
        return torch.arange(batch, device=r.device)
    r = r.detach()
    distances = torch.cdist(r, r)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.topk(neighbours, dim=1, largest=False).indices
    choice = torch.randint(neighbours, (batch,), device=r.device)
    return nearest[torch.arange(batch, device=r.device), choice]


def knn_negative_labels(r: Tensor, z: Tensor, k: int) -> Tensor:
    """z' (B, Dz): for each sample i, the label embedding z of one of the k nearest neighbours of r_i."""
    return z[knn_negative_indices(r, k)]


class ConditionalMIDiscriminator(nn.Module):
    """phi(u, z, r) = sigmoid(logit): is (u, z, r) a joint triple or a kNN conditional-product one?

    Input concat(u, z, r); three Linear+ReLU layers, then a Linear output layer giving the logit
    (the paper: three linear layers with ReLU between them and an output layer).
    """

    def __init__(self, dim_u: int, dim_z: int, dim_r: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_u + dim_z + dim_r, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, u: Tensor, z: Tensor, r: Tensor) -> Tensor:
        """(B,) logits of phi for the triples (u_i, z_i, r_i)."""
        return self.net(torch.cat([u, z, r], dim=-1)).squeeze(-1)

    def estimate(self, u: Tensor, z: Tensor, r: Tensor, z_neg: Tensor) -> Tensor:
        """Eq. 18: E_pos[logit phi(u, z, r)] - E_neg[logit phi(u, z', r)]; what the model minimises."""
        return self(u, z, r).mean() - self(u, z_neg, r).mean()

    def discriminator_loss(self, u: Tensor, z: Tensor, r: Tensor, z_neg: Tensor) -> Tensor:
        """Binary cross-entropy that trains phi: joint triples labelled 1, kNN negatives labelled 0.

        Callers pass detached inputs so that this loss only updates phi.
        """
        logits = torch.cat([self(u, z, r), self(u, z_neg, r)])
        targets = torch.cat([torch.ones(u.shape[0], device=logits.device, dtype=logits.dtype),
                             torch.zeros(u.shape[0], device=logits.device, dtype=logits.dtype)])
        return F.binary_cross_entropy_with_logits(logits, targets)


def _predictor(input_dim: int, hidden: int, output_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(input_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, output_dim),
    )


class PredictiveConditionalMI(nn.Module):
    """I(u; y | r) = H(y | r) − H(y | u, r), each conditional entropy bounded by the cross-entropy
    of a learned predictor: q(y | r) and q(y | u, r) (a variational difference of two heads).

    Why not only the kNN discriminator of eq. 17-18: when u and r are two heads on the same input,
    a kNN neighbour in r-space has (nearly) the same u, so positive and negative triples are
    indistinguishable and φ sits at chance whatever I(u; y | r) is (measured on mosi_utt). The two
    heads need no negatives: what q(y | u, r) predicts better than q(y | r) is what u adds.

    Regression: q is Gaussian with the fitted variance, so H ≈ ½ log(2πe · MSE) and the estimate is
    ½ (log MSE_r − log MSE_ur). Classification: CE_r − CE_ur.
    """

    def __init__(self, dim_u: int, dim_r: int, label_dim: int, hidden: int):
        super().__init__()
        self.label_dim = label_dim  # 1: a regression score; ≥ 2: class logits
        self.given_shared = _predictor(dim_r, hidden, label_dim)
        self.given_both = _predictor(dim_u + dim_r, hidden, label_dim)

    def _losses(self, u: Tensor, r: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        predictions = (self.given_shared(r), self.given_both(torch.cat([u, r], dim=-1)))
        if self.label_dim == 1:
            target = labels.reshape(-1, 1).to(u.dtype)
            return tuple(F.mse_loss(p, target) for p in predictions)
        target = labels.reshape(-1).long()
        return tuple(F.cross_entropy(p, target) for p in predictions)

    def estimate(self, u: Tensor, r: Tensor, labels: Tensor) -> Tensor:
        """The I(u; y | r) estimate on this batch (may dip below 0 by estimation noise)."""
        given_shared, given_both = self._losses(u, r, labels)
        if self.label_dim == 1:
            floor = torch.finfo(given_shared.dtype).eps
            return 0.5 * (given_shared.clamp_min(floor).log() - given_both.clamp_min(floor).log())
        return given_shared - given_both

    def predictor_loss(self, u: Tensor, r: Tensor, labels: Tensor) -> Tensor:
        """What trains the two heads (callers pass detached u and r)."""
        given_shared, given_both = self._losses(u, r, labels)
        return given_shared + given_both
