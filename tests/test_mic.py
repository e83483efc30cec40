"""Tests of the MIC module (IIDAF §2.3): outputs, modality subsets, parameter split, negatives."""

import pytest
import torch

from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.models.iidaf.mic import MIC

DIM, BATCH = 8, 12


def _features(modalities: str, requires_grad: bool = False):
    shared = {m: torch.randn(BATCH, DIM, requires_grad=requires_grad) for m in modalities}
    specific = {m: torch.randn(BATCH, DIM, requires_grad=requires_grad) for m in modalities}
    return shared, specific


def _mic(modalities: str = "tav", label_dim: int = 1, estimator: str = "predictive") -> MIC:
    return MIC(modalities, dim=DIM, label_dim=label_dim, proj_dim=6, disc_hidden=16, knn_k=3,
               estimator=estimator)


def _losses(out: dict) -> list:
    return [out[key] for key in ("L_R", "L_C", "L_MI")]


def test_forward_keys_finite_and_total():
    torch.manual_seed(0)
    mic = _mic()
    shared, specific = _features("tav")
    out = mic(shared, specific, torch.randn(BATCH, 1), "regression")
    assert set(out) == {"L_R", "L_C", "L_MI", "pairs", "conditional"}
    assert set(out["pairs"]) == {"t-a", "t-v", "a-v", "t-z", "a-z", "v-z"}
    assert set(out["conditional"]) == set("tav")
    assert all(value.dim() == 0 and torch.isfinite(value) for value in _losses(out))
    assert torch.allclose(out["L_R"], torch.stack(list(out["pairs"].values())).sum())
    assert torch.allclose(out["L_MI"], out["L_R"] + out["L_C"])


def test_l_r_sums_three_pairs_and_three_label_terms():
    torch.manual_seed(0)
    mic = _mic()
    shared, specific = _features("tav")
    labels = torch.randn(BATCH, 1)
    z = mic.label_embedding(labels, "regression")
    expected = sum(mic.pair_infonce[p](shared[p[0]], shared[p[1]]) for p in ("ta", "tv", "av"))
    expected = expected + sum(mic.label_infonce[m](shared[m], z) for m in "tav")
    assert torch.allclose(mic(shared, specific, labels, "regression")["L_R"], expected)


def test_single_modality_has_no_pair_terms():
    torch.manual_seed(0)
    mic = _mic("v")
    assert len(mic.pair_infonce) == 0
    shared, specific = _features("v")
    labels = torch.randn(BATCH, 1)
    out = mic(shared, specific, labels, "regression")
    assert all(torch.isfinite(value) for value in _losses(out))
    z = mic.label_embedding(labels, "regression")
    assert torch.allclose(out["L_R"], mic.label_infonce["v"](shared["v"], z))


