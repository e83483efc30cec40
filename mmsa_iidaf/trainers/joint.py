"""A trainer for models trained on one joint objective: MMSA's trainer interface (`do_train`,
`do_test`) around an objective object.

One epoch: for each batch, (1) when the model has a critic (`discriminator_parameters()`), one
step of it on `objective.discriminator_loss` (its own optimizer), then (2) one AdamW step of
everything else on `objective(model, outputs, labels)["total"]` (a fine-tuned text encoder at
`bert_learning_rate`; with `grad_clip`, the gradients clipped as `grad_clip_scope` says). Then
the validation split decides: a better `KeyEval` saves the checkpoint, `early_stop` epochs
without one end training. The test split is never seen here.

A model for this trainer returns a dict with 'M' (and any other outputs its objective reads) and
has `main_parameters()`, `text_encoder_parameters()` and `discriminator_parameters()`; its
objective has `task_targets`, `task_loss` and `__call__` (a dict of terms with 'total' and 'L_T').
IIDAF's trainer adds modality selection and diagnostics (`trainers/iidaf.py`). With
`distill_from`, each batch's loss adds `distill_weight` × L_KD, the task loss against a finished
run's predictions, and with `distill_states_weight` × L_HS, the distance of the text encoder's
states to that run's (`trainers/distill.py`). With `ema_decay`, validation, the checkpoint and so
the test read an average of the weights over the last steps (`trainers/averaging.py`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import ConfigError, TrainingDiverged
from ..registry import metrics_for, model_inputs, text_token_ids
from .averaging import WeightAverage, ema_decay
from .distill import distill_weight, load_teacher, states_loss, states_weight, teacher_targets

logger = logging.getLogger("MMSA")

LOWER_IS_BETTER = ("Loss", "MAE")

# `grad_clip_scope`: which gradients `grad_clip` bounds, by their joint norm. "main" (the default,
# and every table's) leaves a fine-tuned text encoder's unclipped: its norm reaches 10-60 by the
# second epoch on mosi_utt while the rest's stays near 5, and one joint norm would shrink every
# other part's step with it. "all" is that joint norm (as MMSA's MMIM and MCTN clip; its MISA
# clips every parameter by value); "each" bounds the text encoder's norm and the rest's apart.
# Measured: benchmarks/grad_clip_scope.md.
CLIP_SCOPES = ("main", "all", "each")


def clip_scope(args) -> str:
    """The run's `grad_clip_scope`, checked: ConfigError in one line unless one of CLIP_SCOPES."""
    scope = args.get("grad_clip_scope", "main")
    if scope not in CLIP_SCOPES:
        raise ConfigError(f"config 'grad_clip_scope' = {scope!r} must be one of "
                          f"{', '.join(CLIP_SCOPES)}")
    return scope


def clip_gradients(network, scope: str, max_norm: float) -> None:
    """Bound the gradients' norm to `max_norm`, over the groups `scope` names, each apart."""
    main, encoder = network.main_parameters(), network.text_encoder_parameters()
    for group in {"main": [main], "all": [main + encoder], "each": [main, encoder]}[scope]:
        torch.nn.utils.clip_grad_norm_(group, max_norm)


def fit_text_vocabulary(network, token_ids) -> None:
    """`text_vocabulary` "train": the network's text encoder keeps the tokens of `token_ids`
    (the training split's input ids, (N, L)) only. Done before the optimizers are made (the
    embedding is replaced), once: a later call, or a trimmed checkpoint, keeps the vocabulary."""
    text_encoder = getattr(network, "text_encoder", None)
    if (text_encoder is None or getattr(text_encoder, "vocabulary", "full") != "train"
            or text_encoder.kept_ids is not None):
        return
    if token_ids is None:
        raise ConfigError("config 'text_vocabulary' = 'train' needs the training split to fit the "
                          "vocabulary on; fit it (`fit_text_vocabulary`) before training")
    before = sum(p.numel() for p in text_encoder.parameters())
    kept = text_encoder.fit_vocabulary(torch.as_tensor(token_ids))
    after = sum(p.numel() for p in text_encoder.parameters())
    embedding = text_encoder.model.get_input_embeddings()
    others = (f"at rank {text_encoder.unseen_rank} ({embedding.kept_energy:.0%} of their "
              f"energy)" if text_encoder.unseen_rank else "read as [UNK]")
    logger.info(f"text vocabulary: {kept} tokens of the training split kept, the others {others}; "
                f"text encoder {before / 1e6:.2f} M -> {after / 1e6:.2f} M parameters")


