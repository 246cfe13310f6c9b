"""The training modes with real worker processes on the CPU: no barrier in async, sync equals local
accumulation, learning, resume, and failures (a raising worker, Ctrl-C, SIGKILL of the process group)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import command, live_processes
from torch.nn.utils import parameters_to_vector

from async_nmt.config import TrainConfig, model_config
from async_nmt.errors import stop_hint
from async_nmt.model.checkpoint import checkpoint_path, kept_checkpoints, kept_update, read_checkpoint
from async_nmt.model.transformer import Transformer
from async_nmt.train.events import read_events
from async_nmt.train.launch import stop_notice, train
from async_nmt.train.optim import inverse_sqrt_lr
from async_nmt.train.trainer import PUSHES_HELD

NMT_TRAIN = command("nmt-train")
DEVICE = os.environ.get("ASYNC_NMT_TEST_DEVICE", "cpu")  # cuda:0 runs these tests on a GPU
pytestmark = pytest.mark.slow


def config(bin_dir: Path, **overrides) -> TrainConfig:
    options = dict(bin_dir=str(bin_dir), preset="micro", max_tokens=1024, lr=2e-3, warmup=50, dropout=0.0,
                   devices=[DEVICE], valid_every=0, valid_max_sentences=40, seed=7, workers=2)  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def events(run: Path, kind: str | None = None) -> list[dict]:
    path = run / "events.jsonl"
    found = read_events(path) if path.exists() else []
    return [e for e in found if kind is None or e["kind"] == kind]


def assert_events_hold_the_pushes_they_count(run: Path) -> None:
    """Each train event's statistics are those of the pushes it counts since the last: as many in its
    staleness histogram, and its workers' pushes add up to its count. (Read apart from the server's counts
    while the workers pushed on, an event once held one push fewer than it counted, and the next one more.)"""
    before = 0
    for event in events(run, "train"):
        assert sum(event["staleness_hist"]) == event["pushes"] - before, event
        assert sum(event["worker_pushes"]) == event["pushes"], event
        before = event["pushes"]


def test_async_has_no_barrier_a_slowed_worker_pushes_less(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(config(synthetic_bin, mode="async", worker_speeds=[1.0, 0.1], max_updates=40), run, progress=False,
          log_every=5)  # fmt: skip
    assert_events_hold_the_pushes_they_count(run)
    last = events(run, "train")[-1]
    fast, slow = last["worker_pushes"]
    assert fast + slow == 40 == last["updates"] == last["pushes"]
    assert fast >= 3 * slow, last["worker_pushes"]  # nobody waited for the slow worker's steps
    # its gradients are old: a slowed step (its first is not slowed) spans 10 of its own, and so several of
    # the fast worker's updates; on a loaded machine it may not have pushed one before the run ends
    if slow >= 2:
        assert max(e["staleness_max"] for e in events(run, "train")) >= 3, last["worker_pushes"]


def test_worker_processes_step_with_the_staleness_lr(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    # a checkpoint after every update fences the pushes: each train event is one push and its update's lr
    train(config(synthetic_bin, mode="async", worker_speeds=[1.0, 0.2], staleness_lr="inverse", max_updates=16,
                 warmup=4, save_every=1), run, progress=False, log_every=1)  # fmt: skip
    trained = events(run, "train")
    assert [sum(e["staleness_hist"]) for e in trained] == [1] * 16
    assert max(e["staleness_max"] for e in trained) >= 2
    for e in trained:
        expected = inverse_sqrt_lr(e["updates"], 2e-3, 4) / max(1, e["staleness_mean"])
        assert e["lr"] == pytest.approx(expected, rel=1e-5)


def test_sync_with_two_ranks_equals_one_worker_with_local_accum_2(synthetic_bin: Path, tmp_path: Path):
    common = dict(mode="sync", max_updates=4, precision="fp32")
    began = time.perf_counter()
    train(config(synthetic_bin, workers=2, **common), tmp_path / "ranks", progress=False, log_every=1)
    # the wall clock counts the ranks' start-up (about 2 s of the 2.2 here), as an async run's counts its workers'
    # (it began in each rank's trainer: 0.3 s of 2.9)
    assert events(tmp_path / "ranks", "end")[-1]["wall_s"] > 0.6 * (time.perf_counter() - began)
    train(config(synthetic_bin, workers=1, local_accum=2, **common), tmp_path / "local", progress=False, log_every=1)
    ranks, local = events(tmp_path / "ranks", "train"), events(tmp_path / "local", "train")
    assert [e["tokens"] for e in ranks] == [e["tokens"] for e in local]  # the same batches
    assert [e["loss"] for e in ranks] == pytest.approx([e["loss"] for e in local], rel=1e-4)
    assert ranks[-1]["pushes"] == 8 and ranks[-1]["staleness_max"] == 0
    a = read_checkpoint(checkpoint_path(tmp_path / "ranks", "last"))["params"]
    b = read_checkpoint(checkpoint_path(tmp_path / "local", "last"))["params"]
    torch.manual_seed(7)  # the trainer's initialization: the run's seed, then the model
    vocab = read_checkpoint(checkpoint_path(tmp_path / "local", "last"))["corpus"]["vocab_size"]
    p0 = parameters_to_vector(Transformer(model_config("micro", vocab, dropout=0.0)).parameters()).detach()
    # the same updates: the parameters moved the same way, up to float rounding of the two sums (which Adam
    # amplifies where a gradient is near 0; measured 6e-4 of the movement), not by a batch or a rank more or less
    moved = (a - p0).norm()
    assert moved > 0 and (a - b).norm() < 1e-2 * moved


@pytest.mark.parametrize("mode, accum", [("async", 1), ("async-accum", 2)])
def test_worker_processes_learn_and_fence_n_pushes_per_update(synthetic_bin: Path, tmp_path: Path, mode, accum):
    run = tmp_path / mode
    cfg = config(synthetic_bin, mode=mode, accum=accum, lr=1e-3, max_updates=40, valid_every=20)
    train(cfg, run, progress=False, log_every=2)
    assert_events_hold_the_pushes_they_count(run)
    valid_losses = [e["valid_loss"] for e in events(run, "valid")]
    assert len(valid_losses) == 2 and valid_losses[-1] < valid_losses[0]  # the loss falls
    train_losses = [e["loss"] for e in events(run, "train")]
    assert train_losses[-1] < train_losses[0]
    fences = [e for e in events(run) if e["kind"] in ("valid", "checkpoint", "end")]
    assert fences and all(e["pushes"] == accum * e["updates"] for e in fences)  # N pushes per update
    assert events(run)[-1]["kind"] == "end"


def test_pushes_that_complete_no_update_neither_validate_nor_save(synthetic_bin: Path, tmp_path: Path):
    """One worker, two pushes an update: the trainer can see the first push without an update, and it once
    validated and saved "update 0" there (a greedy search of a random model)."""
    run = tmp_path / "run"
    train(config(synthetic_bin, mode="async-accum", accum=2, workers=1, max_updates=2, valid_every=1), run,
          progress=False)  # fmt: skip
    assert [e["updates"] for e in events(run, "valid")] == [1, 2]
    assert all(e["updates"] > 0 for e in events(run, "checkpoint"))


def test_async_resume_continues_the_counter_schedule_and_data(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    train(config(synthetic_bin, mode="async-accum", accum=2, valid_every=5, warmup=8, max_updates=10), run,
          progress=False, log_every=1)  # fmt: skip
    saved = read_checkpoint(checkpoint_path(run, "last"))
    assert saved["server"]["updates"] == 10 and saved["server"]["pushes"] == 20
    train(config(synthetic_bin, mode="async-accum", accum=2, valid_every=5, warmup=8, max_updates=20), run,
          resume=True, progress=False, log_every=1)  # fmt: skip
    starts = events(run, "start")
    assert len(starts) == 2 and starts[1]["resumed"] and starts[1]["updates"] == 10
    resumed = [e for e in events(run, "train") if e["updates"] > 10]
    assert resumed and resumed[-1]["updates"] == 20 and resumed[-1]["pushes"] == 40
    for event in resumed:
        assert event["lr"] == pytest.approx(inverse_sqrt_lr(event["updates"], 2e-3, 8), rel=1e-5, abs=1e-6)
    final = read_checkpoint(checkpoint_path(run, "last"))
    # each worker's data went on from where it was saved, by exactly the batches it pushed since the resume;
    # its push count goes on from the saved one (it started again at 0 until 2026-12-05)
    from async_nmt.data.batches import BatchStream
    from async_nmt.data.binarize import load_manifest, load_split

    split = load_split(synthetic_bin, "train")
    max_len = model_config("micro", load_manifest(synthetic_bin)["vocab_size"]).max_positions
    pushed_before = [e for e in events(run, "train") if e["updates"] == 10][-1]["worker_pushes"]
    pushed = resumed[-1]["worker_pushes"]
    assert sum(pushed_before) == 20 and sum(pushed) == 40
    for w, (before, after) in enumerate(zip(saved["data"], final["data"], strict=True)):
        per_epoch = len(BatchStream(split, 1024, max_len, 7, w, 2))
        moved = (after["epoch"] - before["epoch"]) * per_epoch + after["index"] - before["index"]
        assert moved == pushed[w] - pushed_before[w], (w, before, after, pushed_before, pushed)


def _nmt_train(bin_dir: Path, run: Path, *extra: str, env: dict | None = None, under: tuple[str, ...] = (),
               **popen) -> subprocess.Popen:  # fmt: skip
    args = [*under, str(NMT_TRAIN), str(bin_dir), str(run), "--quiet", "--preset", "micro", "--devices", DEVICE,
            "--workers", "2", "--max-tokens", "1024", "--dropout", "0", "--valid-max-sentences", "20",
            *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **popen)  # fmt: skip


def _wait_for(run: Path, kind: str, count: int = 1, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while len(events(run, kind)) < count:
        assert time.time() < deadline, f"no {count} {kind} events in {timeout} s"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_raising_worker_stops_the_run_with_one_line(synthetic_bin: Path, tmp_path: Path, mode):
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", mode, "--valid-every", "3", "--max-updates", "1000",
                      env={"ASYNC_NMT_FAIL_WORKER": "1:8"})  # fmt: skip
    _, stderr = proc.communicate(timeout=120)
    stopped = time.time()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("update ")]  # (validations)
    assert len(lines) == 1 and f"worker 1 ({DEVICE}) failed: RuntimeError: injected failure" in lines[0], stderr
    log = run / "worker-errors.log"
    assert "Traceback" in log.read_text()
    assert stopped - log.stat().st_mtime < 10  # the failure stopped the run within seconds
    saved = read_checkpoint(checkpoint_path(run, "last"))  # intact, and the one the events name last
    assert saved["server"]["updates"] == events(run, "checkpoint")[-1]["updates"] > 0
    end = events(run)[-1]  # (no end event: `nmt report` showed the run as still running)
    assert end["kind"] == "end" and "injected failure" in end["failed"] and not end["interrupted"]


def test_a_killed_sync_rank_is_named_as_the_cause(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", "sync", "--valid-every", "0", "--max-updates", "1000",
                      env={"ASYNC_NMT_FAIL_WORKER": "1:3:kill"})  # fmt: skip
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    # the root cause first: rank 1 died; rank 0's failed all-reduce follows from it
    assert len(lines) == 1 and lines[0].startswith(f"error: worker 1 ({DEVICE}) was killed by signal 9"), stderr
    # the run's end, with the cause that the supervisor named (rank 0's trainer saw only its all-reduce fail)
    assert [e["kind"] for e in events(run)][-1] == "end" and events(run)[-1]["failed"] == lines[0][len("error: ") :]


def test_a_full_stderr_costs_a_group_of_sync_ranks_nothing(synthetic_bin: Path, tmp_path: Path):
    """Rank 0 of a spawned sync group prints the run's lines: where stderr could not take them (2>/dev/full),
    the run failed (an OSError from the progress lines), as the trainer's own process no longer did."""
    run = tmp_path / "run"
    args = [str(NMT_TRAIN), str(synthetic_bin), str(run), "--preset", "micro", "--devices", DEVICE, "--workers",
            "2", "--max-tokens", "1024", "--valid-every", "0", "--log-every", "1", "--max-updates", "4", "--mode",
            "sync"]  # fmt: skip
    with open("/dev/full", "w") as full:
        proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=full, timeout=120)
    assert proc.returncode == 0
    assert [e["kind"] for e in events(run)][-1] == "end" and "failed" not in events(run)[-1]
    assert not (run / "worker-errors.log").exists()


