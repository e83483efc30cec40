"""Known answers for run.py's plumbing, the comparison's planning and resume, the local and Ray
executors' bookkeeping and the Optuna tuner's choices (a mutation review's gaps). Nothing here
trains but one tiny lf_dnn (the tuner's trial); the rest replaces training by fakes."""
from __future__ import annotations

import json
import types
from pathlib import Path

import pandas as pd
import pytest

import mmsa_iidaf
from mmsa_iidaf import cli, compat, registry
from mmsa_iidaf.errors import ConfigError, FeatureFileError, TrainingDiverged
from mmsa_iidaf.experiments import compare, executors
from support import run_cli_in_process


def folders(root: Path) -> list:
    return ["--res-save-dir", root / "results", "--model-save-dir", root / "models",
            "--log-dir", root / "logs"]


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and lines[0].startswith("error: ")
    return lines[0]


# ------------------------------------------------------------------ run.py: what reaches where

def test_a_comparison_gets_every_flag(tiny_mosi, tmp_path, monkeypatch, capsys):
    """Each flag of a comparison reaches compare() under its own keyword (a per-modality file
    dropped on the way would be trained without, and fingerprinted without)."""
    seen = {}
    monkeypatch.setattr(compare, "compare", lambda *args, **kwargs: seen.update(
        args=args, **kwargs))
    done = run_cli_in_process(
        ["-m", "lf_dnn", "-m", "tfn", "-d", "mosi", "-f", tiny_mosi, "-Ft", tiny_mosi,
         "-Fa", tiny_mosi, "-Fv", tiny_mosi, "-s", "3", "-s", "1", "-n", "2", "-v", "0",
         "-g", "5", "--set", "early_stop=1", "--robustness", "noise", *folders(tmp_path)],
        monkeypatch, capsys)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen["args"] == (["lf_dnn", "tfn"], "mosi", [3, 1])
    assert {key: seen[key] for key in ("custom_feature", "feature_T", "feature_A",
                                       "feature_V")} == {key: str(tiny_mosi) for key in (
        "custom_feature", "feature_T", "feature_A", "feature_V")}
    assert seen["model_configs"] == {"lf_dnn": {"early_stop": 1}, "tfn": {"early_stop": 1}}
    assert (seen["num_workers"], seen["verbose_level"], seen["gpu_ids"]) == (2, 0, [5])
    assert seen["robustness"] == ["noise"] and seen["ablation"] is None
    assert seen["res_save_dir"] == str(tmp_path / "results")
    assert seen["model_save_dir"] == str(tmp_path / "models")
    assert seen["log_dir"] == str(tmp_path / "logs")


def test_a_one_model_run_gets_its_seeds_once_in_order_and_its_flags(tiny_mosi, tmp_path,
                                                                     monkeypatch, capsys):
    """-s repeats are kept in order, a repeated seed trains once; -n reaches MMSA_run; -t is
    MMSA's tuning (no resume: its seeds as given)."""
    calls = []
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", lambda *args, **kwargs: calls.append(
        (args, kwargs)))
    base = ["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-n", "3", *folders(tmp_path)]
    assert run_cli_in_process(base + ["-s", "2", "-s", "1", "-s", "2"], monkeypatch,
                              capsys).returncode == 0
    (args, kwargs), = calls
    assert args == ("lf_dnn", "mosi") and kwargs["seeds"] == [2, 1]
    assert kwargs["num_workers"] == 3 and kwargs["is_tune"] is False
    assert run_cli_in_process(base + ["-t", "-tt", "4", "-s", "7", "-s", "7"], monkeypatch,
                              capsys).returncode == 0
    assert calls[1][1]["is_tune"] is True and calls[1][1]["tune_times"] == 4
    assert calls[1][1]["seeds"] == [7, 7]  # as given: MMSA's tuning uses the first


