"""The encoder-decoder Transformer: pre-norm, tied embeddings, sinusoidal positions, SDPA attention.

Inputs are right-padded with `cfg.pad_id`. `forward(src, prev_tgt)` is the training path (training's
`hidden(src, prev_tgt, src_rows, tgt_rows)` runs the encoder and the decoder on the real tokens alone); `encode` and
`decode(..., cache)` are the inference path, where the cache holds each decoder layer's self-attention keys
and values (growing by one position a step) and its cross-attention keys and values (computed once).
`decode_step(..., fixed_cache)` is the same step with fixed shapes, for CUDA graphs (`FixedCache`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from async_nmt.config import ModelConfig

Cache = dict[str, Any]

# cuDNN's attention builds an execution plan for every shape it has not seen, and both training (length
# buckets) and search (one more position a step) bring new shapes all the time: on an H200 a base model's
# decode step took 41-75 ms on unseen shapes with cuDNN and 4 ms without it, and training ran at 50k
# against 445k tok/s (issue 8). PyTorch then picks flash or memory-efficient attention, which need no plan.
torch.backends.cuda.enable_cudnn_sdp(False)


class EncoderOut(NamedTuple):
    memory: Tensor  # [B, S, D]
    attn_mask: Tensor  # SDPA's boolean mask (True = attend), broadcast over heads and queries: [B, 1, 1, S]


def sinusoids(length: int, dim: int) -> Tensor:
    """Sinusoidal position encodings [length, dim]: sines in the first half, cosines in the second."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / max(half - 1, 1)))
    angles = torch.arange(length, dtype=torch.float32)[:, None] * freq[None, :]
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(table, (0, dim - 2 * half))


