"""Feature-file validation: each broken file is refused with one line naming file, split, key."""
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmsa_iidaf.data.synthetic import make_dataset, write_dataset
from mmsa_iidaf.data.validate import load_and_validate, validate_features
from mmsa_iidaf.errors import ConfigError, FeatureFileError

PATH = "features/mosi.pkl"
REAL_MOSI_UTT = Path(__file__).resolve().parents[2] / "shared/data/mosi_utt/mosi_utt.pkl"


@pytest.fixture
def data():
    return make_dataset("mosi", n_train=12, n_valid=6, n_test=6)


def refused(data, *fragments, **kwargs) -> str:
    """Validate, expect a FeatureFileError whose single line names the file and `fragments`."""
    kwargs.setdefault("use_bert", False)
    with pytest.raises(FeatureFileError) as caught:
        validate_features(data, path=PATH, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(PATH)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


def test_valid_data_is_accepted_and_described(data):
    assert validate_features(data, path=PATH, use_bert=False) == {
        "feature_dims": [48, 5, 20], "seq_lens": [20, 30, 40]}
    assert validate_features(data, path=PATH, use_bert=True, expected_dims=[384, 5, 20]) == {
        "feature_dims": [384, 5, 20], "seq_lens": [20, 30, 40]}
    # MMSA's loader writes 768 for the text width under use_bert.
    assert validate_features(data, path=PATH, use_bert=True)["feature_dims"][0] == 768


def test_aligned_data_without_lengths_is_accepted():
    aligned = make_dataset("mosei", aligned=True, n_train=5, n_valid=3, n_test=3)
    for split in aligned.values():
        del split["audio_lengths"], split["vision_lengths"]
    info = validate_features(aligned, path=PATH, use_bert=True, need_lengths=False,
                             expected_dims=[None, 74, 35])
    assert info == {"feature_dims": [768, 74, 35], "seq_lens": [20, 20, 20]}


@pytest.mark.skipif(not REAL_MOSI_UTT.is_file(), reason="shared/data/mosi_utt is not present")
def test_real_mosi_utt_file_is_accepted():
    _, info = load_and_validate(REAL_MOSI_UTT, use_bert=False)
    assert info == {"feature_dims": [384, 73, 100], "seq_lens": [1, 1, 1]}


def test_not_a_dict_is_refused():
    refused([1, 2], "list", "not a dict")


def test_split_not_a_dict_is_refused(data):
    data["test"] = list(data["test"].items())
    refused(data, "split 'test'", "not a dict")


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_missing_split(data, split):
    del data[split]
    refused(data, f"split '{split}' is missing")


@pytest.mark.parametrize("key,options", [
    ("text", dict(use_bert=False)),
    ("text_bert", dict(use_bert=True)),
    ("audio", {}),
    ("vision", {}),
    ("regression_labels", {}),
    ("id", {}),
    ("audio_lengths", {}),
    ("vision_lengths", {}),
])
def test_missing_key(data, key, options):
    del data["valid"][key]
    refused(data, "split 'valid'", f"key '{key}'", "missing", **options)


def test_keys_of_unused_inputs_are_not_required(data):
    for split in data.values():
        del split["vision"], split["vision_lengths"], split["text"]
    info = validate_features(data, path=PATH, use_bert=True, modalities="ta")
    assert info["feature_dims"][2] is None and info["seq_lens"][1:] == [30, None]
    for split in data.values():
        del split["audio_lengths"]
    validate_features(data, path=PATH, use_bert=True, modalities="ta", need_lengths=False)


def test_unused_modality_is_not_checked_but_reported(data):
    data["train"]["vision"][0, 0, 0] = np.nan
    info = validate_features(data, path=PATH, use_bert=False, modalities="ta")
    assert info["feature_dims"] == [48, 5, 20]


@pytest.mark.parametrize("index,key", [(0, "text"), (1, "audio"), (2, "vision")])
def test_width_that_disagrees_with_the_config(data, index, key):
    expected = [48, 5, 20]
    expected[index] += 1
    refused(data, f"key '{key}'", f"feature width {expected[index] - 1}",
            f"expects {expected[index]} (feature_dims[{index}])", expected_dims=expected)


def test_text_width_is_not_checked_under_use_bert(data):
    validate_features(data, path=PATH, use_bert=True, expected_dims=[768, 5, 20])


def test_splits_that_disagree_on_width(data):
    data["test"]["audio"] = data["test"]["audio"][:, :, :4]
    refused(data, "split 'test'", "key 'audio'", "(30, 4)", "train has (30, 5)")


def test_splits_that_disagree_on_length(data):
    data["valid"]["vision"] = data["valid"]["vision"][:, :35]
    refused(data, "split 'valid'", "key 'vision'", "(35, 20)", "train has (40, 20)")


def test_splits_that_disagree_on_text_bert_length(data):
    data["valid"]["text_bert"] = data["valid"]["text_bert"][:, :, :18]
    refused(data, "split 'valid'", "key 'text_bert'", "length 18", use_bert=True)


def test_sample_counts_that_disagree(data):
    data["train"]["regression_labels"] = data["train"]["regression_labels"][:-1]
    data["train"]["annotations"] = data["train"]["annotations"][:-2]
    refused(data, "split 'train'", "'id' has 12", "'regression_labels' 11", "'annotations' 10")


@pytest.mark.parametrize("key", ["audio_lengths", "vision_lengths"])
def test_length_longer_than_the_sequence(data, key):
    limit = data["test"][key.split("_")[0]].shape[1]
    data["test"][key][2] = limit + 1
    refused(data, "split 'test'", f"key '{key}'", f"above the sequence length {limit}")


@pytest.mark.parametrize("bad", [0, -3])
def test_length_below_one(data, bad):
    data["train"]["audio_lengths"][0] = bad
    refused(data, "split 'train'", "key 'audio_lengths'", "below 1")


def test_zero_length_allowed_when_asked(data):
    data["train"]["audio_lengths"][0] = 0
    validate_features(data, path=PATH, use_bert=False, min_length=0)


def test_fractional_lengths(data):
    data["train"]["vision_lengths"] = [v + 0.5 for v in data["train"]["vision_lengths"]]
    refused(data, "split 'train'", "key 'vision_lengths'", "non-integer")


@pytest.mark.parametrize("key", ["text", "audio", "vision"])
def test_nan_in_features_names_key_and_count(data, key):
    data["valid"][key][1, 0, :3] = np.nan
    refused(data, "split 'valid'", f"key '{key}'", "3 NaN")


def test_nan_in_text_bert(data):
    data["train"]["text_bert"][0, 0, 0] = np.nan
    refused(data, "key 'text_bert'", "1 NaN", use_bert=True)


@pytest.mark.parametrize("key", ["text", "audio", "vision"])
def test_positive_inf_in_features(data, key):
    data["test"][key][0, 0, 0] = np.inf
    refused(data, "split 'test'", f"key '{key}'", "1 +inf")


def test_negative_inf_in_audio_is_accepted_as_mmsa_zeroes_it(data):
    data["train"]["audio"][0, :4, 0] = -np.inf
    data["test"]["audio"][1, -1, :] = -np.inf
    validate_features(data, path=PATH, use_bert=False)


@pytest.mark.parametrize("key", ["text", "vision"])
def test_negative_inf_elsewhere_is_refused(data, key):
    data["train"][key][0, 0, :2] = -np.inf
    refused(data, "split 'train'", f"key '{key}'", "2 -inf")


def test_labels_outside_the_range(data):
    data["valid"]["regression_labels"][[0, 3]] = [3.5, -4.0]
    refused(data, "split 'valid'", "key 'regression_labels'", "2 label(s)", "[-3, 3]")


def test_label_range_can_be_changed_or_skipped(data):
    refused(data, "key 'regression_labels'", "[-1, 1]", label_range=(-1, 1))
    data["train"]["regression_labels"][0] = 10.0
    validate_features(data, path=PATH, use_bert=False, label_range=None)


def test_nan_label(data):
    data["test"]["regression_labels"][0] = np.nan
    refused(data, "split 'test'", "key 'regression_labels'", "1 NaN", label_range=None)


def test_empty_split(data):
    data["test"] = {key: value[:0] for key, value in data["test"].items()}
    refused(data, "split 'test'", "empty")


def test_same_clip_in_two_splits_is_a_leak(data):
    leaked = data["train"]["id"][:2]
    data["test"]["id"][3:5] = leaked
    refused(data, "'train' and 'test'", "2 clip id(s)", f"'{min(leaked)}'", "leak")


def test_ids_must_be_strings(data):
    data["train"]["id"][0] = 7
    refused(data, "split 'train'", "key 'id'", "not a str")


def test_text_bert_needs_three_rows(data):
    data["train"]["text_bert"] = data["train"]["text_bert"][:, :2]
    refused(data, "split 'train'", "key 'text_bert'", "(samples, 3, length)", use_bert=True)


def test_text_bert_attention_mask_is_zero_or_one(data):
    data["valid"]["text_bert"][0, 1, :2] = 2.0
    refused(data, "split 'valid'", "key 'text_bert'", "attention mask", "2 value(s)",
            use_bert=True)


def test_text_bert_ids_are_whole_and_non_negative(data):
    data["valid"]["text_bert"][0, 0, 1] = -5
    refused(data, "key 'text_bert'", "input ids", use_bert=True)


def test_features_with_wrong_rank(data):
    data["train"]["audio"] = data["train"]["audio"].mean(axis=1)
    refused(data, "split 'train'", "key 'audio'", "3 axes")


def test_non_numeric_features(data):
    data["train"]["vision"] = np.array([["x"]] * 12)
    refused(data, "split 'train'", "key 'vision'", "not numeric")


def test_bad_modalities_or_dims_are_a_config_error(data):
    with pytest.raises(ConfigError, match="modalities"):
        validate_features(data, path=PATH, use_bert=False, modalities="tx")
    with pytest.raises(ConfigError, match="three widths"):
        validate_features(data, path=PATH, use_bert=False, expected_dims=[48, 5])


def test_load_and_validate_round_trip(tmp_path):
    path = write_dataset(tmp_path / "mosi.pkl", preset="mosi", n_train=8, n_valid=4, n_test=4)
    data, info = load_and_validate(path, use_bert=True, expected_dims=[384, 5, 20])
    assert set(data) == {"train", "valid", "test"}
    assert info == {"feature_dims": [384, 5, 20], "seq_lens": [20, 30, 40]}


def load_refused(path, *fragments):
    with pytest.raises(FeatureFileError) as caught:
        load_and_validate(path, use_bert=False)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_missing_file(tmp_path):
    load_refused(tmp_path / "absent.pkl", "not found", "featurePath")


def test_directory_instead_of_file(tmp_path):
    load_refused(tmp_path, "not a file")


def test_file_that_is_not_a_pickle(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("these are not features\nat all\n")
    load_refused(path, "not a readable pickle")


def test_truncated_pickle(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(make_dataset("mosi", n_train=4, n_valid=2, n_test=2))[:500])
    load_refused(path, "not a readable pickle")


def test_pickle_of_something_else(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    load_refused(path, "holds a list", "not a dict")


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "locked.pkl"
    path.write_bytes(pickle.dumps({}))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    # Patched rather than chmod-ed: permissions do not stop root, who runs many CI jobs.
    monkeypatch.setattr(Path, "open", denied)
    load_refused(path, "cannot be read (Permission denied)", "permissions")
