"""The options of `nmt train` / `nmt-train`, and their translation into a TrainConfig."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from async_nmt.config import (
    DROPOUTS,
    MAX_BEAM,
    MODES,
    PRECISIONS,
    PRESETS,
    SORTS,
    STALENESS_LRS,
    TRAIN_DEFAULTS,
    ModelConfig,
    RunConfig,
    TrainConfig,
    dropout_overrides,
    from_dict,
    load_json,
    model_config,
    torchrun_rank,
)
from async_nmt.errors import UserError

OPTIONS = [
    click.option("--preset", type=click.Choice(list(PRESETS)), default="tiny", show_default=True,
                 help="Model size: micro (d64, 2+2 layers; smoke tests on toy data), tiny (d256, 3+3 layers), "
                 "small (d512, 3+3), base and big (Vaswani et al.)."),
    click.option("--mode", type=click.Choice(MODES), default="sync", show_default=True,
                 help="How worker gradients update the model: all-reduce (sync), every push applied at once "
                 "(async), N pushes summed per update (async-accum), or H local steps per worker, then an "
                 "outer step on their average change (diloco)."),
    click.option("--workers", default=1, show_default=True,
                 help="Workers computing gradients: processes spread round-robin over --devices (sync: "
                 "torch.distributed ranks; async modes: clients of a shared parameter server), or, with "
                 "--simulate, workers emulated in one process; at most 1024."),
    click.option("--accum", type=int, default=None,
                 help="async-accum: pushes the server sums into one update, at most 1,048,576 (default: --workers, "
                 "the paper's N; under torchrun WORLD_SIZE - 1; refused in the other modes)."),
    click.option("--sync-every", default=0,  # (0: not given; its [default: 0] read as a usable value)
                 help="diloco: inner steps H each worker takes between two outer steps (required with diloco)."),
    click.option("--outer-lr", default=0.7, show_default=True,
                 help="diloco: learning rate of the outer SGD step (1 with --outer-momentum 0: local SGD, "
                 "parameter averaging every H steps)."),
    click.option("--outer-momentum", default=0.9, show_default=True,
                 help="diloco: Nesterov momentum of the outer step."),
    click.option("--staleness-lr", type=click.Choice(STALENESS_LRS), default="none", show_default=True,
                 help="async modes: inverse = each update's learning rate is divided by max(1, mean staleness "
                 "of the pushes it sums) (Zhang et al. 2016); none = the schedule's learning rate. Refused in the "
                 "other modes."),
    click.option("--local-accum", default=1, show_default=True,
                 help="Batches a worker sums before it pushes (fairseq --update-freq, Marian --optimizer-delay); at "
                 "most the batches a worker takes in an epoch."),
    click.option("--devices", default=None,
                 help="Comma-separated devices, e.g. cpu or cuda:0,cuda:1; workers take them round-robin, so "
                 "several may share one (default: the first GPU, else cpu)."),
    click.option("--shards", default=0, show_default=True,
                 help="async modes with --workers 2 or more, not --simulate (refused elsewhere): shards of the "
                 "parameter server the worker processes share, each with its own lock and Adam state; 0 = one "
                 "per device; at most 64."),
    click.option("--simulate", is_flag=True,
                 help="Emulate --workers workers in one process on one device (the first of --devices; a "
                 "warning names those left unused), deterministically (the losses "
                 "and parameters; the predicted clock too with --simulate-token-us); events carry the predicted "
                 "wall clock of that many real devices (predicted_s)."),
    click.option("--simulate-token-us", type=float, default=0.0, show_default=True,
                 help="With --simulate: price a target token's forward and backward at this many microseconds on "
                 "a speed-1 worker, so that predicted_s is the same on any machine and under any load; 0 = the "
                 "time each push's compute took on this device."),
    click.option("--link-gbps", type=float, default=80.0, show_default=True,
                 help="With --simulate: bandwidth of each worker's link in Gb/s, priced on the predicted clock for "
                 "moving the parameters (25 = Ethernet between nodes, 100-400 = InfiniBand, 80 = 10 GB/s)."),
    click.option("--worker-speeds", default=None,
                 help="Comma-separated relative speeds, one per worker, e.g. 1,1,1,0.5: emulated in --simulate, "
                 "and real workers of every mode slower than 1 sleep after each batch (a straggler on purpose); "
                 "each between 0.001 and 1000."),
    click.option("--max-tokens", default=4096, show_default=True,
                 help="Token budget of a batch: rows x longest padded side. A pair longer than it is a "
                 "batch of its own (a warning at the start counts them). A batch that runs the device "
                 "out of memory stops the run with one line; the last checkpoint is kept."),
    click.option("--batch-sort", type=click.Choice(SORTS), default="target", show_default=True,
                 help="How sentences are sorted before they are cut into batches: target = by target, then "
                 "source length; longest = by the longer side, then source, then target (less padding: "
                 "on bible-de-en at 25,000 tokens 12% of source positions against 37%, and 37% more real "
                 "tokens a batch)."),
    click.option("--lr", type=float, default=None,
                 help="Peak learning rate (default per preset: micro 2e-3, tiny, small and base 7e-4, big 5e-4)."),
    click.option("--warmup", type=int, default=None,
                 help="Linear warmup updates, then inverse-sqrt decay (default per preset: micro 50, tiny 250, "
                 "small 1000, base and big 4000); 0 = neither: a constant --lr."),
    click.option("--clip-norm", default=0.0, show_default=True, help="Clip the gradient norm to this; 0 = off."),
    click.option("--label-smoothing", default=0.1, show_default=True,
                 help="Label smoothing epsilon of the cross-entropy loss, in [0, 1): spread over the whole "
                 "vocabulary, the target word included (PyTorch's and Marian's form)."),
    click.option("--dropout", type=float, default=None,
                 help="Dropout probability in [0, 1), on the embeddings, the feed-forward activation and every "
                 "residual branch (default per preset: 0.1, big 0.3)."),
    click.option("--embed-dropout", type=float, default=None,
                 help="Dropout on the embeddings (with their positions) alone, in [0, 1) (default: --dropout's, "
                 "as fairseq places it; nn.Transformer's placement is 0 here and --attention-dropout at "
                 "--dropout's: README)."),
    click.option("--attention-dropout", type=float, default=None,
                 help="Dropout on the attention weights, in [0, 1) (default: 0, as fairseq has it; "
                 "nn.Transformer and Marian drop them, at --dropout's)."),
    click.option("--valid-every", default=500, show_default=True,
                 help="Updates between validations (valid loss + BLEU, then a checkpoint); 0 = at the end."),
    click.option("--valid-max-sentences", default=0, show_default=True,
                 help="Validate on the first N valid sentences only; 0 = all. Fixed for a run: its best "
                 "BLEU was measured on them."),
    click.option("--valid-beam", default=1, show_default=True,
                 help="Beam size of validation's translations, whose BLEU chooses best.pt and counts --patience "
                 "(length penalty 1.0, as `nmt translate`'s default); 1 = greedy, the fastest. Fixed for a run: "
                 "its best BLEU was measured with it."),
    click.option("--save-every", default=0, show_default=True,
                 help="Updates between extra checkpoints (besides each validation and the end); 0 = none."),
    click.option("--keep-last", default=0, show_default=True,
                 help="Also keep the last N saves as checkpoints/update-U.pt (U = updates), for `nmt average` and "
                 "`nmt translate --average`; each is a full checkpoint; 0 = keep only last.pt and best.pt."),
    click.option("--max-updates", default=0, show_default=True, help="Stop after this many updates; 0 = no limit."),
    click.option("--max-epochs", default=0, show_default=True, help="Stop after this many epochs; 0 = no limit."),
    click.option("--max-time", default=0.0, show_default=True,
                 help="Stop after this many seconds of training clock (validation excluded); 0 = no limit."),
    click.option("--patience", default=0, show_default=True,
                 help="Stop when the last N validations brought no better checkpoint, by valid BLEU and, "
                 "between BLEUs equal to the 2 decimals shown, valid loss (convergence; needs --valid-every > 0); "
                 "0 = never."),
    click.option("--seed", default=1, show_default=True,
                 help="Random seed (initialization, batch order, dropout), between -2^32 and 2^32."),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                 help="Precision of training and validation: bf16 autocast, or fp32; auto = bf16 on GPUs (Ampere "
                 "on) and CPUs with native bf16, else fp32. The master parameters and Adam stay fp32."),
    click.option("--compile/--no-compile", "compile_model", default=False,
                 help="torch.compile the encoder-decoder stack: a slow start (the first batches compile); "
                      "meant for GPUs, where issuing operators bounds a step. Its speed-up is not measured yet. "
                      "[default: --no-compile; a resume keeps the run's]"),
    click.option("--log-every", default=50, show_default=True, help="Updates between `train` events."),
    click.option("--resume", is_flag=True, help="Continue the run in RUN_DIR from checkpoints/last.pt (refused "
                 "while another nmt-train uses RUN_DIR). Options left out are the run's (its config.json), not "
                 "the defaults; those that decide the batches, the update rule or the model (e.g. --max-tokens, "
                 "--mode, --preset) must stay as they were; stopping options may change."),
    click.option("--force", is_flag=True, help="Delete an existing RUN_DIR and start over (refused while another "
                 "nmt-train uses RUN_DIR, and where RUN_DIR holds files that nmt-train did not write, which it "
                 "names)."),
    click.option("--quiet", is_flag=True,
                 help="No progress: no bar (where stderr is not a terminal: no line per train event), no line "
                 "per validation, no summary table. Warnings and errors still show."),
]  # fmt: skip


def add_train_options(f: Callable) -> Callable:
    for option in reversed(OPTIONS):
        f = option(f)
    return f


def build_config(bin_dir: Path, devices: str | None, lr: float | None, warmup: int | None,
                 compile_model: bool, worker_speeds: str | None = None, checked: bool = True,
                 given: Collection[str] = (), **options: Any) -> TrainConfig:  # fmt: skip
    """A TrainConfig from the command-line options, defaults filled in and (`checked`) contradictions
    refused (`given`: the options the command line gave)."""
    default_lr, default_warmup = TRAIN_DEFAULTS[options["preset"]]
    if options.get("accum", 1) is None:
        options["accum"] = default_accum(options.get("mode", "sync"), options.get("workers", 1))
    cfg = TrainConfig(
        bin_dir=str(bin_dir),
        devices=_devices(devices),
        lr=default_lr if lr is None else lr,
        warmup=default_warmup if warmup is None else warmup,
        compile=compile_model,
        worker_speeds=_speeds(worker_speeds),
        **options,
    )
    if checked:
        check_config(cfg, given)
    return cfg


def default_accum(mode: str, workers: int) -> int:
    """--accum left out: async-accum sums as many pushes as there are workers, as in the paper; under
    torchrun the workers are ranks 1..WORLD_SIZE-1, whatever --workers says (it may be left at 1)."""
    if mode != "async-accum":
        return 1
    ranks = torchrun_rank()
    return workers if ranks is None else max(1, ranks[1] - 1)


MIN_LINK_GBPS = 1e-6
MIN_SPEED = 1e-3  # --worker-speeds: within a thousandfold of 1, either way


def check_config(cfg: TrainConfig, given: Collection[str] = (), resumed_at: int = 0) -> None:
    """Refuse contradictory options and values out of range, naming the option (`given`: those the command
    line gave, and `resumed_at`, the update a resume goes on from: see check_mode_options)."""
    from async_nmt.train.modes import check_mode_options

    check_mode_options(cfg, given, resumed_at)
    for name in ("max_tokens", "lr"):
        if not getattr(cfg, name) > 0:  # nan included
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if not math.isfinite(cfg.lr):  # (the first update would make every parameter nan)
        raise UserError(f"--lr must be a finite number (got {cfg.lr})")
    # the predicted clock's prices: an infinite one was logged as Infinity, which no reader takes back
    if not math.isfinite(cfg.simulate_token_us):
        raise UserError(f"--simulate-token-us must be a finite number (got {cfg.simulate_token_us})")
    if not cfg.link_gbps >= MIN_LINK_GBPS:
        raise UserError(f"--link-gbps must be at least {MIN_LINK_GBPS:g} (1 kbit/s)")
    if not -(2**32) < cfg.seed < 2**32:  # (workers seed with worker_seed: seed * 1000 + worker; torch takes 64 bits)
        raise UserError("--seed must be an integer between -2^32 and 2^32")
    for name in (
        "warmup",
        "max_updates",
        "max_epochs",
        "max_time",
        "valid_every",
        "save_every",
        "clip_norm",
        "keep_last",
        "simulate_token_us",
        "patience",
        "valid_max_sentences",
    ):
        if math.isnan(getattr(cfg, name)):  # (it is not negative either: "must not be negative" said it was)
            raise UserError(f"--{name.replace('_', '-')} must be a number (got nan)")
        if not getattr(cfg, name) >= 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    # no number is infinite: config.json and the start event would hold Infinity, which JSON has not
    for name, why in (("max_time", "; 0 sets no limit"), ("clip_norm", "; 0 clips nothing"), ("link_gbps", "")):
        if math.isinf(getattr(cfg, name)):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number (got {getattr(cfg, name)}){why}")
    if cfg.patience and not cfg.valid_every:
        raise UserError("--patience counts validations; give --valid-every N with N > 0 too")
    for name in DROPOUTS:
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, 1)")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError("--label-smoothing must be in [0, 1)")
    if cfg.log_every < 1:
        raise UserError("--log-every must be at least 1")
    if not 1 <= cfg.valid_beam <= MAX_BEAM:
        raise UserError(f"--valid-beam must be 1 to {MAX_BEAM:,} (got {cfg.valid_beam})")
    # (a resume takes them from config.json, which may be edited by hand: --precision fp8 trained in fp32, and
    # an adam_eps of -1 trained with it, without a word)
    if cfg.precision not in PRECISIONS:
        raise UserError(f"--precision {cfg.precision!r}: not one of {', '.join(PRECISIONS)}")
    # (their types are checked as config.json is read: `load_json`)
    if not 0 <= cfg.adam_eps < math.inf:
        raise UserError(f"adam_eps must be a finite number of 0 or more (got {json.dumps(cfg.adam_eps)})")
    if not all(0 <= beta < 1 for beta in cfg.adam_betas):
        raise UserError(f"adam_betas must be two numbers in [0, 1) (got {json.dumps(cfg.adam_betas)})")


def _devices(text: str | None) -> list[str]:
    if text is None:
        return []
    devices = [d.strip() for d in text.split(",")]
    if not all(devices):
        raise UserError(f"--devices: {text!r} names an empty device (use cpu or cuda:N, comma-separated)")
    return devices


def _speeds(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        speeds = [float(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"--worker-speeds: {text!r} is not a comma-separated list of numbers") from None
    # (nan is neither; a real worker at 1e-300 slept past the clock's range: an OverflowError's exit 1)
    if not all(MIN_SPEED <= x <= 1 / MIN_SPEED for x in speeds):
        raise UserError(f"--worker-speeds: every speed must be between {MIN_SPEED:g} and {1 / MIN_SPEED:g} (a "
                        f"real worker at speed s waits 1/s - 1 times its compute after each batch)")  # fmt: skip
    return speeds


FIELD_OF_OPTION = {"compile_model": "compile"}  # where an option's name is not its TrainConfig field's


def resumed_config(cfg: TrainConfig, run_dir: Path, given: set[str]) -> tuple[TrainConfig, Path | None]:
    """--resume: `cfg` with every option that the command line did not give as the run's config.json has
    it (the options in force when it last ran), so that `nmt-train BIN RUN --resume --max-time 1200`
    needs no other, and the file they came from. Without a readable config.json they are last.pt's (with a
    warning); without either, `cfg` is kept (None) and the trainer's checks speak."""
    source = Path(run_dir) / "config.json"
    try:
        saved = load_json(RunConfig, source).train
    except UserError as err:
        from async_nmt.model.checkpoint import checkpoint_path, read_checkpoint

        source = checkpoint_path(run_dir, "last")
        if not source.is_file() or "train_config" not in (state := read_checkpoint(source)):
            return cfg, None
        print(f"warning: {err}; the run's options are taken from {source}", file=sys.stderr)
        saved = from_dict(TrainConfig, state["train_config"])
    # an infinite --max-time or --clip-norm, which runs begun before 2026-12-05 may hold (refused since): no
    # limit and no clipping, as 0 says
    saved = dataclasses.replace(saved, **{name: 0.0 for name in ("max_time", "clip_norm")
                                          if math.isinf(getattr(saved, name))})  # fmt: skip
    kept = {FIELD_OF_OPTION.get(name, name) for name in given} | {"bin_dir"}
    resumed = dataclasses.replace(cfg, **{f.name: getattr(saved, f.name) for f in dataclasses.fields(cfg)
                                          if f.name not in kept})  # fmt: skip
    last = last_configs(Path(run_dir))
    if source.name == "config.json" and last is not None:
        check_config_json(saved, kept, source, last)
    # an option that a resume cannot change (another --mode, --workers, ...) is refused as such before the
    # options are checked together: `--resume --mode sync` of an async-accum run was refused for its saved
    # --accum, and `--resume --workers 2` of a run of 3 for its 3 --worker-speeds. Against last.pt's where it
    # reads (config.json may have been edited: check_config_json names that). Not --workers under torchrun,
    # which sets it from the ranks later; the trainer checks them all again against last.pt.
    from async_nmt.train.trainer import RESUME_FIXED, check_resume_options

    reference, where = (last[0], last[2]) if last is not None else (saved, source)
    fixed = {name: getattr(resumed, name) for name in RESUME_FIXED if name != "workers" or torchrun_rank() is None}
    check_resume_options(reference, dataclasses.replace(reference, **fixed), where)
    return resumed, source


