"""The run folder's event log (`events.jsonl`, from which `nmt report` takes every figure) and the training clock."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from async_nmt.errors import UserError

EVENT_KINDS = ("start", "train", "valid", "checkpoint", "end")


class TrainingClock:
    """Seconds spent training: runs except inside `paused()` (validation, checkpoints)."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self._started = time.perf_counter()
        self._paused_at: float | None = None
        self._paused_total = 0.0

    @property
    def seconds(self) -> float:
        now = self._paused_at if self._paused_at is not None else time.perf_counter()
        return self.offset + now - self._started - self._paused_total

    @contextmanager
    def paused(self) -> Iterator[None]:
        if self._paused_at is not None:  # already paused
            yield
            return
        self._paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._paused_total += time.perf_counter() - self._paused_at
            self._paused_at = None


class EventLog:
    """Appends one JSON object a line, each flushed as it is written; a torn last line (a machine's crash in
    the middle of a write) is what `complete_lines` and a resume cut off."""

    def __init__(self, path: Path):
        self.path = path
        self.lines = complete_lines(path)  # (its events: what a checkpoint's `event_lines` counts)
        self._file = open(path, "a", encoding="utf-8")
        self._held = ""

    def hold(self, line: bytes) -> None:
        """Write `line`, a whole event's as read back (or nothing), with the next event, in one write."""
        self._held = line.decode("utf-8")

    def put_back_held(self) -> None:
        """Write the held line alone, where no event took it (a resume that failed before its start event)."""
        if self._held:
            self._file.write(self._held)
            self._file.flush()
            self.lines += 1
            self._held = ""

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        assert kind in EVENT_KINDS, kind
        event = {"kind": kind, **{k: round_floats(v) for k, v in fields.items()}}
        self._file.write(self._held + json.dumps(event) + "\n")
        self._file.flush()
        self.lines += 1 + bool(self._held)
        self._held = ""
        return event

    def close(self) -> None:
        self._file.close()


def log_failure(path: Path, message: str) -> None:
    """The end event of a run that an error stopped, `failed` naming it, written by a process other than its
    trainer (the supervisor of a group of ranks, which knows the root cause): its counts as the last event
    has them. Nothing where the log has no events, has ended, or cannot be read or written (the error that
    stopped the run is the one said)."""
    try:
        events = read_events(path) if path.is_file() else []
        if not events or events[-1]["kind"] == "end":
            return
        bleus = [event["bleu"] for event in events if event["kind"] == "valid" and "bleu" in event]
        counts = {key: events[-1][key] for key in COUNTS_AT_END if key in events[-1]}
        data = path.read_bytes()
        if not data.endswith(b"\n"):  # a torn last line (a kill mid-write), which this one would complete
            os.truncate(path, data.rfind(b"\n") + 1)
        log = EventLog(path)
        try:
            log.write("end", **counts, best_bleu=max(bleus) if bleus else None, interrupted=False,
                      converged=False, failed=message)  # fmt: skip
        finally:
            log.close()
    except (OSError, UserError):
        return


def ended_interrupted(path: Path) -> bool:
    """Whether the log ends with the end event of a stop that Ctrl-C or SIGTERM asked for (its save made)."""
    try:
        events = read_events(path) if path.is_file() else []
    except (OSError, UserError):
        return False
    return bool(events) and events[-1]["kind"] == "end" and bool(events[-1].get("interrupted"))


COUNTS_AT_END = ("train_s", "wall_s", "updates", "pushes", "tokens", "epoch")  # an end event's, as every event's


def complete_lines(path: Path) -> int:
    """The lines of the log that end in a newline (a torn last line does not) and are not blank: its events,
    as `read_events` reads them (a blank line that an editor left counted, and a resume then cut an event)."""
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(_complete_event(line) for line in f)


def _complete_event(line: bytes) -> bool:
    return line.endswith(b"\n") and bool(line.strip())


