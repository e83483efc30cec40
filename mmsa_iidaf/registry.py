"""Names: the models, datasets and config sections MMSA can find, and the hooks that make it look.

MMSA 2.2.1 has no plugin API: its model and trainer maps are built inside `AMIO.__init__` and
`ATIO.__init__`, its config comes from one packaged JSON file, `MMDataset` knows three datasets
and `MetricsTop` three metric sets. `open_mmsa()` makes each of these look names up here. This
module only names things; running them is `runs` (one run) and `experiments` (many), and
`wiring.install()` (run by `import mmsa_iidaf`) puts it all together. Nothing installed on disk
is edited.

Adding a model:  register_model("name", ModelClass, TrainerClass) and a "name" section in
configs/config_regression.json (and config_tune.json for `-t`).
Adding a dataset: register_dataset("name", task=..., metrics=..., label_range=...) and a
"datasetCommonParams" entry for it in the same config files.
"""
from __future__ import annotations

import copy
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from . import encoder_cache
from .errors import ConfigError, UnknownNameError
from .text_encoders import resolve_pretrained

logger = logging.getLogger("MMSA")

MetricsFactory = Callable[[str], Callable]  # train_mode -> metrics(y_pred, y_true) -> dict
# The seeds MMSA_run trains when given none (written inline in MMSA/run.py).
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model: type
    trainer: type
    # Whether the model trains with cross-entropy on a classification dataset; MMSA's models
    # regress the label, and their output is thresholded by the dataset's metrics.
    classification: bool = False
    # Completes and checks a run's config (raises ConfigError), so that bad settings stop the
    # run before MMSA makes its folders; None: checked when the model is built.
    settings: Callable | None = None


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    task: str  # "regression" or "classification"
    metrics: MetricsFactory
    label_range: tuple[float, float]
    # A model's settings for this dataset, when the config has none: those of this dataset.
    settings_like: str | None = None


MODELS: dict[str, ModelEntry] = {}
DATASETS: dict[str, DatasetEntry] = {}
# Config sections given at registration, merged over configs/ (per kind: "regression", "tune").
REGISTERED_CONFIG: dict[str, dict] = {"regression": {}, "tune": {}}
# Called with each MMDataset after it has loaded its split (modality selection, caches).
DATA_HOOKS: list[Callable] = []


def register_model(name: str, model: type, trainer: type, *, classification: bool = False,
                   config: dict | None = None, tune_config: dict | None = None,
                   settings: Callable | None = None) -> None:
    """Make `name` a model of MMSA. `config`/`tune_config`: its section of config_regression.json
    / config_tune.json ({"commonParams": ..., "datasetParams": ...}), when not in configs/.
    `settings(args)`: the model's own config check, run on a run's config before any training."""
    import MMSA.run

    name = name.lower()
    MODELS[name] = ModelEntry(name, model, trainer, classification, settings)
    if name.upper() not in map(str.upper, MMSA.run.SUPPORTED_MODELS):
        MMSA.run.SUPPORTED_MODELS.append(name)
    for kind, section in (("regression", config), ("tune", tune_config)):
        if section is not None:
            REGISTERED_CONFIG[kind][name] = section


def register_dataset(name: str, *, task: str, metrics: MetricsFactory,
                     label_range: tuple[float, float],
                     settings_like: str | None = None, config: dict | None = None) -> None:
    """Make `name` a dataset of MMSA, read from MMSA's standard feature-pickle layout.
    `metrics(train_mode)` returns the metric function; `settings_like`: a dataset whose
    per-model settings (datasetParams) a model uses here when the config gives none;
    `config`: its datasetCommonParams entry ({"unaligned": {...}, "aligned": {...}}), when not
    in configs/."""
    if task not in ("regression", "classification"):
        raise ValueError(f"task must be 'regression' or 'classification', not {task!r}")
    import MMSA.run

    name = name.lower()
    DATASETS[name] = DatasetEntry(name, task, metrics, label_range, settings_like)
    if name.upper() not in MMSA.run.SUPPORTED_DATASETS:
        MMSA.run.SUPPORTED_DATASETS.append(name.upper())
    if config is not None:
        for kind in REGISTERED_CONFIG:
            REGISTERED_CONFIG[kind].setdefault("datasetCommonParams", {})[name] = config


