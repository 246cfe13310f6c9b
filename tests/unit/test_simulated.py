"""The parameter server's update rule and the deterministic simulator of W workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from async_nmt.config import TrainConfig, model_config
from async_nmt.data.batches import BatchStream
from async_nmt.data.binarize import TokenArray
from async_nmt.model.transformer import Transformer
from async_nmt.train.modes.paramserver import PENDING_PUSHES, PENDING_TOKENS, UPDATES, ParamServer
from async_nmt.train.modes.simulated import SimulatedWorkers
from async_nmt.train.modes.workers import ModeContext
from async_nmt.train.step import flatten_parameters


def adam(p0: torch.Tensor, grads: list[torch.Tensor], lrs: list[float], betas=(0.9, 0.98), eps=1e-9) -> torch.Tensor:
    """Adam written out (float64), the reference for the server's updates: one step per gradient."""
    b1, b2 = betas
    p, m, v = p0.double(), torch.zeros_like(p0, dtype=torch.float64), torch.zeros_like(p0, dtype=torch.float64)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        m = b1 * m + (1 - b1) * g.double()
        v = b2 * v + (1 - b2) * g.double() ** 2
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p.float()


def test_async_accum_takes_one_adam_update_per_n_pushes_on_the_token_normalized_sum():
    torch.manual_seed(0)
    p0 = torch.randn(30)
    server = ParamServer(p0.clone(), accum=3, peak_lr=1e-2, warmup=4, betas=(0.9, 0.98), eps=1e-9)
    # 3 updates of 3 pushes; the updates cover different token totals (23, 9, 63) and gradient sizes, so a
    # wrong divisor changes the gradients' relative sizes, which Adam (unlike its first step alone) shows
    tokens = [[7, 11, 5], [2, 3, 4], [20, 30, 13]]
    grads = [[torch.randn(30) * scale for _ in range(3)] for scale in (1.0, 10.0, 0.1)]
    params = p0.clone()
    for u in range(3):
        for k in range(3):
            assert server.push(grads[u][k].clone(), tokens[u][k], pulled_updates=u) == 0
            if k < 2:  # the pushes so far are summed, with their tokens, and nothing is stepped yet
                state = server.state_dict()
                torch.testing.assert_close(state["grad_sum"], sum(grads[u][: k + 1]), rtol=0, atol=1e-6)
                assert state["counters"][0, PENDING_PUSHES] == k + 1
                assert state["counters"][0, PENDING_TOKENS] == sum(tokens[u][: k + 1])
                assert server.updates == u and torch.equal(server.params, params)
        assert server.updates == u + 1 and server.pushes == 3 * (u + 1) and server.pending_pushes == 0
        params = server.params.clone()

    normalized = [sum(g) / sum(n) for g, n in zip(grads, tokens, strict=True)]
    lrs = [1e-2 * u / 4 for u in (1, 2, 3)]  # linear warmup over 4 updates
    torch.testing.assert_close(server.params, adam(p0, normalized, lrs), rtol=0, atol=1e-6)


class EqualSplit:
    """Every sentence has 6 tokens a side, so every batch has the same tokens (the simulated cost)."""

    @staticmethod
    def side(n, seed) -> TokenArray:
        rng = np.random.RandomState(seed)
        return TokenArray.from_rows([rng.randint(4, 40, size=6).astype(np.int32) for _ in range(n)])

    def __init__(self, n=96):
        self.src, self.tgt = self.side(n, 1), self.side(n, 2)


