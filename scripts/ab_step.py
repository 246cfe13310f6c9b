"""An A/B of one switch of the training step, in one process, batch by batch.

`train_step` (forward, backward, the flat gradient) runs on the same batches of a BIN folder's train split
with the switch on and off, alternating at every batch (on-off, then off-on in the second round), so that
both sides see the machine's drift alike; two batches of each go first, untimed. Prints one JSON line: the
mean ms a step on each side, `speedup` (off over on), each round's, and the share of padding in the
batches. The switches:
- `packed-source`: the encoder on the real source tokens only (`step.PACK_SOURCE`; off: on every padded
  position, as until 2026-12-07);
- `packed-target`: the decoder on the real target tokens only (`step.PACK_TARGET`; off: on every padded
  position, as until 2026-12-07);
- `low-precision-copies`: bf16 copies of the Linear weights once a batch (`step.LOW_PRECISION_COPIES`;
  off: autocast's casts at every call). Not with fp32.

    python scripts/ab_step.py demo/bin --preset base --max-tokens 25000 --batches 2
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from async_nmt.config import PRESETS, SORTS, model_config
from async_nmt.data.batches import collate_rows, make_batches
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.provenance import timed_on, versions
from async_nmt.train import step as step_module
from async_nmt.train.step import build_model, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import add_batch_options  # noqa: E402

SWITCHES = {
    "packed-source": "PACK_SOURCE",
    "packed-target": "PACK_TARGET",
    "low-precision-copies": "LOW_PRECISION_COPIES",
}


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path, help="a preprocessed corpus folder (`nmt preprocess`); its train split")
    parser.add_argument(
        "--switch", choices=SWITCHES, default="packed-source", help="what is compared (default: %(default)s)"
    )
    parser.add_argument(
        "--preset", choices=PRESETS, default="tiny", help="the model's preset, as nmt-train's (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default: %(default)s)")
    add_batch_options(parser)
    parser.add_argument("--batch-sort", choices=SORTS, default="target", help="as nmt-train's (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=8, help="batches timed, drawn at random (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="draws the batches and the model (default: %(default)s)")
    args = parser.parse_args()
    if args.batches < 1:
        raise UserError("--batches must be at least 1")
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    device = resolve_device(args.device, option="--device")
    amp = amp_dtype_for(args.precision, device)
    if args.switch == "low-precision-copies" and amp is None:
        raise UserError(f"--switch low-precision-copies is an A/B of bf16 autocast; not in fp32 (--precision "
                        f"{args.precision} on {device})")  # fmt: skip
    mcfg = model_config(args.preset, load_manifest(args.bin)["vocab_size"])
    split = load_split(args.bin, "train")
    order = make_batches(np.asarray(split.src.lengths), np.asarray(split.tgt.lengths), args.max_tokens,
                         mcfg.max_positions, sort=args.batch_sort)  # fmt: skip
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(len(order), min(len(order), args.batches + 2), replace=False)
    batches = [collate_rows(split.src, split.tgt, order[i], mcfg.max_positions).to(device) for i in picked]
    warm, timed = batches[:2], batches[2:] or batches[:2]
    torch.manual_seed(args.seed)
    model, _ = build_model(mcfg, device)
    name = SWITCHES[args.switch]

    def step(on: bool, batch) -> float:
        setattr(step_module, name, on)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        train_step(model, batch, 0.1, amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for batch in warm:
        for on in (True, False):
            step(on, batch)
    rounds = []
    for first in (True, False):  # on-off at every batch, then off-on
        times = {True: 0.0, False: 0.0}
        for batch in timed:
            for on in (first, not first):
                times[on] += step(on, batch)
        rounds.append(times)
    setattr(step_module, name, True)
    on_s, off_s = (sum(r[side] for r in rounds) for side in (True, False))
    n = 2 * len(timed)
    print(json.dumps({
        "bench": "ab_step", "switch": args.switch, "preset": args.preset, "device": str(device), **timed_on(device),
        "precision": "bf16" if amp else "fp32", "max_tokens": args.max_tokens, "batch_sort": args.batch_sort,
        "batches": len(timed), "seed": args.seed,
        "ms_on": round(1e3 * on_s / n, 2), "ms_off": round(1e3 * off_s / n, 2), "speedup": round(off_s / on_s, 3),
        "speedup_rounds": [round(r[False] / r[True], 3) for r in rounds],
        "padding": {
            "src": round(1 - sum(b.src_tokens for b in timed) / sum(b.src.numel() for b in timed), 4),
            "tgt": round(1 - sum(b.tokens for b in timed) / sum(b.target.numel() for b in timed), 4),
        },
        **versions(),
    }))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
