"""diloco: W workers each take H inner Adam steps on their own data from the last global parameters; then
their parameter changes are averaged into an outer gradient, and an outer SGD step with Nesterov momentum
updates the global parameters, which every worker starts its next round from (Douillard et al. 2023,
"DiLoCo", arXiv 2311.08105). With `--outer-lr 1 --outer-momentum 0` the outer step sets the global
parameters to the workers' average: local SGD, parameter averaging every H steps.

An inner step is the update rule every mode shares (`ParamServer`, one per worker: its own Adam moments
and schedule, token-normalized, clipped). The outer step (PyTorch's SGD with `nesterov=True`):

    delta = global - mean_w(params_w)        # the outer gradient
    buf   = mu * buf + delta                 # (buf = delta at the first outer step)
    global -= outer_lr * (delta + mu * buf)

One update of the run is one inner step of every worker (W batches, as a sync update), so `--valid-every`,
`--max-updates` and the learning-rate schedule count inner steps; the global parameters change every H of
them. Validation and checkpoints see the global parameters. The workers' inner parameters and Adam states
are part of the checkpoint, so a run resumes mid-round exactly. The staleness of a push is here the
inner steps its worker has taken since the last sync (0 .. H-1).

With worker processes (`--workers W`, spawned, or ranks torchrun started) each rank is one worker, as in
sync, but the ranks meet only where they must: at a round's end (the parameters), and where the trainer
logs, validates, saves or ends (the losses since they last met, and whether to stop). In between each runs
at its own pace. (Until 2026-12-05 every inner step all-reduced the losses, so every step waited for the
slowest rank, which the predicted clock does not model.) Emulated in one process
(`--simulate`), deterministically, the predicted clock charges every worker's compute at its speed, and at
each sync waits for the slowest worker and adds one ring all-reduce of the parameters at `--link-gbps`.

A limit (`--max-time`, `--max-epochs`, `--patience`) stops the run at the end of the round under way, in
both: the inner steps of a round cut short never reach the global parameters (until 2026-12-05 they were
trained and thrown away). `--max-updates` stops where it says (warned of where it is not a round's end),
and Ctrl-C at the next point where the ranks meet (emulated: at once); both save the workers' states, so a
resume goes on mid-round exactly.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from async_nmt.config import TrainConfig
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.ranks import RankGroup
from async_nmt.train.modes.simulated import PredictedClock
from async_nmt.train.modes.workers import ModeContext, Workers, histogram
from async_nmt.train.step import StepStats, push_gradient

CTRL_C = 2  # the all-reduce of a meeting: the two losses since the last, then the Ctrl-C flag


def partial_round_warning(cfg: TrainConfig) -> str | None:
    """A warning where a validation, checkpoint or the end falls inside a round: they see the global
    parameters of the last whole round, so the inner steps since are trained but not in the saved model."""
    if cfg.mode != "diloco":
        return None
    h = cfg.sync_every
    off = [f"--{name.replace('_', '-')} {every}" for name, every in
           (("max_updates", cfg.max_updates), ("valid_every", cfg.valid_every), ("save_every", cfg.save_every))
           if every % h]  # fmt: skip
    if not off:
        return None
    verb = "is not a multiple" if len(off) == 1 else "are not multiples"
    return (f"warning: {' and '.join(off)} {verb} of --sync-every {h}: validations and checkpoints "
            f"inside a round see the global parameters of the last whole round (the inner steps since are "
            f"trained but not in best.pt or last.pt's model)")  # fmt: skip


class OuterServer:
    """The global parameters and the outer Nesterov step; what the trainer reads as the run's server."""

    def __init__(self, params: torch.Tensor, outer_lr: float, momentum: float, sync_every: int):
        self.params, self.outer_lr, self.momentum, self.sync_every = params, outer_lr, momentum, sync_every
        self.buf: torch.Tensor | None = None
        self.numel = params.numel()
        self.updates = self.pushes = self.outer_steps = 0
        self.lr = 0.0  # the inner learning rate of the last step
        self.grad_norm = 0.0  # the norm of the last outer gradient

    def outer_step(self, worker_params: list[torch.Tensor]) -> None:
        self.outer_step_to(torch.stack(worker_params).mean(0))

    @torch.no_grad()
    def outer_step_to(self, mean: torch.Tensor) -> None:
        """The outer step, given the workers' average parameters."""
        delta = self.params - mean
        self.grad_norm = float(delta.norm())
        if self.buf is None:
            self.buf = delta.clone()
        else:
            self.buf.mul_(self.momentum).add_(delta)
        self.params.sub_(delta.add(self.buf, alpha=self.momentum), alpha=self.outer_lr)
        self.outer_steps += 1

    def pull(self, out: torch.Tensor, quiet: bool = False) -> int:
        """As `ParamServer.pull`'s; this server has no lock (one process), so `quiet` changes nothing."""
        if out.data_ptr() != self.params.data_ptr():
            out.copy_(self.params)
        return self.updates

    def gather(self) -> torch.Tensor:
        return self.params.cpu()

    def load_params(self, flat: torch.Tensor) -> None:
        self.params.copy_(flat)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "pushes": self.pushes, "outer_steps": self.outer_steps, "lr": self.lr,
                "grad_norm": self.grad_norm, "buf": None if self.buf is None else self.buf.cpu()}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("updates", "pushes", "outer_steps", "lr", "grad_norm"):
            setattr(self, name, state[name])
        self.buf = None if state["buf"] is None else state["buf"].to(self.params.device)