def attend(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0
) -> Tensor:
    """SDPA over [B, H, T, Dh] views, dropping the attention weights with `dropout_p` (training's). For bf16
    training on CPU it picks the math kernel: at sentence lengths its backward is about twice as fast as CPU
    flash attention's (measured with torch 2.13). A decoding step on the CPU (one query a row, no gradient)
    takes `attend_one_query`."""
    if q.device.type == "cpu":
        if q.requires_grad:
            if q.dtype == torch.bfloat16:
                with sdpa_kernel(SDPBackend.MATH):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                          is_causal=is_causal)  # fmt: skip
        elif q.size(2) == 1 and not is_causal and dropout_p == 0:
            return attend_one_query(q, k, v, attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


def attend_one_query(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """Attention of one query a row ([B, H, 1, Dh]) in fp32, as two batched matrix products: a CPU decoding
    step. SDPA's CPU flash kernel is slow at one query a row: for 1,000 rows of 4 heads and 30 to 40 keys
    it took 7.2-10.8 ms in bf16, where this takes 2.1-3.1 ms on keys and values kept in fp32 (`for_cache`),
    and its error against exact attention is 1e-6 rather than bf16's 5e-3 (torch 2.13, 2 threads). The
    math kernel that bf16 training uses on the CPU also attends in fp32 (its bf16 output is exact attention
    rounded), so the search now attends as the model was trained to."""
    q, k, v = q.float(), k.float(), v.float()  # no copies for keys and values from the cache
    with torch.autocast("cpu", enabled=False):  # autocast would cast both products' inputs back to bf16
        scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.size(-1) ** -0.5)
        if attn_mask is not None:
            scores.masked_fill_(attn_mask.logical_not(), -math.inf)
        return torch.matmul(scores.softmax(-1), v)


def for_cache(t: Tensor) -> Tensor:
    """Keys or values [B, H, T, Dh] as a decoding cache keeps them: on the CPU in fp32 and contiguous, where
    `attend_one_query` would otherwise convert, or copy into the layout its products take, the whole cache
    at every step; as they are elsewhere."""
    return t.to(torch.float32, memory_format=torch.contiguous_format) if t.device.type == "cpu" else t


def unpack(x: Tensor, rows: Tensor, n: int) -> Tensor:
    """Packed rows `x` [len(rows), W] at positions `rows` of n, zeros elsewhere: [n, W]."""
    return x.new_zeros(n, x.size(1)).index_copy_(0, rows, x)


def cpu_dropout(x: Tensor, p: float) -> Tensor:
    """Dropout for the CPU, where nn.Dropout's mask (`bernoulli_`, one draw of the generator per element)
    took 16% of a tiny model's training step (issue 8). Each 64-bit draw here gives four 16-bit numbers,
    and an element is dropped when its number falls below p in steps of 2^-16. The output is scaled by
    the inverse of the exact keep rate, so that its expectation is x, as nn.Dropout's is (the scale is
    applied last, as a number, so that bf16 does not round it). Forward and backward of a 4096 x 1024
    activation: 22 ms against 61 ms (2 threads, torch 2.13). A p within 2^-17 of 1 drops 65,535 in 65,536
    (it rounded to all of them, and the scale divided by zero)."""
    dropped = min(round(p * 65536), 65535)
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    keep = draws.view(torch.int16)[:n].view(x.shape) >= dropped - 32768
    return (x * keep.to(x.dtype)).mul_(65536 / (65536 - dropped))


class Dropout(nn.Dropout):
    """nn.Dropout that costs nothing when it does nothing (in eval mode nn.Dropout still dispatches an
    operator, 27 of the ~260 of a base model's decoding step), and draws its mask faster on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type == "cpu" and self.p < 1 and not torch.compiler.is_compiling():  # (dynamo cannot trace random_)
            return cpu_dropout(x, self.p)
        return super().forward(x)


class Linear(nn.Linear):
    """nn.Linear that computes with `low` (a weight and a bias) while a caller sets it: training's copies of
    the weights in autocast's precision, made once per batch instead of at every call (train/step.py)."""

    low: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.low is not None:
            return F.linear(x, *self.low)
        return super().forward(x)


class FixedCache:
    """Self-attention keys and values of one decoder layer for `length` positions, allocated once, with the
    position being decoded held on the device (`Transformer.decode_step`). A step then has the same shapes
    and reads nothing back to the host, as a CUDA graph needs: its keys and values are written at the
    position, and the query attends to every position with the later ones masked out."""

    def __init__(self, length: int, position: Tensor):
        self.length = length
        self.position = position  # [1], shared by the layers
        self.visible: Tensor | None = None  # [1, 1, 1, length], set by decode_step
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k, v = for_cache(k), for_cache(v)
        if self.k is None:  # the first step, before any capture: [B, H, length, Dh] in the cache's dtype
            self.k = k.new_zeros(*k.shape[:2], self.length, k.size(3))
            self.v = torch.zeros_like(self.k)
        self.k.index_copy_(2, self.position, k)
        self.v.index_copy_(2, self.position, v)
        return attend(q, self.k, self.v, self.visible)

    def reorder_(self, index: Tensor) -> None:
        """Keep rows `index` (as many as there are rows), in place: the buffers stay where they are."""
        if self.k is not None:
            self.k.copy_(self.k.index_select(0, index))
            self.v.copy_(self.v.index_select(0, index))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = Linear(cfg.d_model, cfg.d_model)
        self.dropout_p = cfg.attention_dropout  # (in training only)

    def forward(
        self,
        x: Tensor,
        batch: int,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: Cache | None = None,
        rows: Tensor | None = None,
        length: int = 0,
    ) -> Tensor:
        """Self-attention over `x` [B * T, D]; with `rows` (and `length`, T), `x` holds only those rows of the
        [B * T] positions (`Transformer.encode`'s real tokens, and `hidden`'s), and so does the output."""
        N, D = x.shape
        qkv = self.qkv(x)
        if rows is not None:  # only attention needs the padded layout: its masked keys and ignored queries
            N = batch * length
            qkv = unpack(qkv, rows, N)
        B, T = batch, N // batch
        # [B, T, 3, H, Dh] -> three [B, H, T, Dh] views; SDPA takes the strides as they are.
        q, k, v = qkv.view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if isinstance(cache, FixedCache):
            return self.out(cache.attend(q, k, v).transpose(1, 2).reshape(N, D))
        if cache is not None:
            k, v = for_cache(k), for_cache(v)
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = attend(q, k, v, attn_mask, is_causal, self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(N, D)
        return self.out(y if rows is None else y.index_select(0, rows))


class CrossAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q = Linear(cfg.d_model, cfg.d_model)
        self.kv = Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = Linear(cfg.d_model, cfg.d_model)
        self.dropout_p = cfg.attention_dropout  # (in training only)

    def forward(
        self, x: Tensor, enc: EncoderOut, cache: Cache | None = None, rows: Tensor | None = None, length: int = 0
    ) -> Tensor:
        """Attention of `x` [B * T, D] to the encoder's memory; `rows` and `length` as in `SelfAttention`."""
        N, D = x.shape
        B = enc.attn_mask.size(0)
        q = self.q(x)
        if rows is not None:
            N = B * length
            q = unpack(q, rows, N)
        q = q.view(B, N // B, self.heads, D // self.heads).transpose(1, 2)
        if cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            S = enc.memory.size(1)
            k, v = self.kv(enc.memory).view(B, S, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
            if cache is not None:
                k, v = for_cache(k), for_cache(v)
                cache["k"], cache["v"] = k, v
        y = attend(q, k, v, enc.attn_mask, dropout_p=self.dropout_p if self.training else 0.0)
        y = y.transpose(1, 2).reshape(N, D)
        return self.out(y if rows is None else y.index_select(0, rows))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = Linear(cfg.d_model, cfg.ff_dim)
        self.down = Linear(cfg.ff_dim, cfg.d_model)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(F.relu(self.up(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, rows: Tensor | None = None) -> Tensor:
        batch, length = attn_mask.size(0), attn_mask.size(-1)
        x = x + self.dropout(self.attn(self.attn_norm(x), batch, attn_mask=attn_mask, rows=rows, length=length))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = SelfAttention(cfg)
        self.cross_attn_norm = nn.LayerNorm(cfg.d_model)
        self.cross_attn = CrossAttention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.d_model)
        self.ffn = FeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, enc: EncoderOut, cache: Cache | None = None, rows: Tensor | None = None, length: int = 0
    ) -> Tensor:
        # Without a cache, or on the cache's first call, the queries see every earlier position; later
        # cached calls feed one new position, which may see all the cached ones. Without a cache this is a
        # plain bool, not a comparison of sizes: under torch.compile the sizes turn symbolic after the first
        # new shape, SDPA refuses a symbolic is_causal, and dynamo then ran the whole decoder eagerly.
        batch = enc.attn_mask.size(0)
        is_causal = cache is None or rows is not None or x.size(0) > batch
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
            assert not (is_causal and "k" in self_cache), "a cached decode feeds one position at a time"
        x = x + self.dropout(
            self.self_attn(
                self.self_attn_norm(x), batch, is_causal=is_causal, cache=self_cache, rows=rows, length=length
            )
        )
        x = x + self.dropout(self.cross_attn(self.cross_attn_norm(x), enc, cache=cross_cache, rows=rows, length=length))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


def _leave_as_is(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return tensor


class Transformer(nn.Module):
    project_weight: Tensor | None = None  # the tied embedding in autocast's precision (`weights_in`)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)
        self.embed_scale = math.sqrt(cfg.d_model)
        self.dropout = Dropout(cfg.dropout if cfg.embed_dropout is None else cfg.embed_dropout)  # the embeddings'
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.reset_parameters()

    @classmethod
    def uninitialized(cls, cfg: ModelConfig) -> Transformer:
        """A model whose parameters are left as allocated, for weights loaded into it next: drawing a base
        model's 48M parameters at random took 1.5 of the 2.8 s of loading a checkpoint on the CPU. (Built
        on the meta device instead, its first random fill imported torch._dynamo: 4.7 s.) The module
        initializers are no-ops while it is built; the positions are computed as always."""
        names = ("uniform_", "normal_", "kaiming_uniform_", "xavier_uniform_", "zeros_", "ones_")
        saved = {name: getattr(nn.init, name) for name in names}
        for name in names:
            setattr(nn.init, name, _leave_as_is)
        try:
            return cls(cfg)
        finally:
            for name, init in saved.items():
                setattr(nn.init, name, init)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embed.weight, mean=0.0, std=self.cfg.d_model**-0.5)
        with torch.no_grad():
            self.embed.weight[self.cfg.pad_id].zero_()

    def embed_tokens(self, tokens: Tensor, start: int = 0) -> Tensor:
        x = self.embed(tokens) * self.embed_scale + self.positions[start : start + tokens.size(1)]
        return self.dropout(x)

    def embed_rows(self, tokens: Tensor, rows: Tensor) -> Tensor:
        """`embed_tokens(tokens)`'s rows `rows` of its [B * T] positions, computed for those alone: [len(rows), D]."""
        where = rows.remainder(tokens.size(1))
        x = self.embed(tokens.reshape(-1).index_select(0, rows))
        return self.dropout(x * self.embed_scale + self.positions.index_select(0, where))

    def forward(self, src: Tensor, prev_tgt: Tensor) -> Tensor:
        """Logits [B, T, V] for every target position (teacher forcing)."""
        return self.project(self.hidden(src, prev_tgt))

    def hidden(
        self, src: Tensor, prev_tgt: Tensor, src_rows: Tensor | None = None, tgt_rows: Tensor | None = None
    ) -> Tensor:
        """The final decoder states [B, T, D] (teacher forcing); `project` turns them into logits.
        `src_rows`: see `encode`. With `tgt_rows`, the positions of `prev_tgt.view(-1)` that are not padding,
        in order, the decoder computes on those rows only (and attention on the padded layout, whose
        causal mask hides the padding at the end of each row from every real position), and returns their
        states alone, [len(tgt_rows), D]: training projects only the real tokens' states, a chunk at a time.
        """
        enc = self.encode(src, src_rows)
        if tgt_rows is None:
            return self.decoder_states(prev_tgt, enc)
        x = self.embed_rows(prev_tgt, tgt_rows)
        for layer in self.decoder:
            x = layer(x, enc, rows=tgt_rows, length=prev_tgt.size(1))
        return self.decoder_norm(x)

    def project(self, states: Tensor) -> Tensor:
        """Output logits through the tied embedding: [..., D] -> [..., V]."""
        return F.linear(states, self.embed.weight if self.project_weight is None else self.project_weight)

    @contextlib.contextmanager
    def weights_in(self, dtype: torch.dtype | None) -> Iterator[None]:
        """Inside it, the Linear layers and the output projection compute with copies of their weights in
        `dtype`, autocast's (None: as they are), made here once instead of by autocast at every call: it
        keeps no cast under inference mode, nor of a view (the training model's parameters), so a search
        cast the tied embedding at every decoding step, and a validation every weight too (issue 8). Weights
        already in `dtype` (`cast_for_search`) are used as they are. Autocast's results, bit for bit: the
        same values go into the same kernels. For inference only: nothing here takes gradients."""
        if dtype is None:
            yield
            return
        linears = [m for m in self.modules() if isinstance(m, Linear) and m.weight.dtype != dtype]
        saved, saved_projection = [m.low for m in linears], self.project_weight  # (training's, where set)
        try:  # (copies made, then set: a copy that runs out of memory leaves no layer with a stale one)
            with torch.no_grad():
                copies = [(m.weight.to(dtype), None if m.bias is None else m.bias.to(dtype)) for m in linears]
                projection = self.embed.weight.to(dtype)
            for module, low in zip(linears, copies, strict=True):
                module.low = low
            self.project_weight = projection
            yield
        finally:
            for module, low in zip(linears, saved, strict=True):
                module.low = low
            self.project_weight = saved_projection

    def encode(self, src: Tensor, rows: Tensor | None = None) -> EncoderOut:
        """The encoder's output. With `rows`, the positions of `src.view(-1)` that are not padding, in order,
        the layers compute on those rows only, and on nothing else but attention; the memory's padded
        positions are zeros (the cross-attention masks them). Training's batches are a third padding on the
        source side at 25,000 tokens (README), where this saves that share of the encoder's matmuls."""
        attn_mask = src.ne(self.cfg.pad_id)[:, None, None, :]  # made once, not at every decoding step
        if rows is None:
            x = self.embed_tokens(src).flatten(0, 1)  # the layers see [B * S, D]: see `decoder_states`
        else:
            x = self.embed_rows(src, rows)
        for layer in self.encoder:
            x = layer(x, attn_mask, rows)
        x = self.encoder_norm(x)
        return EncoderOut((x if rows is None else unpack(x, rows, src.numel())).view(*src.shape, -1), attn_mask)

    def decoder_states(self, prev_tgt: Tensor, enc: EncoderOut, cache: Cache | None = None) -> Tensor:
        """Final (normalized) decoder states [B, T, D]; with `cache` (a dict, filled here), `prev_tgt` is
        only the newest column [B, 1]."""
        start = 0
        if cache is not None:
            start = cache.get("step", 0)
            cache["step"] = start + prev_tgt.size(1)
            layer_caches = cache.setdefault("layers", [{} for _ in self.decoder])
        # The layers pass [B * T, D] between them: a linear layer then is one matmul, where a 3-D input
        # takes views around it, in the forward and the backward, each one host time on a GPU: a base
        # update dispatches 2,699 operators instead of 2,931 (scripts/count_ops.py).
        x = self.embed_tokens(prev_tgt, start).flatten(0, 1)
        for i, layer in enumerate(self.decoder):
            x = layer(x, enc, None if cache is None else layer_caches[i])
        return self.decoder_norm(x).view(*prev_tgt.shape, -1)

    def decode(self, prev_tgt: Tensor, enc: EncoderOut, cache: Cache | None = None, last_only: bool = False) -> Tensor:
        """Logits [B, T, V] (see `decoder_states`); `last_only` projects the last position only ([B, 1, V])."""
        states = self.decoder_states(prev_tgt, enc, cache)
        return self.project(states[:, -1:] if last_only else states)

    def fixed_cache(self, length: int, device: torch.device) -> Cache:
        """A cache for `decode_step`: the decoder layers' `FixedCache`s for `length` positions (their
        cross-attention keys and values come at the first step), and the position, 0."""
        position = torch.zeros(1, dtype=torch.long, device=device)
        layers = [{"self": FixedCache(length, position), "cross": {}} for _ in self.decoder]
        return {"position": position, "positions": torch.arange(length, device=device), "layers": layers}

    def decode_step(self, tokens: Tensor, enc: EncoderOut, cache: Cache) -> Tensor:
        """Logits [B, V] of the next token after `tokens` [B, 1], the tokens at `cache["position"]` of a
        `fixed_cache`; the position then moves on by one. Every shape is fixed and nothing is read back to
        the host, so that a CUDA graph can capture the step once its first call has run."""
        position = cache["position"]
        visible = cache["positions"].le(position)[None, None, None, :]
        x = self.embed(tokens.view(-1)) * self.embed_scale + self.positions.index_select(0, position)
        for layer, layer_cache in zip(self.decoder, cache["layers"], strict=True):
            layer_cache["self"].visible = visible
            x = layer(x, enc, layer_cache)
        position.add_(1)
        return self.project(self.decoder_norm(x))

    @staticmethod
    def new_cache() -> Cache:
        return {}

    @staticmethod
    def reorder_cache(cache: Cache, index: Tensor, cross: bool = True) -> Cache:
        """Keep batch rows `index` (in that order) of every cached tensor, in place.

        Pass `cross=False` when every row of `index` maps to a row of the same sentence (beam reordering
        within sentences): the cross-attention keys and values are then unchanged and are not copied.
        """
        for layer_cache in cache.get("layers", []):
            for name, kv in layer_cache.items():
                if isinstance(kv, FixedCache):
                    kv.reorder_(index)
                elif name == "self" or cross:
                    for key in kv:
                        kv[key] = kv[key].index_select(0, index)
        return cache

    @staticmethod
    def reorder_encoder_out(enc: EncoderOut, index: Tensor) -> EncoderOut:
        return EncoderOut(enc.memory.index_select(0, index), enc.attn_mask.index_select(0, index))
