"""The parameter server's update rule: sum pushes, and every `accum` pushes take one Adam update.

A push is a worker's summed gradient and the target tokens it covers. An update divides the sum of its
pushes by their tokens, clips it, and steps Adam with the learning rate of its update number. Staleness of
a push is the server's update count at push time minus the count the worker last pulled.

This in-process server serves one worker (`train.trainer`) and the deterministic simulator
(`modes.simulated`); the multi-process server will shard the same rule over devices.
"""

from __future__ import annotations

import torch

from async_nmt.train.optim import FlatAdam, inverse_sqrt_lr, normalize_and_clip


class ParamServer:
    def __init__(
        self,
        params: torch.Tensor,
        accum: int,
        peak_lr: float,
        warmup: int,
        clip_norm: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-9,
    ):
        self.params = params  # the flat fp32 master vector, updated in place
        self.accum = accum
        self.peak_lr, self.warmup, self.clip_norm = peak_lr, warmup, clip_norm
        self.adam = FlatAdam(params, betas, eps)
        # with accum 1 a push is applied as it comes: no sum buffer, no copy on the hot path
        self.grad_sum = torch.zeros_like(params) if accum > 1 else None
        self.pending_pushes = 0
        self.pending_tokens = 0
        self.updates = 0
        self.pushes = 0
        self.lr = 0.0
        self.grad_norm = 0.0

    def pull(self, out: torch.Tensor) -> int:
        """Copy the current parameters into `out`; returns the update count they belong to."""
        if out.data_ptr() != self.params.data_ptr():
            out.copy_(self.params)
        return self.updates

    @torch.no_grad()
    def push(self, grad: torch.Tensor, tokens: int, pulled_updates: int) -> int:
        """Add one worker gradient (summed over its tokens); apply an update if this push completes one.

        Returns the push's staleness. With accum 1, `grad` itself is normalized in place."""
        staleness = self.updates - pulled_updates
        self.pushes += 1
        self.pending_pushes += 1
        self.pending_tokens += tokens
        if self.grad_sum is None:
            self._update(grad)  # normalizes and clips the pushed buffer in place
        else:
            self.grad_sum.add_(grad)
            if self.pending_pushes == self.accum:
                self._update(self.grad_sum)
                self.grad_sum.zero_()
        return staleness

    def _update(self, grad: torch.Tensor) -> None:
        self.updates += 1
        self.lr = inverse_sqrt_lr(self.updates, self.peak_lr, self.warmup)
        self.grad_norm = normalize_and_clip(grad, self.pending_tokens, self.clip_norm)
        self.adam.step(grad, self.lr, self.updates)
        self.pending_pushes = self.pending_tokens = 0

    def state_dict(self) -> dict:
        # checkpoints are taken between updates: nothing is pending
        return {"optimizer": self.adam.state_dict(), "updates": self.updates, "pushes": self.pushes}

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["optimizer"])
        self.updates, self.pushes = state["updates"], state["pushes"]