def test_tuning_without_seeds_tunes_with_mmsas_default_seeds(tiny_mosi, tmp_path, monkeypatch,
                                                             capsys):
    """MMSA's -t without -s tunes with MMSA's default seeds (it must not exit 0 untrained)."""
    calls = []
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", lambda *args, **kwargs: calls.append(kwargs))
    done = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-t", "-tt", "2",
                               *folders(tmp_path)], monkeypatch, capsys)
    assert done.returncode == 0 and len(calls) == 1 and calls[0]["is_tune"] is True
    assert calls[0]["seeds"] == [1111, 1112, 1113, 1114, 1115]


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["training", "hashing the feature file"])
def test_ctrl_c_in_a_one_model_run_is_one_line_and_130(where, tiny_mosi, tmp_path, monkeypatch,
                                                       capsys):
    """Finished seeds are already in the seeds file: say so, with no traceback, whether the
    run was training or still checking (hashing a multi-GB file takes seconds)."""
    from mmsa_iidaf import runs

    monkeypatch.setattr(*((mmsa_iidaf, "MMSA_run", interrupted) if where == "training"
                          else (runs, "file_sha256", interrupted)))
    done = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-s", "1",
                               *folders(tmp_path)], monkeypatch, capsys)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 130 and len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("interrupted: finished seeds stay in")


def test_ctrl_c_in_mmsas_tuning_names_its_results(tiny_mosi, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", interrupted)
    done = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-t",
                               *folders(tmp_path)], monkeypatch, capsys)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"interrupted: MMSA's tuning results so far are in "
                                   f"{tmp_path / 'results'}/tune")


def test_a_rerun_with_every_seed_finished_trains_nothing_and_exits_0(tiny_mosi, tmp_path,
                                                                    monkeypatch, capsys):
    """Resuming a finished run is a success: exit 0, the seed named as skipped."""
    results = tmp_path / "results"
    (entry,) = compare.plan(["lf_dnn"], "mosi", model_configs={"lf_dnn": {}},
                            res_save_dir=results, custom_feature=str(tiny_mosi))
    results.mkdir()
    pd.DataFrame({"seed": [4], "config_sha256": [entry.fingerprint],
                  "feature_sha256": [entry.feature_sha256]}).to_csv(
        results / "lf_dnn-mosi-seeds.csv", index=False)
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", lambda *a, **k: pytest.fail("trained again"))
    done = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-s", "4",
                               *folders(tmp_path)], monkeypatch, capsys)
    assert done.returncode == 0 and "lf_dnn: seed(s) 4 already in" in done.stdout


def test_one_model_named_twice_is_a_one_model_run(tiny_mosi, tmp_path, monkeypatch, capsys):
    """-m lf_dnn -m LF_DNN names one model: its ordinary run, not a comparison of one row."""
    calls = []
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setattr(compare, "compare", lambda *a, **k: pytest.fail("compared"))
    assert run_cli_in_process(["-m", "lf_dnn", "-m", "LF_DNN", "-d", "mosi", "-f", tiny_mosi,
                               "-s", "1", *folders(tmp_path)], monkeypatch,
                              capsys).returncode == 0
    assert calls == [("lf_dnn", "mosi")]


def test_the_ray_flags_reach_the_ray_executor(tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra")
    parser = cli.build_parser(registry.model_names(), registry.dataset_names())
    options = parser.parse_args(["--executor", "ray", "--ray-address", "auto", "--gpus-per-run",
                                 "0.5", "--cpus-per-run", "3", "--storage", str(tmp_path)])
    executor = cli._executor(options)
    assert isinstance(executor, executors.RayExecutor)
    assert (executor.address, executor.gpus_per_run, executor.cpus_per_run, executor.storage) == (
        "auto", 0.5, 3, str(tmp_path))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x81 not text", b"name,MAE\n"],
                         ids=["binary", "no seed column"])
def test_a_seeds_file_that_is_none_is_one_line_and_kept(content, tiny_mosi, tmp_path,
                                                        monkeypatch, capsys):
    """A file in the seeds file's place that is no seeds file: exit 2, one line, untouched."""
    results = tmp_path / "results"
    results.mkdir()
    kept = results / "lf_dnn-mosi-seeds.csv"
    kept.write_bytes(content)
    monkeypatch.setattr(mmsa_iidaf, "MMSA_run", lambda *a, **k: pytest.fail("training started"))
    for models in (["-m", "lf_dnn"], ["-m", "lf_dnn", "-m", "tfn"]):  # one run, a comparison
        line = one_error_line(run_cli_in_process(
            [*models, "-d", "mosi", "-f", tiny_mosi, "-s", "1", *folders(tmp_path)],
            monkeypatch, capsys))
        assert str(kept) in line and "--res-save-dir" in line
        assert kept.read_bytes() == content


