"""`nmt report` on events.jsonl files written here (no training)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from async_nmt.cli import main
from async_nmt.errors import UserError
from async_nmt.report import MARKDOWN_SPECIAL, build_report, cells, load_run, print_table, report_command
from async_nmt.train.events import read_events


def write_run(
    path: Path,
    mode: str,
    bleus: list[float],
    seconds_per_valid: float,
    staleness: list[tuple[float, int, list[int]]] = (),
    simulate: bool = False,
    end: bool = True,
    interrupted: bool = False,
) -> Path:
    """A run folder whose events.jsonl validates every 10 updates (100 target tokens an update)."""
    path.mkdir(parents=True)
    events = [{"kind": "start", "mode": mode, "workers": 4, "accum": 4 if mode == "async-accum" else 1,
               "local_accum": 1, "lr": 0.001, "train_s": 0.0, "updates": 0, "tokens": 0}]  # fmt: skip
    for i, (mean, most, hist) in enumerate(staleness, 1):
        events.append({"kind": "train", "train_s": i, "updates": 3 * i, "tokens": 300 * i,
                       "staleness_mean": mean, "staleness_max": most, "staleness_hist": hist})  # fmt: skip
    for i, bleu in enumerate(bleus, 1):
        events.append({"kind": "valid", "train_s": i * seconds_per_valid, "updates": 10 * i, "tokens": 1000 * i,
                       "bleu": bleu, "valid_loss": 5.0 - i})  # fmt: skip
    if simulate:
        for event in events:
            event["predicted_s"] = event["train_s"] / 4
    if end:
        events.append({**events[-1], "kind": "end", "interrupted": interrupted})
    (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path / "sync", "sync", [5.0, 10.0, 20.0, 21.0], seconds_per_valid=100.0),
        write_run(tmp_path / "async", "async", [2.0, 3.0, 4.0], seconds_per_valid=50.0, end=False),
        write_run(
            tmp_path / "accum",
            "async-accum",
            [8.0, 20.6, 21.5],
            seconds_per_valid=60.0,
            staleness=[(1.0, 2, [1, 8, 1]), (0.0, 0, [30])],
        ),
    ]


@pytest.mark.parametrize("width", [40, 60, 80, 400])
def test_a_narrow_terminal_never_splits_a_value(runs: list[Path], capsys, monkeypatch, width: int) -> None:
    """On an 80-column terminal the table showed lr 0.0 above 02 and tok/s 5,2 above 23. Now no line is wider
    than the terminal, and every value is whole on a line of its own row: where the table did not fit, the
    columns alike in every run are named below it, and the rest are printed as several tables, each
    beginning with the runs' names; at 400 columns the table is whole, and one."""
    monkeypatch.chdir(runs[0].parent)  # (short names, each on one line)
    report = build_report([load_run(Path(p.name)) for p in runs])
    headers, rows = cells(report)
    print_table(report, width=width)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width, out
    for row in rows:
        mine = [line for line in lines if line.lstrip().startswith(row[0].split(" ")[0] + " ")]
        for i, value in enumerate(row[1:], 1):
            assert any(f" {value} " in f"{line} " for line in mine) or f"{headers[i]} {value}" in out, (value, out)
    same = [h for i, h in enumerate(headers) if i >= 2 and len({row[i] for row in rows}) == 1]
    assert same and ("the same in every run: " in out) is (width < 100), out
    tables = out.count(" run ") + out.count("\nrun ")
    assert tables == 1 if width == 400 else tables > 1 if width == 40 else tables >= 1, out

    report = build_report([load_run(p) for p in runs])
    assert report["baseline"] == str(runs[0]) and report["target_bleu"] == pytest.approx(20.5)
    sync, asynchronous, accum = report["runs"]
    assert sync["to_target"] == 400.0 and sync["speedup"] == pytest.approx(1.0)
    assert accum["to_target"] == 120.0 and accum["speedup"] == pytest.approx(400 / 120)
    assert (accum["best_bleu"], accum["final_bleu"], accum["updates"]) == (21.5, 21.5, 30)
    assert accum["tok_per_s"] == pytest.approx(3000 / 180)
    # weighted by pushes: (10 pushes at mean 1 + 30 at 0) / 40
    assert accum["staleness_mean"] == pytest.approx(0.25) and accum["staleness_max"] == 2
    # never reached: None, not an error; a run still going is reported too
    assert asynchronous["to_target"] is None and asynchronous["speedup"] is None
    assert not asynchronous["finished"] and sync["finished"]


def test_an_interrupted_run_is_not_finished(tmp_path: Path) -> None:
    stopped = write_run(tmp_path / "stopped", "sync", [5.0, 10.0], seconds_per_valid=10.0, interrupted=True)
    done = write_run(tmp_path / "done", "sync", [5.0, 10.0], seconds_per_valid=10.0)
    assert not load_run(stopped).finished and load_run(done).finished
    result = CliRunner().invoke(main, ["report", str(done), str(stopped)])
    assert result.exit_code == 0, result.output
    assert "stopped *" in result.output and "done *" not in result.output and "interrupted" in result.output


def test_target_baseline_and_axis_options(runs: list[Path]) -> None:
    report = build_report([load_run(p) for p in runs], target_bleu=3.0, baseline=load_run(runs[1]), x="updates")
    assert [row["to_target"] for row in report["runs"]] == [10, 20, 10]
    assert [row["speedup"] for row in report["runs"]] == [2.0, 1.0, 2.0]
    tokens = build_report([load_run(p) for p in runs], target_bleu=3.0, x="tokens")
    assert [row["to_target"] for row in tokens["runs"]] == [1000, 2000, 1000]


