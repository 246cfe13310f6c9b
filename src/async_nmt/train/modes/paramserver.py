"""The parameter server: a flat fp32 master vector in S shards, and the update rule every mode shares.

A push is a worker's summed gradient and the target tokens it covers. Each shard sums the pushes it gets
and, every `accum` pushes, divides the sum by their tokens, clips it, and steps Adam with the learning rate
of its update number. A push walks the shards from the worker's own index; each shard is locked while the
push adds its slice (and, when the count completes an update, while Adam runs), and unlocked only after
the device work is finished. Staleness of a push is the update count of shard 0 when the push reaches it,
minus the count the worker read when it last pulled. With `staleness_lr="inverse"` an update's learning rate
is divided by max(1, the mean staleness of the pushes it sums), each shard counting staleness with its own
update counts, now and at the worker's pull (Zhang et al. 2016, "Staleness-aware Async-SGD": lr / max(1, s)
for one push of staleness s).

One class serves every case. In process (one worker, the simulator, each rank of sync) it has one shard,
no real locks, and may update the caller's own tensor in place. Built with `shared=True` it is handed to
worker processes: CPU shards and counters live in shared memory, CUDA shards are shared by CUDA IPC, and
the locks are multiprocessing locks.

With S > 1 shards the gradient norm is only known per shard: each shard clips its slice to
`clip_norm / sqrt(S)` (so the whole update is never above `clip_norm`), and `grad_norm` reports the norm
of the last update of every shard together.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from async_nmt.errors import UserError
from async_nmt.train import processes
from async_nmt.train.optim import FlatAdam, inverse_sqrt_lr, norm_and_scale, norm_and_scale_on_device
from async_nmt.train.processes import uninterrupted

# columns of the shared int64 counters, one row per shard
UPDATES, PUSHES, PENDING_PUSHES, PENDING_TOKENS, PENDING_STALENESS = range(5)


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
        shards: int = 1,
        devices: Sequence[torch.device] = (),
        shared: bool = False,
        staleness_lr: str = "none",
    ):
        """`params` is the initial flat vector. In process with one shard on its device it is the master
        itself, updated in place; otherwise each shard copies its slice onto `devices[i % len(devices)]`."""
        self.accum = accum
        self.peak_lr, self.warmup = peak_lr, warmup
        if staleness_lr not in ("none", "inverse"):
            raise ValueError(f"staleness_lr: {staleness_lr!r} is not none or inverse")
        self.staleness_lr = staleness_lr
        self.clip_norm = clip_norm / math.sqrt(shards) if clip_norm > 0 else 0.0
        self.numel = params.numel()
        bounds = [round(i * self.numel / shards) for i in range(shards + 1)]
        self.bounds = list(zip(bounds[:-1], bounds[1:], strict=True))
        devices = list(devices) or [params.device]
        in_place = shards == 1 and not shared and devices[0] == params.device
        self.shards: list[torch.Tensor] = [
            params if in_place else params[lo:hi].detach().to(devices[i % len(devices)], copy=True)
            for i, (lo, hi) in enumerate(self.bounds)
        ]
        self.adam = [FlatAdam(p, betas, eps) for p in self.shards]
        self.grad_sums: list[torch.Tensor | None] = [None] * shards  # allocated at the first partial update
        if accum > 1:
            self.grad_sums = [torch.zeros_like(p) for p in self.shards]
        self.counters = torch.zeros(shards, 5, dtype=torch.int64)
        self.norms = torch.zeros(shards, 2, dtype=torch.float64)  # learning rate, squared gradient norm
        # In one process the squared norms stay 0-dim tensors on the device until they are read, so that an
        # update never waits for the device; shared between processes they are numbers in shared memory.
        self.shared = shared
        self._norm_sq: list[torch.Tensor | None] = [None] * shards
        self.locks: list[Any]
        if shared:
            for tensor in [self.counters, self.norms, *self.shards, *(s for s in self.grad_sums if s is not None)]:
                if tensor.device.type == "cpu":
                    tensor.share_memory_()
            for adam in self.adam:
                if adam.params.device.type == "cpu":
                    adam.share_memory_()
            ctx = processes.context()
            self.locks = [ctx.Lock() for _ in self.shards]
        else:
            self.locks = [contextlib.nullcontext() for _ in self.shards]

    # ------------------------------------------------------------------ counters
    @property
    def updates(self) -> int:
        return int(self.counters[0, UPDATES])

    @property
    def pushes(self) -> int:
        return int(self.counters[0, PUSHES])

    @property
    def pending_pushes(self) -> int:
        return int(self.counters[0, PENDING_PUSHES])

    @property
    def lr(self) -> float:
        return float(self.norms[0, 0])

    @property
    def grad_norm(self) -> float:
        self._settle_norms()
        return math.sqrt(float(self.norms[:, 1].sum()))

    def _settle_norms(self) -> None:
        for i, norm_sq in enumerate(self._norm_sq):
            if norm_sq is not None:
                self.norms[i, 1] = float(norm_sq)
                self._norm_sq[i] = None

    @property
    def params(self) -> torch.Tensor:
        """The master vector of a one-shard server (tests and the in-process modes)."""
        if len(self.shards) != 1:
            raise ValueError("a sharded server has no single parameter tensor; use gather()")
        return self.shards[0]

    # ------------------------------------------------------------------ pull and push
    def pull(self, out: torch.Tensor, quiet: bool = False) -> int:
        """Copy the current parameters into `out`; returns the update count (of shard 0) they belong to.
        `quiet`: the server takes no push now (the trainer's fences: validation), so the copy takes no lock; a
        worker killed while it held one, as it pulled, hung the trainer's validation for good."""
        return self.pull_each(out, quiet)[0]

    def pull_each(self, out: torch.Tensor, quiet: bool = False) -> list[int]:
        """`pull`, returning the update count of each shard's slice as it was copied: with several shards a
        push in flight may have updated some and not yet the others (`push` takes the list)."""
        updates = []
        for (lo, hi), shard, lock, counters in zip(self.bounds, self.shards, self.locks, self.counters, strict=True):
            with contextlib.nullcontext() if quiet else lock:
                if out.data_ptr() != shard.data_ptr():
                    out[lo:hi].copy_(shard)
                    self._finish(shard)  # the copy must be done before another process may update the shard
                    self._finish(out)
                updates.append(int(counters[UPDATES]))
        return updates

    @torch.no_grad()
    def push(self, grad: torch.Tensor, tokens: int, pulled_updates: int | Sequence[int], first_shard: int = 0,
             count: int = 1, record: Callable[[int], None] | None = None) -> int:  # fmt: skip
        """Add one gradient (summed over `tokens` target tokens) to every shard, starting at `first_shard`;
        a shard whose count reaches `accum` takes an update. Returns the push's staleness (shard 0's).
        `pulled_updates`: the update count the gradient's parameters were pulled at, of every shard alike or
        of each (`pull_each`), which `staleness_lr` measures each shard's staleness against.

        `record`, where given, is called with the staleness while shard 0 counts the push, under its lock: a
        reader that holds that lock (`counted`) sees the push's statistics together with its count.

        `count` is the number of pushes the gradient stands for (sync: the all-reduced sum of every worker's).
        A gradient that makes up a whole update alone is stepped from directly: `grad` is scratch afterwards.
        Ctrl-C waits for the push to end: a checkpoint never holds half an update."""
        with uninterrupted():
            return self._push(grad, tokens, pulled_updates, first_shard, count, record)

    def _push(self, grad: torch.Tensor, tokens: int, pulled_updates: int | Sequence[int], first_shard: int,
              count: int, record: Callable[[int], None] | None) -> int:  # fmt: skip
        staleness = 0
        shards = len(self.shards)
        pulled = [pulled_updates] * shards if isinstance(pulled_updates, int) else list(pulled_updates)
        for k in range(shards):
            i = (first_shard + k) % shards
            lo, hi = self.bounds[i]
            with self.locks[i]:
                row = self.counters[i].tolist()
                if i == 0:
                    staleness = row[UPDATES] - pulled[0]
                row[PUSHES] += count
                alone = row[PENDING_PUSHES] == 0 and count == self.accum
                row[PENDING_PUSHES] += count
                row[PENDING_TOKENS] += tokens
                row[PENDING_STALENESS] += max(row[UPDATES] - pulled[i], 0) * count
                # into a CPU shard the copy must be complete before the CPU reads it (non_blocking from a GPU
                # returns at once); onto a GPU it is ordered before the shard's use on its stream
                device = self.shards[i].device
                piece = grad[lo:hi].to(device, non_blocking=device.type == "cuda")
                if alone:
                    self._update(i, piece, row)
                else:
                    grad_sum = self.grad_sums[i]
                    if grad_sum is None:
                        grad_sum = self.grad_sums[i] = torch.zeros_like(self.shards[i])
                    grad_sum.add_(piece)
                    if row[PENDING_PUSHES] >= self.accum:
                        self._update(i, grad_sum, row)
                        grad_sum.zero_()
                self._finish(self.shards[i])
                self.counters[i] = torch.tensor(row)
                if i == 0 and record is not None:
                    record(staleness)
        return staleness

    def counted(self, read: Callable[[], Any], waiting: Callable[[], None]) -> tuple[int, int, float, float, Any]:
        """Shard 0's update and push counts, the learning rate and gradient norm of its last update, and what
        `read` returns, read together under shard 0's lock (see `push`'s `record`; the norm sums every shard's
        last, which with several shards may be of another update). `waiting` is called while another process
        holds the lock (it may raise: a worker killed while it held the lock never lets it go)."""
        lock = self.locks[0]
        if not isinstance(lock, contextlib.nullcontext):
            while not lock.acquire(timeout=0.05):
                waiting()
        try:
            counts = int(self.counters[0, UPDATES]), int(self.counters[0, PUSHES])
            return *counts, float(self.norms[0, 0]), self.grad_norm, read()
        finally:
            if not isinstance(lock, contextlib.nullcontext):
                lock.release()

    def _update(self, i: int, grad: torch.Tensor, row: list[int]) -> None:
        row[UPDATES] += 1
        lr = inverse_sqrt_lr(row[UPDATES], self.peak_lr, self.warmup)
        if self.staleness_lr == "inverse":
            lr /= max(1.0, row[PENDING_STALENESS] / row[PENDING_PUSHES])
        if self.shared:  # other processes read the norm: a number in shared memory
            norm, scale = norm_and_scale(grad, row[PENDING_TOKENS], self.clip_norm)
            self.adam[i].step(grad, lr, row[UPDATES], grad_scale=scale)
            self.norms[i] = torch.tensor([lr, norm * norm], dtype=torch.float64)
        else:
            norm_t, scale_t = norm_and_scale_on_device(grad, row[PENDING_TOKENS], self.clip_norm)
            self.adam[i].step(grad, lr, row[UPDATES], grad_scale=scale_t)
            self.norms[i, 0] = lr
            self._norm_sq[i] = norm_t * norm_t
        row[PENDING_PUSHES] = row[PENDING_TOKENS] = row[PENDING_STALENESS] = 0

    def _finish(self, tensor: torch.Tensor) -> None:
        """Shared between processes: wait for the device work queued on `tensor`'s device, so that the next
        lock holder sees its result. In one process the work is ordered on the stream, and nothing waits."""
        if self.shared and tensor.device.type == "cuda":
            torch.cuda.current_stream(tensor.device).synchronize()

    # ------------------------------------------------------------------ checkpoints (taken while no push runs)
    def gather(self) -> torch.Tensor:
        """The whole master vector, on the CPU."""
        return torch.cat([shard.cpu() for shard in self.shards])

    def load_params(self, flat: torch.Tensor) -> None:
        for (lo, hi), shard in zip(self.bounds, self.shards, strict=True):
            shard.copy_(flat[lo:hi])

    def state_dict(self) -> dict[str, Any]:
        self._settle_norms()
        pending = bool(self.counters[:, PENDING_PUSHES].any())
        sums = zip(self.grad_sums, self.bounds, strict=True)
        return {
            "optimizer": {
                "exp_avg": torch.cat([a.exp_avg.cpu() for a in self.adam]),
                "exp_avg_sq": torch.cat([a.exp_avg_sq.cpu() for a in self.adam]),
            },
            "updates": self.updates,
            "pushes": self.pushes,
            "counters": self.counters.clone(),
            "norms": self.norms.clone(),
            # a partial sum (async-accum between updates) is part of the state
            "grad_sum": torch.cat([_cpu(g, lo, hi) for g, (lo, hi) in sums]) if pending else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        optimizer = state["optimizer"]
        for (lo, hi), adam in zip(self.bounds, self.adam, strict=True):
            adam.exp_avg.copy_(optimizer["exp_avg"][lo:hi])
            adam.exp_avg_sq.copy_(optimizer["exp_avg_sq"][lo:hi])
        counters, norms = state.get("counters"), state.get("norms")
        if counters is None:  # an older checkpoint: counters of shard 0 only, nothing pending
            counters = torch.zeros(1, 5, dtype=torch.int64)
            counters[0, UPDATES], counters[0, PUSHES] = state["updates"], state["pushes"]
        if counters.shape[1] < self.counters.shape[1]:  # an older checkpoint: no staleness column (0 = fresh)
            counters = torch.nn.functional.pad(counters, (0, self.counters.shape[1] - counters.shape[1]))
        if len(counters) != len(self.shards):
            # Another shard count: carried over exactly when every shard had seen the same pushes, as
            # checkpoints of a quiet server have (the partial sum and its tokens are then the same for all)
            # (staleness is counted per shard and may differ; shard 0's stands for all)
            if not bool((counters[:, :PENDING_STALENESS] == counters[0, :PENDING_STALENESS]).all()):
                raise UserError(
                    f"the checkpoint's {len(counters)} server shards were not between updates; "
                    f"resume with --shards {len(counters)}"
                )
            counters = counters[:1].expand(len(self.shards), -1)
            if norms is not None:  # the learning rate, and the squared norm spread over the shards
                norms = torch.stack([norms[0, 0], norms[:, 1].sum() / len(self.shards)]).expand(len(self.shards), -1)
        self.counters.copy_(counters)
        self._norm_sq = [None] * len(self.shards)
        if norms is not None:
            self.norms.copy_(norms)
        if state.get("grad_sum") is not None:
            for i, (lo, hi) in enumerate(self.bounds):
                if self.grad_sums[i] is None:
                    self.grad_sums[i] = torch.zeros_like(self.shards[i])
                self.grad_sums[i].copy_(state["grad_sum"][lo:hi])


def _cpu(grad_sum: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    return torch.zeros(hi - lo) if grad_sum is None else grad_sum.cpu()