def simulate(
    workers: int, accum: int, pushes: int, speeds=None, sync=False, seed=0, token_us=0.0, link_gbps=80.0, local_accum=1
):
    """Build a simulator of `workers` on a tiny model and run `pushes`; returns it, every push's statistics
    and every push's staleness."""
    torch.manual_seed(seed)
    model = Transformer(model_config("tiny", 40, d_model=32, ff_dim=64, heads=2, enc_layers=1, dec_layers=1))
    flat = flatten_parameters(model)
    server = ParamServer(flat.data.clone(), accum=accum, peak_lr=1e-3, warmup=10)
    streams = [BatchStream(EqualSplit(), 64, 64, seed=seed, worker=w, workers=workers) for w in range(workers)]
    cfg = TrainConfig(mode="sync" if sync else "async-accum", workers=workers, accum=accum,
                      worker_speeds=speeds or [], label_smoothing=0.1, simulate_token_us=token_us,
                      link_gbps=link_gbps, local_accum=local_accum)  # fmt: skip
    ctx = ModeContext(cfg, model.cfg, model, flat, streams, torch.device("cpu"), None, ["cpu"] * workers, Path("."))
    sim = SimulatedWorkers(ctx, server)
    results = [sim.push() for _ in range(pushes)]
    return sim, [r[0] for r in results], [r[1] for r in results]


def test_round_robin_workers_with_n_1_have_staleness_w_minus_1_after_the_first_round():
    sim, _, staleness = simulate(workers=3, accum=1, pushes=12)
    assert staleness == [0, 1, 2] + [2] * 9
    assert sim.worker_pushes == [4, 4, 4] and sim.server.updates == 12


def test_n_equal_to_w_gives_staleness_0_or_1_as_the_semantics_imply():
    sim, _, staleness = simulate(workers=3, accum=3, pushes=12)
    # the first round all pull update 0; later the worker that completes an update pulls it at once
    assert staleness == [0, 0, 0] + [1, 1, 0] * 3
    assert sim.server.updates == 4


def test_a_push_of_local_accum_k_batches_is_the_update_of_k_pushes_summed_on_the_server():
    """--local-accum K sums K batches on the worker: with one worker (nothing stale), 6 pushes of 2 batches
    take the same 6 updates as 12 pushes of 1 batch summed 2 at a time by the server (async-accum 2)."""
    local, local_stats, _ = simulate(workers=1, accum=1, pushes=6, local_accum=2)
    server, server_stats, _ = simulate(workers=1, accum=2, pushes=12)
    assert local.server.updates == server.server.updates == 6
    pairs = zip(server_stats[0::2], server_stats[1::2], strict=True)
    assert [s.tokens for s in local_stats] == [a.tokens + b.tokens for a, b in pairs]  # the same batches
    start, _, _ = simulate(workers=1, accum=1, pushes=0)
    assert not torch.allclose(start.server.params, server.server.params, atol=1e-4)  # the updates moved it
    assert torch.allclose(local.server.params, server.server.params, atol=1e-6)  # the same way


def test_a_slow_worker_pushes_less_and_nobody_waits_for_it():
    sim, _, staleness = simulate(workers=2, accum=1, pushes=20, speeds=[1.0, 0.25])
    fast, slow = sim.worker_pushes
    assert fast == 16 and slow == 4
    assert max(staleness) >= 4  # the slow worker's gradients are computed on old parameters


def test_sync_simulation_has_no_staleness_and_one_update_per_w_pushes():
    sim, _, staleness = simulate(workers=3, accum=3, pushes=9, sync=True, speeds=[1.0, 1.0, 0.5])
    assert staleness == [0] * 9 and sim.server.updates == 3 and sim.worker_pushes == [3, 3, 3]


class FakeClock:
    """Stands in for `time.perf_counter` in the simulator: the n-th push (two readings, before and after
    its compute) measures `durations[n]` seconds."""

    def __init__(self, durations: list[float]):
        self.durations, self.readings, self.now = list(durations), 0, 0.0

    def __call__(self) -> float:
        self.readings += 1
        if self.readings % 2 == 0:  # the reading after a push's compute
            assert self.durations, "more pushes than durations"
            self.now += self.durations.pop(0)
        return self.now


# the durations are in microseconds (`US`), the scale of the link's cost for the tiny model: both show
US = 1e-6


