"""The tables of docs/results.md's convergence experiment, from the committed files alone.

Reads DIR/CONFIG-sSEED/{events.jsonl,test-best.json,test-avg5.json} (written by
scripts/experiment_convergence.sh) and prints markdown: per configuration the mean and sample standard
deviation over seeds of the best and final valid BLEU, the test BLEU (beam 5) of the best checkpoint and
of the average of the last 5, and the time to the target on the predicted clock. The target is fixed by
rule before the runs: 95% of sync's mean best valid BLEU over its seeds.

    python scripts/results_convergence.py docs/results/convergence
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from async_nmt.report import Run, load_run, staleness, to_target

ORDER = ["sync", "async", "accum4", "async-inverse"]
LABELS = {
    "sync": "sync",
    "async": "async",
    "accum4": "async-accum 4",
    "async-inverse": "async, --staleness-lr inverse",
}
TARGET_SHARE = 0.95  # of sync's mean best valid BLEU, fixed before the runs


def spread(values: list[float], digits: int = 2) -> str:
    """mean ± sample standard deviation (n), or a dash when there is nothing."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def test_bleu(run: Run, which: str) -> float | None:
    path = run.path / f"test-{which}.json"
    return json.loads(path.read_text())["bleu"] if path.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()

    runs: dict[str, dict[int, Run]] = defaultdict(dict)
    for folder in sorted(args.dir.iterdir()):
        match = re.fullmatch(r"(.+)-s(\d+)", folder.name)
        if match and (folder / "events.jsonl").is_file():
            run = load_run(folder)
            run.name = folder.name
            runs[match.group(1)][int(match.group(2))] = run
    finished = {c: {s: r for s, r in by_seed.items() if r.finished} for c, by_seed in runs.items()}

    sync_best = [max(e["bleu"] for e in r.valid) for r in finished.get("sync", {}).values()]
    target = TARGET_SHARE * statistics.fmean(sync_best) if sync_best else None
    print(f"Finished runs: {sum(len(v) for v in finished.values())}; still running or stopped: "
          f"{', '.join(r.name for v in runs.values() for r in v.values() if not r.finished) or 'none'}.")  # fmt: skip
    if target is not None:
        print(f"Target: {TARGET_SHARE:.0%} of sync's mean best valid BLEU over {len(sync_best)} seeds = {target:.2f}.")
    print()
    print("| configuration | best valid BLEU | final valid BLEU | test BLEU, best checkpoint | test BLEU, average "
          "of last 5 | target tokens (M) | stale mean | stopped by patience |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in [c for c in ORDER if finished.get(c)] + [c for c in finished if c not in ORDER and finished[c]]:
        done = list(finished[config].values())
        tests = {w: [b for r in done if (b := test_bleu(r, w)) is not None] for w in ("best", "avg5")}
        converged = sum(bool(r.events[-1].get("converged")) for r in done)
        print(f"| {LABELS.get(config, config)} | {spread([max(e['bleu'] for e in r.valid) for r in done])} | "
              f"{spread([r.valid[-1]['bleu'] for r in done])} | {spread(tests['best'])} | {spread(tests['avg5'])} | "
              f"{spread([r.events[-1]['tokens'] / 1e6 for r in done], 1)} | "
              f"{spread([staleness(r)[0] or 0.0 for r in done])} | {converged} of {len(done)} |")  # fmt: skip
    if target is None:
        return
    print()
    print(f"Time to BLEU {target:.2f} on the predicted clock of 4 equal devices (s); runs that never got there "
          f"are counted apart:")  # fmt: skip
    print()
    print("| configuration | reached | predicted s to target | speedup over sync (ratio of means) |")
    print("| --- | --- | --- | --- |")
    base = None
    for config in [c for c in ORDER if finished.get(c)]:
        done = list(finished[config].values())
        times = [t for r in done if (t := to_target(r, target, "predicted")) is not None]
        mean = statistics.fmean(times) if times else None
        if config == "sync":
            base = mean
        speedup = f"{base / mean:.2f}x" if base and mean else "-"
        print(f"| {LABELS[config]} | {len(times)} of {len(done)} | {spread(times, 0)} | {speedup} |")
    # finding (c): paired by seed
    pairs = [
        max(e["bleu"] for e in finished["accum4"][s].valid) - max(e["bleu"] for e in finished["sync"][s].valid)
        for s in sorted(set(finished.get("accum4", {})) & set(finished.get("sync", {})))
    ]
    if pairs:
        print()
        print(f"async-accum 4 minus sync, best valid BLEU, paired by seed: {spread(pairs)}.")


if __name__ == "__main__":
    main()
