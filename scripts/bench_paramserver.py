"""Parameter-server cost per update for a base-sized flat vector, against a plain copy of the same size.

One update of async is a pull (copy of the parameters into a worker's buffer) and a push (normalize + Adam
on every shard, under the shards' locks); async-accum N pushes N times, N - 1 of them only summing. The bound is memory
bandwidth, so the same run times a plain copy of the vector (`copy_ms`, and its GB/s reading and writing).

`--transport gloo` times the torch.distributed server of the async modes on torchrun (`modes/remote.py`)
instead: two processes on this machine over gloo, rank 0 serving with the same code a run uses, rank 1
pushing as a worker does (header + gradient, then the answer + parameters) and timing each update as
the worker waits for it. `--transport both` runs both and adds their ratio. With a CUDA `--device` both
ranks keep their parameters on it, as a GPU run does: the server's Adam runs there, and the worker's
gradient and parameters go through pinned host buffers, their copies timed with the update. (NCCL cannot
serve here: its receives name their source, where the server takes whichever push comes first; and it
refuses two ranks on one GPU, so a one-GPU machine cannot time it.) Prints one JSON line.
    python scripts/bench_paramserver.py --device cpu --transport both
    python scripts/bench_paramserver.py --device cuda:0 --shards 1
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import contextlib
import json
import os
import threading
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from async_nmt.devices import resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.provenance import timed_on, versions
from async_nmt.train.modes import MAX_SHARDS, remote
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.processes import free_port


def timed(fn, repeat: int, device: torch.device) -> float:
    """Median milliseconds of `fn()` over `repeat` runs, after two warm-ups."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


class _Position:
    def load_state_dict(self, state: dict) -> None:
        pass