def run_with_clock(monkeypatch, durations: list[float], **kwargs):
    clock = FakeClock([d * US for d in durations])
    monkeypatch.setattr("async_nmt.train.modes.simulated.time", SimpleNamespace(perf_counter=clock))
    sim, stats, _ = simulate(workers=2, pushes=len(durations), **kwargs)
    assert not clock.durations and clock.readings == 2 * len(durations)
    assert len({s.tokens for s in stats}) == 1  # every push has the same tokens T (EqualSplit)
    # the parameters (fp32) go over the link once per transfer
    return sim, sim.server.numel * 4 * 8 / (kwargs.get("link_gbps", 80.0) * 1e9)


@pytest.mark.parametrize("link_gbps", [80.0, 1.0])  # 10 GB/s, and 1 Gb/s where the link costs more than compute
def test_async_predicted_clock_charges_each_push_its_compute_time_plus_a_push_and_a_pull(monkeypatch,
                                                                                          link_gbps):  # fmt: skip
    sim, link = run_with_clock(monkeypatch, [3, 1, 2, 6, 2, 4], accum=1, speeds=[1.0, 0.5], link_gbps=link_gbps)
    # Push order by simulated finish time (T per batch, /speed), ties to the lower worker: w0 at T, w0 at 2T
    # (before w1 at 2T), w1 at 2T, w0 at 3T, w0 at 4T, w1 at 4T. Each push costs the time it took here, on
    # w1 (speed 0.5) twice that, so the clocks hold the compute measured (a mean price so far charged the
    # slow first push again in every later one). Each push adds 2 links.
    assert sim.worker_pushes == [4, 2]
    w0 = (3 + 1 + 6 + 2) * US + 4 * 2 * link
    w1 = (2 + 4) / 0.5 * US + 2 * 2 * link
    assert sim.seconds == pytest.approx([w0, w1], rel=1e-9, abs=0)
    assert sim.predicted_s == pytest.approx(max(w0, w1), rel=1e-9, abs=0)


@pytest.mark.parametrize("link_gbps", [80.0, 1.0])
def test_sync_predicted_clock_waits_for_the_slowest_worker_then_a_ring_all_reduce(monkeypatch, link_gbps):
    sim, link = run_with_clock(monkeypatch, [1, 9, 2, 4, 3, 5], accum=2, speeds=[0.5, 1.0], sync=True,
                               link_gbps=link_gbps)  # fmt: skip
    # Pushes alternate w0, w1; a push costs the time it took, twice that on w0 (speed 0.5). Every step ends at
    # its slowest worker plus a ring all-reduce of 2 (W-1)/W = 1 link.
    step1 = max(2 * 1, 9) * US + link  # w1 is the slower
    step2 = step1 + max(2 * 2, 4) * US + link  # a tie
    step3 = step2 + max(2 * 3, 5) * US + link  # w0 is the slower
    assert sim.server.updates == 3 and sim.worker_pushes == [3, 3]
    assert sim.seconds == pytest.approx([step3, step3], rel=1e-9, abs=0)
    assert sim.predicted_s == pytest.approx(step3, rel=1e-9, abs=0)


def test_a_fixed_token_price_replaces_the_measured_one(monkeypatch):
    sim, link = run_with_clock(monkeypatch, [3, 1, 2, 6, 2, 4], accum=1, speeds=[1.0, 0.5], token_us=7.0)
    tokens = sim.batches[0][0].tokens  # every batch has the same tokens
    # the same pushes as with the measured price above, each batch now at 7 us per token whatever it measured
    w0 = 4 * tokens * 7 * US + 4 * 2 * link
    w1 = 2 * tokens * 7 / 0.5 * US + 2 * 2 * link
    assert sim.seconds == pytest.approx([w0, w1], rel=1e-9, abs=0)


def test_the_same_seed_gives_the_same_run():
    _, stats_a, stale_a = simulate(workers=2, accum=1, pushes=8, speeds=[1.0, 0.5], seed=3)
    _, stats_b, stale_b = simulate(workers=2, accum=1, pushes=8, speeds=[1.0, 0.5], seed=3)
    assert stale_a == stale_b
    assert [float(s.loss) for s in stats_a] == pytest.approx([float(s.loss) for s in stats_b], rel=1e-6)
    _, stats_c, _ = simulate(workers=2, accum=1, pushes=8, speeds=[1.0, 0.5], seed=4)  # the seed matters
    assert [float(s.loss) for s in stats_c] != pytest.approx([float(s.loss) for s in stats_a], rel=1e-6)


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


