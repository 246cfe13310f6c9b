"""The tables and plots of docs/results.md's convergence experiment, from the committed files alone.

Reads DIR/CONFIG-sSEED/{events.jsonl,config.json,test-best.json,test-avg5.json} (written by
scripts/experiment_convergence.sh) and prints markdown:
- per configuration, the mean and sample standard deviation over seeds of the best and final valid BLEU,
  the test BLEU (beam 5) of the best checkpoint and of the average of the last 5, and the tokens trained;
- per run, its best valid BLEU (at which update and predicted second), where it ended (update, epochs,
  tokens, patience or the epoch cap) and the range of its last 8 validations;
- the differences the findings rest on, paired by seed: (a) async - sync, (c) async-accum 4 - sync,
  --staleness-lr inverse - async, (b) async --local-accum 4 against async and async-accum 4, DiLoCo, local
  SGD and async-accum 4 at both speed spreads - sync, and what averaging adds in each configuration;
- time to the target on the predicted clock, in three races: 4 equal devices, speeds 1,1,1,0.8 and a
  straggler at 0.5 (each against the sync run with the same speeds); and the equal-device race again
  with the clock re-priced for 1 Gb/s links (`nmt report --link-gbps`);
- DiLoCo and local SGD against sync at the predicted time of their own best, at 80 and at 1 Gb/s, and
  async-accum 4 at each speed spread against sync at the same speeds.
The target is fixed by rule before the runs: 95% of sync's mean best valid BLEU over its seeds.
With --plots DIR it also writes DIR/bleu_predicted.png, DIR/bleu_predicted_1gbps.png (the same clock re-priced
for 1 Gb/s links) and DIR/bleu_tokens.png: valid BLEU of every run of the equal-device race, one colour per
configuration.

    python scripts/results_convergence.py docs/results/convergence --plots docs/results/convergence
"""

from __future__ import annotations

import async_nmt.script_start  # noqa: F401  (first: Ctrl-C while torch is imported; see it)

# isort: split
import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from async_nmt.errors import ScriptParser, UserError, run_script
from async_nmt.report import Run, load_run, reprice, to_target
from async_nmt.train.events import run_staleness

LABELS = {  # every configuration of the experiment, in the order of the tables
    "sync": "sync",
    "async": "async",
    "accum4": "async-accum 4",
    "async-inverse": "async, --staleness-lr inverse",
    "async-local4": "async, --local-accum 4",
    "diloco-h10": "DiLoCo H=10",
    "diloco-h100": "DiLoCo H=100",
    "localsgd-h10": "local SGD H=10",
    "sync-spread": "sync, speeds 1,1,1,0.8",
    "accum4-spread": "async-accum 4, speeds 1,1,1,0.8",
    "sync-straggler": "sync, speeds 1,1,1,0.5",
    "accum4-straggler": "async-accum 4, speeds 1,1,1,0.5",
}
RACES = [  # (title, suffix of the configurations with these speeds, the configurations that race)
    (
        "4 equal devices",
        "",
        ["sync", "async", "accum4", "async-inverse", "async-local4", "diloco-h10", "diloco-h100", "localsgd-h10"],
    ),  # fmt: skip
    ("speeds 1,1,1,0.8", "-spread", ["sync", "accum4"]),
    ("a straggler, speeds 1,1,1,0.5", "-straggler", ["sync", "accum4"]),
]
PAIRS = [  # (what, configuration, minus configuration)
    ("(a) async minus sync", "async", "sync"),
    ("(c) async-accum 4 minus sync", "accum4", "sync"),
    ("--staleness-lr inverse minus plain async", "async-inverse", "async"),
    ("(b) async --local-accum 4 minus sync (the same batch per update, staleness 3 against 0)", "async-local4", "sync"),
    ("(b) async --local-accum 4 minus async", "async-local4", "async"),
    ("(b) async --local-accum 4 minus async-accum 4", "async-local4", "accum4"),
    ("DiLoCo H=10 minus sync", "diloco-h10", "sync"),
    ("DiLoCo H=100 minus sync", "diloco-h100", "sync"),
    ("DiLoCo H=100 minus DiLoCo H=10", "diloco-h100", "diloco-h10"),
    ("local SGD H=10 minus sync", "localsgd-h10", "sync"),
    ("async-accum 4 at speeds 1,1,1,0.8 minus sync (at any speeds)", "accum4-spread", "sync"),
    ("async-accum 4 with a straggler, 1,1,1,0.5, minus sync (at any speeds)", "accum4-straggler", "sync"),
]
LOW_COMMUNICATION = ["diloco-h10", "diloco-h100", "localsgd-h10"]
TARGET_SHARE = 0.95  # of sync's mean best valid BLEU, fixed before the runs
SLOW_LINK_GBPS = 1.0
AT_THEIR_BEST = [  # (configuration, the sync at its speeds, links: None as trained, or re-priced in Gb/s)
    *[(c, "sync", (None, SLOW_LINK_GBPS)) for c in LOW_COMMUNICATION],
    ("accum4-spread", "sync-spread", (None,)),
    ("accum4-straggler", "sync-straggler", (None,)),
]