def truncate_events(path: Path, keep_lines: int) -> tuple[list[dict[str, Any]], bytes]:
    """Cut the log back to its first `keep_lines` complete lines that are not blank (`complete_lines`; resume:
    forget what the checkpoint lacks) and return their events, and the line of the end event that follows
    them where they end with the save's checkpoint event (the session that ended there, which the run goes on
    from: why and when it ended; until 2026-12-07 it was lost), that event last among them. That line is cut
    too, for the resumed run to write back with its start event (`EventLog.hold`): left in place, a resume that
    failed before it started left a log that ended as a finished run's. A corrupt line among the kept ones is
    an error before the file changes (the resume it stops cut the log first, its end event lost)."""
    if not path.exists():
        return [], b""
    with open(path, "rb") as f:
        lines = f.readlines()
    kept_lines: list[bytes] = []
    events = 0
    for line in lines:
        if events == keep_lines or not line.endswith(b"\n"):  # (torn: the last line)
            break
        kept_lines.append(line)
        events += _complete_event(line)
    kept = b"".join(kept_lines)
    events = parse_events(kept, path)
    after = next((line for line in lines[len(kept_lines) :] if line.strip()), b"")
    held = b""
    if len(events) == keep_lines and events and events[-1]["kind"] == "checkpoint" and after.endswith(b"\n"):
        try:
            end = parse_events(after, path)[0]
        except UserError:  # (a damaged one: cut, as the rest is)
            end = None
        if end is not None and end["kind"] == "end" and end["updates"] == events[-1]["updates"]:
            held = after
            events.append(end)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(kept)
        os.replace(tmp, path)
    except OSError as err:  # (a log that cannot be replaced: the copy was left beside it, and the error named it)
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot cut the log back to the save ({err.strerror or err})", str(path)) from None
    return events, held


# what every event, and every event of a kind, must hold for `nmt report` and --resume to read it
FIELDS: dict[str | None, tuple[str, ...]] = {None: ("kind", "updates"), "valid": ("bleu", "tokens", "train_s")}


# fields that are finite numbers wherever an event has them (`nmt report` computes with them)
NUMBERS = ("updates", "pushes", "tokens", "epoch", "train_s", "wall_s", "predicted_s", "bleu", "tok_per_s", "warmup",
           "staleness_mean", "staleness_max", "params", "workers", "accum", "sync_every", "lr", "loss", "nll",
           "valid_loss", "chrf", "link_gbps", "simulate_token_us")  # fmt: skip
# counts, clocks and scores: never below 0 (a score is at most 100), as `nmt report` takes them
COUNTS = ("updates", "pushes", "tokens", "epoch", "train_s", "wall_s", "predicted_s", "bleu", "chrf")
LISTS = ("worker_s", "worker_pushes", "staleness_hist")  # lists of finite numbers wherever an event has them
NAMES = ("mode", "preset", "staleness_lr", "precision", "device")  # strings wherever an event has them


def _problem(event: dict[str, Any]) -> str | None:
    """What is wrong with a parsed event, if anything: fields it lacks, or one that is not what it must be."""
    if "kind" in event and not isinstance(event["kind"], str):
        return f"its kind is {json.dumps(event['kind'])}, not a name"
    fields = FIELDS[None] + FIELDS.get(event.get("kind"), ())  # type: ignore[arg-type]
    missing = [f for f in fields if f not in event]
    if missing:
        return f"no {', '.join(missing)}"
    for name in NUMBERS:
        if name in event and not _finite(event[name]):
            return f"its {name} is {json.dumps(event[name])}, not a finite number"
    for name in COUNTS:
        if event.get(name, 0) < 0:
            return f"its {name} is {json.dumps(event[name])}, below 0"
    for name in ("bleu", "chrf"):  # (sacreBLEU gives 100.00000000000004 for an identical text, and logs before
        if event.get(name, 0) > 100 + 1e-6:  # 2026-12-05 kept that)
            return f"its {name} is {json.dumps(event[name])}, above 100"
    for name in LISTS:
        if name in event and not (isinstance(event[name], list) and all(map(_finite, event[name]))):
            return f"its {name} is {json.dumps(event[name])}, not a list of finite numbers"
    for name in NAMES:
        if name in event and not isinstance(event[name], str):
            return f"its {name} is {json.dumps(event[name])}, not a name"
    for name in ("updates", "pushes", "tokens"):  # (counted: a hand-edited 20.7 updates was taken)
        if name in event and not isinstance(event[name], int):
            return f"its {name} is {json.dumps(event[name])}, not a whole number"
    # what `nmt report --link-gbps` divides by, and the per-device clocks it takes pairwise
    for name, least in (("workers", 1), ("sync_every", 1 if event.get("mode") == "diloco" else 0)):
        if name in event and not (isinstance(event[name], int) and event[name] >= least):
            return f"its {name} is {json.dumps(event[name])}, not a whole number of {least} or more"
    if event.get("link_gbps", 1) <= 0:
        return f"its link_gbps is {json.dumps(event['link_gbps'])}, not above 0"
    lengths = [len(event[name]) for name in ("worker_s", "worker_pushes") if name in event]
    if len(set(lengths)) > 1:
        return f"its worker_s and worker_pushes differ in length ({lengths[0]} and {lengths[1]})"
    return None


