"""Parameter-server cost per update for a base-sized flat vector, against a plain copy of the same size.

One update of async is a pull (copy of the parameters into a worker's buffer) and a push (normalize + Adam
on every shard, under the shards' locks); async-accum N pushes N times, N - 1 of them only summing. The bound is memory
bandwidth, so the same run times a plain copy of the vector (`copy_ms`, and its GB/s reading and writing).
Prints one JSON line.
    python scripts/bench_paramserver.py --device cpu
    python scripts/bench_paramserver.py --device cuda:0 --shards 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from async_nmt.devices import resolve_device
from async_nmt.train.modes.paramserver import ParamServer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=60_000_000, help="parameters (transformer-base: ~60M)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--accum", type=int, default=4, help="also time an async-accum update of N pushes")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one worker process's share of a CPU
    params = torch.randn(args.numel, device=device)
    grad, out = torch.randn_like(params), torch.empty_like(params)
    result = {"bench": "paramserver", "numel": args.numel, "device": str(device), "shards": args.shards,
              "torch": torch.__version__, "threads": torch.get_num_threads()}  # fmt: skip

    bytes_moved = 2 * params.numel() * 4  # read + write
    copy_ms = timed(lambda: out.copy_(grad), args.repeat, device)
    result.update(copy_ms=round(copy_ms, 3), copy_gb_s=round(bytes_moved / copy_ms / 1e6, 1))

    for accum in sorted({1, args.accum}):
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
    print(json.dumps(result))


if __name__ == "__main__":
    main()
