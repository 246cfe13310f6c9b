"""Translation speed: greedy and beam search with the incremental-decoding cache, and beam without it.

Prints one JSON line: sentences/s and target tokens/s (eos excluded) of each, the decoding steps of greedy
and beam search with the cache, and the speedup of the cache for beam search (goal >= 3). Where the host's
cost of a step bounds the search (a GPU), fewer steps over more rows is more tokens/s: larger batches
(`--max-tokens`) take fewer steps. With --fixed-shapes also greedy and beam search as `nmt translate
--cuda-graphs` runs them (CUDA graphs on a GPU), their speed-ups, and the cache's speed-up with them.
`--precision auto` is bf16 where the device has it (the linear layers' weights cast once, as `nmt
translate` does), else fp32.
    python scripts/bench_translate.py --preset tiny --sentences 200 --device cpu
Without --run the model is a randomly initialised preset (fixed seed) that translates random source ids;
it seldom picks eos, so outputs run to the length limit, a fixed amount of work.
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import json
import random
import time
from pathlib import Path

import torch

from async_nmt.config import PRESETS, model_config
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.model import search
from async_nmt.model.search import cast_for_search
from async_nmt.model.transformer import Transformer
from async_nmt.provenance import timed_on, versions
from async_nmt.score import read_lines
from async_nmt.translate import translate_ids

RANDOM_PRESET, RANDOM_VOCAB = "tiny", 8000  # the random model's, without --run


def synthetic_sources(n: int, vocab_size: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(4, vocab_size) for _ in range(rng.randint(min_len, max_len))] for _ in range(n)]


def speed(model: Transformer, sources: list[list[int]], **kwargs) -> tuple[float, float, int]:
    """Sentences/s and output tokens/s of translating `sources` (after a warm-up on the first 8), and the
    decoding steps it took (calls of the decoder's final norm: a CUDA graph replay is not counted)."""
    device = kwargs["device"]
    translate_ids(model, sources[:8], **kwargs)  # warm-up
    steps = 0

    def count(*_: object) -> None:
        nonlocal steps
        steps += 1

    hook = model.decoder_norm.register_forward_hook(count)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = translate_ids(model, sources, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    hook.remove()
    return len(sources) / seconds, sum(map(len, outputs)) / seconds, steps


def main() -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="A run folder or checkpoint (default: random).")
    parser.add_argument("--input", type=Path, default=None, help="Source text to translate (needs --run).")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help=f"Size of the random model; not with --run (default: {RANDOM_PRESET}).",
    )
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help=f"Vocabulary size of the random model; not with --run (default: {RANDOM_VOCAB}).",
    )
    parser.add_argument(
        "--sentences",
        type=int,
        default=200,
        help="Synthetic sources to translate, or the first N lines of --input (default: %(default)s).",
    )
    parser.add_argument(
        "--min-len", type=int, default=10, help="Shortest synthetic source (tokens; default: %(default)s)."
    )
    parser.add_argument(
        "--max-len", type=int, default=40, help="Longest synthetic source (tokens; default: %(default)s)."
    )
    parser.add_argument("--beam", type=int, default=5, help="Beam size of the beam searches (default: %(default)s).")
    parser.add_argument("--max-tokens", type=int, default=4000, help="Source tokens per batch (default: %(default)s).")
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU, else cpu).")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 or fp32 search; auto = bf16 where the device has it (default: %(default)s).",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=None,
        help="Steps between reads of the finished sentences (default: the device's, 8 on a GPU, 1 on the CPU).",
    )
    parser.add_argument(
        "--fixed-shapes",
        action="store_true",
        help="Also greedy and beam with fixed shapes: CUDA graphs on a GPU (nmt translate --cuda-graphs).",
    )
    args = parser.parse_args()
    for name in ("sentences", "beam", "max_tokens", "min_len"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_len < args.min_len:
        raise UserError("--max-len must be at least --min-len")
    if args.check_every is not None and args.check_every < 1:
        raise UserError("--check-every must be at least 1")
    if args.input is not None and args.run is None:
        raise UserError("--input needs --run (its vocabulary)")
    for name in ("preset", "vocab"):  # (ignored: the run's model has its own)
        if args.run is not None and getattr(args, name) is not None:
            raise UserError(f"--{name}: not with --run, whose model has its own")
    args.preset = RANDOM_PRESET if args.preset is None else args.preset
    args.vocab = RANDOM_VOCAB if args.vocab is None else args.vocab
    if args.vocab < 5:
        raise UserError("--vocab must be at least 5 (4 ids are special)")
    device = resolve_device(args.device, option="--device")
    amp = amp_dtype_for(args.precision, device)

    if args.run is not None:
        from async_nmt.model.checkpoint import load_model

        model, sp = load_model(args.run, None, device)
    else:
        torch.manual_seed(0)
        model, sp = Transformer(model_config(args.preset, args.vocab)).to(device).eval(), None
    if args.input is not None:
        lines = [line for line in read_lines(args.input) if line.strip()]
        if not lines:
            raise UserError(f"{args.input}: no sentences")
        sources = sp.encode(lines[: args.sentences])
    else:
        if args.max_len > model.cfg.max_positions - 1:  # (each was cut, with a warning per batch about "lines")
            raise UserError(f"--max-len {args.max_len}: the model reads at most {model.cfg.max_positions - 1} source "
                            "tokens")  # fmt: skip
        sources = synthetic_sources(args.sentences, model.cfg.vocab_size, args.min_len, args.max_len, seed=0)

    cast_for_search(model, amp)
    if args.check_every is not None:  # e.g. the GPU's schedule on the CPU, to count a GPU's decoding steps
        search.check_every_for = lambda device: args.check_every
    common = dict(max_tokens=args.max_tokens, device=device, amp_dtype=amp)
    greedy = speed(model, sources, beam=1, **common)
    beam = speed(model, sources, beam=args.beam, **common)
    beam_no_cache = speed(model, sources, beam=args.beam, use_cache=False, **common)
    fixed = {}
    if args.fixed_shapes:
        try:  # (a failure here, e.g. a CUDA graph that cannot be captured, must not lose the figures above)
            greedy_fixed = speed(model, sources, beam=1, fixed_shapes=True, **common)
            beam_fixed = speed(model, sources, beam=args.beam, fixed_shapes=True, **common)
        except Exception as err:  # noqa: BLE001 (reported in the JSON line, with its kind)
            greedy_fixed = beam_fixed = None
            fixed = {"fixed_shapes_error": f"{type(err).__name__}: {err}"[:500]}
    if args.fixed_shapes and greedy_fixed is not None and beam_fixed is not None:
        fixed = {
            "greedy_fixed_shapes_tok_per_s": round(greedy_fixed[1]),
            "greedy_fixed_shapes_speedup": round(greedy_fixed[1] / greedy[1], 2),
            "beam_fixed_shapes_tok_per_s": round(beam_fixed[1]),
            "beam_fixed_shapes_speedup": round(beam_fixed[1] / beam[1], 2),
            "cache_speedup_fixed_shapes": round(beam_fixed[0] / beam_no_cache[0], 2),
        }
    print(json.dumps({
        "bench": "translate", "model": str(args.run) if args.run else f"random {args.preset}",
        "device": str(device), **timed_on(device), "precision": "bf16" if amp else "fp32",
        "sentences": len(sources), "beam": args.beam,
        "src_tokens": sum(min(len(s), model.cfg.max_positions - 1) for s in sources),  # (as read: longer ones are cut)
        "max_tokens": args.max_tokens, "check_every": search.check_every_for(device),
        "greedy_sent_per_s": round(greedy[0], 2), "greedy_tok_per_s": round(greedy[1]), "greedy_steps": greedy[2],
        "beam_sent_per_s": round(beam[0], 2), "beam_tok_per_s": round(beam[1]), "beam_steps": beam[2],
        "beam_no_cache_sent_per_s": round(beam_no_cache[0], 2), "cache_speedup": round(beam[0] / beam_no_cache[0], 2),
        **fixed,
        **versions(),
    }))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