# MMSA's own models, as its CLI offers them (MMSA.run.SUPPORTED_MODELS also lists ours).
MMSA_MODELS = ("lf_dnn", "ef_lstm", "tfn", "lmf", "mfn", "graph_mfn", "mult", "bert_mag", "misa",
               "mfm", "mlf_dnn", "mtfn", "mlmf", "self_mm", "mmim")


def mmsa_model_names() -> list[str]:
    return [name for name in MMSA_MODELS if name not in MODELS]


def model_names() -> list[str]:
    return mmsa_model_names() + sorted(MODELS)


def dataset_names() -> list[str]:
    return ["mosi", "mosei", "sims"] + sorted(DATASETS)


def check_names(model_name: str, dataset_name: str) -> None:
    if model_name.lower() not in model_names():
        raise UnknownNameError(
            f"unknown model '{model_name}': choose one of {', '.join(model_names())}"
        )
    if dataset_name.lower() not in dataset_names():
        raise UnknownNameError(
            f"unknown dataset '{dataset_name}': choose one of {', '.join(dataset_names())}"
        )


def dataset_task(dataset_name: str) -> str:
    entry = DATASETS.get(dataset_name.lower())
    return entry.task if entry else "regression"


def label_range(dataset_name: str) -> tuple[float, float] | None:
    entry = DATASETS.get(dataset_name.lower())
    if entry:
        return entry.label_range
    return {"mosi": (-3.0, 3.0), "mosei": (-3.0, 3.0), "sims": (-1.0, 1.0)}[dataset_name.lower()]


def mae_clip(dataset_name: str) -> tuple[float, float] | None:
    """The range MMSA's MAE clips labels and predictions to before scoring, or None: its SIMS
    regression metric clips both to [-1, 1] (`MetricsTop.__eval_sims_regression`); MOSI's,
    MOSEI's and the plugin's datasets' metrics score them as they are."""
    return (-1.0, 1.0) if dataset_name.lower() == "sims" else None


def train_mode(model_name: str, dataset_name: str) -> str:
    """Cross-entropy only where both the dataset and the model are built for it."""
    entry = MODELS.get(model_name.lower())
    if dataset_task(dataset_name) == "classification" and entry and entry.classification:
        return "classification"
    return "regression"


def check_model_settings(model_name: str, args) -> None:
    """A plugin model's own config check on a run's config (ConfigError); nothing for MMSA's."""
    entry = MODELS.get(model_name.lower())
    if entry and entry.settings:
        entry.settings(args)


def metrics_for(args) -> Callable:
    """MMSA's metric function for the run's dataset and train mode (plugin datasets included)."""
    from MMSA.utils.metricsTop import MetricsTop

    return MetricsTop(args["train_mode"]).getMetics(args["dataset_name"])


def build_model(args) -> torch.nn.Module:
    """The model MMSA trains for `args`: MMSA's AMIO wrapper around the registered class."""
    from MMSA.models.AMIO import AMIO

    return AMIO(args)


def build_trainer(args):
    """The trainer MMSA_run uses for `args` (plugin models' included)."""
    from MMSA.trains.ATIO import ATIO

    return ATIO().getTrain(args)


# MMSA's trainers hand these models audio and vision as (features, lengths) tuples; its other
# models get the bare tensors. Plugin models take the lengths as keywords.
_LENGTH_TUPLE_MODELS = ("self_mm", "mmim")


def model_inputs(args, batch: dict) -> tuple[tuple, dict]:
    """The (positional, keyword) arguments `args`'s trainer passes its model for an MMSA batch,
    on `args.device`: what to call the model with outside the trainer (latency, profiling)."""
    text, audio, vision = (batch[key].to(args["device"]) for key in ("text", "audio", "vision"))
    lengths = {key: torch.as_tensor(batch[key])
               for key in ("audio_lengths", "vision_lengths") if key in batch}
    if args["model_name"] in MODELS:
        return (text, audio, vision), {k: v.to(args["device"]) for k, v in lengths.items()}
    if args["model_name"] in _LENGTH_TUPLE_MODELS:
        # Where MMSA's trainers leave them, on the CPU: pack_padded_sequence refuses GPU lengths.
        return (text, (audio, lengths["audio_lengths"]), (vision, lengths["vision_lengths"])), {}
    return (text, audio, vision), {}


def seed_everything(seed: int) -> None:
    """MMSA's seeding of a run (torch, numpy, random; deterministic cuDNN)."""
    from MMSA.utils import setup_seed

    setup_seed(seed)


