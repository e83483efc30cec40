"""Robustness to missing and noisy modalities: the corruption itself (what is dropped, what is
kept, how much noise), the same corrupted inputs for every model, level 0 = the clean score, the
files and figure of `run_robustness` for iidaf and an MMSA baseline, and the summary's areas.
"""
from __future__ import annotations

import json

import MMSA
import numpy as np
import pandas as pd
import pytest
import torch

from mmsa_iidaf.analysis import load_run, row_checkpoint
from mmsa_iidaf.analysis.checkpoint import in_order
from mmsa_iidaf.experiments.robustness import (Corruption, CorruptedLoader, real_steps,
                                               robustness_summary, run_robustness,
                                               sequence_loaders, settings_for, train_std)
from support import SMALL_IIDAF, close_mmsa_handlers, run_folders

SMALL = {**SMALL_IIDAF, "max_epochs": 1, "early_stop": 1}
LEVELS = (0.0, 0.5, 0.9)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rows(tiny_mosi, tmp_path_factory) -> pd.DataFrame:
    """Seeds rows of iidaf (batch 16) and lf_dnn (batch 8, so batches differ) on the tiny file."""
    root = tmp_path_factory.mktemp("robust")
    dirs = run_folders(root)
    try:
        MMSA.MMSA_run("iidaf", "mosi", config=SMALL, custom_feature=str(tiny_mosi), seeds=[1],
                      **dirs)
        MMSA.MMSA_run("lf_dnn", "mosi", config={"max_epochs": 1, "early_stop": 1,
                                                "batch_size": 8},
                      custom_feature=str(tiny_mosi), seeds=[1, 2], **dirs)
    finally:
        close_mmsa_handlers()
    return pd.concat([pd.read_csv(dirs["res_save_dir"] / f"{m}-mosi-seeds.csv")
                      for m in ("iidaf", "lf_dnn")], ignore_index=True)


@pytest.fixture(scope="module")
def evaluated(rows, tmp_path_factory) -> dict:
    res = tmp_path_factory.mktemp("robustness")
    missing = run_robustness(rows, "missing", res, levels=LEVELS, corruption_seed=3)
    noise = run_robustness(rows, "noise", res, levels=LEVELS, corruption_seed=3)
    return {"res": res, "missing": missing, "noise": noise}


def loaded(row):
    return load_run(json.loads(row["config"]), row_checkpoint(row))


# --- the corruption -----------------------------------------------------------------------------

def batch_of(audio, lengths, text=None) -> dict:
    batch = {"index": torch.arange(audio.shape[0]), "audio": audio,
             "audio_lengths": torch.as_tensor(lengths)}
    if text is not None:
        batch["text"] = text
    return batch


def test_missing_zeroes_real_steps_only_and_keeps_lengths():
    audio = torch.ones(200, 10, 3)
    lengths = torch.full((200,), 6)
    corrupted = Corruption("missing", 0.3, "a", seed=0)(batch_of(audio, lengths))
    dropped = corrupted["audio"].eq(0).all(dim=-1)
    assert not dropped[:, 6:].any(), "padding is not a time step"
    assert corrupted["audio"][:, 6:].eq(1).all()
    assert dropped[:, :6].float().mean().item() == pytest.approx(0.3, abs=0.05)
    assert torch.equal(corrupted["audio_lengths"], lengths)
    assert audio.eq(1).all(), "the loader's batch is not changed in place"


def test_missing_at_sequence_length_one_zeroes_whole_clips():
    clips = torch.ones(400, 1, 5)
    corrupted = Corruption("missing", 0.4, "a", seed=0)(batch_of(clips, torch.ones(400)))
    zeroed = corrupted["audio"].eq(0).all(dim=(1, 2))
    assert zeroed.float().mean().item() == pytest.approx(0.4, abs=0.06)
    assert corrupted["audio"][~zeroed].eq(1).all()