Runs = dict[str, dict[int, Run]]  # configuration -> seed -> finished run


def spread(values: list[float], digits: int = 2) -> str:
    """mean ± sample standard deviation (n), or a dash when there is nothing."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def best(run: Run) -> float:
    return max(e["bleu"] for e in run.valid)


def test_bleu(run: Run, which: str) -> float | None:
    path = run.path / f"test-{which}.json"
    if not path.is_file():
        return None
    try:
        bleu = json.loads(path.read_text(encoding="utf-8"))["bleu"]
        if isinstance(bleu, bool) or not isinstance(bleu, int | float):
            raise TypeError(f"its bleu is {json.dumps(bleu)}, not a number")
        return float(bleu)
    except (ValueError, KeyError, TypeError) as err:  # (JSON and decoding errors are ValueErrors)
        raise UserError(f"{path}: not a score of `nmt score --json` ({type(err).__name__}: {err})") from None


def table(headers: list[str], rows: list[list[str]]) -> None:
    for line in (headers, ["---"] * len(headers), *rows):
        print("| " + " | ".join(line) + " |")
    print()


def patience(run: Run) -> int:
    """The run's --patience, from its config.json; a one-line error where that cannot be read."""
    train = run.config.get("train")  # (report.Run keeps only the sections that are objects)
    value = train.get("patience") if isinstance(train, dict) else None
    if isinstance(value, bool) or not isinstance(value, int):
        path = run.path / "config.json"
        why = run.unreadable_config or (f"{path}: no such file" if not path.is_file() else f"{path}: no train.patience")
        raise UserError(f"{why} (the stopping rule this script reads)")
    return value


def load(folder: Path) -> tuple[Runs, list[str], int]:
    """The finished runs by configuration and seed, the names of the others, and the stopping rule (the
    largest --patience of any run). A run that ended under a smaller --patience (the experiment began with
    3) is counted with the unfinished ones: the experiment resumes it under the rule."""
    found: list[tuple[str, int, Run]] = []
    unfinished = []
    for path in sorted(folder.iterdir()):
        match = re.fullmatch(r"(.+)-s(\d+)", path.name)
        if match and (path / "events.jsonl").is_file():
            run = load_run(path)
            run.name = path.name
            if run.finished:
                found.append((match.group(1), int(match.group(2)), run))
            else:
                unfinished.append(path.name)
    rule = max((patience(run) for *_, run in found), default=0)
    runs: Runs = defaultdict(dict)
    for config, seed, run in found:
        if patience(run) == rule:
            runs[config][seed] = run
        else:
            unfinished.append(f"{run.name} (ended under --patience {patience(run)})")
    return runs, unfinished, rule


def replayed(runs: dict[int, Run]) -> bool:
    """Sync at other speeds, replayed from a sync run (scripts/replay_sync_clock.py): the same updates."""
    return any("clock_replayed_from" in r.start for r in runs.values())