class SimulatedDiloco(PredictedClock, Workers):
    """W DiLoCo workers emulated in one process, in worker order within each inner step."""

    steps_here = True
    stop_wished = False  # a limit was reached: the run stops at the end of the round under way

    def agree_stop(self, wish: bool) -> bool:
        self.stop_wished = self.stop_wished or wish
        return self.stop_wished and self.server.updates % self.server.sync_every == 0

    def __init__(self, ctx: ModeContext, server: OuterServer, inner_options: dict[str, Any]):
        cfg = ctx.cfg
        self.model, self.flat, self.server, self.streams = ctx.model, ctx.flat, server, ctx.streams
        self.cfg, self.amp_dtype, self.device = cfg, ctx.amp_dtype, ctx.flat.device
        workers = len(self.streams)
        self.params = [server.params.clone() for _ in range(workers)]
        self.inner = [ParamServer(p, **inner_options) for p in self.params]  # in place on each worker's copy
        self.start_clock(cfg, workers, server.numel)
        self.worker_pushes = [0] * workers

    def advance(self) -> tuple[StepStats, list[int]]:
        server, stats = self.server, StepStats()
        since_sync = server.updates % server.sync_every
        for worker, params in enumerate(self.params):
            self.flat.data.copy_(params)
            start = time.perf_counter()
            batches = (self.streams[worker].next() for _ in range(self.cfg.local_accum))
            pushed = push_gradient(self.model, self.flat, batches, self.device, self.cfg.label_smoothing,
                                   self.amp_dtype)  # fmt: skip
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            took = time.perf_counter() - start
            self.inner[worker].push(self.flat.grad, pushed.tokens, self.inner[worker].updates)
            self.worker_pushes[worker] += 1
            self.charge(worker, pushed.tokens, took)
            stats.add(pushed)
        server.updates += 1
        server.pushes += len(self.params)
        server.lr = self.inner[0].lr
        if server.updates % server.sync_every == 0:
            server.outer_step(self.params)
            for params in self.params:
                params.copy_(server.params)
            self.all_reduce()
        self.predicted_s = max(self.seconds)
        return stats, histogram([since_sync] * len(self.params))

    def state_dict(self) -> dict[str, Any]:
        return {"params": [p.cpu() for p in self.params], "inner": [s.state_dict() for s in self.inner],
                "seconds": self.seconds, "predicted_s": self.predicted_s,
                "worker_pushes": self.worker_pushes}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        assert state is not None
        for params, inner, saved, saved_inner in zip(self.params, self.inner, state["params"], state["inner"],
                                                     strict=True):  # fmt: skip
            params.copy_(saved)
            inner.load_state_dict(saved_inner)
        for name in ("seconds", "predicted_s", "worker_pushes"):
            setattr(self, name, state[name])


