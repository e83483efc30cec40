"""Runtime fixes for MMSA 2.2.1's known defects, one `Fix` per defect.

Each fix names its defect (the ids of the plugin-frame issue), replaces the smallest thing that
carries the defect (a module attribute, a method, a name a module imported) and can be reverted,
so a test can show the defect with the fix off and its absence with the fix on
(`with disabled("B1"): ...`). The same changes, as unified diffs against MMSA 2.2.1's sources, are
in `patches/` for upstream.

Where a defect sits inside a function body (B3, B4, B5, B6, B10, B11), the fix rewrites that
function's source text, and refuses to apply, loudly, if the text is not 2.2.1's.

Nothing here is called by users: `mmsa_iidaf.wiring.install()` applies every fix.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch

from .errors import TrainingDiverged

logger = logging.getLogger("MMSA")


@dataclass
class Fix:
    defect: str
    summary: str
    build: Callable[[], list[tuple[Any, str, Any]]]
    # (owner, attribute, original) triples, filled when applied.
    applied: list[tuple[Any, str, Any]] = field(default_factory=list)

    def apply(self) -> None:
        if self.applied:
            return
        for owner, attribute, replacement in self.build():
            self.applied.append((owner, attribute, getattr(owner, attribute)))
            setattr(owner, attribute, replacement)

    def revert(self) -> None:
        for owner, attribute, original in reversed(self.applied):
            setattr(owner, attribute, original)
        self.applied.clear()


FIXES: dict[str, Fix] = {}


def _fix(defect: str, summary: str):
    def register(build):
        FIXES[defect] = Fix(defect, summary, build)
        return build

    return register


def apply_all() -> None:
    for fix in FIXES.values():
        fix.apply()


@contextlib.contextmanager
def disabled(*defects: str):
    """Run a block with MMSA's original behaviour for `defects` (for tests that show a defect)."""
    off = [FIXES[d] for d in defects if FIXES[d].applied]
    for fix in off:
        fix.revert()
    try:
        yield
    finally:
        for fix in off:
            fix.apply()


class IncompatibleMMSA(RuntimeError):
    """The installed MMSA is not the 2.2.1 these fixes were written against."""


def rewrite_method(owner: type, attribute: str, edits: list[tuple]) -> Callable:
    """Recompile method `owner.attribute` from its source with each `old` text replaced by `new`.

    The source is compiled inside a class of the owner's name, so private names are mangled as in
    the original, with the module globals of the original, and a zero-argument `super()` is bound
    to `owner`: the result behaves as if MMSA had shipped the edited lines. An edit is
    `(old, new)`, with `old` occurring exactly once, or `(old, new, count)`.
    """
    function = owner.__dict__[attribute]
    source = textwrap.dedent(inspect.getsource(function))
    for old, new, *count in edits:
        expected = count[0] if count else 1
        if source.count(old) != expected:
            raise IncompatibleMMSA(
                f"{function.__module__}.{function.__qualname__} is not MMSA 2.2.1's "
                f"(expected {expected}x: {old!r}); install mmsa==2.2.1"
            )
        source = source.replace(old, new)
    class_source = f"class {owner.__name__}:\n" + textwrap.indent(source, "    ")
    namespace: dict[str, Any] = {}
    filename = f"<mmsa_iidaf.compat rewrite of {inspect.getsourcefile(function)}>"
    exec(compile(class_source, filename, "exec"), function.__globals__, namespace)
    rewritten = namespace[owner.__name__].__dict__[attribute]
    if "__class__" in rewritten.__code__.co_freevars:
        cell = rewritten.__closure__[rewritten.__code__.co_freevars.index("__class__")]
        cell.cell_contents = owner
    rewritten.__qualname__ = function.__qualname__
    return rewritten


class _ModuleProxy(types.ModuleType):
    """A module seen through a few overridden attributes; everything else is the module's own."""

    def __init__(self, module: types.ModuleType, **overrides: Any):
        super().__init__(module.__name__)
        self.__dict__.update(overrides)
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


# --- B1: `MMSA_run` calls torch.cuda.set_device unconditionally: every CPU run dies. ----------

