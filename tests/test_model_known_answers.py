"""Known-answer tests from a mutation review of IAMD, MIC, SGAFF, the encoders and the CMD,
conditional-MI and angular losses: each pins a value computed by hand (or by another route) that
a plausible one-token slip would change while the rest of the suite stays green."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from mmsa_iidaf.losses import PredictiveConditionalMI, knn_negative_indices, range_cmd
from mmsa_iidaf.losses.angular import label_aware_infonce
from mmsa_iidaf.models.iidaf.encoders import (MultimodalEncoder, padding_mask, pool_over_time,
                                              sinusoidal_positions)
from mmsa_iidaf.models.iidaf.iamd import (IAMD, AdditiveCoupling, AttentionMask,
                                          ChannelPermutation, HouseholderMixing,
                                          InvertibleLayerNorm, invertible_flow)
from mmsa_iidaf.models.iidaf.mic import MIC
from mmsa_iidaf.models.iidaf.sgaff import SGAFF


def randomise(module, seed=1):
    """Non-trivial values for every parameter (LayerNorm affine, coupling, mask), not the init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def step(flow, kind):
    return next(s for s in flow if isinstance(s, kind))


# ---------------------------------------------------------------- IAMD (eq. 2-11)

def test_layernorm_step_is_torchs_layer_norm_at_init():
    """A LayerNorm normalises by the biased (population) variance, as F.layer_norm does."""
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.testing.assert_close(InvertibleLayerNorm(8)(x), F.layer_norm(x, (8,), eps=1e-5))


def test_flow_is_mixing_then_layernorm_then_coupling_then_permutation():
    """METHOD §2 steps 2-5 in the paper's order, each written out by hand: h' = Q h̃,
    LayerNorm, r̃ = r' + t(u'), ĥ = P c. A reordered flow still inverts, so only this shows."""
    torch.manual_seed(0)
    flow = invertible_flow(8, householder_vectors=3, coupling_hidden=4)
    randomise(flow)
    x = torch.randn(5, 8) * 2 + 0.5
    mixing, norm = step(flow, HouseholderMixing), step(flow, InvertibleLayerNorm)
    coupling, permutation = step(flow, AdditiveCoupling), step(flow, ChannelPermutation)
    with torch.no_grad():
        h = x @ mixing.matrix().T
        mean = h.mean(-1, keepdim=True)
        variance = ((h - mean) ** 2).mean(-1, keepdim=True)
        h = (h - mean) / (variance + 1e-5).sqrt() * norm.log_scale.exp() + norm.shift
        h = torch.cat([h[:, :4], h[:, 4:] + coupling.translation(h[:, :4])], dim=-1)
        expected = h[:, permutation.permutation]
        torch.testing.assert_close(flow(x), expected, rtol=1e-5, atol=1e-5)


def identity_mask_iamd(width=4):
    """An IAMD whose mask passes ĥ through (V = identity, Q = K = 0, α = β = σ(−1e4) = 0)."""
    torch.manual_seed(0)
    iamd = IAMD(width, householder_vectors=3, dropout=0.0, reconstruct=True)
    randomise(iamd)
    mask = iamd.attention_mask
    with torch.no_grad():
        for qkv in (mask.specific_qkv, mask.shared_qkv):
            qkv.weight.zero_()
            qkv.weight[2 * width:] = torch.eye(width)
        mask.offsets.fill_(-1e4)
    return iamd


def test_identity_mask_gives_u_r_as_the_flow_halves_and_f_inverse_recovers_the_latent():
    """Eq. 11's F⁻¹([u; r]) must undo F when the mask changes nothing: û is the first half of
    F(h̃), r̂ the second, and [u; r] go back to F⁻¹ in that order. L_IN compares against
    the model's own outputs, so a swapped half or concatenation would go unseen there."""
    iamd = identity_mask_iamd()
    pooled = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    out = iamd(pooled, recover=True, reconstruct=True)
    flowed = iamd.flow(out["latent"])
    torch.testing.assert_close(out["specific"], flowed[:, :4])
    torch.testing.assert_close(out["shared"], flowed[:, 4:])
    assert (out["mask_alpha"] == 0).all() and (out["mask_beta"] == 0).all()
    torch.testing.assert_close(out["latent_recovered"], out["latent"], rtol=0, atol=1e-5)


