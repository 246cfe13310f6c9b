"""Batches, the flat-parameter step, Adam and the schedule, the event log: the pieces every mode shares."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time

import numpy as np
import pytest
import torch

from async_nmt import errors
from async_nmt.config import BOS_ID, EOS_ID, PAD_ID, model_config
from async_nmt.data.batches import (
    BatchStream,
    budget_warning,
    collate,
    collate_rows,
    make_batches,
    round_up,
    worker_streams,
)
from async_nmt.data.binarize import TokenArray
from async_nmt.errors import UserError
from async_nmt.model.transformer import Linear, Transformer
from async_nmt.train import optim, processes
from async_nmt.train.checkpoint import rng_state, set_rng_state
from async_nmt.train.events import EventLog, complete_lines, log_failure, read_events, truncate_events
from async_nmt.train.optim import FlatAdam, inverse_sqrt_lr, norm_and_scale
from async_nmt.train.step import flatten_parameters, push_gradient, train_step


def fake_side(lengths, seed) -> TokenArray:
    rng = np.random.RandomState(seed)
    return TokenArray.from_rows([rng.randint(4, 50, size=n).astype(np.int32) for n in lengths])


class FakeSplit:
    def __init__(self, n=500, seed=0):
        rng = np.random.RandomState(seed)
        self.src = fake_side(rng.randint(1, 60, size=n), seed + 1)
        self.tgt = fake_side(rng.randint(1, 60, size=n), seed + 2)


@pytest.mark.parametrize("sort", ["target", "longest"])
def test_batches_respect_the_token_budget_and_cover_every_sentence_once(sort):
    split = FakeSplit()
    batches = make_batches(split.src.lengths, split.tgt.lengths, max_tokens=512, max_len=64, sort=sort)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(len(split.src)))
    for rows in batches:
        b = collate_rows(split.src, split.tgt, rows, max_len=64)
        assert b.src.numel() <= 512 and b.prev_tgt.numel() <= 512
        assert b.src.shape[1] % 8 == 0 and b.prev_tgt.shape[1] % 8 == 0


def greedy_batches(src_lengths, tgt_lengths, max_tokens: int, max_len: int, sort: str) -> list[np.ndarray]:
    """`make_batches` by its definition, a row at a time (as it was written until 2026-12-05): the first row,
    then rows while rows x the longest padded side fits; more than 8 rows cut to a multiple of 8."""
    src_len, tgt_len = np.minimum(src_lengths, max_len - 1) + 1, np.minimum(tgt_lengths, max_len - 1) + 1
    longest_side = round_up(np.maximum(src_len, tgt_len))
    order = (np.lexsort((src_len, tgt_len)) if sort == "target"
             else np.lexsort((tgt_len, round_up(src_len), longest_side)))  # fmt: skip
    padded = [int(n) for n in longest_side[order]]
    batches, start = [], 0
    while start < len(order):
        end, longest = start + 1, padded[start]
        while end < len(order) and max(longest, padded[end]) * (end + 1 - start) <= max_tokens:
            longest, end = max(longest, padded[end]), end + 1
        if end - start > 8 and end < len(order):
            end = start + (end - start) // 8 * 8
        batches.append(order[start:end])
        start = end
    return batches


@pytest.mark.parametrize("sort", ["target", "longest"])
def test_batches_are_those_of_their_definition(sort):
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 2000))
        src, tgt = rng.integers(0, 300, n), rng.integers(0, 300, n)
        max_tokens, max_len = int(rng.choice([8, 100, 1000, 4096, 25000])), int(rng.choice([16, 256, 1024]))
        made, defined = make_batches(src, tgt, max_tokens, max_len, sort), greedy_batches(src, tgt, max_tokens,
                                                                                           max_len, sort)  # fmt: skip
        assert len(made) == len(defined) and all(np.array_equal(a, b) for a, b in zip(made, defined, strict=True))


def test_pairs_over_the_token_budget_are_batches_of_their_own_and_are_warned_of():
    split = FakeSplit()  # sides of 1-59 tokens: with eos/bos and padded to 8, up to 64
    assert budget_warning(split.src.lengths, split.tgt.lengths, max_tokens=64, max_len=64) is None
    budget = 40
    padded = np.maximum(split.src.lengths, split.tgt.lengths) + 1
    over = int(((padded + 7) // 8 * 8 > budget).sum())
    batches = make_batches(split.src.lengths, split.tgt.lengths, max_tokens=budget, max_len=64)
    collated = [collate_rows(split.src, split.tgt, rows, 64) for rows in batches]
    assert sum(1 for b in collated if max(b.src.numel(), b.prev_tgt.numel()) > budget) == over
    warning = budget_warning(split.src.lengths, split.tgt.lengths, max_tokens=budget, max_len=64)
    assert warning is not None and f"{over} of {len(split.src)} training pairs" in warning and "up to 64" in warning


@pytest.mark.parametrize("sort", ["target", "longest"])
def test_batches_of_short_sentences_hold_as_many_rows_as_the_budget_has_for_8_tokens(sort):
    """Every row pads to at least 8 tokens, so a batch holds up to max_tokens / 8 rows: sentences that pad to
    8 fill it (a cap of max_tokens / 16 rows passed every other test, and trained on half-full batches)."""
    lengths = np.full(1000, 5)  # 6 tokens a side with eos/bos, padded to 8
    batches = make_batches(lengths, lengths, max_tokens=512, max_len=64, sort=sort)
    assert [len(rows) for rows in batches] == [512 // 8] * 15 + [1000 - 15 * 64]
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))


def test_sorting_by_the_longest_side_pads_less_when_the_sides_differ():
    split = FakeSplit(n=2000)  # source and target lengths drawn independently: the sort matters most here
    padding = {}
    for sort in ("target", "longest"):
        slots = real = 0
        for rows in make_batches(split.src.lengths, split.tgt.lengths, max_tokens=2048, max_len=64, sort=sort):
            b = collate_rows(split.src, split.tgt, rows, max_len=64)
            slots += b.src.numel() + b.prev_tgt.numel()
            real += int(b.src.ne(PAD_ID).sum()) + int(b.prev_tgt.ne(PAD_ID).sum())
        padding[sort] = 1 - real / slots
    assert padding["longest"] < padding["target"]
    with pytest.raises(ValueError, match="sort"):
        make_batches(split.src.lengths, split.tgt.lengths, max_tokens=2048, max_len=64, sort="source")


def test_collate_adds_bos_eos_and_pads():
    b = collate([np.array([5, 6, 7])], [np.array([8, 9])], max_len=64)
    assert b.src[0, :4].tolist() == [5, 6, 7, EOS_ID] and (b.src[0, 4:] == PAD_ID).all()
    assert b.prev_tgt[0, :3].tolist() == [BOS_ID, 8, 9]
    assert b.target[0, :3].tolist() == [8, 9, EOS_ID]
    assert b.tokens == 3 and b.sentences == 1


def test_collate_of_many_rows_equals_one_row_at_a_time():
    rng = np.random.default_rng(0)
    lengths = [(0, 3), (7, 1), (12, 20), (40, 9), (1, 0)]  # an empty side, and sides past max_len - 1 = 15
    src = [rng.integers(4, 100, n).astype(np.int16) for n, _ in lengths]
    tgt = [rng.integers(4, 100, n).astype(np.int16) for _, n in lengths]
    batch = collate(src, tgt, max_len=16)
    assert batch.sentences == 5 and batch.tokens == sum(min(n, 15) + 1 for _, n in lengths)
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        s, t = s[:15].tolist(), t[:15].tolist()
        pad = [PAD_ID] * 64
        assert batch.src[i].tolist() == (s + [EOS_ID] + pad)[: batch.src.size(1)]
        assert batch.prev_tgt[i].tolist() == ([BOS_ID] + t + pad)[: batch.prev_tgt.size(1)]
        assert batch.target[i].tolist() == (t + [EOS_ID] + pad)[: batch.target.size(1)]
    assert batch.src.size(1) % 8 == 0 and batch.src.size(1) >= 16


def test_collate_rows_of_a_split_equals_collate_of_its_sentences():
    split = FakeSplit(n=300)
    rows = np.random.RandomState(5).permutation(300)[:37]  # any rows, in any order
    for max_len in (64, 20):  # 20: sides past max_len - 1 are cut
        got = collate_rows(split.src, split.tgt, rows, max_len)
        want = collate([split.src[i] for i in rows], [split.tgt[i] for i in rows], max_len)
        for name in ("src", "prev_tgt", "target"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        assert (got.tokens, got.sentences) == (want.tokens, want.sentences)
    empty = TokenArray.from_rows([np.zeros(0, np.int32)] * 2)  # a side with no token at all
    b = collate_rows(empty, split.tgt, np.array([0, 1]), 64)
    assert b.src.tolist() == [[EOS_ID] + [PAD_ID] * 7] * 2


def test_stream_workers_are_disjoint_and_the_position_resumes():
    split = FakeSplit()
    streams = [BatchStream(split, 512, 64, seed=3, worker=w, workers=2) for w in range(2)]
    firsts = [{tuple(s.next().src[0].tolist()) for _ in range(len(s))} for s in streams]
    assert not firsts[0] & firsts[1]
    shared = worker_streams(split, 512, 64, seed=3, workers=2, sort="target")  # one list of batches, made once
    assert shared[0].batches is shared[1].batches
    assert [{tuple(s.next().src[0].tolist()) for _ in range(len(s))} for s in shared] == firsts
    a = BatchStream(split, 512, 64, seed=3)
    for _ in range(len(a) + 5):  # into the second epoch
        a.next()
    b = BatchStream(split, 512, 64, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(10):
        assert torch.equal(a.next().src, b.next().src)


def test_a_stream_needs_one_batch_per_worker_and_refuses_one_worker_more():
    """As many batches as workers is enough (each worker takes one an epoch); one worker more is refused
    with a UserError that names the counts."""
    split = FakeSplit(n=40)
    n = len(make_batches(split.src.lengths, split.tgt.lengths, 512, 64))
    streams = worker_streams(split, 512, 64, seed=1, workers=n, sort="target")
    assert [len(s) for s in streams] == [1] * n
    assert sorted(int(s._order[0]) for s in streams) == list(range(n))
    with pytest.raises(UserError, match=rf"make {n} batches of --max-tokens 512, too few for {n + 1} workers"):
        BatchStream(split, 512, 64, seed=1, worker=0, workers=n + 1)


def test_skipping_a_batch_counts_what_collating_it_would_and_moves_on_alike():
    """A sync rank follows the other ranks' streams by skipping their batches: the tokens and sentences must
    be those of the Batch, and the position the same, across an epoch's end (sides longer than max_len too)."""
    split = FakeSplit()
    taken, skipped = BatchStream(split, 512, 40, seed=3), BatchStream(split, 512, 40, seed=3)
    for _ in range(len(taken) + 7):
        batch = taken.next()
        assert skipped.skip() == (batch.tokens, batch.sentences)
        assert skipped.state_dict() == taken.state_dict()
    assert torch.equal(skipped.next().src, taken.next().src)


