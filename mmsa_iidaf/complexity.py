"""Model size and cost at a dataset's official shapes (the paper's Table 9), BERT excluded.

    python -m mmsa_iidaf.complexity -m iidaf -d mosi [--latency]

Parameters are counted without the BERT-family text encoder; FLOPs are counted by torch's own
`FlopCounterMode` for one sample whose text is BERT-width features (the encoder's output), so the
encoder is excluded there too. A multiply-add counts as two FLOPs (torch's convention).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from . import registry
from .data.synthetic import PRESETS
from .errors import UserError

BERT_BASE_WIDTH = 768


def _encoder_free_args(model_name: str, dataset_name: str, overrides: dict):
    args = registry.config_for(model_name, dataset_name)
    args.update(overrides)
    args.update(model_name=model_name, dataset_name=dataset_name, device=torch.device("cpu"),
                train_mode=registry.train_mode(model_name, dataset_name), use_bert=False)
    args.setdefault("modalities", "tav")
    args["feature_dims"] = [BERT_BASE_WIDTH, *args["feature_dims"][1:]]
    return args


def _sample(args) -> tuple[tuple, dict]:
    preset = PRESETS.get(args["dataset_name"])
    # MMSA's config lists MOSI's audio and vision lengths swapped; the presets hold the files'.
    lengths = preset.seq_lens["unaligned"] if preset else args["seq_lens"]
    (text_len, audio_len, vision_len) = lengths
    (text_dim, audio_dim, vision_dim) = args["feature_dims"]
    inputs = (torch.randn(1, text_len, text_dim), torch.randn(1, audio_len, audio_dim),
              torch.randn(1, vision_len, vision_dim))
    return inputs, {}


def count_flops(module: torch.nn.Module, *inputs, **kwargs) -> int:
    """FLOPs of one no-grad forward of `module`, attention included.

    The counter cannot see two fused paths, so both are turned off while counting: eval-mode
    Transformer layers' fast path, and the CPU's fused attention kernel
    (`_scaled_dot_product_flash_attention_for_cpu`, which has no FLOP formula in torch); SDPA's
    math backend computes the same products as matrix multiplications the counter counts."""
    counter = FlopCounterMode(display=False)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            module(*inputs, **kwargs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def measure(model_name: str, dataset_name: str, overrides: dict | None = None,
            latency_runs: int = 0) -> dict:
    """{'parameters': count, 'flops': per sample, 'latency_ms': mean CPU ms (if runs > 0)}."""
    args = _encoder_free_args(model_name, dataset_name, overrides or {})
    model = registry.build_model(args).eval()
    inputs, kwargs = _sample(args)
    result = {"parameters": sum(p.numel() for p in model.parameters()),
              "flops": count_flops(model, *inputs, **kwargs)}
    if latency_runs:
        with torch.no_grad():
            model(*inputs, **kwargs)
            start = time.perf_counter()
            for _ in range(latency_runs):
                model(*inputs, **kwargs)
        result["latency_ms"] = (time.perf_counter() - start) / latency_runs * 1000
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsa_iidaf.complexity",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("-m", "--model", default="iidaf")
    parser.add_argument("-d", "--dataset", default="mosi")
    parser.add_argument("--latency", type=int, default=0, metavar="RUNS",
                        help="also time RUNS single-sample forward passes on this CPU")
    options = parser.parse_args(argv)
    try:
        registry.check_names(options.model, options.dataset)
        result = measure(options.model, options.dataset, latency_runs=options.latency)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{options.model} on {options.dataset} (official shapes, BERT excluded): "
          f"{result['parameters'] / 1e6:.2f} M parameters, "
          f"{result['flops'] / 1e9:.3f} GFLOPs per sample"
          + (f", {result['latency_ms']:.1f} ms per sample on this CPU"
             if "latency_ms" in result else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
