"""Distillation from a finished run (`distill_from`): the teacher's training-split predictions
enter the loss as L_KD, building the teacher leaves the student's random stream alone, and a
teacher that does not fit the run is one clear error."""
from __future__ import annotations

import logging
import pickle

import MMSA
import pandas as pd
import pytest
import torch
from easydict import EasyDict

from mmsa_iidaf.data.synthetic import make_dataset
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.trainers.distill import teacher_predictions, teacher_targets
from support import SMALL_IIDAF, close_mmsa_handlers, run_folders

TWO_EPOCHS = {**SMALL_IIDAF, "max_epochs": 2, "early_stop": 2}
METRICS = ("MAE", "Corr", "Loss")


def write(data: dict, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    data = make_dataset("mosi", n_train=48, n_valid=16, n_test=16, seed=5)
    return write(data, tmp_path_factory.mktemp("distill") / "mosi.pkl")


@pytest.fixture(scope="module")
def teacher_dir(feature_file, tmp_path_factory):
    """A finished two-seed iidaf run: the teacher's results folder."""
    root = tmp_path_factory.mktemp("teacher")
    try:
        MMSA.MMSA_run("iidaf", "mosi", config=TWO_EPOCHS, custom_feature=str(feature_file),
                      seeds=[1, 2], **run_folders(root))
    finally:
        close_mmsa_handlers()
    return root / "results"


def train(feature_file, root, **config) -> pd.Series:
    try:
        MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, **config},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(root))
    finally:
        close_mmsa_handlers()
    return pd.read_csv(root / "results" / "iidaf-mosi-seeds.csv").iloc[-1]


def test_the_teachers_predictions_are_its_checkpoints_on_the_training_split(feature_file,
                                                                             teacher_dir):
    args = EasyDict(distill_from=str(teacher_dir), dataset_name="mosi", seed=2,
                    custom_feature=str(feature_file), train_mode="regression")
    teacher = teacher_predictions(args)
    with open(feature_file, "rb") as f:
        train_ids = list(pickle.load(f)["train"]["id"])
    assert sorted(teacher) == sorted(train_ids)
    # Seed 2's checkpoint, not seed 1's: the two teachers disagree.
    other = teacher_predictions(EasyDict({**args, "seed": 1}))
    assert any(abs(teacher[i] - other[i]) > 1e-4 for i in train_ids)
    batch_ids = train_ids[:3]
    like = torch.zeros(3, 1)
    targets = teacher_targets(teacher, batch_ids, like)
    assert targets.shape == (3, 1)
    assert targets[:, 0].tolist() == pytest.approx([teacher[i] for i in batch_ids])
    with pytest.raises(ConfigError, match="no prediction for training sample 'elsewhere'"):
        teacher_targets(teacher, ["elsewhere"], torch.zeros(1, 1))


def test_distillation_enters_the_loss_and_leaves_the_random_stream(feature_file, teacher_dir,
                                                                   tmp_path, caplog):
    plain = train(feature_file, tmp_path / "plain")
    # Weight 0: the teacher is built and its predictions read, and nothing else changes.
    with caplog.at_level(logging.INFO, logger="MMSA"):
        unweighted = train(feature_file, tmp_path / "zero", distill_from=str(teacher_dir),
                           distill_weight=0.0)
    assert "L_KD:" in caplog.text
    assert [unweighted[m] for m in METRICS] == [plain[m] for m in METRICS]
    taught = train(feature_file, tmp_path / "taught", distill_from=str(teacher_dir),
                   distill_weight=1.0)
    assert [taught[m] for m in METRICS] != [plain[m] for m in METRICS]


def test_a_teacher_that_does_not_fit_is_one_clear_error(feature_file, teacher_dir, tmp_path):
    base = EasyDict(dataset_name="mosi", seed=1, custom_feature=str(feature_file),
                    train_mode="regression")
    with pytest.raises(ConfigError, match="holds no iidaf-mosi-seeds.csv"):
        teacher_predictions(EasyDict({**base, "distill_from": str(tmp_path)}))
    with pytest.raises(ConfigError, match="has no seed 7: train the teacher with -s 7"):
        teacher_predictions(EasyDict({**base, "distill_from": str(teacher_dir), "seed": 7}))
    with pytest.raises(ConfigError, match="'distill_weight' = -1.0 must be >= 0"):
        teacher_predictions(EasyDict({**base, "distill_from": str(teacher_dir),
                                      "distill_weight": -1.0}))
    with pytest.raises(ConfigError, match="distils a regression teacher"):
        teacher_predictions(EasyDict({**base, "distill_from": str(teacher_dir),
                                      "train_mode": "classification"}))
    other = write(make_dataset("mosi", n_train=48, n_valid=16, n_test=16, seed=6),
                  tmp_path / "other.pkl")
    with pytest.raises(ConfigError, match="trained on another feature file"):
        teacher_predictions(EasyDict({**base, "distill_from": str(teacher_dir),
                                      "custom_feature": str(other)}))
    assert teacher_predictions(base) is None


def test_a_teacher_without_a_seed_of_the_run_stops_it_before_any_training(feature_file,
                                                                          teacher_dir, tmp_path):
    with pytest.raises(ConfigError, match="has no seed 3"):
        try:
            MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, "distill_from": str(teacher_dir)},
                          custom_feature=str(feature_file), seeds=[1, 3], **run_folders(tmp_path))
        finally:
            close_mmsa_handlers()
    assert not (tmp_path / "results" / "iidaf-mosi-seeds.csv").exists()
    with pytest.raises(ConfigError, match="misa's trainer is MMSA's, which reads no teacher"):
        MMSA.MMSA_run("misa", "mosi", config={"distill_from": str(teacher_dir)},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