def test_decoder_reads_the_disentangled_u_and_r():
    """Eq. 10 (METHOD §2): the decoder maps [u_m; r_m] back to X_m, not the latent h̃_m."""
    torch.manual_seed(0)
    iamd = IAMD(4, householder_vectors=3, dropout=0.0, reconstruct=True)
    randomise(iamd)
    out = iamd(torch.randn(6, 4), recover=False, reconstruct=True)
    expected = iamd.decoder(torch.cat([out["specific"], out["shared"]], dim=-1))
    torch.testing.assert_close(out["reconstruction"], expected)


def test_sigmoid_mask_starts_at_sigma_of_minus_two():
    """The documented start: α = β = σ(−2) ≈ 0.12 where q·k = 0 (mixing, yet u ≠ r)."""
    _, _, alpha, beta = AttentionMask(6)(torch.zeros(2, 6), torch.zeros(2, 6))
    expected = torch.full((2, 6), 1 / (1 + math.exp(2.0)))
    torch.testing.assert_close(alpha, expected)
    torch.testing.assert_close(beta, expected)


# ---------------------------------------------------------------- MIC (eq. 16-20)

DIM, BATCH = 6, 10


def features(seed=0):
    generator = torch.Generator().manual_seed(seed)
    shared = {m: torch.randn(BATCH, DIM, generator=generator) for m in "tav"}
    specific = {m: torch.randn(BATCH, DIM, generator=generator) for m in "tav"}
    return shared, specific, torch.randn(BATCH, 1, generator=generator)


def mic(estimator, label_dim=1):
    torch.manual_seed(0)
    return MIC("tav", dim=DIM, label_dim=label_dim, proj_dim=4, disc_hidden=8, knn_k=3,
               estimator=estimator)


def test_predictive_l_c_clips_each_negative_estimate_at_zero():
    """L_C = Σ_m max(0, Î_m) for the predictive estimator; a batch with a negative Î_m (fresh
    heads) shows the clip, which a batch whose every Î_m is positive cannot."""
    model = mic("predictive")
    shared, specific, labels = features()
    out = model(shared, specific, labels, "regression")
    raw = [value.item() for value in out["conditional"].values()]
    assert min(raw) < 0 < max(raw)
    assert math.isclose(out["L_C"].item(), sum(max(0.0, value) for value in raw), rel_tol=1e-6)


def test_predictive_critic_loss_is_each_heads_squared_error_on_its_own_inputs():
    """q(y | r) reads r alone and q(y | u, r) reads [u; r]: the heads' own training loss."""
    model = mic("predictive")
    shared, specific, labels = features()
    losses = model.critic_losses(shared, specific, labels, "regression")
    for m in "tav":
        heads = model.discriminators[m]
        given_shared = (heads.given_shared(shared[m]) - labels).pow(2).mean()
        given_both = (heads.given_both(torch.cat([specific[m], shared[m]], -1)) - labels)
        torch.testing.assert_close(losses[m], given_shared + given_both.pow(2).mean())


