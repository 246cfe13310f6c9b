"""A training run: the run folder, the update loop, validation, checkpoints, events, resume, stop rules.

One worker computes gradients (`step.train_step`) and pushes them; the update rule of the chosen mode
decides when pushes become an optimizer update (`modes.pushes_per_update`). The multi-worker modes
(sync all-reduce, async parameter server) plug in at that seam.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from async_nmt.config import TrainConfig, from_dict, model_config
from async_nmt.data.batches import BatchStream
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.data.vocab import load_vocab
from async_nmt.devices import bf16_supported, resolve_device
from async_nmt.errors import UserError
from async_nmt.model.transformer import Transformer
from async_nmt.train import checkpoint as ckpt
from async_nmt.train.events import EventLog, TrainingClock, truncate_events
from async_nmt.train.modes import pushes_per_update
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.simulated import SimulatedWorkers
from async_nmt.train.step import StepStats, flatten_parameters, train_step
from async_nmt.train.validate import Validator

LOG_EVERY = 50  # updates between `train` events (and progress-bar figures)


def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite an existing run unless --resume or --force says what to do with it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a run folder")
    if resume:
        if not ckpt.checkpoint_path(run_dir, "last").is_file():
            raise UserError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise UserError(f"{run_dir}: run folder exists; use --resume to continue it or --force to start over")


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, log_every: int = LOG_EVERY):
        self.cfg, self.run_dir, self.log_every = cfg, run_dir, log_every
        bin_dir = Path(cfg.bin_dir)
        self.manifest = load_manifest(bin_dir)
        self.device = resolve_device(cfg.devices[0] if cfg.devices else None)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(self.device))
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
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
        # one worker trains the master parameters in place; emulated workers keep copies of their own
        master = self.flat.data.clone() if cfg.simulate else self.flat.data
        self.server = ParamServer(
            master, pushes_per_update(cfg), cfg.lr, cfg.warmup, cfg.clip_norm, cfg.adam_betas, cfg.adam_eps
        )
        self.workers: LocalWorker | SimulatedWorkers
        if cfg.simulate:
            speeds = cfg.worker_speeds or [1.0] * cfg.workers
            self.workers = SimulatedWorkers(
                self.model, self.flat, self.server, self.streams, speeds, cfg.mode == "sync", cfg.local_accum,
                cfg.label_smoothing, self.amp_dtype,
            )  # fmt: skip
        else:
            self.workers = LocalWorker(self, self.streams[0])
        self.validator = Validator(bin_dir, cfg.max_tokens, self.model_cfg.max_positions, cfg.valid_max_sentences)
        self.vocab_file = bin_dir / "spm.model"
        self.sp = load_vocab(self.vocab_file)
        self.tokens = 0
        self.staleness: list[int] = []  # of the pushes since the last `train` event
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
            self.clock = TrainingClock(state["train_s"])
            self._wall_start = time.perf_counter() - state["wall_s"]
            truncate_events(events_path, state["event_lines"])
        else:
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
            "params": self.server.params.cpu(),
            "server": self.server.state_dict(),
            "tokens": self.tokens,
            "data": [stream.state_dict() for stream in self.streams],
            "workers": self.workers.state_dict() if isinstance(self.workers, SimulatedWorkers) else None,
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
        self.server.params.copy_(state["params"])
        self.server.load_state_dict(state["server"])
        self.tokens = state["tokens"]
        for stream, position in zip(self.streams, state["data"], strict=True):
            stream.load_state_dict(position)
        if isinstance(self.workers, SimulatedWorkers):
            if state.get("workers") is None:
                raise UserError(f"{path}: not saved by a --simulate run")
            self.workers.load_state_dict(state["workers"])
        elif state.get("workers") is not None:
            raise UserError(f"{path}: saved by a --simulate run; resume it with --simulate")
        self.best = state["best"]
        ckpt.set_rng_state(state["rng"])
        return state

    def save(self, best: bool = False) -> None:
        with self.clock.paused():
            last = ckpt.checkpoint_path(self.run_dir, "last")
            ckpt.save_checkpoint(self._state(), last)
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
        if isinstance(self.workers, SimulatedWorkers):
            return {"predicted_s": self.workers.predicted_s}
        return {}

    def validate(self) -> dict[str, float]:
        with self.clock.paused():
            self.server.pull(self.flat.data)  # evaluate the master parameters (a no-op for one worker)
            result = self.validator(self.model, self.sp, self.amp_dtype)
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
        """Run pushes until the server has taken one more update."""
        stats = StepStats()
        target = self.server.updates + 1
        while self.server.updates < target:
            push_stats, staleness = self.workers.push()
            stats.add(push_stats)
            self.staleness.append(staleness)
        self.tokens += stats.tokens
        return stats

    def should_stop(self) -> bool:
        cfg = self.cfg
        return (
            (cfg.max_updates > 0 and self.updates >= cfg.max_updates)
            or (cfg.max_epochs > 0 and self.streams[0].epoch_progress >= cfg.max_epochs)
            or (cfg.max_time > 0 and self.clock.seconds >= cfg.max_time)
        )

    def run(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self.updates > 0
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
                interval.add(self.update())
                bar.update(1)
                if self.updates % self.log_every == 0 or self.should_stop():
                    elapsed = max(self.clock.seconds - interval_start, 1e-9)
                    event = self._event(
                        "train", loss=interval.loss / interval.tokens, nll=interval.nll / interval.tokens,
                        lr=self.server.lr, grad_norm=self.server.grad_norm, tok_per_s=interval.tokens / elapsed,
                        **staleness_stats(self.staleness),
                    )  # fmt: skip
                    bar.set_postfix(
                        loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}", tok_s=f"{event['tok_per_s']:.0f}"
                    )
                    interval, interval_start, self.staleness = StepStats(), self.clock.seconds, []
                if cfg.valid_every > 0 and self.updates % cfg.valid_every == 0:
                    result = self.validate()
                    bar.write(
                        f"update {self.updates}: valid loss {result['valid_loss']:.3f}, BLEU {result['bleu']:.2f}"
                    )
                elif cfg.save_every > 0 and self.updates % cfg.save_every == 0:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            self.save()
            self._event("end", interrupted=True)
            print(f"interrupted: saved {ckpt.checkpoint_path(self.run_dir, 'last')}", file=sys.stderr)
            raise SystemExit(130) from None
        bar.close()
        if self.validated_at != self.updates:
            self.validate()
        summary = self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False)
        self.events.close()
        return summary


class LocalWorker:
    """The only worker of a one-worker run: it trains the server's parameters in place (nothing to pull)."""

    def __init__(self, trainer: Trainer, stream: BatchStream):
        self.trainer, self.stream = trainer, stream

    def push(self) -> tuple[StepStats, int]:
        t = self.trainer
        t.flat.grad.zero_()
        stats = StepStats()
        for _ in range(t.cfg.local_accum):
            stats.add(train_step(t.model, self.stream.next().to(t.device), t.cfg.label_smoothing, t.amp_dtype))
        return stats, t.server.push(t.flat.grad, stats.tokens, t.server.updates)


