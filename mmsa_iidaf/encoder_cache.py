"""A frozen text encoder costs one pass over the data, not one pass per epoch.

When a run reads text through a BERT-family encoder that it does not fine-tune, each split's
`text_bert` is encoded once, in eval mode, and the last hidden states are saved on disk under a
key made of the split's token content and the encoder's identity. Every later forward pass of that
encoder (IIDAF's `TextEncoder` or MMSA's `BertTextEncoder`) looks its batch up by content instead
of running the encoder; a batch with any unknown row runs the encoder as usual.

Cached states are eval-mode states (no dropout): for a frozen encoder that is the intended
feature. MMSA's models run their frozen BERT in train mode, so with dropout; set the config key
`cache_text_states` to false to keep that behaviour.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("MMSA")

BATCH_SIZE = 64
# encoder (directory, and its layer count when truncated) -> {token content of one sample: its
# last hidden states (L, H)}
_TABLES: dict[str, dict[bytes, torch.Tensor]] = {}


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("MMSA_IIDAF_CACHE", root / "mmsa_iidaf")) / "text_states"


def _table_key(encoder_dir: str | Path, layers: int | tuple[int, ...]) -> str:
    return str(encoder_dir) if not layers else f"{encoder_dir}#layers={layers}"


def _encoder_identity(encoder_dir: Path, layers: int | tuple[int, ...]) -> bytes:
    """The encoder's directory and layer count, its config, and the size and time of its weight
    files."""
    parts = [_table_key(encoder_dir, layers), (encoder_dir / "config.json").read_text()]
    for weights in sorted(encoder_dir.glob("*.safetensors")) + sorted(encoder_dir.glob("*.bin")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "\n".join(parts).encode()


def _row_keys(text_bert: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(text_bert, dtype=np.float32)
    return [row.tobytes() for row in rows]


def states_file(encoder_dir: Path, text_bert: np.ndarray,
                layers: int | tuple[int, ...] = 0) -> Path:
    digest = hashlib.sha256(_encoder_identity(encoder_dir, layers))
    digest.update(np.ascontiguousarray(text_bert, dtype=np.float32).tobytes())
    return cache_dir() / f"{digest.hexdigest()}.pt"


def _encode(encoder_dir: Path, text_bert: np.ndarray,
            layers: int | tuple[int, ...]) -> torch.Tensor:
    from .text_encoders import TextEncoder

    encoder = TextEncoder(str(encoder_dir), finetune=False, layers=layers).eval()
    batches = torch.from_numpy(np.asarray(text_bert, dtype=np.float32)).split(BATCH_SIZE)
    with torch.no_grad():
        return torch.cat([encoder(batch) for batch in batches])


def precompute(encoder_dir: str | Path, text_bert: np.ndarray,
               layers: int | tuple[int, ...] = 0) -> Path:
    """Make the states of every sample of `text_bert` (N, 3, L) available, as the encoder's first
    `layers` layers (0: all; a tuple: those layers) give them; return the file."""
    encoder_dir = Path(encoder_dir)
    path = states_file(encoder_dir, text_bert, layers)
    if path.is_file():
        states = torch.load(path)
    else:
        logger.info(f"encoding {len(text_bert)} texts once with the frozen {encoder_dir.name}")
        states = _encode(encoder_dir, text_bert, layers)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        torch.save(states, partial)
        os.replace(partial, path)
    table = _TABLES.setdefault(_table_key(encoder_dir, layers), {})
    table.update(zip(_row_keys(text_bert), states))
    return path


def lookup(encoder_dir: str | Path, text_bert: torch.Tensor,
           layers: int | tuple[int, ...] = 0) -> torch.Tensor | None:
    """The cached states of a batch (B, 3, L) from the encoder's `layers` (as `precompute`),
    on its device, or None if any row is unknown.

    Only the three token rows count: MMSA's model-side alignment (`need_model_aligned`) pads the
    batch with more rows, which no encoder reads."""
    table = _TABLES.get(_table_key(encoder_dir, layers))
    if not table:
        return None
    try:
        states = [table[key] for key in _row_keys(text_bert[:, :3].detach().cpu().numpy())]
    except KeyError:
        return None
    return torch.stack(states).to(text_bert.device)


def clear() -> None:
    """Forget the in-memory tables (the files on disk stay)."""
    _TABLES.clear()
