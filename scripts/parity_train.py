"""Learning parity: does `nmt-train` learn as much per update as a bare PyTorch loop? (issue 8)

For each seed, the product (`train()`, as `nmt-train BIN RUN --max-updates U` runs it) and the bare loop of
bench_train (torch.nn.Transformer, torch.optim.Adam, F.cross_entropy) train for the same U updates on the
same batch stream (same order, same collation), at the same learning rate schedule (linear warmup, then
1/sqrt), label smoothing, dropout and Adam settings. The bare model's embedding gets the product's
initialisation by default (`--bare-embed-init torch`: nn.Embedding's N(0, 1), which puts the tied output
layer's first logits far from 0); `--bare-init product` starts it from the product's initial parameters
and position encodings instead, the same function at update 0, so that only the loop (and the random draws
of dropout) differ. Both are then scored by one function: the NLL per target token (no label smoothing) over
the valid split, in eval mode. Prints one JSON line per seed and one with the mean and sample sd of product
minus bare (negative: the product learned more). Where the product drops (`--dropout`, `--embed-dropout`,
`--attention-dropout`, as nmt-train's) and where the bare loop does (`--bare-dropout`) are set apart.

`--valid-at N ...` scores both sides at those updates too, on the way to --updates: the bare loop in its
loop, the product by training to N and resuming its run folder from there (a resume goes on with the same
numbers, as tested). Each of those gets its own lines, before the last update's, which stay last.

    python scripts/parity_train.py runs/convergence/bin --preset micro --updates 400 --seeds 1 2 3
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from async_nmt.config import PAD_ID, PRESETS, ModelConfig, TrainConfig, dropout_overrides, model_config
from async_nmt.data.batches import BatchStream, collate_rows, make_batches
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.model.checkpoint import load_model
from async_nmt.model.transformer import Transformer
from async_nmt.provenance import timed_on, versions
from async_nmt.train.launch import train
from async_nmt.train.optim import inverse_sqrt_lr
from async_nmt.train.options import check_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import BareTransformer  # noqa: E402
from bench_train import add_batch_options, bare_step  # noqa: E402


@torch.no_grad()
def valid_nll(model: torch.nn.Module, bin_dir: Path, mcfg: ModelConfig, device: torch.device) -> float:
    """NLL per target token over the whole valid split, fp32, eval mode; `model(src, prev)` gives logits."""
    model.eval()
    split = load_split(bin_dir, "valid")
    total, tokens = 0.0, 0
    for rows in make_batches(split.src.lengths, split.tgt.lengths, 4096, mcfg.max_positions):
        batch = collate_rows(split.src, split.tgt, rows, mcfg.max_positions).to(device)
        logits = model(batch.src, batch.prev_tgt).float()
        nll = F.cross_entropy(logits.view(-1, mcfg.vocab_size), batch.target.view(-1), ignore_index=PAD_ID,
                              reduction="sum")  # fmt: skip
        total, tokens = total + float(nll), tokens + batch.tokens
    return total / tokens


def bare_model(mcfg: ModelConfig, seed: int, embed_init: str, dropout_as_product: bool, init: str) -> BareTransformer:
    """The bare nn.Transformer as `bare_train` starts it: its own initialisation (the embedding's as
    `embed_init` says), or (`init` "product") the product's initial parameters for `seed` and its positions."""
    torch.manual_seed(seed)
    model = BareTransformer(mcfg, dropout_as_product)
    if init == "product":
        torch.manual_seed(seed)  # (as the trainer builds its model)
        copy_product_init(Transformer(mcfg), model)
    elif embed_init == "product":  # the product's N(0, d^-1/2), not nn.Embedding's N(0, 1): logits start near 0
        with torch.no_grad():
            torch.nn.init.normal_(model.embed.weight, mean=0.0, std=mcfg.d_model**-0.5)
            model.embed.weight[PAD_ID].zero_()
    return model