def quality(runs: Runs) -> None:
    rows = []
    for config in [c for c in LABELS if c in runs and not replayed(runs[c])] + sorted(
        c for c in runs if c not in LABELS
    ):
        done = list(runs[config].values())
        tests = {w: [b for r in done if (b := test_bleu(r, w)) is not None] for w in ("best", "avg5")}
        converged = sum(bool(r.events[-1].get("converged")) for r in done)
        rows.append([LABELS.get(config, config), spread([best(r) for r in done]),
                     spread([r.valid[-1]["bleu"] for r in done]), spread(tests["best"]), spread(tests["avg5"]),
                     spread([r.events[-1]["tokens"] / 1e6 for r in done], 1),
                     spread([run_staleness(r.train)[0] or 0.0 for r in done]),
                     f"{converged} of {len(done)}"])  # fmt: skip
    headers = ["configuration", "best valid BLEU", "final valid BLEU", "test BLEU, best checkpoint",
               "test BLEU, average of last 5", "tokens trained (M)", "stale mean (DiLoCo: steps since sync)",
               "stopped by patience"]  # fmt: skip
    table(headers, rows)


def per_run(runs: Runs) -> None:
    """Each trained run: its best validation (update, predicted seconds), its end, and its last 8 validations."""
    rows = []
    for config in [c for c in LABELS if c in runs and not replayed(runs[c])]:
        for seed, run in sorted(runs[config].items()):
            top = max(run.valid, key=lambda e: e["bleu"])
            end, last8 = run.events[-1], [e["bleu"] for e in run.valid[-8:]]
            seconds, epochs = top.get("predicted_s"), end.get("epoch")
            rows.append([f"{LABELS[config]}, seed {seed}", f"{top['bleu']:.2f}", f"{top['updates']:,}",
                         "-" if seconds is None else f"{seconds:.0f}", f"{end['updates']:,}",
                         "-" if epochs is None else f"{epochs:.1f}", f"{end['tokens'] / 1e6:.1f}",
                         f"{min(last8):.2f} to {max(last8):.2f}",
                         "patience" if end.get("converged") else "epoch cap"])  # fmt: skip
    print("Each run:")
    print()
    table(["run", "best valid BLEU", "at update", "at predicted s", "last update", "epochs", "tokens (M)",
           "last 8 validations", "stopped by"], rows)  # fmt: skip


def differences(runs: Runs) -> None:
    """Paired by seed: the findings' differences, and what averaging the last 5 adds."""
    rows = []
    for what, config, other in PAIRS:
        seeds = sorted(set(runs.get(config, {})) & set(runs.get(other, {})))
        if not seeds:
            continue
        a, b = runs[config], runs[other]
        valid = [best(a[s]) - best(b[s]) for s in seeds]
        tests = [x - y for s in seeds if (x := test_bleu(a[s], "best")) is not None
                 and (y := test_bleu(b[s], "best")) is not None]  # fmt: skip
        rows.append([what, spread(valid), spread(tests)])
    if rows:
        print("Differences paired by seed (mean ± sample standard deviation over seeds):")
        print()
        table(["difference", "best valid BLEU", "test BLEU, best checkpoint"], rows)
    rows = []
    for config in [c for c in LABELS if c in runs and not replayed(runs[c])]:
        gains = [x - y for r in runs[config].values()
                 if (x := test_bleu(r, "avg5")) is not None and (y := test_bleu(r, "best")) is not None]  # fmt: skip
        if gains:
            rows.append([LABELS[config], spread(gains)])
    if rows:
        print("What averaging the last 5 checkpoints adds to the test BLEU of the best checkpoint, paired by run:")
        print()
        table(["configuration", "test BLEU, average of last 5 minus best"], rows)