def _gone_back(event: dict[str, Any], last: tuple[int, int]) -> str | None:
    """Whether an event's updates are below those of the `last` (updates, line) before it: the trainer's never
    go back (a resume cuts the log at its save), a hand-edited or spliced log's may, and the report took them
    as they stood (a target reached at fewer updates than the event before it)."""
    updates, line = last
    if event.get("updates", updates) < updates:
        return f"its updates is {json.dumps(event['updates'])}, below the {updates} of line {line}"
    return None


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event of a log, in order; UserError naming the file and line for a corrupt line.

    Only the last line may be torn (a crash mid-write leaves it without its newline): such a line that
    does not parse is skipped silently, as are blank lines. Any other line that is not a JSON object with
    the FIELDS of its kind, NUMBERS that are numbers (COUNTS not below 0, BLEU and chrF not above 100), LISTS
    of them and NAMES that are strings (and workers, diloco's sync_every and link_gbps that can be divided by,
    worker_s and worker_pushes of one length, updates not below an earlier event's), a complete last
    line included, is an error "PATH:LINE: not a JSON event (...)".
    """
    return parse_events(path.read_bytes(), path)


def parse_events(data: bytes, path: Path) -> list[dict[str, Any]]:
    """The events of the bytes `data` of the log `path`, as `read_events` reads them."""
    lines = data.splitlines(keepends=True)
    events = []
    last = (0, 0)  # the updates of the last event that has them, and its line
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue  # a blank line, as an editor may leave at the end
        try:
            event = json.loads(line.decode("utf-8").rstrip("\r\n"))
            problem = None if isinstance(event, dict) else f"a JSON {type(event).__name__}, not an object"
        except json.JSONDecodeError as err:
            problem = f"{err.msg}: column {err.colno}"
        except UnicodeDecodeError as err:
            problem = f"not UTF-8: {err.reason} at byte {err.start}"
        if problem is None:
            problem = _problem(event) or _gone_back(event, last)
        if problem is None:
            events.append(event)
            last = (event["updates"], number) if "updates" in event else last
        elif number == len(lines) and not line.endswith(b"\n"):
            break  # torn by a crash mid-write
        else:
            raise UserError(f"{path}:{number}: not a JSON event ({problem})")
    return events


def round_floats(value: Any) -> Any:
    """A float kept to 6 decimals, or to 6 significant digits where they reach further: a warmup's learning
    rate of 2.8e-06 was logged as 3e-06, and one below 5e-07 as 0."""
    if isinstance(value, list):
        return [round_floats(v) for v in value]
    if not isinstance(value, float):
        return value
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(6, 5 - math.floor(math.log10(abs(value)))))


def staleness_stats(hist: list[int]) -> dict[str, Any]:
    """Mean, max and histogram (counts of staleness 0, 1, ...) of pushes' staleness."""
    pushes = sum(hist)
    if not pushes:
        return {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": []}
    mean = sum(value * count for value, count in enumerate(hist)) / pushes
    top = max(value for value, count in enumerate(hist) if count)
    return {"staleness_mean": mean, "staleness_max": top, "staleness_hist": hist[: top + 1]}


def run_staleness(events: Iterable[dict[str, Any]]) -> tuple[float | None, int | None, int]:
    """The staleness of every push of a run's `train` events: its mean (each event's mean weighed by its
    pushes), its maximum and the pushes (None, None, 0 where no event holds it). The trainer writes them into
    every `train` event; an event without them (a log from elsewhere) counts for neither, as a torn line
    would not, rather than stopping the report. (`nmt report` and the summary at a run's end both read this.)"""
    train = [e for e in events if e.get("kind", "train") == "train"]
    held = [e for e in train if "staleness_mean" in e]
    weights = [sum(e.get("staleness_hist", [1])) for e in held]
    pushes = sum(weights)
    mean = sum(w * e["staleness_mean"] for w, e in zip(weights, held, strict=True)) / pushes if pushes else None
    most = [e["staleness_max"] for e in train if "staleness_max" in e]
    return mean, max(most) if most else None, pushes
