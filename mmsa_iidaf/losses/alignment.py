"""Alignment and disparity between feature sets at three granularities: the pieces of FDRL's
fine-grained disentanglement (Sun et al., "Fine-grained Disentangled Representation Learning for
Multimodal Emotion Recognition", ICASSP 2024) and of its coarse (MISA-style, batch-level)
ablation.

- instance level: the same sample's features compared one to one (`instance_alignment`,
  `instance_disparity`);
- class level: the distributions of two feature sets compared within each label class
  (`class_conditional_cmd`);
- batch level: whole batches compared (`scale_free_cmd` in cmd.py, `soft_orthogonality`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .cmd import scale_free_cmd


def instance_alignment(x: Tensor, y: Tensor) -> Tensor:
    """mean_i (1 − cos(x_i, y_i)): 0 when each sample's two features point the same way."""
    return (1 - F.cosine_similarity(x, y, dim=-1)).mean()


def instance_disparity(x: Tensor, y: Tensor) -> Tensor:
    """mean_i cos²(x_i, y_i): 0 when each sample's two features are orthogonal (they share no
    direction), whatever their norms."""
    return F.cosine_similarity(x, y, dim=-1).pow(2).mean()


def class_conditional_cmd(x: Tensor, y: Tensor, classes: Tensor, n_moments: int = 5,
                          min_count: int = 2) -> Tensor:
    """Scale-free CMD between x and y within each class (rows i of x and y share classes_i),
    averaged over the classes with at least `min_count` samples; 0 when no class has. Aligning
    within classes keeps the label structure that one batch-level CMD can blur."""
    terms = []
    for label in torch.unique(classes):
        members = classes == label
        if int(members.sum()) >= min_count:
            terms.append(scale_free_cmd(x[members], y[members], n_moments))
    return torch.stack(terms).mean() if terms else x.new_zeros(())


def soft_orthogonality(x: Tensor, y: Tensor) -> Tensor:
    """‖X̂ᵀ Ŷ‖²_F / D² with rows L2-normalised and columns centred (MISA's difference loss,
    scaled to [0, 1]): a batch-level orthogonality of two feature sets."""
    x = F.normalize(x - x.mean(dim=0), dim=-1)
    y = F.normalize(y - y.mean(dim=0), dim=-1)
    return (x.T @ y).pow(2).sum() / (x.shape[1] * y.shape[1])