def test_missing_tokens_are_padded_and_masked_but_cls_and_sep_stay():
    ids = torch.arange(101, 113, dtype=torch.float32).repeat(50, 1)
    mask = torch.ones(50, 12)
    mask[:, 8:] = 0
    ids[:, 8:] = 0
    text = torch.stack([ids, mask, torch.zeros_like(ids)], dim=1)
    batch = batch_of(torch.ones(50, 1, 1), torch.ones(50), text)
    corrupted = Corruption("missing", 0.9, "t", seed=0, tokens=True)(batch)["text"]
    new_ids, new_mask = corrupted[:, 0], corrupted[:, 1]
    assert torch.equal(new_ids[:, [0, 7]], ids[:, [0, 7]]) and new_mask[:, [0, 7]].eq(1).all()
    dropped = new_mask[:, 1:7].eq(0)
    assert dropped.float().mean() > 0.7
    assert new_ids[:, 1:7][dropped].eq(0).all() and torch.equal(new_ids[:, 1:7][~dropped],
                                                                ids[:, 1:7][~dropped])
    assert new_mask[:, 8:].eq(0).all()
    assert settings_for("tav", "noise", tokens=True) == [("a", "a"), ("v", "v"), ("all", "av")]
    assert settings_for("ta", "missing", tokens=True) == [("t", "t"), ("a", "a"), ("all", "ta")]


def test_noise_scales_with_the_train_std_on_real_steps():
    audio = torch.zeros(300, 4, 2)
    lengths = torch.full((300,), 3)
    std = {"a": np.array([2.0, 0.5])}
    corrupted = Corruption("noise", 0.5, "a", seed=0, std=std)(batch_of(audio, lengths))
    real = corrupted["audio"][:, :3].reshape(-1, 2)
    assert real.std(dim=0).numpy() == pytest.approx([1.0, 0.25], rel=0.1)
    assert corrupted["audio"][:, 3:].eq(0).all()


def test_train_std_reads_real_steps_only():
    class Split:
        audio = np.concatenate([np.random.default_rng(0).normal(0, 2, (500, 3, 2)),
                                np.full((500, 2, 2), 50.0)], axis=1).astype(np.float32)
        audio_lengths = np.full(500, 3)

    assert train_std(Split(), "a", chunk=64) == pytest.approx([2.0, 2.0], rel=0.05)
    steps = real_steps(torch.tensor([[[0.0], [1.0], [0.0]]]))
    assert steps.tolist() == [[False, True, False]]


def test_level_zero_changes_nothing_and_all_is_the_union():
    audio = torch.randn(20, 5, 3)
    text = torch.randn(20, 4, 6)
    batch = {"index": torch.arange(20), "audio": audio, "audio_lengths": torch.full((20,), 5),
             "text": text}
    std = {"a": np.ones(3), "t": np.ones(6)}
    for kind in ("missing", "noise"):
        clean = Corruption(kind, 0.0, "ta", seed=1, std=std)(batch)
        assert torch.equal(clean["audio"], audio) and torch.equal(clean["text"], text)
        both = Corruption(kind, 0.5, "ta", seed=1, std=std)(batch)
        alone_a = Corruption(kind, 0.5, "a", seed=1, std=std)(batch)
        alone_t = Corruption(kind, 0.5, "t", seed=1, std=std)(batch)
        assert torch.equal(both["audio"], alone_a["audio"])
        assert torch.equal(both["text"], alone_t["text"])
        assert torch.equal(alone_a["text"], text)


# --- on trained checkpoints ----------------------------------------------------------------------

