"""Greedy and beam search over a batch of source sentences, with incremental (cached) decoding.

Both searches drop a sentence from the batch as soon as it is finished, so one long sentence does not keep
the whole batch decoding. Outputs are token ids without bos and eos. A sentence of n source tokens (eos
and pads excluded) gets at most `max_len_a * n + max_len_b` output tokens (capped by the model's
positions); at that length eos is forced.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from async_nmt.model.transformer import Transformer


def max_lengths(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int) -> list[int]:
    """The most output tokens (eos excluded) each sentence may get."""
    cfg = model.cfg
    src_lens = (src.ne(cfg.pad_id).sum(1) - 1).clamp(min=0).tolist()
    return [max(0, min(int(max_len_a * n + max_len_b), cfg.max_positions - 1)) for n in src_lens]


def cast_for_search(model: Transformer, amp_dtype: torch.dtype | None) -> None:
    """Hold every linear layer's weights in `amp_dtype`, once, for a model that only translates from now on.

    Autocast casts fp32 weights to `amp_dtype` at every call, and does not keep the casts of parameters
    that are views (the training model's) or of calls outside one autocast region: thousands of copies per
    batch on a GPU. Weights already in `amp_dtype` are used as they are. Layer norms, the tied embedding
    and the residual stream stay fp32, so the search computes exactly what autocast over fp32 weights does.
    """
    if amp_dtype is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(amp_dtype)


def _inference(src: Tensor, amp_dtype: torch.dtype | None) -> contextlib.ExitStack:
    """No autograd, and autocast to `amp_dtype` (None: fp32)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if amp_dtype is not None:
        stack.enter_context(torch.autocast(src.device.type, dtype=amp_dtype))
    return stack


def _at_max_len(limits: list[int], step: int, repeat: int, device: torch.device) -> Tensor | None:
    """Which rows (each sentence repeated `repeat` times) are at their length limit; None if none is."""
    if min(limits) > step:
        return None
    return torch.tensor([limit <= step for limit in limits for _ in range(repeat)], device=device)


def _next_log_probs(model: Transformer, tokens: Tensor, enc, cache: dict | None, at_max_len: Tensor | None) -> Tensor:
    """Log-probabilities [N, V] of the next token after each row of `tokens` (which starts with bos)."""
    cfg = model.cfg
    prev = tokens[:, -1:] if cache is not None else tokens
    logits = model.decode(prev, enc, cache, last_only=True)[:, -1].float()
    logits[:, cfg.pad_id] = -math.inf
    logits[:, cfg.bos_id] = -math.inf
    if at_max_len is not None:  # rows at their length limit may only end
        eos_logit = logits[:, cfg.eos_id].clone()
        logits.masked_fill_(at_max_len[:, None], -math.inf)
        logits[:, cfg.eos_id] = eos_logit
    return torch.log_softmax(logits, dim=-1)


def greedy_search(
    model: Transformer,
    src: Tensor,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    use_cache: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> list[list[int]]:
    """The most probable next token at each step, for each sentence of `src` [B, S]."""
    cfg = model.cfg
    if src.size(0) == 0:
        return []
    with _inference(src, amp_dtype):
        limits = max_lengths(model, src, max_len_a, max_len_b)
        enc = model.encode(src)
        cache = model.new_cache() if use_cache else None
        tokens = torch.full((src.size(0), 1), cfg.bos_id, dtype=torch.long, device=src.device)
        alive = list(range(src.size(0)))  # original index of each row
        alive_limits = limits
        outputs: list[list[int]] = [[] for _ in alive]
        for step in range(max(limits) + 1):
            at_max_len = _at_max_len(alive_limits, step, 1, src.device)
            next_tokens = _next_log_probs(model, tokens, enc, cache, at_max_len).argmax(-1)
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            finished = next_tokens.eq(cfg.eos_id).tolist()
            if not any(finished):
                continue
            done_rows = [row for row, f in enumerate(finished) if f]
            for row, ids in zip(done_rows, tokens[done_rows, 1:-1].tolist(), strict=True):
                outputs[alive[row]] = ids
            keep_rows = [row for row, f in enumerate(finished) if not f]
            if not keep_rows:
                break
            alive = [alive[row] for row in keep_rows]
            alive_limits = [alive_limits[row] for row in keep_rows]
            keep = torch.tensor(keep_rows, device=src.device)
            tokens = tokens[keep]
            enc = model.reorder_encoder_out(enc, keep)
            if cache is not None:
                model.reorder_cache(cache, keep)
    return outputs


def beam_search(
    model: Transformer,
    src: Tensor,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    use_cache: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> list[list[int]]:
    """Beam search, fairseq-style: of the 2*beam best candidates of a sentence, eos candidates among the
    first `beam` become finished hypotheses (scored log-prob / length**lenpen, eos counted), and the first
    `beam` other candidates go on. A sentence is done when it has `beam` finished hypotheses, or at its
    length limit; its best finished hypothesis is the output.
    """
    cfg = model.cfg
    K = beam
    if src.size(0) == 0:
        return []
    device = src.device
    with _inference(src, amp_dtype):
        B = src.size(0)
        limits = max_lengths(model, src, max_len_a, max_len_b)
        expand = torch.arange(B, device=device).repeat_interleave(K)
        enc = model.reorder_encoder_out(model.encode(src), expand)
        cache = model.new_cache() if use_cache else None
        tokens = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=device)
        # All beams start identical: only the first may expand at step 0.
        scores = torch.full((B, K), -math.inf, device=device)
        scores[:, 0] = 0.0
        alive = list(range(B))  # original index of each live sentence
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        outputs: list[list[int]] = [[] for _ in range(B)]
        for step in range(max(limits) + 1):
            n = len(alive)
            at_max_len = _at_max_len([limits[s] for s in alive], step, K, device)
            lprobs = _next_log_probs(model, tokens, enc, cache, at_max_len)
            V = lprobs.size(1)
            candidates = (scores[:, :, None] + lprobs.view(n, K, V)).view(n, K * V)
            top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)
            beam_of, token_of = top_index // V, top_index % V
            is_eos = token_of.eq(cfg.eos_id)

            # Finished hypotheses: eos candidates ranked among the first K.
            eos_first = is_eos[:, :K] & top_scores[:, :K].isfinite()
            sent_idx, cand_idx = eos_first.nonzero(as_tuple=True)
            if sent_idx.numel():
                rows = sent_idx * K + beam_of[sent_idx, cand_idx]
                hyp_scores = (top_scores[sent_idx, cand_idx] / (step + 1) ** lenpen).tolist()
                for s, score, ids in zip(sent_idx.tolist(), hyp_scores, tokens[rows, 1:].tolist(), strict=True):
                    if len(finished[alive[s]]) < K:
                        finished[alive[s]].append((score, ids))

            # Live beams: the first K candidates that are not eos (there are always K: at most K are eos).
            order = is_eos.long() * top_scores.size(1) + torch.arange(top_scores.size(1), device=device)
            live = order.topk(K, dim=1, largest=False).indices
            live_scores = top_scores.gather(1, live)
            live_rows = (torch.arange(n, device=device)[:, None] * K + beam_of.gather(1, live)).view(-1)
            live_tokens = token_of.gather(1, live).view(-1)

            done = [len(finished[alive[s]]) >= K or step >= limits[alive[s]] for s in range(n)]
            for s in (s for s in range(n) if done[s]):
                if finished[alive[s]]:
                    outputs[alive[s]] = max(finished[alive[s]], key=lambda hyp: hyp[0])[1]
            if all(done):
                break
            if any(done):
                keep_sents = [s for s in range(n) if not done[s]]
                alive = [alive[s] for s in keep_sents]
                keep = torch.tensor(keep_sents, device=device)
                live_scores = live_scores[keep]
                live_rows = live_rows.view(n, K)[keep].view(-1)
                live_tokens = live_tokens.view(n, K)[keep].view(-1)
                enc = model.reorder_encoder_out(enc, live_rows)
            tokens = torch.cat([tokens[live_rows], live_tokens[:, None]], dim=1)
            scores = live_scores
            if cache is not None:
                model.reorder_cache(cache, live_rows, cross=any(done))
    return outputs


def generate(model: Transformer, src: Tensor, beam: int, **kwargs) -> list[list[int]]:
    """Beam search, or greedy search when `beam` is 1. `lenpen` is ignored by greedy search. `amp_dtype`
    autocasts the search (None: fp32)."""
    if beam == 1:
        kwargs.pop("lenpen", None)
        return greedy_search(model, src, **kwargs)
    return beam_search(model, src, beam=beam, **kwargs)
