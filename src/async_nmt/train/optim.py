"""Adam over a flat fp32 vector (or a shard of one), and the inverse-square-root learning-rate schedule.

Adam is written out here, not taken from torch.optim, because its state must live beside a flat shard
of the master parameters (in shared memory for the parameter server) and be stepped on demand.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def inverse_sqrt_lr(update: int, peak_lr: float, warmup: int) -> float:
    """Linear warmup to `peak_lr` over `warmup` updates, then decay with 1/sqrt(update). `update` >= 1.
    `warmup` 0: `peak_lr` throughout, no decay either (--warmup's help says so)."""
    if warmup <= 0:
        return peak_lr
    return peak_lr * min(update / warmup, math.sqrt(warmup / update))


class FlatAdam:
    """Adam (no weight decay) on one flat parameter tensor; bias correction counts server updates."""

    def __init__(self, params: torch.Tensor, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-9):
        self.params = params
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = torch.zeros_like(params)
        self.exp_avg_sq = torch.zeros_like(params)
        self._denom: torch.Tensor | None = None  # scratch of the process that steps; reused across updates
        self._step: torch.Tensor | None = None

    def share_memory_(self) -> FlatAdam:
        """Move the moments into shared memory (CPU) so that worker processes step the same state."""
        self.exp_avg.share_memory_()
        self.exp_avg_sq.share_memory_()
        return self

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_denom": None, "_step": None}  # scratch is per process, never sent

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: float, update: int, grad_scale: float | torch.Tensor = 1.0) -> None:
        """Apply one Adam update with gradient `grad / grad_scale`; `update` is this update's number (1, 2, ...).

        Uses PyTorch's fused Adam kernel where there is one (one pass over the memory instead of about ten;
        3.3x faster for 60M parameters on one CPU thread), else the same arithmetic in tensor operations."""
        if _FUSED is not None:
            if self._step is None:
                self._step = torch.zeros((), dtype=torch.float32, device=self.params.device)
            self._step.fill_(update)
            if isinstance(grad_scale, torch.Tensor):
                scale = grad_scale
            else:
                scale = None if grad_scale == 1.0 else torch.full((), grad_scale, device=self.params.device)
            _FUSED([self.params], [grad], [self.exp_avg], [self.exp_avg_sq], [], [self._step], lr=lr,
                   beta1=self.beta1, beta2=self.beta2, weight_decay=0.0, eps=self.eps, amsgrad=False,
                   maximize=False, grad_scale=scale, found_inf=None)  # fmt: skip
            return
        if isinstance(grad_scale, torch.Tensor) or grad_scale != 1.0:
            grad.div_(grad_scale)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias1 = 1 - self.beta1**update
        bias2 = 1 - self.beta2**update
        if self._denom is None:
            self._denom = torch.empty_like(self.params)
        torch.div(self.exp_avg_sq, bias2, out=self._denom).sqrt_().add_(self.eps)
        self.params.addcdiv_(self.exp_avg, self._denom, value=-lr / bias1)


_FUSED = getattr(torch, "_fused_adam_", None)


@torch.no_grad()
def norm_and_scale_on_device(grad: torch.Tensor, tokens: int, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For a gradient summed over `tokens` target tokens: the norm of the token-normalized gradient, and the
    divisor that normalizes and clips it (`grad / scale` has norm at most `clip_norm`; 0 = no clipping), as
    0-dim tensors on `grad`'s device, computed without waiting for the device."""
    tokens = max(tokens, 1)
    norm = grad.norm() / tokens
    scale = torch.full((), float(tokens), dtype=torch.float32, device=grad.device)
    if clip_norm > 0:
        scale = scale * torch.where(norm > clip_norm, (norm + 1e-6) / clip_norm, 1.0)
    return norm, scale


@torch.no_grad()
def norm_and_scale(grad: torch.Tensor, tokens: int, clip_norm: float) -> tuple[float, float]:
    """`norm_and_scale_on_device` as numbers (a server shared between processes keeps them in shared memory)."""
    norm, scale = norm_and_scale_on_device(grad, tokens, clip_norm)
    return norm.item(), scale.item()
