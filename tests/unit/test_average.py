"""Checkpoint averaging: the mean of the kept checkpoints' parameters, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from async_nmt.errors import UserError
from async_nmt.model.checkpoint import average_checkpoints, kept_checkpoints, kept_path, last_kept, read_checkpoint
from async_nmt.train.checkpoint import save_checkpoint


def save_kept(run: Path, updates: int, params: torch.Tensor, d_model: int = 8) -> Path:
    path = kept_path(run, updates)
    state = {"model_config": {"d_model": d_model}, "train_config": {}, "corpus": {"vocab_hash": "v"},
             "vocab_model": b"spm", "params": params, "server": {"updates": updates}}  # fmt: skip
    save_checkpoint(state, path)
    return path


def test_the_average_is_the_mean_of_the_last_n_kept_checkpoints(tmp_path: Path):
    torch.manual_seed(0)
    params = {u: torch.randn(50) for u in (5, 10, 15, 100)}  # 100 sorts after 15 as a number, not as text
    for updates, p in params.items():
        save_kept(tmp_path, updates, p)
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["update-5.pt", "update-10.pt", "update-15.pt",
                                                            "update-100.pt"]  # fmt: skip
    paths = last_kept(tmp_path, 3)
    averaged = average_checkpoints(paths)
    torch.testing.assert_close(averaged["params"], (params[10] + params[15] + params[100]) / 3)
    assert "server" not in averaged  # no training state: it translates, it does not resume
    out = tmp_path / "avg.pt"
    save_checkpoint(averaged, out)
    assert torch.equal(read_checkpoint(out)["params"], averaged["params"])


def test_averaging_refuses_too_few_checkpoints_and_another_model(tmp_path: Path):
    save_kept(tmp_path, 5, torch.zeros(8))
    with pytest.raises(UserError, match="1 kept checkpoints, fewer than the 2 asked for .*--keep-last 2"):
        last_kept(tmp_path, 2)
    with pytest.raises(UserError, match="no such run folder"):
        last_kept(tmp_path / "nowhere", 1)
    other = save_kept(tmp_path, 10, torch.zeros(8), d_model=16)
    with pytest.raises(UserError, match=f"{other}: another model config"):
        average_checkpoints(last_kept(tmp_path, 2))
