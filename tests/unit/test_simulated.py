"""The parameter server's update rule and the deterministic simulator of W workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from async_nmt.config import model_config
from async_nmt.data.batches import BatchStream
from async_nmt.model.transformer import Transformer
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.simulated import SimulatedWorkers
from async_nmt.train.optim import inverse_sqrt_lr, norm_and_scale
from async_nmt.train.step import flatten_parameters


def test_async_accum_takes_one_adam_update_per_n_pushes_on_the_token_normalized_sum():
    torch.manual_seed(0)
    p0 = torch.randn(30)
    server = ParamServer(p0.clone(), accum=3, peak_lr=1e-2, warmup=4, betas=(0.9, 0.98), eps=1e-9)
    grads, tokens = [torch.randn(30) for _ in range(3)], [7, 11, 5]
    for i in range(2):
        assert server.push(grads[i], tokens[i], pulled_updates=0) == 0
        assert server.updates == 0 and torch.equal(server.params, p0)
    server.push(grads[2], tokens[2], pulled_updates=0)
    assert server.updates == 1 and server.pushes == 3

    g = sum(grads) / sum(tokens)
    m, v = 0.1 * g, 0.02 * g * g
    lr = inverse_sqrt_lr(1, 1e-2, 4)
    expected = p0 - lr / 0.1 * m / ((v / 0.02).sqrt() + 1e-9)
    assert torch.allclose(server.params, expected, atol=1e-6)


class EqualSplit:
    """Every sentence has 6 tokens a side, so every batch has the same tokens (the simulated cost)."""

    class Side:
        def __init__(self, n, seed):
            rng = np.random.RandomState(seed)
            self.rows = [rng.randint(4, 40, size=6).astype(np.int32) for _ in range(n)]
            self.lengths = np.full(n, 6, dtype=np.int32)

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    def __init__(self, n=96):
        self.src, self.tgt = self.Side(n, 1), self.Side(n, 2)


def simulate(workers: int, accum: int, pushes: int, speeds=None, sync=False, seed=0):
    torch.manual_seed(seed)
    model = Transformer(model_config("tiny", 40, d_model=32, ff_dim=64, heads=2, enc_layers=1, dec_layers=1))
    flat = flatten_parameters(model)
    server = ParamServer(flat.data.clone(), accum=accum, peak_lr=1e-3, warmup=10)
    streams = [BatchStream(EqualSplit(), 64, 64, seed=seed, worker=w, workers=workers) for w in range(workers)]
    sim = SimulatedWorkers(model, flat, server, streams, speeds or [1.0] * workers, sync, 1, 0.1, None)
    results = [sim.push() for _ in range(pushes)]
    return sim, [r[0].loss for r in results], [r[1] for r in results]


def test_round_robin_workers_with_n_1_have_staleness_w_minus_1_after_the_first_round():
    sim, _, staleness = simulate(workers=3, accum=1, pushes=12)
    assert staleness == [0, 1, 2] + [2] * 9
    assert sim.worker_pushes == [4, 4, 4] and sim.server.updates == 12


def test_n_equal_to_w_gives_staleness_0_or_1_as_the_semantics_imply():
    sim, _, staleness = simulate(workers=3, accum=3, pushes=12)
    # the first round all pull update 0; later the worker that completes an update pulls it at once
    assert staleness == [0, 0, 0] + [1, 1, 0] * 3
    assert sim.server.updates == 4


def test_a_slow_worker_pushes_less_and_nobody_waits_for_it():
    sim, _, staleness = simulate(workers=2, accum=1, pushes=20, speeds=[1.0, 0.25])
    fast, slow = sim.worker_pushes
    assert fast == 16 and slow == 4
    assert max(staleness) >= 4  # the slow worker's gradients are computed on old parameters


def test_sync_simulation_has_no_staleness_and_one_update_per_w_pushes():
    sim, _, staleness = simulate(workers=3, accum=3, pushes=9, sync=True, speeds=[1.0, 1.0, 0.5])
    assert staleness == [0] * 9 and sim.server.updates == 3 and sim.worker_pushes == [3, 3, 3]
    assert sim.predicted_s > 0


def test_the_same_seed_gives_the_same_run():
    _, losses_a, stale_a = simulate(workers=2, accum=1, pushes=8, speeds=[1.0, 0.5], seed=3)
    _, losses_b, stale_b = simulate(workers=2, accum=1, pushes=8, speeds=[1.0, 0.5], seed=3)
    assert stale_a == stale_b
    assert losses_a == pytest.approx(losses_b, rel=1e-6)


@pytest.mark.parametrize("accum", [1, 3])
def test_a_sharded_shared_server_takes_the_same_updates_as_one_shard(accum):
    torch.manual_seed(1)
    p0 = torch.randn(101)
    grads, tokens = [torch.randn(101) for _ in range(6)], [5, 9, 4, 7, 3, 8]
    one = ParamServer(p0.clone(), accum=accum, peak_lr=1e-2, warmup=3)
    three = ParamServer(p0.clone(), accum=accum, peak_lr=1e-2, warmup=3, shards=3, shared=True)
    for i, (grad, n) in enumerate(zip(grads, tokens, strict=True)):
        one.push(grad.clone(), n, pulled_updates=0)
        three.push(grad.clone(), n, pulled_updates=0, first_shard=i % 3)  # each push walks from its own shard
    assert one.updates == three.updates == 6 // accum and three.pushes == 6
    assert torch.allclose(three.gather(), one.params, atol=1e-6)
    out = torch.empty(101)
    assert three.pull(out) == three.updates and torch.equal(out, three.gather())


def test_sharded_clipping_keeps_the_whole_update_within_the_norm():
    grad = torch.full((100,), 3.0)  # norm 30 after dividing by 1 token
    server = ParamServer(torch.zeros(100), accum=1, peak_lr=1e-2, warmup=0, clip_norm=1.0, shards=4)
    server.push(grad, 1, pulled_updates=0)
    assert server.grad_norm == pytest.approx(30.0, rel=1e-5)  # reported before clipping
    assert server.clip_norm == pytest.approx(0.5)  # each of 4 shards to 1/sqrt(4): the whole stays within 1
    piece = torch.full((25,), 3.0)  # one shard's slice
    norm, scale = norm_and_scale(piece, 1, server.clip_norm)
    assert norm == pytest.approx(15.0) and (piece / scale).norm().item() == pytest.approx(0.5, rel=1e-4)


def test_checkpoint_state_keeps_a_partial_sum():
    server = ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0)
    server.push(torch.ones(10), 4, pulled_updates=0)
    state = server.state_dict()
    fresh = ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0)
    fresh.load_state_dict(state)
    for s in (server, fresh):
        s.push(torch.ones(10), 4, pulled_updates=0)
    assert fresh.updates == server.updates == 1 and torch.equal(fresh.params, server.params)
