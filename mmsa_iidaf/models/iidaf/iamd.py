"""§2.2 IAMD — invertible attention-mask disentanglement (eq. 2-11).

Per modality: two 2-layer MLPs split the pooled X_m into ũ_m (modality-related) and r̃_m
(task-related); the invertible flow F (Householder mixing, invertible LayerNorm, additive coupling,
fixed channel permutation; eq. 3-6) maps h̃ = [ũ; r̃] to ĥ = [û; r̂]; the attention mask (eq. 7-9)
turns ĥ into the specific feature u_m and the shared feature r_m.

Every invertible step follows one contract (as in FrEIA): ``forward(x) -> y`` and
``inverse(y) -> x`` on (B, C) tensors, and `InvertibleSequential` composes them.

Widths (eq. 6 leaves it open): ũ, r̃, u and r are each D wide (the model's common width), so h̃
and ĥ are 2D wide; eq. 6 writes ĥ ∈ R^{B×D} with D meaning "the feature width" there.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .settings import HOUSEHOLDER_CONSTRUCTIONS, MASK_WEIGHTS


def two_layer_mlp(input_dim: int, hidden_dim: int, output_dim: int, dropout: float) -> nn.Sequential:
    """Linear-GELU-Dropout-Linear; the paper's "two-layer MLP" with GELU as in its coupling net."""
    return nn.Sequential(
        nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden_dim, output_dim),
    )


class LatentSplit(nn.Module):
    """Eq. 2 (left side): two 2-layer MLPs on X_m give ũ_m (modality-related) and r̃_m (task-related).

    On its own this is also the "w/o IAMD" ablation (Table 6): u = ũ and r = r̃, no flow, no mask.
    """

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.specific_mlp = two_layer_mlp(width, width, width, dropout)
        self.shared_mlp = two_layer_mlp(width, width, width, dropout)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """X_m (B, D) -> (ũ_m, r̃_m), each (B, D)."""
        return self.specific_mlp(pooled), self.shared_mlp(pooled)


