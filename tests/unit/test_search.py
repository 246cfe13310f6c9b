"""Greedy and beam search: cache == no cache, beam 1 == greedy, length limits, batching, exact scoring."""

from __future__ import annotations

import collections
import itertools
import math
import os

import pytest
import torch

from async_nmt.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from async_nmt.model.search import beam_search, generate, greedy_search, max_lengths
from async_nmt.model.transformer import Transformer

DEVICE = torch.device(os.environ.get("ASYNC_NMT_TEST_DEVICE", "cpu"))  # cuda:0 runs these tests on a GPU


def make_model(vocab_size: int = 40, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab_size, d_model=32, heads=4, enc_layers=2, dec_layers=2, ff_dim=64, max_positions=48
    )
    model = Transformer(cfg).to(DEVICE).eval()
    with torch.no_grad():  # a bigger eos logit, so that hypotheses end at different lengths
        model.embed.weight[EOS_ID] *= 3
    return model


def make_src(lengths: list[int], vocab_size: int = 40, seed: int = 1, width: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), width or max(lengths) + 1), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, vocab_size, (n,), generator=g)
        src[i, n] = EOS_ID
    return src.to(DEVICE)


MODEL = make_model()
SRC = make_src([3, 9, 1, 6, 12, 5, 7])


def test_greedy_with_cache_equals_greedy_without():
    out = greedy_search(MODEL, SRC)
    assert out == greedy_search(MODEL, SRC, use_cache=False)
    assert len({len(x) for x in out}) > 1  # the check is not vacuous: lengths differ
    assert all(EOS_ID not in x and BOS_ID not in x and PAD_ID not in x for x in out)


@pytest.mark.parametrize("beam,lenpen", [(2, 1.0), (5, 1.0), (4, 0.0), (3, 2.0)])
def test_beam_with_cache_equals_beam_without(beam: int, lenpen: float):
    out = beam_search(MODEL, SRC, beam=beam, lenpen=lenpen)
    assert out == beam_search(MODEL, SRC, beam=beam, lenpen=lenpen, use_cache=False)


def test_beam_1_is_greedy_and_generate_dispatches():
    greedy = greedy_search(MODEL, SRC)
    assert beam_search(MODEL, SRC, beam=1) == greedy
    assert generate(MODEL, SRC, beam=1, lenpen=2.0) == greedy
    assert generate(MODEL, SRC, beam=3) == beam_search(MODEL, SRC, beam=3)


@pytest.mark.parametrize("a,b", [(0.0, 2), (1.2, 10), (0.5, 0), (10.0, 100)])
def test_outputs_respect_the_length_limit(a: float, b: int):
    limits = max_lengths(MODEL, SRC, a, b)
    assert limits == [min(int(a * n + b), MODEL.cfg.max_positions - 1) for n in [3, 9, 1, 6, 12, 5, 7]]
    for out in (greedy_search(MODEL, SRC, a, b), beam_search(MODEL, SRC, beam=4, max_len_a=a, max_len_b=b)):
        assert all(len(x) <= limit for x, limit in zip(out, limits, strict=True))
    never_ending = make_model(seed=3)
    with torch.no_grad():
        never_ending.embed.weight[EOS_ID] = -100 * never_ending.decoder_norm.bias.sign()
        never_ending.decoder_norm.weight.zero_()  # eos logit = -100 * sum|bias| < 0 = the others
        never_ending.decoder_norm.bias.fill_(0.1)
    out = greedy_search(never_ending, SRC, a, b)
    assert [len(x) for x in out] == limits


def eager_to_end(seed: int = 4) -> Transformer:
    """A model whose most probable token is eos at every step, the first included."""
    model = make_model(seed=seed)
    with torch.no_grad():
        model.decoder_norm.weight.zero_()
        model.decoder_norm.bias.fill_(0.1)  # the decoder's output: 0.1 everywhere
        model.embed.weight[EOS_ID] = 10.0  # eos logit: d_model, far above the others'
    return model


