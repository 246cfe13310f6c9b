"""Greedy and beam search over a batch of source sentences, with incremental (cached) decoding.

Both searches drop a sentence from the batch as soon as it is finished, so one long sentence does not keep
the whole batch decoding; with `fixed_shapes` they keep it, so that every step has the same shapes and a
CUDA graph can replay it. Outputs are token ids without bos and eos. A sentence of n source tokens (eos
and pads excluded) gets at most `max_len_a * n + max_len_b` output tokens (capped by the model's
positions); at that length eos is forced, and scores the model's log-probability of it (the rules mask the
log-probabilities after they are normalized, as fairseq does). Before it, every output has at least one
token, as fairseq's default `min_len` of 1 gives: eos is never a first token (an empty line for a sentence,
from a model that is barely trained), unless the length limit is 0.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from async_nmt.model.transformer import Transformer


def max_lengths(model: Transformer, src: Tensor, max_len_a: float, max_len_b: int) -> list[int]:
    """The most output tokens (eos excluded) each sentence may get."""
    cfg = model.cfg
    src_lens = (src.ne(cfg.pad_id).sum(1) - 1).clamp(min=0).tolist()
    cap = cfg.max_positions - 1
    return [max(0, int(min((max_len_a * n if n else 0) + max_len_b, cap))) for n in src_lens]  # (a may be inf)


def cast_for_search(model: Transformer, amp_dtype: torch.dtype | None) -> None:
    """Hold every linear layer's weights in `amp_dtype`, once, for a model that only translates from now on.

    Each search otherwise copies them into `amp_dtype` once a batch (`Transformer.weights_in`); cast here,
    they are used as they are. Layer norms, the tied embedding and the residual stream stay fp32, so the
    search computes exactly what autocast over fp32 weights does.
    """
    if amp_dtype is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(amp_dtype)


def _inference(model: Transformer, src: Tensor, amp_dtype: torch.dtype | None) -> contextlib.ExitStack:
    """No autograd, and autocast to `amp_dtype` (None: fp32), with the weights copied into it once for the
    batch (`Transformer.weights_in`)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if amp_dtype is not None:
        stack.enter_context(torch.autocast(src.device.type, dtype=amp_dtype))
        stack.enter_context(model.weights_in(amp_dtype))
    return stack


def check_every_for(device: torch.device) -> int:
    """Decoding steps between reads of the finished sentences back to the host. Each read waits for the
    device to finish its queued work: on a GPU the search reads every 8 steps, and a finished sentence
    computes up to 7 steps more before it leaves the batch; on the CPU reading costs nothing, so every step.
    """
    return 1 if device.type == "cpu" else 8


def _at_max_len(min_limit: int, limits: Tensor, step: int) -> Tensor | None:
    """Which rows are at their length limit (`limits` [N] on the device); None while none can be."""
    return None if min_limit > step else limits.le(step)


def _next_log_probs(model: Transformer, tokens: Tensor, enc, cache: dict | None, at_max_len: Tensor | None) -> Tensor:
    """Log-probabilities [N, V] of the next token after each row of `tokens` (which starts with bos)."""
    prev = tokens[:, -1:] if cache is not None else tokens
    lprobs = torch.log_softmax(model.decode(prev, enc, cache, last_only=True)[:, -1].float(), dim=-1)
    if tokens.size(1) == 1:  # the first step
        _no_eos_first(model, lprobs, torch.ones_like(lprobs[:, 0], dtype=torch.bool), at_max_len)
    return _mask_next(model, lprobs, at_max_len)


def _no_eos_first(model: Transformer, lprobs: Tensor, first: Tensor, at_max_len: Tensor | None) -> None:
    """No eos in `lprobs` [N, V] for the rows whose step is the `first` ([N] or [], on the device), but
    for those `at_max_len` (a limit of 0): an output has at least one token where it may."""
    no_eos = first if at_max_len is None else first & ~at_max_len
    lprobs[:, model.cfg.eos_id].masked_fill_(no_eos, -math.inf)


