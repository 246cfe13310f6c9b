"""Training modes: how worker gradients (pushes) become optimizer updates.

- sync:        every worker pushes one gradient per step; they are all-reduced; one update per step.
- async:       every push is applied as one update as soon as it arrives, no barrier.
- async-accum: the server sums `accum` pushes, from any workers, then takes one update.
- diloco:      every worker takes H inner steps of its own; their average change is one outer step.

The update rule lives in `paramserver.py`, the `Workers` interface in `workers.py`. Who computes the pushes
is chosen here, in `build_workers`, and nowhere else:
- `local.py`        one worker in the trainer's process (sync, async, async-accum with --workers 1);
- `sync.py`         this process is one rank of an all-reduce group (torch.distributed);
- `asynchronous.py` worker processes pushing to a shared parameter server (async, async-accum);
- `simulated.py`    W workers emulated in one process, deterministically (--simulate: sync, async,
                    async-accum), and the predicted clock every emulated mode shares;
- `remote.py`       async modes across processes torchrun started (rank 0 serves, the others push);
- `diloco.py`       diloco: the outer step; its workers as all-reduce ranks, or emulated in one process
                    (--simulate, and always with --workers 1).
`ranks.py` holds what sync's and diloco's ranks share (the group, the streams, the state gathered to save).
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch

from async_nmt.config import ASYNC_MODES, MODES, RANK_MODES, TrainConfig, torchrun_rank
from async_nmt.devices import default_device, resolve_device
from async_nmt.errors import UserError
from async_nmt.train.modes.asynchronous import ProcessWorkers
from async_nmt.train.modes.diloco import DistributedDiloco, OuterServer, SimulatedDiloco
from async_nmt.train.modes.local import LocalWorker
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.remote import RemoteWorkers
from async_nmt.train.modes.simulated import SimulatedWorkers
from async_nmt.train.modes.sync import DistributedSync
from async_nmt.train.modes.workers import ModeContext, Workers
from async_nmt.train.step import compile_model


def build_workers(ctx: ModeContext) -> Workers:
    """The Workers of the mode `ctx.cfg` asks for, with their parameter server."""
    cfg = ctx.cfg
    options = dict(accum=pushes_per_update(cfg), peak_lr=cfg.lr, warmup=cfg.warmup, clip_norm=cfg.clip_norm,
                   betas=cfg.adam_betas, eps=cfg.adam_eps, staleness_lr=cfg.staleness_lr)  # fmt: skip
    if ctx.world > 1 and cfg.mode in ASYNC_MODES:  # rank 0 of torchrun's group serves the others
        return RemoteWorkers(ctx, ParamServer(ctx.flat.data, **options))
    if cfg.workers > 1 and not cfg.simulate and cfg.mode in ASYNC_MODES:  # a shared server's clients
        shard_devices = [torch.device(d) for d in dict.fromkeys(ctx.devices)]  # one shard per device
        server = ParamServer(ctx.flat.data, **options, shards=cfg.shards or len(shard_devices),
                             devices=shard_devices, shared=True)  # fmt: skip
        return ProcessWorkers(ctx, server)  # each worker process compiles its own model
    if cfg.compile:  # the compute is in this process
        compile_model(ctx.model)
    if cfg.mode == "diloco":  # each emulated worker has its own parameters and inner Adam; the global apart
        inner = {**options, "accum": 1, "staleness_lr": "none"}
        outer = OuterServer(ctx.flat.data.clone(), cfg.outer_lr, cfg.outer_momentum, cfg.sync_every)
        if ctx.world > 1:  # this process is one rank of a group the launcher started, as in sync
            return DistributedDiloco(ctx, outer, inner)
        return SimulatedDiloco(ctx, outer, inner)
    if cfg.simulate:  # emulated workers keep parameters of their own; the master is apart
        return SimulatedWorkers(ctx, ParamServer(ctx.flat.data.clone(), **options))
    server = ParamServer(ctx.flat.data, **options)  # this process's parameters, updated in place
    if ctx.world > 1:  # sync: this process is one rank of a group the launcher started
        return DistributedSync(ctx, server)
    return LocalWorker(ctx, server)


MAX_SHARDS = 64  # far beyond what pays (one per device or core); 10^5 ran out of file descriptors
MAX_WORKERS = 1024  # (10^20 hung as it listed a device a worker; sync spawns a process a worker before any check)
# pushes one async-accum update sums: the server counts pushes in int64 up to a fence 2^40 updates ahead
# (10^20 was a traceback, "Overflow when unpacking long long", as the worker processes started)
MAX_ACCUM = 2**20


# options that apply to some modes alone (check_mode_options refuses another value than the default elsewhere)
MODE_OPTIONS = {"accum": ("async-accum",), "staleness_lr": ASYNC_MODES, "sync_every": ("diloco",),
                "outer_lr": ("diloco",), "outer_momentum": ("diloco",)}  # fmt: skip


def check_mode_options(cfg: TrainConfig, given: Collection[str] = (), resumed_at: int = 0) -> None:
    """Refuse contradictory mode options with one line naming the option. `given`: the options the command
    line gave; one of another mode is refused even at its default (`--outer-lr 0.7` to a sync run did
    nothing, silently). `resumed_at`: the update a resume goes on from (0: a new run)."""
    if cfg.mode not in MODES:
        raise UserError(f"--mode: {cfg.mode!r} is not one of {', '.join(MODES)}")
    # (one line named all three for any one; --workers first: async-accum's --accum defaults to it)
    for name in ("workers", "local_accum", "accum"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if cfg.workers > MAX_WORKERS:
        raise UserError(f"--workers must be at most {MAX_WORKERS}")
    if cfg.accum > MAX_ACCUM:
        raise UserError(f"--accum must be at most {MAX_ACCUM:,}")
    if (cfg.accum > 1 or "accum" in given) and cfg.mode != "async-accum":  # (`--accum 1`: it did nothing)
        local = f"; to sum batches on each worker in --mode {cfg.mode}, use --local-accum {cfg.accum}"
        raise UserError("--accum sums pushes on the parameter server and only applies to --mode async-accum"
                        + (local if cfg.accum > 1 else ""))  # fmt: skip
    if (cfg.staleness_lr != "none" or "staleness_lr" in given) and cfg.mode not in ASYNC_MODES:
        raise UserError(f"--staleness-lr applies to the async modes, not --mode {cfg.mode}")
    if cfg.mode != "diloco":
        for name in ("sync_every", "outer_lr", "outer_momentum"):
            if getattr(cfg, name) != getattr(TrainConfig, name) or name in given:
                raise UserError(f"--{name.replace('_', '-')} applies to --mode diloco only")
    else:
        if cfg.sync_every < 1:
            raise UserError("--mode diloco needs --sync-every H, the inner steps per round (at least 1)")
        if not 0 < cfg.outer_lr < math.inf:
            raise UserError("--outer-lr must be a positive number")
        if not 0 <= cfg.outer_momentum < 1:
            raise UserError("--outer-momentum must be in [0, 1)")
        # (it saved the initial model as best.pt and last.pt; a resume past the first outer step has none to wait
        # for: `--resume --max-updates 2` of a run at update 6 is at its limit, and was refused so)
        if 0 < cfg.max_updates < cfg.sync_every and resumed_at < cfg.sync_every:
            raise UserError(f"--sync-every {cfg.sync_every} is more than --max-updates {cfg.max_updates}: the run "
                            "would end before its first outer step, with the initial model")  # fmt: skip

    if cfg.simulate_token_us and not cfg.simulate:
        raise UserError("--simulate-token-us prices the predicted clock of --simulate; add --simulate")
    if (cfg.link_gbps != TrainConfig.link_gbps or "link_gbps" in given) and not cfg.simulate:
        raise UserError("--link-gbps prices the predicted clock of --simulate; add --simulate")
    if torchrun_rank() is None:  # torchrun: checked once the ranks have set --workers
        check_worker_speeds(cfg)
    if not 0 <= cfg.shards <= MAX_SHARDS:  # each shard holds locks and shared memory (file descriptors)
        raise UserError(f"--shards must be 0 (one per device) to {MAX_SHARDS}")
    if cfg.shards and cfg.mode not in ASYNC_MODES:
        raise UserError(f"--shards cuts the async modes' parameter server, not --mode {cfg.mode}'s")
    # (the emulated and the single worker push into a server of one shard: sharded, it would clip and count
    # otherwise, and they train its parameters in place)
    if cfg.shards and cfg.simulate:
        raise UserError(
            "--shards cuts the server that worker processes share; --simulate emulates one shard "
            "(give --shards 0, as a resume of a run that gave it must)"
        )
    if cfg.shards and cfg.workers == 1 and torchrun_rank() is None:
        raise UserError(
            "--shards cuts the server that worker processes share; give --workers 2 or more, or "
            "--shards 0 (as a resume of a run that gave it must)"
        )


def check_worker_speeds(cfg: TrainConfig) -> None:
    """--worker-speeds gives one speed per worker."""
    if cfg.worker_speeds and cfg.workers == 1:
        raise UserError("--worker-speeds needs several workers")
    if cfg.worker_speeds and len(cfg.worker_speeds) != cfg.workers:
        count = len(cfg.worker_speeds)
        raise UserError(f"--worker-speeds: {count} speed{'s' * (count != 1)} for {cfg.workers} workers")


def pushes_per_update(cfg: TrainConfig) -> int:
    """Pushes the server sums into one optimizer update."""
    return cfg.accum if cfg.mode == "async-accum" else cfg.workers if cfg.mode in RANK_MODES else 1


def worker_devices(cfg: TrainConfig) -> list[str]:
    """The device of each worker: round-robin over --devices (default: the first GPU, else the CPU)."""
    devices = [str(resolve_device(d)) for d in cfg.devices or [default_device()]]  # every one named must exist
    return [devices[w % len(devices)] for w in range(cfg.workers)]


def spawns_ranks(cfg: TrainConfig) -> bool:
    """Whether the launcher starts a group of sync ranks (each runs a trainer of its own)."""
    return cfg.mode in RANK_MODES and cfg.workers > 1 and not cfg.simulate