def test_every_model_sees_the_same_corrupted_inputs(rows):
    """iidaf's loader (batch 16) and lf_dnn's (batch 8, time-averaged audio and vision) give,
    sample by sample, the same corrupted sequences under the same corruption seed, and other
    ones under another seed."""
    runs = [loaded(rows[rows["model"] == name].iloc[0]) for name in ("iidaf", "lf_dnn")]
    assert runs[0].loaders["test"].batch_size != runs[1].loaders["test"].batch_size
    assert runs[1].args["need_normalized"] and runs[1].loaders["test"].dataset.audio.shape[1] == 1

    def inputs(run, kind, seed):
        loaders = sequence_loaders(run)
        std = {m: train_std(loaders["train"].dataset, m) for m in "tav"}
        loader = CorruptedLoader(in_order(loaders["test"]),
                                 Corruption(kind, 0.5, "tav", seed, std))
        batches = list(loader)
        assert len(batches) == len(loader)
        return {key: torch.cat([b[key] for b in batches]) for key in ("text", "audio", "vision")}

    for kind in ("missing", "noise"):
        first, second = inputs(runs[0], kind, 7), inputs(runs[1], kind, 7)
        for key in first:
            assert torch.equal(first[key], second[key]), (kind, key)
        other = inputs(runs[1], kind, 8)
        assert not torch.equal(first["audio"], other["audio"])


def test_run_robustness_writes_the_table_and_the_figure(evaluated, rows):
    res = evaluated["res"]
    table = pd.read_csv(res / "robustness-mosi.csv")
    leading = ["model", "seed", "dataset", "modality", "kind", "level", "corrupted",
               "corruption_seed"]
    assert list(table.columns[:len(leading)]) == leading
    assert {"MAE", "Corr", "Has0_acc_2", "Mult_acc_7"} <= set(table.columns)
    # Both kinds kept: the second call added its rows to the first one's.
    per_run = 4 * len(LEVELS)  # t, a, v and all, at each level
    assert len(table) == 2 * per_run * len(rows)
    assert set(table["modality"]) == {"t", "a", "v", "all"}
    assert table.groupby(["model", "seed", "kind"]).size().eq(per_run).all()
    assert len(evaluated["missing"]) == len(evaluated["noise"]) == per_run * len(rows)
    figure = (res / "robustness-mosi.png").read_bytes()
    assert figure.startswith(PNG) and len(figure) > 20_000

    # Rerunning one kind replaces that kind's rows, and only those.
    run_robustness(rows[rows["model"] == "iidaf"], "missing", res, levels=(0.0, 0.5),
                   corruption_seed=3)
    again = pd.read_csv(res / "robustness-mosi.csv")
    iidaf_missing = again[(again["model"] == "iidaf") & (again["kind"] == "missing")]
    assert sorted(set(iidaf_missing["level"])) == [0.0, 0.5]
    assert len(again) == len(table) - 4


def test_a_failing_checkpoint_keeps_the_others_rows_and_the_same_call_resumes(
        rows, tmp_path, monkeypatch):
    from mmsa_iidaf.experiments import robustness

    real_load = robustness.load_run

    def load_but_iidaf(config, checkpoint, **options):
        if config["model_name"] == "iidaf":
            raise AttributeError("'IIDAF' object has no attribute 'model'")
        return real_load(config, checkpoint, **options)

    with monkeypatch.context() as patch:
        patch.setattr(robustness, "load_run", load_but_iidaf)
        with pytest.raises(robustness.RobustnessFailed) as failed:
            run_robustness(rows, "missing", tmp_path, levels=(0.0, 0.5), corruption_seed=3)
    assert failed.value.failures == ["robustness (missing) of iidaf seed 1: AttributeError: "
                                     "'IIDAF' object has no attribute 'model'"]
    # iidaf is the first row: the lf_dnn seeds after it are scored and written all the same.
    written = pd.read_csv(tmp_path / "robustness-mosi.csv")
    assert set(written["model"]) == {"lf_dnn"} and set(written["seed"]) == {1, 2}
    assert failed.value.table.equals(written)
    assert (tmp_path / "robustness-mosi.png").is_file()

    # The same call again scores only what is missing (iidaf): lf_dnn's rows are read back.
    scored = []
    real_evaluate = robustness.evaluate_row
    with monkeypatch.context() as patch:
        patch.setattr(robustness, "evaluate_row",
                      lambda row, *args: scored.append(row["model"]) or real_evaluate(row, *args))
        table = run_robustness(rows, "missing", tmp_path, levels=(0.0, 0.5), corruption_seed=3)
    assert scored == ["iidaf"]
    assert len(table) == len(pd.read_csv(tmp_path / "robustness-mosi.csv")) == 3 * 4 * 2
    # Other levels are another evaluation: scored again, and they replace the earlier rows.
    scored.clear()
    with monkeypatch.context() as patch:
        patch.setattr(robustness, "evaluate_row",
                      lambda row, *args: scored.append(row["model"]) or real_evaluate(row, *args))
        run_robustness(rows, "missing", tmp_path, levels=(0.0, 0.9), corruption_seed=3)
    assert scored == ["iidaf", "lf_dnn", "lf_dnn"]