def test_a_closed_stdout_costs_a_group_of_sync_ranks_nothing(synthetic_bin: Path, tmp_path: Path):
    """`nmt-train ... >&-`: a rank that had trained flushed its stdout (None) as it left its group, and the
    finished run failed, exit code 1."""
    run = tmp_path / "run"
    args = [str(NMT_TRAIN), str(synthetic_bin), str(run), "--preset", "micro", "--devices", DEVICE, "--workers",
            "2", "--max-tokens", "1024", "--valid-every", "0", "--max-updates", "3", "--mode", "sync",
            "--quiet"]  # fmt: skip
    proc = subprocess.run(args, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0, proc.stderr
    assert [e["kind"] for e in events(run)][-1] == "end" and "failed" not in events(run)[-1]
    assert not (run / "worker-errors.log").exists()


def test_a_worker_killed_holding_the_gate_lock_stops_the_run(synthetic_bin: Path, tmp_path: Path):
    """A worker killed (the OOM killer) while it holds the lock of the shared counters never releases it: the
    coordinator, waiting for that lock, hung without end; now it names the worker and stops."""
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", "async", "--valid-every", "0", "--max-updates", "1000",
                      env={"ASYNC_NMT_FAIL_WORKER": "1:3:kill-locked"})  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: worker 1 ({DEVICE}) was killed by signal 9"), stderr
    assert events(run)[-1]["failed"] == lines[0].removeprefix("error: ")


