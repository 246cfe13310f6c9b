"""Where `nmt translate`'s wall time goes, start-up included: one JSON line of seconds per stage.

Issue 8 asks for the 1,007-sentence bible-de-en test set in under 5 s on a GPU, start-up included, and
on an H200 `nmt translate` took 6.0 s greedy where the search itself ran at about 750 sentences/s: most of
the time was start-up. This runs the stages of `translate_file` one by one, in a fresh interpreter as the
command does, and times each: importing torch, importing the CLI, the device's first use (on a GPU the
CUDA context), loading and casting the model, reading and encoding the input, the first 8 sentences
(first kernels, cuBLAS and attention set-up), then all of them, those 8 again included (warm: the
command's search), writing nothing. `total_s`, the sum of the stages, so counts the first 8 twice.

    python scripts/bench_startup.py demo/run --input demo/bin/test.de --device cuda:0 --beam 1
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

TORCH = time.perf_counter()

import async_nmt.cli  # noqa: E402, F401  (what `nmt` imports before it runs a command)
from async_nmt.devices import amp_dtype_for, resolve_device  # noqa: E402
from async_nmt.errors import ScriptParser, UserError, run_script  # noqa: E402
from async_nmt.model.checkpoint import load_model  # noqa: E402
from async_nmt.model.search import cast_for_search  # noqa: E402
from async_nmt.provenance import timed_on, versions  # noqa: E402
from async_nmt.score import read_lines  # noqa: E402
from async_nmt.translate import default_max_tokens, translate_lines  # noqa: E402

CLI = time.perf_counter()


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="A run folder or checkpoint.")
    parser.add_argument("--input", type=Path, required=True, help="Source text to translate, one sentence a line.")
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU, else cpu).")
    parser.add_argument("--beam", type=int, default=5, help="Beam size; 1 = greedy (default: %(default)s).")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="Source tokens per batch (default: nmt translate's: 4000 on the CPU, 16000 on a GPU).",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="Search with fixed shapes, as nmt translate --cuda-graphs (CUDA graphs on a GPU).",
    )
    args = parser.parse_args()
    if args.beam < 1:
        raise UserError("--beam must be at least 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    device = resolve_device(args.device, option="--device")

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    marks = {"import_torch": TORCH, "import_cli": CLI}
    torch.empty(1, device=device)
    marks["device_first_use"] = sync()
    model, sp = load_model(args.run, None, device)
    amp = amp_dtype_for("auto", device)
    cast_for_search(model, amp)
    marks["load_model"] = sync()
    lines = read_lines(args.input)
    if not any(line.strip() for line in lines):  # (as bench_translate: timings of nothing, 0.0 s each)
        raise UserError(f"{args.input}: no sentences")
    sp.encode(lines)  # as translate_lines does, timed apart
    marks["read_and_encode"] = time.perf_counter()
    options = dict(beam=args.beam, max_tokens=args.max_tokens or default_max_tokens(device), amp_dtype=amp,
                   fixed_shapes=args.cuda_graphs)  # fmt: skip
    translate_lines(model, sp, lines[:8], **options)
    marks["first_8_sentences"] = sync()
    translate_lines(model, sp, lines, **options)
    marks["all_sentences"] = sync()
    seconds, last = {}, START
    for stage, mark in marks.items():
        seconds[stage], last = round(mark - last, 3), mark
    print(json.dumps({
        "bench": "startup", "device": str(device), "beam": args.beam, "cuda_graphs": args.cuda_graphs,
        "sentences": len(lines), "seconds": seconds, "total_s": round(last - START, 3),
        "before_search_s": round(marks["read_and_encode"] - START, 3), **versions(), **timed_on(device),
    }))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