def race(runs: Runs, target: float, title: str, configs: list[str], link_gbps: float | None = None) -> None:
    """Predicted seconds and tokens to the target; speedup = the same-speed sync's mean time over the mean."""
    if not any(runs.get(c) for c in configs):
        return
    link = f", links re-priced at {link_gbps:g} Gb/s" if link_gbps else ""
    print(f"Time to valid BLEU {target:.2f}, {title}{link} (runs that never got there are counted apart):")
    print()
    rows, base = [], None
    for config in configs:
        if not runs.get(config):
            continue
        done = list(runs[config].values())
        tokens = [t / 1e6 for r in done if (t := to_target(r, target, "tokens")) is not None]
        times, unpriced = [], 0
        for run in done:
            # an async run resumed from one logged before the per-device clocks is re-priced from the resume on
            clock = run if link_gbps is None else reprice(run, link_gbps, partial=True)
            if to_target(clock, target, "tokens") != to_target(run, target, "tokens"):
                unpriced += 1  # it got there before its clock can be re-priced
            elif (seconds := to_target(clock, target, "predicted")) is not None:
                times.append(seconds)
        mean = statistics.fmean(times) if times else None
        if config.startswith("sync"):
            base = mean
        reached = f"{len(tokens)} of {len(done)}"
        if unpriced:
            reached += f" ({unpriced} got there in events logged before worker_s: not re-priced)"
        rows.append([LABELS[config], reached, spread(times, 0), spread(tokens, 2),
                     f"{base / mean:.2f}x" if base and mean else "-"])  # fmt: skip
    table(["configuration", "reached", "predicted s to target", "tokens to target (M)",
           "speedup over sync (ratio of means)"], rows)  # fmt: skip


def on_link(run: Run, gbps: float | None) -> Run:
    """The run with its predicted clock as trained (None), or re-priced for links of `gbps`."""
    return run if gbps is None else reprice(run, gbps, partial=True)


def at_their_best(runs: Runs) -> None:
    """Each run of AT_THEIR_BEST's configurations at its best valid BLEU against every seed of sync at the same
    speeds, by the same predicted second (each sync seed's best up to then): is sync ahead at equal time? One
    row a run, since seeds can differ by more than the configurations do; the low-communication modes also
    with their links re-priced at SLOW_LINK_GBPS."""
    rows = []
    for config, against, links in AT_THEIR_BEST:
        if not runs.get(config):
            continue
        for gbps in links:
            syncs = [on_link(s, gbps) for _, s in sorted(runs.get(against, {}).items())]
            for seed, run in sorted(runs[config].items()):
                top = max(on_link(run, gbps).valid, key=lambda e: e["bleu"])
                by_then = [max((e["bleu"] for e in s.valid if e["predicted_s"] <= top["predicted_s"]), default=0.0)
                           for s in syncs]  # fmt: skip
                trained = run.start.get("link_gbps")
                link = f"{gbps:g} Gb/s" if gbps else "as trained" + (f" ({trained:g} Gb/s)" if trained else "")
                rows.append([LABELS[config], str(seed), link, f"{top['bleu']:.2f}", f"{top['predicted_s']:.0f}",
                             LABELS[against], ", ".join(f"{b:.2f}" for b in by_then),
                             f"{sum(b > top['bleu'] for b in by_then)} of {len(by_then)}"])  # fmt: skip
    if rows:
        print(
            "At its best against sync at the same speeds and predicted time (sync: each seed's best up to then, "
            "seeds in order):"
        )
        print()
        table(["configuration", "seed", "links", "its best valid BLEU", "at predicted s", "against",
               "sync's best by then", "sync ahead"], rows)  # fmt: skip