SIGNALLED = [("async-accum", "SIGINT", "trainer"), ("sync", "SIGINT", "group"), ("async-accum", "SIGTERM", "trainer"),
             ("sync", "SIGTERM", "group"), ("sync", "SIGTERM", "timeout"),
             ("async-accum", "SIGINT", "timeout")]  # (mode, signal, sent to)  # fmt: skip


@pytest.mark.parametrize("mode, signum, to", SIGNALLED)
def test_ctrl_c_with_worker_processes_saves_and_exits(synthetic_bin: Path, tmp_path: Path, mode, signum, to):
    """The signal to the trainer alone, or to its whole process group, as Ctrl-C in a terminal and a batch
    scheduler's SIGTERM send it (a sync rank SIGTERM killed failed the run before it could save), or to GNU
    `timeout` running it, which sends it to the trainer and then to its process group: the same notice twice
    (the second was taken for a second Ctrl-C, which stops at once: no checkpoint, no end event, in 2 of 3
    runs of an audit)."""
    run = tmp_path / "run"
    extra = ["--accum", "2"] if mode == "async-accum" else []
    under = ("timeout", "600") if to == "timeout" else ()
    proc = _nmt_train(synthetic_bin, run, "--mode", mode, *extra, "--valid-every", "0", "--log-every", "1",
                      start_new_session=to == "group", under=under)  # fmt: skip
    try:
        _wait_for(run, "train", 2)
        if to == "group":
            os.killpg(proc.pid, getattr(signal, signum))
        else:
            proc.send_signal(getattr(signal, signum))
        _, stderr = proc.communicate(timeout=60)
    finally:
        if to == "timeout" and proc.poll() is None:  # (timeout leads a process group of its own)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()  # no-op when it ended; its workers leave when it is gone
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    # at once, what it will do (async runs with worker processes said nothing until their summary)
    notice = stop_notice(mode) if mode == "sync" else stop_hint(PUSHES_HELD)
    assert notice in stderr.splitlines(), stderr
    end = events(run)[-1]
    assert end["kind"] == "end" and end["interrupted"] is True
    saved = read_checkpoint(checkpoint_path(run, "last"))
    assert saved["server"]["updates"] == end["updates"]
    assert saved["server"]["pushes"] == end["pushes"] == 2 * end["updates"]  # no update half done


