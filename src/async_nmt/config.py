"""Typed configuration: model presets and training options, saved to and loaded from JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from async_nmt.errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class ModelConfig:
    """Encoder-decoder Transformer (pre-norm, tied embeddings, sinusoidal positions)."""

    vocab_size: int = 8000
    d_model: int = 256
    heads: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    ff_dim: int = 1024
    dropout: float = 0.1
    max_positions: int = 256  # longest source or target sequence, bos/eos included
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=256, heads=4, enc_layers=3, dec_layers=3, ff_dim=1024, dropout=0.1),
    "small": dict(d_model=512, heads=8, enc_layers=3, dec_layers=3, ff_dim=2048, dropout=0.1),
    "base": dict(d_model=512, heads=8, enc_layers=6, dec_layers=6, ff_dim=2048, dropout=0.1),
    "big": dict(d_model=1024, heads=16, enc_layers=6, dec_layers=6, ff_dim=4096, dropout=0.3),
}

# Peak learning rate and warmup updates when --lr/--warmup are not given. tiny's short warmup suits the
# few hundred updates a CPU run of minutes allows; base/big follow fairseq's Vaswani-style recipes.
TRAIN_DEFAULTS: dict[str, tuple[float, int]] = {
    "tiny": (7e-4, 250),
    "small": (7e-4, 1000),
    "base": (7e-4, 4000),
    "big": (5e-4, 4000),
}


def model_config(preset: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The named preset for a vocabulary, with any fields overridden."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return ModelConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})


@dataclass
class TrainConfig:
    """Everything `nmt train` was asked to do; saved as RUN/config.json."""

    bin_dir: str = ""
    preset: str = "tiny"
    mode: str = "sync"  # sync | async | async-accum
    workers: int = 1
    accum: int = 1  # async-accum: pushes summed per update
    local_accum: int = 1  # batches a worker sums before one push
    devices: list[str] = field(default_factory=list)
    simulate: bool = False  # emulate `workers` workers deterministically in one process
    worker_speeds: list[float] = field(default_factory=list)  # relative speed of each worker (slower: sleeps)
    shards: int = 0  # parameter-server shards; 0 = one per device
    max_tokens: int = 4096
    lr: float = 7e-4
    warmup: int = 250
    clip_norm: float = 0.0
    label_smoothing: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    dropout: float | None = None
    valid_every: int = 500
    valid_max_sentences: int = 0  # 0 = the whole valid split
    save_every: int = 0  # 0 = only at validation and at the end
    max_updates: int = 0
    max_epochs: int = 0
    max_time: float = 0.0  # seconds of training clock
    seed: int = 1
    precision: str = "auto"  # auto | fp32 | bf16
    compile: bool = False


C = TypeVar("C", ModelConfig, TrainConfig)


def save_json(cfg: ModelConfig | TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if "adam_betas" in kwargs:
        kwargs["adam_betas"] = tuple(kwargs["adam_betas"])
    return cls(**kwargs)


def load_json(cls: type[C], path: Path) -> C:
    try:
        return from_dict(cls, json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise UserError(f"{path}: not a readable {cls.__name__} ({err})") from None
