"""One forward/backward pass on a batch, accumulating into a flat gradient. Shared by every training mode.

The model's parameters are views into one flat fp32 buffer and their `.grad`s are views into one flat
gradient buffer, so pulling, pushing, clipping and the optimizer all work on whole buffers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from async_nmt.config import PAD_ID, ModelConfig
from async_nmt.data.batches import Batch
from async_nmt.model.transformer import Transformer


def flatten_parameters(model: nn.Module) -> nn.Parameter:
    """Move every parameter of `model` into one flat buffer (returned) and make each a view into it.

    Gradients get the same treatment: `flat.grad` is one buffer and every `p.grad` is a view into it,
    which autograd accumulates into in place. Call after the model is on its device.
    """
    params = list(model.parameters())  # shared (tied) parameters appear once
    device = params[0].device
    flat = nn.Parameter(torch.zeros(sum(p.numel() for p in params), device=device, dtype=torch.float32))
    flat.grad = torch.zeros_like(flat.data)
    offset = 0
    for p in params:
        n = p.numel()
        flat.data[offset : offset + n].copy_(p.data.reshape(-1))
        p.data = flat.data[offset : offset + n].view_as(p)
        p.grad = flat.grad[offset : offset + n].view_as(p)
        offset += n
    return flat


def build_model(
    model_cfg: ModelConfig, device: torch.device, compiled: bool = False
) -> tuple[Transformer, nn.Parameter]:
    """A model to train on `device`, with its flat parameters, compiled if asked (`compile_model`)."""
    model = Transformer(model_cfg).to(device)
    flat = flatten_parameters(model)
    if compiled:
        compile_model(model)
    return model, flat


def compile_model(model: Transformer) -> None:
    """torch.compile the encoder-decoder stack; the chunked output layer and loss stay eager."""
    model.hidden = torch.compile(model.hidden)  # type: ignore[method-assign]


@dataclass
class StepStats:
    """Sums over one or more batches: label-smoothed loss, NLL, target tokens, sentences. The losses of
    `train_step` stay 0-dim tensors on the device, so that a step never waits for the GPU; `float()` them
    where a number is needed (logging, messages to other processes)."""

    loss: float | torch.Tensor = 0.0
    nll: float | torch.Tensor = 0.0
    tokens: int = 0
    sentences: int = 0

    def add(self, other: StepStats) -> None:
        self.loss += other.loss
        self.nll += other.nll
        self.tokens += other.tokens
        self.sentences += other.sentences


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# On the CPU the loss runs over chunks of target tokens so that no logits buffer outgrows glibc's mmap
# threshold (32 MiB): buffers above it are mapped and zero-filled afresh at every step, which cost a third
# of the step time. On CUDA the caching allocator reuses memory, and one chunk is fastest.
CPU_LOSS_CHUNK_ELEMENTS = 2**23  # fp32 logits of a chunk stay within 32 MiB


def batch_loss(
    model: nn.Module, batch: Batch, label_smoothing: float, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL over the batch's target tokens."""
    device = batch.src.device
    with autocast(device, amp_dtype):
        states = model.hidden(batch.src, batch.prev_tgt)
    # Only real tokens reach the output layer. A boolean mask would read their count back from the device
    # at every step; the host knows it (`batch.tokens`), and a stable sort of the pad flags puts their
    # positions first, in order.
    real = torch.argsort(batch.target.reshape(-1).eq(PAD_ID).int(), stable=True)[: batch.tokens]
    states = states.reshape(-1, states.size(-1)).index_select(0, real)
    target = batch.target.reshape(-1).index_select(0, real)
    vocab = model.cfg.vocab_size
    chunk = max(1, CPU_LOSS_CHUNK_ELEMENTS // vocab) if device.type == "cpu" else len(target)
    loss = nll = torch.zeros((), device=device)
    for states_c, target_c in zip(states.split(chunk), target.split(chunk), strict=True):
        with autocast(device, amp_dtype):
            logits = model.project(states_c)
        lprobs = F.log_softmax(logits.float(), dim=-1)
        nll_c = -lprobs.gather(1, target_c.unsqueeze(1)).sum()
        nll = nll + nll_c
        if label_smoothing > 0:
            # as F.cross_entropy(label_smoothing=...), sharing one log-softmax with the NLL
            nll_c = (1 - label_smoothing) * nll_c - label_smoothing * lprobs.sum() / vocab
        loss = loss + nll_c
    return loss, nll.detach()


def train_step(model: nn.Module, batch: Batch, label_smoothing: float, amp_dtype: torch.dtype | None) -> StepStats:
    """Forward and backward on one batch; the summed gradient is added to the flat gradient buffer."""
    model.train()
    loss, nll = batch_loss(model, batch, label_smoothing, amp_dtype)
    loss.backward()
    return StepStats(loss.detach(), nll, batch.tokens, batch.sentences)  # no host sync: see StepStats


@torch.no_grad()
def eval_step(model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> StepStats:
    model.eval()
    loss, nll = batch_loss(model, batch, 0.0, amp_dtype)
    return StepStats(loss, nll, batch.tokens, batch.sentences)
