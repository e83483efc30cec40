"""Folds by video of a feature file's train and valid splits (`mmsa_iidaf.data.folds`)."""
import pickle

import numpy as np
import pytest

from mmsa_iidaf.data import folds
from mmsa_iidaf.data.synthetic import make_dataset, write_dataset
from mmsa_iidaf.data.validate import validate_features
from mmsa_iidaf.errors import UserError


@pytest.fixture(scope="module")
def data():
    return make_dataset("mosi", n_train=60, n_valid=20, n_test=20)


def test_a_clip_id_names_its_video_before_the_last_underscore():
    assert folds.video_of("1DmNV9C1hbY_10") == "1DmNV9C1hbY"
    assert folds.video_of("a_b_3") == "a_b"
    assert folds.video_of("8412") == "8412"


def test_folds_partition_the_videos_in_near_equal_groups_fixed_by_the_seed():
    videos = [f"v{i}" for i in range(11) for _ in range(3)]  # 11 videos, 3 clips each
    groups = folds.video_folds(videos, 3, seed=0)
    assert sorted(v for group in groups for v in group) == sorted(set(videos))
    assert sorted(len(group) for group in groups) == [3, 4, 4]
    assert groups == folds.video_folds(videos, 3, seed=0)
    assert groups != folds.video_folds(videos, 3, seed=1)


@pytest.mark.parametrize("count", [1, 13])
def test_a_fold_count_outside_two_to_the_videos_is_refused_in_one_line(count):
    with pytest.raises(UserError, match=r"--folds .*12 videos; give between 2 and 12"):
        folds.video_folds([f"v{i}" for i in range(12)], count, seed=0)


def test_a_fold_holds_out_whole_videos_and_keeps_every_row_aligned(data):
    videos = sorted({folds.video_of(c) for split in ("train", "valid") for c in data[split]["id"]})
    held_out = videos[::4]
    fold = folds.fold_data(data, held_out)
    valid_videos = {folds.video_of(c) for c in fold["valid"]["id"]}
    train_videos = {folds.video_of(c) for c in fold["train"]["id"]}
    assert valid_videos == set(held_out) and not valid_videos & train_videos
    pooled_ids = data["train"]["id"] + data["valid"]["id"]
    assert sorted(fold["train"]["id"] + fold["valid"]["id"]) == sorted(pooled_ids)
    # Each clip keeps its own label, features and length (rows moved together, file order kept).
    for split in ("train", "valid"):
        source = {clip: (s, i) for s in ("train", "valid") for i, clip in enumerate(data[s]["id"])}
        rows = [source[clip] for clip in fold[split]["id"]]
        assert rows == sorted(rows, key=lambda r: (r[0] == "valid", r[1]))
        for key in ("regression_labels", "audio", "text_bert", "audio_lengths", "raw_text"):
            expected = [data[s][key][i] for s, i in rows]
            assert all(np.array_equal(a, b) for a, b in zip(fold[split][key], expected)), key
    assert fold["test"] is data["test"]


def test_written_folds_hold_out_each_video_once_and_pass_the_loader_checks(tmp_path, data):
    source = tmp_path / "mosi.pkl"
    with open(source, "wb") as handle:
        pickle.dump(data, handle)
    written = folds.write_folds(source, tmp_path / "folds", folds=3, seed=0)
    assert [w["path"].name for w in written] == ["fold0.pkl", "fold1.pkl", "fold2.pkl"]
    held_out = []
    for summary in written:
        path = summary["path"]
        with open(path, "rb") as handle:
            fold = pickle.load(handle)
        assert (summary["train"], summary["valid"]) == (len(fold["train"]["id"]),
                                                        len(fold["valid"]["id"]))
        assert summary["videos"] == len({folds.video_of(c) for c in fold["valid"]["id"]})
        validate_features(fold, path=str(path), use_bert=True)
        held_out += sorted({folds.video_of(c) for c in fold["valid"]["id"]})
        assert fold["test"]["id"] == data["test"]["id"]
    pooled = {folds.video_of(c) for split in ("train", "valid") for c in data[split]["id"]}
    assert sorted(held_out) == sorted(pooled)  # every video held out exactly once


def test_the_command_writes_the_folds_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    source = write_dataset(tmp_path / "mosi.pkl", preset="mosi", n_train=40, n_valid=10,
                           n_test=10)
    assert folds.main([str(source), str(tmp_path / "out"), "--folds", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[0].startswith(str(tmp_path / "out" / "fold0.pkl"))

    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with open(source, "rb") as handle:
        ragged = pickle.load(handle)
    ragged["valid"]["regression_labels"] = ragged["valid"]["regression_labels"][:-1]
    with open(tmp_path / "ragged.pkl", "wb") as handle:
        pickle.dump(ragged, handle)
    for argv in ([str(tmp_path / "junk.pkl"), str(tmp_path / "o2")],
                 [str(tmp_path / "ragged.pkl"), str(tmp_path / "o5")],
                 [str(tmp_path / "missing.pkl"), str(tmp_path / "o3")],
                 [str(source), str(tmp_path / "o4"), "--folds", "1"]):
        assert folds.main(argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: ") and error.count("\n") == 1
    assert not (tmp_path / "o4").exists()