def test_flat_parameters_keep_outputs_and_collect_gradients():
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.0))
    src = torch.randint(4, 100, (3, 8))
    tgt = torch.randint(4, 100, (3, 6))
    before = model(src, tgt)
    flat = flatten_parameters(model)
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert torch.allclose(model(src, tgt), before)
    batch = collate([s.numpy()[:-1] for s in src], [t.numpy()[:-1] for t in tgt], max_len=64)
    train_step(model, batch, 0.1, None)
    assert flat.grad.abs().sum() > 0
    for p in model.parameters():  # every gradient lives inside the flat buffer
        assert p.grad.data_ptr() >= flat.grad.data_ptr()
        assert p.grad.data_ptr() < flat.grad.data_ptr() + flat.grad.numel() * 4


def test_bf16_copies_of_the_linear_weights_give_autocasts_numbers_bit_for_bit(monkeypatch):
    """Training in bf16 computes the Linear layers with weights copied once per batch (LowPrecisionCopies),
    not cast at every call: the losses and the flat gradient must be plain autocast's, over two batches
    summed into one gradient, an update of the parameters in between, and a validation step."""
    from async_nmt.train import step as step_module

    src, tgt = torch.randint(4, 100, (5, 9)), torch.randint(4, 100, (5, 7))
    batch = collate([s.numpy()[:-1] for s in src], [t.numpy()[:-1] for t in tgt], max_len=64)

    def run(copies: bool) -> tuple[list[torch.Tensor], torch.Tensor, torch.nn.Module]:
        monkeypatch.setattr(step_module, "LOW_PRECISION_COPIES", copies)
        torch.manual_seed(0)
        model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.1))
        flat = flatten_parameters(model)
        numbers, grads = [], []
        for _ in range(2):
            flat.grad.zero_()
            for _ in range(2):  # --local-accum 2
                stats = train_step(model, batch, 0.1, torch.bfloat16)
                numbers += [stats.loss, stats.nll]
            grads.append(flat.grad.clone())
            flat.data.add_(flat.grad, alpha=-0.5)  # an update: the next batch must see it
        numbers.append(step_module.eval_step(model, batch, torch.bfloat16).loss)
        return numbers, torch.cat(grads), model

    fast, fast_grads, model = run(True)
    plain, plain_grads, _ = run(False)
    assert model.__dict__.get("_low_precision_copies") is not None  # the copies were used
    assert all(m.low is None for m in model.modules() if isinstance(m, Linear))  # and only inside a step
    assert torch.equal(fast_grads, plain_grads) and fast_grads.abs().sum() > 0
    assert [float(x) for x in fast] == [float(x) for x in plain]


@pytest.mark.parametrize("switch", ["PACK_SOURCE", "PACK_TARGET"])
@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_packing_the_rows_changes_no_loss_or_gradient(monkeypatch, amp, switch):
    """The encoder computes on the real source tokens only (PACK_SOURCE), the decoder on the real target
    tokens (PACK_TARGET): with dropout off, two batches (sentences of 1 to 20 tokens; one with no source
    padding, which does not pack it) give the padded layers' losses and gradients, to rounding."""
    from async_nmt.train import step as step_module

    g = np.random.default_rng(0)
    src = [g.integers(4, 100, n) for n in g.integers(1, 21, 12)]
    tgt = [g.integers(4, 100, n) for n in g.integers(1, 21, 12)]
    uneven = collate(src, tgt, max_len=64)
    long = [i for i, s in enumerate(src) if len(s) >= 7]
    even = collate([src[i][:7] for i in long], [tgt[i] for i in long], max_len=64)
    assert uneven.src_tokens < uneven.src.numel() // 2 and even.src_tokens == even.src.numel()
    assert uneven.tokens < 0.7 * uneven.target.numel() and even.tokens < even.target.numel()

    def run(pack: bool) -> tuple[list[float], torch.Tensor]:
        monkeypatch.setattr(step_module, switch, pack)
        torch.manual_seed(0)
        model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.0))
        flat = flatten_parameters(model)
        losses = [float(train_step(model, batch, 0.1, amp).loss) for batch in (uneven, even)]
        return losses, flat.grad.clone()

    (packed, packed_grad), (plain, plain_grad) = run(True), run(False)
    assert packed == pytest.approx(plain, rel=1e-5 if amp is None else 1e-2)
    scale = plain_grad.abs().max()
    assert scale > 0 and (packed_grad - plain_grad).abs().max() <= (1e-5 if amp is None else 2e-2) * scale


def test_a_batch_pickled_before_its_source_count_trains_on_the_padded_encoder(monkeypatch):
    """A --simulate checkpoint holds its workers' batches pickled: one saved before Batch had `src_tokens`
    failed at the first push of its resume (AttributeError). Unpickled, it takes the default, not known, and
    the encoder computes on the padding too, as then."""
    import pickle

    from async_nmt.train import step as step_module

    src, tgt = torch.randint(4, 100, (3, 9)), torch.randint(4, 100, (3, 6))
    batch = collate([s.numpy()[: 2 + i] for i, s in enumerate(src)], [t.numpy() for t in tgt], max_len=64)
    old = pickle.loads(pickle.dumps(batch))
    del old.__dict__["src_tokens"]  # (as a Batch pickled before the field existed comes back)
    old = pickle.loads(pickle.dumps(old))
    assert old.src_tokens == -1 and old.to(torch.device("cpu")).src_tokens == -1

    def loss(b, pack: bool) -> float:
        monkeypatch.setattr(step_module, "PACK_SOURCE", pack)
        torch.manual_seed(0)
        model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.1))
        flatten_parameters(model)
        return float(train_step(model, b, 0.1, None).loss)

    assert loss(old, True) == loss(batch, False)  # the padded encoder, its dropout draws too


