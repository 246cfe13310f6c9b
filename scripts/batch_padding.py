"""Padding and real tokens per batch of a BIN folder's training split, for each way of sorting sentences.

The token budget `--max-tokens` counts rows x the longer padded side, so positions spent on padding are
real tokens that a batch does not hold. Prints one JSON line per sort order (`make_batches(sort=...)`):
batches per epoch, the share of padding on each side, and real target tokens per batch.

    python scripts/batch_padding.py demo/bin --max-tokens 25000
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
from pathlib import Path

import numpy as np

from async_nmt.data.batches import PAD_MULTIPLE, SORTS, make_batches
from async_nmt.data.binarize import load_split
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.provenance import versions


def padding(src: np.ndarray, tgt: np.ndarray, batches: list[np.ndarray], max_len: int) -> dict:
    """Padded and real positions of `batches` as collate makes them (eos/bos counted, widths padded to 8)."""
    slots = {"src": 0, "tgt": 0}
    real = {"src": 0, "tgt": 0}
    for rows in batches:
        for side, lengths in (("src", src), ("tgt", tgt)):
            n = np.minimum(lengths[rows], max_len - 1) + 1
            width = -(-int(n.max()) // PAD_MULTIPLE) * PAD_MULTIPLE
            slots[side] += len(rows) * width
            real[side] += int(n.sum())
    return {
        "batches": len(batches),
        "src_padding": round(1 - real["src"] / slots["src"], 4),
        "tgt_padding": round(1 - real["tgt"] / slots["tgt"], 4),
        "real_tgt_tokens_per_batch": round(real["tgt"] / len(batches)),
    }


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path, help="a preprocessed corpus folder (`nmt preprocess`); its train split")
    parser.add_argument(
        "--max-tokens", type=int, default=4096, help="token budget of a batch, as nmt-train's (default: %(default)s)"
    )
    parser.add_argument(
        "--max-len",
        type=int,
        default=256,
        help="the model's positions: longer sentences are cut (default and presets: %(default)s)",
    )
    args = parser.parse_args()
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    if args.max_len < 1:
        raise UserError("--max-len must be at least 1")
    split = load_split(args.bin, "train")
    src, tgt = np.asarray(split.src.lengths), np.asarray(split.tgt.lengths)
    for sort in SORTS:
        batches = make_batches(src, tgt, args.max_tokens, args.max_len, sort=sort)
        print(json.dumps({"bench": "batch_padding", "bin": str(args.bin), "max_tokens": args.max_tokens,
                          "sort": sort, **padding(src, tgt, batches, args.max_len), **versions()}))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