@pytest.mark.parametrize("fixed_shapes", [False, True])
@pytest.mark.parametrize("beam", [1, 4])
def test_every_output_has_a_token_unless_its_limit_is_0(beam: int, fixed_shapes: bool):
    # An empty line for a sentence is no translation (fairseq's min_len 1): eos is never the first token ...
    model = eager_to_end()
    for use_cache in (True, False):
        out = generate(model, SRC, beam, use_cache=use_cache, fixed_shapes=fixed_shapes)
        assert [len(x) for x in out] == [1] * len(SRC)  # ... and the second is eos, the most probable
    # A limit of 0 (a = 0.1: 0.3 and 0.9 tokens for the first two sentences, then b = 0) ends at once.
    out = generate(model, SRC, beam, max_len_a=0.1, max_len_b=0, fixed_shapes=fixed_shapes)
    assert [len(x) for x in out] == [0, 0, 0, 0, 1, 0, 0]


def test_batched_search_equals_one_sentence_at_a_time():
    for search_fn in (greedy_search, lambda m, s: beam_search(m, s, beam=4)):
        batched = search_fn(MODEL, SRC)
        alone = [search_fn(MODEL, SRC[i : i + 1, : int(SRC[i].ne(PAD_ID).sum())])[0] for i in range(len(SRC))]
        assert batched == alone


def sequence_score(model: Transformer, src: torch.Tensor, ids: list[int], limit: int) -> float:
    """Sum of the model's log-probs of ids + [eos], as fairseq scores a hypothesis: the rules (no pad or
    bos; no eos first unless the limit is 0; only eos at the limit) say which hypotheses may be, not what
    they score. (This oracle once masked before normalizing, as the search did: a forced eos scored 0.)"""
    prev = torch.tensor([[BOS_ID, *ids]], device=src.device)
    with torch.no_grad():
        lprobs = torch.log_softmax(model(src, prev)[0].float(), dim=-1)
    return float(sum(lprobs[t, tok] for t, tok in enumerate([*ids, EOS_ID])))


@pytest.mark.parametrize("lenpen", [0.0, 0.6, 1.0, 2.0])
def test_a_wide_beam_finds_the_best_hypotheses_of_an_exhaustive_search(lenpen: float):
    # Vocabulary: pad, unk, bos, eos and two words -> 3 possible tokens a step; 39 hypotheses of 1-3 tokens.
    model = make_model(vocab_size=6, seed=5)
    src = make_src([2, 5, 1, 3, 4, 7], vocab_size=6)
    limit = 3
    hyps = [list(ids) for n in range(1, limit + 1) for ids in itertools.product([1, 4, 5], repeat=n)]
    best = []
    for i in range(len(src)):
        scored = [(sequence_score(model, src[i : i + 1], ids, limit), ids) for ids in hyps]
        best.append(max((score / (len(ids) + 1) ** lenpen, ids) for score, ids in scored)[1])
    assert len({len(ids) for ids in best}) > 1 or lenpen in (0.0, 2.0)  # the length penalty matters here
    for use_cache in (True, False):
        out = beam_search(model, src, len(hyps), lenpen, max_len_a=0, max_len_b=limit, use_cache=use_cache)
        assert out == best


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_the_nbest_list_of_a_wide_beam_is_the_top_of_an_exhaustive_search(fixed_shapes: bool):
    """n-best lists: each sentence's best hypotheses of all, best first, each with the score that ranks it."""
    model = make_model(vocab_size=6, seed=5)
    src = make_src([2, 5, 1, 3, 4, 7], vocab_size=6)
    limit, lenpen, nbest = 3, 0.6, 6
    hyps = [list(ids) for n in range(1, limit + 1) for ids in itertools.product([1, 4, 5], repeat=n)]
    out = beam_search(model, src, len(hyps), lenpen, max_len_a=0, max_len_b=limit, nbest=nbest,
                      fixed_shapes=fixed_shapes)  # fmt: skip
    for i, found in enumerate(out):
        scored = [(sequence_score(model, src[i : i + 1], ids, limit) / (len(ids) + 1) ** lenpen, ids) for ids in hyps]
        top = sorted(scored, key=lambda pair: -pair[0])[:nbest]
        assert [ids for _, ids in found] == [ids for _, ids in top]
        assert [score for score, _ in found] == pytest.approx([score for score, _ in top], abs=1e-4)
    # the first of each list is the search's output, and a list is at most as long as asked
    for beam in (2, 5):
        for fixed in (False, True):
            lists = beam_search(MODEL, SRC, beam=beam, nbest=beam, fixed_shapes=fixed)
            assert [hyps[0][1] for hyps in lists] == beam_search(MODEL, SRC, beam=beam, fixed_shapes=fixed)
            assert all(1 <= len(hyps) <= beam for hyps in lists)
            assert all([s for s, _ in hyps] == sorted((s for s, _ in hyps), reverse=True) for hyps in lists)
    assert [hyps[:1] for hyps in beam_search(MODEL, SRC, beam=4, nbest=4)] == beam_search(MODEL, SRC, beam=4, nbest=1)
    with pytest.raises(ValueError, match="nbest"):
        beam_search(MODEL, SRC, beam=2, nbest=3)


