"""§2.4 SGAFF — semantic-guided adaptive feature fusion (eq. 21-22), and the concatenation head
that replaces it in the "w/o SGAFF" ablation (Table 6).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .iamd import two_layer_mlp


class SharedEnhancer(nn.Module):
    """r_m -> r_m^e, "a residual structure with a linear layer and a feed-forward network" (§2.4).

    Each of the two is a residual sub-block: h = r + Linear(r), r^e = h + FFN(h). The identity
    paths keep r^e close to r, so the constraints placed on r (L_S, L_H, L_MI) still shape what the
    shared branch sees.
    """

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.feed_forward = two_layer_mlp(width, 2 * width, width, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, shared: Tensor) -> Tensor:
        """r_m (B, D) -> r_m^e (B, D)."""
        hidden = shared + self.dropout(self.linear(shared))
        return hidden + self.dropout(self.feed_forward(hidden))


class SGAFF(nn.Module):
    """Eq. 21-22 over the built modalities (concatenated in t, a, v order).

    u_m^g = u_m + W_m [u_m; r_m^e] (eq. 21, W_m per modality);
    g(s) = MLP head on [r^e_t; r^e_a; r^e_v], g(p) = MLP head on [u^g_t; u^g_a; u^g_v];
    γ = σ(MLP([u^g; r^e])) (B, 1): eq. 22 does not say whether γ is per modality; here one MLP
    reads the u^g and r^e of all modalities and gives one weight per sample, the quantity the
    paper's Fig. 5 plots;
    ŷ = γ g(s) + (1 − γ) g(p) (eq. 22). For classification, g(s) and g(p) are logits and γ mixes
    them; the softmax comes in the loss.
    """

    def __init__(self, modalities: str, width: int, output_dim: int, dropout: float):
        super().__init__()
        self.modalities = modalities
        count = len(modalities)
        self.shared_enhancers = nn.ModuleDict({m: SharedEnhancer(width, dropout) for m in modalities})
        self.guides = nn.ModuleDict({m: nn.Linear(2 * width, width) for m in modalities})  # W_m
        self.shared_head = two_layer_mlp(count * width, width, output_dim, dropout)    # g(s)
        self.specific_head = two_layer_mlp(count * width, width, output_dim, dropout)  # g(p)
        self.gate = two_layer_mlp(2 * count * width, width, 1, dropout)

    def forward(self, shared: dict[str, Tensor], specific: dict[str, Tensor]) -> dict:
        """Returns {'M', 'M_shared' (g(s)), 'M_specific' (g(p)), 'gamma' (B, 1),
        'shared_enhanced': {m: r_m^e}, 'specific_guided': {m: u_m^g}}.
        An absent modality (see `IIDAF.fuse`) arrives as zero u_m and r_m."""
        enhanced = {m: self.shared_enhancers[m](shared[m]) for m in self.modalities}
        guided = {
            m: specific[m] + self.guides[m](torch.cat([specific[m], enhanced[m]], dim=-1))
            for m in self.modalities
        }
        enhanced_all = torch.cat([enhanced[m] for m in self.modalities], dim=-1)
        guided_all = torch.cat([guided[m] for m in self.modalities], dim=-1)
        shared_prediction = self.shared_head(enhanced_all)
        specific_prediction = self.specific_head(guided_all)
        gamma = torch.sigmoid(self.gate(torch.cat([guided_all, enhanced_all], dim=-1)))
        return {
            "M": gamma * shared_prediction + (1 - gamma) * specific_prediction,
            "M_shared": shared_prediction,
            "M_specific": specific_prediction,
            "gamma": gamma,
            "shared_enhanced": enhanced,
            "specific_guided": guided,
        }


class ConcatFusion(nn.Module):
    """The "w/o SGAFF" ablation: concatenate every u_m and r_m and predict with one MLP head.

    No shared enhancement, no guidance, no branches and no gate: 'gamma', 'M_shared' and
    'M_specific' are None.
    """

    def __init__(self, modalities: str, width: int, output_dim: int, dropout: float):
        super().__init__()
        self.modalities = modalities
        self.head = two_layer_mlp(2 * len(modalities) * width, width, output_dim, dropout)

    def forward(self, shared: dict[str, Tensor], specific: dict[str, Tensor]) -> dict:
        """The same keys as `SGAFF.forward`; only 'M' is filled."""
        features = [specific[m] for m in self.modalities] + [shared[m] for m in self.modalities]
        return {
            "M": self.head(torch.cat(features, dim=-1)),
            "M_shared": None,
            "M_specific": None,
            "gamma": None,
            "shared_enhanced": {},
            "specific_guided": {},
        }
