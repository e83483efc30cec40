"""MIC: the mutual-information constraints of IIDAF (paper §2.3, eq. 16-20).

L_R (eq. 16) maximises InfoNCE bounds on I(r_m1; r_m2) for each modality pair and on I(r_m; z) for
each modality, z = Linear(y) the label embedding. L_C (eq. 17-19) minimises a discriminator estimate
of I(u_m; z | r_m) for each modality. L_MI = L_R + L_C (eq. 20).

The discriminators phi_m are trained adversarially with their own optimizer: `discriminator_loss`
trains them on detached inputs, `forward` uses them as fixed critics (no gradient reaches phi), and
`discriminator_parameters` / `main_parameters` split the parameters between the two optimizers.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsa_iidaf.errors import ConfigError

from .settings import CMI_ESTIMATORS
from mmsa_iidaf.losses import (
    ConditionalMIDiscriminator,
    InfoNCE,
    PredictiveConditionalMI,
    knn_negative_indices,
)

MODALITY_ORDER = "tav"
TRAIN_MODES = ("regression", "classification")


def _check_modalities(modalities: str) -> None:
    ordered = "".join(m for m in MODALITY_ORDER if m in modalities)
    if not modalities or ordered != modalities:
        raise ConfigError(
            f"modalities {modalities!r} is not a non-empty subset of 't', 'a', 'v' in that order; "
            f"use e.g. 'tav', 'ta' or 'v'"
        )


@contextmanager
def _frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Use `module` with its parameters outside autograd, restoring each one's flag afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


class MIC(nn.Module):
    """Mutual-information constraints over the shared (r_m) and specific (u_m) features.

    modalities: subset of 'tav' in that order; dim: D, the width of r_m, u_m and z;
    label_dim: 1 for regression (y is the score), the number of classes for classification
    (y one-hot); proj_dim: output width of the InfoNCE critics f and h; disc_hidden: width of the
    critic layers; knn_k: neighbours among which each kNN negative is drawn;
    estimator: how I(u_m; y | r_m) of eq. 17-19 is estimated —
      'knn_discriminator' (the paper's reading): φ(u, z, r) against kNN negatives, eq. 18's
          logit difference;
      'predictive' (default): the difference of two predictive heads' cross-entropies,
          q(y | r) against q(y | u, r) (`PredictiveConditionalMI`; docs/ARCHITECTURE.md says why).
    Either critic is trained by its own optimizer step (`discriminator_loss`) and is a fixed
    critic in `forward`.
    """

    def __init__(self, modalities: str, dim: int, label_dim: int, proj_dim: int, disc_hidden: int,
                 knn_k: int, estimator: str = "predictive"):
        super().__init__()
        _check_modalities(modalities)
        if knn_k < 1:
            raise ConfigError(f"MIC knn_k is {knn_k}; set it to a positive integer (e.g. 5)")
        if estimator not in CMI_ESTIMATORS:
            raise ConfigError(
                f"config 'cmi_estimator' = {estimator!r} must be one of {', '.join(CMI_ESTIMATORS)}"
            )
        self.modalities = modalities
        self.label_dim = label_dim
        self.knn_k = knn_k
        self.estimator = estimator
        self.label_encoder = nn.Linear(label_dim, dim)
        self.pair_infonce = nn.ModuleDict(
            {m1 + m2: InfoNCE(dim, dim, proj_dim) for m1, m2 in combinations(modalities, 2)}
        )
        self.label_infonce = nn.ModuleDict({m: InfoNCE(dim, dim, proj_dim) for m in modalities})
        if estimator == "knn_discriminator":
            self.discriminators = nn.ModuleDict(
                {m: ConditionalMIDiscriminator(dim, dim, dim, disc_hidden) for m in modalities}
            )
        else:
            self.discriminators = nn.ModuleDict(
                {m: PredictiveConditionalMI(dim, dim, label_dim, disc_hidden) for m in modalities}
            )
        # Per modality: (detached r of the last batch, its kNN negative indices). Lets the phi step
        # and the model's L_C of one batch use the same negatives, whichever of them runs first.
        self._negative_cache: dict[str, tuple[Tensor, Tensor]] = {}

    def label_embedding(self, labels: Tensor, train_mode: str) -> Tensor:
        """z (B, D) = Linear(y): labels are (B, 1) float scores for 'regression', (B,) long class
        ids for 'classification' (one-hot encoded here)."""
        if train_mode == "regression":
            if self.label_dim != 1:
                raise ValueError(f"MIC: regression needs label_dim 1, this MIC has label_dim {self.label_dim}")
            y = labels.reshape(-1, 1)
        elif train_mode == "classification":
            y = F.one_hot(labels.reshape(-1).long(), num_classes=self.label_dim)
        else:
            raise ValueError(f"MIC: train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        return self.label_encoder(y.to(self.label_encoder.weight.dtype))

    def negative_indices(self, shared: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per modality, the (B,) batch indices of the kNN hard negatives of r_m (see
        `knn_negative_indices`). Reused while r_m is unchanged, so a batch's phi step and its L_C
        see the same negatives; a new batch draws new ones from torch's RNG."""
        indices = {}
        for m in self.modalities:
            r = shared[m].detach()
            cached = self._negative_cache.get(m)
            if cached is not None and cached[0].shape == r.shape and torch.equal(cached[0], r):
                indices[m] = cached[1]
            else:
                indices[m] = knn_negative_indices(r, self.knn_k)
                # A copy, so that an in-place change to r's storage cannot pass for the same batch.
                self._negative_cache[m] = (r.clone(), indices[m])
        return indices

    def forward(self, shared: dict[str, Tensor], specific: dict[str, Tensor], labels: Tensor,
                train_mode: str) -> dict:
        """The model's MI losses for one batch.

        shared / specific map each modality letter to r_m / u_m (B, D). Returns
        'L_R': sum of the InfoNCE losses over the modality pairs (r_m1, r_m2) and over (r_m, z) for
            each modality, summed as in eq. 16 (with one modality there are no pair terms);
        'L_C': sum over modalities of the estimate of I(u_m; z | r_m) (eq. 19); the predictive
            estimate is clipped at 0 (a conditional MI is never negative: below 0 the estimate is
            noise, and following it would reward u for fooling the fixed heads, not for carrying
            less);
        'L_MI': L_R + L_C (eq. 20);
        'pairs': {'t-a': ..., 't-z': ...} each InfoNCE term, 'conditional': {m: raw estimate}.
        Gradients of L_C reach u_m (and r_m for φ) but neither the critic (it has its own step)
        nor z: I(u; y | r) does not depend on how y is embedded, so L_C must not reshape the
        embedding, which L_R trains.
        """
        z = self.label_embedding(labels, train_mode)
        pairs = {f"{m1}-{m2}": self.pair_infonce[m1 + m2](shared[m1], shared[m2])
                 for m1, m2 in combinations(self.modalities, 2)}
        pairs.update({f"{m}-z": self.label_infonce[m](shared[m], z) for m in self.modalities})
        l_r = torch.stack(list(pairs.values())).sum()

        conditional = self.conditional_mi(shared, specific, labels, train_mode, z.detach())
        if self.estimator == "predictive":
            conditional_terms = [value.clamp_min(0) for value in conditional.values()]
        else:  # the paper's eq. 18 estimate, as written
            conditional_terms = list(conditional.values())
        l_c = torch.stack(conditional_terms).sum()
        return {"L_R": l_r, "L_C": l_c, "L_MI": l_r + l_c, "pairs": pairs,
                "conditional": conditional}

    def conditional_mi(self, shared: dict[str, Tensor], specific: dict[str, Tensor],
                       labels: Tensor, train_mode: str, z: Tensor | None = None) -> dict[str, Tensor]:
        """{m: the estimate of I(u_m; y | r_m)} with the critics held fixed."""
        estimates = {}
        if self.estimator == "knn_discriminator":
            z = self.label_embedding(labels, train_mode).detach() if z is None else z
            negatives = self.negative_indices(shared)
            for m in self.modalities:
                with _frozen(self.discriminators[m]) as discriminator:
                    estimates[m] = discriminator.estimate(specific[m], z, shared[m], z[negatives[m]])
        else:
            # r is the condition, not the trainee: L_C asks u to carry no label information
            # beyond r, and must not push r to hide information from q(y | u, r).
            for m in self.modalities:
                with _frozen(self.discriminators[m]) as estimator:
                    estimates[m] = estimator.estimate(specific[m], shared[m].detach(), labels)
        return estimates

    def critic_losses(self, shared: dict[str, Tensor], specific: dict[str, Tensor], labels: Tensor,
                      train_mode: str) -> dict[str, Tensor]:
        """{m: the critic's own loss} (φ's binary cross-entropy on kNN negatives, or the two heads'
        cross-entropies), on detached features and labels."""
        if self.estimator == "predictive":
            return {m: self.discriminators[m].predictor_loss(specific[m].detach(), shared[m].detach(),
                                                             labels)
                    for m in self.modalities}
        with torch.no_grad():
            z = self.label_embedding(labels, train_mode)
        negatives = self.negative_indices(shared)
        return {m: self.discriminators[m].discriminator_loss(specific[m].detach(), z,
                                                             shared[m].detach(), z[negatives[m]])
                for m in self.modalities}

    def discriminator_loss(self, shared: dict[str, Tensor], specific: dict[str, Tensor], labels: Tensor,
                           train_mode: str) -> Tensor:
        """The sum of `critic_losses`: stepping an optimizer over `discriminator_parameters()` on it
        trains the critics alone."""
        return torch.stack(list(self.critic_losses(shared, specific, labels, train_mode).values())).sum()

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the critics (φ_m or the predictive heads): their own optimizer steps these."""
        return list(self.discriminators.parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        """All other MIC parameters (label embedding, InfoNCE critics): the model optimizer's."""
        discriminator_ids = {id(p) for p in self.discriminators.parameters()}
        return [p for p in self.parameters() if id(p) not in discriminator_ids]