def test_a_training_step_never_reads_a_number_back_from_the_device(monkeypatch):
    """No .item() or .tolist() in train_step: on a GPU each waits for the whole step to finish."""
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.0))
    flat = flatten_parameters(model)
    src, tgt = torch.randint(4, 100, (3, 8)), torch.randint(4, 100, (3, 6))
    batch = collate([s.numpy()[:-1] for s in src], [t.numpy()[:-1] for t in tgt], max_len=64)

    def refuse(*args, **kwargs):
        raise AssertionError("a host sync in train_step")

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", refuse)
        patch.setattr(torch.Tensor, "tolist", refuse)
        stats = train_step(model, batch, 0.1, None)
    assert isinstance(stats.loss, torch.Tensor) and float(stats.loss) > float(stats.nll) > 0
    assert stats.tokens == batch.tokens and flat.grad.abs().sum() > 0


def test_a_push_gradient_is_the_sum_of_its_batches_gradients_with_the_old_gradient_gone():
    """--local-accum K: one push carries K batches' summed gradients, and nothing left from the last push."""
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.0))
    flat = flatten_parameters(model)
    batches = []
    for rows in (3, 5):
        src, tgt = torch.randint(4, 100, (rows, 8)), torch.randint(4, 100, (rows, 6))
        batches.append(collate([s.numpy()[:-1] for s in src], [t.numpy()[:-1] for t in tgt], max_len=64))
    alone = []
    for batch in batches:
        flat.grad.zero_()
        train_step(model, batch, 0.1, None)
        alone.append(flat.grad.clone())
    flat.grad.fill_(123.0)  # what the last push left
    stats = push_gradient(model, flat, iter(batches), torch.device("cpu"), 0.1, None)
    assert torch.allclose(flat.grad, alone[0] + alone[1], atol=1e-6)
    assert stats.tokens == sum(b.tokens for b in batches) and stats.sentences == 8


def test_a_training_step_after_validation_trains_with_dropout_again():
    """train_step switches the model to training mode only when it is not in it (train() walks every
    module); after eval_step it must: the same batch then gives different losses, dropout being on."""
    from async_nmt.train.step import eval_step

    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 100, d_model=32, ff_dim=64, heads=2, dropout=0.3))
    flatten_parameters(model)
    src, tgt = torch.randint(4, 100, (3, 8)), torch.randint(4, 100, (3, 6))
    batch = collate([s.numpy()[:-1] for s in src], [t.numpy()[:-1] for t in tgt], max_len=64)
    train_step(model, batch, 0.0, None)
    evaluated = [float(eval_step(model, batch, None).nll) for _ in range(2)]
    assert evaluated[0] == evaluated[1] and not any(m.training for m in model.modules())
    trained = [float(train_step(model, batch, 0.0, None).nll) for _ in range(2)]
    assert all(m.training for m in model.modules())
    assert trained[0] != trained[1] and evaluated[0] not in trained


@pytest.mark.parametrize("fused", [True, False])
def test_flat_adam_matches_torch_adam(monkeypatch, fused: bool):
    """With PyTorch's fused kernel, and with the tensor operations used where torch has none."""
    if not fused:
        monkeypatch.setattr(optim, "_FUSED", None)
    elif optim._FUSED is None:
        pytest.skip("this torch has no fused Adam kernel")
    torch.manual_seed(0)
    p = torch.randn(50)
    ref = torch.nn.Parameter(p.clone())
    opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.98), eps=1e-9)
    flat = p.clone()
    adam = FlatAdam(flat, (0.9, 0.98), 1e-9)
    for update in range(1, 7):
        g, scale = torch.randn(50), 1.0 + update % 2  # a gradient scaled by 2 (a sum over 2 pushes), or not
        ref.grad = g / scale
        opt.step()
        adam.step(g, 1e-2, update, grad_scale=scale)
    assert torch.allclose(flat, ref.detach(), atol=1e-6)


def test_rng_state_restores_every_generator():
    """A checkpoint's random state: Python's, numpy's and torch's generators draw again what they drew."""
    before = rng_state()
    try:
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        state = rng_state()
        drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        set_rng_state(state)
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == drawn
    finally:
        set_rng_state(before)  # (the generators as the tests before left them)


@pytest.mark.parametrize(("capability", "native"), [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_precision_takes_bf16_on_gpus_that_have_it(monkeypatch: pytest.MonkeyPatch, capability, native: bool):
    """torch.cuda.is_bf16_supported() counts emulation, slower than fp32 on a V100 or a T4 (and asks of the
    current GPU): --precision auto took bf16 there."""
    from async_nmt.devices import amp_dtype_for

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    device = torch.device("cuda:1")
    assert amp_dtype_for("auto", device) == (torch.bfloat16 if native else None) and asked == [device]
    assert amp_dtype_for("bf16", device) == torch.bfloat16  # (asked for: taken)


def test_the_cuda_generator_restored_is_the_runs_devices(monkeypatch: pytest.MonkeyPatch):
    """Saves held every visible GPU's generator, by index: a resume with fewer GPUs visible failed with a
    traceback (IndexError), and one on another GPU took that GPU's unused state. Now a save holds its
    device's, restored onto the device it resumes on; an older save gives the state of that device's index
    where it has one."""
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    before = rng_state()
    try:
        cuda1, cuda3 = torch.device("cuda:1"), torch.device("cuda:3")
        set_rng_state({**before, "cuda_device": "saved on cuda:0"}, cuda3)
        set_rng_state({**before, "cuda": ["gpu 0", "gpu 1"]}, cuda3)  # (older: two GPUs were visible)
        set_rng_state({**before, "cuda": ["gpu 0", "gpu 1"]}, cuda1)
        set_rng_state({**before, "cuda_device": "saved on a GPU"}, torch.device("cpu"))  # (a resume on the CPU)
        assert restored == [("saved on cuda:0", cuda3), ("gpu 1", cuda1)]
    finally:
        set_rng_state(before)


def test_inverse_sqrt_schedule():
    assert inverse_sqrt_lr(1, 1e-3, 100) == pytest.approx(1e-5)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)
    assert {inverse_sqrt_lr(u, 1e-3, 0) for u in (1, 100, 10_000)} == {1e-3}  # --warmup 0: constant, as documented


def test_norm_and_scale_normalizes_by_tokens_and_clips():
    g = torch.full((4,), 10.0)  # norm 20 summed over 10 tokens: 2 per token
    norm, scale = norm_and_scale(g, tokens=10, clip_norm=1.0)
    assert norm == pytest.approx(2.0)
    assert (g / scale).norm().item() == pytest.approx(1.0, rel=1e-4)
    assert norm_and_scale(g, tokens=10, clip_norm=0.0) == pytest.approx((2.0, 10.0))  # off: divide by tokens only


def test_a_config_json_is_read_with_the_types_of_its_fields(tmp_path):
    """A hand edit of a list ("adam_betas": ["0.9", 0.98]) reached a traceback later, as a string for a number
    did; an int in a float field, a null in an optional one and a list for a tuple are what older files hold."""
    from async_nmt.config import CorpusInfo, ModelConfig, RunConfig, TrainConfig, load_json, save_json

    path = tmp_path / "config.json"
    save_json(RunConfig(TrainConfig(), ModelConfig(), CorpusInfo()), path)
    base = json.loads(path.read_text())
    for train, said in (
        ({"adam_betas": ["0.9", 0.98]}, "adam_betas is ['0.9', 0.98], not of type tuple[float, float]"),
        ({"adam_betas": [0.9]}, "adam_betas is [0.9], not of type"),
        ({"worker_speeds": ["fast"]}, "worker_speeds is ['fast'], not of type list[float]"),
        ({"max_tokens": 512.0}, "max_tokens is 512.0, not of type int"),
    ):
        path.write_text(json.dumps({**base, "train": {**base["train"], **train}}))
        with pytest.raises(UserError, match=re.escape(said)):
            load_json(RunConfig, path)
    path.write_text(json.dumps({**base, "train": {**base["train"], "lr": 1, "dropout": None, "devices": []}}))
    assert load_json(RunConfig, path).train.lr == 1
    path.write_text("null")
    with pytest.raises(UserError, match="a JSON null, not an object"):
        load_json(RunConfig, path)


def test_event_log_truncates_to_a_checkpoint(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for i in range(5):
        log.write("train", updates=i)
    log.close()
    with open(path, "a") as f:
        f.write('{"kind": "tra')  # a torn line from a crash
    assert len(read_events(path)) == 5
    truncate_events(path, 3)
    assert [e["updates"] for e in read_events(path)] == [0, 1, 2]
    assert EventLog(path).lines == 3


def test_event_log_keeps_six_decimals_or_six_significant_digits_where_they_reach_further(tmp_path):
    """A warmup's learning rate of 2.8e-06 was logged (and shown) as 3e-06, and one of 4e-07 as 0."""
    log = EventLog(tmp_path / "events.jsonl")
    log.write("train", updates=1, lr=2.8123456e-06, small=4.2e-07, loss=3.30669312, tok_per_s=12284.1919123,
              hist=[0.0123456789])  # fmt: skip
    log.close()
    (event,) = read_events(tmp_path / "events.jsonl")
    assert event["lr"] == 2.81235e-06 and event["small"] == 4.2e-07
    assert event["loss"] == 3.306693 and event["tok_per_s"] == 12284.191912 and event["hist"] == [0.0123457]


def test_a_log_is_cut_for_a_resume_only_when_the_lines_it_keeps_are_whole(tmp_path):
    """A corrupt line among those a resume keeps stopped the resume after the log was cut: its end event, and
    what followed the checkpoint, were lost though nothing resumed."""
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"kind": "train", "updates": i}) + "\n" for i in range(5)]
    lines[1] = '{"kind": "tra\n'
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(
        UserError, match=r"events\.jsonl:2: not a JSON event \(Unterminated string starting at: column "
    ):
        truncate_events(path, 3)
    assert path.read_text(encoding="utf-8") == "".join(lines)  # untouched
    lines[1] = json.dumps({"kind": "train", "updates": 1}) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    assert [e["updates"] for e in truncate_events(path, 3)[0]] == [0, 1, 2] == [e["updates"] for e in read_events(path)]


