"""diloco from its definition: the outer Nesterov step, local SGD as parameter averaging, the emulated clock."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_simulated import EqualSplit

from async_nmt.config import TrainConfig, model_config
from async_nmt.data.batches import BatchStream
from async_nmt.model.transformer import Transformer
from async_nmt.train.modes.diloco import OuterServer, SimulatedDiloco
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext
from async_nmt.train.step import flatten_parameters, train_step

INNER = dict(accum=1, peak_lr=1e-2, warmup=0)


def test_the_outer_step_is_sgd_with_nesterov_momentum_on_the_average_change():
    torch.manual_seed(0)
    p0 = torch.randn(20)
    server = OuterServer(p0.clone(), outer_lr=0.7, momentum=0.9, sync_every=5)
    reference = torch.nn.Parameter(p0.clone())
    sgd = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    by_hand, buf = p0.clone(), None
    for _ in range(3):  # three rounds, each from the workers' parameters after their inner steps
        workers = [server.params + torch.randn(20) * 0.1 for _ in range(3)]
        delta = server.params - torch.stack(workers).mean(0)
        buf = delta.clone() if buf is None else 0.9 * buf + delta
        by_hand = by_hand - 0.7 * (delta + 0.9 * buf)
        reference.grad = delta.clone()
        sgd.step()
        server.outer_step(workers)
        torch.testing.assert_close(server.params, by_hand)
        torch.testing.assert_close(server.params, reference.detach())
    assert server.outer_steps == 3


def build(workers: int, sync_every: int, outer_lr: float, momentum: float, inner=INNER, **cfg_overrides):
    torch.manual_seed(0)
    model = Transformer(model_config("micro", 40, d_model=16, ff_dim=32, heads=2, enc_layers=1, dec_layers=1,
                                     dropout=0.0))  # fmt: skip
    flat = flatten_parameters(model)
    streams = [BatchStream(EqualSplit(), 64, 64, seed=0, worker=w, workers=workers) for w in range(workers)]
    cfg = TrainConfig(mode="diloco", workers=workers, simulate=True, sync_every=sync_every, outer_lr=outer_lr,
                      outer_momentum=momentum, label_smoothing=0.1, **cfg_overrides)  # fmt: skip
    ctx = ModeContext(cfg, model.cfg, model, flat, streams, torch.device("cpu"), None, ["cpu"] * workers, Path("."))
    outer = OuterServer(flat.data.clone(), outer_lr, momentum, sync_every)
    return SimulatedDiloco(ctx, outer, inner), model, flat, streams


def test_h1_outer_lr_1_momentum_0_averages_the_workers_one_step_parameters():
    sim, model, flat, streams = build(workers=3, sync_every=1, outer_lr=1.0, momentum=0.0)
    p0 = sim.server.params.clone()
    positions = [s.state_dict() for s in streams]
    expected = []
    for worker in range(3):  # each worker alone: one inner Adam step from p0 on its own next batch
        stream = BatchStream(EqualSplit(), 64, 64, seed=0, worker=worker, workers=3)
        stream.load_state_dict(positions[worker])
        flat.data.copy_(p0)
        flat.grad.zero_()
        stats = train_step(model, stream.next(), 0.1, None)
        inner = ParamServer(p0.clone(), **INNER)
        inner.push(flat.grad, stats.tokens, 0)
        expected.append(inner.params)
    sim.advance()
    assert sim.server.updates == 1 and sim.server.outer_steps == 1
    torch.testing.assert_close(sim.server.params, torch.stack(expected).mean(0), rtol=0, atol=1e-6)
    for params in sim.params:  # every worker starts its next round from the new global parameters
        assert torch.equal(params, sim.server.params)


def test_the_global_parameters_change_every_h_steps_and_the_clock_syncs_then():
    sim, *_ = build(workers=2, sync_every=3, outer_lr=0.7, momentum=0.9, simulate_token_us=10.0,
                    worker_speeds=[1.0, 0.5], link_gbps=1.0)  # fmt: skip
    p0 = sim.server.params.clone()
    tokens, histograms = [], []
    for step in range(1, 7):
        stats, hist = sim.advance()
        tokens.append(stats.tokens // 2)  # both workers' batches have the same tokens
        histograms.append(hist)
        assert torch.equal(sim.server.params, p0) == (step < 3)  # the first outer step is at update 3
    assert sim.server.outer_steps == 2 and histograms[:3] == [[2], [0, 2], [0, 0, 2]]  # steps since the sync
    link = sim.server.numel * 4 * 8 / 1e9
    # each round: the slow worker's 3 batches at 10 us a token / 0.5, then a ring all-reduce of 2 (W-1)/W = 1 link
    round_s = 3 * tokens[0] * 10e-6 / 0.5 + link
    assert sim.predicted_s == pytest.approx(2 * round_s, rel=1e-9)


def test_limits_inside_a_round_are_warned_of():
    from async_nmt.train.modes.diloco import partial_round_warning

    def warning(**options):
        return partial_round_warning(TrainConfig(bin_dir="bin", **options))

    assert warning(mode="diloco", sync_every=10, max_updates=30, valid_every=500, save_every=0) is None
    assert warning(mode="sync", max_updates=25) is None
    one = warning(mode="diloco", sync_every=10, max_updates=25, valid_every=500)
    assert one is not None and one.startswith("warning: --max-updates 25 is not a multiple of --sync-every 10:")
    two = warning(mode="diloco", sync_every=3, max_updates=30, valid_every=500, save_every=7)
    assert two is not None and "--valid-every 500 and --save-every 7 are not multiples of --sync-every 3" in two


def test_ranks_meet_only_at_a_rounds_end_and_where_the_trainer_reads_and_limits_stop_at_a_rounds_end(
    tmp_path: Path, monkeypatch
):
    """A rank (here the one rank of a group) all-reduced its losses at every inner step, so every step waited
    for the slowest rank, which the predicted clock does not (16% of a run's compute time). Now the ranks
    meet at a round's end and where the trainer logs, validates or saves; a limit reached mid-round stops
    them at the round's end, as the emulation does (the round's inner steps were trained and thrown away)."""
    import torch.distributed as dist

    from async_nmt.train.modes.diloco import DistributedDiloco

    _, model, flat, streams = build(workers=1, sync_every=4, outer_lr=0.7, momentum=0.9)
    cfg = TrainConfig(mode="diloco", workers=1, sync_every=4, outer_lr=0.7, outer_momentum=0.9, label_smoothing=0.1,
                      log_every=6)  # fmt: skip
    ctx = ModeContext(cfg, model.cfg, model, flat, streams, torch.device("cpu"), None, ["cpu"], tmp_path)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        calls = []
        all_reduce = dist.all_reduce
        monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: calls.append(tensor.numel()) or
                            all_reduce(tensor, *a, **k))  # fmt: skip
        ranks = DistributedDiloco(ctx, OuterServer(flat.data.clone(), 0.7, 0.9, 4), INNER)
        met, losses, stopped = {}, [], None
        for update in range(1, 13):  # the trainer's calls, as every rank makes them
            ranks.allow(10 if update <= 10 else 20)  # the trainer validates after update 10 (then 20)
            before = len(calls)
            stats, _ = ranks.advance()
            losses.append(float(stats.loss))
            if ranks.agree_stop(wish=update >= 9):  # after the step: a limit, reached mid-round
                stopped = update
                break
            if ranks.agree_stop(wish=update >= 9):  # after a validation (where --patience may be spent)
                stopped = update
                break
            met[update] = len(calls) - before
        # a --patience spent by the validation at a round's end stops the ranks there, as the emulation
        # (the wish comes in the trainer's second call: the ranks trained a round more)
        patient = DistributedDiloco(ctx, OuterServer(flat.data.clone(), 0.7, 0.9, 4), INNER)
        for update in range(1, 9):
            patient.allow(4)
            patient.advance()
            if patient.agree_stop(wish=False) or patient.agree_stop(wish=update == 4):
                break
    finally:
        dist.destroy_process_group()
    # round ends (4, 8): losses and Ctrl-C, the parameters, the wishes to stop (twice); the trainer's log (6)
    # and validation (10): losses and Ctrl-C; no other step meets
    params = flat.numel()
    assert {u: n for u, n in met.items() if n} == {4: 4, 6: 1, 8: 4, 10: 1}
    assert calls[:4] == [3, params, 1, 1]
    assert stopped == 12  # the wish of update 9 waits for the end of its round
    assert [loss > 0 for loss in losses] == [u in (4, 6, 8, 10, 12) for u in range(1, 13)]  # (shared when met)
    assert patient.outer.updates == 4


def test_a_limit_stops_the_emulation_at_the_rounds_end():
    sim, *_ = build(workers=2, sync_every=4, outer_lr=0.7, momentum=0.9)
    stops = []
    for update in range(1, 9):
        sim.advance()
        stops.append(sim.agree_stop(wish=False) or sim.agree_stop(wish=update == 5))  # (as the trainer asks)
    assert stops == [False] * 7 + [True] and sim.server.outer_steps == 2


def test_the_outer_step_records_the_norm_of_the_outer_gradient():
    """`grad_norm`, which the trainer logs, is the norm of the last outer gradient: global - mean_w(params_w)."""
    torch.manual_seed(0)
    server = OuterServer(torch.randn(20), outer_lr=0.7, momentum=0.9, sync_every=5)
    for _ in range(2):
        workers = [server.params + torch.randn(20) * 0.1 for _ in range(3)]
        delta = server.params - sum(workers) / 3
        server.outer_step(workers)
        assert server.grad_norm == pytest.approx(float(delta.pow(2).sum().sqrt()), rel=1e-5)


def test_a_push_of_local_accum_k_batches_is_one_inner_step_on_their_summed_gradient():
    """With --local-accum 2 each worker's inner step takes the summed gradient of its next 2 batches (and
    their tokens): local SGD (H = 1, outer lr 1, no momentum) then averages those steps."""
    sim, model, flat, streams = build(workers=2, sync_every=1, outer_lr=1.0, momentum=0.0, local_accum=2)
    p0 = sim.server.params.clone()
    positions = [s.state_dict() for s in streams]
    expected = []
    for worker in range(2):  # each worker alone: one inner Adam step from p0 on its next 2 batches
        stream = BatchStream(EqualSplit(), 64, 64, seed=0, worker=worker, workers=2)
        stream.load_state_dict(positions[worker])
        flat.data.copy_(p0)
        flat.grad.zero_()
        tokens = sum(train_step(model, stream.next(), 0.1, None).tokens for _ in range(2))
        inner = ParamServer(p0.clone(), **INNER)
        inner.push(flat.grad, tokens, 0)
        expected.append(inner.params)
    stats, _ = sim.advance()
    assert stats.tokens == tokens * 2  # (both workers' batches have the same tokens)
    torch.testing.assert_close(sim.server.params, torch.stack(expected).mean(0), rtol=0, atol=1e-6)


def test_the_predicted_clock_and_the_counters_move_at_every_inner_step():
    """Between syncs the predicted clock is the slowest worker's compute so far (a sync adds its ring
    all-reduce), every update counts W pushes, and the learning rate logged is the inner one (warmup over 4
    updates: peak * u / 4)."""
    sim, *_ = build(workers=2, sync_every=3, outer_lr=0.7, momentum=0.9, inner={**INNER, "warmup": 4},
                    simulate_token_us=10.0, worker_speeds=[1.0, 0.5], link_gbps=1.0)  # fmt: skip
    link = sim.server.numel * 4 * 8 / 1e9
    for update in range(1, 5):
        stats, _ = sim.advance()
        batch_s = stats.tokens // 2 * 10e-6 / 0.5  # the slow worker's batch (both have the same tokens)
        rounds = update // 3
        assert sim.predicted_s == pytest.approx(update * batch_s + rounds * link, rel=1e-9)
        assert sim.server.pushes == 2 * update
        assert sim.server.lr == pytest.approx(1e-2 * update / 4, rel=1e-6)
