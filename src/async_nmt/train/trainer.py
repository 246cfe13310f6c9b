"""A training run: the run folder, the update loop, validation, checkpoints, events, resume, stop rules.

The trainer drives a `modes.Workers` object (where the pushes come from) and a `ParamServer` (how pushes
become updates), whatever the mode; it asks which mode runs only for what it prints (a warning of its
options, the staleness of the async modes' pushes). Validations and checkpoints are fences: the workers are
allowed to run up to the next one, and the trainer validates and saves a server that is between updates.
In a sync group every rank runs a trainer; rank 0 (the leader) writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from async_nmt.config import (
    ASYNC_MODES,
    DROPOUTS,
    VOCAB_NAME,
    CorpusInfo,
    ModelConfig,
    RunConfig,
    TrainConfig,
    dropout_overrides,
    from_dict,
    model_config,
    save_json,
    torchrun_rank,
)
from async_nmt.data.batches import budget_warning, epochs_done, worker_streams
from async_nmt.data.binarize import length_warning, load_manifest, load_split
from async_nmt.data.vocab import load_vocab, normalizes_alike, vocab_matches
from async_nmt.devices import amp_dtype_for, resolve_device
from async_nmt.errors import (
    SecondInterrupt,
    TrainingDiverged,
    UserError,
    failure_line,
    held_interrupts,
    stop_hint,
)
from async_nmt.model.checkpoint import (
    best_save,
    checkpoint_path,
    kept_checkpoints,
    kept_path,
    kept_update,
    lost_best,
    read_checkpoint,
    vocab_from_checkpoint,
    whole_archive,
)
from async_nmt.progress import ProgressBar
from async_nmt.provenance import device_name, versions
from async_nmt.score import tokenizer_warning
from async_nmt.train import checkpoint as ckpt
from async_nmt.train.events import (
    EventLog,
    TrainingClock,
    complete_lines,
    read_events,
    staleness_stats,
    truncate_events,
)
from async_nmt.train.lock import clear_run_dir
from async_nmt.train.modes import MODE_OPTIONS, build_workers, check_mode_options, worker_devices
from async_nmt.train.modes.diloco import partial_round_warning
from async_nmt.train.modes.paramserver import ParamServer
from async_nmt.train.modes.workers import ModeContext, merge_histograms
from async_nmt.train.processes import uninterrupted
from async_nmt.train.step import StepStats, build_model
from async_nmt.train.validate import Validator

DIVERGED_UNIFORMS = 10  # a training loss this many times ln V (a uniform guess's) has diverged
# printed at once where Ctrl-C comes during an update computed in this process, which finishes it first
UPDATE_HELD = "interrupted: saving after the update under way"  # (with `stop_hint`, as PUSHES_HELD)
# and where worker processes compute the pushes, as the trainer waits for those in flight
PUSHES_HELD = "interrupted: saving after the pushes in flight"
# (a scratch run, which its caller deletes, says "stopping", not "saving": `Trainer.scratch`)
SAVE_HELD = "interrupted: finishing the save under way"  # (it is the stop's save: not made again)


def endless_warning(cfg: TrainConfig) -> str | None:
    """Where no limit stops the run: it trains until Ctrl-C (as the options allow; it began without a word)."""
    if cfg.max_updates or cfg.max_epochs or cfg.max_time or cfg.patience:
        return None
    return ("warning: no --max-updates, --max-epochs, --max-time or --patience: the run trains until Ctrl-C or "
            "SIGTERM, which save it (--resume goes on from there)")  # fmt: skip


def better(result: dict[str, float], best: dict[str, float]) -> bool:
    """Whether a validation's `result` beats the `best` so far: a higher BLEU as it is shown (2 decimals),
    else, of BLEUs shown alike, a lower valid loss. (BLEU higher by 4e-7, shown and logged as the same,
    chose a checkpoint of a far higher loss.)"""
    return (round(result["bleu"], 2), -result["valid_loss"]) > (round(best["bleu"], 2), -best["valid_loss"])


class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, rank: int = 0, world: int = 1,
        interrupt: Any = None, scratch: bool = False,
    ):  # fmt: skip
        self.cfg, self.run_dir = cfg, run_dir
        self.scratch = scratch  # the caller deletes the run folder (`launch.train`'s): its saves are not told of
        self.rank, self.leader = rank, rank == 0
        # a rank spawned by `launch_ranks`: its supervisor names a failure (a peer's death fails this rank's
        # all-reduce, which is no cause) and logs it as the run's end (`events.log_failure`)
        self.supervised = False
        self.stop_saved = False  # the stop of a Ctrl-C has saved and written its end event
        self.stopped_after_end = False  # a Ctrl-C came once the run was done (its closing save): it ended finished
        self.progress = False  # set by run()
        bin_dir = Path(cfg.bin_dir)
        self.manifest = load_manifest(bin_dir)
        self.vocab_file = bin_dir / VOCAB_NAME
        self.sp = load_vocab(self.vocab_file)
        if not vocab_matches(self.sp, self.vocab_file, self.manifest["vocab_hash"]) or (
            self.sp.get_piece_size() != self.manifest["vocab_size"]
        ):
            raise UserError(f"{self.vocab_file}: not the vocabulary {bin_dir} was preprocessed with (its "
                            f"manifest.json says otherwise); run `nmt preprocess` again")  # fmt: skip
        devices = worker_devices(cfg)
        self.device = resolve_device(devices[rank])
        self.devices = devices
        self.amp_dtype = amp_dtype_for(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model_cfg = model_config(cfg.preset, self.manifest["vocab_size"], **dropout_overrides(cfg))
        self.model, self.flat = build_model(self.model_cfg, self.device)  # compiled where it computes: build_workers
        train_split = load_split(bin_dir, "train")
        self.streams = worker_streams(train_split, cfg.max_tokens, self.model_cfg.max_positions, cfg.seed, cfg.workers,
                                      cfg.batch_sort)  # fmt: skip
        for stream in self.streams:
            stream.pin = self.device.type == "cuda"
        share = min(len(stream) for stream in self.streams)  # a worker's batches of an epoch
        if cfg.local_accum > share:  # (10^8 ran and never pushed; --max-time is read between updates)
            where = "each worker takes in" if cfg.workers > 1 else "of"
            raise UserError(f"--local-accum {cfg.local_accum} is more than the {share} batches {where} an epoch at "
                            f"--max-tokens {cfg.max_tokens}: a push would sum them more than once; give a lower "
                            "--local-accum")  # fmt: skip
        self.saved_at: int | None = None  # update of the last checkpoint written
        self.saved_tokens = -1  # the tokens it holds (a stop at its update whose drain adds none saves no more)
        self.workers = build_workers(
            ModeContext(cfg, self.model_cfg, self.model, self.flat, self.streams, self.device, self.amp_dtype,
                        devices, run_dir, rank, world, interrupt)
        )  # fmt: skip
        self.server = self.workers.server
        self.validator = Validator(bin_dir, cfg.max_tokens, self.model_cfg.max_positions, cfg.valid_max_sentences,
                                   cfg.valid_beam)  # fmt: skip
        self.valid_crc32 = self.validator.fingerprint  # the validation sentences, which a resume must keep
        self.tokens = 0
        self.staleness: list[int] = []  # histogram of the pushes since the last `train` event
        # the pushes since the last `train` event and when they began on the training clock (None: at the start
        # of `run`); a checkpoint holds them, so that a run killed after it logs them at its next event
        self.interval, self.interval_start = StepStats(), None
        self.best: dict[str, float] | None = None
        self.best_lost = False  # best.pt was gone at a resume (`_check_best_save`), and no better save came since
        self.last_valid: dict[str, float] | None = None
        self.validated_at: int | None = None
        # validations since the best one, which --patience counts (not updates over --valid-every: a resume with
        # another --valid-every, or after a --max-time stop validated off the grid, stopped late or early)
        self.valids_since_best = 0
        # the limit that made this process first wish to stop: a sync group trains on to the step its ranks
        # agree on, and diloco to the end of the round, and a better validation there hid --patience
        self.stop_wish: str | None = None
        self.resumed = False  # from a checkpoint (at update 0 too: one saved by Ctrl-C as the workers started)
        self.clock = TrainingClock()
        self.held_end = b""  # the end event of the session a resume goes on from (`truncate_events`)
        self._wall_start = time.perf_counter()
        self.events: EventLog

    def open_run(self, resume: bool, may_skip: bool = True) -> bool:
        """Start the run folder afresh (replacing what is there), or resume it from checkpoints/last.pt.
        False, with the folder untouched, where a resumed run already stands at a limit that stops it (and
        `may_skip`: no worker ranks wait for this trainer)."""
        events_path = self.run_dir / "events.jsonl"
        if resume:
            state = self._load(checkpoint_path(self.run_dir, "last"))
            self.saved_at, self.resumed = self.updates, True
            self.clock = TrainingClock(state["train_s"])
            self._wall_start -= state["wall_s"]  # (this session's own time since it began goes on counting)
            # at its limit, its closing validation done, its events written: left as it is (not a run rewound
            # to an older save at its limit: what it abandons is cut and deleted, as at any rewind). Rank 0
            # decides for a group, before it changes the folder, and the others take its word: each deciding
            # alone (from another node's copy of the folder, or on a clock that passed --max-time as it waited
            # for the others) a rank could skip while the rest trained
            limit = None
            save_event = self._save_event(events_path, state["event_lines"]) if self.leader else None
            if save_event == "checkpoint" and self.validated_at == self.updates and not self._rewound(events_path):
                limit = self.limit_reached()
            if self.workers.all_agree(limit is not None or not self.leader) and may_skip:
                if self.leader:
                    print(f"nothing to do: {self.run_dir} is at update {self.updates}, where {limit} stops it",
                          file=sys.stderr)  # fmt: skip
                return False
            if self.leader:
                for tmp in (self.run_dir / "checkpoints").glob("*.tmp"):  # a save that a kill -9 cut short
                    tmp.unlink()
                # a corrupt line stops the resume here, not at `nmt report`, and before the log is cut; an end event
                # in place of the save's own is cut with what follows, and the save finished below
                keep = state["event_lines"] - (save_event == "end")
                events, self.held_end = truncate_events(events_path, keep)
                # of a run rewound to an older last.pt: abandoned, as the events after the checkpoint are (`nmt
                # average` took them); said, as they went without a word where the run said how to rewind
                later = [kept for kept in kept_checkpoints(self.run_dir) if kept_update(kept) > self.updates]
                for kept in later:
                    kept.unlink()
                if later:
                    print(f"warning: {self.run_dir} resumes from update {self.updates}: the kept saves after it are "
                          f"deleted ({', '.join(kept.name for kept in later)}), and its events after it",
                          file=sys.stderr)  # fmt: skip
                if not events_path.is_file() or not events:  # (an empty one resumed without a word)
                    print(f"warning: {events_path} is {'empty' if events_path.is_file() else 'missing'}: the log "
                          f"starts again at update {self.updates} (`nmt report` sees the run from there)",
                          file=sys.stderr)  # fmt: skip
                elif len(events) < state["event_lines"] - 1:  # (a kill between the save and its event: 1 fewer)
                    print(f"warning: {events_path} ends at update {events[-1]['updates']}, before the save it "
                          f"resumes from (update {self.updates}): the events between are lost (cut short or "
                          "damaged; `nmt report` sees a gap)", file=sys.stderr)  # fmt: skip
                # the wall clock goes on from the last event: the checkpoint's own event came after the write; so does
                # the training clock, from the end event written just after the save (its clock ran on a little)
                self._wall_start -= max([0.0] + [event.get("wall_s", 0.0) - state["wall_s"] for event in events[-1:]])
                self.clock.offset = max([self.clock.offset] + [event.get("train_s", 0.0) for event in events[-1:]])
        if not self.leader:
            return True
        self._warn_of_setup()  # (once the run is sure to go on: not above a refusal's one line)
        if not resume:  # emptied, not deleted: the lock file in it is what keeps other nmt-trains out
            clear_run_dir(self.run_dir)
        # (before config.json: a fresh run that fails here leaves no run folder to refuse or resume)
        ckpt.check_writable(checkpoint_path(self.run_dir, "last").parent)
        self._write_config()  # on resume too: options that may change (--max-updates, --patience) are in force
        self.events = EventLog(events_path)
        self.events.hold(self.held_end)  # (written with the start event: the session before ended there)
        # killed between writing last.pt and its event, what follows the write is done again; a log that is gone
        # starts again at its start event, not at the event of a save it no longer holds
        if resume and self.events.lines < state["event_lines"]:
            best = state.get("saved_as_best", False)  # (absent from saves before 2026-12)
            self._finish_save(best=best, event=self.events.lines > 0)
        if resume:
            self._check_best_save()
        return True

    @staticmethod
    def _save_event(events_path: Path, event_lines: int) -> str | None:
        """The kind of the event where the save's last one, its checkpoint event, belongs (its `event_lines`
        count it), if any: "checkpoint" where all that follows the write of last.pt was done. A save cut
        short there (a full disk at best.pt) left the run's end event in its place, which a count of lines
        took for it: the resume at the run's limit said "nothing to do", leaving best.pt stale and no kept
        copy, and one that trained on kept that end event for the save's and made no kept copy."""
        if not 0 < event_lines <= complete_lines(events_path):
            return None
        try:
            return read_events(events_path)[event_lines - 1]["kind"]
        except UserError:  # (said where the resume cuts the log)
            return None

    def put_back_held_end(self) -> None:
        """A resume that fails before its start event (a checkpoints folder it cannot write, a full disk) puts
        back the end event it cut from the log (`truncate_events`), so that the log ends as the session it
        resumed did: a finished run's looked unfinished for good. (Best effort: the error that stopped it is
        the one said.)"""
        events = self.__dict__.get("events")
        try:
            if events is not None:
                events.put_back_held()
            elif self.held_end:
                with open(self.run_dir / "events.jsonl", "ab") as f:
                    f.write(self.held_end)
        except OSError:
            pass
        self.held_end = b""

    def _rewound(self, events_path: Path) -> bool:
        """Whether last.pt is older than the run's kept saves or its log: a run rewound to an older save (a
        last.pt replaced by an update-U.pt), whose later updates are abandoned."""
        if any(kept_update(kept) > self.updates for kept in kept_checkpoints(self.run_dir)):
            return True
        try:
            events = read_events(events_path) if events_path.is_file() else []
        except UserError:  # (said where the resume cuts the log)
            return False
        return bool(events) and events[-1]["updates"] > self.updates

    def _check_best_save(self) -> None:
        """best.pt is the save of the run's best update, or the resume says why not. It resumed without a word
        where best.pt was gone or not a whole checkpoint (its summary named best.pt, and `nmt translate RUN`
        then failed on it, or took last.pt), and where it was of another update: that of a run rewound to an
        older last.pt, whose best.pt was of the updates it abandons, which `nmt translate RUN` took. best.pt is
        made again from the save of the best update where one is there, last.pt or a kept one (training on
        would write over last.pt); else it is lost until a better validation (one of another update is deleted,
        as the abandoned kept saves are)."""
        path = checkpoint_path(self.run_dir, "best")
        if self.best is None:  # (not validated yet: a best.pt of a later update is of updates a rewind abandons)
            held = self._saved_update(path) if whole_archive(path) else None
            if held is not None and held > self.updates:
                path.unlink()
                self.best_lost = True
                print(f"warning: {path} held update {held}, after update {self.updates}, where the run resumes "
                      "before any validation; best.pt is deleted and written again at its first validation",
                      file=sys.stderr)  # fmt: skip
            return
        at, best = self.best["updates"], best_save(self.best)
        held = what = None
        if whole_archive(path):
            held = self._saved_update(path)
            if held is None or held == at:  # (one that cannot be read: read again by what uses it, which says so)
                return
        else:
            what = "not a whole checkpoint" if path.exists() else "missing"
        last = checkpoint_path(self.run_dir, "last")
        found = [save for save in (last, kept_path(self.run_dir, at))
                 if save.is_file() and (save != last or not lost_best(self.best, self.updates))]  # fmt: skip
        again = (
            "written again at the next validation better than it (until then `nmt translate` needs --checkpoint last)"
        )
        if found:
            self._copy_to_best(found[0])
        else:
            self.best_lost = True
        if what is None:  # of another update
            if not found:
                path.unlink()
            done = (
                f"; made again from {found[0].name}" if found else f", which is lost; best.pt is deleted, and {again}"
            )
            print(f"warning: {path} held update {held}, not the run's best save ({best}){done}", file=sys.stderr)
        elif found:
            print(f"warning: {path} was {what}; made again from {found[0].name}, which is the run's best save "
                  f"({best})", file=sys.stderr)  # fmt: skip
        else:
            print(f"warning: {path} is {what}: the run's best save ({best}) is lost; best.pt is {again}",
                  file=sys.stderr)  # fmt: skip

    @staticmethod
    def _saved_update(path: Path) -> int | None:
        """The update a whole checkpoint was saved at; None where it cannot be read or holds no training state."""
        try:
            return read_checkpoint(path, mmap=True, check_params=False).get("server", {}).get("updates")
        except UserError:
            return None

    def _warn_of_setup(self) -> None:
        """Options that do less than they seem to: devices left unused, an async mode of one worker; and a
        target language whose valid BLEU says little."""
        cfg, devices = self.cfg, self.devices
        # a resume keeps the run's --workers and --accum (RESUME_FIXED): another is for a new run (it said "give
        # --workers N", which the resume then refused)
        give = "start a new run with" if self.resumed else "give"
        if warning := tokenizer_warning(self.validator.language):  # (rank 0's, which validates)
            print(warning, file=sys.stderr)
        if torchrun_rank() is not None:  # (its ranks set the workers; each names its own device)
            return
        if cfg.simulate and len(cfg.devices) > 1:  # (`cpu,cpu,cpu` too: it was told to give --workers 3)
            print(f"warning: --simulate emulates every worker in one process on {devices[0]}; the other "
                  f"--devices ({', '.join(cfg.devices[1:])}) are not used", file=sys.stderr)  # fmt: skip
        elif len(cfg.devices) > cfg.workers and not cfg.simulate:  # --workers left out?
            print(f"warning: --devices names {len(cfg.devices)} devices but --workers is {cfg.workers}: only "
                  f"{', '.join(devices)} trains; {give} --workers {len(cfg.devices)} to use them all",
                  file=sys.stderr)  # fmt: skip
        elif cfg.workers == 1 and cfg.mode in ASYNC_MODES:
            summed = f", the sum of {cfg.accum} in turn" if cfg.accum > 1 else ""
            print(f"warning: --mode {cfg.mode} with one worker trains as sync does (one worker's gradient an update"
                  f"{summed}, never stale); {give} --workers N for N workers", file=sys.stderr)  # fmt: skip
        elif cfg.mode == "async-accum" and cfg.accum == 1:
            print(f"warning: --mode async-accum with --accum 1 updates at every push, as --mode async does; {give} "
                  "--accum N to sum N pushes an update (left out, N is --workers)", file=sys.stderr)  # fmt: skip

    # ------------------------------------------------------------------ run folder and checkpoints
    def _write_config(self) -> None:
        # config.json first: a run mark (a folder of spm.model alone, left by a failure between the two, was
        # "not a run folder" even to --force)
        save_json(RunConfig(self.cfg, self.model_cfg, self._corpus_info()), self.run_dir / "config.json")
        shutil.copyfile(self.vocab_file, self.run_dir / VOCAB_NAME)

    def _corpus_info(self) -> CorpusInfo:
        return CorpusInfo.of(self.manifest)

    def _state(self, best: bool) -> dict[str, Any]:
        return {
            "model_config": asdict(self.model_cfg),
            "train_config": asdict(self.cfg),
            "corpus": asdict(self._corpus_info()),
            "vocab_model": self.vocab_file.read_bytes(),
            "params": self.server.gather(),
            "server": self.server.state_dict(),
            "tokens": self.tokens,
            "data": [stream.state_dict() for stream in self.streams],
            "workers": self.workers.state_dict(),
            "rng": ckpt.rng_state(self.device),
            "train_s": self.clock.seconds,
            "wall_s": self.wall_s,
            "best": self.best,
            "valid_crc32": self.valid_crc32,
            "validated_at": self.validated_at,
            "last_valid": self.last_valid,
            "valids_since_best": self.valids_since_best,
            "event_lines": self.events.lines + 1,  # the checkpoint event that follows belongs to it
            "log_interval": {
                "loss": float(self.interval.loss),
                "nll": float(self.interval.nll),
                "tokens": self.interval.tokens,
                "sentences": self.interval.sentences,
                "start_s": self.interval_start,
                "staleness": list(self.staleness),
            },
            "saved_as_best": best,
        }

    def _load(self, path: Path) -> dict[str, Any]:
        if path.is_file() and not whole_archive(path):  # (a damaged one's message gave the way out; a cut one's not)
            with open(path, "rb") as f:  # (one of other bytes altogether was said to be cut short)
                begun = f.read(4) == b"PK\x03\x04"  # a zip archive's first entry
            what = "cut short (not a whole zip archive" if begun else "not a checkpoint (not a zip archive"
            raise UserError(f"{path}: {what}, as torch.save writes); {ckpt.OTHER_SAVE}")
        ckpt.check_archive(path)  # every entry against its CRC-32, the training state's too, before it is read
        state = read_checkpoint(path)
        if any(key not in state for key in ("server", "data", "rng", "train_config", "corpus")):
            raise UserError(f"{path}: holds a model but no training state (an average of `nmt average`?): "
                            "translate with it; a run resumes from its own last.pt")  # fmt: skip
        if state["corpus"]["vocab_hash"] != self.manifest["vocab_hash"]:
            raise UserError(f"{path}: trained with another vocabulary than {self.cfg.bin_dir}/spm.model")
        if not normalizes_alike(vocab_from_checkpoint(state, path), self.sp):  # (the same pieces)
            rule = self.manifest.get("options", {}).get("normalization")
            raise UserError(f"{path}: trained with a vocabulary that normalizes text otherwise than "
                            f"{self.cfg.bin_dir}/spm.model{f' (--normalization {rule})' if rule else ''}: the same "
                            "pieces, another tokenizer; resume on the run's corpus")  # fmt: skip
        trained = (state["corpus"].get("src"), state["corpus"].get("tgt"))
        if all(trained) and trained != (self.manifest["src"], self.manifest["tgt"]):  # (saves that record them)
            raise UserError(f"{path}: trained {trained[0]}->{trained[1]}, but {self.cfg.bin_dir} is "
                            f"{self.manifest['src']}->{self.manifest['tgt']}")  # fmt: skip
        run_corpus, bin_corpus = state["corpus"], self._corpus_info()
        was = (run_corpus.get("train_pairs", 0), run_corpus.get("train_tokens", 0))
        now = (bin_corpus.train_pairs, bin_corpus.train_tokens)
        if was[0] and was != now:  # (saves from before 2026-12-05 do not record them)
            raise UserError(f"{path}: trained on {was[0]:,} training pairs ({was[1]:,} tokens), but "
                            f"{self.cfg.bin_dir} has {now[0]:,} ({now[1]:,}): the saved data positions belong "
                            "to the run's corpus; resume on it")  # fmt: skip
        # (saves before 2026-12-06 lack the embeddings' and attention's dropouts: they had the defaults)
        saved = asdict(from_dict(ModelConfig, state["model_config"]).in_effect())
        ours = asdict(self.model_cfg.in_effect())
        if saved != ours:
            keys = [k for k, v in ours.items() if saved.get(k) != v]
            differ = ", ".join(f"{k} {saved.get(k)} not {ours[k]}" for k in keys)
            options = [k for k in keys if k in DROPOUTS and getattr(self.cfg, k) is not None]  # (else the preset's)
            given = [f"--preset {self.cfg.preset}"] * any(k not in options for k in keys)
            given += [f"--{k.replace('_', '-')} {ours[k]}" for k in options]  # (the options that set them)
            raise UserError(f"{path}: model configuration differs from the options given, {' and '.join(given)} "
                            f"({differ}); resume without them to take the run's")  # fmt: skip
        check_resume_options(from_dict(TrainConfig, state["train_config"]), self.cfg, path)
        if state.get("valid_crc32", self.valid_crc32) != self.valid_crc32:  # (saves before 2026-12-05 lack it)
            folded = (" or against references not case-folded (a corpus of --normalization *_cf, before "
                      "2026-12-07)") if self.validator.casefold else ""  # fmt: skip
            raise UserError(f"{path}: validated on other sentences than {self.cfg.bin_dir}'s valid split, or "
                            "with another BLEU tokenizer (a zh target's was 13a before 2026-12-05, ZH's before "
                            f"2026-12-07){folded}: the best BLEU (best.pt, --patience) was measured on the run's; "
                            "resume on its BIN, or (another tokenizer or references) start a new run")  # fmt: skip
        self.server.load_params(state["params"])
        self.server.load_state_dict(state["server"])
        self.tokens = state["tokens"]
        for stream, position in zip(self.streams, state["data"], strict=True):
            stream.load_state_dict(position)
        ckpt.set_rng_state(state["rng"], self.device)  # rank 0's; the sync and diloco ranks then take their own
        self.workers.load_state_dict(state["workers"])
        self.best = state["best"]
        # a save that Ctrl-C made during a validation holds an older one (saves before 2026-12-05 lack it:
        # taken as validated, as they were resumed then)
        self.validated_at = state.get("validated_at", self.updates)
        # the last validation, which the summary shows (saves before 2026-12-07 lack it: the best, where it was)
        validated = self.best is not None and self.best["updates"] == self.validated_at
        self.last_valid = state.get("last_valid", self.best if validated else None)
        # (saves before 2026-12-07 lack it: counted from the updates since the best, as they were then)
        since = self.validated_at - self.best["updates"] if self.best and self.validated_at is not None else 0
        self.valids_since_best = state.get("valids_since_best", since // max(self.cfg.valid_every, 1))
        if (logged := state.get("log_interval")) is not None:  # (saves before 2026-12-05 lack it)
            self.interval = StepStats(logged["loss"], logged["nll"], logged["tokens"], logged["sentences"])
            self.interval_start, self.staleness = logged["start_s"], list(logged["staleness"])
        return state

    def save(self, best: bool = False) -> None:
        """last.pt, best.pt (`best`), the kept copy and the checkpoint event, as one: Ctrl-C or SIGTERM waits
        for the end of it. Cut short after last.pt, the save that Ctrl-C then made was not a best one, and a
        stale best.pt was left that nothing repaired (the resume saw its last event written)."""
        if not self.leader:
            return
        with self.clock.paused(), uninterrupted(notice=SAVE_HELD):
            ckpt.save_checkpoint(self._state(best), checkpoint_path(self.run_dir, "last"))
            self.saved_at = self.updates
            self._finish_save(best)
            self.saved_tokens = self.tokens

    def _finish_save(self, best: bool, event: bool = True) -> None:
        """What follows the write of last.pt: best.pt, the kept copy and (`event`) the checkpoint event. A resume
        does it again when the run was killed before the event was written (the checkpoint's `event_lines`
        count it)."""
        last = checkpoint_path(self.run_dir, "last")
        if best:
            self._copy_to_best(last)
        if self.cfg.keep_last:
            self._keep(last)
        if event:
            self._event("checkpoint", path=str(last.relative_to(self.run_dir)), best=best)

    def _copy_to_best(self, last: Path) -> None:
        """best.pt := last.pt, atomically; a copy that fails (a full disk) leaves no part of it and names best.pt."""
        tmp, best = last.with_name("best.pt.tmp"), last.with_name("best.pt")
        try:
            shutil.copyfile(last, tmp)
            tmp.replace(best)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.filename is not None and str(tmp) not in (err.filename, err.filename2):
                raise  # (last.pt's read, which names it)
            raise OSError(err.errno, err.strerror or str(err), str(best)) from None
        self.best_lost = False

    def _keep(self, last: Path) -> None:
        """Keep this save as update-U.pt (a hard link: last.pt is replaced, never rewritten in place), and
        drop the kept saves older than the last `keep_last`. One already there is replaced: it is of a run that
        was rewound to an older last.pt (it was kept, and `nmt average` mixed it in)."""
        kept = kept_path(self.run_dir, self.updates)
        tmp = kept.with_name(kept.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(last, tmp)
        tmp.replace(kept)
        tmp.unlink(missing_ok=True)  # (where `kept` was a link to last.pt already, as when a resume redoes this
        # save, the rename of one link onto another of the same file does nothing, and left the .tmp)
        for old in kept_checkpoints(self.run_dir)[: -self.cfg.keep_last]:
            old.unlink()

    # ------------------------------------------------------------------ events
    @property
    def updates(self) -> int:
        return self.server.updates

    @property
    def pushes(self) -> int:
        return self.server.pushes

    @property
    def counted_updates(self) -> int:
        """The updates whose pushes the trainer has counted: with worker processes, which push on meanwhile,
        those that the statistics it last collected reach (it validates, saves and logs there); else the
        server's."""
        counted = self.workers.counted
        return self.updates if counted is None else counted.updates

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall_start

    def began_earlier(self, seconds: float) -> None:
        """This session of the run began `seconds` before the trainer: a spawned sync rank's start-up, which its
        wall clock counts, as an in-process run's counts its worker processes' start-up."""
        self._wall_start -= max(0.0, seconds)

    def epochs(self) -> float:
        """Epochs trained so far (the batches trained on, over an epoch's)."""
        return epochs_done(self.streams, self.workers.untrained_batches)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        if not self.leader:
            return fields
        # (the counts that the statistics reach: worker processes may have pushed since they were collected)
        counted = self.workers.counted
        updates, pushes = (self.updates, self.pushes) if counted is None else counted[:2]
        return self.events.write(
            kind,
            train_s=self.clock.seconds,
            wall_s=self.wall_s,
            updates=updates,
            pushes=pushes,
            tokens=self.tokens,
            epoch=round(self.epochs(), 4),
            **{**self._predicted(), **fields},
        )

    def _predicted(self) -> dict[str, Any]:
        """The predicted clock (--simulate), and each device's, so that `nmt report --link-gbps` can re-price it."""
        predicted = self.workers.predicted_s
        if predicted is None or not self.cfg.simulate:  # (one diloco worker runs emulated, unclocked)
            return {}
        return {"predicted_s": predicted, "worker_s": self.workers.predicted_worker_s, **self._worker_pushes()}

    def _worker_pushes(self) -> dict[str, list[int]]:
        pushes = self.workers.worker_pushes
        return {} if pushes is None else {"worker_pushes": list(pushes)}

    def validate(self) -> dict[str, float] | None:
        """Valid loss and BLEU of the master parameters, then a checkpoint (rank 0 only)."""
        if not self.leader:
            return None
        with self.clock.paused():
            # evaluate the master parameters (a no-op for one worker), which no push changes at a validation
            self.server.pull(self.flat.data, quiet=True)
            # on a terminal, a bar below the training bar while the valid set is translated (minutes of
            # silence on a large one), gone when it is done
            with ProgressBar(total=len(self.validator.sources), unit="sent", desc="valid", leave=False,
                             file=sys.stderr, dynamic_ncols=True,
                             disable=None if self.progress else True) as bar:  # fmt: skip
                result = self.validator(self.model, self.sp, self.amp_dtype, progress=bar.update,
                                        resumable=checkpoint_path(self.run_dir, "last").exists())  # fmt: skip
            if not math.isfinite(result["valid_loss"]):
                self._diverged(f"the valid loss is {result['valid_loss']}")
            improved = self.best is None or better(result, self.best)
            if improved:
                self.best = {"updates": self.updates, **result}
            self.valids_since_best = 0 if improved else self.valids_since_best + 1
            self.last_valid, self.validated_at = result, self.updates
            self._event("valid", **result, best_bleu=self.best["bleu"])
            self.save(best=improved)
        if self.progress:  # (write keeps a bar on the screen below the line)
            ProgressBar.write(f"update {self.updates}: valid loss {result['valid_loss']:.3f}, "
                              f"BLEU {result['bleu']:.2f}", file=sys.stderr)  # fmt: skip
        return result

    # ------------------------------------------------------------------ the loop
    def update(self) -> None:
        """Run until the server has taken at least one more update, and count its pushes' statistics."""
        self._count_taken(self.workers.advance())

    def drain(self) -> None:
        """Let the pushes in flight finish their update, and count their statistics."""
        self._count_taken(self.workers.drain())

    def _count_taken(self, collected: tuple[StepStats, list[int]]) -> None:
        """Count what the workers collected, once: before a Ctrl-C, or else by the stop's drain, which returns
        it again until the workers are told (`Workers.taken`). A Ctrl-C as `advance` or `drain` returned left
        it out of the token count that the checkpoint saves, while its data positions counted its batches."""
        with uninterrupted():
            self.interval.add(self._count(*collected))
            self.workers.taken()

    def _count(self, stats: StepStats, staleness: list[int]) -> StepStats:
        self.tokens += stats.tokens
        self.staleness = merge_histograms(self.staleness, staleness)
        return stats

    def limit_reached(self) -> str | None:
        """The limit (--max-updates, --max-epochs, --max-time) that the run has reached, if any: the same in
        every rank of a group, which all resume from the same checkpoint."""
        cfg = self.cfg
        if cfg.max_updates > 0 and self.updates >= cfg.max_updates:
            return f"--max-updates {cfg.max_updates}"
        if cfg.max_epochs > 0 and self.epochs() >= cfg.max_epochs:
            return f"--max-epochs {cfg.max_epochs}"
        if cfg.max_time > 0 and self.clock.seconds >= cfg.max_time:
            return f"--max-time {cfg.max_time:.15g}"
        if self._patience_spent():
            return f"--patience {cfg.patience}"
        return None

    def should_stop(self) -> bool:
        cfg = self.cfg
        if cfg.max_updates > 0 and self.updates >= cfg.max_updates:
            return True
        wish = (
            (cfg.max_epochs > 0 and self.epochs() >= cfg.max_epochs)
            or (self.leader and cfg.max_time > 0 and self.clock.seconds >= cfg.max_time)  # rank 0's clock
            or self.converged()
        )
        if wish and self.stop_wish is None:
            self.stop_wish = self.limit_reached()
        return self.workers.agree_stop(wish) or self.workers.interrupted

    def converged(self) -> bool:
        """--patience: the last `patience` validations (every --valid-every updates) found no better BLEU."""
        return self.leader and self.validated_at == self.updates and self._patience_spent()

    def _patience_spent(self) -> bool:
        """--patience validations since the best BLEU."""
        cfg = self.cfg
        return bool(cfg.patience and self.best and self.valids_since_best >= cfg.patience)

    def _next_fence(self) -> int:
        """The next update at which the server must be quiet: a validation, a checkpoint, or the end."""
        cfg, fences = self.cfg, [2**40]
        for every in (cfg.valid_every, cfg.save_every):
            if every > 0:
                fences.append((self.counted_updates // every + 1) * every)
        if cfg.max_updates > 0:
            fences.append(cfg.max_updates)
        return min(fences)

    def _print_opening(self) -> None:
        """What the data and options will do that the user may not expect (rank 0's), and where a resume
        starts."""
        cfg = self.cfg
        split = self.streams[0].split
        warnings = (
            length_warning(self.manifest, self.model_cfg.max_positions),
            budget_warning(split.src.lengths, split.tgt.lengths, cfg.max_tokens, self.model_cfg.max_positions),
            partial_round_warning(cfg),
            endless_warning(cfg),
        )
        for warning in warnings:
            if warning and self.leader:
                print(warning, file=sys.stderr)
        if self.resumed and self.leader and self.progress:  # (as fairseq's "loaded checkpoint"; the bar starts there)
            limit = self.limit_reached()
            past = f", where {limit} stops it" if limit else ""
            print(f"resuming {self.run_dir} from update {self.updates} "
                  f"({checkpoint_path(self.run_dir, 'last').relative_to(self.run_dir)}){past}",
                  file=sys.stderr)  # fmt: skip

    def _start_fields(self) -> dict[str, Any]:
        """The start event's fields: the run's settings as this session trains them."""
        cfg = self.cfg
        return dict(
            mode=cfg.mode, workers=cfg.workers, accum=cfg.accum, local_accum=cfg.local_accum,
            staleness_lr=cfg.staleness_lr, sync_every=cfg.sync_every, outer_lr=cfg.outer_lr,
            outer_momentum=cfg.outer_momentum, lr=cfg.lr, warmup=cfg.warmup,
            max_tokens=cfg.max_tokens, batch_sort=cfg.batch_sort, preset=cfg.preset, device=str(self.device),
            precision="bf16" if self.amp_dtype else "fp32", params=self.flat.numel(), resumed=self.resumed,
            **({"link_gbps": cfg.link_gbps, "simulate_token_us": cfg.simulate_token_us} if cfg.simulate else {}),
            # what a resume may change (README), so that each start event says what was in force from there
            max_updates=cfg.max_updates, max_epochs=cfg.max_epochs, max_time=cfg.max_time, patience=cfg.patience,
            label_smoothing=cfg.label_smoothing, clip_norm=cfg.clip_norm, compile=cfg.compile,
            valid_every=cfg.valid_every, valid_max_sentences=cfg.valid_max_sentences, valid_beam=cfg.valid_beam,
            log_every=cfg.log_every,
            valid_crc32=self.valid_crc32,  # the validation sentences, that `nmt report` compares
            save_every=cfg.save_every, keep_last=cfg.keep_last, devices=list(cfg.devices), shards=cfg.shards,
            # (`shards` 0 is one per device; diloco's outer step is on one vector)
            server_shards=len(self.server.shards) if isinstance(self.server, ParamServer) else 1,
            worker_speeds=list(cfg.worker_speeds),
            # what the times were measured on, and the code that trained from here (a resume may run another
            # commit): rank 0's, which alone writes the log (the other ranks did not ask git too)
            **({"device_name": device_name(self.device), "versions": versions()} if self.leader else {}),
        )  # fmt: skip

    def _show(self, event: dict[str, Any], bar: ProgressBar, lines: bool) -> None:
        """A `train` event as a line of its own (`lines`), or in the bar (rank 0's)."""
        asynchronous = self.cfg.mode in ASYNC_MODES  # (their staleness shown beside the loss)
        if lines:
            # (nll: the valid loss's measure; loss: what is trained, label-smoothed)
            stale = (f", staleness {event['staleness_mean']:.2f} (max {event['staleness_max']})"
                     if asynchronous else "")  # fmt: skip
            bar.write(f"update {event['updates']}: loss {event['loss']:.3f} (nll {event['nll']:.3f}), lr "
                      f"{event['lr']:.2e}, {event['tok_per_s']:,.0f} tok/s{stale}", file=sys.stderr)  # fmt: skip
        elif self.leader:
            shown = {"stale": f"{event['staleness_mean']:.2f}"} if asynchronous else {}
            bar.set_postfix(loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}",
                            tok_s=f"{event['tok_per_s']:.0f}", **shown)  # fmt: skip

    def run(self, progress: bool = True) -> dict[str, Any]:
        cfg = self.cfg
        self.progress = progress  # the bar, or lines where stderr is not a terminal; validation lines
        self._print_opening()
        start = self._start_fields()  # (before the clock: it asks git for the commit)
        # the training clock starts here, at the start event: it ran from the trainer's making, and a new run's
        # start event said 0.03-0.07 s of set-up (loading, the folder, git's commit) in train_s
        self.clock = TrainingClock(self.clock.offset)
        self._event("start", **start)
        bar = ProgressBar(
            total=cfg.max_updates or None, initial=self.updates, unit="upd", dynamic_ncols=True,
            disable=None if progress else True, file=sys.stderr, desc="train",
            clock=lambda: self.clock.seconds,  # its time and rate are training's (README)
        )  # fmt: skip
        # where stderr is not a terminal (a log file, a batch job), the bar is off and every `train` event
        # is one line instead, as `\r` redraws would make one endless line of a log
        lines = progress and bar.disable and self.leader
        if self.interval_start is None:
            self.interval_start = self.clock.seconds
        counted = self.counted_updates  # the updates whose pushes the trainer has counted
        update_held = stop_hint(self._held(UPDATE_HELD))  # (once: not a signal lookup an update)
        drained = True  # the pushes let in have all been counted (none yet, or the last ones drained)
        try:
            with self.clock.paused():  # starting worker processes is not training (Ctrl-C here saves as below)
                self.workers.start()
            # a resumed run whose last scheduled validation Ctrl-C cut short does it first
            scheduled = cfg.valid_every > 0 and self.updates > 0 and self.updates % cfg.valid_every == 0
            if scheduled and self.validated_at != self.updates:
                self.validate()
            while not self.should_stop():
                self.workers.allow(self._next_fence())
                # (from the last count, not from now: a worker holding a computed push may take the update that
                # `allow` just let in before this line, and that update must still log, validate and save)
                before = counted
                # Where the pushes are computed in this process, Ctrl-C waits for the update and its count: a
                # checkpoint then holds whole updates and the data positions of exactly the batches they
                # took, the last train event counts them, and a resume goes on as if never stopped
                held = uninterrupted(second_stops=True, notice=update_held) if self.workers.steps_here else None
                with held or contextlib.nullcontext():
                    self.update()
                stopping = self.should_stop()
                if stopping:  # a time or epoch limit: let the pushes in flight finish their update
                    self.drain()
                drained = stopping
                counted = self.counted_updates
                bar.update(counted - before)
                moved = counted > before  # (pushes that complete no update yet do not validate)
                validating = moved and cfg.valid_every > 0 and counted % cfg.valid_every == 0
                saving = validating or (moved and cfg.save_every > 0 and counted % cfg.save_every == 0)
                # (a validation may stop the run by --patience: the updates since the last event are logged first;
                # on every rank alike, whatever only rank 0 knows, as a sync group reads its losses together)
                logging = (
                    counted // cfg.log_every > before // cfg.log_every or stopping or (validating and cfg.patience > 0)
                )
                if logging or saving:  # the losses are read (a host sync) only here, never a bad one saved
                    self._check_finite(self.interval)
                if logging:
                    self._show(self._train_event(), bar, lines)
                    self._new_interval()
                if self.workers.interrupted:
                    break
                if validating:
                    self.validate()
                elif saving and not stopping:  # (stopping: the closing validation saves this update)
                    self.save()
            if self.workers.interrupted:
                raise KeyboardInterrupt
            if not drained:  # a limit reached after the look above (the training clock runs on while the loop
                # logs, and worker processes push on): the pushes in flight finish their update and are counted
                # before the closing validation and save, as there (it validated a server still being written)
                before = counted
                self.drain()
                counted = self.counted_updates
                bar.update(counted - before)
                self._log_rest()
            bar.close()
            # the closing validation is part of the run: Ctrl-C in it saves as elsewhere (a resume validates
            # first), and on any error the worker processes stop (else this process waits for them at exit)
            if self.validated_at != self.updates:
                self.validate()
            if self.workers.stop_asked():  # (ranks: asked during that validation) saved and exit 130, as elsewhere
                raise KeyboardInterrupt
        except SecondInterrupt:  # (while the first was held, as by an update under way): at once, unsaved
            bar.close()
            self.workers.close()
            raise
        except KeyboardInterrupt:
            bar.close()
            try:
                return self._stop_interrupted()
            except TrainingDiverged:  # (its own end event is written)
                raise
            except Exception as err:  # a worker that fails as the stop drains it, a full disk as it saves
                self._end_failed(err)
                raise
        except TrainingDiverged:
            bar.close()
            with self.clock.paused():
                self.workers.close()
            self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False,
                        converged=False, diverged=True)  # fmt: skip
            raise
        except BaseException as err:
            bar.close()
            try:
                self.workers.close()
            finally:
                if isinstance(err, Exception):
                    self._end_failed(err)
            raise
        # the run is done, validated and saved: a Ctrl-C or SIGTERM as the worker processes end (a second or two)
        # cuts nothing, and the run ends as finished (it ended with no end event and exit code 130); a second
        # Ctrl-C stops at once
        with self.clock.paused(), held_interrupts(second_stops=True) as caught:
            self.workers.close()
        self.stopped_after_end = bool(caught)
        return self._end()

    def _end(self) -> dict[str, Any]:
        """The end event of a run that its own rule stopped (a limit, --patience, a stop wish)."""
        stopped_by = self.limit_reached() or self.stop_wish
        converged = self.converged() or self.leader and self.stop_wish == f"--patience {self.cfg.patience}"
        summary = self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False,
                              converged=converged, stopped_by=stopped_by)  # fmt: skip
        if self.leader:
            self.events.close()
        return summary

    def _end_failed(self, err: Exception) -> None:
        """The end event of a run that an error stopped (a worker that failed or was killed, a batch that ran
        the device out of memory, a full disk): `failed` names it, so that `nmt report` does not show the
        run as one still running (a resume from last.pt, if there is one, cuts the event, but for one at the
        save's update, written back as the resumed run starts: `truncate_events`). Where the log
        cannot take it (that full disk), the error that stopped the run is the one said."""
        if self.supervised:
            return
        message = str(err) if isinstance(err, UserError) else failure_line(err)
        with contextlib.suppress(Exception):
            self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=False,
                        converged=False, failed=message)  # fmt: skip

    def _check_finite(self, interval: StepStats) -> None:
        """The loss is finite, and below DIVERGED_UNIFORMS times a uniform guess's, ln V a token: with Adam a
        far too high --lr can blow the loss up to 1e10 and beyond without making it infinite."""
        loss = float(interval.loss)
        if not math.isfinite(loss):
            self._diverged(f"the training loss is {loss}")
        per_token, uniform = loss / max(interval.tokens, 1), math.log(self.model_cfg.vocab_size)
        if per_token > DIVERGED_UNIFORMS * uniform:
            self._diverged(f"the training loss is {per_token:.3g} a token, over {DIVERGED_UNIFORMS} times a uniform "
                           f"guess's ({uniform:.2f})")  # fmt: skip

    def _diverged(self, what: str) -> None:
        """Stop: the losses of the pushes counted up to `counted_updates` are not finite or far too high (worker
        processes may have pushed on since; the live count named a later update than the losses')."""
        saved = checkpoint_path(self.run_dir, "last")
        kept = f"{saved} (update {self.saved_at}) is kept" if self.saved_at is not None else "no checkpoint was saved"
        raise TrainingDiverged(
            f"training diverged: {what} at update {self.counted_updates}; {kept}. Try a lower --lr, or --clip-norm"
        )

    def _log_rest(self) -> None:
        """The `train` event of the pushes since the last one, if any, as the run stops: their losses are read
        first (`_check_finite`), so that the save that follows never holds a bad state."""
        if self.interval.tokens:
            self._check_finite(self.interval)
            self._train_event()
            self._new_interval()

    def _new_interval(self) -> None:
        self.interval, self.interval_start, self.staleness = StepStats(), self.clock.seconds, []

    def _train_event(self) -> dict[str, Any]:
        """The `train` event of the pushes since the last one (`interval`, from `interval_start` on the training
        clock)."""
        interval = self.interval
        elapsed = max(self.clock.seconds - (self.interval_start or 0.0), 1e-9)
        tokens = max(interval.tokens, 1)
        counted = self.workers.counted  # (the lr and norm of its update, where worker processes push on)
        lr, grad_norm = (self.server.lr, self.server.grad_norm) if counted is None else counted[2:]
        return self._event(
            "train", loss=float(interval.loss) / tokens, nll=float(interval.nll) / tokens, lr=lr,
            grad_norm=grad_norm, tok_per_s=interval.tokens / elapsed,
            **staleness_stats(self.staleness), **self._worker_pushes(),
        )  # fmt: skip

    def _held(self, notice: str) -> str:
        """A stop's `notice`, which says "stopping" for a scratch run, whose saves its caller deletes."""
        return notice.replace("saving", "stopping") if self.scratch else notice

    def _stop_interrupted(self) -> dict[str, Any]:
        """Ctrl-C: finish the pushes in flight, log the pushes since the last `train` event, save a
        checkpoint; the end event (`interrupted`), which the caller summarizes before it exits 130."""
        try:
            if not self.workers.interrupted:  # a sync group has agreed already; its last step is complete
                if not self.workers.steps_here:  # worker processes: a push under way may take a while
                    print(stop_hint(self._held(PUSHES_HELD)), file=sys.stderr, flush=True)
                self.drain()
            try:  # (logged before the save below, which then holds none of it to log again)
                self._log_rest()
            except TrainingDiverged:  # a bad state is not saved over the last good one
                self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=True,
                            converged=False, diverged=True)  # fmt: skip
                raise
            # the last save holds this state (Ctrl-C during it): not saved again, with a second checkpoint event (a
            # train event just logged is cut and logged again by a resume, as after a kill)
            saved = self.saved_at == self.updates and self.saved_tokens == self.tokens
            # at the run's limit, its closing validation and save done, the stop (in that save) cut nothing:
            # the run ends as finished. It ended as interrupted, which `nmt report` showed as a run that
            # --resume goes on with, where --resume found nothing to do.
            finished = saved and self.leader and self.validated_at == self.updates and self.limit_reached()
            if not finished:
                if not saved:
                    self.save()
                summary = self._event("end", best_bleu=self.best["bleu"] if self.best else None, interrupted=True,
                                      converged=False)  # fmt: skip
                self.stop_saved = True
        finally:
            with self.clock.paused():
                self.workers.close()
        if finished:
            self.stopped_after_end = True
            return self._end()
        if self.leader:
            self.events.close()
        return summary