def _live_processes_in_group(pgid: int) -> list[int]:
    return [pid for pid, (_, group) in live_processes().items() if group == pgid]


def _workers_of(pid: int) -> list[int]:
    """The worker processes (or sync ranks) that nmt-train `pid` spawned: its children but multiprocessing's
    resource tracker."""
    children = [child for child, (parent, _) in live_processes().items() if parent == pid]
    return [child for child in children if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ctrl_c_saves_with_a_worker_held_by_sigstop(synthetic_bin: Path, tmp_path: Path, mode):
    """A worker that SIGSTOP holds (a debugger, a job control slip) is continued by the stop: a sync group waited
    for it in its next all-reduce, and an async drain for its push, without end, the run unsaved."""
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", mode, "--valid-every", "0", "--log-every", "1",
                      start_new_session=True)  # fmt: skip
    try:
        _wait_for(run, "train", 2)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGSTOP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr
    end = events(run)[-1]
    assert end["kind"] == "end" and end["interrupted"] is True
    assert read_checkpoint(checkpoint_path(run, "last"))["server"]["updates"] == end["updates"]


def _named_semaphores(pid: int) -> set[str]:
    """The named semaphores (files in /dev/shm) that process `pid` has open."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in maps if "/dev/shm/sem." in line}


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_sigkill_of_the_process_group_leaves_no_named_semaphore(synthetic_bin: Path, tmp_path: Path, mode):
    """The locks and queues the worker processes share are named semaphores in /dev/shm, which multiprocessing's
    resource tracker unlinks where the processes that made them die unsaid; the tracker was in the run's process
    group and died with it, so that every `kill -KILL -PGID` left them in /dev/shm for good (4 an async run)."""
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", mode, "--valid-every", "0", "--log-every", "1",
                      start_new_session=True)  # fmt: skip
    try:
        _wait_for(run, "train", 2)
        named = set().union(*(_named_semaphores(pid) for pid in [proc.pid, *_workers_of(proc.pid)]))
        assert named
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    deadline = time.time() + 10
    while left := [path for path in named if Path(path).exists()]:
        assert time.time() < deadline, f"left in /dev/shm: {left}"
        time.sleep(0.1)


def test_sigkill_of_the_process_group_leaves_no_worker_and_resume_cuts_the_events(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", "async", "--valid-every", "4", "--log-every", "1",
                      start_new_session=True)  # fmt: skip
    _wait_for(run, "checkpoint", 2)
    time.sleep(0.3)  # somewhere between checkpoints, maybe in the middle of an event line
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while _live_processes_in_group(proc.pid):
        assert time.time() < deadline, f"left running: {_live_processes_in_group(proc.pid)}"
        time.sleep(0.1)

    saved = read_checkpoint(checkpoint_path(run, "last"))["server"]["updates"]
    cfg = config(synthetic_bin, mode="async", valid_every=4, max_updates=saved + 8, valid_max_sentences=20, seed=1)
    train(cfg, run, resume=True, progress=False, log_every=1)  # seed 1: nmt-train's default, as the run started
    log = events(run)  # every line parses: nothing torn is left
    resumed_at = [i for i, e in enumerate(log) if e["kind"] == "start"][1]
    before = log[:resumed_at]
    assert before[-1]["kind"] == "checkpoint" and before[-1]["updates"] == saved
    assert max(e["updates"] for e in before) == saved  # no update the checkpoint does not hold
    assert log[-1]["kind"] == "end" and log[-1]["updates"] == saved + 8


def test_ranks_started_by_torchrun_join_its_group(synthetic_bin: Path, tmp_path: Path):
    from async_nmt.train.processes import free_port

    run, port = tmp_path / "run", str(free_port())
    ranks = [
        _nmt_train(
            synthetic_bin,
            run,
            "--mode",
            "sync",
            "--max-updates",
            "4",
            "--valid-every",
            "0",
            env={
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )  # fmt: skip
        for r in range(2)
    ]
    for rank in ranks:
        _, stderr = rank.communicate(timeout=120)
        assert rank.returncode == 0, stderr
    start, end = events(run, "start")[0], events(run)[-1]
    assert start["workers"] == 2 and end["kind"] == "end" and end["updates"] == 4 and end["pushes"] == 8


def test_workers_leave_when_the_trainer_alone_is_killed(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--mode", "async", "--valid-every", "0", "--log-every", "1",
                      start_new_session=True)  # fmt: skip
    try:
        _wait_for(run, "train", 1)
    finally:
        proc.kill()  # the trainer only: its workers are not signalled
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while _live_processes_in_group(proc.pid):
        assert time.time() < deadline, f"left running: {_live_processes_in_group(proc.pid)}"
        time.sleep(0.1)


DILOCO = dict(mode="diloco", sync_every=3, precision="fp32", dropout=0.0)


@pytest.fixture(scope="module")
def diloco_ranks(synthetic_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 updates of a diloco group of 2 spawned ranks (sync every 3), never stopped: the run that the diloco
    tests below compare with (they only read it)."""
    run = tmp_path_factory.mktemp("diloco") / "ranks"
    train(config(synthetic_bin, **DILOCO, max_updates=8), run, progress=False, log_every=1)
    return run


