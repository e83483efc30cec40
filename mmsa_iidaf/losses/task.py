"""The task loss every model of this plugin trains on: MSE on a regression score, cross-entropy
on classes (IIDAF's L_T, §2.5; its peers use the same, so a comparison isolates the method)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def task_targets(labels: Tensor, train_mode: str) -> Tensor:
    """MMSA labels (B,) or (B, 1) -> (B, 1) float scores (regression) or (B,) long classes."""
    if train_mode == "regression":
        return labels.reshape(-1, 1).float()
    return labels.reshape(-1).long()


def task_loss(prediction: Tensor, labels: Tensor, train_mode: str) -> Tensor:
    targets = task_targets(labels, train_mode)
    if train_mode == "regression":
        return F.mse_loss(prediction, targets)
    return F.cross_entropy(prediction, targets)


def per_sample_task_loss(prediction: Tensor, labels: Tensor, train_mode: str) -> Tensor:
    """The task loss of each sample, (B,)."""
    if train_mode == "regression":
        return (prediction.reshape(-1) - labels.reshape(-1).float()).pow(2)
    return F.cross_entropy(prediction, labels.reshape(-1).long(), reduction="none")


def sentiment_classes(labels: Tensor, train_mode: str) -> Tensor:
    """Classes of a batch: the sign of a regression score (negative / neutral / positive), else
    the class."""
    if train_mode == "regression":
        return torch.sign(labels.reshape(-1)).long()
    return labels.reshape(-1).long()