def test_a_negative_gpus_per_run_is_one_line(tiny_mosi, tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray", reason="Ray is an optional extra")
    with pytest.raises(ConfigError, match="--gpus-per-run -0.5: give 0 or more"):
        executors.RayExecutor(gpus_per_run=-0.5)
    line = one_error_line(run_cli_in_process(
        ["-m", "lf_dnn", "-m", "tfn", "-d", "mosi", "-f", tiny_mosi, "--executor", "ray",
         "--gpus-per-run", "-1", *folders(tmp_path)], monkeypatch, capsys))
    assert "--gpus-per-run -1" in line


# ------------------------------------------------------------------ compare: the plan

def test_models_reading_different_feature_files_are_refused(tmp_path):
    """Without -f each model reads its config's featurePath: two files cannot make one table."""
    from mmsa_iidaf.data.synthetic import write_dataset

    paths = [write_dataset(tmp_path / f"{name}.pkl", preset="mosi", n_train=8, n_valid=4,
                           n_test=4, seq_lens=(4, 4, 4), seed=seed)
             for seed, name in enumerate(("a", "b"))]
    widths = {"feature_dims": [48, 5, 20]}
    configs = {"lf_dnn": {**widths, "featurePath": str(paths[0])},
               "tfn": {**widths, "featurePath": str(paths[1])}}
    with pytest.raises(FeatureFileError, match="read different feature files"):
        compare.plan(["lf_dnn", "tfn"], "mosi", model_configs=configs,
                     res_save_dir=tmp_path / "results")
    configs["tfn"]["featurePath"] = str(paths[0])
    assert len(compare.plan(["lf_dnn", "tfn"], "mosi", model_configs=configs,
                            res_save_dir=tmp_path / "results")) == 2


def test_a_cell_defined_on_every_seed_carries_no_seed_count():
    """'(k/n seeds)' marks a metric defined on fewer seeds than the model finished; a full
    cell stays plain, and the footnote appears only when some cell is marked."""
    table = pd.DataFrame({"model": ["a", "b"], "n_seeds": [3, 3],
                          "text_input": ["precomputed `text`"] * 2,
                          "Corr_mean": [0.71, 0.5], "Corr_std": [0.01, 0.02],
                          "Corr_p": [float("nan"), 0.5], "Corr_n": [3, 3]})
    entry = compare.Entry("a", "a", {}, "", Path("f.pkl"), "0" * 64)
    text = compare.markdown(table, ["Corr"], dataset="mosi", command="cmd", entry=entry,
                            seeds=[1, 2, 3])
    assert "| `a` | 3 | precomputed `text` | **0.7100 ± 0.0100** |" in text
    assert "| `b` | 3 | precomputed `text` | 0.5000 ± 0.0200 |" in text
    assert "seeds)" not in text and "undefined when" not in text


class RecordingExecutor:
    """Trains nothing: records what the comparison asked for."""

    def __init__(self):
        self.pending = None

    def run(self, pending, grid, advance):
        self.pending = [(entry.name, list(seeds)) for entry, seeds in pending]
        return executors.Outcome()


def test_a_repeated_seed_is_one_run_and_a_finished_one_none(tiny_mosi, tmp_path, capsys):
    results = tmp_path / "results"
    common = {"custom_feature": str(tiny_mosi), "res_save_dir": results}
    lf_dnn, _ = compare.plan(["lf_dnn", "tfn"], "mosi", **common)
    results.mkdir()
    pd.DataFrame({"seed": [3], "config_sha256": [lf_dnn.fingerprint],
                  "feature_sha256": [lf_dnn.feature_sha256]}).to_csv(
        results / "lf_dnn-mosi-seeds.csv", index=False)
    recorder = RecordingExecutor()
    table = compare.compare(["lf_dnn", "tfn"], "mosi", [3, 3, 1], progress=False,
                            model_save_dir=tmp_path / "models", log_dir=tmp_path / "logs",
                            executor=recorder, **common)
    assert recorder.pending == [("lf_dnn", [1]), ("tfn", [3, 1])]
    assert "1 of 4 (model, seed) runs already in" in capsys.readouterr().out
    assert table["n_seeds"].tolist() == [1, 0]
    assert "Seeds 3, 1;" in (results / "compare-mosi.md").read_text()


# ------------------------------------------------------------------ the local executor

def fake_mmsa_run(fails: set, error=TrainingDiverged, message="loss is nan"):
    """MMSA_run's seed loop without training: each seed runs the `after` hooks added since
    (the executor's), or raises `error` (TrainingDiverged, as the `tested` hook does) when
    (model, seed) is in `fails`."""
    plugin_hooks = list(compat.RUN_HOOKS["after"])

    def run(model, dataset, *, seeds, config=None, **kwargs):
        for seed in seeds:
            if (model, seed) in fails:
                raise error(f"seed {seed}: {message}")
            args = {"model_name": model, "seed": seed, **(config or {})}
            for hook in [h for h in compat.RUN_HOOKS["after"] if h not in plugin_hooks]:
                hook(args, {}, False, None)

    return run


def test_a_diverged_seed_after_another_models_seeds_costs_only_itself(monkeypatch):
    """The diverged seed is the first of its own row's not finished: the earlier row's
    finished seeds (the same numbers) must not count (StopIteration, a traceback, else)."""
    import MMSA

    monkeypatch.setattr(MMSA, "MMSA_run", fake_mmsa_run({("tfn", 3)}))
    hooks = list(compat.RUN_HOOKS["after"])
    entries = [compare.Entry(name, name, {}, "", Path("f.pkl"), "") for name in ("lf_dnn", "tfn")]
    grid = executors.Grid("mosi", None, {}, [], 0, 0, Path("m"), Path("r"), Path("l"))
    advanced = []
    outcome = executors.LocalExecutor().run([(entry, [3, 4]) for entry in entries], grid,
                                            lambda name, seed: advanced.append((name, seed)))
    assert outcome.finished == advanced == [("lf_dnn", 3), ("lf_dnn", 4), ("tfn", 4)]
    assert outcome.failures == ["tfn seed 3: seed 3: loss is nan"]
    # Its hook is gone: a later comparison in this process does not count into this one.
    assert compat.RUN_HOOKS["after"] == hooks


def test_a_seed_out_of_memory_costs_only_itself(monkeypatch):
    """As on Ray, where a failed task costs its run: a model too big for the GPU fails its
    seeds, and the other models still train and make the table."""
    import MMSA
    import torch

    monkeypatch.setattr(MMSA, "MMSA_run", fake_mmsa_run(
        {("lf_dnn", 1)}, torch.cuda.OutOfMemoryError, "CUDA out of memory.\nTried 2.00 GiB"))
    entries = [compare.Entry(name, name, {}, "", Path("f.pkl"), "") for name in ("lf_dnn", "tfn")]
    grid = executors.Grid("mosi", None, {}, [], 0, 0, Path("m"), Path("r"), Path("l"))
    outcome = executors.LocalExecutor().run([(entry, [1, 2]) for entry in entries], grid,
                                            lambda name, seed: None)
    assert outcome.finished == [("lf_dnn", 2), ("tfn", 1), ("tfn", 2)]
    assert outcome.failures == [
        "lf_dnn seed 1: out of GPU memory (seed 1: CUDA out of memory.)"]


def test_a_checkpoint_left_in_storage_is_fetched_once(tmp_path):
    stored = tmp_path / "storage" / "lf_dnn-mosi-seed1.pth"
    stored.parent.mkdir()
    stored.write_bytes(b"weights")
    local = tmp_path / "models" / "lf_dnn-mosi-seed1.pth"
    rows = pd.DataFrame({"checkpoint": [str(local)], "checkpoint_uri": [str(stored)]})
    executors.fetch_checkpoints(rows)
    assert local.read_bytes() == b"weights"
    local.write_bytes(b"local")  # a local file is never overwritten
    executors.fetch_checkpoints(rows)
    assert local.read_bytes() == b"local"


# ------------------------------------------------------------------ the tuner

optuna_needed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("optuna") is None, reason="Optuna is optional")