def test_diloco_ranks_equal_the_emulated_workers_and_resume_mid_round(synthetic_bin: Path, tmp_path: Path,
                                                                      diloco_ranks: Path):  # fmt: skip
    common = DILOCO
    train(config(synthetic_bin, **common, max_updates=8, simulate=True), tmp_path / "emulated", progress=False,
          log_every=1)  # fmt: skip
    train(config(synthetic_bin, **common, max_updates=4), tmp_path / "split", progress=False, log_every=1)
    train(config(synthetic_bin, **common, max_updates=8), tmp_path / "split", resume=True, progress=False,
          log_every=1)  # fmt: skip

    def trained(run):
        return {e["updates"]: e for e in events(run, "train")}

    ranks, emulated, split = trained(diloco_ranks), trained(tmp_path / "emulated"), trained(tmp_path / "split")
    for update in range(1, 9):  # the same inner steps and outer steps, rank by rank or emulated in one process
        assert ranks[update]["tokens"] == emulated[update]["tokens"]
        assert ranks[update]["loss"] == pytest.approx(emulated[update]["loss"], rel=1e-4)
        assert ranks[update]["staleness_hist"] == emulated[update]["staleness_hist"]
    for update in range(5, 9):  # resumed in the middle of the second round, inner Adam states and all
        assert split[update]["loss"] == pytest.approx(ranks[update]["loss"], rel=1e-4)
    ranks_p, emulated_p, split_p = (read_checkpoint(checkpoint_path(r, "last"))["params"]
                                    for r in (diloco_ranks, tmp_path / "emulated", tmp_path / "split"))  # fmt: skip
    torch.manual_seed(7)  # the trainer's initialization: the run's seed, then the model
    vocab = read_checkpoint(checkpoint_path(diloco_ranks, "last"))["corpus"]["vocab_size"]
    p0 = parameters_to_vector(Transformer(model_config("micro", vocab, dropout=0.0)).parameters()).detach()
    moved = (ranks_p - p0).norm()  # the global parameters after 2 outer steps; the sums differ only in rounding
    assert moved > 0 and (ranks_p - emulated_p).norm() < 1e-2 * moved and (ranks_p - split_p).norm() < 1e-2 * moved


