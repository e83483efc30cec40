"""MGRL and FDRL, IIDAF's classifier-guided and fine-grained peers: each loss at zero where it
should be, the switches, each loss reaching what it constrains, batch independence in eval, a
planted signal learned on the CPU through run.py."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.losses.alignment import (class_conditional_cmd, instance_alignment,
                                         instance_disparity, soft_orthogonality)
from mmsa_iidaf.losses.modality import confusion, identification, placement_margin
from mmsa_iidaf.models.fdrl import FDRL, FDRLObjective
from mmsa_iidaf.models.mgrl import MGRL, MGRLObjective
from support import SMALL_PEER, peer_args, peer_inputs, run_cli_in_process

MODELS = {"mgrl": (MGRL, MGRLObjective), "fdrl": (FDRL, FDRLObjective)}
LABELS = torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0, 1.5, -0.5, 2.5])


# --- the loss pieces -------------------------------------------------------------------------

def test_modality_losses_are_zero_exactly_where_the_classifier_says_so():
    sure = torch.tensor([[30.0, 0.0, 0.0]]).repeat(4, 1)
    assert identification(sure, 0).item() < 1e-12
    assert identification(sure, 1).item() == pytest.approx(30.0, abs=1e-4)
    assert confusion(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-7)
    assert confusion(sure).item() > 5  # a placeable "shared" feature costs
    # The private feature placed with certainty, the shared one at chance: a margin up to
    # 1 − 1/3 holds; a larger one costs what is missing, per sample.
    assert placement_margin(sure, torch.zeros(4, 3), 0, torch.tensor(0.5)).item() == 0.0
    missing = placement_margin(sure, torch.zeros(4, 3), 0, torch.full((4,), 0.9)).item()
    assert missing == pytest.approx(0.9 - (1 - 1 / 3), abs=1e-5)


def test_alignment_pieces_are_zero_where_the_features_agree_or_are_apart():
    x = torch.randn(12, 6)
    assert instance_alignment(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert instance_alignment(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    y = torch.stack([torch.tensor([1.0, 0, 0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0, 0, 0])] * 6)
    z = torch.stack([torch.tensor([0, 1.0, 0, 0, 0, 0]), torch.tensor([1.0, 0, 0, 0, 0, 0])] * 6)
    assert instance_disparity(y, z).item() == 0.0 and instance_disparity(y, y).item() == 1.0
    classes = torch.tensor([0, 1] * 6)
    # Same distribution within each class (a rescaled copy: CMD is scale-free) → 0; a class
    # with one sample is left out rather than compared.
    assert class_conditional_cmd(x, 2 * x, classes).item() == pytest.approx(0.0, abs=1e-5)
    lone = torch.tensor([0] * 11 + [1])
    shifted = x.clone()
    shifted[-1] += 100
    assert class_conditional_cmd(x, shifted, lone).item() == pytest.approx(
        class_conditional_cmd(x[:-1], shifted[:-1], lone[:-1]).item())
    # Class-conditional alignment sees what the batch-level one cannot: the two sets have the
    # same batch distribution, but their classes are swapped.
    a = torch.cat([torch.randn(20, 4) + 3, torch.randn(20, 4) - 3])
    b = torch.cat([a[20:], a[:20]])
    labels = torch.tensor([0] * 20 + [1] * 20)
    assert class_conditional_cmd(a, a, labels).item() < 1e-5
    assert class_conditional_cmd(a, b, labels).item() > 1.0
    assert soft_orthogonality(y, y).item() > 0.1
    assert soft_orthogonality(y[:, :3], z[:, 3:]).item() == 0.0


# --- the models ------------------------------------------------------------------------------

def test_mgrl_switches_build_what_they_name():
    full = MGRL(peer_args("mgrl"))
    assert full.critic is not None and hasattr(full, "contribution_scorers")
    outputs = full(*peer_inputs(8))
    weights = outputs["contribution"]
    assert weights.shape == (8, 3) and torch.allclose(weights.sum(-1), torch.ones(8))
    # The critic is the modality classifier, optimised apart from the rest.
    critic = {id(p) for p in full.critic.parameters()}
    assert critic == {id(p) for p in full.discriminator_parameters()}
    assert not critic & {id(p) for p in full.main_parameters()}
    fixed = MGRL(peer_args("mgrl", adaptive_contribution=False))
    assert not hasattr(fixed, "contribution_scorers")
    assert torch.allclose(fixed(*peer_inputs(8))["contribution"], torch.full((8, 3), 1 / 3))
    off = MGRLObjective(peer_args("mgrl", lambda_mc=0.0))(full, outputs, LABELS)
    assert off["L_MC"].item() == 0.0 and not off["L_MC"].requires_grad
    alone = MGRL(peer_args("mgrl", modalities="t"))
    assert alone.critic is None and alone.discriminator_parameters() == []
    terms = MGRLObjective(peer_args("mgrl", modalities="t"))(
        alone, alone(peer_inputs(8)[0], None, None), LABELS)
    assert terms["L_MC"].item() == terms["L_MAR"].item() == terms["L_CON"].item() == 0.0
    with pytest.raises(ConfigError, match="'margin'"):
        MGRL(peer_args("mgrl", margin=1.5))


class FirstColumnsAsLogits(torch.nn.Module):
    """A critic whose logits over the modalities are a feature's first columns."""

    def forward(self, features):
        return features[:, :3]


