"""Tests of the reusable loss pieces: CMD, HSIC, InfoNCE and the conditional-MI discriminator."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmsa_iidaf.losses import (
    ConditionalMIDiscriminator,
    InfoNCE,
    PredictiveConditionalMI,
    cmd,
    hsic,
    knn_negative_indices,
    knn_negative_labels,
    range_cmd,
    scale_free_cmd,
)


def test_cmd_is_zero_with_finite_gradient_for_identical_inputs():
    torch.manual_seed(0)
    x = torch.randn(64, 16, requires_grad=True)
    value = cmd(x, x, n_moments=5)
    value.backward()
    assert value.item() < 1e-6
    assert torch.isfinite(x.grad).all()


def test_cmd_gradient_is_finite_when_two_tensors_have_equal_moments():
    torch.manual_seed(0)
    base = torch.randn(32, 8)
    x1 = base.clone().requires_grad_(True)
    x2 = base.clone().requires_grad_(True)
    cmd(x1, x2).backward()
    assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()


def test_cmd_grows_with_distribution_shift():
    # Uniform samples on a bounded interval, the setting CMD is defined for.
    torch.manual_seed(0)
    x = torch.rand(256, 8)
    same_distribution = cmd(x, torch.rand(256, 8))
    mean_shifted = cmd(x, torch.rand(256, 8) + 0.5)
    scale_shifted = cmd(x, 0.5 * torch.rand(256, 8))
    assert same_distribution < 0.2
    assert mean_shifted > 5 * same_distribution
    assert scale_shifted > 5 * same_distribution


def test_cmd_counts_moments_from_the_mean_up():
    # Zero-mean inputs that differ only in the second moment: the first moment adds nothing, so
    # CMD_1 is ~0 and CMD_2 picks up the variance difference.
    x1 = torch.tensor([[-1.0], [1.0]])
    x2 = torch.tensor([[-2.0], [2.0]])
    assert cmd(x1, x2, n_moments=1).item() == 0.0
    assert math.isclose(cmd(x1, x2, n_moments=2).item(), 3.0)


def test_hsic_small_for_independent_and_larger_for_dependent_samples():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    independent = hsic(x, torch.randn(256, 8))
    dependent = hsic(x, torch.tanh(x @ torch.randn(8, 8)) + 0.3 * torch.randn(256, 8))
    assert 0 <= independent.item() < 2e-3
    assert dependent > 5 * independent


def test_hsic_matches_trace_formula_with_explicit_centring_matrix():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randn(20, 5)
    sigma = 1.5
    batch = x.shape[0]
    gram_x = torch.exp(-torch.cdist(x, x).pow(2) / (2 * sigma**2))
    gram_y = torch.exp(-torch.cdist(y, y).pow(2) / (2 * sigma**2))
    centring = torch.eye(batch) - torch.ones(batch, batch) / batch
    expected = torch.trace(gram_x @ centring @ gram_y @ centring) / (batch - 1) ** 2
    assert torch.allclose(hsic(x, y, sigma=sigma), expected, atol=1e-6)


def test_hsic_bandwidth_is_detached_and_gradient_finite():
    torch.manual_seed(0)
    x = torch.randn(32, 4, requires_grad=True)
    y = (x.detach() ** 2 + 0.1 * torch.randn(32, 4)).requires_grad_(True)
    hsic(x, y).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_hsic_degenerate_batches_are_zero():
    assert hsic(torch.randn(1, 4), torch.randn(1, 4)).item() == 0.0
    constant = torch.ones(8, 4)
    assert abs(hsic(constant, torch.randn(8, 4)).item()) < 1e-7


def test_infonce_lower_for_aligned_pairs_after_short_fit():
    torch.manual_seed(0)
    dim_x, dim_y, batch = 8, 6, 64
    mixing = torch.randn(dim_x, dim_y)
    x = torch.randn(512, dim_x)
    y = x @ mixing + 0.1 * torch.randn(512, dim_y)
    critic = InfoNCE(dim_x, dim_y, proj_dim=16, hidden=32)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(100):
        rows = torch.randint(0, 512, (batch,))
        loss = critic(x[rows], y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x_test = torch.randn(batch, dim_x)
    y_test = x_test @ mixing + 0.1 * torch.randn(batch, dim_y)
    with torch.no_grad():
        aligned = critic(x_test, y_test)
        shuffled = critic(x_test, y_test[torch.randperm(batch)])
    assert aligned < shuffled
    assert aligned < 0.5 * math.log(batch)


def test_infonce_single_sample_batch_is_zero():
    critic = InfoNCE(3, 3, proj_dim=4)
    assert critic(torch.randn(1, 3), torch.randn(1, 3)).item() == 0.0


def test_knn_negatives_exclude_self_and_come_from_nearest():
    # Points on a line: the neighbours of i are i-1 and i+1 (k = 2).
    r = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    torch.manual_seed(0)
    indices = knn_negative_indices(r, k=2)
    positions = torch.arange(10)
    assert (indices != positions).all()
    assert ((indices - positions).abs() <= 2).all()
    assert ((indices - positions).abs() == 1).sum() >= 8  # only the two ends reach distance 2


def test_knn_negatives_reproduce_under_seed_and_handle_small_batches():
    r, z = torch.randn(6, 4), torch.randn(6, 3)
    torch.manual_seed(3)
    first = knn_negative_labels(r, z, k=3)
    torch.manual_seed(3)
    second = knn_negative_labels(r, z, k=3)
    assert torch.equal(first, second)
    small = knn_negative_indices(torch.randn(3, 4), k=10)  # fewer than k + 1 samples
    assert (small != torch.arange(3)).all()
    assert knn_negative_indices(torch.randn(1, 4), k=5).tolist() == [0]


def _conditional_triples(n: int, u_depends_on_z_given_r: bool):
    """z = r + e. Dependent case: u is a noisy copy of e (u depends on z given r).
    Independent case: u is a function of r plus fresh noise (u independent of z given r)."""
    r = torch.randn(n, 2)
    e = torch.randn(n, 2)
    z = r + e
    u = e + 0.3 * torch.randn(n, 2) if u_depends_on_z_given_r else r.pow(2) + 0.3 * torch.randn(n, 2)
    return u, z, r


def _fit_and_evaluate_discriminator(u_depends_on_z_given_r: bool):
    torch.manual_seed(0)
    discriminator = ConditionalMIDiscriminator(2, 2, 2, hidden=32)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    u, z, r = _conditional_triples(2048, u_depends_on_z_given_r)
    for _ in range(120):
        rows = torch.randint(0, 2048, (128,))
        z_neg = knn_negative_labels(r[rows], z[rows], k=3)
        loss = discriminator.discriminator_loss(u[rows], z[rows], r[rows], z_neg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    u_test, z_test, r_test = _conditional_triples(1024, u_depends_on_z_given_r)
    z_neg = knn_negative_labels(r_test, z_test, k=3)
    with torch.no_grad():
        positives = discriminator(u_test, z_test, r_test)
        negatives = discriminator(u_test, z_neg, r_test)
        accuracy = ((positives > 0).float().mean() + (negatives <= 0).float().mean()) / 2
        estimate = discriminator.estimate(u_test, z_test, r_test, z_neg)
    return accuracy.item(), estimate.item()


def test_discriminator_detects_planted_conditional_dependence():
    accuracy, estimate = _fit_and_evaluate_discriminator(u_depends_on_z_given_r=True)
    assert accuracy > 0.75
    assert estimate > 2.0


def test_discriminator_near_chance_under_conditional_independence():
    accuracy, estimate = _fit_and_evaluate_discriminator(u_depends_on_z_given_r=False)
    assert 0.4 < accuracy < 0.6
    assert abs(estimate) < 0.5


# ---------------------------------------------------------------- L_S cannot fall by shrinking

def test_scale_free_cmd_does_not_fall_when_shared_features_shrink():
    torch.manual_seed(0)
    shared_t, shared_a = torch.randn(64, 16), 0.5 * torch.randn(64, 16) + 0.3
    aligned = scale_free_cmd(shared_t, shared_a)
    assert torch.allclose(scale_free_cmd(0.1 * shared_t, 0.1 * shared_a), aligned, rtol=1e-4)
    assert torch.allclose(scale_free_cmd(0.1 * shared_t, shared_a), aligned, rtol=1e-4)
    # The paper's plain CMD (|b - a| = 1) falls by a factor of 10 or more for the same r:
    # minimising it shrinks r instead of aligning it.
    assert cmd(0.1 * shared_t, 0.1 * shared_a) < 0.1 * cmd(shared_t, shared_a)


def test_scale_free_cmd_still_measures_misalignment():
    torch.manual_seed(0)
    base = torch.randn(256, 8)
    same_shape = scale_free_cmd(base, torch.randn(256, 8))
    skewed = scale_free_cmd(base, torch.randn(256, 8).exp())
    assert skewed > 3 * same_shape


# ---------------------------------------------------------------- the predictive I(u; y | r)

def _conditional_regression(n: int, planted: bool):
    """r, u independent standard normals; y = r·w (+ u·v when planted) + noise."""
    generator = torch.Generator().manual_seed(1 if planted else 2)
    r, u = torch.randn(n, 4, generator=generator), torch.randn(n, 4, generator=generator)
    y = r @ torch.tensor([1.0, -0.5, 0.5, 0.0])
    if planted:
        y = y + u @ torch.tensor([0.8, 0.0, -0.6, 0.0])
    return u, r, (y + 0.3 * torch.randn(n, generator=generator)).unsqueeze(1)


def _fitted_predictive_estimate(planted: bool) -> float:
    torch.manual_seed(0)
    estimator = PredictiveConditionalMI(4, 4, label_dim=1, hidden=32)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=3e-3)
    u, r, y = _conditional_regression(2048, planted)
    for _ in range(300):
        rows = torch.randint(0, 2048, (128,))
        optimizer.zero_grad()
        estimator.predictor_loss(u[rows], r[rows], y[rows]).backward()
        optimizer.step()
    u_test, r_test, y_test = _conditional_regression(1024, planted)
    with torch.no_grad():
        return estimator.estimate(u_test, r_test, y_test).item()


def test_predictive_estimator_detects_planted_conditional_information():
    # True value: ½ log((1 + 0.09) / 0.09) ≈ 1.25 nats for the planted u·v (variance 1) over noise.
    assert _fitted_predictive_estimate(planted=True) > 0.6


def test_predictive_estimator_is_near_zero_without_conditional_information():
    assert abs(_fitted_predictive_estimate(planted=False)) < 0.1


def test_range_cmd_is_eq_12_with_the_empirical_range_and_resists_shrinking():
    torch.manual_seed(0)
    shared_t, shared_a = torch.randn(64, 16), 0.5 * torch.randn(64, 16) + 0.3
    value = range_cmd(shared_t, shared_a)
    assert torch.allclose(range_cmd(0.1 * shared_t, 0.1 * shared_a), value, rtol=1e-4)
    assert range_cmd(0.1 * shared_t, shared_a) >= value  # shrinking one side does not help
    span = torch.cat([shared_t, shared_a]).max() - torch.cat([shared_t, shared_a]).min()
    terms = [(shared_t.mean(0) - shared_a.mean(0)).norm() / span]
    for k in range(2, 6):
        moment = lambda x: (x - x.mean(0)).pow(k).mean(0)  # noqa: E731
        terms.append((moment(shared_t) - moment(shared_a)).norm() / span ** k)
    assert torch.allclose(value, torch.stack(terms).sum(), rtol=1e-4)


def test_task_losses_by_hand():
    from mmsa_iidaf.losses.task import per_sample_task_loss, sentiment_classes, task_loss

    prediction, labels = torch.tensor([[0.5], [-1.0], [2.0]]), torch.tensor([1.0, 1.0, 2.0])
    # Squared errors 0.25, 4, 0: MSE, per sample and averaged.
    assert per_sample_task_loss(prediction, labels, "regression").tolist() == [0.25, 4.0, 0.0]
    assert task_loss(prediction, labels, "regression").item() == pytest.approx(4.25 / 3)
    logits, classes = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    expected = [math.log(1 + math.exp(-2.0)), math.log(2.0)]
    assert per_sample_task_loss(logits, classes, "classification").tolist() == pytest.approx(
        expected)
    # A regression score's class is its sign: negative, neutral and positive stay apart.
    assert sentiment_classes(torch.tensor([-2.4, 0.0, 0.6]), "regression").tolist() == [-1, 0, 1]


def test_the_median_bandwidth_is_a_constant_of_the_measurement():
    """With sigma None, HSIC's gradient is that of a fixed bandwidth equal to the median: the
    model cannot lower HSIC by moving the bandwidth."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, requires_grad=True), torch.randn(8, 2)
    hsic(x, y).backward()
    median_grad = x.grad.clone()
    x.grad = None
    pairs = torch.triu_indices(8, 8, offset=1)
    sigma_x = torch.cdist(x, x)[pairs[0], pairs[1]].pow(2).median().sqrt().item()
    sigma_y = torch.cdist(y, y)[pairs[0], pairs[1]].pow(2).median().sqrt().item()
    from mmsa_iidaf.losses.hsic import _gaussian_gram
    gram_y = _gaussian_gram(y, sigma_y)
    gram_x = _gaussian_gram(x, sigma_x)
    centred = gram_x - gram_x.mean(0, keepdim=True) - gram_x.mean(1, keepdim=True) + gram_x.mean()
    ((centred * gram_y).sum() / 49).backward()
    torch.testing.assert_close(median_grad, x.grad, rtol=1e-4, atol=1e-6)


