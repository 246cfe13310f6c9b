"""Throughput of each training mode with W worker processes, with and without a slowed worker, and of a single
worker in the same run (the scaling ratio). Prints one JSON line per configuration.

Each configuration trains from scratch for --seconds of training clock on BIN (default: the demo corpus),
with validation only at the end on a few sentences; tokens/s and updates/s come from its events.
    python scripts/bench_modes.py --workers 2 --devices cpu --seconds 30
    python scripts/bench_modes.py --workers 4 --devices cuda:0 --seconds 20 --max-tokens 8192
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import json
import math
import tempfile
from pathlib import Path

from async_nmt.config import MODES, PRESETS, TrainConfig
from async_nmt.devices import resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.provenance import timed_on, versions
from async_nmt.train.events import read_events
from async_nmt.train.launch import train
from async_nmt.train.options import check_config


def run(cfg: TrainConfig, name: str, folder: Path) -> dict:
    train(cfg, folder / name, progress=False, log_every=10**9, scratch=True)
    events = read_events(folder / name / "events.jsonl")
    end = events[-1]
    seconds = end["train_s"]
    return {"tokens": end["tokens"], "updates": end["updates"], "pushes": end["pushes"], "train_s": seconds,
            "tok_per_s": round(end["tokens"] / seconds, 1),
            "upd_per_s": round(end["updates"] / seconds, 2)}  # fmt: skip


def main() -> None:
    parser = ScriptParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bin", default="demo/bin", help="binarized corpus (make demo writes demo/bin; default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes W of each mode's run, at least 2 (default: %(default)s)",
    )
    parser.add_argument(
        "--devices",
        default="cpu",
        help="comma-separated devices, e.g. cpu or cuda:0,cuda:1, which the workers take "
        "round-robin (default: %(default)s)",
    )
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="model size (default: %(default)s)")
    parser.add_argument(
        "--max-tokens", type=int, default=2048, help="token budget of a worker's batch (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="training clock per configuration, above 0 (default: %(default)s)"
    )
    parser.add_argument(
        "--slow",
        type=float,
        default=0.25,
        help="speed of the slowed worker, above 0 and below the others' 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--modes",
        default="sync,async,async-accum",
        help=f"comma-separated modes to time, each of {', '.join(MODES)} (default: %(default)s)",
    )
    parser.add_argument(
        "--sync-every",
        type=int,
        default=0,
        help="diloco: inner steps H between outer steps, required with diloco (default: %(default)s)",
    )
    args = parser.parse_args()
    w = args.workers
    if w < 2:
        raise UserError("--workers must be at least 2 (the bench compares W workers with one)")
    if not 0 < args.seconds < math.inf:  # 0 would be no limit: training without end
        raise UserError("--seconds must be a positive number")
    if not 0 < args.slow < 1:  # 1 or more would time no slowed worker (2: a faster one)
        raise UserError("--slow must be above 0 and below 1, the others' speed")
    modes = args.modes.split(",")
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
    if len(set(modes)) < len(modes):
        raise UserError(f"--modes: {args.modes!r} names a mode twice")
    if args.sync_every and "diloco" not in modes:
        raise UserError("--sync-every applies to diloco only; add it to --modes")
    if "diloco" in modes and args.sync_every < 1:  # (check_config named nmt-train's --mode)
        raise UserError("--modes diloco needs --sync-every H, the inner steps per round (at least 1)")
    devices = args.devices.split(",")
    for device in devices:
        if not device:
            raise UserError(f"--devices: {args.devices!r} names an empty device (use cpu or cuda:N, comma-separated)")
        resolve_device(device)  # its errors name --devices
    if len(devices) > w:  # (each run warned in nmt-train's terms, the one-worker baseline's of --workers 1)
        raise UserError(f"--devices names {len(devices)} devices but --workers is {w}: give --workers "
                        f"{len(devices)}, or fewer devices")  # fmt: skip
    base = dict(bin_dir=args.bin, preset=args.preset, max_tokens=args.max_tokens, max_time=args.seconds,
                valid_every=0, valid_max_sentences=16, lr=7e-4, warmup=250)  # fmt: skip
    configs = [("single", TrainConfig(**base, devices=devices[:1], workers=1))]  # (on the first device)
    for mode in modes:
        accum = w if mode == "async-accum" else 1
        sync_every = args.sync_every if mode == "diloco" else 0
        for speeds in ([], [1.0] * (w - 1) + [args.slow]):
            cfg = TrainConfig(**base, devices=devices, mode=mode, workers=w, accum=accum, worker_speeds=speeds,
                              sync_every=sync_every)  # fmt: skip
            configs.append((f"{mode}-{len(speeds)}", cfg))
    for _, cfg in configs:  # every configuration before the first one trains
        check_config(cfg)
    # (timed on the trainer's device, the first; the workers' are of its kind)
    common = {"bench": "modes", "devices": args.devices, "preset": args.preset, "max_tokens": args.max_tokens,
              **timed_on(devices[0]), **versions()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single = run(configs[0][1], "single", folder)
        print(json.dumps({**common, "mode": "single", "workers": 1, **single}), flush=True)
        for name, cfg in configs[1:]:
            figures = run(cfg, name, folder)
            # (none where the one worker trained nothing in --seconds: it was a ZeroDivisionError's traceback)
            scaling = round(figures["tok_per_s"] / single["tok_per_s"], 2) if single["tok_per_s"] else None
            line = {**common, "mode": cfg.mode, "workers": w, "accum": cfg.accum, "worker_speeds": cfg.worker_speeds,
                    **({"sync_every": cfg.sync_every} if cfg.mode == "diloco" else {}), **figures,
                    "scaling": scaling}  # fmt: skip
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    run_script(main)
