"""The plugin's binary metrics (UR-FUNNY) against answers worked by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmsa_iidaf.metrics import binary_classes, binary_metrics

TRUTH = np.array([1, 1, 1, 0])


def test_classification_decides_by_the_largest_logit():
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    assert binary_classes(logits, "classification").tolist() == [1, 0, 1, 0]


def test_regression_on_0_1_labels_decides_above_the_midpoint():
    assert binary_classes(np.array([0.51, 0.49, 0.2, 0.9]), "regression").tolist() == [1, 0, 0, 1]


def test_accuracy_and_support_weighted_f1_by_hand():
    # Predicted 1, 0, 1, 0 against 1, 1, 1, 0: class 1 (support 3) precision 1, recall 2/3,
    # F1 0.8; class 0 (support 1) precision 1/2, recall 1, F1 2/3. Weighted: (3·0.8 + 2/3) / 4.
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    results = binary_metrics("classification")(logits, torch.tensor(TRUTH, dtype=torch.float32))
    assert results == {"Acc_2": 0.75, "F1_score": round((3 * 0.8 + 2 / 3) / 4, 4)}
    assert results["F1_score"] == pytest.approx(0.7667)
