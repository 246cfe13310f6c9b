"""End-to-end training throughput: `nmt-train`'s whole loop against a bare PyTorch loop, on a BIN folder.

The product side is `train()` itself, as `nmt-train BIN RUN --max-time S` runs it: data loading,
collation, device copies, the step, the server update and event logging (validation off). The bare side is
torch.nn.Transformer with the same shape, torch.optim.Adam and F.cross_entropy over the same batch stream
(same order, same collation and copies), in the same process and call, for the same S seconds. Prints one
JSON line: both throughputs in target tokens per second of their own training time (and the product's over
the whole call: start-up, the closing validation on 100 sentences and the checkpoint; and over the second
half of its train events, after warm-up and, with --compile, most compilation; the bare loop's over the
second half of its time, and that ratio), their ratio, and the model's FLOP rate (6 x parameters per target
token, the usual estimate: attention scores are left out) as a share of a matmul rate that this bench
measures on the device in the training precision. Before either loop, 3 updates of each kind, on batches of
another seed, warm the process, so that the loop run first (the product) does not pay alone for the
process's first use of the allocator and kernels; `--cold` leaves that out.

On a shared machine the speed drifts from minute to minute: on a 2-core VM single 60 s runs of tiny in
fp32 gave ratios from 1.02 to 1.40 in one afternoon (docs/results/cpu/train-tiny-single.jsonl).
`--repeats N` runs the product and the bare loop in turn N times, so that both see the drift alike; the
line then pools their tokens and seconds over the N runs of each, and gives each pair's ratio (`ratios`)
and their median.

Where the time goes: the line also gives the product loop's milliseconds per update (its training clock
over its updates, over every repeat, as `bare_ms_per_update` is the bare loop's) beside each part of that
loop timed alone, with the device synchronised after each part, over `--parts-updates` more updates of a
fresh trainer on the same stream, after the pairs: `data` (the next batch,
collated, pinned on a GPU), `copy` (to the device), `step` (forward and backward), `update` (the server's
push: clip and Adam). `other` is the loop's time left over: events, statistics, the loop itself, and on a
GPU whatever the parts' synchronisation takes from the overlap the loop has. Timed apart from the loop, the
parts also see other minutes of a shared machine's drift: `other` can be negative on any device.
`padding` is the share of padded positions in those batches' source and target.

    python scripts/bench_train.py demo/bin --preset tiny --device cpu --seconds 30
    python scripts/bench_train.py demo/bin --preset tiny --device cpu --seconds 30 --precision fp32 --repeats 4
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from async_nmt.config import PAD_ID, PRECISIONS, PRESETS, ModelConfig, TrainConfig, model_config
from async_nmt.data.batches import SORTS, Batch, BatchStream
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.model.transformer import Transformer
from async_nmt.provenance import timed_on, versions
from async_nmt.train import step as step_module
from async_nmt.train.events import read_events
from async_nmt.train.launch import train
from async_nmt.train.options import check_config
from async_nmt.train.step import train_step
from async_nmt.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import BareTransformer  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a square matmul in `dtype` (4096 on a GPU, 1024 on the CPU), the best of a few timings."""
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start))
    return best


def bare_loop(
    bin_dir: Path, cfg: TrainConfig, mcfg: ModelConfig, device: torch.device, amp: torch.dtype | None
) -> tuple[int, float, int, tuple[int, float] | None]:
    """Target tokens, seconds and updates of a bare loop over the product's batch stream for cfg.max_time s,
    and its tokens and seconds over the second half of that time (the product's are over the second half of
    its train events: after warm-up), None with under 2 updates in it."""
    torch.manual_seed(cfg.seed)
    model = BareTransformer(mcfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=device.type == "cuda")
    stream = BatchStream(load_split(bin_dir, "train"), cfg.max_tokens, mcfg.max_positions, cfg.seed, 0, 1,
                         cfg.batch_sort)  # fmt: skip
    stream.pin = device.type == "cuda"
    tokens, updates, start, half = 0, 0, time.perf_counter(), None
    while time.perf_counter() - start < cfg.max_time:
        batch = stream.next().to(device)
        bare_step(model, opt, batch, cfg.label_smoothing, amp)
        tokens, updates = tokens + batch.tokens, updates + 1
        if half is None and time.perf_counter() - start >= cfg.max_time / 2:
            sync(device)  # (once: the second half starts from a device that has done the first)
            half = (tokens, updates, time.perf_counter())
    sync(device)
    end = time.perf_counter()
    steady = None
    if half is not None and updates - half[1] >= 2:
        steady = (tokens - half[0], end - half[2])
    return tokens, end - start, updates, steady


