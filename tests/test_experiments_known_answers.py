"""Known-answer tests from a mutation review of the statistics, robustness, ablation, analysis,
checkpoint and complexity code: each pins a number a researcher publishes (or the input it is
computed from) to a value worked out by hand or by another formulation. Pure, CPU-only, fast.
"""
from __future__ import annotations

import json
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from mmsa_iidaf import complexity, registry
from mmsa_iidaf.analysis import interpret, report
from mmsa_iidaf.analysis.checkpoint import find_seed_row
from mmsa_iidaf.experiments import ablations, statistics
from mmsa_iidaf.experiments.robustness import robustness_summary, train_std
from mmsa_iidaf.losses import hsic

# --- statistics --------------------------------------------------------------------------------


def test_constant_mae_differences_are_returned_as_they_are_and_one_pair_has_none():
    # |3 - 0| - |1 - 0| = 2 for every sample: every resample's mean is 2, so is the interval.
    zeros = np.zeros(5)
    assert statistics.mae_difference(zeros, zeros + 1, zeros + 3) == (2.0, 2.0, 2.0)
    # One pair is no sample to resample: no difference and no interval.
    assert all(math.isnan(x) for x in statistics.mae_difference([0.0], [1.0], [3.0]))


def test_clipped_mae_difference_reads_series_by_position_not_by_label():
    """Filtered Series keep their index (here 5, 6, 7): clipping must not turn the first
    difference into a lookup of label 0."""
    index = [5, 6, 7]
    y_true = pd.Series([0.0, 0.0, 0.0], index=index)
    reference, other = pd.Series([1.0] * 3, index=index), pd.Series([3.0] * 3, index=index)
    # Clipped at 2: |2 - 0| - |1 - 0| = 1 for every sample.
    assert statistics.mae_difference(y_true, reference, other, clip=(-2, 2)) == (1.0, 1.0, 1.0)


def test_the_mae_interval_is_the_percentile_interval():
    """19 differences of 0 and one of 10: a resample's mean is 10·X/20 = X/2 with X ~ Bin(20,
    1/20). P(X = 0) = 0.358 > 2.5 %, and P(X ≤ 2) = 0.92 < 97.5 % < P(X ≤ 3) = 0.98: the
    percentile interval is [0, 1.5]; the basic (reversed) one would be [2·0.5 − 1.5, 1] =
    [−0.5, 1], below the smallest mean a resample can have."""
    y_true = np.zeros(20)
    other = np.zeros(20)
    other[7] = 10.0
    difference, low, high = statistics.mae_difference(y_true, y_true, other)
    assert difference == pytest.approx(0.5)
    assert (low, high) == (0.0, 1.5)


# --- robustness ---------------------------------------------------------------------------------


def test_train_std_is_the_sample_std_around_a_nonzero_mean():
    """Real features are not centred: real steps 9, 11, 9, 11 (mean 10) have sample variance
    4 / 3, whatever the padding holds."""

    class Split:
        audio = np.array([[[9.0], [11.0], [50.0]], [[9.0], [11.0], [50.0]]], dtype=np.float32)
        audio_lengths = np.array([2, 2])

    assert train_std(Split(), "a", chunk=1) == pytest.approx([math.sqrt(4 / 3)])


def test_the_area_is_the_mean_relative_score_over_the_real_levels_in_any_row_order():
    """Levels 0, 0.3, 0.6, 0.9 (the command's range is 0–0.9, not 0–1); MAE / clean is 1 up to
    0.6, then rises linearly to 1.9 at 0.9: area 0.6 · 1 + 0.3 · (1 + 1.9) / 2 = 1.035 over a
    range of 0.9 = 1.15. Rows may come in any order (a merged CSV); a curve without a clean
    score (level 0) has no area."""
    table = pd.DataFrame({
        "model": "m", "seed": 1, "kind": "noise", "modality": ["v"] * 4 + ["a"] * 2,
        "level": [0.6, 0.0, 0.9, 0.3, 0.3, 0.6], "MAE": [2.0, 2.0, 3.8, 2.0, 1.0, 1.2]})
    summary = robustness_summary(table).set_index("model")
    assert summary.loc["m", "MAE_rauc_noise_v_mean"] == pytest.approx(1.15)
    assert summary.loc["m", "MAE_rauc_noise_a_n"] == 0
    assert math.isnan(summary.loc["m", "MAE_rauc_noise_a_mean"])


# --- ablations ----------------------------------------------------------------------------------

# The variants whose name does not spell their switch (`[-x]` is `use_x`, `[-L_X]` is `lambda_x`).
IRREGULAR = {("mgrl", "[-adaptive]"): ("adaptive_contribution", False),
             ("fdrl", "[coarse]"): ("granularity", "coarse")}


@pytest.mark.parametrize("model, kind", [(m, k) for m in ("iidaf", "aofl", "mgrl", "fdrl")
                                         for k in ("modules", "losses")])
