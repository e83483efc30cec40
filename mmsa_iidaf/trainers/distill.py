"""Distillation from a finished run: the student learns the teacher's predictions as well as the
labels (regression).

`distill_from`: the results folder (`--res-save-dir`) of a finished run of `distill_model`
(default "iidaf") on the same feature file. The teacher is that run's seed with the student's
seed, rebuilt from its seeds row and checkpoint (`analysis/checkpoint.py`, as the robustness and
interpretability commands rebuild runs); its prediction for every training sample is computed
once before training. The trainer then adds `distill_weight` (default 1) × L_KD to each batch's
loss, L_KD being the task loss L_T between the student's prediction and the teacher's. Validation
and test read the labels only (the teacher's checkpoint was chosen on validation, so a student
that imitates it inherits its validation fit: benchmarks/lite_selection.md).

`distill_seeds: all` (default "same") makes the teacher the mean prediction of every seed of
that run (its newest row per seed) instead of the student's seed alone: an ensemble of the runs,
whose training-split predictions carry less of any one run's fit to noise.

`distill_init: true` (with `distill_from`) also starts the student's text encoder from the
teacher's fine-tuned one instead of the pretrained weights: the embeddings, and for each layer the
student keeps, the teacher's layer of the same pretrained index (the student's other parts differ
in width from a full IIDAF's and start as usual).

`distill_states_weight` w > 0 (with `distill_from`) adds w × L_HS to each batch's loss: the mean
squared error, over the real tokens, between the student's text-encoder output and the teacher's
(its fine-tuned encoder's last hidden states of the same sample, computed with its predictions;
the mean over its seeds with `distill_seeds: all`). A student with fewer text layers thus learns
what the teacher's whole encoder computes, token by token, not only the teacher's one score per
clip (as TinyBERT distils a BERT's hidden states; Jiao et al., 2020). Both encoders must be the
same pretrained one (their states share a width and a basis), the student's fine-tuned.
"""
from __future__ import annotations

import json
import random
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from .. import registry, runs
from ..errors import ConfigError, config_number
from ..models.iidaf.settings import iidaf_settings
from ..text_encoders import (computes_pretrained_states, encoder_depth, kept_layer_indices,
                             resolve_pretrained)