def warm_process(
    cfg: TrainConfig, mcfg: ModelConfig, device: torch.device, amp: torch.dtype | None, run_dir: Path, updates: int = 3
) -> None:
    """Warm the process for both loops: `updates` updates of a throwaway product trainer and of a throwaway
    bare model, on batches of another seed. Whichever loop ran first in a cold process paid alone for its
    first use of the allocator and kernels: in one experiment on a 2-core CPU in fp32 (timings of each batch,
    not kept), the product run first lost about 2.5 s over its first 10 updates, which it did not lose after
    the bare loop had run. (The single runs of docs/results/cpu/train-tiny-single.jsonl, two warmed and two
    cold in fp32, spread too widely to show it either way.)"""
    other = replace(cfg, seed=cfg.seed + 1, compile=False)  # (compiled here, the product's clock would lose it)
    trainer = Trainer(other, run_dir)
    for _ in range(updates):
        trainer.flat.grad.zero_()
        stats = train_step(trainer.model, trainer.streams[0].next().to(device), cfg.label_smoothing, trainer.amp_dtype)
        trainer.server.push(trainer.flat.grad, stats.tokens, trainer.server.updates)
    model = BareTransformer(mcfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=device.type == "cuda")
    stream = BatchStream(load_split(Path(cfg.bin_dir), "train"), cfg.max_tokens, mcfg.max_positions, other.seed, 0, 1,
                         cfg.batch_sort)  # fmt: skip
    for _ in range(updates):
        bare_step(model, opt, stream.next().to(device), cfg.label_smoothing, amp)
    sync(device)