def test_read_events_names_a_corrupt_line_and_skips_only_a_torn_last_one(tmp_path):
    path = tmp_path / "events.jsonl"
    good = [json.dumps({"kind": "train", "updates": i}) + "\n" for i in range(3)]
    path.write_text("".join(good) + '{"kind": "tra', encoding="utf-8")  # torn last line: skipped
    assert [e["updates"] for e in read_events(path)] == [0, 1, 2]
    path.write_text("".join(good) + '{"kind": "train", "updates": 3}', encoding="utf-8")  # no newline but whole
    assert len(read_events(path)) == 4
    path.write_text(good[0] + "\n" + good[1] + "  \r\n", encoding="utf-8")  # blank lines: skipped
    assert [e["updates"] for e in read_events(path)] == [0, 1]

    corrupt = {
        "middle": good[0] + "garbage\n" + good[1],
        "complete last": "".join(good) + '{"kind": "tra\n',
        "not an object": good[0] + "[1, 2]\n" + good[1],
        "not UTF-8": good[0] + '{"kind": "\udcff"}\n' + good[1],
        "no kind": good[0] + '{"updates": 1}\n' + good[1],
        "a valid event without its BLEU": good[0] + '{"kind": "valid", "updates": 1, "tokens": 5, "train_s": 1}\n',
    }
    for case, text in corrupt.items():
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        line = 4 if case == "complete last" else 2
        with pytest.raises(UserError, match=rf"^{re.escape(str(path))}:{line}: not a JSON event \(.+\)$") as err:
            read_events(path)
        assert "\n" not in str(err.value), case


@pytest.mark.parametrize(
    "train, said",
    [({"compile": "false"}, "compile is 'false', not of type bool"),
     ({"simulate": 1}, "simulate is 1, not of type bool"),
     ({"max_tokens": True}, "max_tokens is True, not of type int"),
     ({"lr": False}, "lr is False, not of type float"),
     ({"batch_sort": 1}, "batch_sort is 1, not of type str")],
)  # fmt: skip
def test_a_config_json_flag_count_or_name_of_another_type_is_refused(tmp_path, train, said):
    """A hand-edited "compile": "false" is a string, which a resume took as true; true is no --max-tokens.
    A config.json saved and read back is the config it was (its adam_betas a tuple again)."""
    from async_nmt.config import CorpusInfo, ModelConfig, RunConfig, TrainConfig, load_json, save_json

    path = tmp_path / "config.json"
    config = RunConfig(TrainConfig(preset="micro", workers=2, devices=["cpu"], dropout=0.0), ModelConfig(),
                       CorpusInfo(src="de", tgt="en"))  # fmt: skip
    save_json(config, path)
    assert load_json(RunConfig, path) == config and load_json(RunConfig, path).train.adam_betas == (0.9, 0.98)
    base = json.loads(path.read_text())
    path.write_text(json.dumps({**base, "train": {**base["train"], **train}}))
    with pytest.raises(UserError, match=re.escape(said)):
        load_json(RunConfig, path)


def test_a_failure_logged_for_a_run_ends_its_log_once_and_leaves_it_readable(tmp_path):
    """log_failure: the end event, `failed`, with the last event's counts and the best BLEU; over a torn last
    line it cut that line (appended to it, the line was whole and corrupt: the log read no more); nothing
    for a log that has ended."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write("start", updates=0, train_s=0.0, tokens=0)
    log.write("valid", updates=2, train_s=1.0, tokens=10, bleu=3.0, chrf=1.0, valid_loss=2.0)
    log.write("train", updates=3, train_s=1.5, tokens=15)
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"kind": "train", "upd')  # torn by a kill
    failed = "worker 1 (cpu) was killed by signal 9"
    log_failure(path, failed)
    events = read_events(path)
    assert [e["kind"] for e in events] == ["start", "valid", "train", "end"]
    assert events[-1] == {"kind": "end", "updates": 3, "train_s": 1.5, "tokens": 15, "best_bleu": 3.0,
                          "interrupted": False, "converged": False, "failed": failed}  # fmt: skip
    log_failure(path, "again")
    assert read_events(path) == events


def test_an_event_log_counts_and_flushes_each_line_it_writes(tmp_path):
    """A checkpoint records `EventLog.lines` as the log position a resume cuts back to: the lines already in
    the file and every one written since, each on disk as it is written (`nmt report` reads a live run),
    its numbers rounded to 6 decimals only (a learning rate of 1.2e-4 is not 0)."""
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"kind": "start", "updates": 0}) + "\n", encoding="utf-8")
    log = EventLog(path)
    log.write("train", updates=1, lr=0.0001234567, worker_s=[0.1234567891])
    log.write("train", updates=2)
    assert log.lines == 3 == len(read_events(path))  # (not closed yet)
    assert read_events(path)[1]["lr"] == pytest.approx(1.23e-4, abs=1e-6) and read_events(path)[1]["lr"] != 0
    log.close()


def test_a_resume_cuts_a_torn_last_event_off_before_it_appends(tmp_path):
    """A kill in the middle of the event of a save leaves it torn, while last.pt counts it: the resume keeps
    the whole lines only (`complete_lines` does not count the torn one), so that the events it appends start
    on a line of their own and the log reads back whole."""
    path = tmp_path / "events.jsonl"
    whole = "".join(json.dumps({"kind": "train", "updates": i}) + "\n" for i in range(3))
    path.write_text(whole + '{"kind": "checkpoint", "upd', encoding="utf-8")
    assert complete_lines(path) == 3
    assert [e["updates"] for e in truncate_events(path, 4)[0]] == [0, 1, 2]  # last.pt said 4 lines
    assert path.read_text(encoding="utf-8") == whole
    log = EventLog(path)
    assert log.lines == 3
    log.write("checkpoint", updates=3)
    log.close()
    assert [e["updates"] for e in read_events(path)] == [0, 1, 2, 3]


def test_a_blank_line_in_the_log_is_not_an_event_a_resume_counts(tmp_path):
    """`read_events` skips blank lines (an editor may leave them), but a resume cut the log by its lines: one
    blank line before the save's lost its checkpoint event, without a word. Lines are counted as events."""
    path = tmp_path / "events.jsonl"
    events = [json.dumps({"kind": "train", "updates": i}) + "\n" for i in range(5)]
    path.write_text("".join(events[:2]) + "\n  \n" + "".join(events[2:]), encoding="utf-8")
    assert complete_lines(path) == 5 == EventLog(path).lines
    assert [e["updates"] for e in truncate_events(path, 3)[0]] == [0, 1, 2]  # last.pt said 3 events
    assert [e["updates"] for e in read_events(path)] == [0, 1, 2] and complete_lines(path) == 3


