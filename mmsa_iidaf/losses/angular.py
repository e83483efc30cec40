"""Angle-based losses between feature vectors: the pieces of AO-FL's partial disentanglement
(Che et al., "Angle-Optimized Partial Disentanglement for Multimodal Emotion Recognition in
Conversation"), written as functions of features, labels and margins.

- `label_aware_infonce` (L_CEN): a sample's feature in one modality is pulled to the same
  sample's feature in another; features of other samples whose label differs are pushed away.
- `angle_floor` (L_AAC): shared and specific features of a sample must be at least a given angle
  apart, and are free above it (partial, not rigid orthogonal, disentanglement).
- `cosine_ranking` (L_CSR): the angle between a sample's shared features of two modalities must
  be smaller, by a margin, than the angle between its shared and specific features.
- `remove_projection` (OPR): a feature without its component along another.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def label_aware_infonce(anchor: Tensor, positive: Tensor, negatives: Tensor, anchor_labels: Tensor,
                        negative_labels: Tensor, temperature: float) -> Tensor:
    """-mean_i log( e^{c(a_i, p_i)/τ} / (e^{c(a_i, p_i)/τ} + Σ_j [y_j ≠ y_i] e^{c(a_i, n_j)/τ}) ).

    anchor, positive (B, D): row i of each is sample i; negatives (N, D) with labels (N,); c is
    the cosine similarity. Only negatives whose label differs from the anchor's count, so a
    sample is never pushed from another of its own class. A row with no such negative adds 0.
    """
    anchor, positive, negatives = (F.normalize(x, dim=-1) for x in (anchor, positive, negatives))
    positive_logit = (anchor * positive).sum(-1, keepdim=True) / temperature
    negative_logits = anchor @ negatives.T / temperature
    mismatched = anchor_labels.reshape(-1, 1) != negative_labels.reshape(1, -1)
    negative_logits = negative_logits.masked_fill(~mismatched, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive_logit.squeeze(1)).mean()


def angle_floor(x: Tensor, y: Tensor, min_angle_deg: float) -> Tensor:
    """mean_i relu(cos(x_i, y_i) − cos θ_min): zero once every pair is θ_min or more apart."""
    cosine = F.cosine_similarity(x, y, dim=-1)
    bound = torch.cos(torch.deg2rad(torch.tensor(float(min_angle_deg), device=x.device)))
    return F.relu(cosine - bound).mean()


def cosine_ranking(closer_a: Tensor, closer_b: Tensor, farther_a: Tensor, farther_b: Tensor,
                   margin: float) -> Tensor:
    """mean_i relu(cos(farther_a_i, farther_b_i) − cos(closer_a_i, closer_b_i) + margin): zero
    when every sample's `closer` pair is at a smaller angle than its `farther` pair, by `margin`
    in cosine."""
    closer = F.cosine_similarity(closer_a, closer_b, dim=-1)
    farther = F.cosine_similarity(farther_a, farther_b, dim=-1)
    return F.relu(farther - closer + margin).mean()


def remove_projection(x: Tensor, direction: Tensor, eps: float = 1e-8) -> Tensor:
    """x − (x·d̂) d̂ per row: what is left of x orthogonal to `direction`."""
    unit = direction / direction.norm(dim=-1, keepdim=True).clamp_min(eps)
    return x - (x * unit).sum(-1, keepdim=True) * unit
