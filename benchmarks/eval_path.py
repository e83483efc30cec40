"""Evaluation without F⁻¹ and the decoder, against the path that ran them, in one process.

    python benchmarks/eval_path.py [--models iidaf,iidaf[preset=lite]] [--rounds 40]

F⁻¹ (for L_IN) and the decoder (for L_RE) feed training losses only; since 2026-12-02 an IIDAF in
eval mode skips them. This measures what that saves: each model is built twice from one seed (the
same weights), the second copy's IAMD modules made to run F⁻¹ and the decoder in eval as before,
and both are timed interleaved on the same clips (speed.py's data, subjects and timing), so a
noisy machine slows both alike. Their predictions are checked to be equal first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import speed  # noqa: E402  (benchmarks/speed.py: data, subjects, timing)


def run_inverse_and_decoder_in_eval(subject: speed.Subject) -> None:
    """Make `subject`'s IAMD modules compute F⁻¹ and the decoder in eval too (the path before)."""
    network = subject.model.Model
    for disentangler in network.disentanglers.values():
        forward = disentangler.forward
        disentangler.forward = (lambda pooled, recover, reconstruct, forward=forward:
                                forward(pooled, network.recover_latent, True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/eval_path.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="iidaf,iidaf[preset=lite]")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shapes", choices=("official", "compact"), default="official",
                        help="MOSI's official sequence shapes, or tiny ones (for tests)")
    parser.add_argument("--vocabulary", type=Path, metavar="FEATURE_FILE",
                        help="as in speed.py: the tokens text_vocabulary=train models keep")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    vocabulary = speed.training_token_ids(options.vocabulary) if options.vocabulary else None
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="mmsa_iidaf_eval_path_") as temp:
        work_dir = Path(temp)
        feature_file = speed.data_file(work_dir, options.shapes)
        pairs = []
        for spec in speed.parse_models(options.models):
            today, before = (speed.build_subject(spec, feature_file, "encoder", device, work_dir,
                                                 [], vocabulary) for _ in range(2))
            run_inverse_and_decoder_in_eval(before)
            positional, keyword = today.latency_inputs[speed.LATENCY_BATCH]
            with torch.inference_mode():
                skipped = today.model.eval()(*positional, **keyword)
                computed = before.model.eval()(*positional, **keyword)
            if not (torch.equal(skipped["M"], computed["M"]) and computed["latent_recovered"]
                    and not skipped["latent_recovered"]):
                raise RuntimeError(f"{spec[0]}: the two paths differ in more than F⁻¹")
            pairs.append((spec[0], today, before))
        times = {(name, path, size): [] for name, *_ in pairs
                 for path in ("today", "before") for size in (1, speed.LATENCY_BATCH)}
        for round_ in range(options.rounds + 1):  # round 0 warms up
            for name, today, before in pairs:
                for path, subject in (("today", today), ("before", before)):
                    for size in (1, speed.LATENCY_BATCH):
                        elapsed = speed.forward_ms(subject, size)
                        if round_:
                            times[name, path, size].append(elapsed)
    print(f"Eval latency, median ms over {options.rounds} interleaved rounds, cpu, "
          f"{torch.get_num_threads()} threads, {options.shapes} MOSI shapes; predictions "
          f"equal.\n")
    print("| model | batch-1: F⁻¹ and decoder run / skipped | batch-32: run / skipped |")
    print("|---|---|---|")
    for name, *_ in pairs:
        cells = []
        for size in (1, speed.LATENCY_BATCH):
            before = statistics.median(times[name, "before", size])
            today = statistics.median(times[name, "today", size])
            cells.append(f"{before:.1f} / {today:.1f} ({today / before - 1:+.0%})")
        print(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