def test_diloco_ranks_that_save_before_their_first_step_keep_the_worker_states(synthetic_bin: Path, tmp_path: Path,
                                                                               diloco_ranks: Path):  # fmt: skip
    """A resumed diloco group that saves before it steps (the closing validation of a last.pt that
    --save-every, or a kill before the run's end, left at its --max-updates) saved no worker states, and
    every rank of the next resume failed with a TypeError. Resumed twice, it trains as if never stopped
    (`diloco_ranks`, of the same options: its updates 3 to 5)."""
    common = dict(**DILOCO, max_updates=2)
    straight, run = diloco_ranks, tmp_path / "run"
    train(config(synthetic_bin, **common), run, progress=False, log_every=1)
    path = checkpoint_path(run, "last")  # as --save-every leaves it: saved, not validated
    state = torch.load(path, weights_only=False)
    state["validated_at"] = None
    torch.save(state, path)
    train(config(synthetic_bin, **common), run, resume=True, progress=False, log_every=1)
    assert events(run)[-1]["kind"] == "end" and events(run, "valid")[-1]["updates"] == 2
    train(config(synthetic_bin, **{**common, "max_updates": 5}), run, resume=True, progress=False, log_every=1)
    resumed, expected = ({e["updates"]: e["loss"] for e in events(r, "train")} for r in (run, straight))
    for update in (3, 4, 5):  # mid-round (sync every 3), with every rank's inner Adam state
        assert resumed[update] == pytest.approx(expected[update], rel=1e-4)


