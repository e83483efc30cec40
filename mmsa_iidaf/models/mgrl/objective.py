"""MGRL's objective: L = L_T + λ_MC L_MC + λ_MAR L_MAR + λ_CON L_CON, and the modality
classifier's own loss.

- Critic step (`discriminator_loss`): the classifier C learns the modality of every g_m and p_m
  (detached), so it knows what makes a feature placeable.
- L_MC: C identifies each p_m (cross-entropy to m) and cannot place any g_m (KL from uniform):
  the distributions of the private subspaces differ by modality, the shared one's do not.
- L_MAR: P(m | p_m,i) ≥ P(m | g_m,i) + margin_m,i, with margin_m,i = margin · M · w_m,i (w
  detached): a modality that contributes more is decoupled more strictly; margin for all with
  `adaptive_contribution` off.
- L_CON: each modality's unimodal head learns y from [g_m; p_m], and the scorer's w_i matches
  softmax_m(−ℓ_m,i / τ) of the heads' per-sample losses (detached): the modality that predicts a
  sample better contributes more to it, in the fusion and in the margins.
L_T is IIDAF's task loss, so the comparison isolates the disentanglement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmsa_iidaf.losses.modality import confusion, identification, placement_margin
from mmsa_iidaf.losses.task import per_sample_task_loss

from ..common import PeerObjective
from .model import mgrl_settings

TERMS = ("L_T", "L_MC", "L_MAR", "L_CON")


class MGRLObjective(PeerObjective):
    terms = TERMS

    def __init__(self, args):
        settings = mgrl_settings(args)
        super().__init__(settings, {"L_MC": float(settings.lambda_mc),
                                    "L_MAR": float(settings.lambda_mar),
                                    "L_CON": float(settings.lambda_con)})

    def discriminator_loss(self, model, outputs: dict, labels: Tensor) -> Tensor:
        return torch.stack([
            identification(model.critic(features[m].detach()), i)
            for features in (outputs["shared"], outputs["specific"])
            for i, m in enumerate(model.modalities)]).mean()

    def modality_guidance(self, model, outputs: dict) -> Tensor:
        return torch.stack([
            identification(model.critic(outputs["specific"][m]), i)
            + confusion(model.critic(outputs["shared"][m]))
            for i, m in enumerate(model.modalities)]).mean()

    def margins(self, model, outputs: dict) -> Tensor:
        count = len(model.modalities)
        contribution = outputs["contribution"].detach()
        base = float(self.settings.margin)
        return torch.stack([
            placement_margin(model.critic(outputs["specific"][m]),
                             model.critic(outputs["shared"][m]), i,
                             (base * count * contribution[:, i]).clamp(max=1.0))
            for i, m in enumerate(model.modalities)]).mean()

    def contribution(self, model, outputs: dict, labels: Tensor) -> Tensor:
        unimodal = outputs["unimodal"]
        losses = torch.stack([per_sample_task_loss(unimodal[m], labels, self.train_mode)
                              for m in model.modalities], dim=-1)  # (B, M)
        target = torch.softmax(-losses.detach() / float(self.settings.contribution_temperature),
                               dim=-1)
        scorer = F.kl_div(torch.log(outputs["contribution"].clamp_min(1e-12)), target,
                          reduction="batchmean")
        return losses.mean() + scorer

    def __call__(self, model, outputs: dict, labels: Tensor) -> dict:
        guided = model.critic is not None
        return self.combine(outputs["M"], labels, {
            "L_MC": (lambda: self.modality_guidance(model, outputs)) if guided else None,
            "L_MAR": (lambda: self.margins(model, outputs)) if guided else None,
            "L_CON": (lambda: self.contribution(model, outputs, labels)) if model.adaptive
            else None,
        })
