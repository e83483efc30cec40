"""Reusable loss pieces of IIDAF: CMD (L_S), HSIC (L_H), InfoNCE (L_R), conditional MI (L_C)."""

from mmsa_iidaf.losses.cmd import cmd
from mmsa_iidaf.losses.conditional_mi import (
    ConditionalMIDiscriminator,
    knn_negative_indices,
    knn_negative_labels,
)
from mmsa_iidaf.losses.hsic import hsic
from mmsa_iidaf.losses.infonce import InfoNCE

__all__ = [
    "cmd",
    "hsic",
    "InfoNCE",
    "ConditionalMIDiscriminator",
    "knn_negative_indices",
    "knn_negative_labels",
]