def test_each_variant_switches_off_exactly_the_part_it_names(model, kind):
    config = registry.config_for(model, "mosi")
    found = ablations.variants(model, kind)
    assert next(iter(found.items())) == (model, {})  # the full model first, unchanged
    for name, overrides in list(found.items())[1:]:
        suffix = name[len(model):]
        if (model, suffix) in IRREGULAR:
            key, value = IRREGULAR[model, suffix]
        elif suffix.startswith("[-L_"):
            key, value = "lambda_" + suffix[4:-1].lower(), 0
        else:
            key, value = "use_" + suffix[2:-1], False
        assert overrides == {key: value}, name
        assert key in config and config[key] != value, f"{name} changes nothing"


def test_the_modality_variants_are_every_proper_subset_once_and_the_full_model_all_three():
    found = ablations.variants("iidaf", "modalities")
    assert found.pop("iidaf") == {"modalities": "tav"}
    for name, overrides in found.items():
        assert overrides == {"modalities": name[len("iidaf["):-1].replace("+", "")}, name
    assert sorted(o["modalities"] for o in found.values()) == sorted(
        ["t", "a", "v", "ta", "tv", "av"])


# --- complexity ---------------------------------------------------------------------------------


class _Probe(torch.nn.Module):
    """Stands in for the model: one linear map per modality, so FLOPs and parameters are known,
    and it records the shapes `measure` feeds it."""

    def __init__(self):
        super().__init__()
        self.text, self.audio, self.vision = (torch.nn.Linear(768, 2), torch.nn.Linear(5, 1),
                                              torch.nn.Linear(20, 1))
        self.shapes = []

    def forward(self, text, audio, vision):
        self.shapes.append((tuple(text.shape), tuple(audio.shape), tuple(vision.shape)))
        return self.text(text).sum() + self.audio(audio).sum() + self.vision(vision).sum()


def test_measure_counts_parameters_flops_and_latency_at_mosis_official_shapes(monkeypatch):
    probe = _Probe()
    monkeypatch.setattr(registry, "build_model", lambda args: probe)
    clock = iter([0.0, 2.0])  # the latency loop starts at 0 s and ends at 2 s
    monkeypatch.setattr(complexity, "time",
                        types.SimpleNamespace(perf_counter=lambda: next(clock)))
    result = complexity.measure("iidaf", "mosi", latency_runs=4)
    # MOSI's unaligned file: text 50 × BERT width, audio 375 × 5 (COVAREP), vision 500 × 20.
    assert probe.shapes[0] == ((1, 50, 768), (1, 375, 5), (1, 500, 20))
    assert result["parameters"] == (768 * 2 + 2) + (5 + 1) + (20 + 1)
    # 2 FLOPs per multiply-add: 2 · steps · in · out per linear map.
    assert result["flops"] == 2 * (50 * 768 * 2 + 375 * 5 * 1 + 500 * 20 * 1)
    assert result["latency_ms"] == pytest.approx(2.0 / 4 * 1000)


# --- interpretability ---------------------------------------------------------------------------


def test_sentiment_classes_keep_zero_apart():
    labels = np.array([-1.2, 0.0, 2.0, -0.2, 0.0])
    assert interpret.sentiment_classes(labels, "regression").tolist() == [
        "negative", "neutral", "positive", "negative", "neutral"]
    assert interpret.sentiment_classes(np.array([0, 2]), "classification").tolist() == [
        "class 0", "class 2"]


def test_drops_are_relative_to_the_size_of_a_negative_full_score():
    """A full prediction anti-correlated with the labels (Corr −1) and a specific-only one that
    follows them (Corr +1): the specific branch is better, a drop of (−1 − 1) / |−1| = −2; its
    MAE 0 against the full 2·mean|y| is a drop of −1."""
    labels = np.linspace(-3, 3, 20, dtype=np.float32).reshape(-1, 1)
    predicted = {"labels": labels, "M": -labels, "M_shared": -labels, "M_specific": labels}
    table = interpret.importance_table(
        predicted, {"train_mode": "regression", "dataset_name": "mosi"}).set_index("prediction")
    assert table.loc["full", "Corr"] == pytest.approx(-1.0)
    assert table.loc["specific_only", "Corr_drop"] == pytest.approx(-2.0)
    assert table.loc["specific_only", "MAE_drop"] == pytest.approx(-1.0)
    assert table.loc["shared_only", "Corr_drop"] == pytest.approx(0.0)


def planted(samples: int = 12) -> dict:
    """Two modalities' shared r and specific u; the label is r_t[0] + u_t[0]: r alone explains
    about half of its variance, [u, r] all of it."""
    rng = np.random.default_rng(0)
    features = {f"{part}_{m}": rng.normal(size=(samples, 3)).astype(np.float32)
                for part in ("shared", "specific") for m in "ta"}
    labels = features["shared_t"][:, :1] + features["specific_t"][:, :1]
    return {"modalities": ["t", "a"], "labels": labels, **features}


def test_the_label_r2_rows_read_u_and_r_together_and_subtract_r():
    predicted = planted(60)
    table = interpret.disentanglement_table(predicted, batch=60).set_index(
        ["measure", "modality"])["value"]
    both = table["label_r2_specific_and_shared", "t"]
    shared = table["label_r2_shared", "t"]
    assert both > 0.95  # a linear function of [u, r]: R² near 1 (u alone would give ~0.5)
    assert shared < 0.7
    assert table["label_r2_specific_beyond_shared", "t"] == pytest.approx(both - shared)
    assert table["label_r2_specific_beyond_shared", "t"] > 0.3


