"""Metrics of the plugin's datasets, as pure functions of predictions and labels.

MMSA's own datasets keep MMSA's `MetricsTop`; these follow its conventions (values rounded to four
places, F1 weighted by class support, as MMSA's `*_F1_score`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

# A regression model trained on 0/1 labels predicts "humorous" above the midpoint.
BINARY_THRESHOLD = 0.5


def binary_classes(y_pred, train_mode: str) -> np.ndarray:
    """Class decisions from a model's output: argmax of logits (classification) or the
    thresholded score (regression on 0/1 labels)."""
    y_pred = np.asarray(y_pred.detach().cpu() if hasattr(y_pred, "detach") else y_pred)
    if train_mode == "classification":
        return y_pred.reshape(len(y_pred), -1).argmax(axis=1)
    return (y_pred.reshape(-1) > BINARY_THRESHOLD).astype(int)


def binary_metrics(train_mode: str) -> Callable:
    """Acc-2 and F1 (weighted by class support, MMSA's convention) of a 0/1 task."""

    def evaluate(y_pred, y_true) -> dict:
        truth = np.asarray(y_true.detach().cpu() if hasattr(y_true, "detach") else y_true)
        truth = truth.reshape(-1).round().astype(int)
        predicted = binary_classes(y_pred, train_mode)
        return {
            "Acc_2": round(float(accuracy_score(truth, predicted)), 4),
            "F1_score": round(float(f1_score(truth, predicted, average="weighted")), 4),
        }

    return evaluate