def test_classification_labels_are_one_hot_embedded():
    torch.manual_seed(0)
    mic = _mic("ta", label_dim=2)
    labels = torch.tensor([0, 1] * (BATCH // 2))
    z = mic.label_embedding(labels, "classification")
    assert z.shape == (BATCH, DIM)
    assert torch.allclose(z[0], mic.label_encoder.bias + mic.label_encoder.weight[:, 0])
    shared, specific = _features("ta")
    out = mic(shared, specific, labels, "classification")
    assert all(torch.isfinite(value) for value in _losses(out))


@pytest.mark.parametrize("modalities", ["", "at", "tx", "tt"])
def test_invalid_modalities_are_a_config_error(modalities):
    with pytest.raises(ConfigError):
        _mic(modalities)


def test_discriminator_parameters_disjoint_from_main_and_cover_all():
    mic = _mic()
    discriminator_ids = {id(p) for p in mic.discriminator_parameters()}
    main_ids = {id(p) for p in mic.main_parameters()}
    assert discriminator_ids and main_ids
    assert not discriminator_ids & main_ids
    assert discriminator_ids | main_ids == {id(p) for p in mic.parameters()}


@pytest.mark.parametrize("estimator", ["predictive", "knn_discriminator"])
def test_model_loss_leaves_discriminators_untouched_and_reaches_features(estimator):
    torch.manual_seed(0)
    mic = _mic(estimator=estimator)
    shared, specific = _features("tav", requires_grad=True)
    mic(shared, specific, torch.randn(BATCH, 1), "regression")["L_MI"].backward()
    assert all(p.grad is None for p in mic.discriminator_parameters())
    assert all(p.requires_grad for p in mic.discriminator_parameters())
    assert all(specific[m].grad is not None and shared[m].grad is not None for m in "tav")
    assert mic.label_encoder.weight.grad is not None  # trained through L_R


@pytest.mark.parametrize("estimator", ["predictive", "knn_discriminator"])
def test_discriminator_loss_trains_only_the_discriminators(estimator):
    torch.manual_seed(0)
    mic = _mic(estimator=estimator)
    shared, specific = _features("tav", requires_grad=True)
    loss = mic.discriminator_loss(shared, specific, torch.randn(BATCH, 1), "regression")
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in mic.discriminator_parameters())
    assert all(p.grad is None for p in mic.main_parameters())
    assert all(shared[m].grad is None and specific[m].grad is None for m in "tav")


def test_discriminator_step_and_model_loss_share_the_batch_negatives():
    torch.manual_seed(0)
    mic = _mic(estimator="knn_discriminator")
    shared, specific = _features("tav")
    labels = torch.randn(BATCH, 1)
    first = mic.negative_indices(shared)
    rng_state = torch.get_rng_state()
    mic.discriminator_loss(shared, specific, labels, "regression")
    mic(shared, specific, labels, "regression")
    assert torch.equal(torch.get_rng_state(), rng_state)  # no new draw for the same batch
    assert all(torch.equal(first[m], mic.negative_indices(shared)[m]) for m in "tav")
    new_shared, _ = _features("tav")
    mic.negative_indices(new_shared)
    assert not torch.equal(torch.get_rng_state(), rng_state)  # a new batch draws new negatives


@pytest.mark.parametrize("estimator", ["predictive", "knn_discriminator"])
def test_reproducible_under_manual_seed(estimator):
    def run():
        torch.manual_seed(123)
        mic = _mic(estimator=estimator)
        shared, specific = _features("tav")
        labels = torch.randn(BATCH, 1)
        out = mic(shared, specific, labels, "regression")
        return out["L_MI"], mic.discriminator_loss(shared, specific, labels, "regression")

    first, second = run(), run()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_discriminator_optimizer_step_changes_only_phi():
    torch.manual_seed(0)
    mic = _mic()
    shared, specific = _features("tav")
    labels = torch.randn(BATCH, 1)
    main_before = [p.detach().clone() for p in mic.main_parameters()]
    disc_before = [p.detach().clone() for p in mic.discriminator_parameters()]
    optimizer = torch.optim.Adam(mic.discriminator_parameters(), lr=1e-2)
    optimizer.zero_grad()
    mic.discriminator_loss(shared, specific, labels, "regression").backward()
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(main_before, mic.main_parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(disc_before, mic.discriminator_parameters()))


def test_l_c_does_not_reshape_the_label_embedding():
    torch.manual_seed(0)
    mic = _mic(estimator="knn_discriminator")
    shared, specific = _features("tav", requires_grad=True)
    mic(shared, specific, torch.randn(BATCH, 1), "regression")["L_C"].backward()
    assert mic.label_encoder.weight.grad is None
    assert all(specific[m].grad is not None and specific[m].grad.abs().sum() > 0 for m in "tav")


def test_predictive_l_c_trains_u_only_and_is_clipped_at_zero():
    torch.manual_seed(0)
    mic = _mic()
    labels = torch.randn(BATCH, 1)
    shared, specific = _features("tav", requires_grad=True)
    # u carries the label beyond r: fit the heads briefly so q(y | u, r) beats q(y | r).
    specific = {m: (u + labels).detach().requires_grad_() for m, u in specific.items()}
    optimizer = torch.optim.Adam(mic.discriminator_parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        mic.discriminator_loss(shared, specific, labels, "regression").backward()
        optimizer.step()
    out = mic(shared, specific, labels, "regression")
    assert all(out["conditional"][m] > 0 for m in "tav")
    out["L_C"].backward()
    assert all(specific[m].grad.abs().sum() > 0 for m in "tav")
    assert all(shared[m].grad is None for m in "tav")  # r is the condition, not the trainee
    assert torch.allclose(out["L_C"], sum(v.clamp_min(0) for v in out["conditional"].values()))