def test_mgrl_margins_follow_the_contributions():
    # Every specific feature is placed in its modality 0.3 above its shared feature (which the
    # critic reads as uniform): only samples whose margin 0.3 · M · w_m,i exceeds 0.3 pay.
    model = MGRL(peer_args("mgrl", margin=0.3))
    model.critic = FirstColumnsAsLogits()
    batch, count = 4, 3
    lead = math.log(2 * (1 / 3 + 0.3) / (1 - (1 / 3 + 0.3)))  # softmax gives 1/3 + 0.3
    contribution = torch.tensor([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6],
                                 [1 / 3, 1 / 3, 1 / 3]])
    outputs = {"contribution": contribution,
               "shared": {m: torch.zeros(batch, 8) for m in model.modalities},
               "specific": {m: torch.zeros(batch, 8).index_fill(1, torch.tensor([i]), lead)
                            for i, m in enumerate(model.modalities)}}
    paid = torch.relu(0.3 * count * contribution - 0.3)  # (B, M): 0.24 where w = 0.6, else 0
    objective = MGRLObjective(peer_args("mgrl", margin=0.3))
    assert objective.margins(model, outputs).item() == pytest.approx(paid.mean().item(), abs=1e-5)
    assert paid.mean().item() == pytest.approx(0.06)  # a constant margin of 0.3 would give 0
    # Each hinge acts on its own sample: the gradient reaches the specific features only where
    # that sample's contribution, and so its margin, is above the placement.
    specific = outputs["specific"]["t"].requires_grad_()
    objective.margins(model, outputs).backward()
    assert specific.grad[:, 0].nonzero().flatten().tolist() == [0]


def test_mgrl_contribution_target_favours_the_better_modality():
    model = MGRL(peer_args("mgrl"))
    outputs = model(*peer_inputs(8))
    objective = MGRLObjective(peer_args("mgrl"))
    # Text's unimodal head exact, the others far off: the scorer is pulled towards text.
    outputs["unimodal"] = {"t": LABELS.reshape(-1, 1).clone(),
                           "a": LABELS.reshape(-1, 1) + 5, "v": LABELS.reshape(-1, 1) - 5}
    loss = objective.contribution(model, outputs, LABELS)
    model.zero_grad()
    loss.backward()
    grads = {m: model.contribution_scorers[m].bias.grad.item() for m in "tav"}
    assert grads["t"] < 0 < min(grads["a"], grads["v"])  # descending raises text's score only


def test_fdrl_switches_build_what_they_name():
    model = FDRL(peer_args("fdrl"))
    outputs = model(*peer_inputs(8))
    assert set(outputs["reconstructed"]) == set("tav")
    fine = FDRLObjective(peer_args("fdrl"))
    coarse = FDRLObjective(peer_args("fdrl", granularity="coarse"))
    classes = torch.sign(LABELS).long()
    assert fine.alignment(outputs["shared"], classes).item() != pytest.approx(
        coarse.alignment(outputs["shared"], classes).item())
    off = FDRLObjective(peer_args("fdrl", lambda_rec=0.0))(model, outputs, LABELS)
    assert off["L_REC"].item() == 0.0 and not off["L_REC"].requires_grad
    alone = FDRL(peer_args("fdrl", modalities="a"))
    terms = FDRLObjective(peer_args("fdrl", modalities="a"))(
        alone, alone(None, peer_inputs(8)[1], None), LABELS)
    assert terms["L_FA"].item() == 0.0 and terms["L_FD"].item() > 0
    with pytest.raises(ConfigError, match="granularity"):
        FDRL(peer_args("fdrl", granularity="medium"))