def device_for(gpu_ids: list) -> torch.device:
    """MMSA's device choice: the GPU of `gpu_ids`, the freest GPU for [], else the CPU."""
    from MMSA.utils import assign_gpu

    return assign_gpu(list(gpu_ids))


def build_dataloaders(args, num_workers: int = 0,
                      splits: tuple[str, ...] = ("train", "valid", "test")) -> dict:
    """MMSA's loaders for `splits` of `args` (the plugin's data hooks included), built as
    MMSA's `MMDataLoader` builds them; it always builds all three splits, and tuning must never
    build the test split."""
    from MMSA.data_loader import MMDataset
    from torch.utils.data import DataLoader

    if "train" not in splits:
        raise ValueError(f"splits {splits}: MMSA's sequence lengths come from the train split")
    datasets = {split: MMDataset(args, mode=split) for split in splits}
    if "seq_lens" in args:
        args["seq_lens"] = datasets["train"].get_seq_len()
    return {split: DataLoader(dataset, batch_size=args["batch_size"], num_workers=num_workers,
                              shuffle=True)
            for split, dataset in datasets.items()}


# --- configuration ----------------------------------------------------------------------------

def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"config file {path} is not valid JSON ({error}): fix or remove it"
        ) from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read ({error.strerror or error}): "
                          f"check the path given with -c") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} holds a JSON {type(config).__name__}, not an "
                          f"object of model sections: see MMSA's config_regression.json")
    return config


def mmsa_config_file(kind: str) -> Path:
    import MMSA

    return Path(MMSA.__file__).parent / "config" / f"config_{kind}.json"


def plugin_config_dir() -> Path:
    """The plugin's `configs/`: the repository's top-level folder in a source checkout or an
    editable install, `mmsa_iidaf/configs` in an installed wheel."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def _borrow_dataset_settings(config: dict) -> None:
    for dataset in DATASETS.values():
        if dataset.settings_like is None:
            continue
        for section in config.values():
            per_dataset = section.get("datasetParams") if isinstance(section, dict) else None
            if per_dataset and dataset.name not in per_dataset and dataset.settings_like in per_dataset:
                per_dataset[dataset.name] = copy.deepcopy(per_dataset[dataset.settings_like])


def merged_config(kind: str, config_file: str | Path | None = None) -> dict:
    """MMSA's packaged config; over it the plugin's `configs/`, then sections given at
    registration, then a user's config file."""
    config = _read_json(mmsa_config_file(kind))
    config = _deep_merge(config, _read_json(plugin_config_dir() / f"config_{kind}.json"))
    config = _deep_merge(config, REGISTERED_CONFIG[kind])
    _borrow_dataset_settings(config)
    if config_file and Path(config_file).resolve() != mmsa_config_file(kind).resolve():
        config = _deep_merge(config, _read_json(Path(config_file)))
    return config


def _config_with(getter: Callable, kind: str) -> Callable:
    """Wrap MMSA's get_config_* so that it reads the merged config; MMSA's own selection logic
    (aligned/unaligned, random choice when tuning) stays MMSA's."""

    def get_config(model_name, dataset_name, config_file=""):
        merged = merged_config(kind, config_file or None)
        if model_name not in merged:
            raise ConfigError(
                f"no '{model_name}' section in the config ({config_file or 'defaults'}): "
                f"add one or drop -c"
            )
        if dataset_name not in merged["datasetCommonParams"]:
            raise ConfigError(f"no datasetCommonParams entry for '{dataset_name}' in the config")
        section = merged[model_name]
        per_dataset = section.get("datasetParams") if isinstance(section, dict) else None
        if per_dataset is not None and dataset_name not in per_dataset:
            raise ConfigError(
                f"{model_name} has no settings for {dataset_name} in the config (its datasets: "
                f"{', '.join(per_dataset) or 'none'}): use one of those, or add a "
                f"datasetParams entry for {dataset_name} with -c")
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(merged, f)
        try:
            return getter(model_name, dataset_name, f.name)
        finally:
            Path(f.name).unlink()

    get_config.__wrapped__ = getter
    return get_config


def config_for(model_name: str, dataset_name: str, config_file=None, *, tune: bool = False):
    """The config MMSA_run would start from (before `config=` overrides)."""
    import MMSA.config

    getter = MMSA.config.get_config_tune if tune else MMSA.config.get_config_regression
    return getter(model_name.lower(), dataset_name.lower(), str(config_file or ""))


