"""The IIDAF trainer: the joint-objective trainer (`trainers/joint.py`) on eq. 23, with one step
of the conditional-MI discriminator φ per batch (eq. 18), plus modality selection and
diagnostics.

With `modality_selection`, each validation also scores the fusion without each modality in turn
(u_m and r_m read as zeros, as `modality_dropout` trains it to) and keeps the best set in the
model's `fused_modalities` buffer: a modality that misleads on data it was not trained on (the
leaky vision of mosi_utt) is switched off by the validation split alone.
"""
from __future__ import annotations

import logging

import torch

from ..models.iidaf import IIDAFObjective
from ..models.iidaf.diagnostics import diagnose
from .joint import JointTrainer

logger = logging.getLogger("MMSA")


class IIDAFTrainer(JointTrainer):
    objective_class = IIDAFObjective

    @torch.inference_mode()
    def validate(self, model, loader) -> dict:
        """Metrics on the validation split. With `modality_selection`, the fusion of every built
        modality and of each leave-one-out set are scored from one encoder pass, and the best
        set is kept in the model (`fused_modalities`); ties keep more modalities."""
        iidaf = model.Model
        if not self.args.get("modality_selection") or len(iidaf.modalities) < 2:
            return self.do_test(model, loader, mode="VAL")
        model.eval()
        count = len(iidaf.modalities)
        candidates = [torch.zeros(count, dtype=torch.bool)]
        candidates += [torch.eye(count, dtype=torch.bool)[i] for i in range(count)]
        predictions = [[] for _ in candidates]
        labels = []
        for inputs, lengths, targets in self._batches(loader):
            with self.precision():
                representation = iidaf.represent(*inputs, **lengths)
            labels.append(targets.cpu())
            for index, absent in enumerate(candidates):
                rows = absent.to(targets.device).expand(targets.shape[0], -1)
                with self.precision():
                    fused = iidaf.fuse(representation, rows)["M"]
                predictions[index].append(fused.float().cpu())
        labels = torch.cat(labels)
        best, best_results = None, None
        for absent, predicted in zip(candidates, predictions):
            predicted = torch.cat(predicted)
            results = self.metrics(predicted, labels)
            results["Loss"] = round(self.objective.task_loss(predicted, labels).item(), 4)
            if best_results is None or self._is_better(results[self.args.KeyEval],
                                                       best_results[self.args.KeyEval]):
                best, best_results = absent, results
        iidaf.fused_modalities.copy_((~best).to(iidaf.fused_modalities.dtype))
        fused = "".join(m for m, off in zip(iidaf.modalities, best) if not off)
        logger.info(f"VAL-({self.args.model_name}) fused modalities {fused} >> "
                    + " ".join(f"{k}: {v:.4f}" for k, v in best_results.items()))
        return best_results

    def diagnose(self, model, loader) -> dict:
        """`diagnostics.diagnose` on `loader` (the run writes it for the test split)."""
        return diagnose(model.Model, self._batches(loader), self.args.train_mode)
