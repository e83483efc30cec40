"""Which text layers to keep when the text encoder must be shallower: for every choice of k of its
layers, how close the kept layers' output stays to the whole encoder's, on a split's texts.

    python benchmarks/text_layer_probe.py --file ../shared/data/mosi_utt/mosi_utt.pkl --keep 4,5

For each choice (the layers in their order, with their pretrained weights: `text_layers` given as
indices), the median over the texts of the cosine between the mean over real tokens of its last
hidden states and the whole encoder's. Labels are not read, and the split is the training one by
default, so a choice made from this table is fair to the validation and test splits. The first k
layers (`text_layers` = k) are one row among the others.
"""
from __future__ import annotations

import argparse
import itertools
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mmsa_iidaf.errors import ConfigError, UserError
from mmsa_iidaf.text_encoders import STAND_IN, TextEncoder, encoder_depth

BATCH_SIZE = 64


def pooled_states(encoder: TextEncoder, text_bert: torch.Tensor) -> torch.Tensor:
    """The mean over real tokens of the encoder's last hidden states, (N, H)."""
    pooled = []
    with torch.inference_mode():
        for batch in text_bert.split(BATCH_SIZE):
            mask = batch[:, 1, :, None]
            pooled.append((encoder(batch) * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(pooled)


@contextmanager
def kept_layers(encoder: TextEncoder, layers: tuple[int, ...]):
    """The encoder with only `layers` of its stack, in order, for the block: the same modules as
    `TextEncoder(layers=[...])` loads, from one encoder for every choice; the stack back after."""
    whole = encoder.model.encoder.layer
    encoder.model.encoder.layer = torch.nn.ModuleList(whole[index] for index in layers)
    try:
        yield encoder
    finally:
        encoder.model.encoder.layer = whole


def probe(pretrained: str, text_bert: np.ndarray, keep_counts: list[int]) -> list[dict]:
    available = encoder_depth(pretrained)
    if not all(0 < count < available for count in keep_counts):
        raise ConfigError(f"--keep {keep_counts}: {pretrained} has {available} layers; give counts "
                          f"1 to {available - 1}")
    text_bert = torch.from_numpy(np.asarray(text_bert, dtype=np.float32))
    encoder = TextEncoder(pretrained).eval()
    reference = pooled_states(encoder, text_bert)
    rows = []
    for count in keep_counts:
        for layers in itertools.combinations(range(available), count):
            with kept_layers(encoder, layers):
                states = pooled_states(encoder, text_bert)
            cosine = torch.nn.functional.cosine_similarity(states, reference, dim=1)
            rows.append({"layers": list(layers), "median_cosine": float(cosine.median()),
                         "first_k": layers == tuple(range(count))})
    return rows


def markdown(rows: list[dict], command: str, pretrained: str, split: str, samples: int) -> str:
    lines = [f"Command: `{command}`", "",
             f"Encoder {pretrained}; {samples} texts of the {split} split; cosine between the "
             f"mean-pooled last hidden states of the kept layers and of the whole encoder.", "",
             "| layers kept | median cosine to the whole encoder |", "|---|---|"]
    for count in sorted({len(row["layers"]) for row in rows}):
        ranked = sorted((row for row in rows if len(row["layers"]) == count),
                        key=lambda row: -row["median_cosine"])
        for row in ranked:
            name = f"`{row['layers']}`" + (" (the first k)" if row["first_k"] else "")
            lines.append(f"| {name} | {row['median_cosine']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", required=True, help="an MMSA feature pickle with text_bert")
    parser.add_argument("--split", default="train")
    parser.add_argument("--pretrained", default=STAND_IN)
    parser.add_argument("--keep", default="4,5", help="how many layers to keep, comma-separated")
    parser.add_argument("--markdown", help="write the table here as well")
    options = parser.parse_args(argv)
    path = Path(options.file)
    if not path.is_file():
        print(f"error: --file {path} does not exist; give an MMSA feature pickle", file=sys.stderr)
        return 2
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    if "text_bert" not in data.get(options.split, {}):
        print(f"error: {path} has no '{options.split}' split with 'text_bert'; give a file "
              f"tokenized for a BERT-family encoder", file=sys.stderr)
        return 2
    try:
        keep_counts = [int(count) for count in options.keep.split(",")]
    except ValueError:
        print(f"error: --keep '{options.keep}' must be whole numbers, e.g. 4,5", file=sys.stderr)
        return 2
    text_bert = data[options.split]["text_bert"]
    try:
        rows = probe(options.pretrained, text_bert, keep_counts)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python benchmarks/text_layer_probe.py " + " ".join(sys.argv[1:] if argv is None
                                                                   else argv)
    table = markdown(rows, command, options.pretrained, options.split, len(text_bert))
    print(table, end="")
    if options.markdown:
        Path(options.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
