"""Synthetic UR-FUNNY feature files in the official release layout, around real labels and folds.

The real release's feature files could not be obtained here; its label and fold files could. This
module writes the missing files (COVAREP, OpenFace and text, in either text layout) for the given
keys, so that the converter, its tests and its benchmark run on the real split with features whose
content is known: a planted humour signal that a model can learn, and a chosen share of utterances
whose modalities disagree in word count (which the converter must drop).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .ur_funny import (
    AUDIO_DIM,
    COVAREP_FILE,
    FOLDS_FILE,
    LABEL_FILE,
    LANGUAGE_FILE,
    OPENFACE_FILE,
    VISION_DIM,
    WORD_INDEX_FILE,
    WORD_LIST_FILE,
)

# Every word is a single token of the bert-base-uncased vocabulary, so tokenization is reversible.
NEUTRAL_WORDS = (
    "the we people world time think know really work life year about because then there this "
    "that what when would little right thing way day new good first see make going said like just "
    "so very one two many idea story problem water city school money brain design data science"
).split()
HUMOUR_WORDS = ("laugh funny joke crazy weird ridiculous silly banana monkey naked stupid "
                "awkward").split()
TEXT_LAYOUTS = ("word_indexes", "language")
# At signal 1, each word of a humorous punchline is a humour word with this probability, and these
# acoustic/visual channels are shifted by this many standard deviations. Text then carries the most
# signal and audio/vision a weaker one (test accuracy about 90 % / 67 % / 66 % for a logistic
# probe on the real split), as on the real data, where text is the strongest modality.
HUMOUR_WORD_RATE = 0.2
SIGNAL_CHANNELS = slice(0, 8)
CHANNEL_SHIFT = 0.1
SECONDS_PER_WORD = 0.3


@dataclass(frozen=True)
class SyntheticRelease:
    """Where the release was written and what was planted in it."""

    directory: Path
    punchlines: dict
    mismatched_keys: frozenset


def write_synthetic_release(out_dir, labels: dict, folds: dict, *, seed: int = 0,
                            text_source: str = "word_indexes", mismatch_fraction: float = 0.0,
                            max_words: int = 20, signal: float = 1.0,
                            max_context_sentences: int = 2) -> SyntheticRelease:
    """Write a complete UR-FUNNY release folder for the keys of `labels` into `out_dir`.

    `labels` (key -> 1/0) and `folds` ('train'/'dev'/'test' -> keys) are written as the official
    label and fold files; for every labelled key the COVAREP (words, 81) and OpenFace (words, 75)
    punchline and context features are written, and the text as ``word_embedding_indexes_sdk.pkl``
    + ``word_list.pkl`` (`text_source='word_indexes'`) or ``language_sdk.pkl`` (`'language'`).
    Punchlines have 1..`max_words` words and 0..`max_context_sentences` context sentences. Humour
    is planted with strength `signal` (0 plants none, 1 is the default mix): each word of a
    humorous punchline comes from a humour vocabulary with probability 0.2 * `signal`, and its
    first eight acoustic and visual channels are shifted by 0.1 * `signal` standard deviations.
    A `mismatch_fraction` of the labelled keys gets one extra acoustic or visual row, so its
    modalities disagree in word count. Returns the punchlines and the mismatched keys.
    """
    if text_source not in TEXT_LAYOUTS:
        raise ValueError(f"text_source={text_source!r}; expected one of {TEXT_LAYOUTS}")
    if not 0.0 <= mismatch_fraction <= 1.0:
        raise ValueError(f"mismatch_fraction={mismatch_fraction}; expected a value in [0, 1]")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocabulary = NEUTRAL_WORDS + HUMOUR_WORDS
    humour_start = len(NEUTRAL_WORDS)
    humour_word_rate = min(1.0, HUMOUR_WORD_RATE * signal)
    shift = CHANNEL_SHIFT * signal

    keys = list(labels)
    mismatched = {keys[i] for i in rng.choice(len(keys), size=round(mismatch_fraction * len(keys)),
                                              replace=False)}
    covarep, openface, word_indexes, language, punchlines = {}, {}, {}, {}, {}

    def sentence(length: int, humorous: bool) -> list[int]:
        indexes = rng.integers(0, humour_start, size=length)
        if humorous:
            cues = rng.random(length) < humour_word_rate
            indexes[cues] = rng.integers(humour_start, len(vocabulary), size=int(cues.sum()))
        return indexes.tolist()

    def features(words: int, width: int, offset: float) -> np.ndarray:
        values = rng.standard_normal((words, width), dtype=np.float32)
        values[:, SIGNAL_CHANNELS] += np.float32(offset)
        return values

    for key in keys:
        label = int(labels[key])
        punch = sentence(int(rng.integers(1, max_words + 1)), humorous=bool(label))
        context = [sentence(int(rng.integers(1, max_words + 1)), humorous=False)
                   for _ in range(int(rng.integers(0, max_context_sentences + 1)))]
        audio_words = vision_words = len(punch)
        if key in mismatched:
            if rng.random() < 0.5:
                audio_words += 1
            else:
                vision_words += 1
        covarep[key] = {
            "punchline_features": features(audio_words, AUDIO_DIM, shift * label),
            "context_features": [features(len(s), AUDIO_DIM, 0.0) for s in context],
        }
        openface[key] = {
            "punchline_features": features(vision_words, VISION_DIM, shift * label),
            "context_features": [features(len(s), VISION_DIM, 0.0) for s in context],
        }
        punchlines[key] = " ".join(vocabulary[i] for i in punch)
        if text_source == "word_indexes":
            word_indexes[key] = {"punchline_embedding_indexes": punch,
                                 "context_embedding_indexes": context}
        else:
            language[key] = {
                "punchline_sentence": punchlines[key],
                "context_sentences": [" ".join(vocabulary[i] for i in s) for s in context],
                "punchline_intervals": _word_intervals(len(punch)),
                "context_intervals": [_word_intervals(len(s)) for s in context],
            }

    files = {LABEL_FILE: {key: float(value) for key, value in labels.items()},
             FOLDS_FILE: {name: list(fold) for name, fold in folds.items()},
             COVAREP_FILE: covarep, OPENFACE_FILE: openface}
    if text_source == "word_indexes":
        files[WORD_INDEX_FILE] = word_indexes
        files[WORD_LIST_FILE] = list(vocabulary)
    else:
        files[LANGUAGE_FILE] = language
    for name, content in files.items():
        with open(out_dir / name, "wb") as handle:
            pickle.dump(content, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return SyntheticRelease(out_dir, punchlines, frozenset(mismatched))


def _word_intervals(words: int) -> list[list[float]]:
    return [[i * SECONDS_PER_WORD, (i + 1) * SECONDS_PER_WORD] for i in range(words)]