@torch.no_grad()
def copy_product_init(product: Transformer, bare: BareTransformer) -> None:
    """Give `bare` the parameters and position encodings of `product`: the same function, as nn.Transformer
    computes it (its attention's q, k, v rows are the product's in the same order)."""
    bare.embed.weight.copy_(product.embed.weight)
    bare.pos.copy_(product.positions)

    def linear(to: torch.nn.Module, weight: str, bias: str, *sources: torch.nn.Module) -> None:
        getattr(to, weight).copy_(torch.cat([s.weight for s in sources]))
        getattr(to, bias).copy_(torch.cat([s.bias for s in sources]))

    def norm(to: torch.nn.LayerNorm, source: torch.nn.LayerNorm) -> None:
        to.weight.copy_(source.weight)
        to.bias.copy_(source.bias)

    for ours, theirs in zip(product.encoder, bare.core.encoder.layers, strict=True):
        linear(theirs.self_attn, "in_proj_weight", "in_proj_bias", ours.attn.qkv)
        linear(theirs.self_attn.out_proj, "weight", "bias", ours.attn.out)
        norm(theirs.norm1, ours.attn_norm)
        norm(theirs.norm2, ours.ffn_norm)
        linear(theirs.linear1, "weight", "bias", ours.ffn.up)
        linear(theirs.linear2, "weight", "bias", ours.ffn.down)
    for ours, theirs in zip(product.decoder, bare.core.decoder.layers, strict=True):
        linear(theirs.self_attn, "in_proj_weight", "in_proj_bias", ours.self_attn.qkv)
        linear(theirs.self_attn.out_proj, "weight", "bias", ours.self_attn.out)
        linear(theirs.multihead_attn, "in_proj_weight", "in_proj_bias", ours.cross_attn.q, ours.cross_attn.kv)
        linear(theirs.multihead_attn.out_proj, "weight", "bias", ours.cross_attn.out)
        norm(theirs.norm1, ours.self_attn_norm)
        norm(theirs.norm2, ours.cross_attn_norm)
        norm(theirs.norm3, ours.ffn_norm)
        linear(theirs.linear1, "weight", "bias", ours.ffn.up)
        linear(theirs.linear2, "weight", "bias", ours.ffn.down)
    norm(bare.core.encoder.norm, product.encoder_norm)
    norm(bare.core.decoder.norm, product.decoder_norm)