def test_knn_critic_loss_is_bce_of_u_z_r_against_each_modalitys_negatives():
    """φ is trained on (u, z, r) labelled 1 and (u, z', r) labelled 0, z' the label embedding
    of a kNN neighbour of r_m in that modality's own r-space (METHOD §3)."""
    model = mic("knn_discriminator")
    shared, specific, labels = features()
    losses = model.critic_losses(shared, specific, labels, "regression")
    negatives = model.negative_indices(shared)  # the same batch: the cached draw
    with torch.no_grad():
        z = model.label_embedding(labels, "regression")
        for m in "tav":
            # The k = 3 nearest other rows of r_m, by explicit distances.
            distances = (shared[m][:, None] - shared[m][None]).pow(2).sum(-1)
            distances += torch.diag(torch.full((BATCH,), float("inf")))
            nearest = distances.argsort(dim=1)[:, :3]
            assert all(negatives[m][i] in nearest[i] for i in range(BATCH)), m
            phi = model.discriminators[m].net
            positive = phi(torch.cat([specific[m], z, shared[m]], -1)).squeeze(-1)
            negative = phi(torch.cat([specific[m], z[negatives[m]], shared[m]], -1)).squeeze(-1)
            # BCE: −log σ(pos) for the joint triples, −log(1 − σ(neg)) for the negatives.
            expected = torch.cat([-torch.sigmoid(positive).log(),
                                  -(1 - torch.sigmoid(negative)).log()]).mean()
            torch.testing.assert_close(losses[m], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- conditional MI pieces

def test_knn_negatives_are_drawn_from_exactly_the_k_nearest():
    """Doubling gaps (0, 1, 3, 7, 15, 31) leave no tie at k = 2: over 100 draws each row
    must use both of its two nearest neighbours and nothing else (a uniform draw among k)."""
    r = torch.tensor([0.0, 1.0, 3.0, 7.0, 15.0, 31.0]).unsqueeze(1)
    expected = [{1, 2}, {0, 2}, {0, 1}, {1, 2}, {2, 3}, {3, 4}]
    torch.manual_seed(0)
    draws = torch.stack([knn_negative_indices(r, k=2) for _ in range(100)])
    assert [set(draws[:, i].tolist()) for i in range(6)] == expected


def test_classification_predictive_estimate_is_ce_given_r_minus_ce_given_u_and_r():
    """I(u; y | r) ≈ H(y | r) − H(y | u, r): the head without u has the larger cross-entropy
    when u helps, so the estimate is CE_r − CE_ur, and not its negative."""
    torch.manual_seed(0)
    estimator = PredictiveConditionalMI(3, 3, label_dim=3, hidden=8)
    generator = torch.Generator().manual_seed(1)
    u, r = torch.randn(7, 3, generator=generator), torch.randn(7, 3, generator=generator)
    classes = torch.tensor([0, 1, 2, 0, 1, 2, 0])

    def cross_entropy(logits):  # −log softmax at the true class, by hand
        return -(logits[range(7), classes] - logits.exp().sum(1).log()).mean()

    by_hand = (cross_entropy(estimator.given_shared(r))
               - cross_entropy(estimator.given_both(torch.cat([u, r], -1))))
    assert by_hand.abs() > 1e-3  # so that a flipped sign would show
    torch.testing.assert_close(estimator.estimate(u, r, classes), by_hand)


# ---------------------------------------------------------------- CMD (eq. 12-13)

def test_range_cmd_takes_the_range_over_both_samples_by_hand():
    """x1 = {0, 1}, x2 = {−1, 3}: x2 holds both ends, [a, b] = [−1, 3], |b − a| = 4.
    Means 0.5 vs 1 → 0.5 / 4; central moments (±0.5 vs ±2): c2 0.25 vs 4 → 3.75 / 4²,
    c4 0.0625 vs 16 → 15.9375 / 4⁴; odd ones 0."""
    x1, x2 = torch.tensor([[0.0], [1.0]]), torch.tensor([[-1.0], [3.0]])
    expected = 0.5 / 4 + 3.75 / 16 + 15.9375 / 256
    assert math.isclose(range_cmd(x1, x2).item(), expected, rel_tol=1e-6)


# ---------------------------------------------------------------- SGAFF (eq. 21-22)

def test_sgaff_is_eq_21_and_22_written_out():
    """u^g = u + W_m [u; r^e]; g(s) on the r^e, g(p) on the u^g, γ = σ(MLP([u^g; r^e]))."""
    torch.manual_seed(0)
    fusion = SGAFF("tav", 4, 1, dropout=0.0).eval()
    generator = torch.Generator().manual_seed(3)
    shared = {m: torch.randn(5, 4, generator=generator) for m in "tav"}
    specific = {m: torch.randn(5, 4, generator=generator) for m in "tav"}
    out = fusion(shared, specific)
    with torch.no_grad():
        enhanced = {m: fusion.shared_enhancers[m](shared[m]) for m in "tav"}
        guided = {}
        for m in "tav":
            weight, bias = fusion.guides[m].weight, fusion.guides[m].bias
            guided[m] = specific[m] + torch.cat([specific[m], enhanced[m]], -1) @ weight.T + bias
        enhanced_all = torch.cat([enhanced[m] for m in "tav"], -1)
        guided_all = torch.cat([guided[m] for m in "tav"], -1)
        g_s, g_p = fusion.shared_head(enhanced_all), fusion.specific_head(guided_all)
        gamma = torch.sigmoid(fusion.gate(torch.cat([guided_all, enhanced_all], -1)))
    for m in "tav":
        torch.testing.assert_close(out["specific_guided"][m], guided[m])
    torch.testing.assert_close(out["M_shared"], g_s)
    torch.testing.assert_close(out["M_specific"], g_p)
    torch.testing.assert_close(out["gamma"], gamma)
    torch.testing.assert_close(out["M"], gamma * g_s + (1 - gamma) * g_p)


# ---------------------------------------------------------------- angular losses (AO-FL)

def test_label_aware_infonce_scores_by_cosine_not_dot_product():
    """Positive at 0° (cos 1) and one negative at 90° (cos 0), lengths 2, 3 and 5, τ = 1:
    −log(e¹ / (e¹ + e⁰)) = log(1 + e⁻¹), whatever the lengths."""
    loss = label_aware_infonce(torch.tensor([[2.0, 0.0]]), torch.tensor([[3.0, 0.0]]),
                               torch.tensor([[0.0, 5.0]]), torch.tensor([0]), torch.tensor([1]),
                               1.0)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1.0)), rel_tol=1e-6)