def saved_update(run_dir: Path) -> int:
    """The update the run's last.pt was saved at; 0 where it cannot be read (the trainer's checks speak)."""
    from async_nmt.model.checkpoint import checkpoint_path
    from async_nmt.train.trainer import Trainer

    return Trainer._saved_update(checkpoint_path(run_dir, "last")) or 0


def last_configs(run_dir: Path) -> tuple[TrainConfig, ModelConfig, Path] | None:
    """The training and model configurations that the run's last.pt was saved with, and its path, read
    without its parameters (the trainer reads and checks them once); None where it cannot be read (left to
    the trainer, whose message says how to go on)."""
    from async_nmt.model.checkpoint import checkpoint_path, read_checkpoint, whole_archive

    last = checkpoint_path(run_dir, "last")
    try:
        state = read_checkpoint(last, mmap=True, check_params=False) if whole_archive(last) else {}
    except UserError:
        return None
    if "train_config" not in state or "model_config" not in state:
        return None
    return from_dict(TrainConfig, state["train_config"]), from_dict(ModelConfig, state["model_config"]), last


def check_config_json(
    saved: TrainConfig, given: set[str], source: Path, last_saved: tuple[TrainConfig, ModelConfig, Path]
) -> None:
    """A config.json edited by hand so that the options it gives a resume (those not `given`) make another
    model or other batches than last.pt's is refused naming it and last.pt's value (the trainer's refusal
    named the command line: "the options given, --preset tiny", which no one had typed). Models are compared
    as built, as the trainer does: a dropout written as the preset's own is the same model. `last_saved`:
    last.pt's configurations and path (`last_configs`)."""
    from async_nmt.train.trainer import RESUME_FIXED

    was, was_model, last = last_saved
    model = (model_config(saved.preset, was_model.vocab_size, **dropout_overrides(saved))
             if saved.preset in PRESETS else None)  # fmt: skip
    differ = [(name, getattr(saved, name), getattr(was, name)) for name in ("preset", *RESUME_FIXED)
              if name not in given and getattr(saved, name) != getattr(was, name)]  # fmt: skip
    if model is not None and model != was_model and "preset" not in given:  # (its dropouts: as built, typeable)
        differ += [(name, getattr(model, name), getattr(was_model, name)) for name in DROPOUTS
                   if name not in given and getattr(model, name) != getattr(was_model, name)]  # fmt: skip
    if differ:
        name, value, saved_value = differ[0]
        option = "--" + name.replace("_", "-")
        raise UserError(f"{source}: {option} {value}, but {last} was saved with {saved_value} (config.json "
                        f"edited?); resume with {option} {saved_value}, or start a new run")  # fmt: skip