def bare_train(
    bin_dir: Path,
    cfg: TrainConfig,
    mcfg: ModelConfig,
    device: torch.device,
    embed_init: str = "product",
    dropout_as_product: bool = False,
    valid_at: Sequence[int] = (),
    init: str = "own",
) -> tuple[BareTransformer, dict[int, float]]:
    """bench_train's bare loop, for cfg.max_updates updates at the product's learning rate schedule; with
    the valid NLL at each update of `valid_at`. `init` "product": from the product's initial parameters."""
    amp = amp_dtype_for(cfg.precision, device)
    model = bare_model(mcfg, cfg.seed, embed_init, dropout_as_product, init).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)
    stream = BatchStream(load_split(bin_dir, "train"), cfg.max_tokens, mcfg.max_positions, cfg.seed, 0, 1,
                         cfg.batch_sort)  # fmt: skip
    model.train()
    nll: dict[int, float] = {}
    for update in range(1, cfg.max_updates + 1):
        batch = stream.next().to(device)
        for group in opt.param_groups:
            group["lr"] = inverse_sqrt_lr(update, cfg.lr, cfg.warmup)
        bare_step(model, opt, batch, cfg.label_smoothing, amp)
        if update in valid_at:
            nll[update] = valid_nll(model, bin_dir, mcfg, device)
            model.train()
    return model, nll


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path, help="a preprocessed corpus folder (`nmt preprocess`)")
    parser.add_argument("--preset", choices=PRESETS, default="micro", help="model size (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU, else cpu)")
    parser.add_argument(
        "--updates", type=int, default=400, help="updates each side trains, at least 1 (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="linear warmup updates, then inverse-sqrt decay; 0 = a constant --lr (default: %(default)s)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="one pair of runs per seed (default: 1 2 3)"
    )
    add_batch_options(parser, max_tokens=1024)
    parser.add_argument("--dropout", type=float, default=None, help="dropout of both models (default: the preset's)")
    parser.add_argument("--bare-embed-init", choices=["product", "torch"], default="product",
                        help="the bare loop's embedding: the product's init (only the loop then differs), or "
                             "nn.Embedding's N(0, 1), as a bare loop has it (default: %(default)s)")  # fmt: skip
    parser.add_argument("--bare-dropout", choices=["torch", "product"], default="torch",
                        help="where the bare loop drops: nn.Transformer's places (the attention weights, no "
                             "embedding), or the product's (the embeddings, no attention weights); both drop the "
                             "sublayers' outputs and the feed-forward activations (default: %(default)s)")  # fmt: skip
    parser.add_argument("--bare-init", choices=["own", "product"], default="own",
                        help="the bare model's start: its own initialisation and positions (nn.Transformer's, "
                             "the embedding's as --bare-embed-init says), or the product's initial parameters for "
                             "the seed and its positions, the same function at update 0 (default: own)")  # fmt: skip
    parser.add_argument(
        "--embed-dropout",
        type=float,
        default=None,
        help="the product's dropout on the embeddings, as nmt-train's (default: --dropout's)",
    )
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=None,
        help="the product's dropout on the attention weights, as nmt-train's (default: 0)",
    )
    parser.add_argument("--valid-at", type=int, nargs="+", default=[], metavar="N",
                        help="updates before --updates where both sides are scored too (default: none)")  # fmt: skip
    args = parser.parse_args()
    if args.updates < 1:  # 0 would be no limit: training without end
        raise UserError("--updates must be at least 1")
    if len(set(args.seeds)) < len(args.seeds):  # (one seed's runs were counted twice in the spread)
        raise UserError("--seeds: a seed is given twice")
    if not all(-(2**32) < seed < 2**32 for seed in args.seeds):  # (check_config's error named nmt-train's --seed)
        raise UserError("--seeds: every seed must be an integer between -2^32 and 2^32")
    if args.bare_init == "product" and args.bare_embed_init != "product":  # (ignored: the JSON said it was used)
        raise UserError("--bare-embed-init torch sets the bare model's own start; --bare-init product replaces all "
                        "of it, the embedding too, with the product's")  # fmt: skip
    if any(not 1 <= mark < args.updates for mark in args.valid_at):
        raise UserError(f"--valid-at: every N must be from 1 to {args.updates - 1} (below --updates)")
    device = resolve_device(args.device, option="--device")
    configs = [TrainConfig(bin_dir=str(args.bin), preset=args.preset, devices=[str(device)], max_updates=args.updates,
                           max_tokens=args.max_tokens, lr=args.lr, warmup=args.warmup, valid_every=0,
                           valid_max_sentences=1, precision=args.precision, seed=seed, dropout=args.dropout,
                           embed_dropout=args.embed_dropout, attention_dropout=args.attention_dropout)
               for seed in args.seeds]  # fmt: skip
    for cfg in configs:
        check_config(cfg)
    mcfg = model_config(args.preset, load_manifest(args.bin)["vocab_size"], **dropout_overrides(configs[0]))
    marks = sorted(set(args.valid_at)) + [args.updates]
    diffs: dict[int, list[float]] = {mark: [] for mark in marks}
    for seed, cfg in zip(args.seeds, configs, strict=True):
        start = time.perf_counter()
        product: dict[int, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for i, mark in enumerate(marks):  # to each mark, then on from it: one run, scored on its way
                end = train(
                    replace(cfg, max_updates=mark), Path(tmp) / "run", resume=i > 0, progress=False, scratch=True
                )
                assert end is not None and end["updates"] == mark
                product_model, _ = load_model(Path(tmp) / "run", "last", device)
                product[mark] = valid_nll(product_model, args.bin, mcfg, device)
        product_s = time.perf_counter() - start
        start = time.perf_counter()
        bare_net, bare = bare_train(args.bin, cfg, mcfg, device, args.bare_embed_init,
                                    args.bare_dropout == "product", marks[:-1], args.bare_init)  # fmt: skip
        bare[args.updates] = valid_nll(bare_net, args.bin, mcfg, device)
        bare_s = time.perf_counter() - start
        for mark in marks:
            diffs[mark].append(product[mark] - bare[mark])
            last = mark == args.updates
            print(json.dumps({
                "bench": "parity", "preset": args.preset, "device": str(device), "seed": seed, "updates": mark,
                "max_tokens": args.max_tokens, "lr": args.lr, "warmup": args.warmup,
                "product_valid_nll": round(product[mark], 4), "bare_valid_nll": round(bare[mark], 4),
                "diff": round(product[mark] - bare[mark], 4), "product_s": round(product_s, 1) if last else None,
                "bare_s": round(bare_s, 1) if last else None, "bare_embed_init": args.bare_embed_init,
                "dropout": mcfg.dropout, "bare_dropout": args.bare_dropout, "embed_dropout": mcfg.embed_dropout,
                "attention_dropout": mcfg.attention_dropout, "bare_init": args.bare_init,
                "precision": "bf16" if amp_dtype_for(args.precision, device) else "fp32", "bin": str(args.bin),
                **versions(), **timed_on(device),
            }), flush=True)  # fmt: skip
    for mark in marks:  # the last update's summary last, as before --valid-at
        sd = statistics.stdev(diffs[mark]) if len(diffs[mark]) > 1 else None  # (null: one seed; NaN is not JSON)
        print(json.dumps({"bench": "parity", "seeds": args.seeds, "updates": mark,
                          "mean_diff": round(statistics.mean(diffs[mark]), 4),
                          "sd_diff": None if sd is None else round(sd, 4), **versions()}))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
