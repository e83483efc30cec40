"""Check an MMSA feature pickle before any training starts.

MMSA's loader trusts its file: a missing key fails deep inside a worker with a bare KeyError, a
NaN silently turns every loss into NaN, and a clip that sits in both train and test inflates the
scores without any error. ``validate_features`` checks the layout ``data[split][key]`` that
MMSA's ``MMDataLoader`` reads and raises ``FeatureFileError`` with one line naming the file, the
split and the key, what is wrong and how to fix it.

-inf in ``audio`` is accepted without a word: MMSA's loader replaces it by 0 (``audio[audio ==
-inf] = 0``) and the official audio features contain it, so a loader built on this check must do
the same. Nothing here modifies the data.
"""
from __future__ import annotations

import pickle
from itertools import combinations
from pathlib import Path

import numpy as np

from ..errors import ConfigError, FeatureFileError

SPLITS = ("train", "valid", "test")
# Keys that hold one entry per sample; whichever of them a split has must agree in count.
PER_SAMPLE_KEYS = ("id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths",
                   "vision_lengths", "regression_labels", "classification_labels", "annotations")
FEATURE_KEYS = {"t": "text", "a": "audio", "v": "vision"}
# MMSA's loader writes 768 for the text width whenever use_bert is set; the real width is the
# encoder's, which the file cannot tell.
MMSA_BERT_WIDTH = 768
# Scan large feature arrays in slices so a multi-GB MOSEI array needs no full-size temporary.
SCAN_SAMPLES = 512


class _Problem:
    """Builds the one-line messages; every message names the file."""

    def __init__(self, path: str):
        self.path = str(path)

    def __call__(self, what: str, fix: str, split: str | None = None,
                 key: str | None = None) -> FeatureFileError:
        where = self.path
        if split is not None:
            where += f", split '{split}'"
        if key is not None:
            where += f", key '{key}'"
        line = f"{where}: {what}; {fix}"
        return FeatureFileError(" ".join(line.split()))


def _count_nonfinite(array: np.ndarray) -> tuple[int, int, int]:
    """(NaN, +inf, -inf) counts, scanned in slices along the sample axis."""
    if not np.issubdtype(array.dtype, np.floating):
        return 0, 0, 0
    nan = pos_inf = neg_inf = 0
    for start in range(0, len(array), SCAN_SAMPLES):
        chunk = array[start : start + SCAN_SAMPLES]
        nan += int(np.isnan(chunk).sum())
        infinite = np.isinf(chunk)
        if infinite.any():
            pos_inf += int((infinite & (chunk > 0)).sum())
            neg_inf += int((infinite & (chunk < 0)).sum())
    return nan, pos_inf, neg_inf


def _numeric_array(value, problem, split, key, ndim_hint: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise problem(f"cannot be read as a numeric array ({exc})",
                      f"store it as a float array of shape {ndim_hint}", split, key) from exc
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == bool):
        raise problem(f"is not numeric (dtype {array.dtype})",
                      f"store it as a float array of shape {ndim_hint}", split, key)
    return array


def _check_finite(array, problem, split, key, allow_neg_inf: bool) -> None:
    nan, pos_inf, neg_inf = _count_nonfinite(array)
    if nan:
        raise problem(f"has {nan} NaN value(s)",
                      "re-extract the features or replace NaN (e.g. np.nan_to_num) before training",
                      split, key)
    if pos_inf:
        raise problem(f"has {pos_inf} +inf value(s)",
                      "re-extract the features or clip them to finite values", split, key)
    if neg_inf and not allow_neg_inf:
        raise problem(f"has {neg_inf} -inf value(s) (only 'audio' may hold -inf, which MMSA "
                      f"zeroes)", "re-extract the features or clip them to finite values",
                      split, key)


def _sequence_features(split_data, split, key, problem, allow_neg_inf) -> np.ndarray:
    array = _numeric_array(split_data[key], problem, split, key, "(samples, length, dim)")
    if array.ndim != 3:
        raise problem(f"has shape {array.shape}, expected 3 axes (samples, length, dim)",
                      "store one (length, dim) sequence per sample, zero-padded to one length",
                      split, key)
    if array.shape[1] < 1 or array.shape[2] < 1:
        raise problem(f"has shape {array.shape} with an empty length or feature axis",
                      "re-extract the features", split, key)
    _check_finite(array, problem, split, key, allow_neg_inf)
    return array