def _mask_next(model: Transformer, lprobs: Tensor, at_max_len: Tensor | None) -> Tensor:
    """`lprobs` [N, V], the model's next-token log-probabilities, with pad and bos never chosen, and only
    eos for the rows `at_max_len`: masked after they are normalized, as fairseq masks, so that what is left
    keeps the model's own log-probability (normalized after, a forced eos scored log 1 = 0, and beam search
    preferred outputs cut at the length limit; a first token gained -log(1 - p(eos)))."""
    cfg = model.cfg
    lprobs[:, cfg.pad_id] = -math.inf
    lprobs[:, cfg.bos_id] = -math.inf
    if at_max_len is not None:  # rows at their length limit may only end
        eos_lprob = lprobs[:, cfg.eos_id].clone()
        lprobs.masked_fill_(at_max_len[:, None], -math.inf)
        lprobs[:, cfg.eos_id] = eos_lprob
    return lprobs


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def _run_steps(step: Callable[[], object], steps: int, finished: Tensor, check_every: int) -> None:
    """Run `step` up to `steps` times, reading `finished` [N] back every `check_every` steps and stopping
    once it is all true. On CUDA the first step runs as it is and the rest replay it as one CUDA graph
    (`_replayable`)."""
    replay = _replayable(step, finished.device)
    for taken in range(1, steps):
        if taken % check_every == 0 and bool(finished.all()):
            break
        replay()