def _set_device_if_cuda(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(device)


@_fix("B1", "torch.cuda.set_device only for a CUDA device")
def _b1():
    import MMSA.run

    cuda = _ModuleProxy(torch.cuda, set_device=_set_device_if_cuda)
    return [(MMSA.run, "torch", _ModuleProxy(torch, cuda=cuda))]


# --- B2: ReduceLROnPlateau(verbose=...) was removed from torch (MULT, MMIM, TFR_NET). ---------

class ReduceLROnPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """torch's scheduler, accepting and ignoring the `verbose` argument that torch removed."""

    def __init__(self, optimizer, *args, verbose: bool = False, **kwargs):
        super().__init__(optimizer, *args, **kwargs)


@_fix("B2", "ReduceLROnPlateau without the removed `verbose` argument")
def _b2():
    from MMSA.trains.missingTask import TFR_NET
    from MMSA.trains.singleTask import MMIM, MULT

    modules = [MULT, MMIM, TFR_NET]
    return [(inspect.getmodule(m), "ReduceLROnPlateau", ReduceLROnPlateau) for m in modules]


# --- B3: MLF_DNN, MTFN and MLMF trainers log `train_results` before assigning it. -----------

@_fix("B3", "multi-task trainers: no train_results in the epoch line before it exists")
def _b3():
    from MMSA.trains.multiTask import MLF_DNN, MLMF, MTFN

    edit = (" {dict_to_str(train_results)}\"", "\"")
    return [(cls, "do_train", rewrite_method(cls, "do_train", [edit])) for cls in (MLF_DNN, MTFN, MLMF)]


# --- B4: MCTN builds its seq2seq networks on the hard-coded device 'cuda'. -------------------

@_fix("B4", "MCTN's seq2seq networks on the configured device")
def _b4():
    from MMSA.models.singleTask.MCTN import MCTN

    edits = [(f"self.decoder{i},'cuda'", f"self.decoder{i},config.device") for i in (1, 2)]
    return [(MCTN, "__init__", rewrite_method(MCTN, "__init__", edits))]


# --- B5: BERT by hub name only; TFR_NET and BERT_MAG ignore `pretrained`; width 768 assumed ---
# (data_loader and MISA write 768; SELF_MM reads it from its config's `text_out`).
# The name itself is resolved to a local directory before any model is built
# (`runs.prepare_args`); these fixes make every model honour `pretrained` and the encoder's
# own width.

@_fix("B5", "BERT models honour `pretrained`, text width from the encoder config")
def _b5():
    from MMSA.data_loader import MMDataset
    from MMSA.models.missingTask.TFR_NET.model import TFR_NET
    from MMSA.models.multiTask.SELF_MM import SELF_MM
    from MMSA.models.singleTask.BERT_MAG import BERT_MAG
    from MMSA.models.singleTask.MISA import MISA

    tfr_net = rewrite_method(TFR_NET, "__init__", [(
        "BertTextEncoder(use_finetune=args.use_bert_finetune)",
        "BertTextEncoder(use_finetune=args.use_bert_finetune, "
        "transformers=args.get('transformers', 'bert'), "
        "pretrained=args.get('pretrained', 'bert-base-uncased'))",
    )])
    bert_mag = rewrite_method(BERT_MAG, "__init__", [
        ("= 'bert-base-chinese'", "= args.get('pretrained', 'bert-base-chinese')"),
        ("= 'bert-base-uncased'", "= args.get('pretrained', 'bert-base-uncased')"),
    ])
    misa = rewrite_method(MISA, "__init__", [(
        "nn.Linear(in_features=768,",
        "nn.Linear(in_features=self.bertmodel.model.config.hidden_size,",
    )])
    self_mm = rewrite_method(SELF_MM, "__init__", [
        ("args.text_out", "self.text_model.model.config.hidden_size", 2),
    ])
    mosi_loader = rewrite_method(MMDataset, "_MMDataset__init_mosi", [
        ("self.args['feature_dims'][0] = 768", "self.args['feature_dims'][0] = self.args['text_width']", 2),
    ])
    return [
        (TFR_NET, "__init__", tfr_net),
        (BERT_MAG, "__init__", bert_mag),
        (MISA, "__init__", misa),
        (SELF_MM, "__init__", self_mm),
        (MMDataset, "_MMDataset__init_mosi", mosi_loader),
    ]


# --- B6: BERT_MAG does not run on transformers 5. --------------------------------------------
# Its model classes call `init_weights()`, not `post_init()` (which sets what `from_pretrained`
# reads in transformers 5: `AttributeError: ... 'all_tied_weights_keys'`), and MAG_BertModel's
# forward re-implements BertModel's with helpers transformers 5 removed
# (`get_extended_attention_mask`, `get_head_mask`). The fixed forward is transformers 5's
# BertModel.forward with the MAG between the embeddings and the encoder, as MAG-BERT puts it.

def mag_bert_forward(self, input_ids, visual, acoustic, attention_mask=None, token_type_ids=None,
                     position_ids=None, head_mask=None, inputs_embeds=None,
                     encoder_hidden_states=None, encoder_attention_mask=None,
                     output_attentions=None, output_hidden_states=None):
    from transformers.masking_utils import create_bidirectional_mask

    unsupported = {"head_mask": head_mask, "encoder_hidden_states": encoder_hidden_states,
                   "encoder_attention_mask": encoder_attention_mask,
                   "output_attentions": output_attentions,
                   "output_hidden_states": output_hidden_states}
    given = [name for name, value in unsupported.items() if value]
    if given:
        raise ValueError(f"MAG_BertModel on transformers 5 does not take {', '.join(given)}")
    embedding_output = self.embeddings(input_ids=input_ids, position_ids=position_ids,
                                       token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)
    fused_embedding = self.MAG(embedding_output, visual, acoustic)
    mask = create_bidirectional_mask(config=self.config, inputs_embeds=fused_embedding,
                                     attention_mask=attention_mask)
    sequence_output = self.encoder(fused_embedding, attention_mask=mask).last_hidden_state
    pooled_output = self.pooler(sequence_output)
    return (sequence_output, pooled_output)


@_fix("B6", "BERT_MAG on transformers 5: post_init, and BertModel's forward with the MAG")
def _b6():
    from MMSA.models.singleTask.BERT_MAG import (MAG_BertForSequenceClassification,
                                                 MAG_BertModel)

    post_init = [("self.init_weights()", "self.post_init()")]
    return [
        (MAG_BertModel, "__init__", rewrite_method(MAG_BertModel, "__init__", post_init)),
        (MAG_BertForSequenceClassification, "__init__",
         rewrite_method(MAG_BertForSequenceClassification, "__init__", post_init)),
        (MAG_BertModel, "forward", mag_bert_forward),
    ]


# --- B7: with numpy 2, the results CSV holds `(np.float64(80.1), np.float64(1.2))`. ----------

def _plain_mean(values, *args, **kwargs):
    return np.mean(values, *args, **kwargs).tolist()


def _plain_std(values, *args, **kwargs):
    return np.std(values, *args, **kwargs).tolist()


@_fix("B7", "plain Python numbers in the results CSV")
def _b7():
    import MMSA.run

    return [(MMSA.run, "np", _ModuleProxy(np, mean=_plain_mean, std=_plain_std))]


# --- B8: the CLI's default `-c ''` makes MMSA_run look for a config file named ''. -----------
# The plugin's MMSA_run passes its `config_file` through `normalize_config_file` before MMSA's.

def _config_file_as_given(config_file):
    return config_file


def _empty_config_file_is_default(config_file):
    return config_file or None


normalize_config_file = _config_file_as_given


@_fix("B8", "an empty config file path means the default config")
def _b8():
    return [(sys.modules[__name__], "normalize_config_file", _empty_config_file_is_default)]


# --- B9: every MMSA_run call adds another pair of log handlers. -----------------------------

@_fix("B9", "one set of log handlers however often MMSA_run is called")
def _b9():
    import MMSA.run

    set_logger = MMSA.run._set_logger

    def _set_logger(log_dir, model_name, dataset_name, verbose_level):
        mmsa_logger = logging.getLogger("MMSA")
        for handler in list(mmsa_logger.handlers):
            mmsa_logger.removeHandler(handler)
            handler.close()
        return set_logger(log_dir, model_name, dataset_name, verbose_level)

    return [(MMSA.run, "_set_logger", _set_logger)]


# --- CKPT and TUNE: MMSA's per-seed run (`MMSA.run._run`). ----------------------------------
# CKPT: one checkpoint file `{model}-{dataset}.pth` serves every seed and every earlier run; a
#       run whose validation metric never improves silently tests a stale model.
# TUNE: tuning mode scores every trial on the test split.
# The fixed run is `run_one_seed`; `wiring` passes the plugin's hooks (argument preparation
# and per-seed records) to it. "before" hooks get the args; "tested" hooks (not tuning trials)
# get the args, the test results and the training's partial checkpoint path before that file
# replaces the seed's; "after" hooks get the args, the results, whether it was a tuning trial,
# and the seed's run (model, dataloader, trainer, and the test split's per-sample
# `predictions`, None in tuning mode).

RUN_HOOKS: dict[str, list[Callable]] = {"before": [], "tested": [], "after": []}
# The split that scores a tuning trial: MMSA's "test" until the TUNE fix makes it "valid".
TUNE_SPLIT = "test"


def checkpoint_path(args) -> Path:
    """One checkpoint per model, dataset and seed: nothing is shared between seeds or runs. A
    named variant of a model (`run_name`, e.g. an ablation's `iidaf[-mic]`) has its own."""
    directory = Path(args["model_save_path"]).parent
    name = args.get("run_name") or args["model_name"]
    return directory / f"{name}-{args['dataset_name']}-seed{args['seed']}.pth"


def test_with_predictions(trainer, model, loader) -> tuple[dict, dict]:
    """The trainer's own test pass, plus what it predicted for each sample.

    MMSA's loaders shuffle every split and only some trainers can return per-sample results, but
    every trainer scores the whole split with one `self.metrics(pred, true)` call (multi-task
    trainers call it for 'M' first). So the split is read in file order and that first call's
    arguments are kept: ids come from the dataset, in the same order."""
    from torch.utils.data import DataLoader

    ordered = DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                         num_workers=loader.num_workers)
    calls = []
    score = trainer.metrics

    def keep(pred, true):
        calls.append((pred, true))
        return score(pred, true)

    trainer.metrics = keep
    try:
        results = trainer.do_test(model, ordered, mode="TEST")
    finally:
        trainer.metrics = score
    pred, true = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in calls[0])
    labels = np.asarray(loader.dataset.labels["M"], dtype=np.float64).reshape(-1)
    if len(pred) != len(labels) or not np.allclose(true.reshape(-1), labels, atol=1e-4):
        raise RuntimeError(f"{type(trainer).__name__}.do_test scored its samples out of order")
    pred = pred.reshape(len(labels), -1)  # one column per output: (n, 1) or a classifier's (n, k)
    return results, {"id": np.asarray(loader.dataset.ids).astype(str), "y_true": labels,
                     "y_pred": pred[:, 0] if pred.shape[1] == 1 else pred}