def test_report_measures_hsic_over_the_runs_batches(monkeypatch, tmp_path):
    """12 test samples in batches of 4 (the run's batch size): HSIC is the mean of the three
    batches' values, as the losses saw them; the gate figure gets the sign classes."""
    predicted = planted(12)
    labels = predicted["labels"]
    gamma = np.full((12, 1), 0.5, dtype=np.float32)
    predicted.update(M=labels * 0.5, M_shared=labels, M_specific=-labels, gamma=gamma)
    seen = {}
    monkeypatch.setattr(report, "collect", lambda run: predicted)
    monkeypatch.setattr(report, "tsne_figure", lambda *a, **k: 12)
    monkeypatch.setattr(report, "gates_figure",
                        lambda p, classes, path: seen.update(classes=classes.tolist()))
    args = {"model_name": "iidaf", "dataset_name": "mosi", "train_mode": "regression",
            "batch_size": 4, "seed": 1}
    run = types.SimpleNamespace(args=args, other_features=False, checkpoint="c.pth",
                                feature_file="f.pkl")
    paths = report.analyse(run, tmp_path, command="cmd", source="row")
    table = pd.read_csv(paths["disentanglement.csv"])
    hsic_rows = table[table["measure"] == "hsic_specific_shared"].set_index("modality")["value"]
    for m in "ta":
        shared, specific = (torch.from_numpy(predicted[f"{part}_{m}"])
                            for part in ("shared", "specific"))
        expected = np.mean([hsic(shared[s:s + 4], specific[s:s + 4]).item() for s in (0, 4, 8)])
        assert hsic_rows[m] == pytest.approx(expected, rel=1e-6)
    assert seen["classes"] == np.where(labels.reshape(-1) < 0, "negative", "positive").tolist()


def test_markdown_cells_have_four_decimals_and_nan_is_empty():
    table = pd.DataFrame({"measure": ["x"], "value": [0.123456], "reference": [math.nan]})
    assert report.markdown_table(table).splitlines()[-1] == "| x | 0.1235 |  |"


def test_tsne_embeds_shared_then_specific_of_one_random_subset(monkeypatch, tmp_path):
    """Each block of t-SNE's input is one (part, modality)'s features of the same samples."""
    predicted = {"modalities": ["t", "a"], "labels": np.zeros(12)}
    for code, key in enumerate(("shared_t", "shared_a", "specific_t", "specific_a")):
        # column 0 says which block, column 1 which sample
        predicted[key] = np.stack([np.full(12, code), np.arange(12)], axis=1).astype(np.float32)
    fed = []

    class Recorder:
        def __init__(self, **options):
            pass

        def fit_transform(self, points):
            fed.append(points)
            return np.zeros((len(points), 2))

    monkeypatch.setattr(interpret, "TSNE", Recorder)
    assert interpret.tsne_figure(predicted, tmp_path / "t.png", max_samples=5) == 5
    blocks = fed[0].reshape(4, 5, 2)
    assert blocks[:, :, 0].tolist() == [[code] * 5 for code in range(4)]
    chosen = blocks[0, :, 1]
    assert all((block[:, 1] == chosen).all() for block in blocks)
    assert len(set(chosen.tolist())) == 5 and chosen.max() >= 5  # not just the first rows


# --- checkpoint ---------------------------------------------------------------------------------


def test_the_newest_seeds_row_of_a_checkpoint_wins_and_a_moved_one_is_found_by_its_seed(tmp_path):
    def row(name, seed, mae, checkpoint):
        config = {"model_name": "iidaf", "model_save_path": checkpoint}
        return {"model": "iidaf", "name": name, "dataset": "mosi", "seed": seed, "MAE": mae,
                "checkpoint": checkpoint, "config": json.dumps(config)}

    here = str(tmp_path / "iidaf[-mic]-mosi-seed1.pth")
    gone = "/nowhere/models/iidaf[-mic]-mosi-seed{}.pth"
    seeds = tmp_path / "iidaf[-mic]-mosi-seeds.csv"
    pd.DataFrame([row("iidaf[-mic]", 1, 0.9, here), row("iidaf[-mic]", 1, 0.8, here),
                  row("iidaf[-mic]", 1, 0.7, gone.format(1)),
                  row("iidaf[-mic]", 1, 0.6, gone.format(1)),
                  row("iidaf[-mic]", 2, 0.5, gone.format(2))]).to_csv(seeds, index=False)
    assert find_seed_row(here, seeds_csv=seeds)["MAE"] == 0.8  # by path, the later row
    moved = tmp_path / "elsewhere" / "iidaf[-mic]-mosi-seed1.pth"
    pd.DataFrame([r for r in pd.read_csv(seeds).to_dict("records") if r["checkpoint"] != here]
                 ).to_csv(seeds, index=False)
    assert find_seed_row(moved, seeds_csv=seeds)["MAE"] == 0.6  # by name and seed, the later
