"""FDRL (Sun et al.): per modality a modality-shared feature g_m (one shared encoder) and a
modality-private feature p_m (a private encoder per modality) from IIDAF's encoder output X_m;
the fine-grained alignment and disparity components constrain them (objective.py); a decoder per
modality rebuilds X_m from [g_m; p_m], so that neither subspace can satisfy its constraint by
discarding what the other lacks; a head on every [g_m; p_m] predicts.

Ablation switches: `granularity` 'coarse' replaces both components by their batch-level
(MISA-style) forms; the losses' λ in objective.py.
"""
from __future__ import annotations

import torch
from easydict import EasyDict
from torch import nn

from ..common import JointModel, peer_settings, projector
from ..iidaf.encoders import MultimodalEncoder

# FDRL's own keys and defaults (docs/models/fdrl.md says which the paper gives: none).
FDRL_DEFAULTS = {
    "lambda_fa": 0.1,          # L_FA: fine-grained alignment of the shared features
    "lambda_fd": 0.1,          # L_FD: fine-grained disparity of the private features
    "lambda_rec": 0.1,         # L_REC: [g_m; p_m] rebuilds X_m
    "granularity": "fine",     # or "coarse": batch-level CMD and soft orthogonality (MISA's)
    "cmd_moments": 5,
}
GRANULARITIES = ("fine", "coarse")


def fdrl_settings(args) -> EasyDict:
    return peer_settings(args, FDRL_DEFAULTS, non_negative=("lambda_fa", "lambda_fd",
                                                            "lambda_rec"),
                         positive=("cmd_moments",), choices={"granularity": GRANULARITIES})


class FDRL(JointModel):
    def __init__(self, args):
        super().__init__()
        self.settings = settings = fdrl_settings(args)
        self.modalities = settings.modalities
        width, dropout = int(settings.d_model), float(settings.dropout)
        self.encoder = MultimodalEncoder.from_settings(settings)
        self.shared_encoder = projector(width, dropout)
        self.private_encoders = nn.ModuleDict({m: projector(width, dropout)
                                               for m in self.modalities})
        self.decoders = nn.ModuleDict({m: nn.Linear(2 * width, width) for m in self.modalities})
        self.head = nn.Sequential(nn.Linear(2 * len(self.modalities) * width, width), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(width, settings.output_dim))

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None) -> dict:
        """'M' (B, output_dim); 'shared' {m: g_m}, 'specific' {m: p_m}; 'reconstructed' {m:
        X̂_m}; 'encoded' {m: X_m}."""
        encoded = self.encode("FDRL", text, audio, vision, audio_lengths, vision_lengths)
        shared = {m: self.shared_encoder(encoded[m]) for m in self.modalities}
        specific = {m: self.private_encoders[m](encoded[m]) for m in self.modalities}
        joined = {m: torch.cat([shared[m], specific[m]], dim=-1) for m in self.modalities}
        reconstructed = {m: self.decoders[m](joined[m]) for m in self.modalities}
        fused = torch.cat([joined[m] for m in self.modalities], dim=-1)
        return {"M": self.head(fused), "shared": shared, "specific": specific,
                "reconstructed": reconstructed, "encoded": encoded}