def gloo_rank(rank: int, numel: int, accum: int, repeat: int, port: int, results: dict, device: str) -> None:
    """Rank 0: the torchrun server's own code (RemoteWorkers). Rank 1: a worker's messages, timed, with its
    gradient and parameters on `device` as `remote._work` has them (through pinned buffers on a GPU)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    pushes = (2 + repeat) * accum
    if rank == 0:
        server = ParamServer(torch.randn(numel, device=device), accum, 1e-4, 100)
        workers = remote.RemoteWorkers(SimpleNamespace(world=2, streams=[_Position()]), server)  # type: ignore[arg-type]
        workers.heard = {r: (-1, time.monotonic()) for r in workers.ranks}  # as start() does, without its setup
        for _ in range(pushes):
            workers._serve(*workers._next_header())
    else:
        stop, ended = threading.Event(), threading.Event()
        link = remote._Link(dist.distributed_c10d._get_default_store())
        threading.Thread(target=remote._heartbeat, args=(link, 1, stop, ended), daemon=True).start()
        pinned = device.startswith("cuda")
        flat_grad, flat = torch.randn(numel, device=device), torch.empty(numel, device=device)
        grad, params = torch.empty(numel, pin_memory=pinned), torch.empty(numel, pin_memory=pinned)
        header, reply = torch.zeros(8, dtype=torch.float64), torch.empty(2, dtype=torch.int64)
        header[remote.TOKENS] = 1
        times = []
        for push in range(pushes):
            if push % accum == 0:
                start = time.perf_counter()
            dist.send(header, dst=0, tag=remote.HEADER)
            grad.copy_(flat_grad)
            dist.send(grad, dst=0, tag=remote.GRAD)
            dist.recv(reply, src=0, tag=remote.REPLY)
            dist.recv(params, src=0, tag=remote.PARAMS)
            flat.copy_(params, non_blocking=pinned)
            if pinned:
                torch.cuda.synchronize(device)
            if push % accum == accum - 1:
                times.append((time.perf_counter() - start) * 1e3)
        stop.set()
        results[accum] = sorted(times[2:])[len(times[2:]) // 2]
    dist.barrier()
    dist.destroy_process_group()


def bench_gloo(numel: int, accums: list[int], repeat: int, device: torch.device) -> dict:
    results = mp.Manager().dict()
    for accum in accums:
        ranks = mp.start_processes(gloo_rank, args=(numel, accum, repeat, free_port(), results, str(device)),
                                   nprocs=2, join=False, start_method="spawn")  # fmt: skip
        try:
            while not ranks.join():
                pass
        except BaseException:  # Ctrl-C, a rank's error: the ranks, and the files of their errors, were left behind
            for process in ranks.processes:
                process.kill()
                process.join()
            for path in ranks.error_files:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
    # a worker pulls the parameters after each of its pushes: an update of N pushes carries N pulls here
    return {f"accum{a}": {"update_ms": round(results[a], 3), "pulls": a} for a in accums}


def main() -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--numel", type=int, default=60_000_000, help="parameters (transformer-base: ~60M; default: %(default)s)"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the parameters and the server's Adam live: cpu or cuda:N (default: %(default)s)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=1,
        help=f"shared server: shards, each with its own lock and Adam state, 1 to {MAX_SHARDS} (default: %(default)s)",
    )
    parser.add_argument(
        "--accum", type=int, default=4, help="also time an async-accum update of N pushes (default: %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=10,
        help="timed runs of each measurement, after two warm-ups; the median counts (default: %(default)s)",
    )
    parser.add_argument(
        "--transport",
        choices=["shared", "gloo", "both"],
        default="shared",
        help="shared: the shared-memory server of one machine; gloo: the torchrun server; both: the two, and their "
        "ratio (default: %(default)s)",
    )
    args = parser.parse_args()
    for name in ("numel", "accum", "repeat"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if not 1 <= args.shards <= MAX_SHARDS:
        raise UserError(f"--shards must be 1 to {MAX_SHARDS}")
    if args.shards > args.numel:  # (accepted: shards of no parameter)
        raise UserError(f"--shards {args.shards}: more than the {args.numel} parameters of --numel")
    device = resolve_device(args.device, option="--device")
    if device.type == "cpu":
        torch.set_num_threads(1)  # one worker process's share of a CPU
    params = torch.randn(args.numel, device=device)
    grad, out = torch.randn_like(params), torch.empty_like(params)
    result = {"bench": "paramserver", "numel": args.numel, "device": str(device), "shards": args.shards,
              **versions(), **timed_on(device)}  # fmt: skip

    bytes_moved = 2 * params.numel() * 4  # read + write
    copy_ms = timed(lambda: out.copy_(grad), args.repeat, device)
    result.update(copy_ms=round(copy_ms, 3), copy_gb_s=round(bytes_moved / copy_ms / 1e6, 3))

    accums = sorted({1, args.accum})
    if args.transport in ("gloo", "both"):
        result["gloo"] = bench_gloo(args.numel, accums, args.repeat, device)
    if args.transport == "gloo":
        print(json.dumps(result))
        return
    for accum in accums:
        server = ParamServer(params.clone(), accum, 1e-4, 100, shards=args.shards, devices=[device], shared=True)

        def update(s: ParamServer = server, n: int = accum) -> None:
            pulled = s.pull(out)
            for _ in range(n):  # the last push applies Adam; 1 token keeps `grad` as it is
                s.push(grad, 1, pulled)

        update_ms = timed(update, args.repeat, device)
        pull_ms = timed(lambda s=server: s.pull(out), args.repeat, device)
        result[f"accum{accum}"] = {"update_ms": round(update_ms, 3), "pushes_ms": round(update_ms - pull_ms, 3),
                                   "pull_ms": round(pull_ms, 3),
                                   "update_over_copy": round(update_ms / copy_ms, 2)}  # fmt: skip
        if "gloo" in result and accum == 1:  # one push and one pull on both
            result["gloo"]["accum1"]["over_shared"] = round(result["gloo"]["accum1"]["update_ms"] / update_ms, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    run_script(main)