def test_staleness_stats_of_a_histogram_of_pushes():
    """Staleness 0 three times and 2 twice: mean 4/5, max 2, the histogram up to its maximum, which keeps
    every push (the report weighs each event's mean by the pushes its histogram counts)."""
    from async_nmt.train.events import staleness_stats

    assert staleness_stats([3, 0, 2, 0, 0]) == {"staleness_mean": 0.8, "staleness_max": 2, "staleness_hist": [3, 0, 2]}
    assert staleness_stats([0, 0]) == {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": []}


def test_the_training_clock_goes_on_from_a_resumes_offset_and_stops_while_paused(monkeypatch):
    """A resumed run's clock starts at the seconds its checkpoint had; validation and saves (`paused`, which
    nests) do not count: --max-time and every event's train_s are training time."""
    from types import SimpleNamespace

    from async_nmt.train import events

    now = [10.0]
    monkeypatch.setattr(events, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    clock = events.TrainingClock(100.0)
    now[0] = 15.0
    assert clock.seconds == 105.0
    with clock.paused():
        now[0] = 20.0
        with clock.paused():
            now[0] = 25.0
        assert clock.seconds == 105.0
    now[0] = 32.0
    assert clock.seconds == 112.0


def test_the_end_of_run_table_says_how_the_run_went(tmp_path, monkeypatch, capsys):
    """The summary a run ends with: its mode and workers (accum for async-accum only), why it stopped, its
    tokens per second of training time, the staleness of every push of the async modes (weighed by pushes,
    the largest of any event), the best checkpoint's update and how to translate with it."""
    from types import SimpleNamespace

    from async_nmt.config import TrainConfig
    from async_nmt.train.summary import print_summary

    monkeypatch.setenv("COLUMNS", "200")
    run = tmp_path / "my run"
    run.mkdir()
    log = EventLog(run / "events.jsonl")
    log.write("train", updates=5, staleness_mean=1.0, staleness_max=4, staleness_hist=[1, 8, 0, 0, 1])
    log.write("train", updates=10, staleness_mean=3.0, staleness_max=3, staleness_hist=[0, 0, 0, 30])
    log.close()
    summary = {"interrupted": False, "stopped_by": "--max-updates 10", "updates": 10, "epoch": 0.5,
               "tokens": 120_000, "train_s": 40.0, "wall_s": 60.0}  # fmt: skip
    shown = {}
    for mode in ("async-accum", "async", "sync", "diloco"):
        trainer = SimpleNamespace(
            run_dir=run,
            cfg=TrainConfig(mode=mode, workers=3, accum=2, **({"sync_every": 5} if mode == "diloco" else {})),
            updates=10,
            last_valid={"valid_loss": 1.5, "bleu": 20.0},
            best={"bleu": 25.0, "updates": 5},
            best_lost=False,
        )
        print_summary({**summary, "interrupted": mode == "sync"}, trainer)
        shown[mode] = " ".join(capsys.readouterr().err.replace("│", " ").split())  # the rows, cells apart
    assert "mode async-accum (workers 3, accum 2)" in shown["async-accum"]
    assert "mode async (workers 3)" in shown["async"] and "accum" not in shown["async"]
    assert "mode diloco (workers 3, H 5, outer lr 0.7, momentum 0.9)" in shown["diloco"]  # (H was not shown)
    assert "stopped by --max-updates 10" in shown["async"]
    assert "stopped by an interrupt (Ctrl-C or SIGTERM)" in shown["sync"]
    assert "tokens/s 3,000" in shown["async"]  # 120,000 tokens in 40 s of training
    for mode in ("async-accum", "async"):  # (10 pushes at a mean of 1 and 30 at 3)
        assert "staleness mean 2.50, max 4 (40 pushes)" in shown[mode]
    assert "staleness" not in shown["sync"] and "staleness" not in shown["diloco"]
    assert "steps since sync mean 2.50, max 4 (40 worker steps)" in shown["diloco"]  # (it had no such row)
    assert "best valid BLEU 25.00 (update 5: best.pt)" in shown["async"]
    assert f"nmt translate '{run}' < SOURCE > OUTPUT" in shown["async"]
    print_summary(summary, SimpleNamespace(**{**vars(trainer), "best_lost": True}))  # warned at its resume
    lost = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "best valid BLEU 25.00 (update 5: lost)" in lost and f"'{run}' --checkpoint last < SOURCE" in lost


@pytest.mark.parametrize("chunk_rows", [1, 3, 1000])
def test_batch_loss_is_label_smoothed_cross_entropy_over_real_tokens(monkeypatch, chunk_rows):
    import torch.nn.functional as F

    from async_nmt.train import step
    from async_nmt.train.step import batch_loss

    monkeypatch.setattr(step, "CPU_LOSS_CHUNK_ELEMENTS", 20 * chunk_rows)

    batch = collate([np.array([5, 6, 7]), np.array([5])], [np.array([8, 9]), np.array([4, 5, 6, 7])], max_len=64)
    logits = torch.randn(2, batch.target.shape[1], 20)

    class Fixed(torch.nn.Module):  # "hidden states" are the logits; the projection is the identity
        cfg = model_config("tiny", 20)

        def hidden(self, src, prev_tgt, src_rows=None, tgt_rows=None):  # (packed: the real rows alone)
            return logits if tgt_rows is None else logits.flatten(0, 1).index_select(0, tgt_rows)

        def project(self, states):
            return states

    loss, nll = batch_loss(Fixed(), batch, 0.1, None)
    real = batch.target != PAD_ID
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits[real], batch.target[real], label_smoothing=0.1, reduction="sum").item(),
        rel=1e-5,
    )
    assert nll.item() == pytest.approx(F.cross_entropy(logits[real], batch.target[real], reduction="sum").item())


def test_batch_loss_scores_bf16_logits_in_fp32_with_any_label_smoothing():
    """Under autocast the output layer gives bf16 logits; the log-softmax must take them in fp32 (in bf16 the
    loss is off by about 1e-3 relative), and a small label smoothing (0.01) counts as any other does:
    the loss and NLL are F.cross_entropy's of the bf16 logits cast to fp32."""
    import torch.nn.functional as F

    from async_nmt.train.step import batch_loss

    torch.manual_seed(0)
    batch = collate([np.array([5, 6, 7]), np.array([5])], [np.arange(4, 20), np.array([4, 5, 6])], max_len=64)
    logits = (torch.randn(2, batch.target.shape[1], 500) * 4).to(torch.bfloat16)

    class Fixed(torch.nn.Module):  # the "hidden states" are the bf16 logits; the projection passes them on
        cfg = model_config("tiny", 500)

        def hidden(self, src, prev_tgt, src_rows=None, tgt_rows=None):  # (packed: the real rows alone)
            return logits if tgt_rows is None else logits.flatten(0, 1).index_select(0, tgt_rows)

        def project(self, states):
            return states

    loss, nll = batch_loss(Fixed(), batch, 0.01, torch.bfloat16)
    real = batch.target != PAD_ID
    want = F.cross_entropy(logits[real].float(), batch.target[real], label_smoothing=0.01, reduction="sum")
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert nll.item() == pytest.approx(F.cross_entropy(logits[real].float(), batch.target[real],
                                                       reduction="sum").item(), rel=1e-5)  # fmt: skip


def test_validation_scores_an_identity_system_at_100_and_its_loss_is_the_nll_per_token(synthetic_bin, monkeypatch):
    import torch.nn.functional as F

    from async_nmt.data.binarize import load_manifest
    from async_nmt.data.vocab import load_vocab
    from async_nmt.train import validate

    torch.manual_seed(0)
    model = Transformer(model_config("micro", load_manifest(synthetic_bin)["vocab_size"]))
    validator = validate.Validator(synthetic_bin, 1024, model.cfg.max_positions, max_sentences=20)
    sp = load_vocab(synthetic_bin / "spm.model")
    assert len(validator.references) == 20
    monkeypatch.setattr(validate, "translate_lines", lambda model, sp, lines, **kw: list(validator.references))
    result = validator(model, sp, None)
    assert result["bleu"] == pytest.approx(100) and result["chrf"] == pytest.approx(100)
    nll = tokens = 0.0
    model.eval()
    with torch.no_grad():
        for batch in validator.batches:  # the definition: summed NLL of the real target tokens / their count
            logits = model.project(model.hidden(batch.src, batch.prev_tgt))
            nll += F.cross_entropy(logits.flatten(0, 1), batch.target.view(-1), ignore_index=PAD_ID, reduction="sum")
            tokens += int(batch.target.ne(PAD_ID).sum())
    assert result["valid_loss"] == pytest.approx(float(nll) / tokens, rel=1e-5)
    monkeypatch.setattr(validate, "translate_lines", lambda model, sp, lines, **kw: validator.references[::-1])
    assert validator(model, sp, None)["bleu"] < 50  # the same sentences, against the wrong references


