"""How a model's training cost grows with the data size and the sequence length (MOSEI shapes).

    python benchmarks/scaling.py                      # -> benchmarks/scaling.md, scaling.png
    python benchmarks/scaling.py --models "iidaf[preset=lite]" --train-size 4096
    python benchmarks/scaling.py --quick --out DIR    # a check that it runs: tiny sizes
    python benchmarks/scaling.py --device cuda --out DIR             # the same on a GPU

Data: synthetic MOSEI-shaped clips in MMSA's unaligned layout (audio 74 and vision 35 wide, text
through the frozen offline stand-in encoder from `text_bert`, 50 tokens, run on every batch: no
cache of its outputs, so the encoder's forward is in every point), read by MMSA's loader.
- data size: train splits of `--fractions` (0.25, 0.5, 1) x `--train-size` (MOSEI's 16,326)
  samples, audio and vision `--size-length` frames (default 50);
- sequence length: audio and vision `--lengths` (50, 125, 250, 500) frames, at
  `--length-samples` train samples (default 1,024).
Each point runs in a fresh process: it loads the data, builds the model, and trains one real
epoch with the model's own trainer (every loss and the critic step, data loading included),
timed up to its first validation; the peak resident set (VmHWM) is counted from after the
imports, so it holds the data and the model. The growth exponent is the least-squares slope of
log time against log N (or L). With `--device cuda` each point trains on the GPU (timed with
`torch.cuda.synchronize`) and its peak `torch.cuda.max_memory_allocated` is added.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import speed  # noqa: E402  (benchmarks/speed.py: the run arguments, the memory counters)
from mmsa_iidaf import registry
from mmsa_iidaf.data.synthetic import write_dataset
from mmsa_iidaf.errors import UserError

DATASET = "mosei"
MOSEI_TRAIN = 16326
HERE = Path(__file__).resolve().parent
TEXT_WIDTH = 48  # the precomputed `text` no model here reads (text comes through the encoder)


def data_file(directory: Path, n_train: int, length: int, batch_size: int) -> Path:
    path = directory / f"mosei-{n_train}-{length}.pkl"
    if not path.exists():
        write_dataset(path, preset=DATASET, n_train=n_train, n_valid=batch_size,
                      n_test=batch_size, seq_lens=(50, length, length), dims=(TEXT_WIDTH, 74, 35),
                      seed=0)
    return path


def _epoch_child(request: dict, answer) -> None:
    torch.set_num_threads(request["threads"])
    device = torch.device(request["device"])
    speed._reset_peak_rss()
    args, _ = speed.run_args(tuple(request["model"]), Path(request["feature_file"]), "encoder",
                             device, Path(request["work_dir"]), request["overrides"],
                             dataset=DATASET)
    torch.manual_seed(1)
    start = time.perf_counter()
    loaders = registry.build_dataloaders(args, 0, splits=("train", "valid"))
    loaded = time.perf_counter()
    model = registry.build_model(args).to(device)
    trainer = registry.build_trainer(args)
    stop = speed._StopAtValidation(device)
    began = time.perf_counter()
    try:
        trainer.do_train(model, {"train": loaders["train"], "valid": stop, "test": stop})
    except speed._TrainingPassDone:
        pass
    point = {"epoch_s": stop.reached - began, "load_s": loaded - start,
             "peak_rss_mb": speed._status_mb("VmHWM")}
    if device.type == "cuda":
        point["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    answer.put(point)


def measure_point(spec, feature_file: Path, options, work_dir: Path) -> dict:
    request = {"model": spec, "feature_file": str(feature_file), "work_dir": str(work_dir),
               "threads": options.threads, "overrides": options.overrides,
               "device": options.device}
    return speed.in_fresh_process(_epoch_child, request, f"{spec[0]} on {feature_file.name}")


def exponent(xs: list[float], ys: list[float]) -> float:
    """The slope of log y against log x: 1 is linear growth, 2 quadratic."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def measure(options) -> dict:
    models = speed.parse_models(options.models)
    device = torch.device(options.device)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": options.threads, "torch": torch.__version__, "models": {}}
    with tempfile.TemporaryDirectory(prefix="mmsa_iidaf_scaling_") as temp:
        work_dir = Path(temp)
        for spec in models:
            batch = registry.config_for(spec[1], DATASET).get("batch_size", 32)
            rows = []
            for fraction in options.fractions:
                n = max(batch, round(fraction * options.train_size))
                point = measure_point(spec, data_file(work_dir, n, options.size_length, batch),
                                      options, work_dir)
                rows.append({"sweep": "data size", "n_train": n, "length": options.size_length,
                             **point})
                print(json.dumps({spec[0]: rows[-1]}), flush=True)
            for length in options.lengths:
                point = measure_point(
                    spec, data_file(work_dir, options.length_samples, length, batch), options,
                    work_dir)
                rows.append({"sweep": "sequence length", "n_train": options.length_samples,
                             "length": length, **point})
                print(json.dumps({spec[0]: rows[-1]}), flush=True)
            sizes = [r for r in rows if r["sweep"] == "data size"]
            lengths = [r for r in rows if r["sweep"] == "sequence length"]
            results["models"][spec[0]] = {
                "points": rows,
                "time_exponent_n": exponent([r["n_train"] for r in sizes],
                                            [r["epoch_s"] for r in sizes]),
                "time_exponent_length": exponent([r["length"] for r in lengths],
                                                 [r["epoch_s"] for r in lengths]),
            }
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory_key, memory_unit = (("peak_gpu_mb", "peak GPU memory (MB)")
                               if _on_gpu(results) else ("peak_rss_mb", "peak RSS (MB)"))
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for name, model in results["models"].items():
        for column, (sweep, key, label) in enumerate((
                ("data size", "n_train", "train samples N"),
                ("sequence length", "length", "audio / vision frames L"))):
            points = [p for p in model["points"] if p["sweep"] == sweep]
            xs = [p[key] for p in points]
            axes[0][column].plot(xs, [p["epoch_s"] for p in points], "o-", label=name)
            axes[1][column].plot(xs, [p[memory_key] for p in points], "o-", label=name)
            axes[1][column].set_xlabel(label)
    axes[0][0].set_title("against the data size")
    axes[0][1].set_title("against the sequence length")
    for row, unit in ((0, "epoch time (s)"), (1, memory_unit)):
        for column in (0, 1):
            axes[row][column].set_ylabel(unit)
            axes[row][column].grid(alpha=0.3)
            axes[row][column].legend()
    where = results["device"] if _on_gpu(results) else f"CPU, {results['threads']} threads"
    figure.suptitle(f"Training cost, MOSEI-shaped synthetic data, {where} "
                    f"(benchmarks/scaling.py)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _on_gpu(results: dict) -> bool:
    return any("peak_gpu_mb" in p for m in results["models"].values() for p in m["points"])


def markdown(results: dict, command: str) -> str:
    on_gpu = _on_gpu(results)
    lines = ["# Training cost against data size and sequence length", "",
             f"`{command}`", "",
             f"Device: {results['device']}, {results['threads']} threads, torch "
             f"{results['torch']}. One real epoch per point, in a fresh process "
             f"(benchmarks/scaling.py's docstring has the protocol).", "",
             "| model | sweep | N train | L (audio, vision) | epoch (s) | data loading (s) | "
             "peak RSS (MB) |" + (" peak GPU memory (MB) |" if on_gpu else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if on_gpu else "")]
    for name, model in results["models"].items():
        for p in model["points"]:
            lines.append(f"| `{name}` | {p['sweep']} | {p['n_train']} | {p['length']} | "
                         f"{p['epoch_s']:.1f} | {p['load_s']:.1f} | {p['peak_rss_mb']:.0f} |"
                         + (f" {p['peak_gpu_mb']:.0f} |" if on_gpu else ""))
    lines.append("")
    for name, model in results["models"].items():
        lines.append(f"- `{name}`: epoch time grows as N^{model['time_exponent_n']:.2f} in the "
                     f"data size and L^{model['time_exponent_length']:.2f} in the sequence "
                     f"length (least-squares slope of log time on log N, log L).")
    return "\n".join(lines) + "\n"


def parse(argv):
    parser = argparse.ArgumentParser(prog="python benchmarks/scaling.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="iidaf",
                        help="comma-separated; NAME[KEY=VALUE;...] for a variant, as in speed.py")
    parser.add_argument("--train-size", type=int, default=MOSEI_TRAIN)
    parser.add_argument("--fractions", default="0.25,0.5,1")
    parser.add_argument("--size-length", type=int, default=50)
    parser.add_argument("--lengths", default="50,125,250,500")
    parser.add_argument("--length-samples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu",
                        help="cpu (default) or cuda[:N]: where each point trains")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="[MODEL.]KEY=VALUE")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and lengths: a check that it runs, not a measurement")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder of scaling.md, scaling.png, scaling.json (default benchmarks/)")
    options = parser.parse_args(argv)
    options.fractions = [float(x) for x in options.fractions.split(",")]
    options.lengths = [int(x) for x in options.lengths.split(",")]
    if options.quick:
        options.train_size, options.length_samples = 128, 64
        options.lengths = [8, 16]
        options.fractions = [0.5, 1.0]
    return options


def main(argv=None) -> int:
    options = parse(argv)
    torch.set_num_threads(options.threads)
    try:
        options.overrides = [speed.parse_setting(item) for item in options.overrides]
        for _, name, _ in speed.parse_models(options.models):
            registry.check_names(name, DATASET)
        speed.check_device(options.device)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = measure(options)
    command = "python benchmarks/scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    (options.out / "scaling.md").write_text(markdown(results, command.strip()))
    plot(results, options.out / "scaling.png")
    print(markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
