"""Reusable loss pieces of IIDAF: CMD (L_S), HSIC (L_H), InfoNCE (L_R), conditional MI (L_C)."""

from mmsa_iidaf.losses.cmd import cmd, range_cmd, root_mean_square, scale_free_cmd
from mmsa_iidaf.losses.conditional_mi import (
    ConditionalMIDiscriminator,
    PredictiveConditionalMI,
    knn_negative_indices,
    knn_negative_labels,
)
from mmsa_iidaf.losses.hsic import hsic
from mmsa_iidaf.losses.infonce import InfoNCE

__all__ = [
    "cmd",
    "range_cmd",
    "root_mean_square",
    "scale_free_cmd",
    "hsic",
    "InfoNCE",
    "ConditionalMIDiscriminator",
    "PredictiveConditionalMI",
    "knn_negative_indices",
    "knn_negative_labels",
]