def _text_bert(split_data, split, problem) -> np.ndarray:
    key = "text_bert"
    array = _numeric_array(split_data[key], problem, split, key, "(samples, 3, length)")
    if array.ndim != 3 or array.shape[1] != 3:
        raise problem(f"has shape {array.shape}, expected (samples, 3, length): rows input ids, "
                      f"attention mask, token type ids",
                      "tokenize the transcripts with the encoder's tokenizer into MMSA's layout",
                      split, key)
    _check_finite(array, problem, split, key, allow_neg_inf=False)
    ids = array[:, 0]
    if (ids < 0).any() or (ids != np.round(ids)).any():
        raise problem("row 0 (input ids) holds negative or fractional values",
                      "store the tokenizer's integer ids in row 0", split, key)
    mask = array[:, 1]
    bad_mask = int(((mask != 0) & (mask != 1)).sum())
    if bad_mask:
        raise problem(f"row 1 (attention mask) has {bad_mask} value(s) other than 0 and 1",
                      "store the tokenizer's attention mask (1 real token, 0 padding) in row 1",
                      split, key)
    return array


def _lengths(split_data, split, key, seq_len, min_length, problem) -> None:
    try:
        lengths = np.asarray(split_data[key], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise problem(f"cannot be read as integers ({exc})",
                      "store one int per sample (its number of real frames)", split, key) from exc
    if lengths.ndim != 1:
        raise problem(f"has shape {lengths.shape}, expected one int per sample",
                      "store a flat list of ints", split, key)
    if not np.isfinite(lengths).all() or (lengths != np.round(lengths)).any():
        raise problem("holds non-integer values", "store whole frame counts", split, key)
    too_short = int((lengths < min_length).sum())
    if too_short:
        raise problem(f"has {too_short} length(s) below {min_length} (smallest "
                      f"{int(lengths.min())})",
                      "every sample needs at least one real frame: drop those samples or "
                      "re-extract them", split, key)
    too_long = int((lengths > seq_len).sum())
    if too_long:
        raise problem(f"has {too_long} length(s) above the sequence length {seq_len} (largest "
                      f"{int(lengths.max())})",
                      "lengths count real frames and cannot exceed the padded length; re-pad the "
                      "features or fix the lengths", split, key)


def _labels(split_data, split, label_range, problem, whole_labels: bool = False) -> None:
    key = "regression_labels"
    labels = _numeric_array(split_data[key], problem, split, key, "(samples,)")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise problem(f"has shape {labels.shape}, expected one score per sample",
                      "store a flat float array", split, key)
    nan = int(np.isnan(labels.astype(np.float64)).sum())
    if nan:
        raise problem(f"has {nan} NaN label(s)", "drop those samples or fix their labels",
                      split, key)
    if label_range is not None:
        low, high = label_range
        outside = (labels < low) | (labels > high)
        if outside.any():
            raise problem(f"has {int(outside.sum())} label(s) outside the dataset's range "
                          f"[{low}, {high}] (min {float(labels.min()):g}, max "
                          f"{float(labels.max()):g})",
                          "use the feature file of this dataset, or set the label range that "
                          "matches the file", split, key)
    if whole_labels:
        fractional = labels != np.round(labels)
        if fractional.any():
            raise problem(f"has {int(fractional.sum())} label(s) that are not a class of this "
                          f"classification dataset (e.g. {float(labels[fractional][0]):g})",
                          "store each label as its class (0 or 1 for a binary task)", split, key)


def _check_modalities(modalities: str) -> str:
    if not modalities or set(modalities) - set(FEATURE_KEYS) or len(set(modalities)) != len(
            modalities):
        raise ConfigError(f"modalities must be a non-empty combination of 't', 'a', 'v' without "
                          f"repeats, got {modalities!r}; e.g. 'tav' or 'ta'")
    return modalities


def validate_features(data: dict, *, path: str, use_bert: bool, modalities: str = "tav",
                      expected_dims: list | None = None, label_range: tuple | None = (-3, 3),
                      need_lengths: bool = True, min_length: int = 1,
                      whole_labels: bool = False) -> dict:
    """Check a loaded MMSA feature dict; return ``{'feature_dims': [t,a,v], 'seq_lens': [t,a,v]}``.

    path: the file's name, used in messages. use_bert: text comes from ``text_bert`` (token ids)
    instead of ``text`` (precomputed features). modalities: which of 't', 'a', 'v' are used; keys
    of unused modalities are not required. expected_dims: the config's (text, audio, vision)
    feature widths, None entries (or None) skip the check; with use_bert the text width is the
    encoder's and is not checked. label_range: (low, high) of ``regression_labels``, None skips;
    whole_labels: each label must be a whole number (a class: a classification dataset).
    need_lengths: require ``audio_lengths``/``vision_lengths`` (unaligned data) and check them
    against the padded length; min_length is the smallest real length allowed.
    Raises FeatureFileError (one line) on the first problem. Dims and lengths are taken from
    train; a modality not used and not in the file is reported as None. With use_bert the text
    width is expected_dims[0] when given, else MMSA's 768.
    """
    problem = _Problem(path)
    used = _check_modalities(modalities)
    if expected_dims is not None and len(expected_dims) != 3:
        raise ConfigError(f"feature_dims must list three widths (text, audio, vision), got "
                          f"{expected_dims!r}; fix feature_dims in the config")
    if not isinstance(data, dict):
        raise problem(f"holds a {type(data).__name__}, not a dict of splits",
                      "MMSA feature files are dicts {'train': {...}, 'valid': {...}, "
                      "'test': {...}}")
    text_key = "text_bert" if use_bert else "text"
    feature_keys = {"t": text_key, "a": "audio", "v": "vision"}
    required = ["id", "regression_labels"] + [feature_keys[m] for m in used]
    if need_lengths:
        required += [f"{FEATURE_KEYS[m]}_lengths" for m in used if m in "av"]

    shapes: dict[str, dict[str, tuple]] = {}
    for split in SPLITS:
        if split not in data:
            raise problem(f"split '{split}' is missing (splits present: "
                          f"{sorted(map(str, data))})",
                          "MMSA needs 'train', 'valid' and 'test'; regenerate the file with all "
                          "three")
        split_data = data[split]
        if not isinstance(split_data, dict):
            raise problem(f"is a {type(split_data).__name__}, not a dict of keys",
                          "each split maps keys such as 'text', 'audio', 'id' to arrays", split)
        for key in required:
            if key not in split_data:
                raise problem(f"is missing (keys present: {sorted(map(str, split_data))})",
                              _missing_key_fix(key), split, key)
        shapes[split] = _check_split(split_data, split, used, feature_keys, need_lengths,
                                     min_length, label_range, problem, whole_labels)

    _check_splits_agree(shapes, problem)
    train = shapes["train"]
    feature_dims, seq_lens = [], []
    for index, modality in enumerate("tav"):
        key = feature_keys[modality]
        shape = train.get(key)
        if shape is None and modality not in used:
            shape = _shape_if_sequence(data["train"].get(key), use_bert and modality == "t")
        if modality == "t" and use_bert:
            width = expected_dims[0] if expected_dims and expected_dims[0] else MMSA_BERT_WIDTH
            feature_dims.append(int(width))
            seq_lens.append(None if shape is None else int(shape[1]))
            continue
        if shape is not None and expected_dims and expected_dims[index] is not None \
                and modality in used and shape[2] != expected_dims[index]:
            raise problem(f"has feature width {shape[2]} but the config expects "
                          f"{expected_dims[index]} (feature_dims[{index}])",
                          "set feature_dims in the config to the file's widths or use the "
                          "feature file the config was written for", "train", key)
        feature_dims.append(None if shape is None else int(shape[2]))
        seq_lens.append(None if shape is None else int(shape[1]))

    _check_no_leak(data, problem)
    return {"feature_dims": feature_dims, "seq_lens": seq_lens}


def _missing_key_fix(key: str) -> str:
    if key == "text_bert":
        return ("use_bert needs token ids in 'text_bert' (samples, 3, length); add them or set "
                "use_bert false to use the precomputed 'text' features")
    if key == "text":
        return ("without use_bert the model reads precomputed 'text' features; add them or set "
                "use_bert true to encode 'text_bert'")
    if key.endswith("_lengths"):
        return (f"unaligned data needs '{key}' (real frames per sample); add it, or use aligned "
                f"data, or drop that modality")
    if key in ("audio", "vision"):
        return (f"MMSA's loader reads '{key}' whatever the model's modalities; add it to every "
                f"split (for a modality the model leaves out, zeros will do)")
    return f"add '{key}' (one entry per sample) to every split"


def _shape_if_sequence(value, is_text_bert: bool):
    if value is None:
        return None
    shape = np.shape(value)
    if len(shape) != 3:
        return None
    # text_bert is (samples, 3, length); report it as (samples, length, -) like the others.
    return (shape[0], shape[2], shape[1]) if is_text_bert else shape


def _check_split(split_data, split, used, feature_keys, need_lengths, min_length, label_range,
                 problem, whole_labels) -> dict[str, tuple]:
    counts = {}
    for key in PER_SAMPLE_KEYS:
        if key in split_data:
            try:
                counts[key] = len(split_data[key])
            except TypeError as exc:
                raise problem("has no length (not a list or array)",
                              "store one entry per sample", split, key) from exc
    n_samples = counts["id"]
    if n_samples == 0:
        raise problem("is empty (0 samples)",
                      "every split needs samples; regenerate the file or re-split the data",
                      split)
    disagree = {key: count for key, count in counts.items() if count != n_samples}
    if disagree:
        listed = ", ".join(f"'{key}' {count}" for key, count in disagree.items())
        raise problem(f"sample counts disagree: 'id' has {n_samples} but {listed}",
                      "every per-sample key of a split must have one entry per sample; "
                      "regenerate the file", split)
    for position, clip_id in enumerate(split_data["id"]):
        if not isinstance(clip_id, str):
            raise problem(f"entry {position} is a {type(clip_id).__name__}, not a str",
                          "store clip ids as strings 'video_clip'", split, "id")

    shapes: dict[str, tuple] = {}
    for modality in used:
        key = feature_keys[modality]
        if key == "text_bert":
            array = _text_bert(split_data, split, problem)
            shapes[key] = (array.shape[0], array.shape[2], array.shape[1])
        else:
            array = _sequence_features(split_data, split, key, problem,
                                       allow_neg_inf=(key == "audio"))
            shapes[key] = array.shape
        if need_lengths and modality in "av":
            _lengths(split_data, split, f"{key}_lengths", array.shape[1], min_length, problem)
    _labels(split_data, split, label_range, problem, whole_labels)
    return shapes


def _check_splits_agree(shapes: dict[str, dict[str, tuple]], problem) -> None:
    train = shapes["train"]
    for split in SPLITS[1:]:
        for key, train_shape in train.items():
            shape = shapes[split][key]
            if key == "text_bert":
                what = "length"
                same = shape[1] == train_shape[1]
                seen, expected = shape[1], train_shape[1]
            else:
                what = "(length, dim)"
                same = shape[1:] == train_shape[1:]
                seen, expected = tuple(shape[1:]), tuple(train_shape[1:])
            if not same:
                raise problem(f"has {what} {seen} but train has {expected}",
                              "all splits must be padded to one length and share feature "
                              "widths; regenerate the file with one extractor setting",
                              split, key)


def _check_no_leak(data: dict, problem) -> None:
    for first, second in combinations(SPLITS, 2):
        shared = set(data[first]["id"]) & set(data[second]["id"])
        if shared:
            raise problem(f"{len(shared)} clip id(s) appear in both '{first}' and '{second}' "
                          f"(e.g. '{min(shared)}'), a leak that inflates the scores",
                          "split the data so that every clip (ideally every video) is in one "
                          "split only", second, "id")


def load_and_validate(path, **kwargs) -> tuple[dict, dict]:
    """Load the MMSA feature pickle at `path` and validate it; return ``(data, info)``.

    kwargs are those of ``validate_features`` (use_bert, modalities, expected_dims, label_range,
    need_lengths, min_length, whole_labels). A missing, unreadable or non-pickle file, or one
    that does not hold a dict, raises FeatureFileError with one line.
    """
    path = Path(path)
    problem = _Problem(str(path))
    if not path.exists():
        raise problem("feature file not found",
                      "check featurePath / custom_feature in the config (relative paths are taken "
                      "from the current directory)")
    if not path.is_file():
        raise problem("is not a file", "point featurePath / custom_feature at the .pkl file itself")
    try:
        with path.open("rb") as file:
            data = pickle.load(file)
    except PermissionError as exc:
        raise problem(f"cannot be read ({exc.strerror})",
                      "fix the file's permissions or copy it somewhere readable") from exc
    except OSError as exc:
        raise problem(f"cannot be read ({exc.strerror or exc})",
                      "check the disk and the file, or copy it again") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as exc:
        raise problem(f"is not a readable pickle ({type(exc).__name__}: {exc})",
                      "the file is truncated or not an MMSA feature file; download or generate "
                      "it again") from exc
    if not isinstance(data, dict):
        raise problem(f"holds a {type(data).__name__}, not a dict of splits",
                      "MMSA feature files are dicts {'train': {...}, 'valid': {...}, "
                      "'test': {...}}")
    return data, validate_features(data, path=str(path), **kwargs)
