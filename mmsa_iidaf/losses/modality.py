"""Losses on a modality classifier's view of features: the pieces of MGRL's modality-guided
decoupling (Cho, "Modality-Guided Refinement Learning for Multimodal Emotion Recognition", IEEE
Access 2025). A classifier C guesses which modality a feature came from: a modality-specific
feature should be easy to place (`identification`), a modality-invariant one impossible
(`confusion`), and the specific feature more placeable than the shared one by a margin that can
differ per sample (`placement_margin`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def identification(logits: Tensor, modality: int) -> Tensor:
    """Cross-entropy of C's logits (B, M) against the true modality index: 0 when C is sure and
    right."""
    target = torch.full((logits.shape[0],), modality, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


def confusion(logits: Tensor) -> Tensor:
    """KL(uniform ‖ softmax(logits)), mean over rows: 0 exactly when C gives every modality
    1/M, i.e. cannot tell where the feature came from. (Cross-entropy to the uniform
    distribution minus its floor log M.)"""
    count = logits.shape[-1]
    return -(F.log_softmax(logits, dim=-1).mean(dim=-1)).mean() - math.log(count)


def placement_margin(specific_logits: Tensor, shared_logits: Tensor, modality: int,
                     margins: Tensor) -> Tensor:
    """mean_i relu(margin_i − (P(m | specific_i) − P(m | shared_i))): 0 once every sample's
    specific feature is placed in its modality m with a probability at least margin_i above its
    shared feature's. `margins` (B,) or a scalar."""
    specific = F.softmax(specific_logits, dim=-1)[:, modality]
    shared = F.softmax(shared_logits, dim=-1)[:, modality]
    return F.relu(margins - (specific - shared)).mean()
