"""One forward/backward pass on a batch, accumulating into a flat gradient. Shared by every training mode.

The model's parameters are views into one flat fp32 buffer and their `.grad`s are views into one flat
gradient buffer, so pulling, pushing, clipping and the optimizer all work on whole buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from async_nmt.config import PAD_ID, ModelConfig
from async_nmt.data.batches import Batch
from async_nmt.devices import out_of_memory
from async_nmt.errors import OutOfMemory
from async_nmt.model.transformer import Linear, Transformer


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


class LowPrecisionCopies:
    """The Linear layers' weights and biases in autocast's precision, copied once per batch.

    Autocast casts every Linear's fp32 weight and bias to bf16 at each call, and the backward pass casts
    their gradients back: about 260 of the 3,200 operators of a base update (scripts/count_ops.py). On a
    GPU a base update looks bound by the host issuing operators (an H200 ran its matmuls at 12.5% of their
    rate), where operators saved are time saved. Here one copy turns the span of the flat fp32 parameters that holds
    the Linear layers into a flat bf16 buffer, the layers compute with leaf views into it, their bf16
    gradients collect in a flat bf16 gradient, and one addition puts that into the flat fp32 gradient
    after the backward pass. The results are autocast's, bit for bit (tested): the same bf16 values go
    into the same kernels, and each bf16 gradient reaches the fp32 gradient once, as its cast would.
    Layer norms and the tied embedding stay fp32, as autocast has them."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.linears = [m for m in model.modules() if isinstance(m, Linear)]
        params = [p for m in self.linears for p in (m.weight, m.bias)]
        first = params[0]
        flat_size = first.untyped_storage().nbytes() // first.element_size()
        self.flat = first.detach().new_empty(0).set_(first.untyped_storage(), 0, (flat_size,))
        self.flat_grad = first.grad.new_empty(0).set_(first.grad.untyped_storage(), 0, (flat_size,))
        self.lo = min(p.storage_offset() for p in params)
        self.hi = max(p.storage_offset() + p.numel() for p in params)
        self.data = torch.empty(self.hi - self.lo, dtype=dtype, device=first.device)
        self.grad = torch.zeros_like(self.data)
        self.low = [(self._leaf(m.weight), self._leaf(m.bias)) for m in self.linears]

    @staticmethod
    def applies(model: nn.Module) -> bool:
        """Whether every Linear parameter is a view into one flat buffer with a flat gradient beside it."""
        params = [p for m in model.modules() if isinstance(m, Linear) for p in (m.weight, m.bias)]
        if not params or any(p.grad is None for p in params):
            return False
        data, grad = params[0].untyped_storage().data_ptr(), params[0].grad.untyped_storage().data_ptr()
        return all(
            p.untyped_storage().data_ptr() == data and p.grad.untyped_storage().data_ptr() == grad
            and p.grad.storage_offset() == p.storage_offset() and p.is_contiguous()
            for p in params
        )  # fmt: skip

    def _leaf(self, p: torch.Tensor) -> nn.Parameter:
        start = p.storage_offset() - self.lo
        leaf = nn.Parameter(torch.empty(0, dtype=self.data.dtype, device=self.data.device))
        leaf.data = self.data[start : start + p.numel()].view_as(p)
        leaf.grad = self.grad[start : start + p.numel()].view_as(p)
        return leaf

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The Linear layers compute with fresh copies of the current parameters inside this block."""
        with torch.no_grad():
            self.data.copy_(self.flat[self.lo : self.hi])
        for module, low in zip(self.linears, self.low, strict=True):
            module.low = low
        try:
            yield
        finally:
            for module in self.linears:
                module.low = None

    @torch.no_grad()
    def flush(self) -> None:
        """Add the bf16 gradients of the last backward pass to the flat fp32 gradient, and clear them."""
        self.flat_grad[self.lo : self.hi].add_(self.grad)
        self.grad.zero_()


LOW_PRECISION_COPIES = True  # off: plain autocast (the tests compare the two)


def low_precision_copies(model: nn.Module, amp_dtype: torch.dtype | None) -> LowPrecisionCopies | None:
    """The model's `LowPrecisionCopies` for `amp_dtype`, made at its first use; None where autocast is off
    or the model's parameters are not flat."""
    if amp_dtype is None or not LOW_PRECISION_COPIES:
        return None
    copies = model.__dict__.get("_low_precision_copies")
    if copies is None or copies.data.dtype != amp_dtype:
        if not LowPrecisionCopies.applies(model):
            return None
        copies = model.__dict__["_low_precision_copies"] = LowPrecisionCopies(model, amp_dtype)
    return copies