@pytest.mark.parametrize("name,terms,reaches", [
    ("mgrl", ("L_MC", "L_MAR", "L_CON"), {"L_MC": "shared_encoder", "L_MAR": "private_encoders",
                                          "L_CON": "contribution_scorers"}),
    ("fdrl", ("L_FA", "L_FD", "L_REC"), {"L_FA": "shared_encoder", "L_FD": "private_encoders",
                                         "L_REC": "decoders"}),
])
def test_every_loss_reaches_the_part_it_constrains(name, terms, reaches):
    model_class, objective_class = MODELS[name]
    args = peer_args(name, margin=0.9) if name == "mgrl" else peer_args(name)
    model = model_class(args)
    outputs = model(*peer_inputs(8))
    losses = objective_class(args)(model, outputs, LABELS)
    for term in terms:
        assert losses[term].item() > 0, term
        model.zero_grad()
        losses[term].backward(retain_graph=True)
        part = getattr(model, reaches[term])
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, term
        encoder_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
        assert encoder_grads, f"{term} does not reach the encoder"
    if name == "mgrl":  # the critic learns from detached features: its loss moves only it
        critic_loss = objective_class(args).discriminator_loss(model, outputs, LABELS)
        model.zero_grad()
        critic_loss.backward()
        assert all(p.grad is None for p in model.shared_encoder.parameters())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_predictions_do_not_depend_on_the_rest_of_the_batch(name):
    model = MODELS[name][0](peer_args(name)).eval()
    text, audio, vision = peer_inputs(6)
    with torch.no_grad():
        together = model(text, audio, vision)["M"]
        alone = torch.cat([model(text[i:i + 1], audio[i:i + 1], vision[i:i + 1])["M"]
                           for i in range(6)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def signal_file(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("features") / "signal.pkl", preset="mosi",
                         n_train=128, n_valid=32, n_test=64, seq_lens=(8, 8, 8), seed=0)


@pytest.mark.parametrize("name,logged", [("mgrl", ("L_MC", "L_MAR", "L_CON", "L_critic")),
                                         ("fdrl", ("L_FA", "L_FD", "L_REC"))])
def test_run_py_learns_the_planted_signal_on_the_cpu(name, logged, signal_file, tmp_path,
                                                    monkeypatch, capsys):
    settings = {**SMALL_PEER, "max_epochs": 4, "early_stop": 2}
    flags = [f"--set={key}={value}" for key, value in settings.items()]
    result = run_cli_in_process(
        ["-m", name, "-d", "mosi", "-f", signal_file, "-s", "1", "--modalities", "t,a", *flags,
         "--res-save-dir", tmp_path / "results", "--model-save-dir", tmp_path / "m",
         "--log-dir", tmp_path / "logs"], monkeypatch, capsys, threads=1)
    assert result.returncode == 0, result.stderr[-2000:]
    row = pd.read_csv(tmp_path / "results" / f"{name}-mosi-seeds.csv").iloc[0]
    with open(signal_file, "rb") as f:
        data = pickle.load(f)
    mean_mae = float(np.mean(np.abs(data["test"]["regression_labels"]
                                    - np.mean(data["train"]["regression_labels"]))))
    assert row["modalities"] == "ta" and row["MAE"] < 0.8 * mean_mae, (row["MAE"], mean_mae)
    assert row["Corr"] > 0.5
    log = (tmp_path / "logs" / f"{name}-mosi.log").read_text()
    assert all(term in log for term in logged)


@pytest.mark.parametrize("name", ["aofl", "mgrl", "fdrl"])
def test_classification_trains_every_term(name):
    """UR-FUNNY's setting: two classes, cross-entropy; every loss finite and in the graph (a
    hinge may already hold at initialisation)."""
    from mmsa_iidaf.models.aofl import AOFL, AOFLObjective

    model_class, objective_class = {"aofl": (AOFL, AOFLObjective), **MODELS}[name]
    args = peer_args(name, train_mode="classification", num_classes=2)
    model = model_class(args)
    outputs = model(*peer_inputs(8))
    assert outputs["M"].shape == (8, 2)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    losses = objective_class(args)(model, outputs, labels)
    named = [term for term in objective_class.terms if term != "L_T"]
    assert all(torch.isfinite(losses[t]) and losses[t].requires_grad for t in named), losses
    losses["total"].backward()


@pytest.mark.parametrize("name, weights, terms", [
    # AO-FL's angle terms bind at a 90° floor and a margin of 1 (its defaults hold at start).
    ("aofl", {"lambda_cen": 0.3, "lambda_aac": 0.7, "lambda_csr": 1.9, "aac_min_angle": 90.0,
              "csr_margin": 1.0}, {"L_CEN": 0.3, "L_AAC": 0.7, "L_CSR": 1.9}),
    ("mgrl", {"lambda_mc": 0.3, "lambda_mar": 0.7, "lambda_con": 1.9},
     {"L_MC": 0.3, "L_MAR": 0.7, "L_CON": 1.9}),
    ("fdrl", {"lambda_fa": 0.3, "lambda_fd": 0.7, "lambda_rec": 1.9},
     {"L_FA": 0.3, "L_FD": 0.7, "L_REC": 1.9}),
])
def test_each_peers_total_weighs_every_term_by_its_lambda(name, weights, terms):
    """total = L_T + Σ λ_k L_k, each λ on its own term (distinct λ, so a λ read for another
    term, or none, would show)."""
    from mmsa_iidaf.models.aofl import AOFL, AOFLObjective

    model_class, objective_class = {"aofl": (AOFL, AOFLObjective), "mgrl": (MGRL, MGRLObjective),
                                    "fdrl": (FDRL, FDRLObjective)}[name]
    args = peer_args(name, **weights)
    torch.manual_seed(0)
    model, objective = model_class(args), objective_class(args)
    losses = objective(model, model(*peer_inputs(8)), LABELS)
    assert all(losses[term].abs() > 0 for term in terms)
    expected = losses["L_T"] + sum(weight * losses[term] for term, weight in terms.items())
    torch.testing.assert_close(losses["total"], expected)


@pytest.mark.parametrize("granularity", ["fine", "coarse"])
def test_fdrls_terms_are_their_equations_over_the_modalities(granularity):
    """L_FA over modality pairs (fine: instance alignment + class-conditional CMD; coarse: CMD),
    L_FD over each modality's (specific, shared) and every pair of specifics, L_REC against the
    detached encoder output, each averaged."""
    from itertools import combinations

    import torch.nn.functional as F

    from mmsa_iidaf.losses.cmd import scale_free_cmd
    from mmsa_iidaf.losses.task import sentiment_classes

    args = peer_args("fdrl", granularity=granularity)
    torch.manual_seed(0)
    model, objective = FDRL(args), FDRLObjective(args)
    outputs = model(*peer_inputs(8))
    terms = objective(model, outputs, LABELS)
    shared, specific, k = outputs["shared"], outputs["specific"], int(args.cmd_moments)
    classes = sentiment_classes(LABELS, "regression")
    pairs = list(combinations("tav", 2))
    if granularity == "fine":
        align = [instance_alignment(shared[m], shared[s])
                 + class_conditional_cmd(shared[m], shared[s], classes, k) for m, s in pairs]
        apart = instance_disparity
    else:
        align = [scale_free_cmd(shared[m], shared[s], k) for m, s in pairs]
        apart = soft_orthogonality
    disparity = ([apart(specific[m], shared[m]) for m in "tav"]
                 + [apart(specific[m], specific[s]) for m, s in pairs])
    torch.testing.assert_close(terms["L_FA"], torch.stack(align).mean())
    torch.testing.assert_close(terms["L_FD"], torch.stack(disparity).mean())
    encoded = {m: value.detach().requires_grad_() for m, value in outputs["encoded"].items()}
    reconstruction = objective.reconstruction({**outputs, "encoded": encoded})
    torch.testing.assert_close(reconstruction, torch.stack(
        [F.mse_loss(outputs["reconstructed"][m], encoded[m]) for m in "tav"]).mean())
    reconstruction.backward()
    assert all(value.grad is None for value in encoded.values())  # a target, not a trainee