def staleness_stats(values: list[int]) -> dict[str, Any]:
    """Mean, max and histogram (counts of staleness 0, 1, ...) of pushes' staleness."""
    if not values:
        return {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": []}
    hist = [0] * (max(values) + 1)
    for value in values:
        hist[value] += 1
    return {"staleness_mean": sum(values) / len(values), "staleness_max": max(values), "staleness_hist": hist}


def print_summary(summary: dict[str, Any], trainer: Trainer) -> None:
    table = Table(title=f"run {trainer.run_dir}", show_header=False)
    rows = [
        ("mode", f"{trainer.cfg.mode} (workers {trainer.cfg.workers})"),
        ("updates", f"{summary['updates']:,}"),
        ("epochs", f"{summary['epoch']:.2f}"),
        ("target tokens", f"{summary['tokens']:,}"),
        ("training time", f"{summary['train_s']:.0f} s (wall {summary['wall_s']:.0f} s)"),
        ("tokens/s", f"{summary['tokens'] / max(summary['train_s'], 1e-9):,.0f}"),
    ]
    if "predicted_s" in summary:
        rows.append(("predicted time", f"{summary['predicted_s']:.0f} s on {trainer.cfg.workers} real devices"))
    if trainer.last_valid:
        rows.append(
            (
                "last valid",
                f"loss {trainer.last_valid['valid_loss']:.3f}, BLEU {trainer.last_valid['bleu']:.2f}",
            )
        )
    if trainer.best:
        rows.append(("best valid BLEU", f"{trainer.best['bleu']:.2f} (update {trainer.best['updates']})"))
    rows.append(("checkpoints", str(trainer.run_dir / "checkpoints")))
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=True).print(table)


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    log_every: int = LOG_EVERY,
) -> dict:
    """Run (or resume) training as `cfg` says, into `run_dir`; returns the `end` event."""
    check_run_dir(run_dir, resume, force)
    trainer = Trainer(cfg, run_dir, log_every=log_every)  # reads everything it needs before the folder changes
    trainer.open_run(resume)
    summary = trainer.run(progress=progress)
    if progress:
        print_summary(summary, trainer)
    return summary