@contextmanager
def _untouched_random_state():
    """Building the teacher (its weights before loading, its loaders) draws random numbers: the
    student's stream stays as if no teacher had been built."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def check_distill_init(args) -> None:
    if args.get("distill_init") and not args.get("distill_from"):
        raise ConfigError("config 'distill_init' needs 'distill_from' (the teacher whose text "
                          "encoder the student starts from)")
    if states_weight(args) and not args.get("distill_from"):
        raise ConfigError("config 'distill_states_weight' needs 'distill_from' (the teacher whose "
                          "text-encoder states the student learns)")


def distill_weight(args) -> float:
    """`distill_weight` (default 1), the weight of L_KD, checked."""
    return config_number(args, "distill_weight", 1.0, lambda weight: weight >= 0, ">= 0")


def states_weight(args) -> float:
    """`distill_states_weight` (default 0: no L_HS), checked."""
    return config_number(args, "distill_states_weight", 0.0, lambda weight: weight >= 0,
                         "a number >= 0")


class _TextEncoderPlan(NamedTuple):
    name: str                 # config 'pretrained'
    directory: Path           # where it resolves
    layers: tuple[int, ...]   # the pretrained index of each kept layer
    vocabulary: str
    finetune: bool


def _text_encoder_plan(args) -> _TextEncoderPlan | None:
    """The text encoder that a plugin model built from `args` has; None when it reads text
    through none (or is one of MMSA's models, whose BERT is another module)."""
    if args.get("model_name") not in registry.MODELS:
        return None
    settings = iidaf_settings(args)
    if not (settings.use_bert and "t" in settings.modalities):
        return None
    name = str(settings.pretrained)
    return _TextEncoderPlan(name, resolve_pretrained(name),
                            kept_layer_indices(settings.text_layers, encoder_depth(name)),
                            settings.text_vocabulary, bool(settings.use_finetune))


def check_teacher_text_encoder(args, teacher_args) -> None:
    """`distill_init`: the teacher's text encoder (as its config `teacher_args` built it) holds
    everything the student's starts from: the same pretrained encoder with every token, and each
    layer the student keeps. Read from the two configs, so it is checked before any training."""
    student, teacher = _text_encoder_plan(args), _text_encoder_plan(teacher_args)
    if student is None or teacher is None:
        raise ConfigError("config 'distill_init' copies the teacher's text encoder: the student "
                          "and the teacher must both be this plugin's models that read text "
                          "through one (use_bert, text among the modalities)")
    if student.directory != teacher.directory or teacher.vocabulary != "full":
        trimmed = ", trimmed vocabulary" if teacher.vocabulary != "full" else ""
        raise ConfigError(f"config 'distill_init': the teacher's text encoder ({teacher.name}"
                          f"{trimmed}) is not the student's ({student.name}) with every token; "
                          f"distil from a run of the same encoder with text_vocabulary full")
    if not student.finetune and computes_pretrained_states(student.vocabulary):
        # Such an encoder's outputs are read from the cache of the pretrained encoder's states
        # (`encoder_cache`), which the teacher's weights would not change.
        raise ConfigError("config 'distill_init' with a frozen text encoder (use_finetune false) "
                          "and text_vocabulary full: its outputs would be the cached pretrained "
                          "encoder's; set use_finetune true, or text_vocabulary train")
    missing = [index for index in student.layers if index not in teacher.layers]
    if missing:
        raise ConfigError(f"config 'distill_init': the teacher has no layer {missing[0]} of "
                          f"{teacher.name}, which the student keeps; distil from a teacher "
                          f"with every layer the student has")


def check_teacher_text_states(args, teacher_args) -> None:
    """`distill_states_weight`: the student's text encoder learns the teacher's states, so both
    are the same pretrained encoder and the student's is fine-tuned. Read from the configs."""
    student, teacher = _text_encoder_plan(args), _text_encoder_plan(teacher_args)
    if student is None or teacher is None:
        raise ConfigError("config 'distill_states_weight' distils the teacher's text-encoder "
                          "states: the student and the teacher must both be this plugin's models "
                          "that read text through one (use_bert, text among the modalities)")
    if student.directory != teacher.directory:
        raise ConfigError(f"config 'distill_states_weight': the teacher's text encoder "
                          f"({teacher.name}) is not the student's ({student.name}); their states "
                          f"differ in basis: distil from a run of the same encoder")
    if not student.finetune:
        raise ConfigError("config 'distill_states_weight' with a frozen text encoder (use_finetune "
                          "false): its states cannot learn; set use_finetune true")


DISTILL_SEEDS = ("same", "all")


def teacher_seed_rows(args) -> list[pd.Series]:
    """The seeds rows of the teacher: `{distill_from}/{distill_model}-{dataset}-seeds.csv`, the
    newest row of the student's seed (`distill_seeds: same`) or of every seed in it (`all`);
    ConfigError when there is none or the run cannot be distilled (checked before any training,
    and again when the teacher is built)."""
    if args.get("train_mode", "regression") != "regression":
        raise ConfigError("config 'distill_from' distils a regression teacher; this run is "
                          f"'{args['train_mode']}': drop distill_from")
    distill_weight(args)
    if args.get("distill_init") not in (None, True, False):
        raise ConfigError(f"config 'distill_init' = {args['distill_init']!r} must be true or false")
    seeds = args.get("distill_seeds", "same")
    if seeds not in DISTILL_SEEDS:
        raise ConfigError(f"config 'distill_seeds' = {seeds!r} must be one of "
                          f"{', '.join(DISTILL_SEEDS)} (the student's seed of the teacher run, "
                          f"or the mean of all its seeds)")
    folder = Path(str(args["distill_from"])).expanduser()
    name = str(args.get("distill_model", "iidaf"))
    seeds_csv = runs.seeds_csv(folder, name, args["dataset_name"])
    if not seeds_csv.is_file():
        raise ConfigError(f"config 'distill_from' = '{folder}' holds no {seeds_csv.name}: give the "
                          f"--res-save-dir of a finished '{name}' run on {args['dataset_name']} "
                          f"(or set distill_model)")
    rows = pd.read_csv(seeds_csv)
    own = rows[rows["seed"] == int(args["seed"])]
    # The mean of every seed needs none of the student's seed, unless its encoder starts there.
    if not len(own) and (seeds == "same" or args.get("distill_init") or not len(rows)):
        raise ConfigError(f"{seeds_csv} has no seed {args['seed']}: train the teacher with "
                          f"-s {args['seed']} first, or distill only the seeds it has")
    if args.get("distill_init"):  # the encoder starts from the student's seed of the teacher
        check_teacher_text_encoder(args, json.loads(own.iloc[-1]["config"]))
    chosen = ([own.iloc[-1]] if seeds == "same"
              else [group.iloc[-1] for _, group in rows.groupby("seed", sort=True)])
    if states_weight(args):
        for row in chosen:
            check_teacher_text_states(args, json.loads(row["config"]))
    return chosen


def check_student_checkpoints(args, model_save_dir) -> None:
    """`teacher_seed_rows(args)`'s checks, and ConfigError (before any training) where the student's
    checkpoint of `args['seed']` is a file its teacher reads: a seed's run replaces its
    checkpoint once tested, so a student sharing the teacher's --model-save-dir (run.py's
    default for both) would overwrite a teacher checkpoint its later seeds still read."""
    from .. import compat
    from ..analysis.checkpoint import row_checkpoint

    student = compat.checkpoint_path({**args, "model_save_path": Path(model_save_dir) / "_"})
    student = student.expanduser().resolve()
    for row in teacher_seed_rows(args):
        if row_checkpoint(row).expanduser().resolve() == student:
            raise ConfigError(
                f"this run's checkpoint {student} is the file of the teacher's seed {row['seed']} "
                f"in {args['distill_from']}: the student would overwrite it; give "
                f"the student its own --model-save-dir")


class TeacherStates(NamedTuple):
    """The teacher's text-encoder output for every training sample: `values[row[id]]`, (L, H)."""
    row: dict[str, int]
    values: torch.Tensor  # (N, L, H), float32, CPU


class Teacher(NamedTuple):
    predictions: dict[str, float]    # {training sample id: prediction}
    states: TeacherStates | None     # with `distill_states_weight` > 0


# With `distill_seeds: all` every student seed of a run reads the same teachers: each teacher's
# pass over the training split is computed once per process, keyed by its checkpoint and the
# feature file with their mtimes (a retrained teacher or a rewritten file is predicted again).
_TEACHER_PASSES: dict[tuple, Teacher] = {}


def _predictions_key(checkpoint: Path, feature_file: Path) -> tuple | None:
    """None where a file is missing (`load_run` then says which, in one line)."""
    try:
        return tuple((str(path.resolve()), path.stat().st_mtime_ns)
                     for path in (Path(checkpoint), Path(feature_file)))
    except OSError:
        return None


def load_teacher(args, student=None) -> Teacher | None:
    """The teacher's predictions of the training split and, with `distill_states_weight`, its
    text-encoder states (each the mean over its seeds with `distill_seeds: all`); None without
    `distill_from`. With `distill_init`, `student` (the network about to train) takes the text
    encoder of the student's seed of the teacher first (`start_text_from_teacher`)."""
    check_distill_init(args)
    if not args.get("distill_from"):
        return None
    # (analysis.checkpoint reads runs' names at import: imported here, after runs is loaded.)
    from ..analysis.checkpoint import in_order, load_run, recorded_sha256, row_checkpoint

    feature_file = runs.feature_files(args)[0]
    with_states = bool(states_weight(args))
    passes = []
    for row in teacher_seed_rows(args):
        starts_student = (student is not None and args.get("distill_init")
                          and int(row["seed"]) == int(args["seed"]))
        checkpoint = row_checkpoint(row)
        key = _predictions_key(checkpoint, feature_file)
        stored = _TEACHER_PASSES.get(key)
        if (stored is not None and not starts_student
                and (stored.states is not None or not with_states)):
            passes.append(stored)
            continue
        with _untouched_random_state():
            teacher = load_run(json.loads(row["config"]), checkpoint, feature_file,
                               expected_sha256=recorded_sha256(row))
            if teacher.other_features:
                raise ConfigError(f"the teacher in {args['distill_from']} (seed {row['seed']}) "
                                  f"was trained on another feature file than {feature_file} "
                                  f"(sha256 differs): distil from a run on this file")
            if starts_student:
                start_text_from_teacher(student, teacher.model.Model)
            states = []
            encoder = teacher.model.Model.text_encoder
            hook = (encoder.register_forward_hook(lambda _, __, output: states.append(
                output.detach().float().cpu())) if with_states else None)
            try:
                predicted = teacher.trainer.predict(teacher.model,
                                                    in_order(teacher.loaders["train"]))
            finally:
                if hook is not None:
                    hook.remove()
        ids = list(predicted["ids"])
        passes.append(Teacher(
            dict(zip(ids, predicted["M"].reshape(-1).tolist())),
            TeacherStates({sample_id: i for i, sample_id in enumerate(ids)}, torch.cat(states))
            if with_states else None))
        if key is not None:
            _TEACHER_PASSES[key] = passes[-1]
    predictions = {sample_id: float(np.mean([seed.predictions[sample_id] for seed in passes]))
                   for sample_id in passes[0].predictions}
    states = None
    if with_states:
        first = passes[0].states
        # Every seed's rows in the first seed's order (each pass reads the split in file order).
        order = [[seed.states.row[sample_id] for sample_id in first.row] for seed in passes]
        states = TeacherStates(first.row, torch.stack(
            [seed.states.values[rows] for seed, rows in zip(passes, order)]).mean(dim=0))
    return Teacher(predictions, states)


def teacher_targets(teacher: dict[str, float], ids, like: torch.Tensor) -> torch.Tensor:
    """The teacher's predictions for a batch's sample `ids`, shaped and placed like `like`."""
    missing = [sample_id for sample_id in ids if sample_id not in teacher]
    if missing:
        raise ConfigError(f"the teacher has no prediction for training sample '{missing[0]}': "
                          f"it was trained on another training split; distil from a run on "
                          f"this one")
    values = torch.tensor([teacher[sample_id] for sample_id in ids], dtype=like.dtype,
                          device=like.device)
    return values.view_as(like)


def states_loss(teacher: TeacherStates, ids, student_states: torch.Tensor,
                text_bert: torch.Tensor) -> torch.Tensor:
    """L_HS: the mean squared error between the student's text-encoder output (B, L, H) and the
    teacher's for a batch's sample `ids`, over the real tokens (row 1 of MMSA's `text_bert`, the
    attention mask, (B, 3, L)) and the H channels."""
    missing = [sample_id for sample_id in ids if sample_id not in teacher.row]
    if missing:
        raise ConfigError(f"the teacher has no text states for training sample '{missing[0]}': "
                          f"it was trained on another training split; distil from a run on "
                          f"this one")
    target = teacher.values[[teacher.row[sample_id] for sample_id in ids]].to(
        device=student_states.device, dtype=student_states.dtype)
    real = text_bert[:, 1, :].to(student_states.device) > 0
    squared = (student_states - target).pow(2).mean(dim=-1)  # (B, L)
    return squared[real].mean()


def start_text_from_teacher(student, teacher) -> None:
    """Copy the teacher network's text encoder into the student's: embeddings, and each layer the
    student keeps from the teacher's layer of the same pretrained index (the two checked to fit
    by `check_teacher_text_encoder`). Before the student's vocabulary is fitted (its word
    embedding still has every row, as the teacher's has); a student whose vocabulary is fitted
    already trained, and keeps its encoder."""
    mine, theirs = student.text_encoder, teacher.text_encoder
    if mine.kept_ids is not None:
        return
    teacher_positions = {index: position
                         for position, index in enumerate(theirs.pretrained_layer_indices)}
    with torch.no_grad():
        mine.model.embeddings.load_state_dict(theirs.model.embeddings.state_dict())
        for position, index in enumerate(mine.pretrained_layer_indices):
            layer = theirs.model.encoder.layer[teacher_positions[index]]
            mine.model.encoder.layer[position].load_state_dict(layer.state_dict())
