"""`import mmsa_iidaf` in one function: the floors of the plugin, joined in MMSA.

Above `registry` (names), `compat` (MMSA's defects) and `runs` (one run), so that none of them
needs another: `install()` applies the fixes, makes MMSA look names up in the registry, hangs the
per-run hooks on MMSA's seed loop, registers the plugin's models and datasets, and puts the
checked `MMSA_run` in MMSA's place.
"""
from __future__ import annotations

from . import compat, encoder_cache, registry, runs
from .models.iidaf.settings import iidaf_settings
from .text_encoders import computes_pretrained_states

_installed = False


def cache_frozen_text(dataset) -> None:
    """A data hook: a frozen encoder's text states, computed once per split (with the layers the
    plugin's models may drop; MMSA's models use every layer)."""
    args = dataset.args
    if runs.frozen_text_encoder(args) and args.get("cache_text_states", True):
        # Every plugin model reads its text layers through IIDAF's settings (preset included).
        layers = 0
        if args.get("model_name") in registry.MODELS:
            settings = iidaf_settings(args)
            if not computes_pretrained_states(settings.text_vocabulary):
                return  # no cached states to read
            layers = settings.text_layers
        encoder_cache.precompute(args["pretrained"], dataset.text, layers)


def install() -> None:
    """Open MMSA to registration, apply the runtime fixes, and register this plugin (idempotent)."""
    global _installed
    if _installed:
        return
    import MMSA
    import MMSA.run

    compat.apply_all()
    registry.open_mmsa()
    registry.DATA_HOOKS.extend([registry.select_modalities, cache_frozen_text])
    compat.RUN_HOOKS["before"].append(runs.prepare_args)
    compat.RUN_HOOKS["tested"].append(runs.check_finite_test)
    compat.RUN_HOOKS["after"].extend([runs.record_seed, runs.write_predictions,
                                      runs.write_diagnostics])

    from . import plugin

    plugin.register_all()
    entry_point = runs.make_mmsa_run(MMSA.run.MMSA_run)
    MMSA.MMSA_run = MMSA.run.MMSA_run = entry_point
    _installed = True
