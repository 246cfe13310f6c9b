"""Training-step throughput of async-nmt's model + step + flat Adam, against a bare nn.Transformer loop.

Prints one JSON line: target tokens/s of both on the same synthetic batches, and their ratio (goal >= 1).
    python scripts/bench_step.py --preset tiny --device cpu
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import json
import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from async_nmt.config import PAD_ID, PRESETS, model_config
from async_nmt.data.batches import Batch
from async_nmt.devices import bf16_supported, resolve_device
from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.model.transformer import Transformer
from async_nmt.provenance import timed_on, versions
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.step import flatten_parameters, train_step


class BareTransformer(nn.Module):
    """The reference: torch.nn.Transformer (pre-norm) with one tied embedding, sinusoids as a buffer.

    nn.Transformer drops the attention weights and no embedding; with `dropout_as_product` it drops as the
    product does (as fairseq does by default): the embeddings (with their positions), and no attention
    weights. Both drop the sublayers' outputs and the feed-forward activations."""

    def __init__(self, cfg, dropout_as_product: bool = False):
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        with warnings.catch_warnings():  # (the nested-tensor fast path is off with norm_first: torch says so)
            warnings.filterwarnings("ignore", "enable_nested_tensor is True")
            self.core = nn.Transformer(
                cfg.d_model, cfg.heads, cfg.enc_layers, cfg.dec_layers, cfg.ff_dim, cfg.dropout,
                batch_first=True, norm_first=True,
            )  # fmt: skip
        self.embed_dropout = nn.Dropout(cfg.dropout if dropout_as_product else 0.0)
        if dropout_as_product:
            for module in self.core.modules():
                if isinstance(module, nn.MultiheadAttention):
                    module.dropout = 0.0  # (read at every call: the attention weights' dropout)
        pos = torch.arange(cfg.max_positions)[:, None] * torch.exp(
            torch.arange(0, cfg.d_model, 2) * (-math.log(10000.0) / cfg.d_model)
        )
        self.register_buffer("pos", torch.cat([pos.sin(), pos.cos()], 1), persistent=False)
        self.scale = cfg.d_model**0.5

    def forward(self, src, prev):
        x = self.embed_dropout(self.embed(src) * self.scale + self.pos[: src.size(1)])
        y = self.embed_dropout(self.embed(prev) * self.scale + self.pos[: prev.size(1)])
        causal = nn.Transformer.generate_square_subsequent_mask(prev.size(1), device=src.device)
        h = self.core(x, y, tgt_mask=causal, src_key_padding_mask=src == PAD_ID, tgt_is_causal=True,
                      memory_key_padding_mask=src == PAD_ID)  # fmt: skip
        return F.linear(h, self.embed.weight)


def synthetic_batches(n: int, rows: int, length: int, vocab: int, device) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        src = torch.randint(4, vocab, (rows, length), generator=g)
        tgt = torch.randint(4, vocab, (rows, length), generator=g)
        lens = torch.randint(length // 2, length, (rows,), generator=g)
        pad = torch.arange(length)[None, :] >= lens[:, None]
        src[pad], tgt[pad] = PAD_ID, PAD_ID
        prev = torch.cat([torch.full((rows, 1), 2), tgt[:, :-1]], 1)
        real_src, real_tgt = int((src != PAD_ID).sum()), int((tgt != PAD_ID).sum())
        out.append(Batch(src.to(device), prev.to(device), tgt.to(device), real_tgt, rows, real_src))
    return out


def time_loop(step, batches, warmup: int, device) -> float:
    for b in batches[:warmup]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(b.tokens for b in batches[warmup:]) / (time.perf_counter() - start)


def main() -> None:
    parser = ScriptParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="Model size (default: %(default)s).")
    parser.add_argument("--device", default=None, help="cpu or cuda:N (default: the first GPU, else cpu).")
    parser.add_argument("--vocab", type=int, default=8000, help="Vocabulary size of the model (default: %(default)s).")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        help="Tokens of a batch: rows x --length; at least --length (default: %(default)s).",
    )
    parser.add_argument(
        "--length", type=int, default=32, help="Padded sentence length of the batches (default: %(default)s)."
    )
    parser.add_argument("--steps", type=int, default=20, help="Timed steps of each loop (default: %(default)s).")
    parser.add_argument(
        "--warmup-steps", type=int, default=5, help="Untimed steps before the timed ones (default: %(default)s)."
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="bf16 autocast or fp32; auto = bf16 where the device has it (default: %(default)s).",
    )
    args = parser.parse_args()
    cfg = model_config(args.preset, args.vocab)
    if args.vocab < 5:
        raise UserError("--vocab must be at least 5 (4 ids are special)")
    if not 2 <= args.length <= cfg.max_positions:
        raise UserError(f"--length must be 2 to {cfg.max_positions} (the model's positions)")
    if args.max_tokens < args.length:
        raise UserError("--max-tokens must be at least --length (a batch of one row)")
    if args.steps < 1 or args.warmup_steps < 0:
        raise UserError("--steps must be at least 1 and --warmup-steps not negative")
    device = resolve_device(args.device, option="--device")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and bf16_supported(device))
    amp = torch.bfloat16 if bf16 else None
    batches = synthetic_batches(args.steps + args.warmup_steps, args.max_tokens // args.length, args.length,
                                args.vocab, device)  # fmt: skip

    torch.manual_seed(0)
    ours = Transformer(cfg).to(device)
    flat = flatten_parameters(ours)
    server = ParamServer(flat.data, accum=1, peak_lr=1e-4, warmup=0)  # the update every mode takes

    def our_step(b: Batch) -> None:
        flat.grad.zero_()
        train_step(ours, b, 0.1, amp)
        server.push(flat.grad, b.tokens, server.updates)

    ours_tps = time_loop(our_step, batches, args.warmup_steps, device)

    bare = BareTransformer(cfg).to(device)
    opt = torch.optim.Adam(bare.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                           fused=device.type == "cuda")  # fmt: skip

    def bare_step(b: Batch) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = bare(b.src, b.prev_tgt)
        loss = F.cross_entropy(logits.float().view(-1, cfg.vocab_size), b.target.view(-1), ignore_index=PAD_ID,
                               label_smoothing=0.1, reduction="sum")  # fmt: skip
        (loss / b.tokens).backward()
        opt.step()

    bare_tps = time_loop(bare_step, batches, args.warmup_steps, device)
    print(json.dumps({
        "bench": "step", "preset": args.preset, "device": str(device), **timed_on(device),
        "precision": "bf16" if bf16 else "fp32",
        "max_tokens": args.max_tokens, "length": args.length, "vocab": args.vocab, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "params": flat.numel(), "tok_per_s": round(ours_tps),
        "bare_nn_transformer_tok_per_s": round(bare_tps), "ratio": round(ours_tps / bare_tps, 3),
        **versions(),
    }))  # fmt: skip


if __name__ == "__main__":
    run_script(main)