def plots(runs: Runs, target: float, out: Path) -> None:
    from matplotlib.figure import Figure

    configs = [c for c in RACES[0][2] if runs.get(c)]
    slow = f"{SLOW_LINK_GBPS:g}gbps"
    for name, field, xlabel in (
        ("predicted", "predicted_s", "predicted wall clock of 4 devices (s)"),
        (f"predicted_{slow}", "predicted_s", f"predicted wall clock of 4 devices, {SLOW_LINK_GBPS:g} Gb/s links (s)"),
        ("tokens", "tokens", "target tokens (M)"),
    ):  # fmt: skip
        fig = Figure(figsize=(9, 5.5), layout="constrained")
        ax = fig.subplots()
        for i, config in enumerate(configs):
            for j, run in enumerate(runs[config].values()):
                if name.endswith(slow):  # async runs from before the per-device clocks start at their resume
                    run = reprice(run, SLOW_LINK_GBPS, partial=True)
                xs = [e[field] / (1e6 if field == "tokens" else 1) for e in run.valid]
                ax.plot(xs, [e["bleu"] for e in run.valid], color=f"C{i}", linewidth=1,
                        label=LABELS[config] if j == 0 else None)  # fmt: skip
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:.2f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("valid BLEU (greedy, 500 sentences)")
        ax.grid(alpha=0.3)
        ax.legend()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"bleu_{name}.png", dpi=110)
        print(f"wrote {out / f'bleu_{name}.png'}", file=sys.stderr)


def main() -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="the experiment's folder of CONFIG-sSEED runs")
    parser.add_argument(
        "--plots",
        type=Path,
        default=None,
        help=f"write the three plots (bleu_predicted.png, bleu_predicted_{SLOW_LINK_GBPS:g}gbps.png, bleu_tokens.png) "
        "into this folder (when there are sync runs to set the target)",
    )
    args = parser.parse_args()
    if not args.dir.is_dir():
        raise UserError(f"{args.dir}: {'not a folder' if args.dir.exists() else 'no such folder'}")
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():  # (failed after the tables)
        raise UserError(f"--plots: {args.plots} is a file, not a folder")

    runs, unfinished, rule = load(args.dir)
    if not runs and not unfinished:  # (it printed empty tables, exit 0)
        raise UserError(f"{args.dir}: no CONFIG-sSEED run folder with an events.jsonl")
    for config_runs in runs.values():  # (it printed tables first, then advised an option it does not have)
        for run in config_runs.values():
            if any("predicted_s" not in event for event in run.valid):
                raise UserError(f"{run.name}: its events have no predicted_s (not a --simulate run): this "
                                "script reads the convergence experiment's runs; `nmt report --x time` compares "
                                "others")  # fmt: skip
    trained = sum(len(v) for v in runs.values() if not replayed(v))
    stopped_by = f"--patience {rule} or the epoch cap" if rule else "the epoch cap"
    print(f"Finished runs (stopped by {stopped_by}): {trained}, and "
          f"{sum(len(v) for v in runs.values()) - trained} sync clocks replayed from them at other speeds; "
          f"still running or stopped: {', '.join(unfinished) or 'none'}.")  # fmt: skip
    if not runs:
        return
    sync_best = [best(r) for r in runs.get("sync", {}).values()]
    # as shown, to 2 decimals: `nmt report --target-bleu` takes the printed target, and a BLEU shown as it
    # reached it there but not here (until 2026-12-07; no committed run's BLEU fell between the two)
    target = round(TARGET_SHARE * statistics.fmean(sync_best), 2) if sync_best else None
    if target is not None:
        seeds = f"{len(sync_best)} seed{'s' if len(sync_best) > 1 else ''}"
        print(f"Target: {TARGET_SHARE:.0%} of sync's mean best valid BLEU over {seeds} = {target:.2f}.")
    print()
    quality(runs)
    per_run(runs)
    differences(runs)
    if target is None:
        if args.plots:
            print(f"--plots: none written (no finished sync run to set their target) into {args.plots}",
                  file=sys.stderr)  # fmt: skip
        return
    for title, suffix, configs in RACES:
        race(runs, target, title, [c + suffix if suffix else c for c in configs])
    race(runs, target, RACES[0][0], RACES[0][2], link_gbps=SLOW_LINK_GBPS)
    at_their_best(runs)
    if args.plots:
        plots(runs, target, args.plots)


if __name__ == "__main__":
    run_script(main)
