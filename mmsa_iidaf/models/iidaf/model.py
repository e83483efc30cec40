"""IIDAF: interpretable invertible disentanglement and adaptive fusion (Yang, Sun, Zhu, 2026).

Encoders (§2.1) -> per-modality IAMD (§2.2) -> SGAFF (§2.4); MIC (§2.3) is a training constraint
held here so that its parameters live (and are saved) with the model. The losses are assembled by
`IIDAFObjective` (objective.py).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mmsa_iidaf.errors import ConfigError

from .encoders import MultimodalEncoder
from .iamd import IAMD, LatentSplit
from .mic import MIC
from .settings import iidaf_settings
from .sgaff import SGAFF, ConcatFusion


class IIDAF(nn.Module):
    """The IIDAF model. `args`: an EasyDict config (keys and defaults: settings.py).

    Ablation switches (Table 6) and what replaces each:
    - use_iamd False: `LatentSplit` alone, u = MLP_u(X_m), r = MLP_r(X_m); no flow, no attention
      mask, no decoder, so no L_IN and no L_RE.
    - use_mic False: no MIC module at all (no parameters, no L_R / L_C / L_MI). MIC is a training
      constraint off the prediction path, so lambda_mi = 0 builds the same model.
    - use_sgaff False: `ConcatFusion`, one MLP head on all u and r; no branches, no γ.
    Departures from the literal paper, each a config key (settings.py) with the paper's reading
    available: `mask_weights`, `cmi_estimator`, `cmd_scale`, `lambda_branch`, and for modalities
    that may mislead (a feature that leaks the label on train only), `modality_dropout` (each
    modality's u_m and r_m zeroed at the fusion input for a random fraction of training samples)
    and `modality_selection` (the trainer keeps, per validation, the modality set whose fusion
    scores best on the validation split; stored in the `fused_modalities` buffer, so it travels
    with the checkpoint, and a switched-off modality stays off at the fusion in training too).
    The decoder of L_RE is likewise only built when lambda_re > 0, and F⁻¹ for L_IN only run when
    lambda_in > 0: modules that exist only for a switched-off loss are not created.
    Only the modalities in `args.modalities` get parameters; the other inputs are ignored.
    """

    def __init__(self, args):
        super().__init__()
        self.settings = settings = iidaf_settings(args)
        self.modalities = settings.modalities
        width = int(settings.d_model)

        self.encoder = MultimodalEncoder.from_settings(settings)

        self.recover_latent = bool(settings.use_iamd) and float(settings.lambda_in) > 0
        if settings.use_iamd:
            reconstruct = float(settings.lambda_re) > 0
            self.disentanglers = nn.ModuleDict({
                m: IAMD(width, int(settings.householder_vectors), float(settings.dropout), reconstruct,
                        settings.mask_weights, settings.householder)
                for m in self.modalities
            })
        else:
            self.disentanglers = nn.ModuleDict(
                {m: LatentSplit(width, float(settings.dropout)) for m in self.modalities})

        self.mic = None
        if settings.use_mic and float(settings.lambda_mi) > 0:
            label_dim = settings.output_dim  # 1 score (regression) or a one-hot (classification)
            self.mic = MIC(self.modalities, width, label_dim, int(settings.mic_proj_dim),
                           int(settings.disc_hidden), int(settings.knn_k), settings.cmi_estimator)

        fusion = SGAFF if settings.use_sgaff else ConcatFusion
        self.fusion = fusion(self.modalities, width, settings.output_dim, float(settings.dropout))
        self.modality_dropout = float(settings.modality_dropout)
        # 1 for each built modality the fusion reads at evaluation; `modality_selection` may
        # switch some off (the trainer's choice on the validation split).
        self.register_buffer("fused_modalities", torch.ones(len(self.modalities)))
        if settings.compile:
            # In place: parameter names, checkpoints and `model.Model` stay as they are.
            self.compile()

    @property
    def text_encoder(self) -> nn.Module | None:
        """The BERT-family `TextEncoder`, or None without use_bert."""
        return self.encoder.text_encoder

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None) -> dict:
        """MMSA calls model(text, audio, vision).

        text: `text_bert` (B, 3, L) when use_bert, else `text` features (B, L, Dt);
        audio (B, La, Da), vision (B, Lv, Dv); *_lengths: (B,) real lengths (unaligned data) or None.
        Inputs of modalities not in `modalities` are ignored and may be None.

        Returns a dict:
          'M'             prediction, (B, 1) for regression or (B, num_classes) logits;
          'M_shared'      g(s), the shared-branch prediction (None without SGAFF);
          'M_specific'    g(p), the specific-guided-branch prediction (None without SGAFF);
          'gamma'         γ (B, 1), the shared branch's weight (None without SGAFF);
          'shared'        {m: r_m (B, D)}, 'specific' {m: u_m (B, D)};
          'shared_enhanced' {m: r_m^e}, 'specific_guided' {m: u_m^g} (empty without SGAFF);
          'encoded'       {m: pooled X_m (B, D)}, the encoder output IAMD starts from;
          'latent'        {m: h̃_m (B, 2D)} (IAMD only);
          'mask_alpha', 'mask_beta' {m: α, β (B, D)}, the attention mask's weights (IAMD only);
          'latent_recovered' {m: F⁻¹([u_m; r_m])} (IAMD and lambda_in > 0, training only);
          'reconstruction'   {m: decoder([u_m; r_m]) (B, D)} (IAMD and lambda_re > 0, training
                             only).
        The last two feed L_IN and L_RE and nothing else (validation and test read the task loss
        and the prediction), so evaluation skips F⁻¹ and the decoder: the same predictions, a
        shorter forward pass (benchmarks/eval_path.py, benchmarks/real_frames.md).
        'M_shared' / 'M_specific' are the "shared only" / "specific only" predictions of the
        paper's Table 8.
        """
        representation = self.represent(text, audio, vision, audio_lengths, vision_lengths)
        batch = next(iter(representation["shared"].values())).shape[0]
        # A modality the validation split switched off stays off in training too: the fusion
        # then learns to do without it instead of leaning on it 1 − p of the time.
        # Applied even when nothing is excluded (× 1 is exact): testing for that first would sync
        # the device and break a compiled graph.
        absent = (self.fused_modalities == 0).expand(batch, -1)
        if self.training and self.modality_dropout > 0 and len(self.modalities) > 1:
            absent = self._random_absence(absent)
        return self.fuse(representation, absent)

    def represent(self, text, audio, vision, audio_lengths=None, vision_lengths=None) -> dict:
        """Encoders (§2.1) and IAMD (§2.2): every output of `forward` but the fusion's."""
        inputs = {"t": text, "a": audio, "v": vision}
        for m in self.modalities:
            if inputs[m] is None:
                raise ConfigError(
                    f"IIDAF got no input for modality '{m}' but config 'modalities' = "
                    f"'{self.modalities}' includes it: provide it or drop '{m}' from 'modalities'"
                )
        encoded = self.encoder({m: inputs[m] for m in self.modalities},
                               {"a": audio_lengths, "v": vision_lengths})

        shared, specific = {}, {}
        iamd_keys = ("latent", "latent_recovered", "reconstruction", "mask_alpha", "mask_beta")
        iamd_outputs = {key: {} for key in iamd_keys}
        for m in self.modalities:
            if self.settings.use_iamd:
                result = self.disentanglers[m](encoded[m],
                                               recover=self.recover_latent and self.training,
                                               reconstruct=self.training)
                specific[m], shared[m] = result["specific"], result["shared"]
                for key in iamd_outputs:
                    if key in result:
                        iamd_outputs[key][m] = result[key]
            else:
                specific[m], shared[m] = self.disentanglers[m](encoded[m])
        return {"shared": shared, "specific": specific, "encoded": encoded, **iamd_outputs}

    def fuse(self, representation: dict, absent: Tensor | None = None) -> dict:
        """SGAFF (§2.4) on a `represent` output; `absent` (B, M) bool marks modalities (in
        `modalities` order) whose u_m and r_m the fusion reads as zeros for that sample."""
        shared, specific = representation["shared"], representation["specific"]
        if absent is not None:
            keep = {m: (~absent[:, i]).unsqueeze(-1).to(shared[m].dtype)
                    for i, m in enumerate(self.modalities)}
            shared = {m: shared[m] * keep[m] for m in self.modalities}
            specific = {m: specific[m] * keep[m] for m in self.modalities}
        outputs = self.fusion(shared, specific)
        outputs.update(representation)
        return outputs

    def _random_absence(self, excluded: Tensor) -> Tensor:
        """(B, M) bool: `excluded` plus each other modality absent with probability
        `modality_dropout`; a sample left with none keeps one random non-excluded modality."""
        absent = excluded | (torch.rand(excluded.shape, device=excluded.device)
                             < self.modality_dropout)
        everything = absent.all(dim=1)
        if everything.any():
            candidates = (~excluded[everything]).float()
            keep = torch.multinomial(candidates, 1).squeeze(1)
            absent[everything.nonzero().squeeze(1), keep] = False
        return absent

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        """The BERT-family encoder's parameters (empty without use_bert); frozen ones included,
        with requires_grad False, so the three groups partition `parameters()`."""
        return [] if self.text_encoder is None else list(self.text_encoder.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """φ of MIC (eq. 18), trained by its own step on `IIDAFObjective.discriminator_loss`."""
        return [] if self.mic is None else list(self.mic.discriminator_parameters())

    def main_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is neither the text encoder's nor the discriminator's."""
        excluded = {id(p) for p in self.text_encoder_parameters() + self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in excluded]
