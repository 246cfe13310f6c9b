"""Where a training run's processes come from: one trainer in this process, a group of sync ranks spawned
and supervised here, or this process as the rank that torchrun named. Each rank runs a trainer.

Worker processes of the async modes are started by their mode (`modes/asynchronous.py`); the process
mechanics (spawn, failures, stop) shared by both live in `processes.py`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from async_nmt.config import ASYNC_MODES, RANK_MODES, TrainConfig, torchrun_rank
from async_nmt.data.binarize import SPLIT_KEYS, load_manifest
from async_nmt.devices import resolve_device
from async_nmt.errors import UserError, reason, sigterm_interrupts, stop_hint, system_error
from async_nmt.model.checkpoint import checkpoint_path, read_checkpoint
from async_nmt.train import processes
from async_nmt.train.checkpoint import check_run_dir, check_run_path
from async_nmt.train.events import ended_interrupted, log_failure
from async_nmt.train.lock import run_lock
from async_nmt.train.modes import check_worker_speeds, spawns_ranks, worker_devices
from async_nmt.train.modes.remote import run_worker_rank
from async_nmt.train.summary import print_summary
from async_nmt.train.trainer import Trainer

TIMEOUT = datetime.timedelta(hours=2)  # rank 0 may validate a long while; the others wait in an all-reduce


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log_every: int | None = None,
    scratch: bool = False,
) -> dict | None:
    """Run (or resume) training as `cfg` says, into `run_dir`; returns the `end` event (None when a group of
    sync ranks ran it: rank 0 wrote it to the events). `log_every`, where given, replaces `cfg.log_every`,
    so that config.json records what the run does (it was passed apart, and config.json kept 50).
    `scratch`: the caller deletes `run_dir` when it is done (a benchmark's temporary folder), so Ctrl-C
    ends in `interrupted`, without naming a checkpoint that will be gone.

    This process holds the run folder's lock (`lock.run_lock`) throughout: the ranks it spawns are its
    children and end before it does."""
    if log_every is not None:
        cfg = replace(cfg, log_every=log_every)
    if torchrun_rank() is not None:  # torchrun started this process as one rank
        return join_torchrun(cfg, run_dir, resume, force, progress)
    check_run_path(run_dir, Path(cfg.bin_dir), resume)
    with run_lock(run_dir):  # before the folder is looked at: what another nmt-train does to it is settled
        check_run_dir(run_dir, resume, force, Path(cfg.bin_dir))
        return _train_locked(cfg, run_dir, resume, progress, scratch)


def _train_locked(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, scratch: bool) -> dict | None:
    # SIGTERM (`kill`, a batch scheduler's notice) stops the run as Ctrl-C does: a checkpoint, then exit 130
    with sigterm_interrupts():
        if spawns_ranks(cfg):
            launch_ranks(cfg, run_dir, resume, progress, worker_devices(cfg), scratch)
            return None
        return run_trainer(cfg, run_dir, resume, progress, scratch=scratch)


def run_trainer(
    cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, rank: int = 0, world: int = 1,
    interrupt: Any = None, scratch: bool = False, supervised: bool = False, began: float | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """One trainer (of rank `rank` in a sync group of `world`): open the run folder, train, summarize; None
    where a resumed run has nothing to do. `scratch`: as `train`'s; `supervised`: a rank spawned by
    `launch_ranks`, whose supervisor names a failure and logs it (`Trainer.supervised`); `began`: when its
    supervisor began to start the ranks (`time.time()`), from which the run's wall clock counts."""
    trainer = Trainer(cfg, run_dir, rank=rank, world=world, interrupt=interrupt, scratch=scratch)
    trainer.supervised = supervised
    if began is not None:
        trainer.began_earlier(time.time() - began)
    # the trainer has read everything it needs before the folder changes; torchrun's async worker ranks
    # wait for their server, so it trains (or stops at once) rather than skip
    try:
        if not trainer.open_run(resume, may_skip=world == 1 or cfg.mode in RANK_MODES):
            return None
        summary = trainer.run(progress=progress and rank == 0)
    except BaseException as err:
        trainer.put_back_held_end()  # (a resume that failed before its start event)
        if not isinstance(err, KeyboardInterrupt):
            raise
        # a second Ctrl-C: after the stop's save, which stands, it only cuts the wait
        if not (trainer.stop_saved and rank == 0):  # for the workers to end (it said "interrupted" alone)
            raise
        print("interrupted" if scratch else f"interrupted: saved {checkpoint_path(run_dir, 'last')}", file=sys.stderr)
        raise SystemExit(130) from None
    if progress and rank == 0:
        print_summary(summary, trainer)
    if trainer.stopped_after_end and rank == 0:  # (after a notice that said "interrupted: ...")
        print(f"interrupted after the run's end: it cut nothing, and {run_dir} is finished ({summary['stopped_by']})",
              file=sys.stderr)  # fmt: skip
    if summary["interrupted"] and rank == 0:  # Ctrl-C or SIGTERM: saved, summarized, exit code 130
        print("interrupted" if scratch else f"interrupted: saved {checkpoint_path(run_dir, 'last')}", file=sys.stderr)
        raise SystemExit(130)
    return summary


# ---------------------------------------------------------------------- a group of sync ranks on this machine
@dataclass
class RankSetup:
    """What a spawned rank needs (sent to it once, at spawn)."""

    cfg: TrainConfig
    run_dir: Path
    resume: bool
    progress: bool
    port: int
    devices: list[str]
    errors: Any
    interrupt: Any
    scratch: bool
    began: float  # time.time() as the supervisor began to start the ranks


def backend(devices: list[str]) -> str:
    """NCCL when every rank has a GPU of its own; else gloo (NCCL refuses two ranks on one GPU)."""
    on_gpus = all(d.startswith("cuda") for d in devices) and len(set(devices)) == len(devices)
    return "nccl" if on_gpus else "gloo"


def node_devices(listed: list[str], local_world: int) -> list[str]:
    """The device of each of torchrun's ranks on this node (LOCAL_RANK 0..LOCAL_WORLD_SIZE-1): the listed
    --devices in turn, else GPU i for local rank i, or the CPU. Every node decides the backend from its
    own list, the same on nodes started alike."""
    if listed:
        return [listed[i % len(listed)] for i in range(local_world)]
    return [f"cuda:{i}" if torch.cuda.is_available() else "cpu" for i in range(local_world)]


def rank_main(rank: int, setup: RankSetup) -> None:
    """A spawned rank: join the group on localhost, train, leave."""
    with processes.worker_process(rank, setup.devices[rank], setup.errors):
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(setup.port)
        world = len(setup.devices)
        torch.set_num_threads(processes.cpu_threads(setup.devices[rank], setup.devices))
        if setup.devices[rank].startswith("cuda"):
            torch.cuda.set_device(torch.device(setup.devices[rank]))
        dist.init_process_group(backend(setup.devices), rank=rank, world_size=world, timeout=TIMEOUT)
        # on an error the group is left as it is: the error is reported first, so the other ranks' failed
        # all-reduce is not taken for the cause
        try:
            run_trainer(setup.cfg, setup.run_dir, setup.resume, setup.progress, rank, world,
                        setup.interrupt, setup.scratch, supervised=True, began=setup.began)  # fmt: skip
        except SystemExit as stop:
            if stop.code != 130:  # (its supervisor gone: the group is left as it is, as on an error)
                raise
            processes.leave_group(130)  # rank 0 after an agreed Ctrl-C, saved
        processes.leave_group(0)


def launch_ranks(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, devices: list[str],
                 scratch: bool = False) -> None:  # fmt: skip
    """Spawn one rank per worker and supervise them; rank 0 writes the run folder."""
    errors, interrupt = processes.context().SimpleQueue(), processes.context().Event()
    setup = RankSetup(cfg, run_dir, resume, progress, processes.free_port(), devices, errors, interrupt, scratch,
                      time.time())  # fmt: skip
    ranks = None
    try:  # a Ctrl-C or SIGTERM while they start is held, then told to them as any other (a second: at once)
        with processes.uninterrupted(second_stops=True):
            ranks = processes.spawn(rank_main, [(rank, setup) for rank in range(len(devices))])
    except KeyboardInterrupt:
        if ranks is None:
            raise
        interrupt.set()
        print(stop_notice(cfg.mode), file=sys.stderr)
    try:
        code = supervise(ranks, errors, devices, run_dir, interrupt, stop_notice(cfg.mode))
    except UserError as err:  # (rank 0's trainer left it to this, which names the root cause)
        log_failure(run_dir / "events.jsonl", str(err))
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: at once; where rank 0 had saved for the first, the save stands
        if not ended_interrupted(run_dir / "events.jsonl"):
            raise
        print("interrupted" if scratch else f"interrupted: saved {checkpoint_path(run_dir, 'last')}", file=sys.stderr)
        raise SystemExit(130) from None
    if code:
        raise SystemExit(code)


def stop_notice(mode: str) -> str:
    """What a group of ranks says at the first Ctrl-C or SIGTERM: where it stops, saved. (Diloco's said "at
    the next step", and trained on for up to a round: a user who then pressed Ctrl-C again lost the save.)"""
    if mode == "diloco":
        return stop_hint("interrupted: stopping where the ranks next meet: the next log, validation or save, or "
                         "the round's end")  # fmt: skip
    return stop_hint("interrupted: stopping within two steps")  # (the ranks agree on it a step later: README)


def supervise(ranks: list[Any], errors: Any, devices: list[str], run_dir: Path, interrupt: Any, notice: str) -> int:
    """Wait for a group of ranks to finish; the first failure stops them all.

    Ctrl-C sets `interrupt` (and prints `notice`), which the ranks agree on where they next meet: rank 0 saves
    a checkpoint and exits 130. A second Ctrl-C stops them at once. Returns the exit code to leave with: rank
    0's 130, or 0 where the run ended by its own limit before the ranks met on the interrupt (it exited 130,
    though its end event said it was not interrupted)."""
    try:
        while True:
            try:  # (the look at the ranks too: a first Ctrl-C there killed them, unsaved, without the notice)
                if not any(p.is_alive() for p in ranks):
                    break
                processes.check_workers(ranks, errors, devices, run_dir)
                if interrupt.is_set():  # (they agree on it in an all-reduce, which a rank held by SIGSTOP held)
                    processes.wake(ranks)
                time.sleep(0.05)
            except KeyboardInterrupt:
                if interrupt.is_set():
                    raise
                interrupt.set()
                print(notice, file=sys.stderr)
        processes.check_workers(ranks, errors, devices, run_dir)
    except BaseException:
        processes.stop(ranks, grace_s=0.0)
        raise
    return 130 if interrupt.is_set() and ranks[0].exitcode == 130 else 0


# ---------------------------------------------------------------------- a rank started by torchrun
def join_torchrun(cfg: TrainConfig, run_dir: Path, resume: bool, force: bool, progress: bool) -> dict[str, Any] | None:
    """Run as the rank that RANK / WORLD_SIZE / LOCAL_RANK name, in the group torchrun set up: a sync rank
    with a trainer of its own, or in the async modes rank 0 (trainer and server) or a worker rank.

    Every rank checks what it was given, then all agree to start (`_agree_to_start`): a rank that cannot
    start, or that was given other options than rank 0, stops them all with one line each. (A rank that
    stopped before it joined left the others waiting for it for TIMEOUT, without a word.)"""
    rank, world, store = _rendezvous()
    with contextlib.ExitStack() as held:
        problem, options, node, device = None, None, [], ""
        try:
            node, device = _check_rank(cfg, run_dir, resume, force, rank, world, held)
            options = _start_options(cfg, run_dir, resume)
        except UserError as err:
            problem = str(err)
        except OSError as err:
            problem = system_error(err)
        _agree_to_start(store, rank, world, problem, options)
        store.set_timeout(TIMEOUT)
        group_store = dist.PrefixStore("default_pg", store)  # (as init_process_group's own rendezvous makes it)
        return _join_group(cfg, run_dir, resume, progress, rank, world, node, device, group_store)


JOIN_TIMEOUT = datetime.timedelta(minutes=10)  # for every rank of a torchrun group to start and check itself


def refuse_torchrun(err: UserError) -> NoReturn:
    """A rank of a torchrun group that cannot start, found before it joins (its options, the run folder's
    lock): it tells the others, which would wait for it, then raises `err`."""
    rank, world, store = _rendezvous()
    _agree_to_start(store, rank, world, str(err), None)
    raise err


def _rendezvous() -> tuple[int, int, Any]:
    """This rank, the world's size and torchrun's store (the rendezvous that init_process_group would do)."""
    ranks = torchrun_rank()
    assert ranks is not None, "called where torchrun started this process"
    rank, world = ranks
    processes.die_with_parent()  # torchrun's agent: no rank outlives it (a killed node leaves nothing behind)
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise UserError(f"RANK and WORLD_SIZE are set (as torchrun sets them), but not {' and '.join(missing)}: "
                        "start nmt-train with torchrun, or set them too")  # fmt: skip
    try:
        return rank, world, next(dist.rendezvous("env://", timeout=JOIN_TIMEOUT))[0]
    except (RuntimeError, ValueError) as err:  # (torch's store errors are RuntimeErrors)
        raise UserError(f"rank {rank}: cannot join the group at {os.environ['MASTER_ADDR']}:"
                        f"{os.environ['MASTER_PORT']} ({reason(err)})") from None  # fmt: skip


def _check_rank(cfg: TrainConfig, run_dir: Path, resume: bool, force: bool, rank: int, world: int,
                held: contextlib.ExitStack) -> tuple[list[str], str]:  # fmt: skip
    """This rank's checks (UserError): its options against WORLD_SIZE, its device, its corpus, and on rank 0
    the run folder, whose lock it then holds in `held`; the node's devices and this rank's."""
    if cfg.simulate:
        raise UserError("RANK/WORLD_SIZE are set (torchrun): --simulate runs in one process; start it without torchrun")
    if cfg.mode in RANK_MODES:
        if cfg.workers not in (1, world):
            raise UserError(f"--workers {cfg.workers} differs from WORLD_SIZE={world}")
        cfg.workers = world
    else:  # rank 0 serves, the others are the workers
        if world < 2:
            raise UserError(f"--mode {cfg.mode} under torchrun needs 2 ranks or more: rank 0 serves, the others push")
        if cfg.workers not in (1, world - 1):
            raise UserError(f"--workers {cfg.workers}: under torchrun the workers are ranks 1..{world - 1}, so "
                            f"--workers must be {world - 1} (WORLD_SIZE={world}, rank 0 serves)")  # fmt: skip
        if cfg.shards > 1:
            raise UserError("--shards: under torchrun the server is rank 0, one shard")
        cfg.workers = world - 1
    check_worker_speeds(cfg)
    node = node_devices(cfg.devices, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    device = node[int(os.environ.get("LOCAL_RANK", rank))]
    cfg.devices = [device]  # this rank's
    resolve_device(device)  # (one that is not there: one line, not torch's error from set_device)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    load_manifest(Path(cfg.bin_dir))  # every rank reads the corpus
    # (rank 0's run folder is checked below, with what check_run_dir says of a missing last.pt)
    if resume and cfg.mode in RANK_MODES and rank > 0 and not checkpoint_path(run_dir, "last").is_file():
        raise UserError(f"{checkpoint_path(run_dir, 'last')}: not on this node; every {cfg.mode} rank resumes "
                        "from its run folder's copy: copy the run folder to each node")  # fmt: skip
    if rank == 0:  # only rank 0 writes the run folder, so only it holds its lock: not the other ranks or nodes
        check_run_path(run_dir, Path(cfg.bin_dir), resume)
        held.enter_context(run_lock(run_dir))
        check_run_dir(run_dir, resume, force, Path(cfg.bin_dir))
    return node, device


def _start_options(cfg: TrainConfig, run_dir: Path, resume: bool) -> dict[str, Any]:
    """What every rank must be given alike: the options but the devices and the corpus's path (a node's
    own), the corpus itself (its vocabulary and splits), and whether to resume; and, apart, whether this
    node has the run's config.json (where --resume takes the options left out)."""
    manifest = load_manifest(Path(cfg.bin_dir))
    options = {k: v for k, v in asdict(cfg).items() if k not in ("devices", "bin_dir")}
    # (the counts training reads: a BIN made before the manifest counted dropped pairs by rule is the same corpus)
    splits = {name: {key: split[key] for key in SPLIT_KEYS} for name, split in manifest["splits"].items()}
    corpus = {"vocab_hash": manifest["vocab_hash"], "splits": splits}
    options = {**options, "corpus": corpus, "resume": resume}
    if resume and cfg.mode in RANK_MODES:  # every rank loads its node's last.pt: the same one
        saved = read_checkpoint(checkpoint_path(run_dir, "last"), mmap=True)
        options["checkpoint"] = {"updates": saved["server"]["updates"], "crc32": saved.get("params_crc32")}
    return json.loads(json.dumps({**options, RUN_CONFIG: (run_dir / "config.json").is_file()}))  # (as read)


RUN_CONFIG = "run config"  # (not an option: not compared)


def _agree_to_start(store: Any, rank: int, world: int, problem: str | None, options: dict | None) -> None:
    """Each rank posts its problem (a one-line error, or None) and its options in the group's store, and
    reads every rank's: none starts unless all can, with rank 0's options. UserError: this rank's problem,
    the first other rank's, or the options that differ from rank 0's."""
    board = dist.PrefixStore("async-nmt/start/", store)
    host = socket.gethostname()
    board.set(str(rank), json.dumps({"host": host, "problem": problem, "options": options}))
    try:
        board.wait([str(r) for r in range(world)], JOIN_TIMEOUT)
        posts = [json.loads(board.get(str(r))) for r in range(world)]
    except RuntimeError as err:  # (torch's store errors are RuntimeErrors)
        raise UserError(f"rank {rank} on {host}: not every one of the {world} ranks started within "
                        f"{JOIN_TIMEOUT.seconds // 60} minutes ({reason(err)})") from None  # fmt: skip
    board.set(f"read/{rank}", "1")
    if rank == 0:  # the store may live in this process: it ends once the others have read it
        with contextlib.suppress(RuntimeError):
            board.wait([f"read/{r}" for r in range(world)], datetime.timedelta(seconds=30))
    if problem is not None:
        raise UserError(problem)
    if int(os.environ.get("LOCAL_RANK", 0)) > 0 and not _starts_alike(posts):  # one line a node says it
        raise SystemExit(2)
    failed = [(r, post) for r, post in enumerate(posts) if post["problem"] is not None]
    if failed:
        r, post = failed[0]
        raise UserError(f"rank {r} on {post['host']} cannot start ({post['problem']}), so neither does rank {rank}")
    first = posts[0]["options"]
    for r, post in enumerate(posts):  # every rank stops where one differs (it alone would leave them waiting)
        differ = [name for name in first if name != RUN_CONFIG and first[name] != post["options"].get(name)]
        if differ:
            shown = ", ".join(f"{_option(name)} {_shown(post['options'].get(name))} (rank 0: {_shown(first[name])})"
                              for name in differ)  # fmt: skip
            if "checkpoint" in differ:
                why = "; copy rank 0's run folder to that node"
            elif first["resume"] and not post["options"][RUN_CONFIG]:
                why = ("; its node has no copy of the run's config.json, where --resume takes the options that its "
                       "command line leaves out: give them there")  # fmt: skip
            else:
                why = "; start every rank alike (only --devices and the corpus's path may differ)"
            raise UserError(f"rank {r} on {post['host']} was given other options than rank 0: {shown}{why}")


def _starts_alike(posts: list[dict[str, Any]]) -> bool:
    def compared(options: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in options.items() if name != RUN_CONFIG}

    return all(post["problem"] is None and compared(post["options"]) == compared(posts[0]["options"]) for post in posts)


def _option(name: str) -> str:
    names = {"corpus": "the corpus (BIN)", "resume": "--resume", "checkpoint": "its node's last.pt"}
    return names.get(name, "--" + name.replace("_", "-"))


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "updates" in value:
        return f"at update {value['updates']} (parameters' CRC-32 {value['crc32']})"
    return "(another)" if isinstance(value, dict) else str(value)


def _join_group(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, rank: int, world: int,
                node: list[str], device: str, store: Any) -> dict[str, Any] | None:  # fmt: skip
    # the async modes' messages go from any worker to rank 0, which NCCL cannot receive: gloo, host memory
    dist.init_process_group(backend(node) if cfg.mode in RANK_MODES else "gloo", store=store, rank=rank,
                            world_size=world, timeout=TIMEOUT)  # fmt: skip
    # on an error the group is left as it is (tearing it down may wait for peers that are gone)
    if cfg.mode in ASYNC_MODES and rank > 0:
        run_worker_rank(cfg, rank, torch.device(device))
        summary = None
    elif cfg.mode in RANK_MODES:  # Ctrl-C or SIGTERM: the ranks agree to stop after the same step
        interrupt = threading.Event()
        said = stop_notice(cfg.mode) if rank == 0 else None
        with processes.stop_signals_set(interrupt, said):
            summary = run_trainer(cfg, run_dir, resume, progress, rank, world, interrupt)
    else:  # the async server: SIGTERM (the agent passes a scheduler's on) stops the run as Ctrl-C does
        with sigterm_interrupts():
            summary = run_trainer(cfg, run_dir, resume, progress, rank, world)
    # The async modes' rank 0 leaves the group as it is, and its process ends at once (errors.exit_at_once):
    # a worker still computing at the end may yet send to the receive rank 0 has posted, and a gloo group
    # destroyed under a posted receive aborts the process when that message comes; a group left alone
    # takes it, or the worker finds rank 0 gone and leaves quietly.
    if cfg.mode in RANK_MODES or rank > 0:
        dist.destroy_process_group()
    return summary