def test_ctrl_c_during_a_push_is_raised_once_the_whole_update_is_taken(monkeypatch):
    """A checkpoint saved on Ctrl-C never holds half an update: the signal waits for the push to end."""
    torch.manual_seed(3)
    p0, grad = torch.randn(100), torch.randn(100)
    whole = ParamServer(p0.clone(), accum=1, peak_lr=1e-2, warmup=0, shards=4)
    whole.push(grad.clone(), 7, pulled_updates=0)
    server = ParamServer(p0.clone(), accum=1, peak_lr=1e-2, warmup=0, shards=4)
    update = server._update

    def pressed(i: int, g: torch.Tensor, row: list[int]) -> None:  # Ctrl-C as the first shard steps
        if i == 0:
            os.kill(os.getpid(), signal.SIGINT)
        update(i, g, row)

    monkeypatch.setattr(server, "_update", pressed)
    with pytest.raises(KeyboardInterrupt):
        server.push(grad.clone(), 7, pulled_updates=0)
    assert server.updates == whole.updates == 1 and server.pushes == 1
    assert torch.equal(server.gather(), whole.gather())  # every shard stepped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C acts at once again


def test_sharded_clipping_keeps_the_whole_update_within_the_norm():
    # 4 shards of 25 with clip_norm 1: each shard clips its token-normalized slice to 1 / sqrt(4) = 0.5.
    # Per update and shard, the slice's norm after dividing by the tokens is set: some above 0.5, some
    # between 0.5 and 1 (clipped only by the per-shard norm), some below; it varies between the updates
    # so that Adam's steps depend on the clipped sizes, not only on their signs.
    torch.manual_seed(2)
    tokens = [2, 5, 1]
    norms = [[3.0, 0.2, 0.8, 0.45], [0.1, 2.0, 0.3, 0.7], [0.6, 0.05, 4.0, 0.49]]
    server = ParamServer(torch.zeros(100), accum=1, peak_lr=1e-2, warmup=0, clip_norm=1.0, shards=4)
    clipped = []
    for n, shard_norms in zip(tokens, norms, strict=True):
        units = [d / d.norm() for d in torch.randn(4, 25)]
        server.push(torch.cat([u * s * n for u, s in zip(units, shard_norms, strict=True)]), n, pulled_updates=0)
        clipped.append(torch.cat([u * min(s, 0.5) for u, s in zip(units, shard_norms, strict=True)]))
        # the norm is reported before clipping, of the whole token-normalized gradient
        assert server.grad_norm == pytest.approx(sum(s * s for s in shard_norms) ** 0.5, rel=1e-5)
        assert clipped[-1].norm() <= 1.0
    assert server.updates == 3
    torch.testing.assert_close(server.gather(), adam(torch.zeros(100), clipped, [1e-2] * 3), rtol=0, atol=1e-6)

    # a gradient of equal slices: clipping each of 4 shards to 0.5 is clipping the whole to 1 (one shard)
    one = ParamServer(torch.zeros(100), accum=1, peak_lr=1e-2, warmup=0, clip_norm=1.0)
    four = ParamServer(torch.zeros(100), accum=1, peak_lr=1e-2, warmup=0, clip_norm=1.0, shards=4)
    for value in (3.0, 0.01, 0.5):  # whole norms 30 (clipped), 0.1, 5 (clipped)
        for server in (one, four):
            server.push(torch.full((100,), value), 1, pulled_updates=0)
    clipped = [torch.full((100,), value) for value in (0.1, 0.01, 0.1)]  # norms 1, 0.1, 1
    torch.testing.assert_close(one.params, adam(torch.zeros(100), clipped, [1e-2] * 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(four.gather(), one.params, rtol=0, atol=1e-7)


def test_an_update_in_one_process_never_reads_the_device_and_equals_the_shared_servers(monkeypatch):
    """In one process the norm and the clipping stay on the device (no .item() per update); shared between
    processes they are numbers in shared memory. Both give the same update and the same reported norm."""
    torch.manual_seed(3)
    servers = [ParamServer(torch.zeros(40), accum=1, peak_lr=1e-2, warmup=0, clip_norm=1.0, shared=shared)
               for shared in (False, True)]  # fmt: skip

    def refuse(*args, **kwargs):
        raise AssertionError("the in-process server read a number back from the device")

    for grad, tokens in zip([torch.randn(40) * s for s in (5.0, 0.1, 2.0)], (3, 1, 2), strict=True):
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "item", refuse)
            servers[0].push(grad.clone(), tokens, pulled_updates=0)
        servers[1].push(grad.clone(), tokens, pulled_updates=0)
        assert servers[0].grad_norm == pytest.approx(servers[1].grad_norm, rel=1e-6)
    torch.testing.assert_close(servers[0].gather(), servers[1].gather(), rtol=0, atol=1e-7)
    torch.testing.assert_close(servers[0].state_dict()["norms"], servers[1].state_dict()["norms"])


def test_checkpoint_state_keeps_a_partial_sum():
    torch.manual_seed(3)
    # gradients of different sizes and token counts: a lost or wrong token count changes the gradients'
    # relative sizes, which the second update shows
    grads, tokens = [torch.randn(10) * scale for scale in (1.0, 5.0, 0.3, 2.0)], [4, 6, 3, 9]
    server = ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0)
    server.push(grads[0].clone(), tokens[0], pulled_updates=0)
    state = server.state_dict()
    assert state["updates"] == 0 and torch.equal(state["grad_sum"], grads[0])
    assert state["counters"][0, PENDING_PUSHES] == 1 and state["counters"][0, PENDING_TOKENS] == tokens[0]

    fresh = ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0)
    fresh.load_state_dict(state)
    for s in (server, fresh):
        for grad, n in zip(grads[1:], tokens[1:], strict=True):
            s.push(grad.clone(), n, pulled_updates=0)
    assert fresh.updates == server.updates == 2 and fresh.pending_pushes == 0
    expected = adam(torch.zeros(10), [(grads[0] + grads[1]) / 10, (grads[2] + grads[3]) / 12], [1e-2] * 2)
    torch.testing.assert_close(fresh.params, expected, rtol=0, atol=1e-6)
    assert torch.equal(fresh.params, server.params)