@pytest.mark.parametrize("beam", [1, 4])
def test_validation_scores_the_translations_of_its_beam(synthetic_bin, monkeypatch, beam):
    """--valid-beam N: the BLEU is of beam search's translations with N beams (greedy at 1), as `nmt translate
    --beam N` writes them; those of the other search differ for this model, so the test tells them apart."""
    from async_nmt.data.binarize import load_manifest
    from async_nmt.data.vocab import load_vocab
    from async_nmt.train import validate
    from async_nmt.translate import translate_lines

    torch.manual_seed(0)
    model = Transformer(model_config("micro", load_manifest(synthetic_bin)["vocab_size"])).eval()
    with torch.no_grad():  # (weights drawn wide: the untrained model's outputs are then not one token repeated,
        for weight in model.parameters():  # which both searches write alike)
            if weight.dim() > 1:
                weight.normal_(0, 0.5)
    sp = load_vocab(synthetic_bin / "spm.model")
    validator = validate.Validator(synthetic_bin, 1024, model.cfg.max_positions, max_sentences=10, beam=beam)
    scored: list[list[str]] = []
    corpus_scores = validate.corpus_scores
    monkeypatch.setattr(validate, "corpus_scores", lambda hyps, *a: scored.append(hyps) or corpus_scores(hyps, *a))
    validator(model, sp, None)
    searched = {b: translate_lines(model, sp, validator.sources, beam=b, max_tokens=1024) for b in (1, 4)}
    assert searched[1] != searched[4]
    assert scored == [searched[beam]]


def test_validation_reports_its_progress_sentence_by_sentence(synthetic_bin):
    """The trainer draws a bar from it while the valid set is translated (minutes of silence before)."""
    from async_nmt.data.binarize import load_manifest
    from async_nmt.data.vocab import load_vocab
    from async_nmt.train import validate

    torch.manual_seed(0)
    model = Transformer(model_config("micro", load_manifest(synthetic_bin)["vocab_size"]))
    validator = validate.Validator(synthetic_bin, 64, model.cfg.max_positions, max_sentences=20)
    done: list[int] = []
    validator(model, load_vocab(synthetic_bin / "spm.model"), None, progress=done.append)
    assert sum(done) == 20 and len(done) > 1  # batch by batch


def test_validation_with_max_sentences_0_or_past_the_split_holds_every_valid_sentence(synthetic_bin, synthetic_raw):
    """--valid-max-sentences 0 (the default) validates on the whole valid split, as does a number above its size;
    a smaller number takes the first N lines, loss batches and BLEU references alike."""
    from async_nmt.train import validate

    lines = (synthetic_raw / "valid.tgt").read_text(encoding="utf-8").splitlines()
    for max_sentences in (0, len(lines) + 50, 7):
        validator = validate.Validator(synthetic_bin, 1024, 256, max_sentences=max_sentences)
        n = max_sentences if 0 < max_sentences < len(lines) else len(lines)
        assert validator.references == lines[:n], max_sentences
        assert len(validator.sources) == n and sum(len(b.src) for b in validator.batches) == n, max_sentences


def test_validation_of_a_case_folded_vocabulary_scores_against_case_folded_references(
    synthetic_raw, tmp_path, monkeypatch
):
    """A corpus preprocessed with --normalization nmt_nfkc_cf: the model writes case-folded text, which was
    scored against the references as written (upper case here): BLEU 0 for a perfect model."""
    from async_nmt.data.binarize import preprocess
    from async_nmt.train import validate

    bin_dir = tmp_path / "bin"
    preprocess(synthetic_raw, bin_dir, vocab_size=200, normalization="nmt_nfkc_cf")
    written = (synthetic_raw / "valid.tgt").read_text(encoding="utf-8").splitlines()
    assert any(line != line.casefold() for line in written)  # (the toy targets are upper case)
    validator = validate.Validator(bin_dir, 1024, 256)
    perfect = [line.casefold() for line in written]  # what a perfect model of this vocabulary writes
    monkeypatch.setattr(validate, "translate_lines", lambda model, sp, lines, **kw: list(perfect))
    model = Transformer(model_config("micro", 200))
    assert validator(model, None, None)["bleu"] == pytest.approx(100)


def test_a_long_valid_line_is_warned_of_once_a_run_naming_the_valid_file(synthetic_raw, tmp_path, capsys):
    """Every validation said `warning: line 1: longer than the model's 255 tokens, truncated`, which read as the
    training data's: the first names the valid file, and the next validations say it no more."""
    import shutil

    from async_nmt.data.binarize import load_manifest, preprocess
    from async_nmt.data.vocab import load_vocab
    from async_nmt.train import validate

    raw = shutil.copytree(synthetic_raw, tmp_path / "raw")
    lines = (raw / "valid.src").read_text(encoding="utf-8").splitlines()
    lines[1] = " ".join([lines[1]] * 200)  # hundreds of pieces
    (raw / "valid.src").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    preprocess(raw, bin_dir, vocab_size=200, max_len=1024)
    validator = validate.Validator(bin_dir, 4096, 256, max_sentences=3)
    model = Transformer(model_config("micro", load_manifest(bin_dir)["vocab_size"]))
    capsys.readouterr()
    for said in (f"warning: {bin_dir}/valid.src: line 2: longer than the model's 255 tokens, truncated\n", ""):
        validator(model, load_vocab(bin_dir / "spm.model"), None)
        assert capsys.readouterr().err == said


def test_valid_text_with_more_lines_than_its_ids_is_refused_too(synthetic_bin, tmp_path):
    """A valid text side longer than the valid split's ids (a line added by hand) is refused as a shorter one
    is: its BLEU would be measured on other sentences than its loss."""
    import shutil

    from async_nmt.data.binarize import load_manifest
    from async_nmt.train import validate

    bin_dir = shutil.copytree(synthetic_bin, tmp_path / "bin")
    text = bin_dir / f"valid.{load_manifest(bin_dir)['src']}"
    count = len(text.read_text(encoding="utf-8").splitlines())
    with text.open("a", encoding="utf-8") as f:
        f.write("ba de\n")
    with pytest.raises(
        UserError, match=f"the valid text's src side has {count + 1} lines but the valid split's ids {count};"
    ):
        validate.Validator(bin_dir, 1024, 256)


def test_validation_bleu_and_chrf_are_sacrebleus_and_its_search_greedy_at_the_precision_given(
    synthetic_bin, monkeypatch
):
    """The valid BLEU and chrF are sacreBLEU's corpus BLEU and chrF of the greedy translations (beam 1) against
    the first N references, each under its own key; the loss batches and the search both run at the autocast
    dtype given (the run's --precision)."""
    import sacrebleu

    from async_nmt import translate
    from async_nmt.data.binarize import load_manifest
    from async_nmt.data.vocab import load_vocab
    from async_nmt.train import validate

    torch.manual_seed(0)
    model = Transformer(model_config("micro", load_manifest(synthetic_bin)["vocab_size"]))
    validator = validate.Validator(synthetic_bin, 1024, model.cfg.max_positions, max_sentences=20)
    refs = list(validator.references)
    hyps = [" ".join(ref.split()[:-1]) for ref in refs]  # each reference without its last word
    real_eval, real_generate, seen = validate.eval_step, translate.generate, []
    monkeypatch.setattr(
        validate, "eval_step", lambda m, batch, amp: seen.append(("loss", amp)) or real_eval(m, batch, amp)
    )

    def generate(model, src, beam, **kwargs):
        seen.append(("search", beam, kwargs["amp_dtype"]))
        return real_generate(model, src, beam, **kwargs)

    monkeypatch.setattr(translate, "generate", generate)
    validator(model, load_vocab(synthetic_bin / "spm.model"), torch.bfloat16)
    assert {("loss", torch.bfloat16), ("search", 1, torch.bfloat16)} == set(seen)
    monkeypatch.setattr(validate, "translate_lines", lambda model, sp, lines, **kw: list(hyps))
    result = validator(model, load_vocab(synthetic_bin / "spm.model"), None)
    bleu, chrf = sacrebleu.corpus_bleu(hyps, [refs]).score, sacrebleu.corpus_chrf(hyps, [refs]).score
    assert abs(bleu - chrf) > 1  # (they differ, so a swap shows)
    assert result["bleu"] == pytest.approx(bleu) and result["chrf"] == pytest.approx(chrf)


