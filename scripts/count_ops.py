"""Operators one training update issues: the product's step and server update against the bare loop's.

On a GPU a base update looks bound by the host issuing operators rather than by the GPU running them
(an H200 ran its matmuls at 12.5% of their rate), and then the number of operators an update
dispatches is a measure of its host cost that any machine can take. This counts them with a dispatch
mode on one real batch of BIN, on the CPU, for the product with and without its bf16 weight copies
(`step.LowPrecisionCopies`) and for bench_train's bare `nn.Transformer` loop, and prints one JSON line
with the totals and the most frequent operators. Views count like kernels here, though they cost less.

    python scripts/count_ops.py demo/bin --preset base

With `--run RUN` it counts instead the operators of translating BIN's first 8 test sentences with RUN's
model (at most 10 output tokens each, bf16 weights as `nmt translate` casts them), greedy and beam 5:
decoding is issued one step at a time, a few hundred operators a step.
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from async_nmt.config import PRESETS, ModelConfig, model_config
from async_nmt.data.batches import Batch, BatchStream
from async_nmt.data.binarize import load_manifest, load_split, read_lines
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.model import transformer
from async_nmt.provenance import versions
from async_nmt.train import step as step_module
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.step import build_model, train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import BareTransformer  # noqa: E402
from bench_train import bare_step  # noqa: E402


class OperatorCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(update: Callable[[], None], top: int) -> dict:
    update()  # a first update makes what is made once (optimizer state, the bf16 copies)
    with OperatorCount() as counter:
        update()
    return {"ops": sum(counter.counts.values()), "top": dict(counter.counts.most_common(top))}


def product_update(mcfg: ModelConfig, batch: Batch, amp: torch.dtype) -> Callable[[], None]:
    """One update as a single-worker run makes it: the step into the flat gradient, the server's push."""
    model, flat = build_model(mcfg, torch.device("cpu"))
    server = ParamServer(flat.data, 1, 1e-3, 100)

    def update() -> None:
        flat.grad.zero_()
        stats = train_step(model, batch, 0.1, amp)
        server.push(flat.grad, stats.tokens, server.updates)

    return update


def count_translation(run: Path, bin_dir: Path, top: int) -> dict:
    from async_nmt.model.checkpoint import load_model
    from async_nmt.model.search import cast_for_search
    from async_nmt.translate import translate_ids

    model, sp = load_model(run, None, "cpu")
    cast_for_search(model, torch.bfloat16)
    sources = sp.encode(read_lines(bin_dir, "test", "src")[:8])
    result: dict = {"bench": "count_ops", "translate": str(run), "sentences": len(sources), "max_len": 10}
    for beam in (1, 5):
        options = dict(max_tokens=16000, device=torch.device("cpu"), amp_dtype=torch.bfloat16, beam=beam,
                       max_len_a=0, max_len_b=10)  # fmt: skip
        result[f"beam{beam}"] = count(lambda options=options: translate_ids(model, sources, **options), top)
    result.update(versions())
    return result


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path, help="a preprocessed corpus folder (`nmt preprocess`)")
    parser.add_argument("--preset", choices=PRESETS, default=None, help="model size; not with --run (default: base)")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=600,
        help="token budget of the one batch counted (small: the count is per update; default: %(default)s)",
    )
    parser.add_argument(
        "--top", type=int, default=8, help="how many of the most frequent operators to list (default: %(default)s)"
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="count instead the translation of BIN's first 8 test sentences with this run's model",
    )
    args = parser.parse_args()
    if args.max_tokens < 1 or args.top < 1:
        raise UserError("--max-tokens and --top must be at least 1")
    if args.run is not None and args.preset is not None:  # (it was ignored without a word)
        raise UserError("--preset: not with --run, whose model has its own size")
    args.preset = args.preset or "base"
    torch.set_num_threads(1)
    if args.run is not None:
        print(json.dumps(count_translation(args.run, args.bin, args.top)))
        return
    amp = torch.bfloat16
    # dropout as a GPU runs it (one fused operator), not the CPU's own mask (transformer.cpu_dropout)
    transformer.cpu_dropout = lambda x, p: F.dropout(x, p, training=True)
    mcfg = model_config(args.preset, load_manifest(args.bin)["vocab_size"])
    batch = BatchStream(load_split(args.bin, "train"), args.max_tokens, mcfg.max_positions, 1, 0, 1).next()
    result: dict = {"bench": "count_ops", "preset": args.preset, "precision": "bf16", "rows": batch.sentences}
    for copies in (True, False):
        step_module.LOW_PRECISION_COPIES = copies
        torch.manual_seed(1)
        result["product" if copies else "product_plain_autocast"] = count(product_update(mcfg, batch, amp), args.top)
    bare = BareTransformer(mcfg)
    opt = torch.optim.Adam(bare.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, fused=True)  # as on CUDA
    result["bare"] = count(lambda: bare_step(bare, opt, batch, 0.1, amp), args.top)
    result.update(versions())
    print(json.dumps(result))


if __name__ == "__main__":
    run_script(main)