# --- MMSA hooks -------------------------------------------------------------------------------

def _amio_init(original: Callable) -> Callable:
    def __init__(self, args):
        entry = MODELS.get(args["model_name"])
        if entry is None:
            return original(self, args)
        torch.nn.Module.__init__(self)
        self.need_model_aligned = args.get("need_model_aligned", None)
        if self.need_model_aligned:
            from MMSA.models.subNets import AlignSubNet

            self.alignNet = AlignSubNet(args, "avg_pool")
            if "seq_lens" in args.keys():
                args["seq_lens"] = self.alignNet.get_seq_len()
        self.Model = entry.model(args)

    return __init__


def _atio_get_train(original: Callable) -> Callable:
    def getTrain(self, args):
        entry = MODELS.get(args["model_name"])
        return entry.trainer(args) if entry else original(self, args)

    return getTrain


def _dataset_init(original: Callable) -> Callable:
    def __init__(self, args, mode="train"):
        if args["dataset_name"] in DATASETS:
            # Plugin datasets use MMSA's standard pickle layout: MMSA's own reader loads them.
            self.mode, self.args = mode, args
            self._MMDataset__init_mosi()
        else:
            original(self, args, mode)
        for hook in DATA_HOOKS:
            hook(self)

    return __init__


def _metrics_init(original: Callable) -> Callable:
    def __init__(self, train_mode):
        original(self, train_mode)
        self.train_mode = train_mode

    return __init__


def _get_metrics(original: Callable) -> Callable:
    def getMetics(self, datasetName):
        entry = DATASETS.get(datasetName.lower())
        return entry.metrics(self.train_mode) if entry else original(self, datasetName)

    return getMetics


def select_modalities(dataset) -> None:
    """MMSA's models cannot drop a modality: the features of those not asked for are zeroed (for
    `iidaf`, which builds no branch for them, this changes nothing)."""
    modalities = dataset.args.get("modalities", "tav")
    for letter, attribute in (("t", "text"), ("a", "audio"), ("v", "vision")):
        if letter not in modalities:
            setattr(dataset, attribute, np.zeros_like(getattr(dataset, attribute)))


def text_token_ids(dataset) -> torch.Tensor:
    """The input ids (N, L) of an MMSA dataset's split that reads text as `text_bert` (its
    `text` array, (N, 3, L): ids, mask, segments); read from the array, not through the items
    (which would build every modality of each) nor the loader (which would draw from the
    shuffling RNG and change the run)."""
    return torch.as_tensor(dataset.text[:, 0])


def _bert_encoder_init(original: Callable) -> Callable:
    def __init__(self, use_finetune=False, transformers="bert", pretrained="bert-base-uncased"):
        original(self, use_finetune, transformers, pretrained)
        self.directory = resolve_pretrained(pretrained)

    return __init__


def _bert_encoder_forward(original: Callable) -> Callable:
    def forward(self, text):
        cached = None if self.use_finetune else encoder_cache.lookup(self.directory, text)
        return original(self, text) if cached is None else cached

    return forward


_opened = False


def open_mmsa() -> None:
    """Make MMSA's model, trainer, dataset, metric, config and BERT lookups consult this
    registry (idempotent). Data hooks are added to `DATA_HOOKS` by whoever needs them."""
    global _opened
    if _opened:
        return
    import MMSA.config
    import MMSA.run
    from MMSA.data_loader import MMDataset
    from MMSA.models.AMIO import AMIO
    from MMSA.models.subNets import BertTextEncoder
    from MMSA.trains.ATIO import ATIO
    from MMSA.utils.metricsTop import MetricsTop

    AMIO.__init__ = _amio_init(AMIO.__init__)
    ATIO.getTrain = _atio_get_train(ATIO.getTrain)
    MMDataset.__init__ = _dataset_init(MMDataset.__init__)
    MetricsTop.__init__ = _metrics_init(MetricsTop.__init__)
    MetricsTop.getMetics = _get_metrics(MetricsTop.getMetics)
    for module in (MMSA.config, MMSA.run):
        module.get_config_regression = _config_with(MMSA.config.get_config_regression, "regression")
        module.get_config_tune = _config_with(MMSA.config.get_config_tune, "tune")
    BertTextEncoder.__init__ = _bert_encoder_init(BertTextEncoder.__init__)
    BertTextEncoder.forward = _bert_encoder_forward(BertTextEncoder.forward)
    _opened = True