def test_workers_split_each_epoch_between_them_and_every_epoch_reshuffles():
    split = FakeSplit()
    streams = [BatchStream(split, 512, 64, seed=3, worker=w, workers=2) for w in range(2)]
    epochs = [[list(s._order) for s in streams]]
    for s in streams:
        for _ in range(len(s) + 1):  # the first batch of epoch 2 makes the stream order it
            s.next()
    epochs.append([list(s._order) for s in streams])
    total = len(streams[0].batches)
    for orders in epochs:  # worker w takes w, w+2, ... of one permutation: disjoint, and all of it together
        assert not set(orders[0]) & set(orders[1])
        assert sorted(orders[0] + orders[1]) == list(range(total))
    assert epochs[0][0] != epochs[1][0]  # the order of epoch 2 is another


def test_an_emulated_slow_device_waits_after_each_step_but_the_first(monkeypatch):
    from async_nmt.train import processes

    clock = {"now": 0.0}
    slept: list[float] = []
    monkeypatch.setattr(processes.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(processes.time, "sleep", slept.append)
    slow, full = processes.EmulatedSpeed(0.25, torch.device("cpu")), processes.EmulatedSpeed(1.0, torch.device("cpu"))
    for step_s in (5.0, 0.5, 0.25):  # the first step warms the device up and is not slowed
        for speed in (slow, full):
            speed.begin()
            clock["now"] += step_s
            speed.end()
    assert slept == [pytest.approx(1.5), pytest.approx(0.75)]  # (1 / 0.25 - 1) x the step's time


def test_a_failing_worker_lets_go_of_what_its_frames_held(monkeypatch):
    """A raising worker must drop its model and its handles on shared CUDA memory before it exits."""
    import queue
    import weakref

    from async_nmt.train import processes

    monkeypatch.setattr(processes, "die_with_parent", lambda: None)
    monkeypatch.setattr(processes.signal, "signal", lambda *args: None)

    class Held:
        pass

    refs = []

    def work():
        held = Held()
        refs.append(weakref.ref(held))
        raise RuntimeError("injected")

    errors = queue.SimpleQueue()
    with pytest.raises(SystemExit) as exited:
        with processes.worker_process(1, "cpu", errors):
            work()
    assert exited.value.code == 1 and errors.get()[3] == "RuntimeError: injected"
    assert exited.value.__context__ is not None  # the exception lives on ...
    assert refs[0]() is None  # ... without the locals of the frames it passed through


@pytest.mark.parametrize("mode, workers, given, accum", [("async-accum", 4, None, 4), ("async-accum", 4, 2, 2),
                                                         ("async", 4, None, 1), ("sync", 3, None, 1)])  # fmt: skip
def test_accum_defaults_to_the_workers_in_async_accum(mode, workers, given, accum, tmp_path):
    """`--mode async-accum --workers 4` sums 4 pushes an update, as the paper's N: a default of 1 made it
    plain async without a word."""
    from async_nmt.train.options import build_config

    cfg = build_config(tmp_path, devices="cpu", lr=None, warmup=None, compile_model=False, preset="micro",
                       mode=mode, workers=workers, accum=given)  # fmt: skip
    assert cfg.accum == accum


def test_accum_defaults_to_the_worker_ranks_under_torchrun(monkeypatch, tmp_path):
    """Under torchrun the workers are ranks 1..WORLD_SIZE-1, and --workers may be left at 1."""
    from async_nmt.train.options import build_config

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    options = dict(devices="cpu", lr=None, warmup=None, compile_model=False, preset="micro", mode="async-accum")
    assert build_config(tmp_path, **options, accum=None).accum == 3
    assert build_config(tmp_path, **options, accum=1).accum == 1  # a value given is kept


TRAIN_OPTIONS = dict(devices="cpu", lr=None, warmup=None, compile_model=False, preset="micro")


@pytest.mark.parametrize(
    "option, value, message",
    [("max_tokens", 0, "--max-tokens must be positive"), ("lr", 0.0, "--lr must be positive"),
     ("seed", -(2**32), "--seed must be an integer between -2^32 and 2^32"),
     ("warmup", -1, "--warmup must not be negative"), ("keep_last", -1, "--keep-last must not be negative"),
     ("dropout", 1.0, "--dropout must be in [0, 1)"), ("label_smoothing", 1.0, "--label-smoothing must be in [0, 1)"),
     ("embed_dropout", 1.0, "--embed-dropout must be in [0, 1)"),
     ("attention_dropout", -0.1, "--attention-dropout must be in [0, 1)"),
     ("log_every", 0, "--log-every must be at least 1"), ("workers", 0, "--workers must be at least 1 (got 0)"),
     ("local_accum", 0, "--local-accum must be at least 1 (got 0)")],
)  # fmt: skip
def test_train_options_just_outside_their_documented_range_are_refused_by_name(tmp_path, option, value, message):
    """The ranges `nmt train --help` states hold at their edges: a --max-tokens or --lr of 0, a seed of
    -2^32, a negative --warmup or --keep-last, a --dropout or --label-smoothing of 1, a --log-every of 0
    are refused in one line naming the option, before a run folder is touched."""
    from async_nmt.train.options import build_config

    with pytest.raises(UserError, match=re.escape(message)):
        build_config(tmp_path, **{**TRAIN_OPTIONS, option: value})


def test_async_accum_of_no_workers_names_workers(tmp_path):
    """--accum left out is --workers in async-accum: --workers 0 named the --accum never given."""
    from async_nmt.train.options import build_config

    with pytest.raises(UserError, match=re.escape("--workers must be at least 1 (got 0)")):
        build_config(tmp_path, **TRAIN_OPTIONS, mode="async-accum", workers=0, accum=None)  # (as the CLI leaves it)


def test_train_options_at_the_edge_of_their_range_are_taken_as_given(tmp_path):
    """--warmup 0 is a constant --lr (--help: "0 = neither"), not the preset's warmup; the inclusive edges
    of the ranges (a seed of -2^32 + 1, speeds of 0.001 and 1000, a dropout and label smoothing of 0) run."""
    from async_nmt.train.options import build_config

    cfg = build_config(tmp_path, **{**TRAIN_OPTIONS, "warmup": 0}, seed=-(2**32) + 1, dropout=0.0,
                       label_smoothing=0.0, mode="async", workers=2, worker_speeds="0.001,1000")  # fmt: skip
    assert (cfg.warmup, cfg.seed, cfg.dropout, cfg.label_smoothing) == (0, 1 - 2**32, 0.0, 0.0)
    assert cfg.worker_speeds == [0.001, 1000.0]


@pytest.mark.parametrize(
    "preset, lr, warmup, dropout",
    [("micro", 2e-3, 50, 0.1), ("tiny", 7e-4, 250, 0.1), ("small", 7e-4, 1000, 0.1), ("base", 7e-4, 4000, 0.1),
     ("big", 5e-4, 4000, 0.3)],
)  # fmt: skip
def test_a_presets_defaults_are_those_the_help_states_and_given_values_win(tmp_path, preset, lr, warmup, dropout):
    """--lr, --warmup and --dropout left out take the values per preset that `nmt train --help` lists; a
    value given (a --dropout override of the model's) is kept."""
    from async_nmt.config import model_config
    from async_nmt.train.options import build_config

    cfg = build_config(tmp_path, **{**TRAIN_OPTIONS, "preset": preset})
    assert (cfg.lr, cfg.warmup, cfg.dropout) == (lr, warmup, None)
    assert model_config(preset, 100).dropout == dropout
    assert build_config(tmp_path, **{**TRAIN_OPTIONS, "preset": preset, "lr": 1e-4, "warmup": 7}).lr == 1e-4
    assert model_config(preset, 100, dropout=0.0).dropout == 0.0 and model_config(preset, 100).vocab_size == 100


def test_a_resume_checks_the_options_given_against_the_runs_own(tmp_path, monkeypatch):
    """`nmt-train BIN RUN --resume --worker-speeds 1,0.5` on a run of 2 async workers: the speeds are checked
    against the run's --workers (its config.json), not the default 1 ("needs several workers"); every option
    left out is the run's, those given and BIN are the command line's."""
    import dataclasses

    from click.testing import CliRunner

    from async_nmt.cli import main
    from async_nmt.config import CorpusInfo, ModelConfig, RunConfig, TrainConfig, save_json
    from async_nmt.train import launch

    run, bin_dir = tmp_path / "run", tmp_path / "bin"
    run.mkdir()
    saved = TrainConfig(
        bin_dir=str(tmp_path / "old"),
        preset="micro",
        mode="async",
        workers=2,
        simulate=True,
        devices=["cpu"],
        max_tokens=512,
        lr=1e-3,
        warmup=9,
        seed=5,
        max_updates=4,
        log_every=3,
    )
    save_json(RunConfig(saved, ModelConfig(), CorpusInfo()), run / "config.json")
    started = []
    monkeypatch.setattr(launch, "train", lambda cfg, run_dir, **kw: started.append((cfg, kw["log_every"])))
    result = CliRunner().invoke(main, ["train", str(bin_dir), str(run), "--resume", "--worker-speeds", "1,0.5",
                                       "--max-updates", "8"])  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = dataclasses.replace(saved, bin_dir=str(bin_dir), worker_speeds=[1.0, 0.5], max_updates=8)
    assert started == [(expected, 3)]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("how", ["stop_signals_set", "sigterm_interrupts"])
def test_a_stop_signal_that_comes_twice_at_once_is_one_notice(how, signum, monkeypatch):
    """GNU `timeout` sends its signal to the command, then to its process group; Slurm's `scancel` signals
    every process of a job, and torchrun's agent passes its own SIGTERM on to its ranks: a process gets two
    at once. They are one notice (the second was a second Ctrl-C, which stops at once, without a
    checkpoint); a Ctrl-C later than `REPEAT_S` is a second notice, a SIGTERM never (the copies of a
    scheduler's may come seconds apart on a loaded machine: a torchrun rank then stopped unsaved)."""
    monkeypatch.setattr(errors, "REPEAT_S", 0.5)
    flag = threading.Event()
    caught = []
    block = processes.stop_signals_set(flag, None) if how == "stop_signals_set" else errors.sigterm_interrupts()
    with block:
        for wait in (0.0, 0.1, 0.7):
            time.sleep(wait)
            try:
                os.kill(os.getpid(), getattr(signal, signum))
                time.sleep(0.01)  # Python runs the handler at the next instruction of the main thread
                caught.append(False)
            except KeyboardInterrupt:
                caught.append(True)
    # stop_signals_set: the first sets the flag, the one at once is dropped, the later Ctrl-C stops at once
    later = signum == "SIGINT"
    assert caught == ([False, False, later] if how == "stop_signals_set" else [True, False, later])
    assert flag.is_set() == (how == "stop_signals_set")


def test_held_interrupts_say_the_notice_once_and_a_second_ctrl_c_stops_only_where_asked(monkeypatch, capsys):
    """A Ctrl-C held off a section is recorded and prints the notice at once, a second one (later than
    `REPEAT_S`) not again; with `second_stops` the second stops at once (SecondInterrupt), unsaved."""
    monkeypatch.setattr(errors, "REPEAT_S", 0.05)
    with errors.held_interrupts(notice="stopping after this update") as caught:
        for _ in range(2):
            signal.raise_signal(signal.SIGINT)
            time.sleep(0.1)
    assert caught == [signal.SIGINT, signal.SIGINT]
    assert capsys.readouterr().err == "stopping after this update\n"
    reached = []
    with pytest.raises(errors.SecondInterrupt), errors.held_interrupts(second_stops=True) as caught:
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.1)
        reached.append("after the first")
        signal.raise_signal(signal.SIGINT)
        time.sleep(0.1)
        reached.append("after the second")
    assert reached == ["after the first"] and caught == [signal.SIGINT, signal.SIGINT]