# the saved data positions depend on the first six, how pushes become updates on the next five; the best BLEU
# (best.pt, --patience) was measured on the first --valid-max-sentences valid pairs, with --valid-beam
RESUME_FIXED = ("mode", "workers", "accum", "max_tokens", "batch_sort", "seed", "local_accum", "staleness_lr",
                "sync_every", "outer_lr", "outer_momentum", "valid_max_sentences", "valid_beam")  # fmt: skip


def check_resume_options(saved: TrainConfig, given: TrainConfig, path: Path) -> None:
    """Refuse to resume with an option that would point the saved data positions into another batch list
    (or change how pushes become updates, or the validation set), naming the option."""
    for name in RESUME_FIXED:
        if getattr(saved, name) != getattr(given, name):
            if given.mode not in MODE_OPTIONS.get(name, (given.mode,)):  # (an option of another mode, said as
                check_mode_options(given)  # a new run says it: "saved with --sync-every 0, not 3" of a sync run misled)
            option = "--" + name.replace("_", "-")
            raise UserError(
                f"{path}: saved with {option} {getattr(saved, name)}, not {getattr(given, name)}; "
                f"resume with the same {option}, or start a new run"
            )
    if saved.simulate != given.simulate:
        raise UserError(f"{path}: {'saved by' if saved.simulate else 'not saved by'} a --simulate run; "
                        f"resume it {'with' if saved.simulate else 'without'} --simulate")  # fmt: skip