def test_errors_name_the_folder(tmp_path: Path, runs: list[Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: not a run folder"):
        report_command([runs[0], tmp_path / "empty"])
    write_run(tmp_path / "fresh", "sync", [], seconds_per_valid=1.0, end=False)
    with pytest.raises(UserError, match="fresh: no validation yet"):
        report_command([tmp_path / "fresh"])
    with pytest.raises(UserError, match="sync: .*no predicted_s"):
        report_command(runs, x="predicted")
    write_run(tmp_path / "untrained", "sync", [0.0, 0.0], seconds_per_valid=1.0)  # no target: it ended with 0
    with pytest.raises(UserError, match="untrained: .*no predicted_s"):
        report_command([tmp_path / "untrained"], x="predicted")


@pytest.mark.parametrize(
    ("end", "said"),
    [
        (None, "no validation yet (no valid event in events.jsonl)"),
        ({"interrupted": True}, "it was interrupted before its first (--resume goes on)"),
        ({"diverged": True}, "it diverged before its first, and ended"),
        ({"failed": "worker 1 died"}, "an error stopped it before its first (worker 1 died)"),
    ],
)
def test_a_run_that_ended_before_its_first_validation_says_so(tmp_path: Path, end: dict | None, said: str) -> None:
    """A run that diverged, failed or was interrupted before its first validation is no run whose validation is
    yet to come: it said "no validation yet", as of one still training."""
    run = write_run(tmp_path / "run", "sync", [], seconds_per_valid=1.0, end=end is not None)
    if end is not None:
        rewrite(run, lambda events: events[-1].update({"interrupted": False, **end}))
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    if end is not None:
        said = f"no validation (no valid event in events.jsonl): {said}"
    assert result.stderr == f"error: {run}: {said}\n"


def test_a_baseline_that_ended_before_its_first_validation_says_so(tmp_path: Path) -> None:
    """The title and the warning of no target (or of no speedups) say how a baseline without a validation ended,
    where it did: it said "has no validation yet", as of one still training."""
    sync = write_run(tmp_path / "sync", "sync", [], seconds_per_valid=1.0)
    rewrite(sync, lambda events: events[-1].update({"diverged": True}))
    other = write_run(tmp_path / "async", "async", [5.0, 10.0], seconds_per_valid=10.0)
    said = f"the baseline {sync} has no validation (it diverged before its first, and ended)"
    for extra, key in (([], "no_target"), (["--target-bleu", "5"], "no_speedup")):
        result = CliRunner().invoke(main, ["report", str(sync), str(other), "--json", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[key] == said, result.stdout
    fresh = write_run(tmp_path / "fresh", "sync", [], seconds_per_valid=1.0, end=False)
    result = CliRunner().invoke(main, ["report", str(fresh), str(other), "--json"])
    assert json.loads(result.stdout)["no_target"] == f"the baseline {fresh} has no validation yet"


def test_predicted_axis(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / m, m, [10.0, 20.0], seconds_per_valid=40.0, simulate=True) for m in ("sync", "async")]
    report = build_report([load_run(p) for p in runs], x="predicted")
    assert [row["to_target"] for row in report["runs"]] == [20.0, 20.0]
    assert [row["tok_per_s"] for row in report["runs"]] == [100.0, 100.0]  # 2,000 tokens in 20 predicted s
    assert build_report([load_run(p) for p in runs])["runs"][0]["tok_per_s"] == 25.0  # 80 s of training clock


def test_out_writes_plots_and_markdown(tmp_path: Path, runs: list[Path]) -> None:
    out = tmp_path / "report"
    report_command(runs, out=out)
    for name in ("bleu_over_time.png", "valid_loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "![valid BLEU](bleu_over_time.png)" in markdown and "(valid_loss.png)" in markdown
    assert "| run | mode |" in markdown and "3.33x" in markdown and "| - | - |" in markdown


def test_a_plot_that_cannot_be_written_is_named_and_not_left_half_written(
    tmp_path: Path, runs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from matplotlib.figure import Figure

    def full_disk(self, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    out = tmp_path / "report"
    out.mkdir()
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {out / 'bleu_over_time.png'}: No space left on device"
    assert list(out.iterdir()) == []
    # the folders it made for them are taken away again (they were left behind, empty)
    new = tmp_path / "new" / "report"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(new)])
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert not (tmp_path / "new").exists()
    # and only those: `new/../report` is the folder that was there
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "new" / ".." / "report")])
    assert result.exit_code == 1 and out.is_dir() and not (tmp_path / "new").exists()


def test_cli_json_table_and_errors(tmp_path: Path, runs: list[Path]) -> None:
    cli = CliRunner()
    result = cli.invoke(main, ["report", *map(str, runs), "--json", "--target-bleu", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["target_bleu"] == 20.0 and report["baseline"] == str(runs[0])
    assert [row["to_target"] for row in report["runs"]] == [300.0, None, 120.0]

    result = cli.invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0 and "2.50x" not in result.output and "3.33x" in result.output
    assert "still running" in result.output

    # a --baseline that is not among the runs becomes the first row
    result = cli.invoke(main, ["report", str(runs[2]), "--baseline", str(runs[1]), "--target-bleu", "4", "--json"])
    assert [row["run"] for row in json.loads(result.output)["runs"]] == [str(runs[1]), str(runs[2])]
    assert json.loads(result.output)["runs"][1]["speedup"] == pytest.approx(150 / 60)

    result = cli.invoke(main, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing: no such run folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # the event log given for its run (it was "not a run folder (no events.jsonl)", of a path that is one)
    result = cli.invoke(main, ["report", str(runs[0] / "events.jsonl")])
    said = f"events.jsonl: a file; give the run folder that holds events.jsonl ({runs[0]}?)"
    assert result.exit_code == 2 and result.output.strip().endswith(said)


def test_a_corrupt_event_log_is_a_one_line_error(tmp_path: Path, runs: list[Path]) -> None:
    log = runs[0] / "events.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + '{"kind": "valid", "bleu": 1\n' + "".join(lines[2:]), encoding="utf-8")
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {log}:3: not a JSON event (Expecting ',' delimiter: column 28)"

    # a torn last line (a run killed mid-write) is no error: the report reads the complete events
    with open(runs[1] / "events.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "valid", "bl')
    result = CliRunner().invoke(main, ["report", str(runs[1]), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runs"][0]["best_bleu"] == 4.0


def test_the_mode_says_when_the_lr_was_divided_by_the_staleness(tmp_path: Path) -> None:
    run = write_run(tmp_path / "inverse", "async", [1.0, 2.0], seconds_per_valid=10.0)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    events[0]["staleness_lr"] = "inverse"
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    plain = write_run(tmp_path / "plain", "async", [1.0, 2.0], seconds_per_valid=10.0)
    report = build_report([load_run(run), load_run(plain)])
    assert [row["mode"] for row in report["runs"]] == ["async lr/s", "async"]


def test_a_diloco_run_reads_steps_since_the_last_sync_for_staleness(tmp_path: Path) -> None:
    run = write_run(tmp_path / "diloco", "diloco", [1.0, 2.0], seconds_per_valid=10.0, staleness=[(4.5, 9, [1] * 10)])
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    events[0].update(sync_every=10, outer_lr=1, outer_momentum=0)
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    sync = write_run(tmp_path / "sync", "sync", [1.0, 2.0], seconds_per_valid=10.0, staleness=[(0.0, 0, [4])])
    headers, rows = cells(build_report([load_run(sync), load_run(run)]))
    mean, most = headers.index("stale mean"), headers.index("stale max")
    assert rows[1][1] == "local SGD H=10" and rows[1][mean] == "4.50 since sync" and rows[1][most] == "9 since sync"
    assert rows[0][mean] == "0.00"


def test_link_gbps_reprices_from_config_json_and_refuses_an_async_run_without_device_clocks(tmp_path: Path) -> None:
    sync, old_async = (write_run(tmp_path / m, m, [10.0, 20.0], seconds_per_valid=40.0, simulate=True)
                       for m in ("sync", "async"))  # fmt: skip
    for path in (sync, old_async):  # runs from before --link-gbps: its default, 80 Gb/s, was the fixed price
        (path / "config.json").write_text(json.dumps({"train": {"simulate": True}}), encoding="utf-8")
        events = [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines()]
        events[0]["params"] = 10_000_000  # 40 MB: 4 ms a transfer at 80 Gb/s, 320 ms at 1 Gb/s
        (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(sync), "--x", "predicted", "--target-bleu", "20", "--link-gbps", "1",
                               "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # the second validation is at update 20: 20 ring all-reduces of 4 workers, 1.5 transfers each, 316 ms dearer
    assert json.loads(result.output)["runs"][0]["to_target"] == pytest.approx(20.0 + 20 * 1.5 * 0.316)
    result = cli.invoke(main, ["report", str(sync), str(old_async), "--x", "predicted", "--link-gbps", "1"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"{old_async}: its events predate the per-device clocks" in result.output


def test_the_default_target_of_a_baseline_with_little_bleu_is_half_of_it(runs: list[Path], tmp_path: Path) -> None:
    """A short baseline (best BLEU 0.4) once gave a target of -0.1, which every run reached at once."""
    events = [json.loads(line) for line in (runs[0] / "events.jsonl").read_text().splitlines()]
    for event in events:
        if event["kind"] == "valid":
            event["bleu"] = event["bleu"] / 100
    low = tmp_path / "low"
    low.mkdir()
    (low / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    best = max(e["bleu"] for e in events if e["kind"] == "valid")
    assert best < 0.5
    assert build_report([load_run(low)])["target_bleu"] == round(best / 2, 2)


def rewrite(run: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Apply `change` to the list of events of `run`'s events.jsonl."""
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    events = change(events) or events
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")


def test_a_baseline_with_a_best_bleu_of_0_gives_no_target(tmp_path: Path) -> None:
    """Its target was 0.00, which every run met at its first validation: speedups of nothing."""
    runs = [write_run(tmp_path / m, m, [0.0, 0.0], seconds_per_valid=s) for m, s in (("sync", 10.0), ("async", 5.0))]
    report = build_report([load_run(p) for p in runs])
    assert report["target_bleu"] is None
    assert report["no_target"] == "the baseline's best BLEU, 0.00, makes a target of 0.00"
    assert [(row["to_target"], row["speedup"]) for row in report["runs"]] == [(None, None), (None, None)]
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0, result.output
    assert (
        "target BLEU 0.00" not in result.stdout and "no target BLEU" in result.stdout and "1.00x" not in result.stdout
    )
    assert result.stderr == ("warning: no time to target or speedups: the baseline's best BLEU, 0.00, makes a "
                             "target of 0.00\n")  # fmt: skip
    # above 0, but its target (half of it) is shown as 0.00: it said "the baseline's best BLEU is 0.01"
    small = write_run(tmp_path / "small", "sync", [0.0099], seconds_per_valid=10.0)
    assert build_report([load_run(small)])["no_target"] == "the baseline's best BLEU, 0.0099, makes a target of 0.00"
    # an explicit target at or below 0 is met before any training
    for target in ("0", "-1"):
        result = CliRunner().invoke(main, ["report", str(runs[0]), "--target-bleu", target])
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert "--target-bleu must be above 0" in result.output
    result = CliRunner().invoke(main, ["report", str(runs[0]), "--target-bleu", "100.5"])  # (no run can meet it)
    assert (
        result.exit_code == 2 and result.output == "error: --target-bleu must be at most 100 (got 100.5), as BLEU is\n"
    )
    for target in ("0.001", "99.9999999", "0.00001"):  # (it said 0.00; then 100 and 1e-05)
        result = CliRunner().invoke(main, ["report", str(runs[0]), "--target-bleu", target])
        assert result.exit_code == 0 and f"target BLEU {target}," in result.stdout, result.output


def test_a_target_of_many_decimals_is_shown_with_all_of_them(runs: list[Path]) -> None:
    """A target of more than 10 decimals was cut to 10 and its zeros stripped: 1e-12 showed as "target BLEU 0."."""
    from async_nmt.report import bleu_text

    for target, shown in (("1e-12", "0.000000000001"), ("20.123456789012", "20.123456789012"), ("0.00001", "0.00001"),
                          ("99.9999999", "99.9999999"), ("20", "20.00"), ("20.5", "20.50")):  # fmt: skip
        assert bleu_text(float(target)) == shown
    result = CliRunner().invoke(main, ["report", str(runs[0]), "--target-bleu", "1e-12"])
    assert result.exit_code == 0 and "target BLEU 0.000000000001," in result.stdout, result.output


def test_a_run_not_validated_yet_is_a_row_of_dashes(tmp_path: Path, runs: list[Path]) -> None:
    fresh = write_run(tmp_path / "fresh", "async", [], seconds_per_valid=1.0, end=False)  # a start event only
    training = write_run(tmp_path / "training", "async", [], seconds_per_valid=1.0, end=False,
                         staleness=[(1.0, 2, [1, 8, 1])])  # fmt: skip
    empty = tmp_path / "empty"  # the trainer has opened its log and written nothing yet
    empty.mkdir()
    (empty / "events.jsonl").write_text("")
    cli = CliRunner()
    result = cli.invoke(main, ["report", str(runs[0]), str(fresh), str(training), str(empty), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target_bleu"] == pytest.approx(20.5)
    for row in report["runs"][1:]:
        assert (row["best_bleu"], row["final_bleu"], row["to_target"], row["speedup"], row["finished"]) == (
            None, None, None, None, False)  # fmt: skip
    assert report["runs"][2]["updates"] == 3 and report["runs"][2]["staleness_mean"] == pytest.approx(1.0)
    result = cli.invoke(main, ["report", str(runs[0]), str(fresh), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "fresh *" in result.stdout and (tmp_path / "out" / "bleu_over_time.png").is_file()
    # a baseline that has not validated gives no target; the other runs' figures are still there
    result = cli.invoke(main, ["report", str(fresh), str(runs[0]), "--baseline", str(fresh), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target_bleu"] is None and "has no validation yet" in report["no_target"]
    assert report["runs"][1]["best_bleu"] == 21.0 and report["runs"][1]["to_target"] is None
    assert "has no validation yet" in result.stderr
    # with a target, the other runs' times to it are there, only the speedups are not
    result = cli.invoke(main, ["report", str(fresh), str(runs[0]), "--target-bleu", "20", "--json"])
    assert [row["to_target"] for row in json.loads(result.stdout)["runs"]] == [None, 300.0]
    # no run validated: nothing to compare
    result = cli.invoke(main, ["report", str(fresh), str(training)])
    assert (
        result.exit_code == 2
        and result.output == "error: no run has validated yet (no valid event in any events.jsonl)\n"
    )


def test_events_without_staleness_or_valid_loss_are_reported(tmp_path: Path) -> None:
    """Logs written elsewhere may lack what the trainer always writes: no traceback for them."""
    run = write_run(tmp_path / "run", "async", [1.0, 2.0], seconds_per_valid=10.0,
                    staleness=[(1.0, 2, [1, 8, 1]), (3.0, 5, [0, 0, 0, 10])])  # fmt: skip

    def strip(events: list[dict]) -> None:
        del events[1]["staleness_mean"], events[1]["staleness_max"], events[3]["valid_loss"]

    rewrite(run, strip)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["runs"][0]
    assert (row["staleness_mean"], row["staleness_max"]) == (3.0, 5)  # the second train event alone
    assert (out / "valid_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert f"wrote {out / 'valid_loss.png'}" in result.stderr.splitlines()  # (with --json too: it said nothing)

    def strip_all(events: list[dict]) -> None:
        for event in events:
            event.pop("staleness_mean", None), event.pop("staleness_max", None)

    rewrite(run, strip_all)
    row = build_report([load_run(run)])["runs"][0]
    assert (row["staleness_mean"], row["staleness_max"]) == (None, None)


def test_a_start_event_without_what_re_prices_is_a_one_line_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "sync", "sync", [10.0, 20.0], seconds_per_valid=40.0, simulate=True)
    rewrite(run, lambda events: events[0].update(link_gbps=80.0))  # and no params
    result = CliRunner().invoke(main, ["report", str(run), "--x", "predicted", "--link-gbps", "1"])
    assert (
        result.exit_code == 2 and result.output == f"error: {run}: no params in its start event to re-price its clock\n"
    )


def test_runs_that_do_not_compare_are_reported_with_a_warning(tmp_path: Path, runs: list[Path]) -> None:
    def config(run: Path, preset: str = "micro", valid: int = 500, bin_dir: str = "bin", size: int = 2000) -> None:
        (run / "config.json").write_text(json.dumps({
            "train": {"preset": preset, "valid_max_sentences": valid, "bin_dir": bin_dir},
            "corpus": {"src": "de", "tgt": "en", "vocab_size": size, "vocab_hash": str(run)}}))  # fmt: skip

    for run in runs:  # the same settings, vocabulary hashes that differ (from files): no warning
        config(run)
    cli = CliRunner()
    result = cli.invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0 and result.stderr == ""
    config(runs[1], preset="tiny", valid=0)
    config(runs[2], bin_dir="other/bin", size=8000)
    result = cli.invoke(main, ["report", *map(str, runs), "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["runs"]) == 3
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in preset (micro: {runs[0]}, {runs[2]}; tiny: {runs[1]}); their BLEU and "
        "times do not compare",
        f"warning: the runs differ in validation set (--valid-max-sentences) (500: {runs[0]}, {runs[2]}; 0: "
        f"{runs[1]}); their BLEU and times do not compare",
        f"warning: the runs differ in corpus (bin_dir) (bin: {runs[0]}, {runs[1]}; other/bin: {runs[2]}); their "
        "BLEU and times do not compare",
        f"warning: the runs differ in vocabulary (de-en, 2000 pieces: {runs[0]}, {runs[1]}; de-en, 8000 pieces: "
        f"{runs[2]}); their BLEU and times do not compare",
    ]


def test_runs_of_another_precision_are_reported_with_a_warning(runs: list[Path]) -> None:
    """bf16 autocast against fp32 changes the times and, a little, the BLEU: each start event's precision
    (--precision auto chooses again on a resume); a run from before start events named it is left out."""

    def precisions(run: Path, *values: str) -> None:
        events = read_events(run / "events.jsonl")
        starts = [dict(events[0], precision=value) for value in values]  # (a resume's at the updates it resumed)
        lines = [*starts[:1], *events[1:-1], *(dict(s, updates=events[-2]["updates"]) for s in starts[1:]), events[-1]]
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))

    precisions(runs[0], "bf16")
    precisions(runs[1], "bf16", "bf16")
    result = CliRunner().invoke(main, ["report", *map(str, runs)])  # (runs[2] says none)
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    precisions(runs[2], "bf16", "fp32")
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in precision (--precision: bf16 autocast or fp32) (bf16: {runs[0]}, {runs[1]}; "
        f"bf16, then fp32: {runs[2]}); their BLEU and times do not compare"
    ]


def test_a_run_resumed_with_another_schedule_is_reported_with_a_warning(runs: list[Path]) -> None:
    """A run resumed with another --lr showed the last in its row, and nothing said that it changed."""
    events = read_events(runs[2] / "events.jsonl")
    resumed = dict(events[0], updates=events[-2]["updates"])
    lines = [dict(events[0], warmup=100), *events[1:-1], dict(resumed, warmup=100), events[-1]]
    (runs[2] / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert CliRunner().invoke(main, ["report", *map(str, runs)]).stderr == ""  # (resumed as it was: no word)
    lines[-2] = dict(resumed, lr=0.002, warmup=400)
    (runs[2] / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.stderr.splitlines() == [f"warning: {runs[2]} was resumed with another schedule (--lr 0.001, then "
                                          "0.002; --warmup 100, then 400); its row shows the last lr"]  # fmt: skip


def test_times_on_other_devices_are_reported_with_a_warning(runs: list[Path]) -> None:
    """Training clocks of an H200 and an H100 do not compare (updates and tokens do): each start event's
    device_name; a run from before start events named it is left out."""
    rewrite(runs[0], lambda events: events[0].update(device_name="NVIDIA H200"))
    rewrite(runs[1], lambda events: events[0].update(device_name="NVIDIA H100 80GB HBM3"))
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.stderr.splitlines() == [
        "warning: the runs differ in device (the trainer's, as start events name it since 2026-12-07) (NVIDIA H200: "
        f"{runs[0]}; NVIDIA H100 80GB HBM3: {runs[1]}); their times do not compare"
    ]
    assert CliRunner().invoke(main, ["report", *map(str, runs), "--x", "updates"]).stderr == ""
    rewrite(runs[1], lambda events: events[0].update(device_name="NVIDIA H200"))
    assert CliRunner().invoke(main, ["report", *map(str, runs)]).stderr == ""


def test_the_corpus_compares_by_its_training_split_where_runs_recorded_it(runs: list[Path]) -> None:
    """The same BIN typed two ways is one corpus; two corpora both typed "bin" are two."""

    def config(run: Path, bin_dir: str, pairs: int) -> None:
        (run / "config.json").write_text(json.dumps({
            "train": {"bin_dir": bin_dir}, "corpus": {"train_pairs": pairs, "train_tokens": 10 * pairs}}))  # fmt: skip

    config(runs[0], "bin", 1000)
    config(runs[1], "/home/me/bin", 1000)
    result = CliRunner().invoke(main, ["report", str(runs[0]), str(runs[1])])
    assert result.exit_code == 0 and result.stderr == "", result.stderr
    config(runs[1], "bin", 2000)
    result = CliRunner().invoke(main, ["report", str(runs[0]), str(runs[1])])
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in corpus (training pairs, tokens) (1,000 pairs, 10,000 tokens: {runs[0]}; "
        f"2,000 pairs, 20,000 tokens: {runs[1]}); their BLEU and times do not compare"
    ]


def test_damaged_configurations_and_start_events_are_read_or_one_line(runs: list[Path]) -> None:
    for damaged in ('{"train": null}', '{"train": "x", "corpus": 3}', "[1]"):
        (runs[0] / "config.json").write_text(damaged)
        result = CliRunner().invoke(main, ["report", str(runs[0]), str(runs[1])])
        assert result.exit_code == 0, (damaged, result.output)
    # config.json that is not JSON: read for warnings alone, it stopped the report of every run (exit code 2)
    for damaged, why in (("", "not a JSON run configuration (Expecting value"), ("[1]", "not a JSON object")):
        (runs[0] / "config.json").write_text(damaged)
        result = CliRunner().invoke(main, ["report", str(runs[0]), str(runs[1]), "--json"])
        assert result.exit_code == 0 and str(runs[1]) in result.stdout, result.output
        assert result.stderr.startswith(f"warning: {runs[0] / 'config.json'}: {why}")
        assert result.stderr.splitlines()[0].endswith("; the run is compared without it")
    log = runs[1] / "events.jsonl"
    log.write_text(log.read_text(encoding="utf-8").replace('"mode": "async"', '"mode": 5', 1), encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(runs[1])])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {log}:1: not a JSON event (its mode is 5, not a name)"


def test_a_run_folder_given_twice_is_reported_once(runs: list[Path]) -> None:
    result = CliRunner().invoke(main, ["report", str(runs[0]), *map(str, runs), "--json"])
    assert result.exit_code == 0, result.output
    assert [row["run"] for row in json.loads(result.stdout)["runs"]] == list(map(str, runs))
    assert result.stderr == f"warning: {runs[0]} is given twice; it is reported once, as {runs[0]}\n"
    assert json.loads(result.stdout)["warnings"] == [result.stderr.rstrip("\n")]  # as every warning is
    link = runs[0].parent / "link"  # (another name of the same folder: the warning named it alone)
    link.symlink_to(runs[0])
    result = CliRunner().invoke(main, ["report", str(runs[0]), str(link)])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"warning: {runs[0]} is given twice (also as {link}); it is reported once, as {runs[0]}\n"
    for given in ([runs[0], f"{runs[0]}/", runs[0]], [runs[0], runs[0], link], [runs[0], link, link]):  # (said twice)
        result = CliRunner().invoke(main, ["report", *map(str, given)])
        also = f" (also as {link})" if link in given else ""
        assert result.exit_code == 0 and result.stderr == (
            f"warning: {runs[0]} is given 3 times{also}; it is reported once, as {runs[0]}\n")  # fmt: skip


def test_vocabularies_compare_by_their_pieces_where_every_run_has_one(tmp_path: Path, runs: list[Path]) -> None:
    import sentencepiece as spm

    def vocab(folder: Path, size: int) -> Path:
        text = tmp_path / "text.txt"
        text.write_text("".join(f"ein kleines Haus {i} und ein großer Garten {i * 7}\n" for i in range(300)))
        prefix = folder / f"v{size}"
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=size,
                                       minloglevel=2)  # fmt: skip
        return prefix.with_suffix(".model")

    small, big = vocab(tmp_path, 40), vocab(tmp_path, 50)
    for run, model in zip(runs, (small, small, big), strict=True):
        (run / "spm.model").write_bytes(model.read_bytes())
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the runs differ in vocabulary (") and str(runs[2]) in result.stderr


def test_a_run_whose_folder_name_is_not_utf8_has_its_vocabulary_compared(tmp_path: Path) -> None:
    """sentencepiece takes a model's file name as a str only: RUN/spm.model of a folder whose name is not UTF-8
    (run\\xff) was a TypeError, a traceback; it is read as any other run's, and its vocabulary compared."""
    import os

    import sentencepiece as spm

    text = tmp_path / "text.txt"
    text.write_text("".join(f"ein kleines Haus {i} und ein großer Garten {i * 7}\n" for i in range(300)))
    for size in (40, 50):
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / f"v{size}"), vocab_size=size,
                                       minloglevel=2)  # fmt: skip
    odd = write_run(tmp_path / os.fsdecode(b"run\xff"), "sync", [1.0, 2.0], seconds_per_valid=10.0)
    plain = write_run(tmp_path / "plain", "sync", [1.0, 3.0], seconds_per_valid=10.0)
    (odd / "spm.model").write_bytes((tmp_path / "v40.model").read_bytes())
    (plain / "spm.model").write_bytes((tmp_path / "v50.model").read_bytes())
    result = CliRunner().invoke(main, ["report", str(plain), str(odd)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: the runs differ in vocabulary (") and "run\\xff" in result.stdout
    (plain / "spm.model").write_bytes((tmp_path / "v40.model").read_bytes())
    result = CliRunner().invoke(main, ["report", str(plain), str(odd)])
    assert result.exit_code == 0 and "vocabulary" not in result.stderr, result.output


def test_help_says_what_the_options_do() -> None:
    text = " ".join(CliRunner().invoke(main, ["report", "--help"]).output.split())
    assert "Folder (made if missing)" in text and "one not among RUN... becomes the first row" in text
    assert "the baseline's best - 0.5, but at least half of it" in text


def test_an_event_log_or_checkpoint_that_is_a_folder_is_named_as_one(tmp_path: Path) -> None:
    from async_nmt.model.checkpoint import read_checkpoint

    run = tmp_path / "run"
    (run / "events.jsonl").mkdir(parents=True)
    with pytest.raises(UserError, match=f"{run / 'events.jsonl'}: a folder, not a run's event log"):
        load_run(run)
    (run / "update-9.pt").mkdir()
    with pytest.raises(UserError, match="update-9.pt: a folder, not a checkpoint"):
        read_checkpoint(run / "update-9.pt")


def as_markdown(text: str) -> str:
    """`text` with what Markdown reads as markup escaped (a backslash before each such character)."""
    return MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(1), text)


def test_run_names_are_shown_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich read names as markup (runs/a[lr=1e-3] showed as runs/a, x[/y] was a traceback), matplotlib `$..$` as
    mathtext, and a folder name that is not UTF-8 stopped the plots (a TypeError of their font)."""
    import os

    from matplotlib.figure import Figure

    names = ["runs/a[lr=1e-3]", "runs/a", "x[/y]", "[bold]odd", ":smile:", "a$x$b", os.fsdecode(b"run\xff")]
    runs = [write_run(tmp_path / name, "sync", [1.0, 2.0], seconds_per_valid=10.0) for name in names]
    shown = [str(run).replace("\udcff", "\\xff") for run in runs]
    legends = []
    savefig = Figure.savefig

    def drawn(self, path, **kwargs):  # the legend's texts as matplotlib draws them
        legends.append([text._preprocess_math(text.get_text()) for text in self.axes[0].get_legend().get_texts()])
        savefig(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", drawn)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = [line.split(" sync ")[0].strip() for line in result.stdout.splitlines() if " sync " in line]
    assert table == shown and f"baseline {shown[0]}" in result.stdout
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"| {as_markdown(name)} |" in markdown for name in shown)  # (escaped, shown as it is)
    assert legends and all(legend[: len(runs)] == [(name, False) for name in shown] for legend in legends)


def test_a_run_named_with_a_leading_underscore_is_in_the_plots_legends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib leaves a line whose label begins with "_" out of the legend: `nmt report _sync async --out
    DIR` drew _sync's line in both plots without its name."""
    from matplotlib.figure import Figure

    monkeypatch.chdir(tmp_path)
    for name in ("_sync", "async"):
        write_run(Path(name), "sync", [1.0, 2.0], seconds_per_valid=10.0)
    legends = []
    savefig = Figure.savefig

    def drawn(self, path, **kwargs):  # the legend's texts as matplotlib draws them
        legends.append([text.get_text() for text in self.axes[0].get_legend().get_texts()])
        savefig(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", drawn)
    result = CliRunner().invoke(main, ["report", "_sync", "async", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert legends == [["_sync", "async", "target 1.50"], ["_sync", "async"]]


@pytest.mark.parametrize("mode", ["sync", "diloco", "async"])
def test_link_gbps_reprices_each_resume_at_the_link_it_was_trained_with(tmp_path: Path, mode: str) -> None:
    """A resume may change --link-gbps; every event was re-priced from the last start event's link."""
    from async_nmt.report import reprice
    from async_nmt.train.links import all_reduce_links, link_seconds

    params, ring = 10_000_000, all_reduce_links(4)

    def transfers(updates: int) -> list[float]:  # each clock's: one for sync and diloco (H=5), one a worker for async
        if mode == "async":
            return [2.0 * (updates * (w + 1) // 10) for w in range(4)]  # worker w pushes (w + 1)/10 an update
        return [ring * (updates if mode == "sync" else updates // 5)]

    def run(path: Path, links: list[float]) -> Path:
        """Validations every 10 updates, each `links` entry a segment of 20 updates opened by a start event."""
        events, clocks, before = [], [0.0] * len(transfers(0)), transfers(0)
        for i, link in enumerate(links):
            for updates in range(20 * i, 20 * i + 21, 10):
                now = transfers(updates)
                clocks = [c + 0.01 * (n - b) + (n - b) * link_seconds(params, link)
                          for c, n, b in zip(clocks, now, before, strict=True)]  # fmt: skip
                before = now
                clock = {"predicted_s": max(clocks), "worker_s": clocks if mode == "async" else [max(clocks)] * 4,
                         "worker_pushes": [int(n / 2) for n in now] if mode == "async" else [updates] * 4}  # fmt: skip
                if updates == 20 * i:
                    events.append({"kind": "start", "mode": mode, "workers": 4, "sync_every": 5, "params": params,
                                   "link_gbps": link, "updates": updates, "tokens": 0, "train_s": 0.0,
                                   **clock})  # fmt: skip
                else:
                    events.append({"kind": "valid", "updates": updates, "tokens": 100 * updates,
                                   "train_s": float(updates), "bleu": updates / 10, **clock})  # fmt: skip
        path.mkdir()
        (path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        return path

    once, resumed = run(tmp_path / "once", [80.0]), run(tmp_path / "resumed", [80.0, 1.0])
    for link in (1.0, 80.0, 25.0):
        for path in (once, resumed):
            clocks = [e["predicted_s"] for e in reprice(load_run(path), link).events]
            expected = [max(0.01 * n + n * link_seconds(params, link) for n in transfers(e["updates"]))
                        for e in load_run(path).events]  # fmt: skip
            assert clocks == pytest.approx(expected), (path, link)
    result = CliRunner().invoke(main, ["report", str(once), str(resumed), "--x", "predicted", "--link-gbps", "1",
                                       "--target-bleu", "2", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = (row["to_target"] for row in json.loads(result.stdout)["runs"])
    assert first == pytest.approx(second)


def test_runs_on_other_clocks_are_reported_with_a_warning(tmp_path: Path) -> None:
    """Their times do not compare: a --simulate run against a real one on the training clock, another token price
    or link on the predicted clock (a link that --link-gbps re-prices aside)."""
    runs = [write_run(tmp_path / name, "sync", [10.0, 20.0], seconds_per_valid=40.0, simulate=True)
            for name in ("fast", "slow", "old")]  # fmt: skip
    for run, token_us, link in ((runs[0], 3.4, 80.0), (runs[1], 10.0, 25.0)):
        rewrite(run, lambda events, t=token_us, g=link: events[0].update(simulate_token_us=t, link_gbps=g,
                                                                         params=1000))  # fmt: skip
    # from before the start event named them: config.json's, or the clock's before the options
    rewrite(runs[2], lambda events: events[0].update(params=1000))
    (runs[2] / "config.json").write_text(json.dumps({"train": {"simulate": True, "simulate_token_us": 3.4}}))
    cli = CliRunner()
    result = cli.invoke(main, ["report", *map(str, runs), "--x", "predicted"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in price of a token (--simulate-token-us; 0: measured) (3.4: {runs[0]}, "
        f"{runs[2]}; 10: {runs[1]}); their times do not compare",
        f"warning: the runs differ in link (--link-gbps) (80: {runs[0]}, {runs[2]}; 25: {runs[1]}); their times "
        "do not compare",
    ]
    result = cli.invoke(main, ["report", *map(str, runs), "--x", "predicted", "--link-gbps", "1"])
    assert result.exit_code == 0 and "link (--link-gbps)" not in result.stderr and "token" in result.stderr

    def resumed_at_80(events: list[dict]) -> None:  # at the price of a token of the others
        events.insert(2, {**events[0], "updates": 10, "link_gbps": 80.0})
        for event in events[0], events[2]:
            event["simulate_token_us"] = 3.4

    rewrite(runs[1], resumed_at_80)  # a resume that changed the link is a difference too
    result = cli.invoke(main, ["report", *map(str, runs), "--x", "predicted"])
    assert result.stderr == (f"warning: the runs differ in link (--link-gbps) (80: {runs[0]}, {runs[2]}; 25, then "
                             f"80: {runs[1]}); their times do not compare\n")  # fmt: skip

    real = write_run(tmp_path / "real", "sync", [10.0, 20.0], seconds_per_valid=40.0)
    result = cli.invoke(main, ["report", str(runs[0]), str(real)])
    assert result.stderr == (f"warning: the runs differ in training clock (--simulate: one process emulates "
                             f"every worker) (--simulate: {runs[0]}; real devices: {real}); their times do not "
                             "compare\n")  # fmt: skip
    result = cli.invoke(main, ["report", *map(str, runs), str(real), "--x", "updates"])
    assert result.exit_code == 0 and result.stderr == ""


def test_the_validation_set_compares_by_its_sentences_where_every_run_recorded_them(runs: list[Path]) -> None:
    """The README said a validation set was compared, but only --valid-max-sentences was: the first 500 sentences
    of two corpora were one set."""

    def recorded(run: Path, valid: int, crc: int | None) -> None:  # start events since 2026-12-05 name them
        (run / "config.json").write_text(json.dumps({"train": {"valid_max_sentences": valid}}))
        rewrite(run, lambda events: events[0].update(valid_crc32=crc) if crc is not None else None)

    recorded(runs[0], 500, 1234)
    recorded(runs[1], 500, 5678)
    recorded(runs[2], 0, 1234)  # all of a valid split of 500 or fewer: the same sentences
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in validation set (CRC-32 of its sentences) (1234: {runs[0]}, {runs[2]}; 5678: "
        f"{runs[1]}); their BLEU and times do not compare"
    ]
    # a run from before start events named them: by --valid-max-sentences, as before
    recorded(runs[1], 500, 1234)
    recorded(runs[2], 500, None)
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_runs_validated_with_other_beams_are_reported_with_a_warning(runs: list[Path]) -> None:
    """--valid-beam changes the BLEU of the same model; a start event without it (before 2026-12-08) was of
    greedy validation."""
    rewrite(runs[0], lambda events: events[0].update(valid_beam=5))
    rewrite(runs[1], lambda events: events[0].update(valid_beam=1))
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: the runs differ in validation beam (--valid-beam; 1: greedy) (5: {runs[0]}; 1: {runs[1]}, "
        f"{runs[2]}); their BLEU and times do not compare"
    ]
    rewrite(runs[0], lambda events: events[0].update(valid_beam=1))
    result = CliRunner().invoke(main, ["report", *map(str, runs)])
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_report_md_holds_the_warnings(tmp_path: Path) -> None:
    """They went to stderr alone: a report.md read later compared runs that do not compare without a word."""
    runs = [write_run(tmp_path / m, m, [0.0, 0.0], seconds_per_valid=10.0) for m in ("sync", "async")]
    for run, preset in zip(runs, ("micro", "tiny"), strict=True):
        (run / "config.json").write_text(json.dumps({"train": {"preset": preset}}))
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("wrote ")]
    assert len(lines) == 2 and "differ in preset" in lines[0] and "best BLEU, 0.00, makes a target of 0.00" in lines[1]
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert all(f"- {as_markdown(line)}\n" in markdown for line in lines)


@pytest.mark.parametrize(
    "mode, line, change, problem",
    [
        ("async", 3, {"worker_pushes": [1, 1, 1]}, "its worker_s and worker_pushes differ in length (4 and 3)"),
        ("async", 1, {"workers": 0}, "its workers is 0, not a whole number of 1 or more"),
        ("diloco", 1, {"sync_every": 0}, "its sync_every is 0, not a whole number of 1 or more"),
        ("sync", 1, {"link_gbps": 0}, "its link_gbps is 0, not above 0"),
        ("sync", 1, {"link_gbps": "fast"}, 'its link_gbps is "fast", not a finite number'),
        # a count, clock or score out of its range, as a hand edit may leave it, was reported as it stood
        ("sync", 2, {"bleu": -1.5}, "its bleu is -1.5, below 0"),
        ("sync", 2, {"bleu": 101.0}, "its bleu is 101.0, above 100"),
        ("sync", 2, {"chrf": 100.001}, "its chrf is 100.001, above 100"),
        ("sync", 3, {"train_s": -40.0}, "its train_s is -40.0, below 0"),
        ("sync", 3, {"predicted_s": -1}, "its predicted_s is -1, below 0"),
        ("async", 1, {"tokens": -1}, "its tokens is -1, below 0"),
        ("sync", 2, {"updates": 20.7}, "its updates is 20.7, not a whole number"),  # (it was taken)
        # updates going back, as a splice of two logs may leave them, were taken as they stood
        ("sync", 3, {"updates": 9}, "its updates is 9, below the 10 of line 2"),
    ],
)
def test_an_event_that_re_pricing_cannot_take_is_a_one_line_error(
    tmp_path: Path, mode: str, line: int, change: dict, problem: str
) -> None:
    """Lists of two lengths were a ValueError of zip, and a count or link of 0 a ZeroDivisionError."""
    run = write_run(tmp_path / mode, mode, [10.0, 20.0], seconds_per_valid=40.0, simulate=True)

    def clocks(events: list[dict]) -> None:
        events[0].update(params=1000, link_gbps=80.0, sync_every=10 if mode == "diloco" else 0)
        for event in events:
            event.update(worker_s=[event["predicted_s"]] * 4, worker_pushes=[event["updates"]] * 4)
        events[line - 1].update(change)

    rewrite(run, clocks)
    result = CliRunner().invoke(main, ["report", str(run), "--x", "predicted", "--link-gbps", "1"])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {run / 'events.jsonl'}:{line}: not a JSON event ({problem})\n"


def test_a_bleu_of_100_as_sacrebleu_gives_it_is_taken(tmp_path: Path) -> None:
    """sacreBLEU scores an identical text 100.00000000000004, which logs before 2026-12-05 kept: within the
    range, where 100.001 is not."""
    run = write_run(tmp_path / "sync", "sync", [50.0, 100.00000000000004], seconds_per_valid=40.0)
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output


def test_an_event_with_the_clocks_of_other_workers_than_its_start_is_a_one_line_error(tmp_path: Path) -> None:
    run = write_run(tmp_path / "async", "async", [10.0, 20.0], seconds_per_valid=40.0, simulate=True)

    def clocks(events: list[dict]) -> None:
        events[0].update(params=1000, link_gbps=80.0)
        for event in events:
            workers = 3 if event["kind"] == "valid" and event["updates"] == 20 else 4
            event.update(worker_s=[event["predicted_s"]] * workers, worker_pushes=[event["updates"]] * workers)

    rewrite(run, clocks)
    result = CliRunner().invoke(main, ["report", str(run), "--x", "predicted", "--link-gbps", "1"])
    assert result.exit_code == 2 and result.output == (
        f"error: {run / 'events.jsonl'}: the event of update 20 has the pushes of 3 workers, where the run's start "
        "event has 4\n")  # fmt: skip


def test_a_target_that_runs_reach_and_the_baseline_does_not_says_why_there_are_no_speedups(
    tmp_path: Path, runs: list[Path]
) -> None:
    """Every speedup was a dash, without a word (the baseline's best was 21.0, the accum run reached 21.2)."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--target-bleu", "21.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    reason = f"the baseline {runs[0]} never reached BLEU 21.20 (its best: 21.00)"
    wrote = "".join(f"wrote {out / name}\n" for name in ("bleu_over_time.png", "valid_loss.png", "report.md"))
    assert result.stderr == f"warning: no speedups: {reason}\n{wrote}"  # (what it wrote: on stderr, not in the table)
    assert f"target BLEU 21.20 (no speedups: {reason})" in result.stdout and "wrote" not in result.stdout
    assert f"- {as_markdown('warning: no speedups: ' + reason)}\n" in (out / "report.md").read_text(encoding="utf-8")
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--target-bleu", "21.2", "--json"])
    report = json.loads(result.stdout)
    assert report["no_speedup"] == reason and report["runs"][2]["to_target"] == 180.0
    assert [row["speedup"] for row in report["runs"]] == [None, None, None]
    # a target no run reaches: the dashes of every time to target say it
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--target-bleu", "30", "--json"])
    assert result.stderr == "" and json.loads(result.stdout)["no_speedup"] is None


def test_out_is_never_a_run_folder_or_a_preprocessed_corpus(tmp_path: Path, runs: list[Path]) -> None:
    """`--out RUN` (or BIN) wrote the report into it, and its `nmt-train --force` (`nmt preprocess --force`) then
    refused the folder, which held files it had not written."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "manifest.json").write_text("{}")
    (runs[0] / "config.json").write_text("{}")
    for out, what in ((runs[0], "a training run"), (bin_dir, "a preprocessed corpus"),
                      (runs[0] / "report", f"in {runs[0]}, a training run"),
                      (bin_dir / "report", f"in {bin_dir}, a preprocessed corpus")):  # fmt: skip
        before = sorted(out.parent.rglob("*"))
        result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
        said = (
            f"error: {out}: {what}, whose --force the report's files would then block; give --out a folder of its own"
        )
        assert result.exit_code == 2 and result.output == said + "\n"
        assert sorted(out.parent.rglob("*")) == before
    (tmp_path / "config.json").write_text("{}")  # (a folder with a config.json alone is no run)
    assert CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "report")]).exit_code == 0


def test_out_writes_nothing_where_one_of_its_files_cannot_be_written(tmp_path: Path, runs: list[Path]) -> None:
    """The plots were written first, then report.md failed: the folder held new pictures beside no report."""
    out = tmp_path / "out"
    (out / "report.md").mkdir(parents=True)
    (out / "valid_loss.png").write_bytes(b"an earlier async-nmt report's")
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 1 and result.output == f"error: {out / 'report.md'}: Is a directory\n"
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "valid_loss.png"]
    assert (out / "valid_loss.png").read_bytes() == b"an earlier async-nmt report's"


def test_out_replaces_its_own_report_but_not_a_users_files_without_force(tmp_path: Path, runs: list[Path]) -> None:
    """A report.md or plot of that name that `nmt report` did not write is kept and named (a user's notes were
    replaced without a word); its own report is replaced, and --force replaces the user's."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {out / 'report.md'}: not written by nmt report; use --force to " \
        "replace it, or another --out"  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == ["report.md"] and (out / "report.md").read_text() == "my notes\n"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text().startswith("<!-- written by nmt report, which replaces it -->\n")
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])  # its own: replaced
    assert result.exit_code == 0, result.output
    legacy = "# Training report\n\nnotes\n\n![valid BLEU](bleu_over_time.png)\n"  # (written before its mark)
    for text, replaced in (("# Training report\n\nmy own notes, under a common title\n", False), (legacy, True)):
        (out / "report.md").write_text(text)
        result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
        assert result.exit_code == (0 if replaced else 2), result.output
        assert ((out / "report.md").read_text() == text) is not replaced
    (out / "report.md").unlink()
    os.mkfifo(out / "report.md")  # (it waited for a reader, for ever; --force made it a regular file)
    for force in ([], ["--force"]):
        result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out), *force])
        assert result.exit_code == 2 and "report.md: not a regular file" in result.output
        assert stat.S_ISFIFO((out / "report.md").stat().st_mode)
    (out / "report.md").unlink()
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--force"])
    assert result.exit_code == 2 and "give --out" in result.output
    (out / "valid_loss.png").write_bytes(b"\x89PNG\r\n\x1a\n a picture of mine")
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 2 and "valid_loss.png: not written by nmt report" in result.output
    assert (out / "valid_loss.png").read_bytes().endswith(b"a picture of mine")


def test_the_default_baseline_is_the_first_sync_run_that_has_validated(tmp_path: Path) -> None:
    """A sync run given first that has not validated yet cancelled every target and speedup, while another
    sync run had validated."""
    fresh = write_run(tmp_path / "fresh", "sync", [], seconds_per_valid=10.0, end=False)
    sync = write_run(tmp_path / "sync", "sync", [10.0, 20.0], seconds_per_valid=10.0)
    accum = write_run(tmp_path / "accum", "async-accum", [15.0, 20.0], seconds_per_valid=5.0)
    report = build_report([load_run(p) for p in (fresh, sync, accum)])
    assert report["baseline"] == str(sync) and report["target_bleu"] == pytest.approx(19.5)
    assert [row["speedup"] for row in report["runs"]] == [None, 1.0, 2.0]
    assert build_report([load_run(fresh), load_run(accum)])["baseline"] == str(fresh)  # the only sync run


def test_a_diverged_run_says_so_and_json_holds_the_warnings(tmp_path: Path) -> None:
    """A run the trainer stopped as diverged looked like any finished run; --json left the warnings out."""
    sync = write_run(tmp_path / "sync", "sync", [10.0, 20.0], seconds_per_valid=10.0)
    bad = write_run(tmp_path / "bad", "async", [1.0], seconds_per_valid=10.0)
    events = (bad / "events.jsonl").read_text().splitlines()
    end = {**json.loads(events[-1]), "diverged": True}
    (bad / "events.jsonl").write_text("\n".join([*events[:-1], json.dumps(end)]) + "\n")
    (sync / "config.json").write_text(json.dumps({"train": {"preset": "micro"}}))
    (bad / "config.json").write_text(json.dumps({"train": {"preset": "tiny"}}))
    _, rows = cells(build_report([load_run(sync), load_run(bad)]))
    assert [row[0] for row in rows] == [str(sync), f"{bad} (diverged)"]
    result = CliRunner().invoke(main, ["report", str(sync), str(bad), "--json"])
    report = json.loads(result.stdout)
    assert [row["diverged"] for row in report["runs"]] == [False, True]
    assert report["warnings"] == result.stderr.splitlines() and "differ in preset" in report["warnings"][0]


def test_a_failed_run_says_so_and_is_not_shown_as_still_running(tmp_path: Path) -> None:
    """A run that a failed worker stopped wrote no end event: the table showed it as still running, or
    interrupted, "--resume goes on", where its resume may have no checkpoint to go on from."""
    sync = write_run(tmp_path / "sync", "sync", [10.0, 20.0], seconds_per_valid=10.0)
    bad = write_run(tmp_path / "bad", "async", [1.0], seconds_per_valid=10.0)
    events = (bad / "events.jsonl").read_text().splitlines()
    end = {**json.loads(events[-1]), "failed": "worker 1 (cpu) was killed by signal 9 (SIGKILL)"}
    (bad / "events.jsonl").write_text("\n".join([*events[:-1], json.dumps(end)]) + "\n")
    report = build_report([load_run(sync), load_run(bad)])
    _, rows = cells(report)
    assert [row[0] for row in rows] == [str(sync), f"{bad} (failed)"]
    assert [row["failed"] for row in report["runs"]] == [None, end["failed"]]
    result = CliRunner().invoke(main, ["report", str(sync), str(bad)])
    assert result.exit_code == 0 and "not finished" not in result.stdout + result.stderr


def test_a_bleu_shown_as_the_target_reaches_it(tmp_path: Path) -> None:
    """BLEU and target are shown to 2 decimals: a run whose 20.446 shows as the target 20.45 (--target-bleu
    20.449) never reached it, and the default target (best - 0.5) was compared unrounded, where it is shown
    rounded."""
    sync = write_run(tmp_path / "sync", "sync", [10.0, 20.946], seconds_per_valid=10.0)
    other = write_run(tmp_path / "async", "async", [20.446, 20.0], seconds_per_valid=5.0)
    runs = [load_run(sync), load_run(other)]
    report = build_report(runs, target_bleu=20.449)
    assert [row["to_target"] for row in report["runs"]] == [20.0, 5.0]
    report = build_report(runs)  # 20.946 - 0.5 = 20.446, shown as 20.45, which 20.446 shows as too
    assert report["target_bleu"] == 20.45 and [row["to_target"] for row in report["runs"]] == [20.0, 5.0]
    assert report["runs"][1]["speedup"] == pytest.approx(4.0)
    # a target of more decimals is shown with them, and compared so: 20.45 falls short of 20.451, 0.00 of 0.004
    assert [row["to_target"] for row in build_report(runs, target_bleu=20.451)["runs"]] == [20.0, None]
    zero = load_run(write_run(tmp_path / "zero", "sync", [0.0, 0.004], seconds_per_valid=10.0))
    assert build_report([zero], target_bleu=0.004)["runs"][0]["to_target"] is None
    assert build_report([zero], target_bleu=0.004)["runs"][0]["best_bleu"] == 0.004  # (shown as 0.00)


def test_best_and_final_bleu_of_a_run_that_rose_then_fell(tmp_path: Path) -> None:
    """Best BLEU is the highest validation's, final BLEU the last one's, in the row and in the table."""
    bleus = [5.0, 12.0, 9.0]
    run = write_run(tmp_path / "run", "sync", bleus, seconds_per_valid=10.0)
    report = build_report([load_run(run)])
    row = report["runs"][0]
    assert (row["best_bleu"], row["final_bleu"]) == (max(bleus), bleus[-1]) and max(bleus) != bleus[-1]
    headers, rows = cells(report)
    assert rows[0][headers.index("best BLEU")] == f"{max(bleus):.2f}"
    assert rows[0][headers.index("final BLEU")] == f"{bleus[-1]:.2f}"


def test_a_resumed_run_shows_the_options_of_its_latest_start_event(tmp_path: Path) -> None:
    """A resume that changed --lr and --staleness-lr: the row shows the options in force now."""
    run = write_run(tmp_path / "run", "async", [1.0, 2.0, 3.0], seconds_per_valid=10.0)
    rewrite(run, lambda events: events.insert(2, {**events[0], "updates": 10, "lr": 0.0005, "staleness_lr": "inverse"}))
    assert [start["lr"] for start in load_run(run).starts] == [0.001, 0.0005]
    report = build_report([load_run(run)])
    assert (report["runs"][0]["lr"], report["runs"][0]["mode"]) == (0.0005, "async lr/s")
    headers, rows = cells(report)
    assert rows[0][headers.index("lr")] == "0.0005"


def test_link_gbps_without_the_predicted_axis_is_a_one_line_error(tmp_path: Path) -> None:
    """--link-gbps re-prices the predicted clock alone: on another x axis it is refused, not ignored."""
    run = write_run(tmp_path / "sync", "sync", [10.0, 20.0], seconds_per_valid=40.0, simulate=True)
    result = CliRunner().invoke(main, ["report", str(run), "--link-gbps", "10"])
    assert result.exit_code == 2
    assert result.output == ("error: --link-gbps re-prices the predicted clock of --simulate runs; use it with --x "
                             "predicted (the x axis is time)\n")  # fmt: skip


def test_link_gbps_reprices_a_diloco_run_by_its_whole_rounds(tmp_path: Path) -> None:
    """A diloco run all-reduces once a round (--sync-every updates): a validation mid-round has the transfers of
    the rounds it completed, not a fraction of the next."""
    from async_nmt.report import reprice
    from async_nmt.train.links import all_reduce_links, link_seconds

    params, sync_every = 10_000_000, 10
    run = write_run(tmp_path / "diloco", "diloco", [10.0, 20.0], seconds_per_valid=40.0, simulate=True)

    def mid_round(events: list[dict]) -> None:
        events[0].update(params=params, link_gbps=80.0, sync_every=sync_every, outer_lr=0.7, outer_momentum=0.9)
        events[1]["updates"] = 15  # the first validation: half-way through the second round

    rewrite(run, mid_round)
    before = load_run(run)
    after = reprice(before, 1.0)
    per_round = all_reduce_links(4) * (link_seconds(params, 1.0) - link_seconds(params, 80.0))
    shifts = [a["predicted_s"] - b["predicted_s"] for a, b in zip(after.valid, before.valid, strict=True)]
    assert [e["updates"] for e in before.valid] == [15, 20]
    assert shifts == pytest.approx([(15 // sync_every) * per_round, (20 // sync_every) * per_round])


def test_diloco_with_outer_momentum_is_not_local_sgd() -> None:
    """Local SGD is diloco with an outer lr of 1 and no outer momentum; with momentum it is diloco."""
    from async_nmt.report import mode_label

    diloco = {"mode": "diloco", "sync_every": 5, "outer_lr": 1}
    assert mode_label({**diloco, "outer_momentum": 0.9}) == "diloco H=5"
    assert mode_label({**diloco, "outer_momentum": 0}) == "local SGD H=5"
    assert mode_label({**diloco, "outer_lr": 0.7, "outer_momentum": 0}) == "diloco H=5"


def test_report_md_escapes_markdown_in_a_run_name(tmp_path: Path) -> None:
    """A "|" in a folder name would split its cell, and run_*y* was shown in italics: report.md escapes
    them ("\\|", "\\_", "\\*"), and every row keeps its cells."""
    import re

    names = ("a|b", "run_*y*", "plain")
    runs = [write_run(tmp_path / name, "sync", [1.0, 2.0], seconds_per_valid=10.0) for name in names]
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text(encoding="utf-8")
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(runs)  # headers, rule, a row a run
    assert len({len(re.split(r"(?<!\\)\|", line)) for line in table}) == 1
    firsts = [re.split(r"(?<!\\)\|", line)[1].strip() for line in table[2:]]
    assert [cell.rsplit("/", 1)[1] for cell in firsts] == ["a\\|b", "run\\_\\*y\\*", "plain"]
    assert all(re.sub(r"\\(.)", r"\1", cell) == str(run) for cell, run in zip(firsts, runs, strict=True))


def test_report_md_marks_runs_not_finished_with_a_footnote(tmp_path: Path, runs: list[Path]) -> None:
    """The * of a run still going (or interrupted) is explained under report.md's table, and only then."""
    footnote = "\\* not finished: still running, or interrupted (--resume goes on)"
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert f"| {as_markdown(str(runs[1]))} {as_markdown('*')} |" in markdown and f"\n{footnote}\n" in markdown
    finished = [runs[0], runs[2]]
    result = CliRunner().invoke(main, ["report", *map(str, finished), "--out", str(tmp_path / "done")])
    assert result.exit_code == 0, result.output
    assert "not finished" not in (tmp_path / "done" / "report.md").read_text(encoding="utf-8")


def test_an_async_run_whose_emulated_devices_idle_on_the_predicted_clock_is_warned_of(tmp_path: Path) -> None:
    """--simulate orders pushes by compute alone: a half-speed worker pushes half as often as the fast one
    whatever the link, where a real one, whose every push also waits on the link, would push more often. On a
    dear link its device then idles on the clock, and the predicted times are too long (user test: 55% idle)."""
    from async_nmt.train.links import link_seconds

    params, at_80 = 745_728, link_seconds(745_728, 80.0)
    run = tmp_path / "straggler"
    run.mkdir()
    pushes = [2000, 1000]  # 0.15 s of compute a push on the fast worker, 0.30 s on the half-speed one
    clocks = [2000 * 0.15 + 2 * 2000 * at_80, 1000 * 0.30 + 2 * 1000 * at_80]
    events = [{"kind": "start", "mode": "async", "workers": 2, "params": params, "link_gbps": 80.0, "updates": 0,
               "tokens": 0, "train_s": 0.0, "predicted_s": 0.0, "worker_s": [0.0, 0.0], "worker_pushes": [0, 0]},
              {"kind": "valid", "updates": 30, "tokens": 3000, "train_s": 9.0, "bleu": 5.0, "valid_loss": 4.0,
               "predicted_s": max(clocks), "worker_s": clocks, "worker_pushes": pushes}]  # fmt: skip
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    cli = CliRunner()
    as_trained = cli.invoke(main, ["report", str(run), "--x", "predicted"])
    assert as_trained.exit_code == 0 and "idles" not in as_trained.stderr  # (80 Gb/s: 0.1% apart)
    slow_link = cli.invoke(main, ["report", str(run), "--x", "predicted", "--link-gbps", "1"])
    assert slow_link.exit_code == 0, slow_link.output
    # re-priced, each push 2 transfers of 23.9 ms instead of 0.3: 395 s on the fast device, 348 on the slow one,
    # whose 1,001st push would end at 348.0 s (347.7 * 1001 / 1000): idle for 47.5 of 395.5 s, 12%
    assert (
        f"warning: {run}: an emulated device idles for 12% of the predicted clock (its devices' clocks: 347.7 "
        "to 395.5 s): --simulate orders pushes by compute alone"
    ) in slow_link.stderr
    at_1 = link_seconds(params, 1.0)
    trained_at_1 = [2000 * 0.15 + 2 * 2000 * at_1, 1000 * 0.30 + 2 * 1000 * at_1]
    events[1].update(predicted_s=max(trained_at_1), worker_s=trained_at_1)
    events[0]["link_gbps"] = 1.0
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    assert "idles for 12% of the predicted clock" in cli.invoke(main, ["report", str(run), "--x", "predicted"]).stderr
    not_on_its_clock = cli.invoke(main, ["report", str(run), "--x", "updates"])
    assert not_on_its_clock.exit_code == 0 and "idles" not in not_on_its_clock.stderr


def test_a_warning_names_a_few_runs_of_a_value_and_counts_the_rest() -> None:
    """The 40 runs of docs/results made one warning line of 6 KB."""
    from async_nmt.errors import briefly

    assert briefly(["a"]) == "a" and briefly(["a", "b", "c"]) == "a, b, c"
    assert briefly(["a", "b", "c", "d"]) == "a, b, c, d"  # (not "and 1 more", which is no shorter)
    assert briefly([f"r{i}" for i in range(40)]) == "r0, r1, r2 and 37 more"


def test_short_times_to_target_keep_three_digits(tmp_path: Path) -> None:
    """A short run's 0.28 s to target showed as 0.3, beside a speedup of 2.14x that it did not show."""
    runs = [write_run(tmp_path / m, m, [1.0, 2.0], seconds_per_valid=s) for m, s in (("sync", 0.3), ("async", 0.14))]
    report = build_report([load_run(p) for p in runs])
    headers, rows = cells(report)
    column = headers.index("to target (s)")
    assert [row[column] for row in rows] == ["0.600", "0.280"] and rows[1][column + 1] == "2.14x"
    long = build_report([load_run(write_run(tmp_path / "long", "sync", [1.0, 2.0], seconds_per_valid=200.0))])
    assert cells(long)[1][0][column] == "400.0"


def test_a_run_that_has_only_started_shows_no_rate(tmp_path: Path) -> None:
    """Its start event alone (a few ms of training clock, no tokens) showed a rate of 0 tok/s."""
    path = tmp_path / "started"
    path.mkdir()
    start = {"kind": "start", "mode": "sync", "workers": 1, "updates": 0, "pushes": 0, "tokens": 0, "epoch": 0.0,
             "train_s": 0.002, "wall_s": 0.01}  # fmt: skip
    (path / "events.jsonl").write_text(json.dumps(start) + "\n")
    row = build_report([load_run(path)])["runs"][0]
    assert row["tok_per_s"] is None and not row["finished"]


def test_a_narrow_table_folds_names_only_as_the_room_needs_and_right_justifies_numbers(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """At 90 columns, runs/async-accum folded after 12 characters in a table of 79; at 60, the second of the
    tables began with its numbers left-justified (the first value column was taken for the modes')."""
    monkeypatch.chdir(tmp_path)
    for m, bleus, s in (("sync", [1.0, 2.0], 3.0), ("async", [1.0, 3.0], 2.0), ("async-accum", [1.5, 2.5], 1.5)):
        write_run(tmp_path / "runs" / m, m, bleus, seconds_per_valid=s)
    report = build_report([load_run(Path("runs") / m) for m in ("sync", "async", "async-accum")])
    print_table(report, width=90)
    out = capsys.readouterr().out
    assert " runs/async-accum " in out and max(map(len, out.splitlines())) <= 90, out
    print_table(report, width=60)
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.lstrip().startswith("runs/async ")]
    header = next(line for line in lines if "to target (s)" in line)
    assert len(rows) == 2 and header.split()[:2] == ["run", "to"], lines  # two tables, the second of them
    # its first value column, "to target (s)": runs/async's 4.00 ends where the header does
    assert rows[1].index(" 4.00 ") + 5 == header.index("(s)") + 3, lines


def seeded(path: Path, mode: str, seed: int, bleus: list[float], seconds: float, lr: float = 0.001) -> Path:
    """A run of `write_run` with a config.json that differs from its setting's other seeds in the seed alone."""
    run = write_run(path, mode, bleus, seconds_per_valid=seconds)
    train = {"mode": mode, "workers": 4, "lr": lr, "seed": seed, "devices": [f"cpu{seed}"], "keep_last": seed}
    (run / "config.json").write_text(json.dumps({"train": train, "model": {"d_model": 64}}))
    return run


def test_seeds_of_one_setting_are_summed_up_by_mean_and_spread(tmp_path: Path) -> None:
    """Runs that repeat a setting with other seeds (config.json alike but for the seed, and for options that do
    not change what is trained, as --devices or --keep-last): a row each setting, with the mean and sample
    standard deviation of their best and final BLEU and of their time to target over the runs that reached it,
    and the speedup as the ratio of the baseline setting's mean time over this one's."""
    import statistics

    sync = [seeded(tmp_path / f"sync-s{s}", "sync", s, b, t)
            for s, b, t in ((1, [10.0, 20.0, 21.0], 100.0), (2, [12.0, 20.5, 20.0], 90.0))]  # fmt: skip
    accum = [seeded(tmp_path / f"accum-s{s}", "async-accum", s, b, t)
             for s, b, t in ((1, [15.0, 22.0], 60.0), (2, [18.0, 19.0], 50.0), (3, [20.0, 21.0], 40.0))]  # fmt: skip
    other_lr = seeded(tmp_path / "accum-lr", "async-accum", 4, [1.0, 2.0], 10.0, lr=0.002)  # another setting
    result = CliRunner().invoke(main, ["report", *map(str, [*sync, *accum, other_lr]), "--target-bleu", "20",
                                       "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    seeds = json.loads(result.stdout)["seeds"]
    assert [(g["runs"], g["seeds"], g["mode"]) for g in seeds] == [
        ([str(p) for p in sync], [1, 2], "sync"),
        ([str(p) for p in accum], [1, 2, 3], "async-accum"),
    ]

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values), "n": len(values)}

    assert seeds[0]["best_bleu"] == spread([21.0, 20.5]) and seeds[0]["final_bleu"] == spread([21.0, 20.0])
    assert seeds[0]["to_target"] == spread([200.0, 180.0])  # (BLEU 20 at the second validation of each)
    assert seeds[1]["best_bleu"] == spread([22.0, 19.0, 21.0]) and seeds[1]["to_target"] == spread([120.0, 40.0])
    assert seeds[0]["speedup"] == 1.0 and seeds[1]["speedup"] == pytest.approx(190.0 / 80.0)
    table = CliRunner().invoke(main, ["report", *map(str, [*sync, *accum]), "--target-bleu", "20"]).stdout
    assert "seeds of one setting" in table and "2 of 3" in table and "20.67 ± 1.53" in table  # (accum's best)


def test_report_help_names_the_options_that_seeds_of_one_setting_may_differ_in() -> None:
    """`nmt report --help` said "config.json alike but for the seed"; the options NOT_THE_SETTING differ too."""
    from async_nmt.cli import report
    from async_nmt.report import NOT_THE_SETTING

    said = " ".join(report.help.split())
    assert all(f"--{name.replace('_', '-')}" in said for name in NOT_THE_SETTING if name != "seed"), said


def test_seeds_are_compared_as_their_options_are_read(tmp_path: Path) -> None:
    """A config.json from before an option (batch_sort, 2026-12-06) holds its default, and a model whose
    embeddings' dropout follows --dropout (None) is the model that names it: both repeat the setting."""
    old, new = (seeded(tmp_path / f"s{s}", "sync", s, [10.0], 10.0) for s in (1, 2))
    config = json.loads((new / "config.json").read_text())
    config["train"]["batch_sort"] = "target"
    config["model"] = {"d_model": 64, "dropout": 0.1, "embed_dropout": 0.1}
    (new / "config.json").write_text(json.dumps(config))
    config["model"] = {"d_model": 64, "dropout": 0.1}
    del config["train"]["batch_sort"]
    config["train"]["seed"] = 1
    (old / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["report", str(old), str(new), "--json"])
    assert result.exit_code == 0 and [g["seeds"] for g in json.loads(result.stdout)["seeds"]] == [[1, 2]]
    config["train"]["batch_sort"] = "longest"  # another setting
    (old / "config.json").write_text(json.dumps(config))
    assert json.loads(CliRunner().invoke(main, ["report", str(old), str(new), "--json"]).stdout)["seeds"] == []


def test_a_run_of_the_same_setting_and_seed_is_no_other_seed(tmp_path: Path) -> None:
    """A run that repeats the setting and the seed of another (a copy of a run, as `cp -r` makes before a rewind)
    is left out of the seeds table, with a warning: it was counted as a second seed ("1, 1"), a spread of 0.00 over
    "2 of 2" runs where there was one."""
    one = seeded(tmp_path / "sync-s1", "sync", 1, [10.0, 20.0, 21.0], 100.0)
    copy = seeded(tmp_path / "sync-s1-copy", "sync", 1, [10.0, 20.0, 21.0], 100.0)
    result = CliRunner().invoke(main, ["report", str(one), str(copy), "--target-bleu", "20", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    warning = (f"warning: {copy} repeats the setting and the seed (1) of {one}: it is no other seed, and the seeds "
               "table leaves it out")  # fmt: skip
    assert data["seeds"] == [] and data["warnings"] == [warning] and result.stderr == warning + "\n"
    two = seeded(tmp_path / "sync-s2", "sync", 2, [12.0, 20.5, 20.0], 90.0)
    result = CliRunner().invoke(main, ["report", str(one), str(copy), str(two), "--target-bleu", "20", "--json"])
    seeds = json.loads(result.stdout)["seeds"]
    assert [(g["runs"], g["seeds"]) for g in seeds] == [([str(one), str(two)], [1, 2])]
    assert seeds[0]["best_bleu"]["n"] == 2 and seeds[0]["to_target"]["mean"] == 190.0  # (200 s and 180 s)
    table = CliRunner().invoke(main, ["report", str(one), str(copy)]).stdout
    assert "seeds of one setting" not in table and "sync-s1-copy" in table  # (a row of its own, as any run)


def test_seeds_apart_by_their_limits_alone_are_named(tmp_path: Path) -> None:
    """A seed resumed with a larger --max-updates is another setting in the seeds table (when a run stops changes
    its final BLEU), and it left its group without a word: a warning names the runs and the limits."""
    runs = [seeded(tmp_path / f"sync-s{s}", "sync", s, [10.0, 20.0], 100.0) for s in (1, 2, 3)]
    for run, limit in zip(runs, (1000, 1000, 2000), strict=True):
        config = json.loads((run / "config.json").read_text())
        config["train"]["max_updates"] = limit
        (run / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [g["seeds"] for g in data["seeds"]] == [[1, 2]]
    warning = (f"warning: {runs[0]}, {runs[1]}, {runs[2]} repeat one setting with other seeds but for "
               "--max-updates: the seeds table counts them apart")  # fmt: skip
    assert data["warnings"] == [warning] and result.stderr == warning + "\n"
    # the same seed with other limits is no other seed to count (a run trained on, and its copy): no warning
    copy = seeded(tmp_path / "sync-s1-longer", "sync", 1, [10.0, 20.0], 100.0)
    result = CliRunner().invoke(main, ["report", str(runs[0]), str(copy), "--json"])
    assert json.loads(result.stdout)["warnings"] == [] and result.stderr == "", result.stderr


def test_seeds_of_one_setting_compare_their_corpus_by_its_training_split(tmp_path: Path) -> None:
    """Where runs recorded their training split, the seeds table compares the corpus by it, not by bin_dir as typed
    (as the warnings compare it): one BIN typed two ways made two settings, and two corpora both typed `bin` (two
    projects' runs, each trained from its own folder) one, their BLEUs averaged together."""

    def run(name: str, seed: int, bin_dir: str, pairs: int, bleus: list[float]) -> Path:
        path = seeded(tmp_path / name, "sync", seed, bleus, 100.0)
        config = json.loads((path / "config.json").read_text())
        config["train"]["bin_dir"] = bin_dir
        config["corpus"] = {
            "src": "de",
            "tgt": "en",
            "vocab_size": 8000,
            "train_pairs": pairs,
            "train_tokens": 9 * pairs,
        }
        (path / "config.json").write_text(json.dumps(config))
        return path

    typed = [
        run("a-s1", 1, "data/bin", 1000, [10.0, 20.0]),
        run("a-s2", 2, str(tmp_path / "data/bin"), 1000, [12.0, 21.0]),
    ]
    other = [run("b-s1", 1, "bin", 5000, [30.0, 31.0]), run("b-s2", 2, "bin", 7000, [1.0, 2.0])]
    result = CliRunner().invoke(main, ["report", *map(str, typed + other), "--json"])
    assert result.exit_code == 0, result.output
    assert [g["runs"] for g in json.loads(result.stdout)["seeds"]] == [[str(p) for p in typed]]


@pytest.mark.parametrize("width", [40, 50, 80])
def test_the_seeds_table_on_a_narrow_terminal_never_splits_a_word(
    tmp_path: Path, capsys, monkeypatch, width: int
) -> None:
    """As the runs' table: no line wider than the terminal, and no number or header word split across lines (at
    50 columns the seeds table showed best BLEU 23./15 and its mode sy/nc); where it does not fit, it is printed
    as several tables, each beginning with the runs' names (which may fold, as in the runs' table)."""
    from async_nmt.report import seed_cells, seed_groups, summarize_seeds

    monkeypatch.chdir(tmp_path)
    for s, b, t in ((1, [10.0, 20.0, 21.0], 100.0), (2, [12.0, 20.5, 20.0], 90.0), (3, [11.0, 20.25, 21.5], 95.0)):
        seeded(Path(f"sync-s{s}"), "async-accum", s, b, t)
    runs = [load_run(Path(f"sync-s{s}")) for s in (1, 2, 3)]
    report = build_report(runs, 20.0)
    report["seeds"] = summarize_seeds(seed_groups(runs), report)
    print_table(report, width=width)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width, out
    headers, rows = seed_cells(report)
    words = {word for value in [*headers, *rows[0][1:]] for word in value.split()}
    assert {"async-accum", "±", "3", "of", "1.00x"} <= words, words
    for word in words:
        assert f" {word} " in " ".join(f" {line} " for line in out.splitlines()), (word, out)


def test_the_seeds_table_marks_runs_not_finished_as_the_runs_table_does(tmp_path: Path) -> None:
    """A seed still training (its final BLEU not final yet), or one that diverged, is marked in the seeds table as
    in the runs' table: it was named there without a mark, its BLEU in the mean as a finished run's."""
    from async_nmt.report import seed_cells

    one = seeded(tmp_path / "s1", "sync", 1, [10.0, 20.0], 100.0)
    going = seeded(tmp_path / "s2", "sync", 2, [12.0, 15.0], 90.0)
    rewrite(going, lambda events: events[:-1])  # (no end event yet)
    gone = seeded(tmp_path / "s3", "sync", 3, [11.0], 90.0)
    rewrite(gone, lambda events: events[-1].update({"diverged": True}))
    result = CliRunner().invoke(main, ["report", str(one), str(going), str(gone), "--target-bleu", "20", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert seed_cells(report)[1][0][0] == f"{one}, {going} *, {gone} (diverged)"
    table = CliRunner().invoke(main, ["report", str(one), str(going), str(gone), "--target-bleu", "20"]).stdout
    assert f"{going} *, {gone} (diverged)" in table


def test_a_run_without_repeats_makes_no_seeds_table(tmp_path: Path, runs: list[Path]) -> None:
    """Runs of no config.json, or of settings that differ, are no repeats: no table, and `seeds` is empty."""
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["seeds"] == []
    assert "seeds of one setting" not in CliRunner().invoke(main, ["report", *map(str, runs)]).stdout


def test_the_committed_seeds_of_the_convergence_experiment_are_grouped_as_it_groups_them() -> None:
    """Resumed runs among them log several start events (it grouped none of them at first); the mean best valid
    BLEU of sync's 3 seeds is docs/results.md's 25.15 ± 0.11."""
    import statistics

    root = Path(__file__).parents[2] / "docs" / "results" / "convergence"
    names = [f"{setting}-s{s}" for setting in ("sync", "async", "accum4") for s in (1, 2, 3)]
    result = CliRunner().invoke(main, ["report", *(str(root / n) for n in names), "--x", "predicted", "--json"])
    assert result.exit_code == 0, result.output
    seeds = json.loads(result.stdout)["seeds"]
    assert [g["runs"] for g in seeds] == [[str(root / n) for n in names[i : i + 3]] for i in (0, 3, 6)]
    best = [max(e["bleu"] for e in map(json.loads, (root / n / "events.jsonl").open()) if e["kind"] == "valid")
            for n in names[:3]]  # fmt: skip
    assert seeds[0]["best_bleu"]["mean"] == pytest.approx(statistics.fmean(best))
    assert (round(seeds[0]["best_bleu"]["mean"], 2), round(seeds[0]["best_bleu"]["sd"], 2)) == (25.15, 0.11)


def test_the_plots_draw_the_seeds_of_a_setting_in_one_colour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each setting its colour, each of its seeds its line style; a run that repeats nothing its own colour."""
    from matplotlib.figure import Figure

    runs = [seeded(tmp_path / "sync-s1", "sync", 1, [1.0, 2.0], 10.0), seeded(tmp_path / "one", "async", 1, [1.0], 5.0),
            seeded(tmp_path / "sync-s2", "sync", 2, [1.5, 2.5], 10.0)]  # fmt: skip
    drawn: list[list[tuple[str, str]]] = []
    savefig = Figure.savefig

    def record(self, path, **kwargs):  # each line's colour and style as matplotlib draws it
        drawn.append([(line.get_color(), line.get_linestyle()) for line in self.axes[0].get_lines()[: len(runs)]])
        savefig(self, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    result = CliRunner().invoke(main, ["report", *map(str, runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert drawn == [[("C0", "-"), ("C1", "-"), ("C0", "--")]] * 2
