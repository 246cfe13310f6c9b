"""End-to-end training throughput: `nmt-train`'s whole loop against a bare PyTorch loop, on a BIN folder.

The product side is `train()` itself, as `nmt-train BIN RUN --max-time S` runs it: data loading,
collation, device copies, the step, the server update and event logging (validation off). The bare side is
torch.nn.Transformer with the same shape, torch.optim.Adam and F.cross_entropy over the same batch stream
(same order, same collation and copies), in the same process and call, for the same S seconds. Prints one
JSON line: both throughputs in target tokens per second of their own training time (and the product's over
the whole call: start-up, the closing validation on 100 sentences and the checkpoint), their ratio, and the
model's FLOP rate (6 x parameters per target token, the usual estimate: attention scores are left out) as a
share of a matmul rate that this bench measures on the device in the training precision.

    python scripts/bench_train.py demo/bin --preset tiny --device cpu --seconds 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from async_nmt.config import PAD_ID, ModelConfig, TrainConfig, model_config
from async_nmt.data.batches import Batch, BatchStream
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.model.transformer import Transformer
from async_nmt.train.launch import train

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
) -> tuple[int, float]:
    """Target tokens and seconds of a bare loop over the product's batch stream for cfg.max_time seconds."""
    torch.manual_seed(cfg.seed)
    model = BareTransformer(mcfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=device.type == "cuda")
    stream = BatchStream(load_split(bin_dir, "train"), cfg.max_tokens, mcfg.max_positions, cfg.seed, 0, 1)
    stream.pin = device.type == "cuda"
    tokens, start = 0, time.perf_counter()
    while time.perf_counter() - start < cfg.max_time:
        batch = stream.next().to(device)
        bare_step(model, opt, batch, cfg.label_smoothing, amp)
        tokens += batch.tokens
    sync(device)
    return tokens, time.perf_counter() - start


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", type=Path)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp = amp_dtype_for(args.precision, device)
    cfg = TrainConfig(bin_dir=str(args.bin), preset=args.preset, devices=[str(device)], max_time=args.seconds,
                      max_tokens=args.max_tokens, lr=5e-4, warmup=4000, valid_every=0, valid_max_sentences=100,
                      precision=args.precision)  # fmt: skip
    mcfg = model_config(args.preset, load_manifest(args.bin)["vocab_size"])

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        end = train(cfg, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - start
    assert end is not None
    product = end["tokens"] / end["train_s"]
    bare_tokens, bare_s = bare_loop(args.bin, cfg, mcfg, device, amp)
    bare = bare_tokens / bare_s
    params = sum(p.numel() for p in Transformer(mcfg).parameters())
    model_rate = 6 * params * product
    peak = matmul_flops(device, amp or torch.float32)
    print(json.dumps({
        "bench": "train", "preset": args.preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16" if amp else "fp32", "max_tokens": args.max_tokens, "seconds": args.seconds,
        "tok_per_s": round(product), "tok_per_s_wall": round(end["tokens"] / wall), "updates": end["updates"],
        "bare_nn_transformer_tok_per_s": round(bare), "ratio": round(product / bare, 3), "params": params,
        "model_tflop_per_s": round(model_rate / 1e12, 4), "matmul_tflop_per_s": round(peak / 1e12, 4),
        "share_of_matmul_rate": round(model_rate / peak, 4), "torch": torch.__version__,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