def test_finished_sentences_leave_the_batch(monkeypatch):
    sizes = []
    decode = Transformer.decode

    def counting_decode(self, prev, enc, cache=None, last_only=False):
        sizes.append(prev.size(0))
        return decode(self, prev, enc, cache, last_only)

    monkeypatch.setattr(Transformer, "decode", counting_decode)
    beam_search(MODEL, SRC, beam=3)
    assert sizes[0] == 3 * len(SRC) and sizes[-1] < sizes[0] and sizes == sorted(sizes, reverse=True)
    sizes.clear()
    greedy_search(MODEL, SRC)
    assert sizes[0] == len(SRC) and sizes[-1] < sizes[0]


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_search_runs_at_the_precision_asked(amp_dtype):
    seen = []
    layer = next(m for m in MODEL.modules() if isinstance(m, torch.nn.Linear))
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        for beam in (1, 3):
            generate(MODEL, SRC, beam, amp_dtype=amp_dtype)
    finally:
        handle.remove()
    assert seen and set(seen) == {amp_dtype or torch.float32}


@pytest.mark.parametrize("beam", [1, 3])
def test_linear_weights_cast_once_give_the_outputs_of_autocast_over_fp32_weights(beam: int):
    import copy

    from async_nmt.model.search import cast_for_search

    cast = copy.deepcopy(MODEL)
    cast_for_search(cast, torch.bfloat16)
    linears = [m for m in cast.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == m.bias.dtype == torch.bfloat16 for m in linears)
    assert cast.embed.weight.dtype == torch.float32  # the tied embedding and the layer norms stay fp32
    assert all(m.weight.dtype == torch.float32 for m in cast.modules() if isinstance(m, torch.nn.LayerNorm))
    assert generate(cast, SRC, beam, amp_dtype=torch.bfloat16) == generate(MODEL, SRC, beam, amp_dtype=torch.bfloat16)
    prev = torch.cat([torch.full((len(SRC), 1), BOS_ID, device=DEVICE), SRC[:, :-1]], dim=1)
    with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        logits = MODEL(SRC, prev), cast(SRC, prev)
    assert torch.equal(*logits)  # bit for bit
    with torch.inference_mode():
        assert not torch.equal(logits[0], MODEL(SRC, prev))  # and bf16 does change them


@pytest.mark.parametrize("beam", [1, 3])
def test_a_search_copies_each_weight_into_autocasts_precision_once_a_batch(beam: int):
    """Autocast keeps no cast under inference mode, nor of a view (the training model's parameters): a search
    cast the tied embedding at every decoding step, and every fp32 Linear weight too (a validation's)."""
    from torch.profiler import ProfilerActivity, profile

    weights = collections.Counter(tuple(p.shape) for p in MODEL.parameters() if p.dim() == 2)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out = generate(MODEL, SRC, beam, amp_dtype=torch.bfloat16)
    copied = [tuple(e.input_shapes[0]) for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes]
    assert collections.Counter(shape for shape in copied if shape in weights) == weights
    assert max(map(len, out)) >= 3  # (steps enough that a copy a step would be more)