def test_a_sigterm_that_stands_for_ctrl_c_is_held_too(monkeypatch):
    """Under `sigterm_interrupts` (the CLI's commands), a SIGTERM, as a Ctrl-C, is held off a section that
    must not stop halfway (a corpus's files put into place), not raised in the middle of it."""
    done, caught = [], None
    with errors.sigterm_interrupts():
        try:
            with errors.held_interrupts() as caught:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # (Python runs the handler at the next instruction of the main thread)
                done.append("the whole section")
        except KeyboardInterrupt:  # (not held: raised halfway; caught here, or it would stop pytest)
            done.append("interrupted")
    assert done == ["the whole section"] and caught == [signal.SIGTERM]


def test_ranks_on_bins_made_before_and_after_dropped_pairs_were_counted_by_rule_agree(synthetic_bin, tmp_path):
    """The ranks compare the corpus each was given: a BIN whose manifest lacks `dropped_for` (made before
    2026-12-05) was another corpus to a rank whose BIN has it, and a torchrun start was refused."""
    import shutil

    from async_nmt.config import TrainConfig
    from async_nmt.train.launch import _start_options

    older = tmp_path / "older"
    shutil.copytree(synthetic_bin, older)
    manifest = json.loads((older / "manifest.json").read_text())
    assert manifest["splits"]["train"].pop("dropped_for")
    (older / "manifest.json").write_text(json.dumps(manifest))
    ours = _start_options(TrainConfig(bin_dir=str(synthetic_bin)), tmp_path / "run", False)
    assert _start_options(TrainConfig(bin_dir=str(older)), tmp_path / "run", False) == ours
    manifest["splits"]["train"]["sentences"] -= 1  # another corpus still differs
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert _start_options(TrainConfig(bin_dir=str(older)), tmp_path / "run", False)["corpus"] != ours["corpus"]


def test_a_zh_target_validates_with_the_zh_tokenizer_and_its_fingerprint_says_so(synthetic_bin, tmp_path):
    """The best BLEU of a zh run begun with 13a (about 0) is not comparable with zh's: its resume is refused,
    as for other valid sentences, where the fingerprint holds the tokenizer."""
    from conftest import bin_with_target

    from async_nmt.train.validate import Validator

    chinese = bin_with_target(synthetic_bin, tmp_path / "zh", "zh")
    plain, zh = (Validator(b, 512, 64, max_sentences=5) for b in (synthetic_bin, chinese))
    assert (plain.tokenize, zh.tokenize) == (None, "zh") and plain.fingerprint != zh.fingerprint
    assert plain.fingerprint == Validator(synthetic_bin, 512, 64, max_sentences=5).fingerprint


@pytest.mark.parametrize("rank0_code, expected", [(0, 0), (130, 130)])
def test_a_group_that_ended_by_its_limit_as_ctrl_c_came_exits_as_its_rank_0(tmp_path, rank0_code, expected):
    """A SIGTERM as a diloco group saved its last round: the supervisor said "stopping at the next step",
    the ranks ended by --max-updates (the end event: not interrupted), and the command exited 130."""
    import queue
    import types

    from async_nmt.train.launch import supervise

    interrupt = threading.Event()
    interrupt.set()
    ranks = [types.SimpleNamespace(exitcode=code, is_alive=lambda: False) for code in (rank0_code, 0)]
    assert supervise(ranks, queue.Queue(), ["cpu", "cpu"], tmp_path, interrupt, "interrupted") == expected


def test_the_end_event_after_the_save_is_held_for_the_resumed_runs_start(tmp_path):
    """A resume keeps the end event that follows its save's checkpoint event (blank lines between), but cuts it
    from the file until the resumed run writes its start event: left there, a resume that failed before then
    left a log ending as a finished run's. An end of another update, or a damaged one, is cut."""
    path = tmp_path / "events.jsonl"
    kept = [{"kind": "start", "updates": 0}, {"kind": "checkpoint", "updates": 2}]
    end = json.dumps({"kind": "end", "updates": 2, "interrupted": True}) + "\n"
    later = json.dumps({"kind": "train", "updates": 3}) + "\n"
    for tail, held in ((f"\n{end}{later}", end), (end.replace('"updates": 2', '"updates": 3'), ""),
                       (end[:-3] + "\n", ""), (end, end)):  # fmt: skip
        path.write_text("".join(json.dumps(e) + "\n" for e in kept) + tail, encoding="utf-8")
        events, line = truncate_events(path, 2)
        assert line == held.encode() and [e["kind"] for e in events] == ["start", "checkpoint"] + ["end"] * bool(held)
        assert read_events(path) == kept
        log = EventLog(path)
        log.hold(line)
        log.write("start", updates=2)
        log.close()
        assert [e["kind"] for e in read_events(path)] == ["start", "checkpoint"] + ["end"] * bool(held) + ["start"]
        assert log.lines == complete_lines(path)
