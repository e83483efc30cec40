"""AO-FL (Che et al.): per modality a shared feature g_m (one projector for all modalities) and a
specific feature h_m (a projector per modality) from IIDAF's encoder output X_m; the angle
losses (objective.py) partially disentangle them; Orthogonal Projection Refinement (OPR) removes
from h_m its component along g_m and enriches each g_m with the other modalities' shared features
(attention over the M shared features: the multimodal context of one utterance); a head on all
refined features predicts.

Ablation switches: `use_opr` False fuses g_m and h_m as they are; the losses' λ (objective.py).
"""
from __future__ import annotations

import torch
from easydict import EasyDict
from torch import nn

from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.losses.angular import remove_projection

from ..common import JointModel, peer_settings, projector
from ..iidaf.encoders import MultimodalEncoder

# AO-FL's own keys and defaults (docs/models/aofl.md says which the paper gives).
AOFL_DEFAULTS = {
    "lambda_cen": 0.1,       # L_CEN, cross-modal consistency
    "lambda_aac": 0.1,       # L_AAC, the angle floor between shared and specific
    "lambda_csr": 0.1,       # L_CSR, the cosine-similarity ranking θ > φ
    "cen_temperature": 0.1,
    "aac_min_angle": 60.0,   # degrees: shared and specific at least this far apart, free above
    "csr_margin": 0.1,       # in cosine
    "use_opr": True,
}


def aofl_settings(args) -> EasyDict:
    """IIDAF's settings for the shared front end (encoder keys, modalities, output_dim), plus
    AO-FL's keys, checked."""
    settings = peer_settings(args, AOFL_DEFAULTS,
                             non_negative=("lambda_cen", "lambda_aac", "lambda_csr"),
                             positive=("cen_temperature",))
    if not 0 < float(settings.aac_min_angle) < 180:
        raise ConfigError(f"config 'aac_min_angle' = {settings.aac_min_angle} must be in (0, 180) "
                          f"degrees")
    return settings


class AOFL(JointModel):
    def __init__(self, args):
        super().__init__()
        self.settings = settings = aofl_settings(args)
        self.modalities = settings.modalities
        width, dropout = int(settings.d_model), float(settings.dropout)
        self.encoder = MultimodalEncoder.from_settings(settings)
        self.shared_projector = projector(width, dropout)
        self.specific_projectors = nn.ModuleDict(
            {m: projector(width, dropout) for m in self.modalities})
        self.use_opr = bool(settings.use_opr)
        if self.use_opr:
            self.context = nn.MultiheadAttention(width, int(settings.shared_heads),
                                                 dropout=dropout, batch_first=True)
            self.context_norm = nn.LayerNorm(width)
        fused_width = 2 * len(self.modalities) * width
        self.head = nn.Sequential(nn.Linear(fused_width, width), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(width, settings.output_dim))

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None) -> dict:
        """'M' (B, output_dim); 'shared' {m: g_m}, 'specific' {m: h_m} (what the angle losses
        act on); 'refined_shared', 'refined_specific' (after OPR, what the head reads);
        'encoded' {m: X_m}."""
        encoded = self.encode("AO-FL", text, audio, vision, audio_lengths, vision_lengths)
        shared = {m: self.shared_projector(encoded[m]) for m in self.modalities}
        specific = {m: self.specific_projectors[m](encoded[m]) for m in self.modalities}
        refined_shared, refined_specific = shared, specific
        if self.use_opr:
            refined_specific = {m: remove_projection(specific[m], shared[m])
                                for m in self.modalities}
            tokens = torch.stack([shared[m] for m in self.modalities], dim=1)  # (B, M, D)
            context, _ = self.context(tokens, tokens, tokens, need_weights=False)
            enriched = self.context_norm(tokens + context)
            refined_shared = {m: enriched[:, i] for i, m in enumerate(self.modalities)}
        fused = torch.cat([refined_shared[m] for m in self.modalities]
                          + [refined_specific[m] for m in self.modalities], dim=-1)
        return {"M": self.head(fused), "shared": shared, "specific": specific,
                "refined_shared": refined_shared, "refined_specific": refined_specific,
                "encoded": encoded}