def test_weights_in_autocasts_precision_give_autocasts_logits_and_are_dropped_after():
    prev = torch.cat([torch.full((len(SRC), 1), BOS_ID, device=DEVICE), SRC[:, :-1]], dim=1)
    with torch.inference_mode(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        plain = MODEL(SRC, prev)
        with MODEL.weights_in(torch.bfloat16):
            assert MODEL.project_weight is not None and MODEL.project_weight.dtype == torch.bfloat16
            copied = MODEL(SRC, prev)
    assert torch.equal(plain, copied)  # bit for bit
    assert MODEL.project_weight is None
    assert all(m.low is None for m in MODEL.modules() if hasattr(m, "low"))


def test_weights_in_that_runs_out_of_memory_leaves_no_layer_with_a_copy(monkeypatch: pytest.MonkeyPatch):
    """The copies were set as they were made: one that failed (out of memory) left the layers before it with
    copies that they went on computing with, after the model had trained on (a validation's loss)."""
    to, calls = torch.Tensor.to, []

    def fails_at_the_fifth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fails_at_the_fifth)
    with pytest.raises(torch.OutOfMemoryError), MODEL.weights_in(torch.bfloat16):
        pass
    monkeypatch.undo()
    assert len(calls) == 5 and MODEL.project_weight is None
    assert all(m.low is None for m in MODEL.modules() if hasattr(m, "low"))


@pytest.mark.parametrize("check_every", [2, 8, 100])
def test_reading_the_device_every_few_steps_gives_the_same_outputs(check_every: int):
    # finished sentences then stay in the batch for up to check_every - 1 more steps, and must not change
    for beam, lenpen in [(1, 1.0), (2, 1.0), (5, 1.0), (4, 0.0), (3, 2.0)]:
        every_step = generate(MODEL, SRC, beam, lenpen=lenpen, check_every=1)
        assert generate(MODEL, SRC, beam, lenpen=lenpen, check_every=check_every) == every_step
        if beam > 1:  # and without the cache, which is not reordered
            assert beam_search(MODEL, SRC, beam, lenpen, use_cache=False, check_every=check_every) == every_step


@pytest.mark.parametrize("beam", [1, 4])
def test_the_search_reads_the_device_once_in_check_every_steps(monkeypatch, beam: int):
    # GPU search speed: a read (.tolist/.item) waits for the device; per step it would starve the GPU
    reads, steps = [], []
    tolist, item, decode = torch.Tensor.tolist, torch.Tensor.item, Transformer.decode
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or tolist(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or item(self))
    monkeypatch.setattr(Transformer, "decode", lambda self, *args, **kw: steps.append(1) or decode(self, *args, **kw))
    generate(MODEL, SRC, beam, max_len_a=0, max_len_b=30, check_every=8)
    checks = math.ceil(len(steps) / 8)
    assert len(steps) >= 24 and len(reads) <= 1 + 3 * checks < len(steps)  # 3 reads at a check at most


@pytest.mark.skipif(DEVICE.type != "cuda", reason="CUDA graphs: ASYNC_NMT_TEST_DEVICE=cuda:0")
@pytest.mark.parametrize("beam", [1, 4])
def test_batch_after_batch_of_cuda_graphs_reserves_no_more_memory(beam: int):
    """Each batch captured on a new side stream into a new graph pool, whose memory the next could not
    reuse: the memory reserved grew batch by batch. Now one stream and one pool serve every capture."""
    src = make_src([12, 9, 11, 10] * 8, width=16)
    reserved = []
    for _ in range(8):
        generate(MODEL, src, beam, fixed_shapes=True, max_len_a=0, max_len_b=40)
        torch.cuda.synchronize(DEVICE)
        reserved.append(torch.cuda.memory_reserved(DEVICE))
    assert reserved[-1] == reserved[1], reserved


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("check_every", [1, 8])
def test_search_with_fixed_shapes_equals_search(amp_dtype, check_every: int):
    # no row leaves the batch, and the cache is written and reordered in place at a position held on the
    # device; on CUDA every step after the first is a CUDA graph replay
    for beam, lenpen in [(1, 1.0), (2, 1.0), (5, 1.0), (4, 0.0), (3, 2.0)]:
        for src in (SRC, make_src([4, 30, 2, 11], seed=5), SRC[:1]):
            kwargs = dict(lenpen=lenpen, amp_dtype=amp_dtype, check_every=check_every)
            assert generate(MODEL, src, beam, fixed_shapes=True, **kwargs) == generate(MODEL, src, beam, **kwargs)
        short = dict(lenpen=lenpen, max_len_a=0, max_len_b=3)
        assert generate(MODEL, SRC, beam, fixed_shapes=True, **short) == generate(MODEL, SRC, beam, **short)


