"""The checkpoint format and its reading side: find a run's checkpoint, read it, build its model for inference.

A checkpoint is one `torch.save` dict with `format`, `model_config`, `train_config`, `corpus`, `vocab_model`
(the sentencepiece model's bytes), `params` (the flat fp32 parameter vector, in `model.parameters()` order)
and what training needs to resume (written and read by `train/`).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from torch.nn.utils import vector_to_parameters

from async_nmt.config import ModelConfig, from_dict
from async_nmt.errors import UserError
from async_nmt.model.transformer import Transformer

FORMAT_VERSION = 1


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return run_dir / "checkpoints" / f"{which}.pt"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by training, with one-line errors for anything else."""
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not an async-nmt checkpoint (format {FORMAT_VERSION})")
    return state


def find_checkpoint(path: Path, which: str = "best") -> Path:
    """A run folder -> its `which` checkpoint (falling back to `last`); a file -> itself."""
    if path.is_dir():
        for name in (which, "last"):
            candidate = checkpoint_path(path, name)
            if candidate.is_file():
                return candidate
        raise UserError(f"{path}: no checkpoint in {path / 'checkpoints'} (is it a run folder?)")
    if not path.exists():
        raise UserError(f"{path}: no such run folder or checkpoint")
    return path


def vocab_from_checkpoint(state: dict[str, Any]) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(state["vocab_model"])
    return sp


def load_model(
    path: Path, which: str = "best", device: torch.device | str | None = None
) -> tuple[Transformer, spm.SentencePieceProcessor]:
    """The model (eval mode, on `device`, default the CPU) and vocabulary of a run folder or checkpoint file."""
    ckpt_file = find_checkpoint(Path(path), which)
    state = read_checkpoint(ckpt_file)
    model = Transformer(from_dict(ModelConfig, state["model_config"]))
    if sum(p.numel() for p in model.parameters()) != state["params"].numel():
        raise UserError(f"{ckpt_file}: parameter count does not match its model configuration")
    with torch.no_grad():
        vector_to_parameters(state["params"], model.parameters())
    return model.to(device or "cpu").eval(), vocab_from_checkpoint(state)