class JointTrainer:
    objective_class: type = None  # the subclass's objective

    def __init__(self, args):
        self.args = args
        self.objective = self.objective_class(args)
        self.metrics = metrics_for(args)
        self.lower_is_better = args.KeyEval in LOWER_IS_BETTER
        self.teacher = None  # the `distill.Teacher` of a run with `distill_from`
        self.kd_weight = self.hs_weight = 0.0  # its loss weights, read once with it
        self.student_states = None  # the text encoder's output of the batch (with L_HS)
        self.ema_decay = ema_decay(args)
        self.clip_scope = clip_scope(args)
        self.average = None  # the WeightAverage of a training with `ema_decay`

    # --- training ------------------------------------------------------------------------

    def _optimizers(self, network) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
        args = self.args
        groups = [{"params": [p for p in network.main_parameters() if p.requires_grad],
                   "lr": args.learning_rate}]
        encoder = [p for p in network.text_encoder_parameters() if p.requires_grad]
        if encoder:  # fine-tuned BERT learns at its own rate (Table 2)
            groups.append({"params": encoder, "lr": args.get("bert_learning_rate",
                                                             args.learning_rate)})
        main = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
        discriminator = None
        if network.discriminator_parameters():
            discriminator = torch.optim.AdamW(
                network.discriminator_parameters(),
                lr=args.get("disc_learning_rate", args.learning_rate),
                weight_decay=args.weight_decay,
            )
        return main, discriminator

    def precision(self):
        """bf16 autocast on the run's device with `mixed_precision: bf16` (meant for GPUs; the
        weights, optimiser state and losses' reductions stay float32), else a no-op."""
        device = torch.device(self.args.device)
        enabled = self.args.get("mixed_precision", "none") == "bf16"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def _train_epoch(self, model, loader, optimizer, disc_optimizer, epoch: int) -> dict:
        args, network = self.args, model.Model
        model.train()
        sums, predictions, targets = defaultdict(float), [], []
        in_graph, moved = set(), set()  # terms that could act, and those that ever did
        for step, batch in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False,
                                          disable=None)):
            inputs, lengths = model_inputs(args, batch)
            labels = self.objective.task_targets(batch["labels"]["M"].to(args.device))
            with self.precision():
                outputs = model(*inputs, **lengths)

            if disc_optimizer is not None:
                with self.precision():
                    disc_loss = self.objective.discriminator_loss(network, outputs, labels)
                disc_optimizer.zero_grad()
                disc_loss.backward()
                disc_optimizer.step()
                sums["L_critic"] += disc_loss.item()

            with self.precision():
                losses = self.objective(network, outputs, labels)
                if self.teacher is not None:
                    taught = teacher_targets(self.teacher.predictions, batch["id"], outputs["M"])
                    losses["L_KD"] = self.objective.task_loss(outputs["M"], taught)
                    losses["total"] = losses["total"] + self.kd_weight * losses["L_KD"]
                if self.teacher is not None and self.teacher.states is not None:
                    losses["L_HS"] = states_loss(self.teacher.states, batch["id"],
                                                 self.student_states, inputs[0])
                    losses["total"] = losses["total"] + self.hs_weight * losses["L_HS"]
            if not torch.isfinite(losses["total"]):
                terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                # Before the first validated epoch there is no good checkpoint to point to.
                kept = (f"the last good checkpoint {args.model_save_path} is kept"
                        if Path(args.model_save_path).exists() else "no checkpoint was saved")
                raise TrainingDiverged(
                    f"seed {args.seed}, epoch {epoch}, batch {step}: the loss is not finite "
                    f"({terms}); training stopped and {kept}: lower learning_rate or the λ of "
                    f"the diverging term"
                )
            optimizer.zero_grad()
            losses["total"].backward()
            if args.get("grad_clip"):
                clip_gradients(network, self.clip_scope, args.grad_clip)
            optimizer.step()
            if self.average is not None:
                self.average.update()

            for key, value in losses.items():
                number = value.item()
                sums[key] += number
                if value.requires_grad:
                    in_graph.add(key)
                if number != 0:
                    moved.add(key)
            predictions.append(outputs["M"].detach().float().cpu())
            targets.append(labels.cpu())
        means = {key: total / len(loader) for key, total in sums.items()}
        results = self.metrics(torch.cat(predictions), torch.cat(targets))
        results["Loss"] = means["L_T"]
        parts = sorted(key for key in means if "[" in key)  # a term per pair or per modality
        named = [key for key in self.objective.terms if key in means]
        terms = " ".join(f"{key}: {means[key]:.4f}"
                         for key in ("total", *named, "L_critic", "L_KD", "L_HS", *parts)
                         if key in means)
        logger.info(f"TRAIN-({args.model_name}) epoch {epoch} seed {args.seed} >> {terms}")
        inert = [key for key in self.objective.terms if key in in_graph and key not in moved]
        if inert:
            # A switched-on term that is 0 on every batch has no gradient: the part it stands
            # for does nothing (its constraint holds without it). Said, not hidden in a column.
            logger.warning(f"TRAIN-({args.model_name}) epoch {epoch} seed {args.seed}: "
                           f"{', '.join(inert)} 0 on every batch: "
                           f"{'it does' if len(inert) == 1 else 'they do'} no work")
        return results

    def do_train(self, model, dataloader, return_epoch_results: bool = False):
        args = self.args
        # The teacher first: with distill_init the text encoder starts from the teacher's, whose
        # word embedding has every row, and is trimmed after.
        self.teacher = load_teacher(args, model.Model)
        if self.teacher is not None:
            self.kd_weight, self.hs_weight = distill_weight(args), states_weight(args)
        # (A loader without a dataset is a benchmark's timed loader; its vocabulary is fitted
        # when the model is built.)
        train_dataset = getattr(dataloader["train"], "dataset", None)
        fit_text_vocabulary(model.Model, None if train_dataset is None
                            else text_token_ids(train_dataset))
        optimizer, disc_optimizer = self._optimizers(model.Model)
        if self.ema_decay:
            self.average = WeightAverage([*model.Model.main_parameters(),
                                          *model.Model.text_encoder_parameters()],
                                         self.ema_decay)
        best, best_epoch = (math.inf if self.lower_is_better else -math.inf), 0
        epoch_results = {"train": [], "valid": [], "test": []}
        with self._capturing_text_states(model.Model):
            for epoch in range(1, int(args.get("max_epochs", 100)) + 1):
                train_results = self._train_epoch(model, dataloader["train"], optimizer,
                                                  disc_optimizer, epoch)
                averaged = (self.average.swapped_in() if self.average is not None
                            else contextlib.nullcontext())
                with averaged:
                    valid_results = self.validate(model, dataloader["valid"])
                    current = valid_results[args.KeyEval]
                    improved = self._is_better(current, best)
                    if improved:
                        best, best_epoch = current, epoch
                        torch.save(model.state_dict(), args.model_save_path)
                logger.info(
                    f"EPOCH-({args.model_name}) {epoch}: valid {args.KeyEval} {current:.4f}, best "
                    f"{best:.4f} at epoch {best_epoch}{' (saved)' if improved else ''}"
                )
                if return_epoch_results:
                    epoch_results["train"].append(train_results)
                    epoch_results["valid"].append(valid_results)
                if epoch - best_epoch >= args.early_stop:
                    break
        if not best_epoch and self.average is not None:
            # Validation never improved (a metric that is NaN throughout): the model tested is
            # still the average, not the last step's weights.
            logger.warning(f"seed {args.seed}: the validation {args.KeyEval} never improved; "
                           f"the checkpoint holds the weights' average after the last epoch")
            with self.average.swapped_in():
                torch.save(model.state_dict(), args.model_save_path)
        return epoch_results if return_epoch_results else None

    @contextlib.contextmanager
    def _capturing_text_states(self, network):
        """With a teacher's text states (L_HS): each training forward's text-encoder output is
        kept in `student_states` for the loss (the model's outputs hold pooled features only)."""
        if self.teacher is None or self.teacher.states is None:
            yield
            return

        def keep(_module, _inputs, output):
            self.student_states = output

        handle = network.text_encoder.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self.student_states = None

    # --- evaluation -----------------------------------------------------------------------

    def validate(self, model, loader) -> dict:
        """Metrics on the validation split."""
        return self.do_test(model, loader, mode="VAL")

    def _batches(self, loader):
        for batch in loader:
            inputs, lengths = model_inputs(self.args, batch)
            yield inputs, lengths, self.objective.task_targets(batch["labels"]["M"].to(self.args.device))

    def _is_better(self, current: float, best: float) -> bool:
        return current < best - 1e-6 if self.lower_is_better else current > best + 1e-6

    @torch.inference_mode()
    def predict(self, model, loader) -> dict:
        """Predictions and the interpretable parts of the model for every sample of `loader`:
        'M', 'M_shared', 'M_specific', 'gamma', per-modality 'shared_m'/'specific_m' features
        and attention-mask weights 'mask_alpha_m'/'mask_beta_m' (IAMD only), labels and ids, as
        numpy arrays in loader order."""
        model.eval()
        collected = defaultdict(list)
        for batch in loader:
            inputs, lengths = model_inputs(self.args, batch)
            with self.precision():
                outputs = model(*inputs, **lengths)
            collected["labels"].append(self.objective.task_targets(batch["labels"]["M"]))
            collected["ids"].extend(batch["id"])
            for key in ("M", "M_shared", "M_specific", "gamma"):
                if outputs.get(key) is not None:
                    collected[key].append(outputs[key].float().cpu())
            for part in ("shared", "specific", "mask_alpha", "mask_beta"):
                for m, features in outputs.get(part, {}).items():
                    collected[f"{part}_{m}"].append(features.float().cpu())
        return {key: value if key == "ids" else torch.cat(value).numpy()
                for key, value in collected.items()}

    def do_test(self, model, dataloader, mode: str = "VAL", return_sample_results: bool = False):
        predicted = self.predict(model, dataloader)
        prediction, labels = torch.from_numpy(predicted["M"]), torch.from_numpy(predicted["labels"])
        results = self.metrics(prediction, labels)
        results["Loss"] = round(self.objective.task_loss(prediction, labels).item(), 4)
        logger.info(f"{mode}-({self.args.model_name}) >> "
                    + " ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        if return_sample_results:
            results["Ids"] = predicted["ids"]
            results["SResults"] = predicted["M"].squeeze()
            results["Labels"] = predicted["labels"].tolist()
            results["Features"] = {k: v for k, v in predicted.items()
                                   if k.startswith(("shared_", "specific_")) or k == "gamma"}
        return results