def test_fixed_shapes_greedy_breaks_a_near_tie_as_greedy_does(monkeypatch: pytest.MonkeyPatch):
    """Two logits 1e-7 apart round to one fp32 log-probability in a large vocabulary: greedy's argmax of the
    log-probabilities takes the first, and the fixed-shapes greedy, which took the argmax of the logits,
    the second."""
    model = make_model(vocab_size=4000)
    logits = torch.zeros(4000, device=DEVICE)
    logits[10], logits[11], logits[EOS_ID] = 1.0, 1.0000001, -50.0
    lprobs = torch.log_softmax(logits, -1)
    assert logits[11] > logits[10] and lprobs[11] == lprobs[10]  # the near tie
    decode, decode_step = model.decode, model.decode_step
    monkeypatch.setattr(model, "decode", lambda *a, **k: logits.expand(*decode(*a, **k).shape[:2], -1).clone())
    monkeypatch.setattr(model, "decode_step", lambda *a: logits.expand(decode_step(*a).size(0), -1).clone())
    src = torch.tensor([[5, 6, 7, EOS_ID]], device=DEVICE)
    outputs = [greedy_search(model, src, max_len_a=0, max_len_b=3, fixed_shapes=fixed) for fixed in (False, True)]
    assert outputs[0] == outputs[1] == [[10, 10, 10]]


def test_decode_step_gives_the_logits_of_a_full_decode():
    src, prev = SRC[:3], make_src([6, 6, 6], seed=7)[:, :6]
    with torch.inference_mode():
        enc = MODEL.encode(src)
        full = MODEL.decode(prev, enc)
        cache = MODEL.fixed_cache(10, DEVICE)
        steps = torch.stack([MODEL.decode_step(prev[:, i : i + 1], enc, cache) for i in range(6)], 1)
    assert int(cache["position"]) == 6
    assert torch.allclose(steps, full, atol=1e-5)


def test_an_unbounded_max_len_a_gives_a_source_without_tokens_max_len_b_tokens():
    """`max_len_a` may be inf (no limit but the model's positions): a source of eos alone (n = 0) then gets
    `max_len_b` tokens, not inf * 0 (nan), and every other sentence the positions' cap."""
    src = make_src([0, 4])
    cap = MODEL.cfg.max_positions - 1
    assert max_lengths(MODEL, src, math.inf, 5) == [5, cap]
    out = greedy_search(MODEL, src, max_len_a=math.inf, max_len_b=5)
    assert len(out[0]) <= 5 and len(out[1]) <= cap


def test_a_limit_of_0_for_every_sentence_gives_empty_outputs_in_every_search():
    """With every limit 0 the one step there is forces eos, in every search, fixed shapes included (where
    it is the whole graph): each output is empty."""
    for beam in (1, 4):
        for fixed_shapes in (False, True):
            out = generate(MODEL, SRC, beam, max_len_a=0, max_len_b=0, fixed_shapes=fixed_shapes)
            assert out == [[]] * len(SRC)


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_a_sentence_at_its_limit_is_done_with_fewer_than_beam_finished_hypotheses(fixed_shapes: bool):
    """A sentence is done at its length limit even when it has fewer than `beam` finished hypotheses (a
    vocabulary of 3 words has 3 + 9 hypotheses of up to 2 tokens, the beam is 16): its best one is the
    output, as an exhaustive search of every hypothesis scores it."""
    model = make_model(vocab_size=6, seed=5)
    src = make_src([2, 5, 1, 3], vocab_size=6)
    limit, lenpen = 2, 1.0
    hyps = [list(ids) for n in range(1, limit + 1) for ids in itertools.product([1, 4, 5], repeat=n)]
    best = []
    for i in range(len(src)):
        scored = [(sequence_score(model, src[i : i + 1], ids, limit) / (len(ids) + 1) ** lenpen, ids) for ids in hyps]
        best.append(max(scored)[1])
    for use_cache in (True, False):
        out = beam_search(model, src, 16, lenpen, max_len_a=0, max_len_b=limit, use_cache=use_cache,
                          fixed_shapes=fixed_shapes)  # fmt: skip
        assert out == best