def test_a_partial_sum_resumes_on_another_shard_count_with_its_tokens():
    torch.manual_seed(3)
    p0 = torch.randn(50)
    grads, tokens = [torch.randn(50) * scale for scale in (1.0, 7.0, 0.2, 3.0, 0.5)], [3, 11, 6, 2, 9]
    whole = ParamServer(p0.clone(), accum=2, peak_lr=1e-2, warmup=2)
    for grad, n in zip(grads, tokens, strict=True):
        whole.push(grad.clone(), n, pulled_updates=0)
    two = ParamServer(p0.clone(), accum=2, peak_lr=1e-2, warmup=2, shards=2)
    for grad, n in zip(grads[:3], tokens[:3], strict=True):  # one update and one pending push
        two.push(grad.clone(), n, pulled_updates=0)
    three = ParamServer(p0.clone(), accum=2, peak_lr=1e-2, warmup=2, shards=3)
    three.load_params(two.gather())
    three.load_state_dict(two.state_dict())
    assert three.counters[:, PENDING_PUSHES].tolist() == [1, 1, 1]
    assert three.counters[:, PENDING_TOKENS].tolist() == [6, 6, 6]
    for grad, n in zip(grads[3:], tokens[3:], strict=True):
        three.push(grad.clone(), n, pulled_updates=0)
    assert three.updates == whole.updates == 2 and three.pushes == 5
    torch.testing.assert_close(three.gather(), whole.params, rtol=0, atol=1e-6)


