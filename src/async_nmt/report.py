"""`nmt report`: compare run folders from their events.jsonl (table, time to a target BLEU, speedups, plots; config.json
and spm.model only say which runs may be compared)."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from async_nmt.config import (
    MANIFEST,
    RANK_MODES,
    VOCAB_NAME,
    ModelConfig,
    TrainConfig,
    check_replaceable,
    from_dict,
    is_run_folder,
    temporary_beside,
)
from async_nmt.errors import UserError, briefly, shown, stdout_console
from async_nmt.train.events import read_events, run_staleness
from async_nmt.train.links import PUSH_LINKS, all_reduce_links, link_seconds

# --x choice -> the event field it reads, and the axis label
X_AXES = {
    "time": ("train_s", "training time (s)"),
    "predicted": ("predicted_s", "predicted wall clock of the emulated devices (s)"),
    "updates": ("updates", "updates"),
    "tokens": ("tokens", "target tokens"),
}


class SecondsFormat:
    """Seconds as the tables show them: one decimal, or 3 significant digits below 10 s (a short run's 0.31
    and 0.14 s to target showed as 0.3 and 0.1, beside a speedup of 2.20x). A format as `"{:,}"` is one."""

    @staticmethod
    def format(seconds: float) -> str:
        return f"{seconds:,.1f}" if seconds >= 9.995 else f"{seconds:#.3g}"  # (9.996 is 10.0, as 10 is)


TO_TARGET: dict[str, tuple[str, Any]] = {
    "time": ("to target (s)", SecondsFormat),
    "predicted": ("to target (predicted s)", SecondsFormat),
    "updates": ("to target (updates)", "{:,}"),
    "tokens": ("to target (tokens)", "{:,}"),
}


SECTIONS = ("train", "corpus")  # of config.json


@dataclass
class Run:
    """What the report needs of one run folder: its events.jsonl, and config.json's corpus and vocabulary."""

    name: str
    path: Path
    events: list[dict[str, Any]]

    @property
    def starts(self) -> list[dict[str, Any]]:
        """The start events: the first, then one a resume, each with the options in force from it on."""
        return [e for e in self.events if e["kind"] == "start"]

    @property
    def start(self) -> dict[str, Any]:
        # a resumed run logs a second `start`; the latest one holds the options in force now
        return self.starts[-1] if self.starts else {}

    @property
    def valid(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "valid"]

    @property
    def train(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "train"]

    @property
    def last(self) -> dict[str, Any]:
        # a run that has only just started may have logged nothing yet
        return self.events[-1] if self.events else {}

    @property
    def finished(self) -> bool:
        """Ended by its own stopping rule; a run stopped by Ctrl-C or SIGTERM (an `end` event with
        `interrupted`) is not finished: `--resume` goes on with it."""
        return self.last.get("kind") == "end" and not self.last.get("interrupted", False)

    @property
    def config(self) -> dict[str, Any]:
        """The run's config.json, {} where there is none (event logs kept without it, as docs/results/gpu) or
        where it is not JSON (`unreadable_config` says so)."""
        return self._read_config[0]

    @property
    def unreadable_config(self) -> str | None:
        """Why config.json, which is there, could not be read; None where it could, or is not there."""
        return self._read_config[1]

    @cached_property
    def _read_config(self) -> tuple[dict[str, Any], str | None]:
        path = self.path / "config.json"
        if not path.is_file():
            return {}, None
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            # (it was an error: one damaged file, read only for warnings, stopped `nmt report runs/*`)
            return {}, f"{path}: not a JSON run configuration ({err})"
        if not isinstance(config, dict):
            return {}, f"{path}: not a JSON object"
        # (the sections the report reads are objects, or are not read: a damaged file is not a traceback)
        return {key: value for key, value in config.items() if key not in SECTIONS or isinstance(value, dict)}, None


def load_run(path: Path) -> Run:
    """Read a run folder; a one-line error for a folder that is not a run. A run that has not validated
    yet is read too (a row of dashes): the report works on runs still in progress."""
    log = Path(path) / "events.jsonl"
    if log.is_dir():
        raise UserError(f"{log}: a folder, not a run's event log")
    if not log.is_file():
        if not Path(path).exists():
            raise UserError(f"{path}: no such run folder")
        if not Path(path).is_dir():  # e.g. RUN/events.jsonl given for RUN
            hint = f" ({Path(path).parent}?)" if (Path(path).parent / "events.jsonl").is_file() else ""
            raise UserError(f"{path}: a file; give the run folder that holds events.jsonl{hint}")
        raise UserError(f"{path}: not a run folder (no events.jsonl)")
    return Run(name=str(path), path=Path(path), events=read_events(log))


# what the simulator priced before these were options: a link of 10 GB/s, a token at its measured time
BEFORE_OPTIONS = {"link_gbps": 80.0, "simulate_token_us": 0.0}


def in_force(run: Run, start: dict[str, Any], option: str) -> Any:
    """A --simulate option that `start` (one of the run's start events) says is in force from it on; for a start
    event from before they named it, config.json's, or BEFORE_OPTIONS' for one from before the option; None
    without config.json."""
    if option in start:
        return start[option]
    if not (run.path / "config.json").is_file() or run.unreadable_config:
        return None
    return run.config.get("train", {}).get(option, BEFORE_OPTIONS[option])