def test_infonce_is_the_cross_entropy_of_each_x_over_the_ys():
    """Eq. 16: for x_i, the softmax over y_j of s(x_i, y_j), the positive y_i on the diagonal."""
    torch.manual_seed(0)
    critic = InfoNCE(3, 2, proj_dim=4)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    scores = critic.scores(x, y)
    assert not torch.allclose(scores, scores.T)
    by_hand = -(scores.diagonal() - scores.logsumexp(dim=1)).mean()
    torch.testing.assert_close(critic(x, y), by_hand)


def test_the_predictive_estimate_is_half_the_log_ratio_of_the_two_mses():
    """Regression: I(u; y | r) ≈ ½ log(MSE(y | r) / MSE(y | u, r)) (Gaussian residuals)."""
    torch.manual_seed(0)
    estimator = PredictiveConditionalMI(3, 3, label_dim=1, hidden=8)
    u, r, labels = torch.randn(6, 3), torch.randn(6, 3), torch.randn(6)
    given_shared = F.mse_loss(estimator.given_shared(r), labels.reshape(-1, 1))
    given_both = F.mse_loss(estimator.given_both(torch.cat([u, r], -1)), labels.reshape(-1, 1))
    torch.testing.assert_close(estimator.estimate(u, r, labels),
                               0.5 * (given_shared.log() - given_both.log()))


def test_soft_orthogonality_centres_the_columns_first():
    """A shared offset is no dependence: features whose centred columns are orthogonal score 0
    with any constant shift of the columns, since the columns are centred first."""
    from mmsa_iidaf.losses.alignment import soft_orthogonality

    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    assert soft_orthogonality(x, y).item() == pytest.approx(0.0, abs=1e-7)
    shifted = soft_orthogonality(x + 5.0, y + 5.0)
    assert shifted.item() == pytest.approx(0.0, abs=1e-7)