def given_options() -> set[str]:
    """The options the running command's command line (or environment) gave, not their defaults."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return set()
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {name for name in ctx.params if ctx.get_parameter_source(name) in sources}


def run_train(bin_dir: Path, run_dir: Path, resume: bool, force: bool, quiet: bool, log_every: int,
              **options: Any) -> None:  # fmt: skip
    from async_nmt.train.checkpoint import check_run_path
    from async_nmt.train.launch import refuse_torchrun, train
    from async_nmt.train.lock import owns_run, run_lock

    with contextlib.ExitStack() as held:
        try:
            if resume and force:
                raise UserError("--resume and --force contradict each other: continue the run, or start it over")
            given = given_options()
            cfg = build_config(bin_dir, log_every=log_every, checked=not resume, given=given, **options)
            if owns_run():
                check_run_path(run_dir, bin_dir, resume)
                # locked before --resume reads the run's config.json, which another nmt-train may be rewriting
                # (`train` takes the same lock again, counted, and keeps it to the end)
                held.enter_context(run_lock(run_dir))
            if resume:  # checked only now, with the run's options in: --worker-speeds needs its --workers
                cfg, source = resumed_config(cfg, run_dir, given)
                try:
                    check_config(cfg, given, resumed_at=saved_update(run_dir) if cfg.mode == "diloco" else 0)
                except UserError as err:  # (it named an option the user had not typed, nor said from where)
                    if source is None:
                        raise
                    raise UserError(f"{err} (the options not given come from {source}, as --resume takes "
                                    "them)") from None  # fmt: skip
        except UserError as err:
            if torchrun_rank() is not None:  # the other ranks would wait for this one
                refuse_torchrun(err)
            raise
        train(cfg, run_dir, resume=resume, force=force, progress=not quiet, log_every=cfg.log_every)
