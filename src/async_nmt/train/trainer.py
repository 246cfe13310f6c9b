"""A training run: the run folder, the update loop, validation, checkpoints, events, resume, stop rules.

The trainer drives a `modes.Workers` object (where the pushes come from) and a `ParamServer` (how pushes
become updates), and never asks which mode runs. Validations and checkpoints are fences: the workers are
allowed to run up to the next one, and the trainer validates and saves a server that is between updates.
In a sync group every rank runs a trainer; rank 0 (the leader) writes the run folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from async_nmt.config import TrainConfig, from_dict, model_config
from async_nmt.data.batches import BatchStream
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.data.vocab import load_vocab
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import TrainingDiverged, UserError
from async_nmt.model.transformer import Transformer
from async_nmt.train import checkpoint as ckpt
from async_nmt.train.checkpoint import check_run_dir
from async_nmt.train.events import EventLog, TrainingClock, staleness_stats, truncate_events
from async_nmt.train.modes import Workers, merge_histograms, pushes_per_update, uses_processes, worker_devices
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.step import StepStats, flatten_parameters
from async_nmt.train.summary import print_summary
from async_nmt.train.validate import Validator

LOG_EVERY = 50  # updates between `train` events (and progress-bar figures)


class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, log_every: int = LOG_EVERY, rank: int = 0, world: int = 1,
        interrupt: Any = None,
    ):  # fmt: skip
        self.cfg, self.run_dir, self.log_every = cfg, run_dir, log_every
        self.rank, self.leader = rank, rank == 0
        bin_dir = Path(cfg.bin_dir)
        self.manifest = load_manifest(bin_dir)
        devices = worker_devices(cfg)
        self.device = resolve_device(devices[rank])
        self.amp_dtype = amp_dtype_for(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        overrides = {} if cfg.dropout is None else {"dropout": cfg.dropout}
        self.model_cfg = model_config(cfg.preset, self.manifest["vocab_size"], **overrides)
        self.model = Transformer(self.model_cfg).to(self.device)
        self.flat = flatten_parameters(self.model)
        if cfg.compile:  # the encoder-decoder stack; the chunked output layer and loss stay eager
            self.model.hidden = torch.compile(self.model.hidden)
        train_split = load_split(bin_dir, "train")
        self.streams = [
            BatchStream(train_split, cfg.max_tokens, self.model_cfg.max_positions, cfg.seed, w, cfg.workers)
            for w in range(cfg.workers)
        ]
        for stream in self.streams:
            stream.pin = self.device.type == "cuda"
        self.interrupted = False  # a sync group agreed to stop on Ctrl-C
        self.saved_at: int | None = None  # update of the last checkpoint written
        server_options = dict(accum=pushes_per_update(cfg), peak_lr=cfg.lr, warmup=cfg.warmup,
                              clip_norm=cfg.clip_norm, betas=cfg.adam_betas, eps=cfg.adam_eps)  # fmt: skip
        self.workers: Workers
        if cfg.simulate:
            from async_nmt.train.modes.simulated import SimulatedWorkers

            # emulated workers keep parameters of their own; the master is apart
            self.server = ParamServer(self.flat.data.clone(), **server_options)
            speeds = cfg.worker_speeds or [1.0] * cfg.workers
            self.workers = SimulatedWorkers(
                self.model, self.flat, self.server, self.streams, speeds, cfg.mode == "sync", cfg.local_accum,
                cfg.label_smoothing, self.amp_dtype,
            )  # fmt: skip
        elif world > 1:
            from async_nmt.train.modes.sync import DistributedSync

            self.server = ParamServer(self.flat.data, **server_options)  # this rank's replica, in place
            self.workers = DistributedSync(self, rank, world, interrupt)
        elif uses_processes(cfg):
            from async_nmt.train.modes.asynchronous import ProcessWorkers

            shard_devices = [torch.device(d) for d in dict.fromkeys(devices)]  # one shard per device
            shards = cfg.shards or len(shard_devices)
            self.server = ParamServer(self.flat.data, **server_options, shards=shards, devices=shard_devices,
                                      shared=True)  # fmt: skip
            self.workers = ProcessWorkers(self, devices)
        else:
            from async_nmt.train.modes.local import LocalWorker

            self.server = ParamServer(self.flat.data, **server_options)  # trained in place
            self.workers = LocalWorker(self)
        self.validator = Validator(bin_dir, cfg.max_tokens, self.model_cfg.max_positions, cfg.valid_max_sentences)
        self.vocab_file = bin_dir / "spm.model"
        self.sp = load_vocab(self.vocab_file)
        self.tokens = 0
        self.staleness: list[int] = []  # histogram of the pushes since the last `train` event
        self.best: dict[str, float] | None = None
        self.last_valid: dict[str, float] | None = None
        self.validated_at: int | None = None
        self.clock = TrainingClock()
        self._wall_start = time.perf_counter()
        self.events: EventLog

    def open_run(self, resume: bool) -> None:
        """Start the run folder afresh (replacing what is there), or resume it from checkpoints/last.pt."""
        events_path = self.run_dir / "events.jsonl"
        if resume:
            state = self._load(ckpt.checkpoint_path(self.run_dir, "last"))
            self.saved_at = self.updates
            self.clock = TrainingClock(state["train_s"])
            self._wall_start = time.perf_counter() - state["wall_s"]
            if self.leader:
                truncate_events(events_path, state["event_lines"])
        if not self.leader:
            return
        if not resume:
            if self.run_dir.exists():
                shutil.rmtree(self.run_dir)
            self.run_dir.mkdir(parents=True)
            self._write_config()
        self.events = EventLog(events_path)

    # ------------------------------------------------------------------ run folder and checkpoints
    def _write_config(self) -> None:
        shutil.copyfile(self.vocab_file, self.run_dir / "spm.model")
        config = {"train": asdict(self.cfg), "model": asdict(self.model_cfg), "corpus": self._corpus_info()}
        (self.run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _corpus_info(self) -> dict[str, Any]:
        return {k: self.manifest[k] for k in ("src", "tgt", "vocab_size", "vocab_hash")}

    def _state(self) -> dict[str, Any]:
        return {
            "model_config": asdict(self.model_cfg),
            "train_config": asdict(self.cfg),
            "corpus": self._corpus_info(),
            "vocab_model": self.vocab_file.read_bytes(),
            "params": self.server.gather(),
            "server": self.server.state_dict(),
            "tokens": self.tokens,
            "data": [stream.state_dict() for stream in self.streams],
            "workers": self.workers.state_dict(),
            "rng": ckpt.rng_state(),
            "train_s": self.clock.seconds,
            "wall_s": self.wall_s,
            "best": self.best,
            "event_lines": self.events.lines + 1,  # the checkpoint event that follows belongs to it
        }

    def _load(self, path: Path) -> dict[str, Any]:
        state = ckpt.read_checkpoint(path)
        if state["corpus"]["vocab_hash"] != self.manifest["vocab_hash"]:
            raise UserError(f"{path}: trained with another vocabulary than {self.cfg.bin_dir}/spm.model")
        if state["model_config"] != asdict(self.model_cfg):
            saved = from_dict(type(self.model_cfg), state["model_config"])
            raise UserError(f"{path}: model configuration differs from the options given (checkpoint: {saved})")
        if len(state["data"]) != len(self.streams):
            raise UserError(f"{path}: saved with {len(state['data'])} workers, not {len(self.streams)}")
        if self.cfg.simulate and state.get("workers") is None:
            raise UserError(f"{path}: not saved by a --simulate run")
        if not self.cfg.simulate and state.get("workers") is not None:
            raise UserError(f"{path}: saved by a --simulate run; resume it with --simulate")
        self.server.load_params(state["params"])
        self.server.load_state_dict(state["server"])
        self.tokens = state["tokens"]
        for stream, position in zip(self.streams, state["data"], strict=True):
            stream.load_state_dict(position)
        self.workers.load_state_dict(state["workers"])
        self.best = state["best"]
        ckpt.set_rng_state(state["rng"])
        return state

    def save(self, best: bool = False) -> None:
        if not self.leader:
            return
        with self.clock.paused():
            last = ckpt.checkpoint_path(self.run_dir, "last")
            ckpt.save_checkpoint(self._state(), last)
            self.saved_at = self.updates
            if best:
                tmp = last.with_name("best.pt.tmp")
                shutil.copyfile(last, tmp)
                tmp.replace(last.with_name("best.pt"))
            self._event("checkpoint", path=str(last.relative_to(self.run_dir)), best=best)

    # ------------------------------------------------------------------ events
    @property
    def updates(self) -> int:
        return self.server.updates

    @property
    def pushes(self) -> int:
        return self.server.pushes

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall_start

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        if not self.leader:
            return fields
        return self.events.write(
            kind,
            train_s=self.clock.seconds,
            wall_s=self.wall_s,
            updates=self.updates,
            pushes=self.pushes,
            tokens=self.tokens,
            epoch=round(self.streams[0].epoch_progress, 4),
            **self._predicted(),
            **fields,
        )

    def _predicted(self) -> dict[str, float]:
        predicted = getattr(self.workers, "predicted_s", None)
        return {} if predicted is None else {"predicted_s": predicted}

    def _worker_pushes(self) -> dict[str, list[int]]:
        pushes = getattr(self.workers, "worker_pushes", None)
        return {} if pushes is None else {"worker_pushes": list(pushes)}

    def validate(self) -> dict[str, float] | None:
        """Valid loss and BLEU of the master parameters, then a checkpoint (rank 0 only)."""
        if not self.leader:
            return None
        with self.clock.paused():
            self.server.pull(self.flat.data)  # evaluate the master parameters (a no-op for one worker)
            result = self.validator(self.model, self.sp, self.amp_dtype)
            if not math.isfinite(result["valid_loss"]):
                self._diverged(f"the valid loss is {result['valid_loss']}")
            improved = self.best is None or (result["bleu"], -result["valid_loss"]) > (
                self.best["bleu"],
                -self.best["valid_loss"],
            )
            if improved:
                self.best = {"updates": self.updates, **result}
            self.last_valid, self.validated_at = result, self.updates
            self._event("valid", **result, best_bleu=self.best["bleu"])
            self.save(best=improved)
        return result

    # ------------------------------------------------------------------ the loop
    def update(self) -> StepStats:
        """Run until the server has taken at least one more update; the statistics of its pushes."""
        stats, staleness = self.workers.advance()
        return self._count(stats, staleness)

    def _count(self, stats: StepStats, staleness: list[int]) -> StepStats:
        self.tokens += stats.tokens
        self.staleness = merge_histograms(self.staleness, staleness)
        return stats

    def should_stop(self) -> bool:
        cfg = self.cfg
        if cfg.max_updates > 0 and self.updates >= cfg.max_updates:
            return True
        wish = (
            (cfg.max_epochs > 0 and self.streams[0].epoch_progress >= cfg.max_epochs)
            or (self.leader and cfg.max_time > 0 and self.clock.seconds >= cfg.max_time)  # rank 0's clock
        )
        return self.workers.agree_stop(wish) or self.interrupted

    def _next_fence(self) -> int:
        """The next update at which the server must be quiet: a validation, a checkpoint, or the end."""
        cfg, fences = self.cfg, [2**40]
        for every in (cfg.valid_every, cfg.save_every):
            if every > 0:
                fences.append((self.updates // every + 1) * every)
        if cfg.max_updates > 0:
            fences.append(cfg.max_updates)
        return min(fences)

    def run(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self.updates > 0
        with self.clock.paused():  # starting worker processes is not training
            self.workers.start()
        self._event(
            "start", mode=cfg.mode, workers=cfg.workers, accum=cfg.accum, local_accum=cfg.local_accum,
            lr=cfg.lr, warmup=cfg.warmup, max_tokens=cfg.max_tokens, preset=cfg.preset, device=str(self.device),
            precision="bf16" if self.amp_dtype else "fp32", params=self.flat.numel(), resumed=resumed,
        )  # fmt: skip
        bar = tqdm(
            total=cfg.max_updates or None, initial=self.updates, unit="upd", dynamic_ncols=True,
            disable=not progress, file=sys.stderr, desc="train",
        )  # fmt: skip
        interval, interval_start = StepStats(), self.clock.seconds
        try:
            while not self.should_stop():
                self.workers.allow(self._next_fence())
                before = self.updates
                interval.add(self.update())
                if not math.isfinite(interval.loss):
                    self._diverged(f"the training loss is {interval.loss}")
                stopping = self.should_stop()
                if stopping:  # a time or epoch limit: let the pushes in flight finish their update
                    interval.add(self._count(*self.workers.drain()))
                bar.update(self.updates - before)
                if self.updates // self.log_every > before // self.log_every or stopping:
                    elapsed = max(self.clock.seconds - interval_start, 1e-9)
                    tokens = max(interval.tokens, 1)
                    event = self._event(
                        "train", loss=interval.loss / tokens, nll=interval.nll / tokens,
                        lr=self.server.lr, grad_norm=self.server.grad_norm, tok_per_s=interval.tokens / elapsed,
                        **staleness_stats(self.staleness), **self._worker_pushes(),
                    )  # fmt: skip
                    if self.leader:
                        bar.set_postfix(loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}",
                                        tok_s=f"{event['tok_per_s']:.0f}")  # fmt: skip
                    interval, interval_start, self.staleness = StepStats(), self.clock.seconds, []
                if self.interrupted:
                    break
                if cfg.valid_every > 0 and self.updates % cfg.valid_every == 0:
                    result = self.validate()
                    if result is not None:
                        bar.write(
                            f"update {self.updates}: valid loss {result['valid_loss']:.3f}, BLEU {result['bleu']:.2f}"
                        )
                elif cfg.save_every > 0 and self.updates % cfg.save_every == 0:
                    self.save()
            if self.interrupted:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            self._stop_interrupted()
        except TrainingDiverged:
            bar.close()
            with self.clock.paused():
                self.workers.close()
            self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False, diverged=True)
            raise
        except BaseException:
            bar.close()
            self.workers.close()
            raise
        bar.close()
        if self.validated_at != self.updates:
            self.validate()
        with self.clock.paused():
            self.workers.close()
        summary = self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False)
        if self.leader:
            self.events.close()
        return summary

    def _diverged(self, what: str) -> None:
        saved = ckpt.checkpoint_path(self.run_dir, "last")
        kept = f"{saved} (update {self.saved_at}) is kept" if self.saved_at is not None else "no checkpoint was saved"
        raise TrainingDiverged(
            f"training diverged: {what} at update {self.updates}; {kept}. Try a lower --lr, or --clip-norm"
        )

    def _stop_interrupted(self) -> None:
        """Ctrl-C: finish the pushes in flight, save a checkpoint, write the end event, exit 130."""
        try:
            if not self.interrupted:  # a sync group has agreed already; its last step is complete
                self._count(*self.workers.drain())
            self.save()
            self._event("end", interrupted=True)
        finally:
            self.workers.close()
        if self.leader:
            print(f"interrupted: saved {ckpt.checkpoint_path(self.run_dir, 'last')}", file=sys.stderr)
            raise SystemExit(130) from None


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log_every: int = LOG_EVERY,
) -> dict | None:
    """Run (or resume) training as `cfg` says, into `run_dir`; returns the `end` event (None when a group of
    sync ranks ran it: rank 0 wrote it to the events)."""
    from async_nmt.train.modes import sync

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun started this process as one rank
        return sync.join_torchrun(cfg, run_dir, resume, force, progress, log_every)
    check_run_dir(run_dir, resume, force)
    if uses_processes(cfg) and cfg.mode == "sync":
        sync.launch_ranks(cfg, run_dir, resume, progress, log_every, worker_devices(cfg))
        return None
    trainer = Trainer(cfg, run_dir, log_every=log_every)  # reads everything it needs before the folder changes
    trainer.open_run(resume)
    summary = trainer.run(progress=progress)
    if progress:
        print_summary(summary, trainer)
    return summary
