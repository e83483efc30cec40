"""§2.1 multimodal feature encoding (eq. 1): x_m = Transformer_m(PE(Conv1D_m(i_m))), then one
Transformer encoder shared by all modalities gives X_m, pooled over time to one vector per sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmsa_iidaf.text_encoders import TextEncoder

# Feed-forward width of every Transformer layer, as a multiple of D. The paper does not give it;
# 4 is the ratio of the original Transformer and of MulT (Tsai et al., 2019), which §2.1 cites.
FEEDFORWARD_RATIO = 4


def sinusoidal_positions(length: int, width: int, device=None, dtype=None) -> Tensor:
    """(length, width) sinusoidal position encoding (Vaswani et al., 2017): sin on even channels,
    cos on odd ones, wavelengths from 2π to just under 10000·2π."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    table = torch.zeros(length, width, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : width // 2]
    return table.to(dtype) if dtype is not None else table


class SDPAEncoderLayer(nn.TransformerEncoderLayer):
    """torch's post-norm `TransformerEncoderLayer`, same parameters (checkpoints load either way),
    whose self-attention always runs `F.scaled_dot_product_attention` with the padding mask
    broadcast over heads and queries, in training and in eval alike, and whose frame-wise parts
    (the projections, norms and feed-forward block) run on the real frames only.

    Why not torch's own layer: in eval it takes a fast path that materialises a (B·H, L, L) masked
    softmax, and in training `MultiheadAttention` expands the padding mask to (B·H, L, L) floats;
    at MOSI's 375 audio and 500 vision frames both cost several times SDPA's fused kernels
    (benchmarks/speed.md). And a batch's clips differ in length, so a dense layer spends its
    feed-forward blocks on padding frames (MMSA pads every clip to the batch's longest). The
    function computed at real frames is the same (tests/test_speed_switches.py); padding frames
    come out as zeros, which nothing downstream reads (masked attention, masked pooling).
    """

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if src_mask is not None or is_causal:
            raise ValueError("SDPAEncoderLayer takes a key padding mask only")
        padding = src_key_padding_mask
        if padding is not None and padding.dtype != torch.bool:
            # nn.TransformerEncoder hands its layers the mask as floats (0 real, -inf padding).
            padding = padding != 0
        compiling = torch.compiler.is_compiling()
        if padding is not None and not compiling and not padding.any():
            padding = None  # no padding frame (a single clip, cut to its length): nothing to skip
        real = None if padding is None else ~padding
        if real is None or compiling:
            # Under torch.compile the packing's data-dependent frame count would break the graph.
            x = self.norm1(src + self._attention(src, real))
            return self.norm2(x + self._ff_block(x))
        # The real frames' (sample, step) indices, found once for the four gathers and scatters.
        rows = real.nonzero(as_tuple=True)
        frames = src[rows]  # (N, D): the batch's real frames, packed
        x = self.norm1(frames + self._attention(frames, real, rows))
        x = self.norm2(x + self._ff_block(x))
        return x.new_zeros(src.shape).index_put_(rows, x)  # in place: no copy of the zeros

    def _attention(self, x: Tensor, real: Tensor | None,
                   rows: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Self-attention over (B, L, D) frames, or over packed (N, D) frames at `rows` of the
        (B, L) mask `real` (True = real frame), which come back packed."""
        attention = self.self_attn
        heads = attention.num_heads
        width = x.shape[-1]
        qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)
        if rows is not None:
            # Padding frames' queries, keys and values as zeros: their keys are masked and their
            # queries' outputs dropped below.
            qkv = qkv.new_zeros(*real.shape, 3 * width).index_put_(rows, qkv)
        batch, length = qkv.shape[:2]
        query, key, value = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        mask = None if real is None else real[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask,
            dropout_p=attention.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        if rows is not None:
            attended = attended[rows]
        return self.dropout1(attention.out_proj(attended))


ATTENTION_LAYERS = {"sdpa": SDPAEncoderLayer, "torch": nn.TransformerEncoderLayer}


def transformer_encoder(width: int, layers: int, heads: int, dropout: float,
                        attention: str = "sdpa",
                        attention_dropout: float | None = None) -> nn.TransformerEncoder:
    """A post-norm TransformerEncoder on (B, L, width) with the project's fixed choices.
    `attention`: 'sdpa' (fused attention in training and eval) or 'torch' (torch's own layer).
    `attention_dropout`: dropout on the attention weights (default `dropout`, as torch's layer).
    At 0, training attention runs a fused kernel too; with dropout it needs the unfused one."""
    layer = ATTENTION_LAYERS[attention](
        d_model=width, nhead=heads, dim_feedforward=FEEDFORWARD_RATIO * width,
        dropout=dropout, batch_first=True,
    )
    if attention_dropout is not None:
        layer.self_attn.dropout = float(attention_dropout)
    # Nested tensors would drop padded positions only in eval mode; keeping the dense path makes
    # train and eval compute the same function (and silences torch's warning about it).
    return nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)


def padding_mask(lengths, max_length: int, device) -> Tensor:
    """(B, L) bool, True at padded positions (torch's `src_key_padding_mask` convention).

    Lengths below 1 are read as 1: a sample with every position masked would give NaN attention.
    """
    lengths = torch.as_tensor(lengths, device=device).long().clamp(1, max_length)
    return torch.arange(max_length, device=device).unsqueeze(0) >= lengths.unsqueeze(1)


def trim_padding(sequence: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, C) and its (B, L) mask (True = pad, real steps first) -> both cut after the batch's
    longest real sequence. The steps cut are padding in every row, and padding changes nothing
    downstream (zeroed before the convolution, masked in attention and pooling): the cut is exact
    and saves the Transformers their cost (MMSA pads MOSI's audio to 375 and vision to 500 frames
    whatever a batch holds; a single clip attends over its own length only).

    Under torch.compile the cut is skipped: its data-dependent length breaks the graph and
    compiles once per length, and keeping the masked padding is exact too."""
    if torch.compiler.is_compiling():
        return sequence, mask
    length = int((~mask).sum(dim=1).max().item())
    return sequence[:, :length], mask[:, :length]


def average_windows(sequence: Tensor, mask: Tensor | None, stride: int) -> tuple[Tensor, Tensor | None]:
    """(B, L, C) -> (B, ⌈L/stride⌉, C): each window of `stride` steps replaced by the mean of its
    real steps (mask True = pad), and the mask of the shorter sequence (a window is padding when
    all its steps are). The lite preset's cut of attention's L² cost on long audio and vision."""
    if stride == 1:
        return sequence, mask
    real = (torch.ones(sequence.shape[:2], device=sequence.device, dtype=sequence.dtype)
            if mask is None else (~mask).to(sequence.dtype))
    padding = -sequence.shape[1] % stride
    summed = F.pad(sequence * real.unsqueeze(-1), (0, 0, 0, padding))
    counts = F.pad(real, (0, padding))
    batch, length, channels = summed.shape
    summed = summed.view(batch, length // stride, stride, channels).sum(dim=2)
    counts = counts.view(batch, length // stride, stride).sum(dim=2)
    averaged = summed / counts.clamp_min(1).unsqueeze(-1)
    return averaged, (None if mask is None else counts == 0)


def pool_over_time(sequence: Tensor, mask: Tensor | None, mode: str) -> Tensor:
    """(B, L, D) -> (B, D), ignoring padded positions (mask True = pad).

    'mean' (the default; the paper leaves pooling open): the masked average keeps every real time
    step's contribution and, unlike 'last', does not depend on where padding starts.
    'max': masked channel-wise maximum. 'last': the last real time step.
    """
    if mask is None:
        mask = torch.zeros(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
    keep = (~mask).unsqueeze(-1)
    if mode == "mean":
        return (sequence * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
    if mode == "max":
        return sequence.masked_fill(~keep, torch.finfo(sequence.dtype).min).max(dim=1).values
    last = (keep.squeeze(-1).sum(dim=1) - 1).clamp_min(0)
    return sequence[torch.arange(sequence.shape[0], device=sequence.device), last]


class ModalityEncoder(nn.Module):
    """Eq. 1 for one modality: Conv1D projection to D, sinusoidal PE, a per-modality Transformer."""

    def __init__(self, input_dim: int, width: int, kernel_size: int, layers: int, heads: int,
                 dropout: float, input_norm: str = "none", attention: str = "sdpa",
                 attention_dropout: float | None = None, stride: int = 1):
        super().__init__()
        self.stride = stride
        # Open point of eq. 1 (the paper feeds i_m to Conv1D as is): precomputed features can span
        # many orders of magnitude per channel (openSMILE audio: std 0.001 to 51), so `input_norm`
        # 'batch' standardises each input channel over the real steps of the batch (running
        # statistics in eval mode, so a sample's output never depends on its batch).
        self.input_norm = nn.BatchNorm1d(input_dim) if input_norm == "batch" else None
        # 'same' padding keeps the sequence length, so length-1 sequences (utterance-level
        # features) pass through any kernel size; torch pads even kernels asymmetrically.
        self.projection = nn.Conv1d(input_dim, width, kernel_size, padding="same")
        self.dropout = nn.Dropout(dropout)
        self.transformer = transformer_encoder(width, layers, heads, dropout, attention,
                                               attention_dropout)

    def _standardise(self, steps: Tensor) -> Tensor:
        norm = self.input_norm
        if self.training and steps.shape[0] > 1:
            return norm(steps)
        # Eval mode, or a training batch with one real step (no batch statistics to take):
        # the running statistics.
        return F.batch_norm(steps, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)

    def forward(self, sequence: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, L, input_dim) and (B, L) padding mask or None -> x_m (B, L', D) and its mask;
        L' = ⌈L / stride⌉ (L without a stride)."""
        sequence, mask = average_windows(sequence, mask, self.stride)
        if mask is not None:
            # Padded steps must not leak into real ones through the convolution window.
            sequence = sequence.masked_fill(mask.unsqueeze(-1), 0.0)
        if self.input_norm is not None:
            real = torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
            if mask is not None:
                real = ~mask
            normalised = torch.zeros_like(sequence)
            normalised[real] = self._standardise(sequence[real])
            sequence = normalised
        projected = self.projection(sequence.transpose(1, 2)).transpose(1, 2)
        positions = sinusoidal_positions(projected.shape[1], projected.shape[2],
                                         device=projected.device, dtype=projected.dtype)
        encoded = self.transformer(self.dropout(projected + positions), src_key_padding_mask=mask)
        return encoded, mask


class MultimodalEncoder(nn.Module):
    """§2.1: per-modality encoders, then ONE shared Transformer applied to each x_m → X_m, pooled.

    The shared encoder runs on each modality's sequence separately with the same weights
    (METHOD.md §1: "models each x_m again"); it does not attend across modalities, so each X_m
    stays a feature of its own modality, which is what IAMD disentangles per modality.

    Text comes from a BERT-family `TextEncoder` over MMSA's `text_bert` (B, 3, L) when `text_encoder`
    is given (mask = row 1, the attention mask), else it is precomputed `text` features (B, L, Dt)
    with no mask (MMSA gives no text lengths). Audio and vision are masked by their lengths when
    given (MMSA's unaligned data), else every step is real.
    """

    @classmethod
    def from_settings(cls, settings) -> "MultimodalEncoder":
        """The front end a model's settings (`iidaf_settings`) describe, with its BERT-family
        `TextEncoder` when `use_bert` and text is among the modalities. IIDAF and its peers are
        built on it, so a comparison between them isolates what comes after."""
        text_encoder = None
        if settings.use_bert and "t" in settings.modalities:
            text_encoder = TextEncoder(settings.pretrained, finetune=bool(settings.use_finetune),
                                       layers=settings.text_layers,
                                       vocabulary=settings.text_vocabulary,
                                       unseen_rank=int(settings.text_unseen_rank))
        return cls(
            settings.modalities, settings.feature_dims, int(settings.d_model),
            int(settings.conv_kernel), settings.enc_layers, settings.enc_heads,
            int(settings.shared_layers), int(settings.shared_heads), float(settings.dropout),
            settings.pooling, text_encoder, settings.input_norm, settings.attention,
            settings.attention_dropout, settings.temporal_stride,
        )

    def __init__(self, modalities: str, input_dims: dict[str, int], width: int, kernel_size: int,
                 layers: dict[str, int], heads: dict[str, int], shared_layers: int,
                 shared_heads: int, dropout: float, pooling: str,
                 text_encoder: nn.Module | None = None, input_norm: str = "none",
                 attention: str = "sdpa", attention_dropout: float | None = None,
                 strides: dict[str, int] | None = None):
        super().__init__()
        self.modalities = modalities
        self.pooling = pooling
        self.text_encoder = text_encoder
        if text_encoder is not None:
            input_dims = {**input_dims, "t": text_encoder.hidden_size}
        self.modality_encoders = nn.ModuleDict({
            m: ModalityEncoder(input_dims[m], width, kernel_size, layers[m], heads[m], dropout,
                               input_norm, attention, attention_dropout,
                               (strides or {}).get(m, 1))
            for m in modalities
        })
        self.shared_encoder = transformer_encoder(width, shared_layers, shared_heads, dropout,
                                                  attention, attention_dropout)

    def _text_sequence(self, text: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.text_encoder is None:
            return text, None
        mask = text[:, 1, :] == 0
        # Position 0 is [CLS], always real; keeping it unmasked also protects an empty transcript
        # from a fully masked row (NaN attention).
        mask[:, 0] = False
        return trim_padding(self.text_encoder(text), mask)

    def forward(self, inputs: dict[str, Tensor], lengths: dict[str, object]) -> dict[str, Tensor]:
        """inputs: {m: raw input} for the built modalities; lengths: {m: (B,) lengths or None}.

        Returns {m: X_m pooled over time, (B, D)}.
        """
        pooled = {}
        for m in self.modalities:
            if m == "t":
                sequence, mask = self._text_sequence(inputs[m])
            else:
                sequence = inputs[m]
                if lengths.get(m) is not None:
                    sequence, mask = trim_padding(
                        sequence, padding_mask(lengths[m], sequence.shape[1], sequence.device))
                else:
                    mask = None
            encoded, mask = self.modality_encoders[m](sequence, mask)
            encoded = self.shared_encoder(encoded, src_key_padding_mask=mask)
            pooled[m] = pool_over_time(encoded, mask, self.pooling)
        return pooled