def test_a_server_caught_between_shards_refuses_another_shard_count():
    from async_nmt.errors import UserError

    two = ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0, shards=2)
    two.push(torch.ones(10), 4, pulled_updates=0)
    state = two.state_dict()
    state["counters"][1, PENDING_PUSHES] = 0  # shard 1 had not got the push yet
    with pytest.raises(UserError, match="resume with --shards 2"):
        ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0, shards=3).load_state_dict(state)


@pytest.mark.parametrize("shards", [1, 2])
def test_staleness_lr_divides_each_update_by_the_mean_staleness_of_its_pushes(shards: int):
    torch.manual_seed(5)
    p0 = torch.randn(40)
    grads = [torch.randn(40) * scale for scale in (1.0, 4.0, 0.5, 2.0, 0.3, 1.5, 1.0, 3.0)]
    tokens = [5, 3, 8, 2, 6, 4, 7, 1]
    # accum 2, so 4 updates of 2 pushes. The update count each push's worker last pulled; the server is at
    # update 0, 0, 1, 1, 2, 2, 3, 3 when they arrive, so their staleness is 0, 0, 0, 0, 2, 0, 3, 1
    pulled = [0, 0, 1, 1, 0, 2, 0, 2]
    means = [0, 0, 1, 2]  # the mean staleness of each update's two pushes
    servers = {rule: ParamServer(p0.clone(), accum=2, peak_lr=1e-2, warmup=0, shards=shards, staleness_lr=rule)
               for rule in ("none", "inverse")}  # fmt: skip
    for server in servers.values():
        staleness = [
            server.push(g.clone(), n, pulled_updates=at) for g, n, at in zip(grads, tokens, pulled, strict=True)
        ]
        assert staleness == [0, 0, 0, 0, 2, 0, 3, 1] and server.updates == 4
    normalized = [(grads[i] + grads[i + 1]) / (tokens[i] + tokens[i + 1]) for i in range(0, 8, 2)]
    torch.testing.assert_close(servers["none"].gather(), adam(p0, normalized, [1e-2] * 4), rtol=0, atol=1e-6)
    expected = adam(p0, normalized, [1e-2 / max(1, m) for m in means])
    torch.testing.assert_close(servers["inverse"].gather(), expected, rtol=0, atol=1e-6)
    assert servers["inverse"].lr == pytest.approx(1e-2 / 2)  # the learning rate the events log


def test_a_pending_staleness_sum_survives_a_checkpoint():
    def server() -> ParamServer:
        return ParamServer(torch.zeros(10), accum=2, peak_lr=1e-2, warmup=0, staleness_lr="inverse")

    whole, first = server(), server()
    for s in (whole, first):
        s.push(torch.ones(10), 4, pulled_updates=0)
        s.push(torch.ones(10), 4, pulled_updates=0)  # update 1
        s.push(torch.ones(10) * 3, 2, pulled_updates=0)  # staleness 1, pending
    resumed = server()
    resumed.load_params(first.gather())
    resumed.load_state_dict(first.state_dict())
    for s in (whole, resumed):
        s.push(torch.ones(10), 5, pulled_updates=-2)  # staleness 3: the update's mean is (1 + 3) / 2
    assert resumed.lr == whole.lr == pytest.approx(1e-2 / 2)
    assert torch.equal(resumed.params, whole.params)


