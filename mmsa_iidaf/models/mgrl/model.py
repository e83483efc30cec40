"""MGRL (Cho, 2025): per modality a modality-invariant feature g_m (one shared encoder for every
modality) and a modality-specific feature p_m (a private encoder per modality) from IIDAF's
encoder output X_m. A modality classifier guides the decoupling (objective.py); each modality's
contribution w_m,i, scored per sample, weighs the modality in the fusion and sets the margin of
its decoupling; a head on the weighted [g_m; p_m] predicts.

Ablation switch `adaptive_contribution` False: every modality weighs 1/M (no scorer, no unimodal
heads), every margin is `margin`. The losses' λ in objective.py.
"""
from __future__ import annotations

import torch
from easydict import EasyDict
from torch import nn

from mmsa_iidaf.errors import ConfigError

from ..common import JointModel, peer_settings, projector
from ..iidaf.encoders import MultimodalEncoder

# MGRL's own keys and defaults (docs/models/mgrl.md says which the paper gives: none).
MGRL_DEFAULTS = {
    "lambda_mc": 0.1,          # L_MC: the classifier identifies p_m, cannot place g_m
    "lambda_mar": 0.1,         # L_MAR: p_m placed above g_m by the adaptive margin
    "lambda_con": 0.1,         # L_CON: unimodal heads and the contribution scorer
    "margin": 0.2,             # in probability; the margin of a modality of average contribution
    "contribution_temperature": 1.0,
    "adaptive_contribution": True,
    "mc_hidden": 64,
}


def mgrl_settings(args) -> EasyDict:
    settings = peer_settings(args, MGRL_DEFAULTS,
                             non_negative=("lambda_mc", "lambda_mar", "lambda_con", "margin"),
                             positive=("contribution_temperature", "mc_hidden"))
    if float(settings.margin) > 1:
        raise ConfigError(f"config 'margin' = {settings.margin} must be <= 1 (a probability)")
    return settings


class MGRL(JointModel):
    def __init__(self, args):
        super().__init__()
        self.settings = settings = mgrl_settings(args)
        self.modalities = settings.modalities
        width, dropout = int(settings.d_model), float(settings.dropout)
        count = len(self.modalities)
        self.encoder = MultimodalEncoder.from_settings(settings)
        self.shared_encoder = projector(width, dropout)
        self.private_encoders = nn.ModuleDict({m: projector(width, dropout)
                                               for m in self.modalities})
        # The critic: which modality a feature came from. With one modality there is nothing to
        # tell apart.
        self.critic = (nn.Sequential(nn.Linear(width, int(settings.mc_hidden)), nn.ReLU(),
                                     nn.Linear(int(settings.mc_hidden), count))
                       if count > 1 else None)
        self.adaptive = bool(settings.adaptive_contribution) and count > 1
        if self.adaptive:
            self.unimodal_heads = nn.ModuleDict(
                {m: nn.Linear(2 * width, settings.output_dim) for m in self.modalities})
            self.contribution_scorers = nn.ModuleDict(
                {m: nn.Linear(2 * width, 1) for m in self.modalities})
        self.head = nn.Sequential(nn.Linear(2 * count * width, width), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(width, settings.output_dim))

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None) -> dict:
        """'M' (B, output_dim); 'shared' {m: g_m}, 'specific' {m: p_m}; 'contribution' (B, M)
        weights summing to 1 over the modalities; 'unimodal' {m: ŷ_m} (adaptive only);
        'encoded' {m: X_m}."""
        encoded = self.encode("MGRL", text, audio, vision, audio_lengths, vision_lengths)
        shared = {m: self.shared_encoder(encoded[m]) for m in self.modalities}
        specific = {m: self.private_encoders[m](encoded[m]) for m in self.modalities}
        joined = {m: torch.cat([shared[m], specific[m]], dim=-1) for m in self.modalities}
        count = len(self.modalities)
        unimodal = {}
        if self.adaptive:
            unimodal = {m: self.unimodal_heads[m](joined[m]) for m in self.modalities}
            scores = torch.cat([self.contribution_scorers[m](joined[m]) for m in self.modalities],
                               dim=-1)
            contribution = torch.softmax(scores, dim=-1)
        else:
            first = joined[self.modalities[0]]
            contribution = first.new_full((first.shape[0], count), 1.0 / count)
        # Scaled by M so that equal contributions leave the features as they are.
        fused = torch.cat([count * contribution[:, i:i + 1] * joined[m]
                           for i, m in enumerate(self.modalities)], dim=-1)
        return {"M": self.head(fused), "shared": shared, "specific": specific,
                "contribution": contribution, "unimodal": unimodal, "encoded": encoded}