def run_one_seed(args, num_workers=4, is_tune=False, from_sena=False):
    import MMSA.run as mmsa_run

    # setup_seed(seed) ran just before this call (MMSA_run): the seed is torch's initial seed.
    args["seed"] = torch.initial_seed()
    for hook in RUN_HOOKS["before"]:
        hook(args)
    # Training writes a fresh partial file; the seed's checkpoint is replaced only once this run
    # has been tested, so a run that fails (a bad setting, Ctrl-C) leaves a finished seed's
    # checkpoint as it was. A tuning trial never touches it. A diverged run keeps its partial
    # file, its last good checkpoint, which its error names.
    final = checkpoint_path(args)
    training = final.with_name(final.name + (".tune" if is_tune else "") + ".partial")
    training.unlink(missing_ok=True)
    args["model_save_path"] = training
    keep_partial = False
    try:
        dataloader = mmsa_run.MMDataLoader(args, num_workers)
        model = mmsa_run.AMIO(args).to(args["device"])
        logger.info(f"The model has {mmsa_run.count_parameters(model)} trainable parameters")
        trainer = mmsa_run.ATIO().getTrain(args)
        epoch_results = trainer.do_train(model, dataloader, return_epoch_results=from_sena)

        if training.exists():
            model.load_state_dict(torch.load(training, map_location=args["device"]))
        else:
            logger.warning(
                f"seed {args['seed']}: the validation {args.get('KeyEval')} never improved, so no "
                "checkpoint was saved; testing the weights of the last epoch"
            )
        model.to(args["device"])
        predictions = None
        if from_sena:
            final_results = {
                split: trainer.do_test(model, dataloader[split], mode=split.upper(),
                                       return_sample_results=True)
                for split in ("train", "valid", "test")
            }
            results = {"epoch_results": epoch_results, "final_results": final_results}
        elif is_tune:
            results = trainer.do_test(model, dataloader[TUNE_SPLIT], mode=TUNE_SPLIT.upper())
        else:
            results, predictions = test_with_predictions(trainer, model, dataloader["test"])
        if not is_tune:
            test_results = results["final_results"]["test"] if from_sena else results
            for hook in RUN_HOOKS["tested"]:
                hook(args, test_results, training)
            if not training.exists():  # the checkpoint is the model that was tested
                torch.save(model.state_dict(), training)
            os.replace(training, final)
            args["model_save_path"] = final
    except TrainingDiverged:
        keep_partial = True
        raise
    finally:
        if not keep_partial:
            training.unlink(missing_ok=True)
    seed_run = types.SimpleNamespace(model=model, dataloader=dataloader, trainer=trainer,
                                     predictions=predictions)
    for hook in RUN_HOOKS["after"]:
        hook(args, results, is_tune, seed_run)
    del model, seed_run
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