def test_simulated_async_workers_compute_on_the_parameters_they_pulled(monkeypatch):
    """Staleness is not only counted: each gradient is computed on the parameters of the update its worker
    last pulled, not on the server's current ones."""
    import async_nmt.train.modes.simulated as simulated

    sim, _, _ = simulate(workers=3, accum=1, pushes=0)
    seen, history = [], {}  # (server updates, parameters computed on) per push; the server's params per update
    real = simulated.push_gradient

    def spy(model, *args, **kwargs):
        history.setdefault(sim.server.updates, sim.server.params.clone())
        seen.append((sim.server.updates, sim.flat.data.clone()))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(simulated, "push_gradient", spy)
    staleness = [sim.push()[1] for _ in range(9)]
    assert staleness == [0, 1, 2] + [2] * 6
    assert len(seen) == 9  # one step per push
    for (now, params), stale in zip(seen, staleness, strict=True):
        assert torch.equal(params, history[now - stale])  # what the worker pulled, `stale` updates ago
        assert stale == 0 or not torch.equal(params, history[now])  # and not what the server holds now


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_a_shared_server_holds_its_state_in_shared_memory_apart_from_the_callers_tensor(accum):
    """Worker processes step one shared server: everything a push changes (shards, Adam moments, counters,
    norms and, for async-accum, the partial sum) must be in shared memory from the start; a partial sum
    made at a worker's first push would be that process's own, which the other workers' pushes never reach.
    The master is a copy: the trainer's own tensor (its model's parameters) never changes under it."""
    torch.manual_seed(6)
    params = torch.randn(12)
    before = params.clone()
    server = ParamServer(params, accum=accum, peak_lr=1e-2, warmup=0, shared=True)
    assert all(s is not None for s in server.grad_sums) == (accum > 1)
    moments = [t for a in server.adam for t in (a.exp_avg, a.exp_avg_sq)]
    sums = [s for s in server.grad_sums if s is not None]
    assert all(t.is_shared() for t in [*server.shards, *moments, server.counters, server.norms, *sums])
    for _ in range(accum):
        server.push(torch.randn(12), 3, pulled_updates=0)
    assert server.updates == 1 and not torch.equal(server.gather(), before)
    assert torch.equal(params, before)


def test_a_checkpoint_without_counters_resumes_at_its_updates_and_pushes():
    """Checkpoints written before the per-shard counters hold only "updates" and "pushes", with nothing
    pending: a resume goes on from both, and its next update takes the schedule's rate of the update after."""
    server = ParamServer(torch.zeros(10), accum=1, peak_lr=1e-2, warmup=4)
    older = {"optimizer": {"exp_avg": torch.zeros(10), "exp_avg_sq": torch.zeros(10)}, "updates": 6, "pushes": 9}
    server.load_state_dict(older)
    assert (server.updates, server.pushes, server.pending_pushes) == (6, 9, 0)
    server.push(torch.ones(10), 2, pulled_updates=6)
    assert (server.updates, server.pushes) == (7, 10)
    assert server.lr == pytest.approx(1e-2 * (4 / 7) ** 0.5)  # past the warmup: peak x sqrt(warmup / update)


def test_the_gradient_norm_and_learning_rate_survive_a_resume_on_another_shard_count():
    """grad_norm reports the norm of the last update's whole token-normalized gradient, whatever the shard
    count; a server resumed with another shard count (nothing pending) reports the same norm and rate."""
    torch.manual_seed(4)
    grad = torch.randn(30)
    two = ParamServer(torch.zeros(30), accum=1, peak_lr=1e-2, warmup=3, shards=2)
    two.push(grad.clone(), 5, pulled_updates=0)
    assert two.grad_norm == pytest.approx(float(grad.norm()) / 5, rel=1e-6)
    for shards in (1, 3, 4):
        other = ParamServer(torch.zeros(30), accum=1, peak_lr=1e-2, warmup=3, shards=shards)
        other.load_state_dict(two.state_dict())
        assert other.grad_norm == pytest.approx(float(grad.norm()) / 5, rel=1e-6), shards
        assert other.lr == pytest.approx(1e-2 / 3)  # update 1 of a warmup of 3


