"""Atomic checkpoints: flat parameters, optimizer state, counters, data position, RNG, and the vocabulary."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from async_nmt.config import ModelConfig, from_dict
from async_nmt.errors import UserError
from async_nmt.model.transformer import Transformer

FORMAT_VERSION = 1


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return run_dir / "checkpoints" / f"{which}.pt"


def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless --resume or --force says what to do with it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a run folder")
    if resume:
        if not checkpoint_path(run_dir, "last").is_file():
            raise UserError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise UserError(f"{run_dir}: run folder exists; use --resume to continue it or --force to start over")


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` atomically: a reader sees the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, with one-line errors for anything else."""
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
    """The model (eval mode, on `device`) and vocabulary of a run folder or checkpoint file."""
    from async_nmt.devices import resolve_device
    from async_nmt.train.step import flatten_parameters

    ckpt_file = find_checkpoint(Path(path), which)
    state = read_checkpoint(ckpt_file)
    device = resolve_device(str(device) if device is not None else None)
    model = Transformer(from_dict(ModelConfig, state["model_config"])).to(device)
    flat = flatten_parameters(model)
    if flat.numel() != state["params"].numel():
        raise UserError(f"{ckpt_file}: parameter count does not match its model configuration")
    flat.data.copy_(state["params"])
    return model.eval(), vocab_from_checkpoint(state)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