@_fix("CKPT", "one checkpoint per seed, never a stale one")
def _ckpt():
    import MMSA.run

    return [(MMSA.run, "_run", run_one_seed)]


@_fix("TUNE", "tuning trials scored on the validation split")
def _tune():
    return [(sys.modules[__name__], "TUNE_SPLIT", "valid")]


# --- B10: MULT's trainer fine-tunes BERT at the fusion network's learning rate. -------------
# With `use_finetune`, MulT's whole model, BERT included, gets `learning_rate` (2e-3 on MOSI),
# which wrecks a pretrained encoder; MISA, Self-MM and MMIM give BERT its own rate. The fixed
# trainer reads `learning_rate_bert` for the text encoder's parameters, and without that key
# behaves as 2.2.1 (one rate for all).

@_fix("B10", "MULT: BERT's own learning rate (`learning_rate_bert`) when it is fine-tuned")
def _b10():
    from MMSA.trains.singleTask.MULT import MULT

    edit = (
        "optimizer = optim.Adam(model.parameters(), lr=self.args.learning_rate)",
        "optimizer = optim.Adam(["
        "{'params': [p for n, p in model.named_parameters() if 'text_model.' in n], "
        "'lr': self.args.get('learning_rate_bert', self.args.learning_rate)}, "
        "{'params': [p for n, p in model.named_parameters() if 'text_model.' not in n]}], "
        "lr=self.args.learning_rate)",
    )
    return [(MULT, "do_train", rewrite_method(MULT, "do_train", [edit]))]


# --- B11: MMIM's and MCTN's `do_test` evaluate `self.model`, which only `do_train` sets: a
# checkpoint tested by a fresh trainer (robustness, analysis) fails with AttributeError, and a
# trainer that trained one model tests that one whatever model it is given. They test `model`.

@_fix("B11", "MMIM, MCTN: do_test evaluates the model it is given")
def _b11():
    from MMSA.trains.singleTask.MCTN import MCTN
    from MMSA.trains.singleTask.MMIM import MMIM

    edits = [("self.model.zero_grad()", "model.zero_grad()"), ("= self.model(", "= model(")]
    return [(trainer, "do_test", rewrite_method(trainer, "do_test", edits))
            for trainer in (MMIM, MCTN)]