def test_the_best_of_equal_finished_hypotheses_is_the_first_found():
    """Both beam searches take a sentence's output from `_best_finished`: its best finished hypothesis, and
    of equal ones the first (the lower slot, filled first), never the sink slot K; none gives []."""
    from async_nmt.model.search import _best_finished

    K, E = 3, EOS_ID
    fin_scores = torch.tensor([[-2.0, -1.0, -1.0, -0.5], [-math.inf] * 4, [-1.0, -1.0, -1.0, -math.inf]])
    fin_tokens = torch.tensor([
        [[5, 6, E], [7, E, E], [8, 9, E], [10, 10, 10]],
        [[E, E, E]] * 3 + [[11, 11, 11]],
        [[4, E, E], [12, 13, E], [14, E, E], [E, E, E]],
    ])  # fmt: skip
    fin_count = torch.tensor([3, 0, 3])
    assert fin_scores.shape == (3, K + 1)
    assert _best_finished(fin_scores, fin_tokens, fin_count, EOS_ID) == [[7], [], [4]]


def test_a_candidate_of_probability_0_never_becomes_a_finished_hypothesis():
    """`_choose_beams` (both beam searches): where a sentence has fewer finite candidates than beams (the
    first step, only beam 0 live, of a vocabulary of 3 words with eos masked), the -inf candidates that
    fill its first K, eos ones among them, are no hypotheses: none finishes or takes a slot (they filled the
    slots of the real ones and ended the sentence early), and the finite ones go on, best first."""
    from async_nmt.model.search import _choose_beams

    K, V = 8, 6
    torch.manual_seed(0)
    lprobs = torch.full((K, V), -math.inf)
    lprobs[:, [1, 4, 5]] = torch.log_softmax(torch.randn(K, 3), dim=-1)
    scores = torch.full((1, K), -math.inf)
    scores[0, 0] = 0.0
    done, fin_count = torch.zeros(1, dtype=torch.bool), torch.zeros(1, dtype=torch.long)
    fin_scores = torch.full((1, K + 1), -math.inf)
    choice = _choose_beams(lprobs, scores, EOS_ID, torch.tensor(1.0), torch.zeros(1, dtype=torch.bool), done,
                           fin_count, fin_scores)  # fmt: skip
    assert fin_count.tolist() == [0] and not done.any() and fin_scores[:, :K].isneginf().all()
    assert choice.slot.eq(K).all()
    assert choice.live_scores[0, :3].tolist() == lprobs[0, [1, 4, 5]].sort(descending=True).values.tolist()
    assert choice.live_beams[0, :3].tolist() == [0, 0, 0]


def test_at_the_lenpen_limit_a_hypothesis_score_stays_finite_and_nonzero_for_any_length():
    """A score is log-probability / length**lenpen in fp32 (`_choose_beams`); `nmt translate` takes --lenpen
    within +-MAX_LENPEN. At 16, 256**16 was inf and a long hypothesis scored -0.0, the best of any."""
    from async_nmt.translate import MAX_LENPEN

    for lenpen in (MAX_LENPEN, -MAX_LENPEN):
        length = torch.arange(1, 1025).float().pow(lenpen)  # as the search computes it
        for log_prob in (-1e-6, -1e5):
            score = torch.tensor(log_prob) / length
            assert score.isfinite().all() and score.abs().ge(torch.finfo(torch.float32).tiny).all()
    assert (torch.tensor(-1.0) / torch.tensor(256.0).pow(16.0)).eq(0)  # what the limit keeps out