class DistributedDiloco(RankGroup):
    """diloco with one rank per worker (torch.distributed, started like sync ranks): the inner steps are
    local, and the ranks meet only at a round's end, where one all-reduce of the parameters precedes the
    same outer step on every rank, and where the trainer logs, validates, saves or ends (`_meet`). Before a
    save (a validation, --save-every, the end, Ctrl-C) rank 0 gathers every rank's inner state, so that a
    run resumes mid-round exactly."""

    stop_wished = False  # a limit was reached here: the ranks stop at the end of the round under way

    def __init__(self, ctx: ModeContext, server: OuterServer, inner_options: dict[str, Any]):
        super().__init__(ctx, server)
        self.outer = server
        self.params = server.params.clone()  # this rank's inner parameters
        self.inner = ParamServer(self.params, **inner_options)
        self.unshared: torch.Tensor | None = None  # this rank's losses (sum, nll) since the ranks last met

    def agree_stop(self, wish: bool) -> bool:
        """At a round's end, the ranks share their wishes to stop (a limit: time, epochs, --patience), and
        stop there if any has one, as the emulation does; elsewhere a wish waits for the round's end. The
        trainer asks twice an update, every rank alike: after the step, and after a validation (where
        --patience may be spent), so they share twice at a round's end."""
        self.stop_wished = self.stop_wished or wish
        if self.outer.updates % self.outer.sync_every == 0 and not self.agreed:
            flag = torch.tensor([float(self.stop_wished)], dtype=torch.float64, device=self.meta_device)
            with self.collective():
                dist.all_reduce(flag)
            if flag.item() > 0:
                self.agreed = True
                self._gather_before_save()  # (the trainer saves as it stops)
        return self.agreed

    def advance(self) -> tuple[StepStats, list[int]]:
        ctx, server = self.ctx, self.outer
        since_sync = server.updates % server.sync_every
        ctx.flat.data.copy_(self.params)
        local, tokens, sentences = self._compute()
        self.inner.push(ctx.flat.grad, local.tokens, self.inner.updates)
        server.updates += 1
        server.pushes += self.world
        server.lr = self.inner.lr
        losses = torch.stack([torch.as_tensor(local.loss), torch.as_tensor(local.nll)]).double()  # (on the device)
        self.unshared = losses if self.unshared is None else self.unshared + losses
        round_end = server.updates % server.sync_every == 0
        if round_end or self._trainer_reads(server.updates):
            shared = self._meet()
        else:  # the losses wait for the next meeting, which every logged interval ends with
            shared = torch.zeros(2, dtype=torch.float64, device=self.meta_device)
        if round_end:
            mean = self.params.clone()
            with self.collective():
                dist.all_reduce(mean)
            server.outer_step_to(mean.div_(self.world))
            self.params.copy_(server.params)
        self._gather_before_save()
        return StepStats(shared[0], shared[1], tokens, sentences), histogram([since_sync] * self.world)

    def _trainer_reads(self, updates: int) -> bool:
        """Whether the trainer logs the losses, validates or saves after this update (or ends: --max-updates)."""
        cfg = self.ctx.cfg
        every = cfg.log_every  # (the trainer's `train` events, for which the ranks share their losses)
        return (updates >= self.fence or updates // every > (updates - 1) // every
                or (cfg.max_updates > 0 and updates >= cfg.max_updates))  # fmt: skip

    def _meet(self) -> torch.Tensor:
        """One all-reduce of every rank's losses since the last meeting and of Ctrl-C, read at once (the
        ranks wait for each other here anyway): Ctrl-C stops them at any meeting. Returns the losses of
        all ranks since the last meeting."""
        interrupt = self.interrupt is not None and self.interrupt.is_set()
        assert self.unshared is not None
        flag = torch.tensor([float(interrupt)], dtype=torch.float64)
        meta = torch.cat([self.unshared, flag.to(self.unshared.device)]).to(self.meta_device)
        with self.collective():
            dist.all_reduce(meta)
        if meta[CTRL_C].item() > 0:
            self.interrupted = self.agreed = True
        self.unshared = None
        return meta[:CTRL_C]

    def _own_state(self) -> dict[str, Any]:
        return {**super()._own_state(), "params": self.params.cpu(), "inner": self.inner.state_dict()}

    def _load_own(self, own: dict[str, Any]) -> None:
        super()._load_own(own)
        self.params.copy_(own["params"])
        self.inner.load_state_dict(own["inner"])