def reprice(run: Run, link_gbps: float, partial: bool = False) -> Run:
    """`run` with its predicted clock (--simulate) re-priced as if every link ran at `link_gbps` Gb/s.

    An emulated run's pushes, order and updates do not depend on its link, only its clock does, and the
    link's time on each device's clock is a count of parameter transfers: 2 per push of async and
    async-accum (each device's own clock, `worker_s`), one ring all-reduce per sync update or diloco round
    (every device waits for it). A resume may change --link-gbps: the transfers after each start event were
    priced at the link it names. Runs without a predicted clock are left as they are.

    An async run resumed from one logged before the per-device clocks existed has early events that cannot
    be re-priced: one-line error, or with `partial` those events are left out of the run returned."""

    start = run.start
    if "predicted_s" not in run.last:
        return run
    lacking = [f for f in ("params", "mode", "workers") + (("sync_every",) if start.get("mode") == "diloco" else ())
               if f not in start]  # fmt: skip
    if lacking:
        raise UserError(f"{run.name}: no {', '.join(lacking)} in its start event to re-price its clock")
    price = link_seconds(start["params"], link_gbps)
    mode, ring = start["mode"], all_reduce_links(start["workers"])

    def transfers(event: dict[str, Any]) -> list[float] | None:
        """Each clock's transfers up to `event`: sync and diloco have one that every device waits on; None for
        an async event without the per-device pushes."""
        if mode == "sync":
            return [event["updates"] * ring]
        if mode == "diloco":
            return [event["updates"] // start["sync_every"] * ring]
        return [PUSH_LINKS * p for p in event["worker_pushes"]] if "worker_pushes" in event else None

    def link(event: dict[str, Any]) -> float:
        """The link a start event says its segment was priced at."""
        was = in_force(run, event, "link_gbps")
        if was is None:
            raise UserError(f"{run.name}: no link speed in its start event or config.json to re-price")
        return was

    def shifted(counts: list[float]) -> list[float]:
        """Each clock's re-pricing at `counts`: the segments before, and this one's transfers since it began."""
        return [d + delta * (n - b) for d, n, b in zip(done, counts, base, strict=True)]

    first = next(e for e in run.events if e["kind"] == "start")  # (an event before it is priced at its link)
    events = []
    base: list[float] = []  # each clock's transfers when the segment began (at a start event: a resume)
    done: list[float] = []  # each clock's re-pricing of the segments before
    delta = 0.0  # the re-pricing of one transfer in this segment
    for event in run.events:
        counts = transfers(event)
        if counts is not None and base and len(counts) != len(base):  # (one event's lists agree: read_events)
            raise UserError(f"{run.path / 'events.jsonl'}: the event of update {event['updates']} has the pushes of "
                            f"{len(counts)} workers, where the run's start event has {len(base)}")  # fmt: skip
        # a start event without the per-device pushes (logged before them) goes on with the segment before
        if not base or (event["kind"] == "start" and counts is not None):
            begins = counts if counts is not None else [0.0] * start["workers"]  # (a first start before them)
            done = shifted(begins) if base else [0.0] * len(begins)
            base = begins
            delta = price - link_seconds(start["params"], link(event if event["kind"] == "start" else first))
        if "predicted_s" in event:
            if counts is not None and mode in RANK_MODES:
                predicted = event["predicted_s"] + shifted(counts)[0]
            elif counts is not None and "worker_s" in event:
                clocks = [s + d for s, d in zip(event["worker_s"], shifted(counts), strict=True)]
                event = {**event, "worker_s": clocks}  # (each device's, as `idle_devices` reads them)
                predicted = max(clocks)
            elif partial:
                continue
            else:
                raise UserError(f"{run.name}: its events predate the per-device clocks (worker_s) that re-price "
                                f"an {mode} run; train it again to re-price it (scripts/results_convergence.py "
                                "re-prices a resumed one from its resume on)")  # fmt: skip
            event = {**event, "predicted_s": predicted}
        events.append(event)
    return Run(name=run.name, path=run.path, events=events)


def x_values(run: Run, x: str) -> list[float]:
    """The chosen x coordinate of every valid event of `run`."""
    field = X_AXES[x][0]
    if any(field not in e for e in run.valid):
        raise UserError(f"{run.name}: its events have no {field} (not a --simulate run); use --x time")
    return [e[field] for e in run.valid]


def to_target(run: Run, target: float | None, x: str) -> float | None:
    """x at the first validation with BLEU >= target, both as they are shown: the BLEU to 2 decimals (a BLEU
    shown as the target's was not a BLEU that reached it, where it fell short by 0.004), the target as given
    (`bleu_text`; rounded too until 2026-12-07, a BLEU shown as 0.00 reached a target shown as 0.004, and
    92.06 one of 92.064); None when the run never got there, or without a target."""
    if target is None:
        return None
    for value, event in zip(x_values(run, x), run.valid, strict=True):
        if round(event["bleu"], 2) >= target:
            return value
    return None


def training_split(run: Run) -> str | None:
    """The training split's pairs and tokens that the run recorded (config.json's corpus), if it did."""
    info = run.config.get("corpus", {})
    pairs, tokens = info.get("train_pairs"), info.get("train_tokens")
    if not (isinstance(pairs, int) and isinstance(tokens, int) and pairs):
        return None
    return f"{pairs:,} pairs, {tokens:,} tokens"


def mode_label(start: dict[str, Any]) -> str:
    """The mode column: the mode, and what sets it apart (lr/s: --staleness-lr inverse; H: diloco's round)."""
    mode = start.get("mode", "")
    if mode == "diloco":
        local_sgd = start.get("outer_lr") == 1 and start.get("outer_momentum") == 0
        return f"{'local SGD' if local_sgd else 'diloco'} H={start.get('sync_every')}"
    return mode + (" lr/s" if start.get("staleness_lr") == "inverse" else "")


def summarize(run: Run, target: float, x: str) -> dict[str, Any]:
    """One row of the report (without the speedup, which needs the baseline)."""
    start, last = run.start, run.last
    mean, most, _ = run_staleness(run.train)
    clock = "predicted_s" if x == "predicted" else "train_s"  # tok/s on the clock of the report
    bleus = [e["bleu"] for e in run.valid]  # none yet: a row of dashes
    return {
        "run": run.name,
        "mode": mode_label(start),
        "workers": start.get("workers"),
        "accum": start.get("accum"),
        "local_accum": start.get("local_accum"),
        "lr": start.get("lr"),
        "updates": last.get("updates"),
        # (none before the first tokens: a run with only its start event showed 0)
        "tok_per_s": last["tokens"] / last[clock] if last.get("tokens") and last.get(clock, 0) > 0 else None,
        "staleness_mean": mean,
        "staleness_max": most,
        "best_bleu": max(bleus) if bleus else None,
        "final_bleu": bleus[-1] if bleus else None,
        "to_target": to_target(run, target, x),
        "speedup": None,
        "finished": run.finished,
        "diverged": run.finished and bool(run.last.get("diverged", False)),  # (the trainer stopped it for its loss)
        "failed": run.last.get("failed") if run.finished else None,  # (an error stopped it: a worker, memory)
    }


def ended_unvalidated(run: Run) -> str | None:
    """How a run without a validation ended before its first; None where it has not ended (a run that diverged
    or failed at its start was said to have "no validation yet", as if one were to come)."""
    if run.last.get("kind") != "end":
        return None
    if run.last.get("interrupted"):
        return "it was interrupted before its first (--resume goes on)"
    if run.last.get("diverged"):
        return "it diverged before its first, and ended"
    if run.last.get("failed"):
        return f"an error stopped it before its first ({run.last['failed']})"
    return "it ended before its first"


def not_validated(run: Run) -> str:
    """Why a run has no validation: not yet, or how it ended before its first."""
    if (how := ended_unvalidated(run)) is None:
        return "no validation yet (no valid event in events.jsonl)"
    return f"no validation (no valid event in events.jsonl): {how}"


def baseline_unvalidated(baseline: Run) -> str:
    """The baseline has no validation: yet, or how it ended before its first."""
    how = ended_unvalidated(baseline)
    return f"the baseline {baseline.name} has no validation " + ("yet" if how is None else f"({how})")


def build_report(
    runs: list[Run], target_bleu: float | None = None, baseline: Run | None = None, x: str = "time"
) -> dict[str, Any]:
    """The report as one JSON-ready object: x axis, target, baseline and one row per run. Without a target
    worth racing to, `target_bleu` is None and `no_target` says why: no time to target, no speedups; where
    runs reach the target and the baseline does not, `no_speedup` says so."""
    if baseline is None:
        sync = [r for r in runs if r.start.get("mode") == "sync"]  # (one not validated yet cancelled every target)
        baseline = next((r for r in sync if r.valid), sync[0] if sync else runs[0])
    no_target = None
    if target_bleu is None and not baseline.valid:
        no_target = baseline_unvalidated(baseline)
    elif target_bleu is None:  # 0.5 below the baseline's best, but at least half of it (short runs: never below 0)
        best = max(e["bleu"] for e in baseline.valid)
        target_bleu = round(max(best - 0.5, best / 2), 2)  # (as it is shown)
        if target_bleu <= 0:  # every run meets it at its first validation: the race says nothing
            target_bleu, no_target = None, f"the baseline's best BLEU, {bleu_text(best)}, makes a target of 0.00"
    base_x = to_target(baseline, target_bleu, x)
    rows = [summarize(run, target_bleu, x) for run in runs]
    for row in rows:
        if base_x is not None and row["to_target"]:
            row["speedup"] = base_x / row["to_target"]
    no_speedup = None  # a --target-bleu that another run reaches and the baseline does not
    if target_bleu is not None and base_x is None and any(row["to_target"] is not None for row in rows):
        best = max((e["bleu"] for e in baseline.valid), default=None)
        no_speedup = (
            baseline_unvalidated(baseline)
            if best is None
            else f"the baseline {baseline.name} never reached BLEU {bleu_text(target_bleu)} (its best: {best:.2f})"
        )
    return {"x": x, "target_bleu": target_bleu, "no_target": no_target, "no_speedup": no_speedup,
            "baseline": baseline.name, "runs": rows}  # fmt: skip


# config.json's training options that do not change what a run trains, or when it is measured: runs that differ
# in these alone (and in their seed) are repeats of one setting
NOT_THE_SETTING = ("seed", "devices", "compile", "log_every", "save_every", "keep_last")


# config.json's limits, when a run stops: a resume may change them (a seed trained on with a larger --max-updates)
LIMITS = ("max_updates", "max_epochs", "max_time", "patience")


def _train_options(run: Run) -> dict[str, Any] | None:
    """config.json's training options as the code that reads them sees them (an option that a run's version did
    not write has its default: batch_sort, since 2026-12-06); None where it names no seed."""
    train = run.config.get("train")
    if not isinstance(train, dict) or "seed" not in train:
        return None
    with contextlib.suppress(TypeError, ValueError):  # (a hand-edited config: compared as it is)
        train = asdict(from_dict(TrainConfig, train))
    return train


def _setting(run: Run, without: Sequence[str] = ()) -> str | None:
    """What `seed_groups` compares of a run: config.json's model and training options but NOT_THE_SETTING (and
    `without`), and the precisions in force; None without a readable config.json that names a seed. The corpus
    is its record in config.json where it holds the training split (as `differences` compares it), not bin_dir
    as typed: one BIN typed two ways (data/bin, /home/me/data/bin) made two settings, and two corpora both
    typed `bin` one."""
    train, model = _train_options(run), run.config.get("model")
    if train is None:
        return None
    # as the code that reads them sees them: a model's embeddings' dropout is named where it follows dropout
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        model = asdict(from_dict(ModelConfig, model).in_effect())
    kept = {k: v for k, v in train.items() if k not in NOT_THE_SETTING and k not in without}
    if training_split(run) is not None:
        kept["bin_dir"] = run.config["corpus"]
    precisions = sorted({str(start.get("precision")) for start in run.starts})  # (a resume logs its own)
    return json.dumps([kept, model, precisions], sort_keys=True)


def _same_seed(runs: list[Run]) -> tuple[dict[str, list[Run]], list[tuple[Run, Run]]]:
    """The runs by setting (`_setting`), each seed once, in the order of their first run; and each run left out
    as it repeats the setting and the seed of an earlier one (a copy of a run, or a run again), with that run."""
    groups: dict[str, list[Run]] = {}
    repeats: list[tuple[Run, Run]] = []
    for run in runs:
        if (key := _setting(run)) is None:
            continue
        group = groups.setdefault(key, [])
        seed = json.dumps(run.config["train"]["seed"])
        if (first := next((r for r in group if json.dumps(r.config["train"]["seed"]) == seed), None)) is not None:
            repeats.append((run, first))
        else:
            group.append(run)
    return groups, repeats


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """The runs that repeat one setting with other seeds, two or more a group, in the order of their first run:
    the same config.json (model, and training options but NOT_THE_SETTING) and the same precision in force
    (start events). A run without a readable config.json is in none, and so is one whose setting and seed an
    earlier run has (`repeated_seeds` warns of it): a copy of a run counted as a second seed, with a spread of
    0.00."""
    return [group for group in _same_seed(runs)[0].values() if len(group) > 1]


def repeated_seeds(runs: list[Run]) -> list[str]:
    """One line for each run that `seed_groups` leaves out, as it repeats the setting and the seed of another."""
    return [f"warning: {run.name} repeats the setting and the seed ({json.dumps(run.config['train']['seed'])}) of "
            f"{first.name}: it is no other seed, and the seeds table leaves it out"
            for run, first in _same_seed(runs)[1]]  # fmt: skip


def apart_by_limits(runs: list[Run]) -> list[str]:
    """One line for each set of runs of other seeds that would repeat one setting but for their limits (LIMITS:
    --max-updates, ...), which the seeds table counts apart: a seed resumed with a larger --max-updates left its
    group without a word."""
    loose: dict[str, list[Run]] = {}
    for run in runs:
        if (key := _setting(run, LIMITS)) is not None:
            loose.setdefault(key, []).append(run)
    lines = []
    for group in loose.values():
        seeds = {json.dumps(run.config["train"]["seed"]) for run in group}
        if len(seeds) > 1 and len({_setting(run) for run in group}) > 1:
            read = [_train_options(run) or {} for run in group]
            differ = [f"--{name.replace('_', '-')}" for name in LIMITS if len({str(t.get(name)) for t in read}) > 1]
            lines.append(f"warning: {', '.join(run.name for run in group)} repeat one setting with other seeds but "
                         f"for {' and '.join(differ)}: the seeds table counts them apart")  # fmt: skip
    return lines


def spread(values: list[float]) -> dict[str, Any]:
    """The mean, the sample standard deviation (None for one value) and the count of `values` (mean None:
    none)."""
    return {"mean": statistics.fmean(values) if values else None,
            "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}  # fmt: skip


def summarize_seeds(groups: list[list[Run]], report: dict[str, Any]) -> list[dict[str, Any]]:
    """A row for each group of `seed_groups`, from the report's rows of its runs: the mean and spread of their
    best and final BLEU and of their time to target (of those that reached it), and the speedup of that mean
    time over the baseline's group's (its run alone where it repeats no setting): a ratio of means."""
    rows = {row["run"]: row for row in report["runs"]}
    base = next((g for g in groups if any(r.name == report["baseline"] for r in g)), None)
    base_times = [t for r in base if (t := rows[r.name]["to_target"]) is not None] if base else []
    base_time = statistics.fmean(base_times) if base_times else rows[report["baseline"]]["to_target"]
    out = []
    for group in groups:
        own = [rows[run.name] for run in group]
        times = spread([row["to_target"] for row in own if row["to_target"] is not None])
        out.append({
            "runs": [run.name for run in group],
            "seeds": [run.config["train"]["seed"] for run in group],
            "mode": own[0]["mode"],
            "best_bleu": spread([row["best_bleu"] for row in own if row["best_bleu"] is not None]),
            "final_bleu": spread([row["final_bleu"] for row in own if row["final_bleu"] is not None]),
            "to_target": times,
            "speedup": base_time / times["mean"] if base_time and times["mean"] else None,
        })  # fmt: skip
    return out


def through_starts(
    value: Callable[[Run, dict[str, Any]], Any], text: Callable[[Any], str] = str
) -> Callable[[Run], str | None]:
    """A setting's values in a run, one a start event where a resume changed it ("25, then 80")."""

    def value_of(run: Run) -> str | None:
        values = [text(v) for start in run.starts if (v := value(run, start)) is not None]
        return ", then ".join(v for i, v in enumerate(values) if i == 0 or v != values[i - 1]) or None

    return value_of


# the schedule's options that a resume may change, as start events record them (the report's lr column shows
# the last)
SCHEDULE = (("lr", "--lr"), ("warmup", "--warmup"))


def resumed_otherwise(runs: list[Run]) -> list[str]:
    """One line for each run whose resume changed its schedule (--lr, --warmup): its BLEU and times are of
    that schedule, where its row shows the last lr alone (without a word until 2026-12-07)."""
    values_of = {option: through_starts(lambda _, start, key=key: start.get(key), "{:g}".format)
                 for key, option in SCHEDULE}  # fmt: skip
    lines = []
    for run in runs:
        changed = [f"{option} {values}" for option, value_of in values_of.items()
                   if (values := value_of(run)) is not None and ", then " in values]  # fmt: skip
        if changed:
            lines.append(f"warning: {run.name} was resumed with another schedule ({'; '.join(changed)}); its row "
                         "shows the last lr")  # fmt: skip
    return lines


def differences(runs: list[Run], x: str = "time", link_gbps: float | None = None) -> list[str]:
    """One line for each way the runs are not comparable: another model size (preset), precision, validation
    set (its sentences, else --valid-max-sentences), validation beam (--valid-beam) or corpus (its training
    split, else bin_dir; vocabulary); and for their times on the x axis `x`, another clock: --simulate or not,
    or another device (the training clock), a token's price or a link (--simulate-token-us, --link-gbps where
    the report does not re-price it: the predicted clock). From each run's start events and config.json; a run
    that does not record a setting is left out of its comparison.

    The vocabulary is compared by the hash of RUN/spm.model's pieces where every run has one; else by the
    corpus's languages and vocabulary size, as the hashes recorded before 2026-12-05 were of the file, and
    the same vocabulary preprocessed twice recorded two (docs/results/convergence holds such runs)."""
    from async_nmt.data.vocab import vocab_hash

    def vocabulary(run: Run) -> str | None:
        try:
            return vocab_hash(run.path / VOCAB_NAME) if (run.path / VOCAB_NAME).is_file() else None
        except UserError:  # not a sentencepiece model: this run's vocabulary cannot be told
            return None

    def corpus(run: Run) -> str | None:
        info = run.config.get("corpus", {})
        fields = [info.get(k) for k in ("src", "tgt", "vocab_size")]
        return None if None in fields else "{}-{}, {} pieces".format(*fields)

    hashes = {run.name: vocabulary(run) for run in runs}
    # the corpus by its training split where every run recorded it (the same BIN can be typed two ways, and two
    # corpora can both be "bin"), else by the folder name as typed
    split = {run.name: training_split(run) for run in runs}
    by_split = None not in split.values()
    # the validation set by its sentences where every run's start event has them (since 2026-12-05: 0 and 500
    # sentences of a valid split of 400 are one set, and two corpora's first 500 are two), else by their number
    sentences = {run.name: run.start.get("valid_crc32") for run in runs}
    by_sentences = None not in sentences.values()

    def in_starts(key: str) -> Callable[[Run], str | None]:
        """A start event field (a resume on another machine may choose it again: the precision, the device)."""
        return through_starts(lambda run, start: start.get(key))

    settings = {
        "preset": lambda run: run.start.get("preset", run.config.get("train", {}).get("preset")),
        "precision (--precision: bf16 autocast or fp32)": in_starts("precision"),
        "validation set (CRC-32 of its sentences)" if by_sentences else "validation set (--valid-max-sentences)": (
            lambda run: sentences[run.name] if by_sentences else run.config.get("train", {}).get("valid_max_sentences")
        ),
        # (a resume keeps it; start events before it was an option, 2026-12-08, were of greedy validation)
        "validation beam (--valid-beam; 1: greedy)": lambda run: run.start.get("valid_beam", 1) if run.start else None,
        "corpus (training pairs, tokens)" if by_split else "corpus (bin_dir)": (
            (lambda run: split[run.name]) if by_split else (lambda run: run.config.get("train", {}).get("bin_dir"))
        ),
        "vocabulary": (lambda run: hashes[run.name]) if None not in hashes.values() else corpus,
    }

    def simulated(run: Run) -> str | None:
        return None if not run.events else "--simulate" if "predicted_s" in run.last else "real devices"

    def prices(option: str) -> Callable[[Run], str | None]:
        """A --simulate option's values in a run (`in_force`: config.json's for starts that did not name it)."""
        return through_starts(lambda run, start: in_force(run, start, option), "{:g}".format)

    clocks: dict[str, Callable[[Run], str | None]] = {}  # what the times alone depend on
    if x == "time":
        clocks["training clock (--simulate: one process emulates every worker)"] = simulated
        clocks["device (the trainer's, as start events name it since 2026-12-07)"] = in_starts("device_name")
    if x == "predicted":
        clocks["price of a token (--simulate-token-us; 0: measured)"] = prices("simulate_token_us")
        if link_gbps is None:  # (with it, every run is re-priced for that link)
            clocks["link (--link-gbps)"] = prices("link_gbps")
    lines = []
    for setting, value_of in {**settings, **clocks}.items():
        names: dict[str, list[str]] = {}
        for run in runs:
            value = value_of(run)
            if value is not None:
                names.setdefault(str(value), []).append(run.name)
        if len(names) > 1:
            which = "; ".join(f"{value}: {briefly(named)}" for value, named in names.items())
            what = "times" if setting in clocks else "BLEU and times"
            lines.append(f"warning: the runs differ in {setting} ({which}); their {what} do not compare")
    return lines


# --------------------------------------------------------------------------- output
def columns(x: str) -> list[tuple[str, str, Any]]:
    """(header, row key, format) of every column, shared by the terminal table and the markdown."""
    header, spec = TO_TARGET[x]
    return [
        ("run", "run", "{}"),
        ("mode", "mode", "{}"),
        ("workers", "workers", "{}"),
        ("accum", "accum", "{}"),
        ("local accum", "local_accum", "{}"),
        ("lr", "lr", "{:g}"),
        ("updates", "updates", "{:,}"),
        ("tok/s", "tok_per_s", "{:,.0f}"),
        ("stale mean", "staleness_mean", "{:.2f}"),
        ("stale max", "staleness_max", "{}"),
        ("best BLEU", "best_bleu", "{:.2f}"),
        ("final BLEU", "final_bleu", "{:.2f}"),
        (header, "to_target", spec),
        ("speedup", "speedup", "{:.2f}x"),
    ]


def run_label(row: dict[str, Any]) -> str:
    """A run's name as the tables show it: marked with * while it is not finished, and where it diverged or
    failed, saying so."""
    label = shown(row["run"]) + ("" if row["finished"] else " *")
    return label + (" (diverged)" if row.get("diverged") else " (failed)" if row.get("failed") else "")


def cells(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells; a missing value is a dash, a run still going is marked with *, one that
    diverged or failed says so. A diloco run's staleness is the inner steps since the last sync, and its cells
    say so."""
    cols = columns(report["x"])
    rows = []
    for row in report["runs"]:
        texts = ["-" if row[key] is None else spec.format(row[key]) for _, key, spec in cols]
        texts[0] = run_label(row)
        if " H=" in row["mode"]:  # diloco or local SGD
            for i, (_, key, _) in enumerate(cols):
                if key.startswith("staleness") and row[key] is not None:
                    texts[i] += " since sync"
        rows.append(texts)
    return [header for header, _, _ in cols], rows


SEEDS_TITLE = "seeds of one setting: mean ± sd; to target: of those that reached it; speedup: of the mean times"


def seed_cells(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the report's `seeds` rows (`summarize_seeds`)."""
    header, spec = TO_TARGET[report["x"]]
    spec = spec if spec is SecondsFormat else "{:,.0f}"  # (a mean of updates or tokens is no whole number)

    def spread_text(value: dict[str, Any], fmt: Any) -> str:
        if value["mean"] is None:
            return "-"
        return fmt.format(value["mean"]) + ("" if value["sd"] is None else f" ± {fmt.format(value['sd'])}")

    rows = []
    runs = {row["run"]: row for row in report["runs"]}
    for group in report["seeds"]:
        reached = f"{group['to_target']['n']} of {len(group['runs'])}" if report["target_bleu"] is not None else "-"
        # (marked as in the runs' table: a run still training, whose final BLEU is not, was not)
        rows.append([", ".join(run_label(runs[name]) for name in group["runs"]), group["mode"],
                     ", ".join(map(str, group["seeds"])),
                     spread_text(group["best_bleu"], "{:.2f}"), spread_text(group["final_bleu"], "{:.2f}"), reached,
                     spread_text(group["to_target"], spec),
                     "-" if group["speedup"] is None else f"{group['speedup']:.2f}x"])  # fmt: skip
    return ["runs", "mode", "seeds", "best BLEU", "final BLEU", "reached", header, "speedup"], rows


def bleu_text(bleu: float) -> str:
    """A target BLEU as BLEUs are shown, with 2 decimals, or with more where it has them (--target-bleu 0.001
    was shown as 0.00), all of them: the float's shortest decimal, written out (:g made 99.9999999 100, and 10
    decimals made 1e-12 "0.")."""
    return f"{bleu:.2f}" if round(bleu, 2) == bleu else format(Decimal(repr(bleu)), "f")


def title(report: dict[str, Any]) -> str:
    """The target, the baseline and the link of the report, as every output can hold it (shown)."""
    link = f", predicted clock re-priced for {report['link_gbps']:g} Gb/s links" if report.get("link_gbps") else ""
    if report["target_bleu"] is None:
        target = f"no target BLEU ({report['no_target']}: no time to target, no speedups)"
    else:
        target = f"target BLEU {bleu_text(report['target_bleu'])}"
        target += f" (no speedups: {report['no_speedup']})" if report.get("no_speedup") else ""
    return shown(f"{target}, baseline {report['baseline']}{link}")


def print_table(report: dict[str, Any], width: int | None = None) -> None:
    """The table on stdout: whole into a file or a pipe; on a terminal (or at `width`, for tests) never wider
    than it, and no value split across lines (an 80-column terminal showed lr 0.0 above 02): where the table
    is wider, the headers wrap at their spaces and the run names fold; where that is not enough, the columns
    that are the same in every run go into a line below it; and where that is not enough either, the columns
    are printed as several tables, one below the other, each beginning with the runs' names."""
    from rich.text import Text

    headers, rows = cells(report)
    notes = ["* not finished: still running, or interrupted (--resume goes on)"] * any(
        not row["finished"] for row in report["runs"]
    )
    console = stdout_console(width=width) if width else stdout_console()
    if not console.is_terminal and not width:  # into a file or a pipe: the whole table, never squeezed
        stdout_console(width=400).print(_rich_table(title(report), headers, rows, notes))
        print_seeds(report, stdout_console(width=400))
        return
    room = console.width
    columns = list(range(len(headers)))
    same = [i for i in columns[2:] if len({row[i] for row in rows}) == 1] if len(rows) > 1 else []
    alike: list[str] = []  # "header value" of each column left out
    if _rendered_width(_rich_table(title(report), headers, rows, notes, room)) > room and same:
        alike = [f"{headers[i]} {rows[0][i]}" for i in same]
        columns = [i for i in columns if i not in same]
    _print_in_tables(console, title(report), headers, rows, columns, notes, room)
    for line in _wrapped("the same in every run:", alike, room):  # (a caption broke "workers" from its 4)
        console.print(Text(line))
    print_seeds(report, console, room)


def _print_in_tables(console: Any, heading: str, headers: list[str], rows: list[list[str]], columns: list[int],
                     notes: list[str], room: int) -> None:  # fmt: skip
    """The `columns` of a table as one table where it fits in `room`, else as several, one below the other, each
    beginning with the first of them (the runs' names), the heading above the first and the notes below the
    last."""
    groups: list[list[int]] = [[columns[0]]]  # (each begins with the runs' names)
    for i in columns[1:]:
        wider = groups[-1] + [i]
        if len(groups[-1]) > 1 and _rendered_width(_rich_table("", *_picked(headers, rows, wider), [], room)) > room:
            groups.append([columns[0], i])
        else:
            groups[-1] = wider
    for k, group in enumerate(groups):
        last = k == len(groups) - 1
        console.print(_rich_table(heading if k == 0 else "", *_picked(headers, rows, group), notes if last else [],
                                  room))  # fmt: skip


def print_seeds(report: dict[str, Any], console: Any, room: int = 0) -> None:
    """The table of runs that repeat a setting (`seed_cells`), where there are any; on a terminal too narrow for
    it, as several tables, as the runs' table is (at 50 columns its numbers were split across lines, 23./15)."""
    if not report.get("seeds"):
        return
    headers, rows = seed_cells(report)
    if not room:
        console.print(_rich_table(SEEDS_TITLE, headers, rows, [], room))
        return
    _print_in_tables(console, SEEDS_TITLE, headers, rows, list(range(len(headers))), [], room)


def _wrapped(lead: str, items: list[str], room: int) -> list[str]:
    """`lead` and the comma-separated `items` in lines of at most `room` characters, broken between items
    only (one longer than a line is a line of its own)."""
    lines = [lead] if items else []
    for k, item in enumerate(items):
        text = item + ("," if k < len(items) - 1 else "")
        if len(lines[-1]) + 1 + len(text) > room:
            lines.append(" " + text)
        else:
            lines[-1] += " " + text
    return lines


def _picked(headers: list[str], rows: list[list[str]], columns: list[int]) -> tuple[list[str], list[list[str]]]:
    return [headers[i] for i in columns], [[row[i] for i in columns] for row in rows]


def _rich_table(heading: str, headers: list[str], rows: list[list[str]], notes: list[str], room: int = 0) -> Any:
    """The table of `cells`; where it is wider than `room` columns (> 0) as it is, each column is as wide as its
    longest word, of its header or of its values (a value is a word, or words: `4.50 since sync`, `diloco H=10`;
    a run's name may fold after 12 characters)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text  # names as they are: a str is read as markup ([bold], runs/a[lr=1]) and :emoji:

    def build(fixed: bool, name_width: int = 12) -> Any:
        table = Table(title=Text(heading, style="table.title") if heading else None,
                      caption="\n".join(notes) or None, box=box.SIMPLE_HEAD, collapse_padding=True,
                      pad_edge=False)  # fmt: skip
        for i, header in enumerate(headers):
            longest = max([len(word) for row in rows for word in row[i].split()], default=1)
            least = max(len(word) for word in header.split())
            fit = max(least, min(longest, name_width) if i == 0 else longest)
            # (by header: in the second of several tables the first value was left-justified)
            table.add_column(header, justify="left" if header in ("run", "runs", "mode") else "right", overflow="fold",
                             width=fit if fixed else None)  # fmt: skip
        for row in rows:
            table.add_row(*map(Text, row))
        return table

    table = build(fixed=False)
    if not room or _rendered_width(table) <= room:
        return table
    table = build(fixed=True)
    spare = room - _rendered_width(table)  # the names fold only as the room needs (at 90 columns, in 79)
    return build(fixed=True, name_width=12 + spare) if spare > 0 else table


def _rendered_width(table: Any) -> int:
    """The columns `table` takes, printed where there is room for it as it is."""
    import io

    from rich.console import Console

    console = Console(width=10_000, file=io.StringIO())
    with console.capture() as captured:
        console.print(table)
    return max((len(line) for line in captured.get().splitlines()), default=0)


MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # what Markdown reads as markup in a table's cell


def markdown_text(text: str) -> str:
    """`text` as Markdown shows it as it is: a run named run_*y* was shown in italics, and a "|" in a table's
    cell split it."""
    return MARKDOWN_SPECIAL.sub(r"\\\1", text)


def markdown_table(report: dict[str, Any], table: Callable[[dict[str, Any]], tuple[list[str], list[list[str]]]] = cells
                   ) -> str:  # fmt: skip
    """The table (`cells`, or `seed_cells`) as Markdown, each cell's text as it is (`markdown_text`)."""
    headers, rows = table(report)
    escaped = [[markdown_text(c) for c in line] for line in (headers, *rows)]
    lines = [escaped[0], ["---"] * len(headers), *escaped[1:]]
    return "".join("| " + " | ".join(line) + " |\n" for line in lines)


SEED_STYLES = ("-", "--", ":", "-.")  # the line of each seed of a setting, which share a colour


def plot(runs: list[Run], field: str, ylabel: str, x: str, path: Path, target: float | None = None) -> None:
    """One line per run of a valid-event field against the x axis, written as a PNG (no display needed); the
    seeds of one setting (`seed_groups`) in one colour, each in its own line style."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg; pyplot and its GUI stay unloaded

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    lines: list[Any] = []  # (matplotlib Line2D)
    labels: list[str] = []
    style: dict[str, tuple[str, str]] = {}  # run name -> (colour, line style)
    groups = seed_groups(runs)
    for run in runs:
        group = next((g for g in groups if run in g), [run])
        if run.name not in style:
            colour = f"C{len({c for c, _ in style.values()}) % 10}"  # (matplotlib's cycle of 10)
            style.update({r.name: (colour, SEED_STYLES[i % len(SEED_STYLES)]) for i, r in enumerate(group)})
        colour, linestyle = style[run.name]
        # a validation without the field (a log from elsewhere) is a gap in its line, not an error
        points = [(value, e[field]) for value, e in zip(x_values(run, x), run.valid, strict=True) if field in e]
        lines += ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=colour,
                         linestyle=linestyle)  # fmt: skip
        labels.append(shown(run.name).replace("$", r"\$"))  # as it is, not mathtext
    if target is not None:
        lines.append(ax.axhline(target, color="gray", linestyle="--", linewidth=1))
        labels.append(f"target {bleu_text(target)}")
    ax.set_xlabel(X_AXES[x][1])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    # (given whole: from the lines' own labels matplotlib left out a run named _sync, as its "hide me" mark)
    ax.legend(lines, labels)
    fig.savefig(path, format="png", dpi=120, metadata={"Software": MARK})


IDLE_SHARE = 0.05  # an emulated device idle for more of the predicted clock than this is warned of


def idle_devices(runs: list[Run], x: str) -> list[str]:
    """One line for each async or async-accum run on the predicted clock one of whose emulated devices idles
    for more than IDLE_SHARE of it, beyond the push it may have under way. --simulate orders pushes by their
    compute alone (so that the updates do not depend on the link, and `--link-gbps` re-prices them): where a
    push's transfers cost time, a slower device pushes less often than a real one would, and waits on the
    clock, which then predicts too long a run."""
    if x != "predicted":
        return []
    lines = []
    for run in runs:
        last = next((e for e in reversed(run.events) if e.get("worker_s") and e.get("worker_pushes")), None)
        if run.start.get("mode") in RANK_MODES or last is None or max(last["worker_s"]) <= 0:
            continue
        clocks, pushes = last["worker_s"], last["worker_pushes"]
        # a device's clock counts its finished pushes: one under way may lag it by a push's time, no idling
        lag = max((max(clocks) - s * (n + 1) / n for s, n in zip(clocks, pushes, strict=True) if n), default=0.0)
        if (idle := lag / max(clocks)) > IDLE_SHARE:
            lines.append(f"warning: {run.name}: an emulated device idles for {idle:.0%} of the predicted clock "
                         f"(its devices' clocks: {min(clocks):,.1f} to {max(clocks):,.1f} s): --simulate orders "
                         "pushes by compute alone, so where the link costs time a slower device pushes less "
                         "often than a real one would, and the predicted times are too long")  # fmt: skip
    return lines


def warnings(runs: list[Run], report: dict[str, Any]) -> list[str]:
    """The report's warning lines, for stderr and report.md: how the runs do not compare, which run's predicted
    clock leaves a device idle, why there is no target or no speedups."""
    lines = [f"warning: {why}; the run is compared without it" for run in runs if (why := run.unreadable_config)]
    lines += differences(runs, report["x"], report.get("link_gbps")) + resumed_otherwise(runs)
    lines += idle_devices(runs, report["x"]) + repeated_seeds(runs) + apart_by_limits(runs)
    if report["no_target"] is not None:
        lines.append(f"warning: no time to target or speedups: {report['no_target']}")
    if report.get("no_speedup") is not None:
        lines.append(f"warning: no speedups: {report['no_speedup']}")
    return lines


MARK = "async-nmt report"  # the plots' PNG "Software" text: `nmt report` wrote them
MD_MARK = "<!-- written by nmt report, which replaces it -->"  # report.md's first line
HEADING = "# Training report"


def written_by_report(path: Path) -> bool:
    """Whether `path` is a file that `nmt report` wrote: report.md by its first line (written before that
    mark: by its heading and its link to the plot), a plot by its mark (written before the mark: by
    matplotlib's, beside such a report.md)."""
    if not path.is_file():  # (a named pipe would wait for a writer)
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if path.suffix == ".md":
        legacy = head.startswith(HEADING.encode() + b"\n") and b"![valid BLEU](bleu_over_time.png)" in head
        return head.startswith(MD_MARK.encode() + b"\n") or legacy
    marked = MARK.encode() in head[:4096]
    return marked or (b"Matplotlib" in head[:4096] and written_by_report(path.with_name("report.md")))


def write_report(
    runs: list[Run], report: dict[str, Any], out: Path, notes: Sequence[str] = (), force: bool = False
) -> list[Path]:
    """DIR/bleu_over_time.png, DIR/valid_loss.png and DIR/report.md (with the warning lines `notes`); returns
    their paths. A file that cannot be written (a folder of its name, read-only, a full disk) is an error naming
    it, and leaves the folder as it was: each is written into a temporary file first, and all replace theirs
    once all are written, and a folder made for them is taken away again. One that `nmt report` did not write is
    replaced only with `force`."""
    bleu_png, loss_png, markdown = out / "bleu_over_time.png", out / "valid_loss.png", out / "report.md"
    for path in (bleu_png, loss_png, markdown):
        check_replaceable(path)
    if not force:  # (a user's own report.md was replaced without a word)
        for path in (bleu_png, loss_png, markdown):
            if (path.exists() or path.is_symlink()) and not path.is_dir() and not written_by_report(path):
                raise UserError(f"{path}: not written by nmt report; use --force to replace it, or another --out")
    made: list[Path] = []  # the folders made here, the deepest first: a failed write takes them away again
    try:
        for folder in (*reversed(out.parents), out):  # (one by one: `new/../old` is old, which exists)
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
                made.insert(0, folder)
        return _write_files(runs, report, out, notes)
    except BaseException:  # (a full disk, Ctrl-C: the new folder was left behind, empty)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _write_files(runs: list[Run], report: dict[str, Any], out: Path, notes: Sequence[str]) -> list[Path]:
    """`write_report`'s files, into the folder `out`, which exists."""
    x = report["x"]
    bleu_png, loss_png, markdown = out / "bleu_over_time.png", out / "valid_loss.png", out / "report.md"
    running = any(not row["finished"] for row in report["runs"])
    text = (
        f"{MD_MARK}\n{HEADING}\n\n{markdown_text(title(report))}; x axis: {X_AXES[x][1]}.\n\n"
        + "".join(f"- {markdown_text(shown(line))}\n" for line in notes)
        + ("\n" if notes else "")
        + markdown_table(report)
        + ("\n\\* not finished: still running, or interrupted (--resume goes on)\n" if running else "")
        + (f"\n{markdown_text(SEEDS_TITLE)}:\n\n{markdown_table(report, seed_cells)}" if report.get("seeds") else "")
        + f"\n![valid BLEU]({bleu_png.name})\n\n![valid loss]({loss_png.name})\n"
    )
    writers: dict[Path, Callable[[Path], None]] = {
        bleu_png: lambda to: plot(runs, "bleu", "valid BLEU", x, to, target=report["target_bleu"]),
        loss_png: lambda to: plot(runs, "valid_loss", "valid loss (nats/token)", x, to),
        markdown: lambda to: to.write_text(text, encoding="utf-8"),
    }
    for path in writers:  # each before any is written: one that cannot be leaves the folder as it was
        if path.is_dir() or not os.access(out, os.W_OK):
            code = errno.EISDIR if path.is_dir() else errno.EACCES
            raise OSError(code, os.strerror(code), str(path))
    temporaries: list[Path] = []
    try:
        for path, write in writers.items():
            temporaries.append(temporary_beside(path))
            try:
                write(temporaries[-1])
            except OSError as err:
                raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        for tmp, path in zip(temporaries, writers, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            tmp.unlink(missing_ok=True)
    return list(writers)


def _check_not_in_a_run_or_corpus(out: Path) -> None:
    """--out is not a run folder or a preprocessed corpus (BIN), nor a folder in one: the report's files there
    made its `nmt-train --force` (`nmt preprocess --force`) refuse it, as files it had not written."""
    for folder in (out, out.parent):  # (above it, a run by both its files: a project's own config.json is none)
        run = (
            is_run_folder(out)
            if folder == out
            else all((folder / f).is_file() for f in ("config.json", "events.jsonl"))
        )
        if run or (folder / MANIFEST).is_file():
            what = "a training run" if run else "a preprocessed corpus"
            where = what if folder == out else f"in {folder}, {what}"
            raise UserError(f"{out}: {where}, whose --force the report's files would then block; give --out a "
                            "folder of its own")  # fmt: skip


def report_command(
    paths: list[Path],
    target_bleu: float | None = None,
    baseline: Path | None = None,
    x: str = "time",
    out: Path | None = None,
    as_json: bool = False,
    link_gbps: float | None = None,
    force: bool = False,
) -> None:
    """`nmt report`: the table (or --json) of the runs in `paths`, and with `out` the plots and report.md
    (`force`: replacing files there that it did not write); with `link_gbps`, the predicted clocks re-priced
    for that link."""
    if target_bleu is not None and not math.isfinite(target_bleu):
        raise UserError(f"--target-bleu must be a number (got {target_bleu})")
    if target_bleu is not None and target_bleu <= 0:
        raise UserError(f"--target-bleu must be above 0 (got {target_bleu:g}): every run meets it before training")
    if target_bleu is not None and target_bleu > 100:
        raise UserError(f"--target-bleu must be at most 100 (got {target_bleu:g}), as BLEU is")
    if link_gbps is not None and x != "predicted":
        raise UserError(f"--link-gbps re-prices the predicted clock of --simulate runs; use it with --x predicted "
                        f"(the x axis is {x})")  # fmt: skip
    if force and out is None:
        raise UserError("--force replaces files in the --out folder; give --out")
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--out names the folder for the plots and report.md)")
    if out is not None:
        _check_not_in_a_run_or_corpus(out)
    runs: list[Run] = []
    again: dict[str, list[str]] = {}  # a run's name: how it was given again
    for path in paths:  # a folder named twice (runs/sync runs/*) is one run, reported once
        if (same := next((run for run in runs if run.path.resolve() == Path(path).resolve()), None)) is not None:
            again.setdefault(same.name, []).append(str(path))
        else:
            runs.append(load_run(path))
    given_again: list[str] = []  # one line a run (`run ./run run/` said "run is given twice" twice)
    for name, paths_again in again.items():
        times = "twice" if len(paths_again) == 1 else f"{len(paths_again) + 1} times"
        others = [path for path in dict.fromkeys(paths_again) if path != name]
        also = f" (also as {', '.join(others)})" if others else ""
        given_again.append(f"warning: {name} is given {times}{also}; it is reported once, as {name}")
    if link_gbps is not None:
        runs = [reprice(run, link_gbps) for run in runs]
    for run in runs:  # every run has the x axis's clock (where no run reaches a target, nothing else asked)
        x_values(run, x)
    base = None
    if baseline is not None:
        base = next((r for r in runs if r.path.resolve() == Path(baseline).resolve()), None)
        if base is None:  # a baseline not among the runs becomes the first row
            base = load_run(baseline)
            base = base if link_gbps is None else reprice(base, link_gbps)
            runs.insert(0, base)
    if not any(run.valid for run in runs):
        raise UserError(f"{runs[0].name}: {not_validated(runs[0])}" if len(runs) == 1
                        else "no run has validated yet (no valid event in any events.jsonl)")  # fmt: skip
    report = build_report(runs, target_bleu, base, x)
    report["link_gbps"] = link_gbps
    report["seeds"] = summarize_seeds(seed_groups(runs), report)
    notes = given_again + warnings(runs, report)  # (the first were on stderr alone until 2026-12-07)
    written = write_report(runs, report, out, notes, force) if out is not None else []
    # after the files, so that a folder that cannot be made is the one line on stderr
    for line in notes:
        click.echo(line, err=True)
    if as_json:
        print(json.dumps({**report, "warnings": notes}), flush=True)  # (the warnings are on stderr too; flushed:
        # a full stdout is then its one line, as the table's is, not after the lines of what was written)
    else:
        print_table(report)
    for path in written:  # (on stderr, as corpus get and average say what they wrote: stdout is the table)
        click.echo(f"wrote {path}", err=True)