def test_a_push_that_reaches_a_shard_before_the_update_its_worker_pulled_counts_as_fresh():
    """Shards take an update one after another: a worker can pull the update shard 0 has taken while the push
    that made it still walks to shard 1, and push to shard 1 first. There its pulled count is ahead of the
    shard's: staleness_lr counts it fresh (0), not -1, which would take from the staleness of the push summed
    with it (3 here: the update's rate must be divided by (3 + 0) / 2)."""
    g = torch.ones(20)
    server = ParamServer(torch.zeros(20), accum=2, peak_lr=1e-2, warmup=0, shards=2, staleness_lr="inverse")
    for update in range(3):
        server.push(g.clone(), 1, pulled_updates=update)
        server.push(g.clone(), 1, pulled_updates=update)
    server.push(g.clone(), 1, pulled_updates=0)  # staleness 3, pending on both shards

    class Meanwhile:  # shard 1's lock: the first push to take it lets another worker pull and push first
        fired = False

        def __enter__(self):
            if not Meanwhile.fired:
                Meanwhile.fired = True
                pulled = server.pull(torch.empty(20))
                assert pulled == 4 and server.counters[1, UPDATES] == 3  # shard 0 took update 4, shard 1 not yet
                assert server.push(g.clone(), 1, pulled, first_shard=1) == 0

        def __exit__(self, *exc):
            return False

    server.locks[1] = Meanwhile()
    server.push(g.clone(), 1, pulled_updates=3)  # completes update 4 on shard 0 (pushes of staleness 3 and 0)
    assert Meanwhile.fired and server.counters[:, UPDATES].tolist() == [4, 4]
    # each shard's update 4 summed the stale push with a fresh one: the rate divided by 1.5 on both
    assert server.state_dict()["norms"][:, 0].tolist() == pytest.approx([1e-2 / 1.5] * 2)


def test_staleness_lr_measures_each_shard_against_the_count_its_slice_was_pulled_at():
    """A worker that pulls while a push walks from shard 1 to shard 0 copies shard 1 after that push's update
    and shard 0 before it (`pull_each`: [0, 1]). Its push, three updates later, is 3 updates stale on shard 0
    and 2 on shard 1: staleness_lr divides shard 1's rate by 2, where measured against shard 0's pull count
    it was divided by 3."""
    g = torch.ones(20)
    server = ParamServer(torch.zeros(20), accum=1, peak_lr=1e-2, warmup=0, shards=2, staleness_lr="inverse")
    pulled: list[list[int]] = []

    class Meanwhile:  # shard 0's lock, taken by the push from shard 1 once shard 1 has taken its update
        fired = False

        def __enter__(self):
            if not Meanwhile.fired:
                Meanwhile.fired = True
                pulled.append(server.pull_each(torch.empty(20)))

        def __exit__(self, *exc):
            return False

    server.locks[0] = Meanwhile()
    server.push(g.clone(), 1, pulled_updates=0, first_shard=1)
    assert pulled == [[0, 1]] and server.pull_each(torch.empty(20)) == [1, 1]
    for update in (1, 2):
        server.push(g.clone(), 1, pulled_updates=update)
    assert server.push(g.clone(), 1, pulled_updates=pulled[0]) == 3  # (the staleness logged: shard 0's)
    assert server.state_dict()["norms"][:, 0].tolist() == pytest.approx([1e-2 / 3, 1e-2 / 2])


def test_sync_predicted_clock_charges_a_ring_all_reduce_of_2_w_minus_1_over_w_links_for_3_workers():
    """A ring all-reduce among W workers moves 2 (W - 1) / W times the parameters: 4/3 links for W = 3 (for
    W = 2, as the tests above, it is 1, whatever the formula's W)."""
    sim, _, _ = simulate(workers=3, accum=3, pushes=6, sync=True, speeds=[1.0, 0.5, 0.25], token_us=5.0,
                         link_gbps=1.0)  # fmt: skip
    tokens = sim.batches[0][0].tokens  # every batch has the same tokens
    link = sim.server.numel * 4 * 8 / 1e9
    step = tokens * 5 * US / 0.25 + 2 * (3 - 1) / 3 * link  # the slowest worker, then the ring all-reduce
    assert sim.server.updates == 2
    assert sim.seconds == pytest.approx([2 * step] * 3, rel=1e-9, abs=0)
    assert sim.predicted_s == pytest.approx(2 * step, rel=1e-9, abs=0)
