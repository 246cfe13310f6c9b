r"""A simulated sync run's predicted clock at other worker speeds, without training it again.

A sync step takes one batch (or --local-accum batches) from every worker's stream and sums their
gradients: which batches, and so every update, do not depend on how fast the workers are. Only the
predicted clock does: every step waits for the slowest worker, then all-reduces the parameters. So the
clock of the same run at speeds 1,1,1,0.5 is the same batches replayed through the simulator's clock
(`PredictedClock`) at those speeds. This writes OUT, a copy of RUN's events, config and test scores with
`predicted_s` and `worker_s` replayed; its start events say `worker_speeds` and `clock_replayed_from`.
It needs a fixed token price (`--simulate-token-us`), and RUN's BIN folder (or --bin). A run resumed with
another `--link-gbps` or `--simulate-token-us` is replayed segment by segment, each at the prices its start
event names, as `nmt report` re-prices it.

    python scripts/replay_sync_clock.py runs/convergence/sync-s1 runs/convergence/sync-straggler-s1 \
        --worker-speeds 1,1,1,0.5
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from async_nmt.config import CorpusInfo, ModelConfig, TrainConfig, from_dict
from async_nmt.data.batches import worker_streams
from async_nmt.data.binarize import load_manifest, load_split
from async_nmt.errors import ScriptParser, UserError, cannot_write, run_script
from async_nmt.report import Run, in_force
from async_nmt.train.checkpoint import check_not_inside_a_run
from async_nmt.train.events import read_events, round_floats
from async_nmt.train.links import link_seconds
from async_nmt.train.modes.simulated import PredictedClock
from async_nmt.train.options import MIN_SPEED


def replay(run: Path, out: Path, speeds: list[float], bin_dir: Path | None = None, force: bool = False) -> None:
    for name in ("config.json", "events.jsonl"):
        if not (run / name).is_file():
            raise UserError(f"{run}: not a run folder (no {name})")
    check_out(run, out, force)
    config = json.loads((run / "config.json").read_text())
    cfg, model = from_dict(TrainConfig, config["train"]), from_dict(ModelConfig, config["model"])
    if cfg.mode != "sync" or not cfg.simulate or not cfg.simulate_token_us:
        raise UserError(f"{run}: not a simulated sync run with a fixed token price (--simulate-token-us)")
    if len(speeds) != cfg.workers:
        raise UserError(f"--worker-speeds: {len(speeds)} speeds for {cfg.workers} workers")
    events = read_events(run / "events.jsonl")
    if bin_dir is None and not Path(cfg.bin_dir).is_dir():  # (load_split's error did not name --bin)
        raise UserError(f"{cfg.bin_dir}: no such folder, where {run} was trained from: give its BIN folder with --bin")
    check_corpus(run, config.get("corpus") or {}, bin_dir or Path(cfg.bin_dir))
    split = load_split(bin_dir or Path(cfg.bin_dir), "train")
    streams = worker_streams(split, cfg.max_tokens, model.max_positions, cfg.seed, cfg.workers, cfg.batch_sort)
    cfg.worker_speeds = speeds
    clock = PredictedClock()
    clock.start_clock(cfg, cfg.workers, events[0]["params"])
    updates, priced = 0, Run(run.name, run, events)
    for event in events:
        # a resume may change the prices: the steps after a start event were priced at those it names
        if event["kind"] == "start":
            clock.link_s = link_seconds(event["params"], in_force(priced, event, "link_gbps"))
            token_us = in_force(priced, event, "simulate_token_us")
            if not token_us:  # (a segment that measured its tokens' time cannot be replayed)
                raise UserError(f"{run}: its start at update {event['updates']} measured its tokens' time "
                                "(no --simulate-token-us): only a fixed price can be replayed")  # fmt: skip
            clock.token_s = token_us * 1e-6
        while updates < event["updates"]:  # one sync step: every worker's batches, then the all-reduce
            for worker, stream in enumerate(streams):
                tokens = sum(stream.next().tokens for _ in range(cfg.local_accum))
                clock.charge(worker, tokens, seconds=0.0)  # (at the run's fixed price a token: no time taken)
            clock.all_reduce()
            updates += 1
        if "predicted_s" in event:
            event.update(predicted_s=round_floats(clock.predicted_s), worker_s=round_floats(clock.seconds))
        if event["kind"] == "start":
            event.update(worker_speeds=speeds, clock_replayed_from=str(run))
    out.mkdir(parents=True, exist_ok=True)
    config["train"]["worker_speeds"] = speeds
    for name, text in (("events.jsonl", "".join(json.dumps(e) + "\n" for e in events)),
                       ("config.json", json.dumps(config, indent=2) + "\n")):  # fmt: skip
        try:
            (out / name).write_text(text, encoding="utf-8")
        except OSError as err:  # (a full disk named no file)
            raise cannot_write(err, str(out / name)) from None
    for name in ("test-best.json", "test-avg5.json"):  # the same updates: the same model
        if (run / name).is_file():
            shutil.copy(run / name, out / name)


def check_corpus(run: Path, corpus: dict, bin_dir: Path) -> None:
    """BIN holds the corpus RUN was trained on, as far as its config.json records it (the vocabulary; since
    2026-12-05 the training split's pairs and tokens), as `nmt-train --resume` checks: another was replayed
    without a word, on other batches."""
    have = asdict(CorpusInfo.of(load_manifest(bin_dir)))
    recorded = ("vocab_hash", "train_pairs", "train_tokens")
    differ = [f"{name} {have[name]} where {run} has {corpus[name]}" for name in recorded
              if corpus.get(name) not in (None, have[name])]  # fmt: skip
    if differ:
        raise UserError(f"{bin_dir}: not the corpus {run} was trained on ({'; '.join(differ)}); give its BIN with "
                        "--bin")  # fmt: skip


def check_out(run: Path, out: Path, force: bool) -> None:
    """OUT may be new or empty, or with `force` a replay this wrote before; never RUN nor another run (their
    events and config were rewritten in place, without a word, and the folder left inconsistent)."""
    if out.exists() and out.resolve() == run.resolve():
        raise UserError(f"{out}: is RUN itself; give another OUT (the replay would rewrite RUN's events)")
    if run.resolve() in out.resolve().parents:  # (RUN then held a folder nmt-train had not written)
        raise UserError(f"{out}: is inside RUN; give an OUT beside it")
    check_not_inside_a_run(out, "the replay", "give an OUT of its own")  # (it was made there)
    if not out.parent.is_dir():  # (a mistyped /nonexist/out made /nonexist)
        raise UserError(f"{out.parent}: no such folder")
    if out.is_dir() and any(out.iterdir()):
        events = out / "events.jsonl"
        replayed = events.is_file() and "clock_replayed_from" in next(iter(read_events(events)), {})
        if not replayed:
            raise UserError(f"{out}: exists and is not a replay (its events name no clock_replayed_from); give a "
                            "new OUT")  # fmt: skip
        if not force:
            raise UserError(f"{out}: holds a replay already; use --force to replace it")
    elif out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a simulated sync run folder, trained with --simulate-token-us")
    parser.add_argument("out", type=Path, help="the folder to write the replayed run into")
    parser.add_argument(
        "--worker-speeds",
        required=True,
        help="the speeds to replay at, comma-separated, one per worker, each from 0.001 to 1000 (as nmt-train's)",
    )
    parser.add_argument("--bin", type=Path, default=None, help="the run's BIN folder, if not where it was")
    parser.add_argument("--force", action="store_true", help="replace OUT where it holds a replay of this script")
    args = parser.parse_args()
    try:
        speeds = [float(s) for s in args.worker_speeds.split(",")]
    except ValueError:
        raise UserError(f"--worker-speeds: {args.worker_speeds!r} is not a comma-separated list of numbers") from None
    # nmt-train's range (nan is outside it): a speed of 1e-320 replayed an infinite clock, written as Infinity,
    # which no JSON reader (nmt report's included) takes back
    if not all(MIN_SPEED <= s <= 1 / MIN_SPEED for s in speeds):
        raise UserError(f"--worker-speeds: every speed must be between {MIN_SPEED:g} and {1 / MIN_SPEED:g}, as "
                        "nmt-train takes them")  # fmt: skip
    replay(args.run, args.out, speeds, args.bin, args.force)


if __name__ == "__main__":
    run_script(main)