def _replayable(step: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`step` run once, then, on CUDA, captured as a CUDA graph: the function returned replays it, one
    launch for the step's hundreds of kernels. The step must only read and write tensors that outlive it,
    at fixed addresses. Elsewhere the function returned is `step`."""
    if device.type != "cuda":
        step()
        return step
    side, pool = _capture_resources(device)
    side.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        step()  # the first step runs for real, allocating what the step keeps
        # Then the second is recorded; replay() runs it. (`torch.cuda.graph` would also synchronize and
        # empty the allocator's caches, of device and pinned memory, before each batch's capture.)
        graph.capture_begin(pool=None if pool is None else pool.id)
        try:
            step()
        except BaseException:
            with contextlib.suppress(Exception):  # (its own error would hide the step's)
                graph.capture_end()
            raise
        graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(side)
    return graph.replay


@functools.cache
def _capture_resources(device: torch.device) -> tuple[torch.cuda.Stream, Any]:
    """The side stream and the graph memory pool of every batch's capture on `device`, one each for the
    process. Memory the caching allocator frees on one stream, or in one graph's pool, it reuses only on
    that stream or in that pool, and gives back to the device only outside a capture: with a new stream
    and pool a batch (torch's round-robin streams, a private pool each graph), each batch's memory was
    kept from the next, and the memory reserved grew batch by batch until a capture could run out of it
    (found by reading the allocator, not yet measured on a GPU). The batches capture one after another and
    never replay an earlier batch's graph, which is what sharing a pool asks. The pool lives as long as
    the process (`torch.cuda.MemPool`, where torch has it; else a graph's own pool)."""
    with torch.cuda.device(device):
        return torch.cuda.Stream(device), _memory_pool()


def _memory_pool() -> Any:
    """A pool for the captures (None: each graph its own). The MemPool itself is kept: while it lives, its
    pool is never freed under a later capture; a bare `graph_pool_handle` is, once the graph that used it is
    gone, and the next capture into it fails. Only the native allocator has pools (not cudaMallocAsync)."""
    if not hasattr(torch.cuda, "MemPool") or torch.cuda.get_allocator_backend() != "native":
        return None
    try:
        return torch.cuda.MemPool()
    except RuntimeError:  # (a torch whose MemPool this allocator lacks)
        return None


def release_capture_pool() -> None:
    """Let go of the captures' pools (and side streams), so that emptying the allocator's cache frees the
    memory they hold, which a live pool keeps even from a search that runs out of memory; the next capture
    makes new ones. No graph may be replayed after it."""
    _capture_resources.cache_clear()


def _greedy_fixed_shapes(model: Transformer, src: Tensor, limits: list[int], check_every: int) -> list[list[int]]:
    """Greedy search in which no row leaves the batch: a finished sentence goes on decoding (its tokens are
    ignored) until every sentence has ended. Each step is `Transformer.decode_step` and the choice of the
    next token, with fixed shapes and the step index on the device, so that on CUDA one graph replays it
    (`_run_steps`). The outputs are those of the cached `greedy_search`."""
    cfg = model.cfg
    device = src.device
    steps = max(limits) + 1
    enc = model.encode(src)
    cache = model.fixed_cache(steps, device)
    tokens = torch.full((src.size(0), steps + 1), cfg.eos_id, dtype=torch.long, device=device)
    tokens[:, 0] = cfg.bos_id
    ended = torch.zeros(src.size(0), dtype=torch.bool, device=device)
    row_limits = torch.tensor(limits, device=device)
    position = cache["position"]

    def step() -> None:
        at_max_len = row_limits.le(position)
        first = position.eq(0)
        # (log-probabilities, not logits, as greedy_search takes: two logits apart may round to one log-prob)
        lprobs = torch.log_softmax(model.decode_step(tokens.index_select(1, position), enc, cache).float(), dim=-1)
        _no_eos_first(model, lprobs, first, at_max_len)
        next_tokens = _mask_next(model, lprobs, at_max_len).argmax(-1).masked_fill_(ended, cfg.eos_id)
        tokens.index_copy_(1, position, next_tokens[:, None])  # decode_step has moved position on
        ended.logical_or_(next_tokens.eq(cfg.eos_id))

    _run_steps(step, steps, ended, check_every)
    return [_until_eos(ids, cfg.eos_id) for ids in tokens[:, 1:].tolist()]


def greedy_search(
    model: Transformer,
    src: Tensor,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    use_cache: bool = True,
    amp_dtype: torch.dtype | None = None,
    check_every: int | None = None,
    fixed_shapes: bool = False,
) -> list[list[int]]:
    """The most probable next token at each step, for each sentence of `src` [B, S].

    Which rows have ended stays on the device; it is read back every `check_every` steps (default: by
    device, `check_every_for`), when the ended rows leave the batch. With `fixed_shapes` (and the cache),
    no row leaves it, and on CUDA every step after the first is one CUDA graph replay
    (`_greedy_fixed_shapes`).
    """
    cfg = model.cfg
    if src.size(0) == 0:
        return []
    device = src.device
    check_every = check_every or check_every_for(device)
    if fixed_shapes and use_cache:
        with _inference(model, src, amp_dtype):
            return _greedy_fixed_shapes(model, src, max_lengths(model, src, max_len_a, max_len_b), check_every)
    with _inference(model, src, amp_dtype):
        limits = max_lengths(model, src, max_len_a, max_len_b)
        steps = max(limits) + 1
        enc = model.encode(src)
        cache = model.new_cache() if use_cache else None
        tokens = torch.full((src.size(0), steps + 1), cfg.eos_id, dtype=torch.long, device=device)
        tokens[:, 0] = cfg.bos_id
        ended = torch.zeros(src.size(0), dtype=torch.bool, device=device)
        alive = list(range(src.size(0)))  # original index of each row
        alive_limits = torch.tensor(limits, device=device)
        min_limit = min(limits)
        outputs: list[list[int]] = [[] for _ in alive]
        for step in range(steps):
            at_max_len = _at_max_len(min_limit, alive_limits, step)
            next_tokens = _next_log_probs(model, tokens[:, : step + 1], enc, cache, at_max_len).argmax(-1)
            tokens[:, step + 1] = next_tokens.masked_fill_(ended, cfg.eos_id)  # ended rows: eos, ignored
            ended |= next_tokens.eq(cfg.eos_id)
            if (step + 1) % check_every and step + 1 < steps:
                continue
            finished = ended.tolist()  # the one read of the device in `check_every` steps
            if not any(finished):
                continue
            done_rows = [row for row, f in enumerate(finished) if f]
            for row, ids in zip(done_rows, tokens[done_rows, 1 : step + 2].tolist(), strict=True):
                outputs[alive[row]] = _until_eos(ids, cfg.eos_id)
            keep_rows = [row for row, f in enumerate(finished) if not f]
            if not keep_rows:
                break
            alive = [alive[row] for row in keep_rows]
            keep = torch.tensor(keep_rows, device=device)
            tokens, ended, alive_limits = tokens[keep], ended[keep], alive_limits[keep]
            min_limit = min(limits[i] for i in alive)
            enc = model.reorder_encoder_out(enc, keep)
            if cache is not None:
                model.reorder_cache(cache, keep)
    return outputs


class _BeamChoice(NamedTuple):
    """One step's choice among the 2*beam best candidates of each sentence (`_choose_beams`)."""

    slot: Tensor  # [n, K] the finished-hypothesis slot of each of the first K candidates (K: none, the sink)
    finished_beams: Tensor  # [n, K] the beam each of the first K candidates extends
    live_scores: Tensor  # [n, K] the scores of the candidates that go on
    live_beams: Tensor  # [n, K] the beam each of them extends
    live_tokens: Tensor  # [n, K] and its token


def _choose_beams(
    lprobs: Tensor,
    scores: Tensor,
    eos_id: int,
    length: Tensor,
    at_limit: Tensor,
    done: Tensor,
    fin_count: Tensor,
    fin_scores: Tensor,
) -> _BeamChoice:
    """A step of beam search's bookkeeping, the same with fixed shapes and without: of the 2*K best
    candidates of each of n sentences (`scores` [n, K] plus the next tokens' `lprobs` [n * K, V]), the eos
    candidates among the first K become finished hypotheses while their sentence has room, scored over
    `length` (a tensor on the device, so that both searches divide alike), and the first K that are not eos
    go on (there are always K: at most K are eos). In place: `fin_scores` [n, K + 1] gets the finished
    scores in their slots (slot K is a sink for those that do not fit), `fin_count` [n] counts them, and
    `done` [n] marks the sentences with K finished or `at_limit` [n]. The caller writes the finished
    hypotheses' tokens and reorders its beams."""
    n, K = scores.shape
    V = lprobs.size(1)
    candidates = (scores[:, :, None] + lprobs.view(n, K, V)).view(n, K * V)
    top_scores, top_index = candidates.topk(min(2 * K, K * V), dim=1)
    beam_of, token_of = top_index // V, top_index % V
    is_eos = token_of.eq(eos_id)

    eos_first = is_eos[:, :K] & top_scores[:, :K].isfinite() & ~done[:, None]
    rank = fin_count[:, None] + eos_first.long().cumsum(1) - 1
    slot = torch.where(eos_first & (rank < K), rank, K)
    fin_scores.scatter_(1, slot, top_scores[:, :K] / length)
    fin_count.add_(slot.lt(K).sum(1))
    done.logical_or_(fin_count.ge(K) | at_limit)

    order = is_eos.long() * top_scores.size(1) + torch.arange(top_scores.size(1), device=scores.device)
    live = order.topk(K, dim=1, largest=False).indices
    return _BeamChoice(slot, beam_of[:, :K], top_scores.gather(1, live), beam_of.gather(1, live),
                       token_of.gather(1, live))  # fmt: skip


def _best_finished(fin_scores: Tensor, fin_tokens: Tensor, fin_count: Tensor, eos_id: int) -> list[list[int]]:
    """Each sentence's output: its best finished hypothesis (the first of equal ones), or [] if it has none."""
    K = fin_scores.size(1) - 1
    best = fin_scores[:, :K].argmax(1)
    ids = fin_tokens[torch.arange(best.size(0), device=best.device), best].tolist()
    return [_until_eos(hyp, eos_id) if count else [] for hyp, count in zip(ids, fin_count.tolist(), strict=True)]


Scored = tuple[float, list[int]]  # a finished hypothesis's score (log-prob / length**lenpen) and its tokens


def _nbest_finished(
    fin_scores: Tensor, fin_tokens: Tensor, fin_count: Tensor, eos_id: int, nbest: int
) -> list[list[Scored]]:
    """Each sentence's `nbest` best finished hypotheses, best first (equal ones in the order found, so the
    first is `_best_finished`'s), with their scores; fewer where it finished fewer."""
    K = fin_scores.size(1) - 1
    scores, order = fin_scores[:, :K].sort(dim=1, descending=True, stable=True)
    scores, order = scores[:, :nbest], order[:, :nbest]
    ids = fin_tokens.gather(1, order[:, :, None].expand(-1, -1, fin_tokens.size(2))).tolist()
    kept = [min(count, nbest) for count in fin_count.tolist()]
    return [
        [(score, _until_eos(hyp, eos_id)) for score, hyp in zip(row_scores[:m], row_ids[:m], strict=True)]
        for row_scores, row_ids, m in zip(scores.tolist(), ids, kept, strict=True)
    ]


def _picker(nbest: int | None) -> Callable[[Tensor, Tensor, Tensor, int], list]:
    """What a beam search returns of each sentence's finished hypotheses: the best one's tokens, or with
    `nbest` its n-best list."""
    return _best_finished if nbest is None else functools.partial(_nbest_finished, nbest=nbest)


def _beam_fixed_shapes(
    model: Transformer,
    src: Tensor,
    beam: int,
    lenpen: float,
    limits: list[int],
    check_every: int,
    pick: Callable[[Tensor, Tensor, Tensor, int], list],
) -> list:
    """`beam_search` in which no sentence leaves the batch: a done sentence takes no more finished
    hypotheses and its beams go on unread, until every sentence is done. Each step (`decode_step`, the
    choice of candidates, the finished hypotheses, the reordering of beams and cache in place) has fixed
    shapes and the step index on the device, so that on CUDA one graph replays it (`_run_steps`)."""
    cfg = model.cfg
    K, B, device = beam, src.size(0), src.device
    steps = max(limits) + 1
    enc = model.reorder_encoder_out(model.encode(src), torch.arange(B, device=device).repeat_interleave(K))
    cache = model.fixed_cache(steps, device)
    position = cache["position"]
    tokens = torch.full((B * K, steps + 1), cfg.bos_id, dtype=torch.long, device=device)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
    fin_scores = torch.full((B, K + 1), -math.inf, device=device)  # slot K: a sink, as in beam_search
    fin_tokens = torch.full((B, K + 1, steps), cfg.eos_id, dtype=torch.long, device=device)
    fin_count = torch.zeros(B, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    sent_limits = torch.tensor(limits, device=device)
    columns = torch.arange(steps, device=device)
    first_rows = torch.arange(B, device=device)[:, None] * K

    def step() -> None:
        at_limit = sent_limits.le(position)
        at_max_len = at_limit.repeat_interleave(K)
        length = (position + 1).float().pow(lenpen)
        write_at = position + 1
        history_cols = columns.lt(position)
        first = position.eq(0)
        lprobs = torch.log_softmax(model.decode_step(tokens.index_select(1, position), enc, cache).float(), dim=-1)
        _no_eos_first(model, lprobs, first, at_max_len)
        lprobs = _mask_next(model, lprobs, at_max_len)
        choice = _choose_beams(lprobs, scores, cfg.eos_id, length, at_limit, done, fin_count, fin_scores)
        history = tokens.view(B, K, -1)[:, :, 1:].gather(1, choice.finished_beams[:, :, None].expand(-1, -1, steps))
        history = torch.where(history_cols, history, cfg.eos_id)
        fin_tokens.scatter_(1, choice.slot[:, :, None].expand(-1, -1, steps), history)

        live_rows = (first_rows + choice.live_beams).view(-1)
        scores.copy_(choice.live_scores)
        tokens.copy_(tokens.index_select(0, live_rows))
        tokens.index_copy_(1, write_at, choice.live_tokens.view(-1, 1))
        model.reorder_cache(cache, live_rows, cross=False)

    _run_steps(step, steps, done, check_every)
    return pick(fin_scores, fin_tokens, fin_count, cfg.eos_id)


def beam_search(
    model: Transformer,
    src: Tensor,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    use_cache: bool = True,
    amp_dtype: torch.dtype | None = None,
    check_every: int | None = None,
    fixed_shapes: bool = False,
    nbest: int | None = None,
) -> list:
    """Beam search, fairseq-style: of the 2*beam best candidates of a sentence, eos candidates among the
    first `beam` become finished hypotheses (scored log-prob / length**lenpen, eos counted), and the first
    `beam` other candidates go on. A sentence is done when it has `beam` finished hypotheses, or at its
    length limit; its best finished hypothesis (the first of equal ones) is the output: a list of token ids
    a sentence. With `nbest` (at most `beam`), its n-best list instead: its `nbest` best finished
    hypotheses, best first, as (score, token ids) pairs (`Scored`).

    The finished hypotheses are kept on the device, in `beam` slots a sentence (and one more that takes
    the hypotheses that do not fit); which sentences are done is read back every `check_every` steps
    (default: by device, `check_every_for`), when they leave the batch. With `fixed_shapes` (and the
    cache), none leaves it, and on CUDA every step after the first is one CUDA graph replay
    (`_beam_fixed_shapes`).
    """
    cfg = model.cfg
    K = beam
    if nbest is not None and not 1 <= nbest <= beam:
        raise ValueError(f"nbest must be 1 to beam ({beam}), got {nbest}")
    pick = _picker(nbest)
    if src.size(0) == 0:
        return []
    device = src.device
    check_every = check_every or check_every_for(device)
    if fixed_shapes and use_cache:
        with _inference(model, src, amp_dtype):
            limits = max_lengths(model, src, max_len_a, max_len_b)
            return _beam_fixed_shapes(model, src, beam, lenpen, limits, check_every, pick)
    with _inference(model, src, amp_dtype):
        B = src.size(0)
        limits = max_lengths(model, src, max_len_a, max_len_b)
        steps = max(limits) + 1
        expand = torch.arange(B, device=device).repeat_interleave(K)
        enc = model.reorder_encoder_out(model.encode(src), expand)
        cache = model.new_cache() if use_cache else None
        tokens = torch.full((B * K, steps + 1), cfg.bos_id, dtype=torch.long, device=device)
        # All beams start identical: only the first may expand at step 0.
        scores = torch.full((B, K), -math.inf, device=device)
        scores[:, 0] = 0.0
        # finished hypotheses: slots 0..K-1 a sentence, filled in order; slot K is a sink for the rest
        fin_scores = torch.full((B, K + 1), -math.inf, device=device)
        fin_tokens = torch.full((B, K + 1, steps), cfg.eos_id, dtype=torch.long, device=device)
        fin_count = torch.zeros(B, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        sent_limits = torch.tensor(limits, device=device)
        alive = list(range(B))  # original index of each live sentence
        min_limit = min(limits)
        outputs: list = [[] for _ in range(B)]
        for step in range(steps):
            n = len(alive)
            at_max_len = _at_max_len(min_limit, sent_limits, step)
            if at_max_len is not None:
                at_max_len = at_max_len.repeat_interleave(K)
            lprobs = _next_log_probs(model, tokens[:, : step + 1], enc, cache, at_max_len)
            # (the length as `_beam_fixed_shapes` computes it: on CUDA, dividing by a Python number multiplies
            # by its reciprocal, which may differ in the last bit)
            length = torch.full((), step + 1, dtype=torch.long, device=device).float().pow(lenpen)
            choice = _choose_beams(lprobs, scores, cfg.eos_id, length, sent_limits.le(step), done, fin_count,
                                   fin_scores)  # fmt: skip
            if step:
                history = tokens.view(n, K, -1)[:, :, 1 : step + 1].gather(
                    1, choice.finished_beams[:, :, None].expand(-1, -1, step)
                )
                fin_tokens[:, :, :step].scatter_(1, choice.slot[:, :, None].expand(-1, -1, step), history)
            live_scores = choice.live_scores
            live_rows = (torch.arange(n, device=device)[:, None] * K + choice.live_beams).view(-1)
            live_tokens = choice.live_tokens.view(-1)

            leaving = False
            if not (step + 1) % check_every or step + 1 == steps:
                done_now = done.tolist()  # the one read of the device in `check_every` steps
                done_sents = [s for s in range(n) if done_now[s]]
                if done_sents:
                    index = torch.tensor(done_sents, device=device)
                    found = pick(fin_scores[index], fin_tokens[index], fin_count[index], cfg.eos_id)
                    for s, hyp in zip(done_sents, found, strict=True):
                        outputs[alive[s]] = hyp
                if len(done_sents) == n:
                    break
                if done_sents:
                    leaving = True
                    keep_sents = [s for s in range(n) if not done_now[s]]
                    alive = [alive[s] for s in keep_sents]
                    min_limit = min(limits[i] for i in alive)
                    keep = torch.tensor(keep_sents, device=device)
                    live_scores, fin_scores, fin_tokens = live_scores[keep], fin_scores[keep], fin_tokens[keep]
                    fin_count, done, sent_limits = fin_count[keep], done[keep], sent_limits[keep]
                    live_rows = live_rows.view(n, K)[keep].view(-1)
                    live_tokens = live_tokens.view(n, K)[keep].view(-1)
                    enc = model.reorder_encoder_out(enc, live_rows)
            tokens = tokens.index_select(0, live_rows)
            tokens[:, step + 1] = live_tokens
            scores = live_scores
            if cache is not None:
                model.reorder_cache(cache, live_rows, cross=leaving)
    return outputs


def generate(model: Transformer, src: Tensor, beam: int, **kwargs) -> list[list[int]]:
    """Beam search, or greedy search when `beam` is 1. `lenpen` is ignored by greedy search. `amp_dtype`
    autocasts the search (None: fp32)."""
    if beam == 1:
        kwargs.pop("lenpen", None)
        return greedy_search(model, src, **kwargs)
    return beam_search(model, src, beam=beam, **kwargs)
