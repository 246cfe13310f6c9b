"""Throughput of each training mode with W worker processes, with and without a slowed worker, and of a single
worker in the same run (the scaling ratio). Prints one JSON line per configuration.

Each configuration trains from scratch for --seconds of training clock on BIN (default: the demo corpus),
with validation only at the end on a few sentences; tokens/s and updates/s come from its events.
    python scripts/bench_modes.py --workers 2 --devices cpu --seconds 30
    python scripts/bench_modes.py --workers 4 --devices cuda:0 --seconds 20 --max-tokens 8192
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from async_nmt.config import TrainConfig
from async_nmt.train.events import read_events
from async_nmt.train.launch import train


def run(cfg: TrainConfig, name: str, folder: Path) -> dict:
    train(cfg, folder / name, progress=False, log_every=10**9)
    events = read_events(folder / name / "events.jsonl")
    end = events[-1]
    seconds = end["train_s"]
    return {"tokens": end["tokens"], "updates": end["updates"], "pushes": end["pushes"], "train_s": seconds,
            "tok_per_s": round(end["tokens"] / seconds, 1),
            "upd_per_s": round(end["updates"] / seconds, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="demo/bin", help="binarized corpus (make demo writes demo/bin)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--devices", default="cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=30.0, help="training clock per configuration")
    parser.add_argument("--slow", type=float, default=0.25, help="speed of the slowed worker")
    parser.add_argument("--modes", default="sync,async,async-accum")
    args = parser.parse_args()
    devices = args.devices.split(",")
    w = args.workers
    base = dict(bin_dir=args.bin, preset=args.preset, devices=devices, max_tokens=args.max_tokens,
                max_time=args.seconds, valid_every=0, valid_max_sentences=16, lr=7e-4, warmup=250)  # fmt: skip
    common = {"bench": "modes", "devices": args.devices, "preset": args.preset, "max_tokens": args.max_tokens,
              "torch": torch.__version__}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single = run(TrainConfig(**base, workers=1), "single", folder)
        print(json.dumps({**common, "mode": "single", "workers": 1, **single}), flush=True)
        for mode in args.modes.split(","):
            accum = w if mode == "async-accum" else 1
            for speeds in ([], [1.0] * (w - 1) + [args.slow]):
                cfg = TrainConfig(**base, mode=mode, workers=w, accum=accum, worker_speeds=speeds)
                figures = run(cfg, f"{mode}-{len(speeds)}", folder)
                scaling = round(figures["tok_per_s"] / single["tok_per_s"], 2)
                print(json.dumps({**common, "mode": mode, "workers": w, "accum": accum, "worker_speeds": speeds,
                                  **figures, "scaling": scaling}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