def test_level_zero_reproduces_the_clean_scores(evaluated, rows):
    table = pd.concat([evaluated["missing"], evaluated["noise"]])
    clean = table[table["level"] == 0]
    for (model, seed), part in clean.groupby(["model", "seed"]):
        row = rows[(rows["model"] == model) & (rows["seed"] == seed)].iloc[0]
        run = loaded(row)
        scores = run.trainer.do_test(run.model, in_order(run.loaders["test"]), mode="TEST")
        for metric, value in scores.items():
            assert (part[metric] == value).all(), (model, seed, metric)
        # ... which are the run's own test scores (MMSA's loader shuffles: summation order).
        for metric in ("MAE", "Corr", "Has0_acc_2", "Mult_acc_7"):
            assert part[metric].iloc[0] == pytest.approx(row[metric], abs=1e-4)


def test_the_summary_is_the_relative_area_under_each_curve(evaluated):
    table = pd.DataFrame({
        "model": ["m"] * 6, "seed": [1, 1, 1, 2, 2, 2], "kind": ["missing"] * 6,
        "modality": ["a"] * 6, "level": [0.0, 0.5, 1.0] * 2,
        "MAE": [1.0, 1.5, 2.0, 2.0, 2.0, 2.0]})
    summary = robustness_summary(table).set_index("model")
    # seed 1: trapezoid of 1, 1.5, 2 over [0, 1] = 1.5; seed 2: flat, 1.0.
    assert summary.loc["m", "MAE_rauc_missing_a_mean"] == pytest.approx(1.25)
    assert summary.loc["m", "MAE_rauc_missing_a_std"] == pytest.approx(np.std([1.5, 1.0], ddof=1))
    assert summary.loc["m", "MAE_rauc_missing_a_n"] == 2

    real = robustness_summary(pd.concat([evaluated["missing"], evaluated["noise"]]))
    assert sorted(real["model"]) == ["iidaf", "lf_dnn"]
    assert {f"MAE_rauc_{k}_{s}_mean" for k in ("missing", "noise") for s in ("t", "a", "v", "all")
            } <= set(real.columns)


def test_a_checkpoint_rewritten_by_another_run_is_refused(rows, tmp_path):
    """Every run of a name, dataset and seed writes the same checkpoint file, whatever its
    results folder: a row whose file another run (same architecture) rewrote is refused, not
    scored with the other run's weights."""
    import shutil

    from mmsa_iidaf.analysis.checkpoint import CheckpointMismatch
    from mmsa_iidaf.experiments.robustness import evaluate_row
    from mmsa_iidaf.runs import file_sha256

    baseline = rows[rows["model"] == "lf_dnn"].set_index("seed")
    own, other = row_checkpoint(baseline.loc[1]), row_checkpoint(baseline.loc[2])
    assert baseline.loc[1, "checkpoint_sha256"] == file_sha256(own)
    row = baseline.loc[1].copy()
    row["seed"] = 1
    row["checkpoint"] = str(tmp_path / "lf_dnn-mosi-seed1.pth")
    shutil.copyfile(other, row["checkpoint"])  # seed 2's weights where seed 1's were
    with pytest.raises(CheckpointMismatch, match="is not the one its seeds row recorded"):
        evaluate_row(row, "missing", (0.0,), corruption_seed=0)