@pytest.mark.parametrize("mode", [dict(mode="sync"), dict(mode="diloco", sync_every=3)], ids=["sync", "diloco"])
def test_ranks_with_dropout_resume_to_the_same_numbers(synthetic_bin: Path, tmp_path: Path, mode: dict):
    """Each rank's random state (dropout) is saved: every rank took rank 0's on resume, and the losses
    drifted from the run's that was never stopped."""
    common = dict(**mode, precision="fp32", dropout=0.3)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config(synthetic_bin, **common, max_updates=5), straight, progress=False, log_every=1)
    train(config(synthetic_bin, **common, max_updates=2), split, progress=False, log_every=1)
    train(config(synthetic_bin, **common, max_updates=5), split, resume=True, progress=False, log_every=1)
    expected, resumed = ({e["updates"]: e["loss"] for e in events(r, "train")} for r in (straight, split))
    assert [resumed[u] for u in (3, 4, 5)] == pytest.approx([expected[u] for u in (3, 4, 5)], rel=1e-6)


def test_a_sync_group_rewound_to_a_save_at_its_limit_deletes_what_it_abandons(
    synthetic_bin: Path, tmp_path: Path, capfd: pytest.CaptureFixture
):
    """A group rewound to a save at its limit said "nothing to do" and kept the abandoned kept saves and best.pt
    (`nmt average` and `nmt translate` took them): each rank decided alone, so none could look at the folder that
    rank 0 may be cutting. The ranks now agree, each having read it first."""
    run, saves = tmp_path / "run", tmp_path / "run" / "checkpoints"
    options = dict(mode="sync", save_every=1, valid_every=2, valid_max_sentences=4, keep_last=10)
    train(config(synthetic_bin, **options, max_updates=4), run, progress=False)
    (saves / "last.pt").unlink()  # (a hard link of the last kept save)
    shutil.copyfile(saves / "update-2.pt", saves / "last.pt")
    shutil.copyfile(saves / "update-4.pt", saves / "best.pt")  # as the abandoned updates left it
    capfd.readouterr()
    train(config(synthetic_bin, **options, max_updates=2), run, resume=True, progress=False)
    err = capfd.readouterr().err
    assert "nothing to do" not in err and "resumes from update 2: the kept saves after it" in err, err
    assert [kept_update(path) for path in kept_checkpoints(run)] == [1, 2]
    assert read_checkpoint(saves / "best.pt")["server"]["updates"] <= 2
    assert max(e["updates"] for e in events(run)) == 2
    train(config(synthetic_bin, **options, max_updates=2), run, resume=True, progress=False)  # now left as it is
    assert "nothing to do" in capfd.readouterr().err


def test_every_train_event_of_async_workers_counts_the_epoch_of_its_own_pushes(synthetic_bin: Path, tmp_path: Path):
    """The epoch of a `train` event counted a push that the gate had admitted and the server not yet counted,
    one push ahead of the event's pushes and tokens (5 to 7 of 300 events of a run like this one)."""
    run = tmp_path / "run"
    train(config(synthetic_bin, mode="async", max_tokens=512, max_updates=300), run, progress=False, log_every=1)
    end = events(run, "end")[-1]  # (the server quiet: its epoch and pushes agree)
    per_push = end["epoch"] / end["pushes"]
    logged = events(run, "train")
    assert len(logged) > 200
    assert [e["updates"] for e in logged if abs(e["epoch"] - e["pushes"] * per_push) > 2e-4] == []


