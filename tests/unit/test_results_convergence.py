"""scripts/results_convergence.py, which prints docs/results.md's tables: on hand-made run folders whose
answers are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "results_convergence.py"


def fake_run(folder: Path, name: str, mode: str, curve: list[tuple[float, float]], test: float) -> None:
    """A finished --simulate run: valid BLEU `curve` as (predicted s, BLEU), one update per second."""
    run = folder / name
    run.mkdir(parents=True)
    start = {"kind": "start", "updates": 0, "tokens": 0, "predicted_s": 0.0, "mode": mode, "workers": 4,
             "params": 1000, "link_gbps": 80.0, "sync_every": 10, "outer_lr": 1.0, "outer_momentum": 0.0}  # fmt: skip
    events = [start]
    for seconds, bleu in curve:
        events.append({"kind": "valid", "updates": int(seconds), "tokens": int(seconds) * 1000,
                       "predicted_s": seconds, "train_s": seconds, "bleu": bleu, "valid_loss": 3.0})  # fmt: skip
    last = int(curve[-1][0])
    events.append({"kind": "end", "updates": last, "tokens": last * 1000, "predicted_s": curve[-1][0],
                   "converged": True})  # fmt: skip
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "config.json").write_text(json.dumps({"train": {"patience": 8, "link_gbps": 80.0}}))
    for which in ("best", "avg5"):
        (run / f"test-{which}.json").write_text(json.dumps({"bleu": test + (which == "avg5")}))


def test_the_tables_pair_by_seed_and_race_to_95_percent_of_syncs_best(tmp_path: Path):
    fake_run(tmp_path, "sync-s1", "sync", [(100, 10.0), (200, 19.0), (300, 20.0)], 15.0)
    fake_run(tmp_path, "sync-s2", "sync", [(100, 12.0), (200, 20.0), (300, 22.0)], 16.0)
    fake_run(tmp_path, "localsgd-h10-s1", "diloco", [(100, 8.0), (250, 18.0), (400, 17.0)], 13.0)
    fake_run(tmp_path, "localsgd-h10-s2", "diloco", [(150, 21.0), (300, 20.5)], 14.0)
    fake_run(tmp_path, "sync-straggler-s1", "sync", [(150, 10.0), (300, 19.0), (450, 20.0)], 15.0)
    fake_run(tmp_path, "sync-straggler-s2", "sync", [(150, 12.0), (300, 20.0), (450, 22.0)], 16.0)
    fake_run(tmp_path, "accum4-straggler-s1", "async", [(100, 15.0), (200, 19.5), (300, 19.0)], 14.0)
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Target: 95% of sync's mean best valid BLEU over 2 seeds = 19.95." in lines  # 0.95 * (20 + 22) / 2
    # paired by seed: 18 - 20 and 21 - 22 valid, 13 - 15 and 14 - 16 test
    assert "| local SGD H=10 minus sync | -1.50 ± 0.71 (n=2) | -2.00 ± 0.00 (n=2) |" in lines
    assert "| local SGD H=10 | 1.00 ± 0.00 (n=2) |" in lines  # averaging: avg5 is 1 above best
    # each run: local SGD's seed 1 best 18 at update 250 (250 s), ended at 400 (0.4M tokens) by patience
    assert "| local SGD H=10, seed 1 | 18.00 | 250 | 250 | 400 | - | 0.4 | 8.00 to 18.00 | patience |" in lines
    # sync reaches 19.95 at 200 s (seed 2) and 300 s (seed 1); local SGD's seed 2 at 150 s, seed 1 never
    assert "| sync | 2 of 2 | 250 ± 71 (n=2) | 0.25 ± 0.07 (n=2) | 1.00x |" in lines
    assert "| local SGD H=10 | 1 of 2 | 150 (n=1) | 0.15 (n=1) | 1.67x |" in lines
    # at local SGD's best (seed 1: 18.0 at 250 s; seed 2: 21.0 at 150 s) sync's seeds had 19 and 20, and 10
    # and 12: ahead in 2 of 2, then in 0 of 2
    assert "| local SGD H=10 | 1 | as trained (80 Gb/s) | 18.00 | 250 | sync | 19.00, 20.00 | 2 of 2 |" in lines
    assert "| local SGD H=10 | 2 | as trained (80 Gb/s) | 21.00 | 150 | sync | 10.00, 12.00 | 0 of 2 |" in lines
    # with a straggler, against sync at the same speeds: 19.5 at 200 s, when those had 10 and 12
    straggler = "| async-accum 4, speeds 1,1,1,0.5 | 1 | as trained (80 Gb/s) | 19.50 | 200 | sync, speeds 1,1,1,0.5 |"
    assert straggler + " 10.00, 12.00 | 0 of 2 |" in lines
    # and its quality against sync's (at any speeds) seed 1: 19.5 - 20 valid, 14 - 15 test
    paired = "| async-accum 4 with a straggler, 1,1,1,0.5, minus sync (at any speeds) |"
    assert paired + " -0.50 (n=1) | -1.00 (n=1) |" in lines


def test_a_damaged_config_or_score_is_one_line_naming_the_file(tmp_path: Path):
    fake_run(tmp_path, "sync-s1", "sync", [(100, 10.0), (200, 19.0)], 15.0)
    config, score = tmp_path / "sync-s1" / "config.json", tmp_path / "sync-s1" / "test-best.json"
    for path, text, said in [
        (config, "{not json", "not a JSON run configuration"),
        (config, json.dumps({"train": {}}), "no train.patience"),
        (score, "{not json", "not a score of `nmt score --json`"),
        (score, json.dumps({"chrf": 1.0}), "not a score of `nmt score --json`"),
        (score, json.dumps({"bleu": True}), "its bleu is true, not a number"),
    ]:
        kept = path.read_text()
        path.write_text(text)
        done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
        path.write_text(kept)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        assert str(path) in done.stderr and said in done.stderr, done.stderr
    config.unlink()
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode != 0 and f"{config}: no such file" in done.stderr, done.stderr


def test_the_target_is_the_one_printed_as_nmt_report_takes_it(tmp_path: Path):
    """95% of sync's mean best is 19.95475 here, printed as 19.95, the figure `nmt report --target-bleu` is
    given beside the tables; a BLEU shown as 19.95 reached it there, and until 2026-12-07 not here."""
    fake_run(tmp_path, "sync-s1", "sync", [(100, 10.0), (200, 19.0), (300, 20.0)], 15.0)
    fake_run(tmp_path, "sync-s2", "sync", [(100, 12.0), (200, 20.0), (300, 22.01)], 16.0)
    fake_run(tmp_path, "localsgd-h10-s1", "diloco", [(150, 19.951), (300, 19.0)], 13.0)
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "Target: 95% of sync's mean best valid BLEU over 2 seeds = 19.95." in lines
    assert "| local SGD H=10 | 1 of 1 | 150 (n=1) | 0.15 (n=1) | 1.67x |" in lines  # sync: 300 s and 200 s