def bare_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, label_smoothing: float,
              amp: torch.dtype | None) -> None:  # fmt: skip
    """One update of the bare loop: autocast forward, summed cross-entropy over real tokens / tokens, Adam."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(batch.src.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = model(batch.src, batch.prev_tgt)
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch.target.view(-1), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")  # fmt: skip
    (loss / batch.tokens).backward()
    opt.step()


def parts(cfg: TrainConfig, run_dir: Path, updates: int, warm: int = 3) -> dict[str, Any]:
    """Milliseconds per update of each part of a one-worker product update, timed alone (see the docstring),
    and the share of padding in the batches; `warm` updates first are not counted."""
    trainer = Trainer(cfg, run_dir)
    model, flat, server, stream, device = (
        trainer.model,
        trainer.flat,
        trainer.server,
        trainer.streams[0],
        trainer.device,
    )
    ms = dict.fromkeys(("data", "copy", "step", "update"), 0.0)
    slots = dict.fromkeys(("src", "src_real", "tgt", "tgt_real"), 0)
    for i in range(warm + updates):
        marks = [time.perf_counter()]
        batch = stream.next()
        marks.append(time.perf_counter())
        on_device = batch.to(device)
        sync(device)
        marks.append(time.perf_counter())
        flat.grad.zero_()
        stats = train_step(model, on_device, cfg.label_smoothing, trainer.amp_dtype)
        sync(device)
        marks.append(time.perf_counter())
        server.push(flat.grad, stats.tokens, server.updates)
        sync(device)
        marks.append(time.perf_counter())
        if i >= warm:
            for name, begin, end in zip(ms, marks, marks[1:], strict=False):
                ms[name] += 1e3 * (end - begin) / updates
            slots["src"] += batch.src.numel()
            slots["src_real"] += int(batch.src.ne(PAD_ID).sum())
            slots["tgt"] += batch.target.numel()
            slots["tgt_real"] += batch.tokens
    padding = {side: round(1 - slots[f"{side}_real"] / slots[side], 4) for side in ("src", "tgt")}
    return {"ms": {k: round(v, 2) for k, v in ms.items()}, "padding": padding}


def steady_half(events: list[dict]) -> tuple[int, float] | None:
    """Target tokens and seconds of training clock over the second half of the run's train events (after
    warm-up and, with --compile, most compilation); None with fewer than 3 train events."""
    logged = [e for e in events if e["kind"] == "train"]
    if len(logged) < 3:
        return None
    first, last = logged[len(logged) // 2], logged[-1]
    return last["tokens"] - first["tokens"], max(last["train_s"] - first["train_s"], 1e-9)


def pooled(halves: list[tuple[int, float] | None]) -> float | None:
    """Tokens per second over the second halves of every repeat; None where one of them has none."""
    if not halves or any(half is None for half in halves):
        return None
    return sum(h[0] for h in halves) / sum(h[1] for h in halves)  # type: ignore[index]


def add_batch_options(parser: argparse.ArgumentParser, max_tokens: int = 4096) -> None:
    """`--max-tokens` (default `max_tokens`) and `--precision`, as nmt-train's: the options of a training
    batch that the training benchmarks share (bench_train, parity_train, ab_step)."""
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help="token budget of a batch, as nmt-train's (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="as nmt-train's: bf16 autocast, or fp32; auto = bf16 where the device has it (default: %(default)s)",
    )


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path, help="a preprocessed corpus folder (`nmt preprocess`)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="model size (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU, else cpu)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="training clock of each loop, above 0 (default: %(default)s)",
    )
    add_batch_options(parser)
    parser.add_argument(
        "--parts-updates", type=int, default=20, help="updates that time the loop's parts (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-sort", choices=SORTS, default="target", help="as nmt-train's (both loops; default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the product and the bare loop in turn this many times, each for --seconds; the line gives "
        "their pooled rates and each pair's ratio (default: %(default)s)",
    )
    parser.add_argument(
        "--log-every",
        type=int,
        default=TrainConfig.log_every,
        help="the product's updates between train events, as nmt-train's; the *_second_half fields need 3 of "
        "them in each run, and are null below (default: %(default)s)",
    )
    parser.add_argument("--compile", action="store_true", help="the product with --compile (the bare loop eager)")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up of the process first: the product, run first, pays for it alone")  # fmt: skip
    parser.add_argument("--plain-autocast", action="store_true",
                        help="the product without its bf16 weight copies (LowPrecisionCopies): an A/B")  # fmt: skip
    parser.add_argument("--padded-source", action="store_true",
                        help="the product's encoder computes on the source's padding too, as nmt-train did until "
                        "2026-12-07 (PACK_SOURCE off): an A/B")  # fmt: skip
    parser.add_argument("--padded-target", action="store_true",
                        help="the product's decoder computes on the target's padding too, as nmt-train did until "
                        "2026-12-07 (PACK_TARGET off): an A/B")  # fmt: skip
    args = parser.parse_args()
    if not 0 < args.seconds < math.inf:  # 0 would be no limit: training without end
        raise UserError("--seconds must be a positive, finite number")
    if args.log_every < 1:
        raise UserError("--log-every must be at least 1")

    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.parts_updates < 1:
        raise UserError("--parts-updates must be at least 1")
    device = resolve_device(args.device, option="--device")
    amp = amp_dtype_for(args.precision, device)
    if args.plain_autocast and amp is None:  # (accepted, and it changed nothing)
        raise UserError(f"--plain-autocast is an A/B of bf16 autocast; not with fp32 (--precision {args.precision} "
                        f"on {device})")  # fmt: skip
    step_module.LOW_PRECISION_COPIES = not args.plain_autocast
    step_module.PACK_SOURCE = not args.padded_source
    step_module.PACK_TARGET = not args.padded_target
    cfg = TrainConfig(bin_dir=str(args.bin), preset=args.preset, devices=[str(device)], max_time=args.seconds,
                      max_tokens=args.max_tokens, lr=5e-4, warmup=4000, valid_every=0, valid_max_sentences=100,
                      precision=args.precision, compile=args.compile, batch_sort=args.batch_sort,
                      log_every=args.log_every)  # fmt: skip
    check_config(cfg)
    mcfg = model_config(args.preset, load_manifest(args.bin)["vocab_size"])

    ends, walls, halves, bares, ratios = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.cold:
            warm_process(cfg, mcfg, device, amp, Path(tmp) / "warm")
        for repeat in range(args.repeats):  # product, bare, product, bare, ...: both see the machine's drift
            start = time.perf_counter()
            end = train(cfg, Path(tmp) / f"run{repeat}", progress=False, scratch=True)
            walls.append(time.perf_counter() - start)
            assert end is not None
            if not end["updates"]:
                raise UserError(f"no update was finished in --seconds {args.seconds:g}; give more")
            ends.append(end)
            halves.append(steady_half(read_events(Path(tmp) / f"run{repeat}" / "events.jsonl")))
            bares.append(bare_loop(args.bin, cfg, mcfg, device, amp))
            if not bares[-1][2]:
                raise UserError(f"the bare loop finished no update in --seconds {args.seconds:g}; give more")
            ratios.append(round(end["tokens"] / end["train_s"] / (bares[-1][0] / bares[-1][1]), 3))
        where = parts(cfg, Path(tmp) / "parts", args.parts_updates)  # (after the pairs: each back to back)
    tokens, train_s, updates = (sum(end[key] for end in ends) for key in ("tokens", "train_s", "updates"))
    product = tokens / train_s
    loop_ms = 1e3 * train_s / updates  # (every repeat starts on the batches `parts` takes)
    where["ms"] = {"loop": round(loop_ms, 2), **where["ms"], "other": round(loop_ms - sum(where["ms"].values()), 2)}
    bare_tokens, bare_s, bare_updates = (sum(run[i] for run in bares) for i in range(3))
    bare = bare_tokens / bare_s
    steady, bare_steady = pooled(halves), pooled([run[3] for run in bares])
    params = sum(p.numel() for p in Transformer(mcfg).parameters())
    model_rate = 6 * params * product
    peak = matmul_flops(device, amp or torch.float32)
    print(json.dumps({
        "bench": "train", "preset": args.preset, "device": str(device),
        **timed_on(device),
        "precision": "bf16" if amp else "fp32", "compile": args.compile, "warm_process": not args.cold,
        "low_precision_copies": bool(amp) and not args.plain_autocast, "batch_sort": args.batch_sort,
        "packed_source": not args.padded_source, "packed_target": not args.padded_target,
        "max_tokens": args.max_tokens,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "log_every": args.log_every,
        "tok_per_s": round(product), "tok_per_s_wall": round(tokens / sum(walls)),
        "tok_per_s_second_half": round(steady) if steady else None, "updates": updates,
        "bare_nn_transformer_tok_per_s": round(bare), "ratio": round(product / bare, 3),
        "ratios": ratios, "ratio_median": round(statistics.median(ratios), 3),
        "bare_tok_per_s_second_half": round(bare_steady) if bare_steady else None,
        "ratio_second_half": round(steady / bare_steady, 3) if steady and bare_steady else None, "params": params,
        "model_tflop_per_s": round(model_rate / 1e12, 4), "matmul_tflop_per_s": round(peak / 1e12, 4),
        "share_of_matmul_rate": round(model_rate / peak, 4), "ms_per_update": where["ms"],
        "bare_ms_per_update": round(1e3 * bare_s / bare_updates, 2), "padding": where["padding"],
        **versions(),
    }))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