# ---------------------------------------------------------------- encoders (eq. 1)

def test_sinusoidal_positions_by_hand():
    """Width 4: frequencies 1 and 10000^(−2/4) = 0.01; row p is
    [sin p, cos p, sin 0.01p, cos 0.01p]."""
    expected = torch.tensor([[math.sin(p), math.cos(p), math.sin(0.01 * p), math.cos(0.01 * p)]
                             for p in range(3)])
    torch.testing.assert_close(sinusoidal_positions(3, 4), expected)


def test_padding_mask_reads_a_length_below_one_as_one():
    """A length of 0 would mask every step (NaN attention): it is read as 1."""
    assert padding_mask([0, 2, 5], 3, "cpu").tolist() == [
        [False, True, True], [False, False, True], [False, False, False]]


def test_pooling_by_hand_with_negative_real_steps():
    """Real steps −3 and −1, a padded 50: mean −2, max −1 (not 0, not 50), last −1."""
    sequence = torch.tensor([[[-3.0], [-1.0], [50.0]]])
    mask = torch.tensor([[False, False, True]])
    assert pool_over_time(sequence, mask, "mean").item() == -2.0
    assert pool_over_time(sequence, mask, "max").item() == -1.0
    assert pool_over_time(sequence, mask, "last").item() == -1.0


class StubTextEncoder(nn.Module):
    """Stands in for the BERT-family encoder: fixed hidden states, 4 wide."""
    hidden_size = 4

    def forward(self, text_bert):
        generator = torch.Generator().manual_seed(0)
        return torch.randn(text_bert.shape[0], text_bert.shape[2], 4, generator=generator)


def encoder(modalities, dims, text_encoder=None):
    torch.manual_seed(0)
    return MultimodalEncoder(modalities, dims, 8, 1, {m: 1 for m in modalities},
                             {m: 2 for m in modalities}, 1, 2, 0.0, "mean",
                             text_encoder=text_encoder).eval()


def test_text_mask_is_berts_attention_row_with_cls_always_real():
    """text_bert rows are (ids, attention mask, token types): padding is where row 1 is 0;
    [CLS] stays real even for an empty transcript; cut after the longest real text (3)."""
    attention = torch.tensor([[1.0, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    text_bert = torch.stack([attention * 7, attention, torch.zeros(2, 5)], dim=1)
    sequence, mask = encoder("t", {"t": 4}, StubTextEncoder())._text_sequence(text_bert)
    assert mask.tolist() == [[False, False, False], [False, True, True]]
    assert sequence.shape == (2, 3, 4)


def test_each_modality_passes_its_own_encoder_then_the_one_shared_encoder():
    """X_m = SharedTransformer(Transformer_m(...)) with the same shared weights for every m,
    then mean-pooled (no padding here)."""
    dims = {"t": 3, "a": 2, "v": 5}
    model = encoder("tav", dims)
    generator = torch.Generator().manual_seed(4)
    inputs = {m: torch.randn(2, 4, dims[m], generator=generator) for m in "tav"}
    with torch.no_grad():
        pooled = model(inputs, {})
        for m in "tav":
            own, _ = model.modality_encoders[m](inputs[m], None)
            torch.testing.assert_close(pooled[m], model.shared_encoder(own).mean(dim=1))