# On the CPU the loss runs over chunks of target tokens so that no logits buffer outgrows glibc's mmap
# threshold (32 MiB): buffers above it are mapped and zero-filled afresh at every step, which cost a third
# of the step time. On CUDA the caching allocator reuses memory, and one chunk is fastest.
CPU_LOSS_CHUNK_ELEMENTS = 2**23  # fp32 logits of a chunk stay within 32 MiB


PACK_SOURCE = True  # off: the encoder computes on every padded position (the tests compare the two)
PACK_TARGET = True  # off: the decoder computes on every padded position, as until 2026-12-07 (the tests compare)


def real_positions(ids: torch.Tensor, count: int) -> torch.Tensor:
    """The positions in `ids.view(-1)` of its `count` real (non-pad) tokens, in order. A boolean mask would
    read their count back from the device at every step; the host knows it, and a stable sort of the pad
    flags puts their positions first, in order."""
    return torch.argsort(ids.reshape(-1).eq(PAD_ID).int(), stable=True)[:count]


def batch_loss(
    model: nn.Module, batch: Batch, label_smoothing: float, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss and summed NLL over the batch's target tokens."""
    device = batch.src.device
    copies = low_precision_copies(model, amp_dtype)
    src_rows = None
    if PACK_SOURCE and 0 <= batch.src_tokens < batch.src.numel():  # (`Transformer.encode`)
        src_rows = real_positions(batch.src, batch.src_tokens)
    real = real_positions(batch.target, batch.tokens)  # only real tokens reach the output layer
    with autocast(device, amp_dtype), copies.active() if copies else contextlib.nullcontext():
        if PACK_TARGET:
            states = model.hidden(batch.src, batch.prev_tgt, src_rows, real)
        else:
            states = model.hidden(batch.src, batch.prev_tgt, src_rows)
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
    # train() walks every module: 3 of the 50 ms an update of base's layers took at width 64 (profiled on
    # the CPU, where the host's work is then most of it), were it called at every step
    if not model.training:
        model.train()
    loss, nll = batch_loss(model, batch, label_smoothing, amp_dtype)
    loss.backward()
    copies = low_precision_copies(model, amp_dtype)
    if copies is not None:
        copies.flush()
    return StepStats(loss.detach(), nll, batch.tokens, batch.sentences)  # no host sync: see StepStats


def push_gradient(
    model: nn.Module,
    flat: nn.Parameter,
    batches: Iterable[Batch],
    device: torch.device,
    label_smoothing: float,
    amp_dtype: torch.dtype | None,
) -> StepStats:
    """One push's gradient, the same in every mode: the flat gradient zeroed, then the summed gradients of
    `batches` (one, or `--local-accum` K of them, each moved to `device` as it comes) added into it."""
    flat.grad.zero_()
    stats = StepStats()
    for batch in batches:
        try:
            stats.add(train_step(model, batch.to(device), label_smoothing, amp_dtype))
            continue
        except RuntimeError as err:  # (leaving the handler drops the frames that hold the activations)
            if not out_of_memory(err):
                raise
        raise OutOfMemory(
            f"{device} ran out of memory on a training batch of {batch.sentences} sentences (source "
            f"{batch.src.size(0)} x {batch.src.size(1)}, target {batch.target.size(0)} x {batch.target.size(1)} "
            "tokens); train with a smaller --max-tokens"
        )
    return stats


@torch.no_grad()
def eval_step(model: nn.Module, batch: Batch, amp_dtype: torch.dtype | None) -> StepStats:
    if model.training:
        model.eval()
    loss, nll = batch_loss(model, batch, 0.0, amp_dtype)
    return StepStats(loss, nll, batch.tokens, batch.sentences)