def tune_args(tiny_mosi, tmp_path, *extra, space=None) -> list[str]:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space or {"learning_rate": [0.001]}))
    return [str(arg) for arg in (
        "-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "--space", path, "--storage",
        f"sqlite:///{tmp_path / 'tune.db'}", "--study", "s", "--best-config",
        tmp_path / "best.json", "--set", "early_stop=1", *extra)]


@optuna_needed
@pytest.mark.parametrize("grid", [False, True])
def test_the_study_minimises_loss_and_a_grid_is_never_pruned(grid, tiny_mosi, tmp_path,
                                                            monkeypatch):
    import optuna

    from mmsa_iidaf import tune

    made = {}

    class Stop(Exception):
        pass

    def create_study(**kwargs):
        made.update(kwargs)
        raise Stop

    monkeypatch.setattr(optuna, "create_study", create_study)
    with pytest.raises(Stop):
        tune.main(tune_args(tiny_mosi, tmp_path, *(["--grid"] if grid else ["--trials", "1"])))
    assert made["direction"] == "minimize"  # lf_dnn's KeyEval is Loss
    kinds = ((optuna.samplers.GridSampler, optuna.pruners.NopPruner) if grid
             else (optuna.samplers.TPESampler, optuna.pruners.MedianPruner))
    assert type(made["sampler"]) is kinds[0] and type(made["pruner"]) is kinds[1]


