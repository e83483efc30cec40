"""AO-FL, IIDAF's angle-based peer: each loss at zero where it should be, OPR's projection,
its switches, batch independence in eval, a planted signal learned on the CPU through run.py."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.losses.angular import (angle_floor, cosine_ranking, label_aware_infonce,
                                       remove_projection)
from mmsa_iidaf.models.aofl import AOFL, AOFLObjective
from support import SMALL_PEER, peer_args, peer_inputs, run_cli_in_process



def aofl_args(**overrides):
    return peer_args("aofl", **overrides)


# --- the loss pieces -------------------------------------------------------------------------

def test_consistency_is_zero_for_aligned_positives_and_opposed_negatives():
    anchor = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    classes = torch.tensor([0, 1])
    # Each sample's one negative (the other class) points the opposite way: e^{-20} of weight.
    loss = label_aware_infonce(anchor, anchor.clone(), anchor, classes, classes, 0.1)
    assert loss.item() < 2 * math.exp(-20)
    anchor, classes = torch.eye(4), torch.tensor([0, 1, 2, 3])
    # Negatives of the anchor's own class never count: with only those, the loss is exactly 0.
    same = label_aware_infonce(anchor, anchor, anchor.flip(0), torch.zeros(4), torch.zeros(4), 0.1)
    assert same.item() == 0.0
    # A positive no closer than the negatives costs log(1 + #negatives).
    same_direction = torch.ones(4, 2)
    spread = label_aware_infonce(same_direction, same_direction, same_direction, classes,
                                 classes + 10, 1.0)
    assert abs(spread.item() - math.log(5)) < 1e-5


def test_angle_floor_is_zero_at_or_above_its_angle_only():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    orthogonal = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert angle_floor(x, orthogonal, 60.0).item() == 0.0
    assert angle_floor(x, x, 60.0).item() == pytest.approx(0.5)  # cos 0° − cos 60°
    at_45 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    assert angle_floor(x, at_45, 45.0).item() == pytest.approx(0.0, abs=1e-6)
    assert angle_floor(x, at_45, 60.0).item() == pytest.approx(math.cos(math.pi / 4) - 0.5)


def test_cosine_ranking_is_zero_when_the_shared_pair_is_closer_by_the_margin():
    g_m = torch.tensor([[1.0, 0.0, 0.0]])
    g_s = torch.tensor([[1.0, 0.1, 0.0]])       # φ ≈ 6°
    h_m = torch.tensor([[0.0, 1.0, 0.0]])       # θ = 90°
    assert cosine_ranking(g_s, g_m, h_m, g_m, 0.1).item() == 0.0
    # Reversed (the specific feature closer than the other modality's shared one): it costs.
    assert cosine_ranking(h_m, g_m, g_s, g_m, 0.1).item() > 1.0


def test_remove_projection_leaves_the_orthogonal_part():
    x, direction = torch.randn(16, 8), torch.randn(16, 8)
    refined = remove_projection(x, direction)
    assert (refined * direction).sum(-1).abs().max() < 1e-5
    assert torch.allclose(remove_projection(refined, direction), refined, atol=1e-5)


# --- the model -------------------------------------------------------------------------------

def test_switches_and_modalities_build_what_they_name():
    full = AOFL(aofl_args())
    without_opr = AOFL(aofl_args(use_opr=False))
    assert hasattr(full, "context") and not hasattr(without_opr, "context")
    outputs = without_opr(*peer_inputs(4))
    assert all(torch.equal(outputs["refined_specific"][m], outputs["specific"][m]) for m in "tav")
    refined = full(*peer_inputs(4))
    for m in "tav":  # OPR: what the head reads of h_m has no component along g_m
        dot = (refined["refined_specific"][m] * refined["shared"][m]).sum(-1)
        assert dot.abs().max() < 1e-4
    two = AOFL(aofl_args(modalities="ta"))
    assert set(two.specific_projectors) == {"t", "a"}
    assert two(*peer_inputs(4)[:2], None)["M"].shape == (4, 1)
    # A loss whose λ is 0 is a plain 0 with no graph; one modality has no cross-modal terms.
    labels = torch.tensor([1.0, -1.0, 0.0, 2.0])
    off = AOFLObjective(aofl_args(lambda_cen=0.0))(full, refined, labels)
    assert off["L_CEN"].item() == 0.0 and not off["L_CEN"].requires_grad
    alone = AOFL(aofl_args(modalities="t"))
    terms = AOFLObjective(aofl_args(modalities="t"))(alone, alone(peer_inputs(4)[0], None, None),
                                                     labels)
    assert terms["L_CEN"].item() == terms["L_CSR"].item() == 0.0


def test_every_loss_reaches_the_model_it_constrains():
    # An angle floor and a ranking margin the initial features violate.
    strict = aofl_args(aac_min_angle=170.0, csr_margin=1.5)
    model = AOFL(strict)
    outputs = model(*peer_inputs(8))
    losses = AOFLObjective(strict)(
        model, outputs, torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0, 1.5, -0.5, 2.5]))
    for term in ("L_CEN", "L_AAC", "L_CSR"):
        assert losses[term].item() > 0, term
        model.zero_grad()
        losses[term].backward(retain_graph=True)
        shared_grad = model.shared_projector[0].weight.grad
        assert shared_grad is not None and shared_grad.abs().sum() > 0, term


def test_eval_predictions_do_not_depend_on_the_rest_of_the_batch():
    model = AOFL(aofl_args()).eval()
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


def test_run_py_learns_the_planted_signal_on_the_cpu(signal_file, tmp_path, monkeypatch,
                                                    capsys):
    settings = {**SMALL_PEER, "max_epochs": 4, "early_stop": 2}
    flags = [f"--set={key}={value if not isinstance(value, list) else str(value)}"
             for key, value in settings.items()]
    result = run_cli_in_process(
        ["-m", "aofl", "-d", "mosi", "-f", signal_file, "-s", "1", "--modalities", "t,a", *flags,
         "--res-save-dir", tmp_path / "results", "--model-save-dir", tmp_path / "m",
         "--log-dir", tmp_path / "logs"], monkeypatch, capsys, threads=1)
    assert result.returncode == 0, result.stderr[-2000:]
    row = pd.read_csv(tmp_path / "results" / "aofl-mosi-seeds.csv").iloc[0]
    with open(signal_file, "rb") as f:
        data = pickle.load(f)
    mean_mae = float(np.mean(np.abs(data["test"]["regression_labels"]
                                    - np.mean(data["train"]["regression_labels"]))))
    assert row["modalities"] == "ta" and row["MAE"] < 0.8 * mean_mae, (row["MAE"], mean_mae)
    assert row["Corr"] > 0.5
    log = (tmp_path / "logs" / "aofl-mosi.log").read_text()
    assert "L_CEN" in log and "L_CSR" in log


def test_a_term_that_never_acts_is_reported(signal_file, tmp_path, monkeypatch, capsys):
    """An angle floor of 1° holds on every batch: L_AAC is in the graph but always 0, and the
    log says it does no work; a switched-off term (λ_CSR = 0) is not reported."""
    settings = {**SMALL_PEER, "max_epochs": 1, "early_stop": 1, "aac_min_angle": 1.0,
                "lambda_csr": 0.0}
    flags = [f"--set={key}={value}" for key, value in settings.items()]
    result = run_cli_in_process(
        ["-m", "aofl", "-d", "mosi", "-f", signal_file, "-s", "1", *flags,
         "--res-save-dir", tmp_path / "results", "--model-save-dir", tmp_path / "m",
         "--log-dir", tmp_path / "logs"], monkeypatch, capsys, threads=1)
    assert result.returncode == 0, result.stderr[-2000:]
    log = (tmp_path / "logs" / "aofl-mosi.log").read_text()
    inert = [line for line in log.splitlines() if "no work" in line]
    assert len(inert) == 1 and "L_AAC 0 on every batch" in inert[0], inert
    assert "L_CSR" not in inert[0] and "L_CEN" not in inert[0]


def test_aofls_terms_are_their_equations_over_the_modalities():
    """L_CEN: label-aware InfoNCE of each ordered pair of shared features against every
    modality's shared features; L_AAC: each modality's angle floor; L_CSR: for each ordered
    pair (s, m), s's shared feature closer to m's shared than m's specific is, by the margin."""
    from itertools import permutations

    from mmsa_iidaf.losses.task import sentiment_classes

    args = aofl_args(aac_min_angle=90.0, csr_margin=1.0)  # so that every term binds
    torch.manual_seed(0)
    model, objective = AOFL(args), AOFLObjective(args)
    labels = torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0, 1.5, -0.5, 2.5])
    outputs = model(*peer_inputs(8))
    terms = objective(model, outputs, labels)
    shared, specific = outputs["shared"], outputs["specific"]
    classes = sentiment_classes(labels, "regression")
    negatives = torch.cat([shared[m] for m in "tav"])
    consistency = [label_aware_infonce(shared[a], shared[b], negatives, classes,
                                       classes.repeat(3), float(args.cen_temperature))
                   for a, b in permutations("tav", 2)]
    ranking = [cosine_ranking(shared[s], shared[m], specific[m], shared[m], 1.0)
               for s, m in permutations("tav", 2)]
    floors = [angle_floor(shared[m], specific[m], 90.0) for m in "tav"]
    for key, parts in (("L_CEN", consistency), ("L_CSR", ranking), ("L_AAC", floors)):
        assert terms[key] > 0, key
        torch.testing.assert_close(terms[key], torch.stack(parts).mean(), msg=key)


def test_opr_refines_each_shared_feature_with_the_others_through_attention():
    """OPR: g_m' = LayerNorm(g_m + attention over every modality's g), h_m' = h_m without its
    projection on g_m."""
    torch.manual_seed(0)
    model = AOFL(aofl_args()).eval()
    outputs = model(*peer_inputs(4))
    shared = outputs["shared"]
    tokens = torch.stack([shared[m] for m in "tav"], dim=1)
    context, _ = model.context(tokens, tokens, tokens, need_weights=False)
    assert context.abs().max() > 1e-3
    enriched = model.context_norm(tokens + context)
    for i, m in enumerate("tav"):
        torch.testing.assert_close(outputs["refined_shared"][m], enriched[:, i])
        torch.testing.assert_close(outputs["refined_specific"][m],
                                   remove_projection(outputs["specific"][m], shared[m]))