class HouseholderMixing(nn.Module):
    """Eq. 3: h' = Q h̃ with Q = Π_j (I − 2 v_j v_jᵀ / ‖v_j‖²), J learnable reflection vectors.

    Q is built by torch.linalg.householder_product, which takes the vectors in LAPACK's compact form:
    v_j has zeros before position j and a 1 at position j, the rest learnable. A reflection does not
    depend on the scale of v_j, and the leading zeros only fix a basis of the span of the J vectors:
    products of J such reflections have the same dimension, Jn − J(J+1)/2, as products of J free
    ones, so this is eq. 3 in a non-redundant parametrisation. τ_j = 2 / ‖v_j‖² makes each factor an
    exact reflection, so Q is orthogonal for any parameter values and Q⁻¹ = Qᵀ.
    """

    def __init__(self, dim: int, n_vectors: int, construction: str = "reflections"):
        super().__init__()
        if not 1 <= n_vectors <= dim:
            raise ValueError(f"HouseholderMixing: need 1 <= n_vectors <= dim, got {n_vectors} and {dim}")
        if construction not in HOUSEHOLDER_CONSTRUCTIONS:
            raise ValueError(f"HouseholderMixing: construction must be one of "
                             f"{HOUSEHOLDER_CONSTRUCTIONS}, got {construction!r}")
        self.construction = construction
        # Unit-variance entries give reflection directions spread over all channels: the mixing
        # should couple channels from the start (§2.2: "增强特征间的信息交互").
        self.vectors = nn.Parameter(torch.randn(dim, n_vectors))

    def matrix(self) -> Tensor:
        """The orthogonal (C, C) matrix Q."""
        dim, n_vectors = self.vectors.shape
        compact = torch.tril(self.vectors, diagonal=-1) + torch.eye(
            dim, n_vectors, device=self.vectors.device, dtype=self.vectors.dtype)
        tau = 2.0 / compact.pow(2).sum(dim=0)
        if self.construction == "reflections":
            # Q = H_1 ⋯ H_J by J rank-1 updates (Q ← Q − τ_j (Q v_j) v_jᵀ). The same Q as
            # householder_product's, whose backward walks every one of the C padded columns
            # (≈ 9,000 small ops, 0.1 s per call at C = 256, three modalities a step).
            # (Written with (C, 1) columns: torch 2.13's inductor miscompiles the torch.outer form.)
            q = torch.eye(dim, device=compact.device, dtype=compact.dtype)
            for j in range(n_vectors):
                v = compact[:, j:j + 1]
                q = q - (q @ v) @ (tau[j] * v).T
            return q
        # householder_product returns as many columns as it is given: zero vectors with τ = 0 are
        # identity factors that complete Q to a square matrix.
        padding = dim - n_vectors
        return torch.linalg.householder_product(F.pad(compact, (0, padding)), F.pad(tau, (0, padding)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C) rows h̃ -> rows of Q h̃."""
        return x @ self.matrix().T

    def inverse(self, y: Tensor) -> Tensor:
        """Qᵀ y, exact because Q is orthogonal."""
        return y @ self.matrix()


class InvertibleLayerNorm(nn.Module):
    """LayerNorm over channels (§2.2, after eq. 3) made invertible.

    Normalising discards each sample's mean and scale, so the inverse needs them: `forward` keeps
    the per-sample mean and std of its latest call, and `inverse` uses them. F⁻¹ in eq. 11 is
    applied to the same batch right after F, which is when they are the right ones.
    The affine scale is exp(log_scale), positive for any parameter value, so it always inverts.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self.saved_statistics: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each row to zero mean and unit variance, then scale and shift."""
        mean = x.mean(dim=-1, keepdim=True)
        std = (x.var(dim=-1, unbiased=False, keepdim=True) + self.eps).sqrt()
        self.saved_statistics = (mean, std)
        return (x - mean) / std * self.log_scale.exp() + self.shift

    def inverse(self, y: Tensor) -> Tensor:
        """Undo the affine map, then restore the saved per-sample mean and std."""
        if self.saved_statistics is None or self.saved_statistics[0].shape[0] != y.shape[0]:
            raise RuntimeError(
                "InvertibleLayerNorm.inverse needs the statistics of a forward call on the same batch"
            )
        mean, std = self.saved_statistics
        return (y - self.shift) * (-self.log_scale).exp() * std + mean


class AdditiveCoupling(nn.Module):
    """Eq. 4-5: split channels into halves (u', r'); forward ũ = u', r̃ = r' + t(u');
    inverse u' = ũ, r' = r̃ − t(ũ); t = Linear-GELU-Linear (the paper's lightweight FFN)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"AdditiveCoupling: dim must be even, got {dim}")
        half = dim // 2
        self.translation = nn.Sequential(nn.Linear(half, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, half))

    def forward(self, x: Tensor) -> Tensor:
        """Eq. 4."""
        kept, moved = x.chunk(2, dim=-1)
        return torch.cat([kept, moved + self.translation(kept)], dim=-1)

    def inverse(self, y: Tensor) -> Tensor:
        """Eq. 5."""
        kept, moved = y.chunk(2, dim=-1)
        return torch.cat([kept, moved - self.translation(kept)], dim=-1)


class ChannelPermutation(nn.Module):
    """Eq. 6: ĥ = P c with a fixed random channel permutation P; the inverse applies Pᵀ.

    P is drawn once, at construction, from torch's global RNG (so the seed fixes it), and kept as
    a registered buffer: it is saved in and restored from the state_dict with the weights. (Eq. 6
    writes P ∈ {0,1}^{B×D}; a channel permutation of a (B, C) batch is the C×C matrix used here.)
    """

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("permutation", torch.randperm(dim))

    def forward(self, x: Tensor) -> Tensor:
        """P c: channel i of the output is channel permutation[i] of the input."""
        return x[:, self.permutation]

    def inverse(self, y: Tensor) -> Tensor:
        """Pᵀ y."""
        return y[:, torch.argsort(self.permutation)]


class InvertibleSequential(nn.ModuleList):
    """Invertible steps applied in order; `inverse` undoes them in reverse order."""

    def forward(self, x: Tensor) -> Tensor:
        """Each step's forward, first to last."""
        for step in self:
            x = step(x)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        """Each step's inverse, last to first."""
        for step in reversed(self):
            y = step.inverse(y)
        return y

    def forget(self) -> None:
        """Drop the statistics the LayerNorm steps kept from the latest forward. They carry autograd
        history, and a module holding such tensors cannot be deep-copied (as trainers do to keep
        the best model), so a caller that is done with `inverse` releases them."""
        for step in self:
            if isinstance(step, InvertibleLayerNorm):
                step.saved_statistics = None


def invertible_flow(dim: int, householder_vectors: int, coupling_hidden: int,
                    householder: str = "reflections") -> InvertibleSequential:
    """F of eq. 2 without the attention mask: steps 2-5 of METHOD.md §2, in the paper's order.
    `householder`: how Q of eq. 3 is built (`HouseholderMixing`); the same Q either way."""
    return InvertibleSequential([
        HouseholderMixing(dim, householder_vectors, householder),
        InvertibleLayerNorm(dim),
        AdditiveCoupling(dim, coupling_hidden),
        ChannelPermutation(dim),
    ])


# Initial offset of the sigmoid mask's logits: α, β start near σ(−2) ≈ 0.12, a mask that mixes
# from the first step without making u and r equal (at 0.5, u = r).
MASK_INITIAL_OFFSET = -2.0


class AttentionMask(nn.Module):
    """Eq. 7-9, read per sample with channels as the attended positions (METHOD.md §2 item 6).

    For one sample, q_u, k_r ∈ R^D and s = q_u k_rᵀ / √d_k (D×D). α holds one weight per channel:
    - weights 'softmax' (the settled reading of eq. 8): α = diag(softmax_rows(s)). Each diagonal
      entry competes with D − 1 others, so α ≈ 1/D unless training makes the diagonal dominate
      (measured on mosi_utt: α, β ≈ 0.008-0.012 ≈ 1/D, ~1 % cross-talk);
    - weights 'sigmoid' (default): α_i = σ(s_ii + b_i), the diagonal scored against a no-mixing
      alternative (a two-way softmax of s_ii against 0, offset by a learned per-channel b_i),
      so α can take any value in (0, 1) per channel and sample.
    β likewise from q_r, k_u. Then r = (1 − α) ⊙ V_r + β ⊙ V_u and u = (1 − β) ⊙ V_u + α ⊙ V_r.
    Nothing mixes samples, so a sample's output does not depend on the rest of its batch.
    d_k = D: α must have one entry per channel of V, so queries and keys are D wide. The
    projections have no bias, as eq. 7 writes them (ûW).
    """

    def __init__(self, width: int, weights: str = "sigmoid"):
        super().__init__()
        if weights not in MASK_WEIGHTS:
            raise ValueError(f"AttentionMask: weights must be one of {MASK_WEIGHTS}, got {weights!r}")
        self.weights = weights
        self.specific_qkv = nn.Linear(width, 3 * width, bias=False)  # W_{u,q}, W_{u,k}, W_{u,v}
        self.shared_qkv = nn.Linear(width, 3 * width, bias=False)    # W_{r,q}, W_{r,k}, W_{r,v}
        self.scale = 1.0 / math.sqrt(width)
        if weights == "sigmoid":
            self.offsets = nn.Parameter(torch.full((2, width), MASK_INITIAL_OFFSET))

    def _channel_weights(self, query: Tensor, key: Tensor, which: int) -> Tensor:
        if self.weights == "sigmoid":
            return torch.sigmoid(query * key * self.scale + self.offsets[which])
        scores = query.unsqueeze(-1) * key.unsqueeze(-2) * self.scale  # (B, D, D) per sample
        return torch.diagonal(torch.softmax(scores, dim=-1), dim1=-2, dim2=-1)

    def forward(self, specific_hat: Tensor, shared_hat: Tensor) -> tuple[Tensor, ...]:
        """(û, r̂) each (B, D) -> (u, r, α, β) each (B, D)."""
        query_u, key_u, value_u = self.specific_qkv(specific_hat).chunk(3, dim=-1)
        query_r, key_r, value_r = self.shared_qkv(shared_hat).chunk(3, dim=-1)
        alpha = self._channel_weights(query_u, key_r, 0)
        beta = self._channel_weights(query_r, key_u, 1)
        shared = (1 - alpha) * value_r + beta * value_u
        specific = (1 - beta) * value_u + alpha * value_r
        return specific, shared, alpha, beta


class IAMD(nn.Module):
    """One modality's IAMD: X_m -> h̃ = [ũ; r̃] -F-> ĥ = [û; r̂] -mask-> (u_m, r_m).

    `recover` adds F⁻¹([u_m; r_m]) for L_IN (eq. 11); a decoder (built when `reconstruct`) adds the
    reconstruction of X_m for L_RE (eq. 10). Neither is on the prediction path.
    """

    def __init__(self, width: int, householder_vectors: int, dropout: float, reconstruct: bool,
                 mask_weights: str = "sigmoid", householder: str = "reflections"):
        super().__init__()
        self.split = LatentSplit(width, dropout)
        # The coupling net t maps D channels to D; its hidden width D is our choice (not given).
        self.flow = invertible_flow(2 * width, householder_vectors, coupling_hidden=width,
                                    householder=householder)
        self.attention_mask = AttentionMask(width, mask_weights)
        # Eq. 10 writes ‖h̃_m − x_m‖²: "reconstruction in the input space" (METHOD.md §2). h̃ is
        # 2D wide and X_m D wide, so a decoder maps the disentangled [u_m; r_m] back to X_m.
        self.decoder = two_layer_mlp(2 * width, width, width, dropout) if reconstruct else None

    def forward(self, pooled: Tensor, recover: bool, reconstruct: bool) -> dict[str, Tensor]:
        """X_m (B, D) -> {'specific': u_m, 'shared': r_m, 'latent': h̃_m, 'mask_alpha': α,
        'mask_beta': β, and when asked
        'latent_recovered': F⁻¹([u_m; r_m]), 'reconstruction': decoder([u_m; r_m]) (when the
        decoder is built)}."""
        latent = torch.cat(self.split(pooled), dim=-1)
        specific_hat, shared_hat = self.flow(latent).chunk(2, dim=-1)
        specific, shared, alpha, beta = self.attention_mask(specific_hat, shared_hat)
        disentangled = torch.cat([specific, shared], dim=-1)
        result = {"specific": specific, "shared": shared, "latent": latent,
                  "mask_alpha": alpha, "mask_beta": beta}
        if recover:
            result["latent_recovered"] = self.flow.inverse(disentangled)
        self.flow.forget()
        if reconstruct and self.decoder is not None:
            result["reconstruction"] = self.decoder(disentangled)
        return result


def invertibility_loss(recovered: dict[str, Tensor], latent: dict[str, Tensor]) -> Tensor:
    """L_IN (eq. 11): ‖F⁻¹([u_m; r_m]) − [ũ_m; r̃_m]‖², summed over modalities.

    Normalisation: the squared error is averaged over batch and channels (mean squared error), so
    the term's scale does not grow with D or B and the paper's λ values keep their meaning across
    widths; eq. 11 is written per modality, and the modalities are summed as in eq. 10 and eq. 19.
    """
    return torch.stack([F.mse_loss(recovered[m], latent[m]) for m in latent]).sum()


def reconstruction_loss(reconstruction: dict[str, Tensor], pooled: dict[str, Tensor]) -> Tensor:
    """L_RE (eq. 10): ‖decoder([u_m; r_m]) − X_m‖², summed over modalities (eq. 10's Σ),
    averaged over batch and channels (see `invertibility_loss`).

    X_m is the target, not a trainee: it is detached, so L_RE makes u_m and r_m keep the information
    in X_m rather than pulling the encoder towards features that are easy to reconstruct.
    """
    return torch.stack(
        [F.mse_loss(reconstruction[m], pooled[m].detach()) for m in reconstruction]
    ).sum()