def test_ctrl_c_in_the_closing_validation_saves_and_stops_the_workers(synthetic_bin: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """Ctrl-C (or SIGTERM) in the validation at the end of an async run saves and exits 130, as elsewhere.
    The worker processes were left running, and the process then waited for them at exit, for ever."""
    import multiprocessing

    from async_nmt.train.trainer import Trainer

    def interrupted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "validate", interrupted)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(config(synthetic_bin, mode="async", max_updates=4), run, progress=False)
    assert stopped.value.code == 130
    assert not multiprocessing.active_children()
    end = events(run)[-1]
    assert end["kind"] == "end" and end["interrupted"] and (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("mode", ["sync", "diloco"])
def test_sigterm_in_the_closing_validation_of_ranks_saves_and_exits_130(synthetic_bin: Path, tmp_path: Path,
                                                                        mode: str):  # fmt: skip
    """Spawned ranks read their supervisor's stop at their steps only: one in the closing validation is read
    after it and its save, where the run is done; it then cuts nothing, and the run ends as finished, exit 0,
    saying so after the notice (it said "interrupted: stopping at the next step", then nothing of why the
    run ended finished; it was then made to end as interrupted, exit 130, which `nmt report` showed as a run
    that --resume goes on with, where --resume had nothing to do)."""
    run = tmp_path / "run"
    extra = ["--sync-every", "2"] if mode == "diloco" else []
    proc = _nmt_train(synthetic_bin, run, "--mode", mode, *extra, "--valid-every", "0", "--max-updates", "20",
                      "--valid-max-sentences", "0", "--log-every", "20")  # fmt: skip
    deadline = time.time() + 120
    while not any(e["updates"] == 20 for e in events(run, "train")):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    assert not events(run, "valid")  # (the closing validation of 100 sentences under way)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert stderr.splitlines()[-1] == (f"interrupted after the run's end: it cut nothing, and {run} is finished "
                                       "(--max-updates 20)")  # fmt: skip
    end = events(run)[-1]
    assert end["kind"] == "end" and not end["interrupted"] and end["updates"] == 20
    assert end["stopped_by"] == "--max-updates 20" and [e["updates"] for e in events(run, "valid")] == [20]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_ctrl_c_while_the_workers_start_saves_and_stops_them(synthetic_bin: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capfd: pytest.CaptureFixture[str], mode: str):  # fmt: skip
    """A Ctrl-C (or a scheduler's SIGTERM) as the worker processes start is held until they are ready, then
    saves and exits 130 as elsewhere. It escaped the trainer's handlers and left the workers running (each
    printed a traceback as the parent tore down the shared state they were unpickling); one that came during
    the spawn was ignored, and the run went on to its limit."""
    import multiprocessing

    from async_nmt.train import processes

    spawn = processes.spawn

    def spawn_then_ctrl_c(*args, **kwargs):  # type: ignore[no-untyped-def]
        started = spawn(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)  # the workers are importing torch now, not ready
        return started

    monkeypatch.setattr(processes, "spawn", spawn_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(config(synthetic_bin, mode=mode, max_updates=50), run, progress=False)
    assert stopped.value.code == 130
    assert not multiprocessing.active_children()
    kinds = [e["kind"] for e in events(run)]  # (sync ranks take the step under way: their stop is agreed on)
    assert kinds[0] == "start" and kinds[-2:] == ["checkpoint", "end"] and events(run)[-1]["interrupted"]
    assert events(run)[-1]["updates"] <= 2
    assert (run / "checkpoints" / "last.pt").is_file()
    if mode == "async":  # said at once (it was once the workers were ready: seconds of silence)
        assert "interrupted: saving once the worker processes have started" in capfd.readouterr().err


def test_an_update_taken_before_the_trainer_waits_for_it_is_not_waited_for_again(synthetic_bin: Path,
                                                                                 tmp_path: Path):  # fmt: skip
    """A worker that holds a computed push takes the update `allow` lets in at once, maybe before the trainer
    asks for it: `advance` must count it, not wait for another one that the gate does not let in (the
    trainer then waited for ever; seen once in a full test run, with --save-every 1)."""
    import threading
    import time

    from async_nmt.train.trainer import Trainer

    trainer = Trainer(config(synthetic_bin, mode="async", max_updates=4), tmp_path / "run")
    workers = trainer.workers
    workers.start()
    try:
        workers.allow(1)
        deadline = time.monotonic() + 60
        while trainer.server.updates < 1:  # the update is taken before the trainer asks
            assert time.monotonic() < deadline
            time.sleep(0.01)
        returned: list[object] = []
        waiting = threading.Thread(target=lambda: returned.append(workers.advance()), daemon=True)
        waiting.start()
        waiting.join(timeout=30)
        assert returned, "advance waited for an update the gate would never let in"
        assert trainer.server.updates == 1
    finally:
        workers.close()