@optuna_needed
def test_a_study_of_the_other_direction_and_zero_trials_are_one_line(tiny_mosi, tmp_path,
                                                                      capsys):
    import optuna

    from mmsa_iidaf import tune

    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'tune.db'}",
                        direction="maximize")
    assert tune.main(tune_args(tiny_mosi, tmp_path, "--trials", "1")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyEval Loss is to minimize" in err
    assert tune.main(tune_args(tiny_mosi, tmp_path, "--trials", "0")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trials 0: give 1 or more" in err


@optuna_needed
@pytest.mark.parametrize("space, named", [
    ({"learning_rate": [0.001, "abc"]}, "'learning_rate' = 'abc'"),      # a text for a number
    ({"early_stop": {"low": 0, "high": 2}}, "'early_stop' = 0"),         # a range's low end
    ({"learning_rate": {"low": 0, "high": 0.1, "log": True}}, "log scale"),
])
def test_a_bad_value_in_the_space_is_one_line_before_any_trial(space, named, tiny_mosi,
                                                               tmp_path, monkeypatch, capsys):
    """A value no configuration can take is the user's to fix before anything trains: one
    line, exit 2, not a trial's traceback from inside the optimizer."""
    from mmsa_iidaf import tune

    monkeypatch.setattr(tune.Trainer, "__call__", lambda *a: pytest.fail("a trial ran"))
    assert tune.main(tune_args(tiny_mosi, tmp_path, "--trials", "1", space=space)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--space" in err and named in err, err


@optuna_needed
def test_a_combination_the_model_refuses_costs_its_trial_only(tiny_mosi, tmp_path, capsys):
    """Each value is valid alone; IIDAF refuses d_model 96 with 5 shared heads (not a
    divisor): that trial is pruned before training, with its reason, and the study goes on."""
    import optuna

    from mmsa_iidaf import tune

    space = {"d_model": [96, 100], "shared_heads": [4, 5]}
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    argv = [str(arg) for arg in (
        "-m", "iidaf", "-d", "mosi", "-f", tiny_mosi, "--space", path, "--storage",
        f"sqlite:///{tmp_path / 'tune.db'}", "--study", "s", "--best-config",
        tmp_path / "best.json", "--grid", "--sampler-seed", "0", "--set", "max_epochs=1",
        "--set", "early_stop=1", "--set", "use_bert=false", "--set", "use_finetune=false")]
    trained = []
    real_call = tune.Trainer.__call__

    def spy(self, trial, values):
        if values["d_model"] % values["shared_heads"]:
            return real_call(self, trial, values)
        trained.append(values)
        return 1.0  # a valid combination: no need to train it here

    tune.Trainer.__call__ = spy
    try:
        assert tune.main(argv) == 0
    finally:
        tune.Trainer.__call__ = real_call
    assert "Traceback" not in capsys.readouterr().err
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'tune.db'}")
    states = {(t.params["d_model"], t.params["shared_heads"]): t.state.name for t in study.trials}
    assert states == {(96, 4): "COMPLETE", (100, 4): "COMPLETE", (100, 5): "COMPLETE",
                      (96, 5): "PRUNED"}
    (refused,) = [t for t in study.trials if t.state.name == "PRUNED"]
    assert "d_model = 96 must be divisible by shared_heads = 5" in refused.user_attrs["refused"]
    assert len(trained) == 3


@optuna_needed
def test_mmsas_tuning_layout_with_sections_and_fixed_values(tiny_mosi, tmp_path, monkeypatch):
    """MMSA's debugParams (MFN's): a fixed value stays fixed, a section's keys are each chosen,
    and the trial's config gets the section whole."""
    from mmsa_iidaf import tune

    debug = {"d_paras": ["windowsize", "NN1Config", "learning_rate"], "windowsize": 2,
             "NN1Config": {"drop": [0.0, 0.5], "shapes": [32]}, "learning_rate": [0.001]}
    space = tune.from_debug_params(debug, "test")
    assert space == {"windowsize": [2], "NN1Config.drop": [0.0, 0.5], "NN1Config.shapes": [32],
                     "learning_rate": [0.001]}
    seen = []
    monkeypatch.setattr(tune.Trainer, "__call__", lambda self, trial, values: seen.append(
        values) or 1.0)
    argv = tune_args(tiny_mosi, tmp_path, "--trials", "1", space=debug)
    argv[argv.index("lf_dnn")] = "mfn"
    assert tune.main(argv) == 0
    (values,) = seen
    assert values["windowsize"] == 2 and values["learning_rate"] == 0.001
    assert set(values["NN1Config"]) == {"drop", "shapes"} and values["NN1Config"]["shapes"] == 32


@optuna_needed
def test_a_configuration_tried_before_is_reused_not_trained(tiny_mosi, tmp_path, monkeypatch,
                                                            capsys):
    import optuna

    from mmsa_iidaf import tune

    trained = []
    real_call = tune.Trainer.__call__
    monkeypatch.setattr(tune.Trainer, "__call__", lambda self, trial, values: trained.append(
        values) or real_call(self, trial, values))
    for _ in range(2):
        assert tune.main(tune_args(tiny_mosi, tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    first, second = optuna.load_study(study_name="s",
                                      storage=f"sqlite:///{tmp_path / 'tune.db'}").trials
    assert trained == [{"learning_rate": 0.001}]
    assert second.user_attrs["same_as_trial"] == 0 and second.value == first.value


@optuna_needed
@pytest.mark.parametrize("key", ["Loss", "Mult_acc_7"])
def test_a_trial_reports_and_returns_keyeval_on_the_validation_split(key, tiny_mosi, tmp_path,
                                                                   monkeypatch):
    """The pruner gets each epoch's validation KeyEval, and the trial's score is the kept
    checkpoint's on the validation split: nothing else is scored. (lf_dnn's Loss is L1, equal
    to its MAE: a KeyEval other than Loss tells the metric apart.)"""
    from mmsa_iidaf import tune

    scored = []
    real_build = registry.build_trainer

    def spied_trainer(args):
        trainer = real_build(args)
        do_test = trainer.do_test

        def spy(model, loader, mode="VAL", **kwargs):
            results = do_test(model, loader, mode=mode, **kwargs)
            scored.append((mode, loader.dataset.mode, float(results[key])))
            return results

        trainer.do_test = spy
        return trainer

    monkeypatch.setattr(registry, "build_trainer", spied_trainer)

    class Trial:
        number = 0

        def __init__(self):
            self.reports, self.attrs = [], {}

        def report(self, value, step):
            self.reports.append((value, step))

        def should_prune(self):
            return False

        def set_user_attr(self, name, value):
            self.attrs[name] = value

    options = types.SimpleNamespace(model="lf_dnn", dataset="mosi", config=None,
                                    scratch=str(tmp_path), gpu_ids=[], seed=1, num_workers=0)
    train = tune.Trainer(options, {"early_stop": 1, "KeyEval": key}, str(tiny_mosi))
    assert train.direction == ("minimize" if key == "Loss" else "maximize")
    trial = Trial()
    value = train(trial, {})
    assert {split for _, split, _ in scored} == {"valid"}
    epochs = [score for mode, _, score in scored if mode == "VAL"]
    assert trial.reports == [(score, epoch) for epoch, score in enumerate(epochs, start=1)]
    assert scored[-1][0] == "VALID" and value == scored[-1][2] == trial.attrs[f"valid_{key}"]


def test_a_fixed_value_of_mmsas_tuning_is_checked_before_it_starts(tiny_mosi, tmp_path,
                                                                    monkeypatch, capsys):
    """-t draws the space's values; one given with --set is fixed, and a text where a count
    belongs would end in MMSA's trainer with a traceback."""
    import MMSA.run

    monkeypatch.setattr(MMSA.run, "_run", lambda *a, **k: pytest.fail("a trial ran"))
    line = one_error_line(run_cli_in_process(
        ["-m", "lf_dnn", "-d", "mosi", "-f", tiny_mosi, "-t", "--set", "early_stop=\"abc\"",
         *folders(tmp_path)], monkeypatch, capsys))
    assert "'early_stop' = 'abc' must be a number" in line
    assert not (tmp_path / "results").exists()
