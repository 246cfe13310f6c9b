"""The trainer, the launcher and the process mechanics (train/trainer.py, launch.py, processes.py): what their
mutation audit of 2026-12-06 found that no test pinned; each test fails on the change named in its
docstring. Short runs of the micro preset on the synthetic corpus (about a second each) or the pieces alone."""

from __future__ import annotations

import json
import shutil
import types
from pathlib import Path
from typing import Any

import pytest

from async_nmt.config import TrainConfig
from async_nmt.errors import UserError
from async_nmt.model.checkpoint import kept_checkpoints, read_checkpoint
from async_nmt.train.events import read_events
from async_nmt.train.launch import train


def micro(bin_dir: Path, **overrides: Any) -> TrainConfig:
    options = dict(bin_dir=str(bin_dir), preset="micro", max_tokens=1024, lr=2e-3, warmup=50, dropout=0.0,
                   devices=["cpu"], valid_every=0, valid_max_sentences=20, seed=7)  # fmt: skip
    return TrainConfig(**{**options, **overrides})


def events(run: Path, kind: str) -> list[dict]:
    return [e for e in read_events(run / "events.jsonl") if e["kind"] == kind]


def scripted_validation(monkeypatch: pytest.MonkeyPatch, scores: list[tuple[float, float]]) -> None:
    """Validation returns these (BLEU, valid loss) in turn, whatever the model."""
    from async_nmt.train import validate

    queue = list(scores)

    def fake(self, model, sp, amp_dtype, progress=None, resumable=True):
        bleu, loss = queue.pop(0)
        return {"valid_loss": loss, "valid_ppl": 1.0, "bleu": bleu, "chrf": bleu}

    monkeypatch.setattr(validate.Validator, "__call__", fake)


class BurstWorkers:
    """A mode whose workers go on pushing while the trainer looks away, as async worker processes do: each
    `advance` takes up to `burst` updates, never past the update that `allow` let in."""

    def __init__(self, inner: Any, burst: int):
        self.inner, self.burst, self.fence = inner, burst, 0

    def allow(self, updates: int) -> None:
        self.fence = updates
        self.inner.allow(updates)

    def advance(self) -> Any:
        from async_nmt.train.modes.workers import merge_histograms

        stats, staleness = self.inner.advance()
        for _ in range(self.burst - 1):
            if self.inner.server.updates >= self.fence:
                break
            more, more_staleness = self.inner.advance()
            stats.add(more)
            staleness = merge_histograms(staleness, more_staleness)
        return stats, staleness

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def bursting(monkeypatch: pytest.MonkeyPatch, burst: int) -> None:
    from async_nmt.train import trainer as trainer_module

    build = trainer_module.build_workers
    monkeypatch.setattr(trainer_module, "build_workers", lambda ctx: BurstWorkers(build(ctx), burst))


def poison(trainer: Any, nan_at: int, interrupt_at: int | None = None) -> None:
    """The training loss of update `nan_at` is NaN (the model is not); Ctrl-C as update `interrupt_at` + 1
    begins."""
    advance = trainer.workers.advance

    def poisoned() -> Any:
        if trainer.updates == interrupt_at:
            raise KeyboardInterrupt
        stats, staleness = advance()
        if trainer.updates == nan_at:
            stats.loss = float("nan")
        return stats, staleness

    trainer.workers.advance = poisoned


# ---------------------------------------------------------------------- trainer.py


def test_workers_that_take_several_updates_at_once_are_held_at_max_updates(synthetic_bin: Path, tmp_path: Path,
                                                                           monkeypatch):  # fmt: skip
    """The trainer lets the workers go on only up to --max-updates (`_next_fence`): without that fence, async
    workers pushing while the trainer looked away took updates past the limit."""
    bursting(monkeypatch, 3)
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=5), run, progress=False, log_every=1)
    assert events(run, "end")[-1]["updates"] == 5
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 5
    assert [e["updates"] for e in events(run, "train")] == [3, 5]


def test_a_train_event_is_written_each_time_the_count_passes_a_log_every_multiple(
    synthetic_bin: Path, tmp_path: Path, monkeypatch
):
    """Updates taken two at a time (2, 4, 6, ...) with --log-every 3 pass 3, 6, 9 and 12: a train event at 4, 6,
    10 and 12. Logging only where the count is a multiple of --log-every skipped those it stepped over."""
    bursting(monkeypatch, 2)
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=12), run, progress=False, log_every=3)
    assert [e["updates"] for e in events(run, "train")] == [4, 6, 10, 12]


def test_the_updates_since_the_last_train_event_are_logged_when_the_run_stops(synthetic_bin: Path, tmp_path: Path):
    """--max-updates 5 with --log-every 2: a train event at 2, 4 and, as the run stops, 5 (the last update's
    losses were otherwise in no event)."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=5), run, progress=False, log_every=2)
    trained = events(run, "train")
    assert [e["updates"] for e in trained] == [2, 4, 5]
    assert trained[-1]["tokens"] == events(run, "end")[-1]["tokens"]


def test_the_logged_loss_is_per_target_token_as_the_nll_is(synthetic_bin: Path, tmp_path: Path):
    """Without label smoothing the training loss is the nll: both are sums over the interval's target tokens,
    divided by them (a loss divided by the sentences instead was some 8 times the nll here)."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=3, label_smoothing=0.0), run, progress=False, log_every=1)
    trained = events(run, "train")
    assert len(trained) == 3
    for event in trained:
        assert event["loss"] == pytest.approx(event["nll"], rel=1e-5)


def test_ctrl_c_just_after_a_train_event_logs_no_empty_one(synthetic_bin: Path, tmp_path: Path):
    """Ctrl-C as update 3 begins, the updates up to 2 logged already (--log-every 1): the interrupted run
    saves at 2 and writes no train event of no tokens (a loss of 0 and 0 tok/s in `nmt report`'s curves)."""
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro(synthetic_bin, max_updates=10, log_every=1), run)
    trainer.open_run(resume=False)
    advance = trainer.workers.advance

    def interrupted() -> Any:
        if trainer.updates == 2:
            raise KeyboardInterrupt
        return advance()

    trainer.workers.advance = interrupted
    end = trainer.run(progress=False)
    assert end["interrupted"] is True and end["updates"] == 2
    assert [e["updates"] for e in events(run, "train")] == [1, 2]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 2


@pytest.mark.parametrize("options", [{}, {"mode": "diloco", "workers": 2, "simulate": True, "sync_every": 2}],
                         ids=["sync", "diloco"])  # fmt: skip
def test_a_validation_at_the_patience_limit_that_improves_keeps_the_run_going(synthetic_bin: Path, tmp_path: Path,
                                                                              monkeypatch, options):  # fmt: skip
    """--patience 2 --valid-every 2, the best at update 2: the validation at update 6 is the last chance, and it
    improves, so the run goes on until 10. Patience counted as spent before that validation (not only right
    after a validation) made diloco, which holds a wish to stop until its round's end, stop at 6."""
    scripted_validation(monkeypatch, [(3, 2.0), (2, 2.0), (5, 1.0), (4, 1.0), (4, 1.0)])
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=20, valid_every=2, patience=2, **options), run, progress=False)
    assert [e["updates"] for e in events(run, "valid")] == [2, 4, 6, 8, 10]
    end = events(run, "end")[-1]
    assert end["updates"] == 10 and end["stopped_by"] == "--patience 2" and end["converged"] is True


def test_a_save_between_train_events_checks_the_loss_first(synthetic_bin: Path, tmp_path: Path):
    """--save-every 2 --log-every 5, the loss of update 3 NaN: the save at 4 reads the losses first and stops the
    run there, keeping the save of update 2 (checked only where a train event was written, the bad state of
    update 4 replaced last.pt, and the run stopped at 5)."""
    from async_nmt.errors import TrainingDiverged
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro(synthetic_bin, max_updates=10, save_every=2, log_every=5), run)
    trainer.open_run(resume=False)
    poison(trainer, nan_at=3)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at update 4; .*last.pt \(update 2\) is kept"):
        trainer.run(progress=False)
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 2


def test_keep_last_0_keeps_no_copies_of_the_saves(synthetic_bin: Path, tmp_path: Path):
    """--keep-last 0 (the default): no checkpoints/update-U.pt, however often the run saves."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=3, save_every=1, keep_last=0), run, progress=False)
    assert len(events(run, "checkpoint")) == 3
    assert kept_checkpoints(run) == []
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_a_resumed_run_logs_each_checkpoint_once(synthetic_bin: Path, tmp_path: Path):
    """A resume finishes a save whose checkpoint event a kill cut off, and only such a save: a run resumed from
    a whole save (its event written) logged that save's checkpoint event a second time."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=4, save_every=2), run, progress=False)
    train(micro(synthetic_bin, max_updates=6, save_every=2), run, resume=True, progress=False)
    assert [e["updates"] for e in events(run, "checkpoint")] == [2, 4, 6]


def test_a_resume_deletes_the_partial_saves_a_kill_left(synthetic_bin: Path, tmp_path: Path):
    """A kill -9 during a save leaves its *.tmp file behind (a whole checkpoint's size): the resume deletes
    them, those that no later save writes again too."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=2), run, progress=False)
    for name in ("last.pt.tmp", "best.pt.tmp", "update-7.pt.tmp"):
        (run / "checkpoints" / name).write_bytes(b"cut short")
    train(micro(synthetic_bin, max_updates=3), run, resume=True, progress=False)
    assert list((run / "checkpoints").glob("*.tmp")) == []


def test_a_resume_that_redoes_a_kept_save_leaves_no_temporary_file(synthetic_bin: Path, tmp_path: Path):
    """A resume whose log lacks the last save's event does that save's rest again: update-3.pt was already a
    link to last.pt, the rename of update-3.pt.tmp onto it did nothing, and the .tmp stayed (a checkpoint's
    size once update-3.pt went)."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=3, keep_last=2), run, progress=False)
    (run / "events.jsonl").unlink()
    train(micro(synthetic_bin, max_updates=4, keep_last=2), run, resume=True, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt", "update-3.pt",
                                                                     "update-4.pt"]  # fmt: skip


def test_a_failed_copy_to_best_leaves_no_part_of_it_and_names_best_pt(synthetic_bin: Path, tmp_path: Path,
                                                                      monkeypatch):  # fmt: skip
    """A full disk while last.pt is copied to best.pt: the error named last.pt and best.pt.tmp (`last.pt:
    best.pt.tmp: No space left on device`), and the part written stayed."""
    import errno

    from async_nmt.train import trainer as trainer_module

    copy = trainer_module.shutil.copyfile

    def full(source, target):
        if Path(target).name != "best.pt.tmp":
            return copy(source, target)
        Path(target).write_bytes(b"part of it")
        raise OSError(errno.ENOSPC, "No space left on device", str(source), None, str(target))

    monkeypatch.setattr(trainer_module.shutil, "copyfile", full)
    run = tmp_path / "run"
    with pytest.raises(OSError) as raised:
        train(micro(synthetic_bin, max_updates=2, valid_every=2), run, progress=False)
    from async_nmt.errors import system_error

    assert system_error(raised.value) == f"{run / 'checkpoints' / 'best.pt'}: No space left on device"
    assert not (run / "checkpoints" / "best.pt.tmp").exists()


def test_a_log_cut_short_before_the_save_is_warned_of(synthetic_bin: Path, tmp_path: Path, capsys):
    """A log cut (a copy, a full disk) after update 2's train event, the save at 4: the resume cut it back to
    the save's lines, which it did not reach, and went on without a word; its events 3-4 are lost."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=4, log_every=1), run, progress=False)
    log = run / "events.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    second = next(i for i, line in enumerate(lines) if '"train"' in line and '"updates": 2,' in line)
    log.write_text("".join(lines[: second + 1]) + lines[second + 1][:20])  # (and a torn line)
    capsys.readouterr()
    train(micro(synthetic_bin, max_updates=5, log_every=1), run, resume=True, progress=False)
    assert (f"warning: {log} ends at update 2, before the save it resumes from (update 4): the events between are "
            "lost") in capsys.readouterr().err  # fmt: skip
    assert [e["updates"] for e in events(run, "train")] == [1, 2, 5]


def test_a_resume_says_where_it_resumes_and_that_a_limit_already_passed_ends_it(synthetic_bin: Path, tmp_path: Path,
                                                                                capsys):  # fmt: skip
    """As fairseq's "loaded checkpoint": a line before a resumed run's progress names its update. Where a
    --max-updates below it leaves the run only the rest of its save to do (its log lost, here), the line says
    so (it validated, then said "stopped by --max-updates 2" at update 4, without a word why)."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=3), run, progress=False)
    capsys.readouterr()
    train(micro(synthetic_bin, max_updates=4), run, resume=True)
    assert capsys.readouterr().err.startswith(f"resuming {run} from update 3 (checkpoints/last.pt)\n")
    (run / "events.jsonl").unlink()
    train(micro(synthetic_bin, max_updates=2), run, resume=True)
    assert (
        f"resuming {run} from update 4 (checkpoints/last.pt), where --max-updates 2 stops it\n"
        in capsys.readouterr().err
    )
    train(micro(synthetic_bin, max_updates=5), run, resume=True, progress=False)  # (--quiet: no line)
    assert "resuming" not in capsys.readouterr().err


def test_ctrl_c_during_a_save_says_so_and_that_save_is_the_stops(synthetic_bin: Path, tmp_path: Path, capsys,
                                                                   monkeypatch):  # fmt: skip
    """Ctrl-C while update 2 is saved: the save finishes, says so at once, and is the stop's own (it said
    nothing, then saved update 2 again, with a second checkpoint event)."""
    import os
    import signal

    from async_nmt.train import trainer as trainer_module

    save = trainer_module.ckpt.save_checkpoint

    def interrupted(state, path):
        if state["server"]["updates"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return save(state, path)

    monkeypatch.setattr(trainer_module.ckpt, "save_checkpoint", interrupted)
    run = tmp_path / "run"
    trainer = trainer_module.Trainer(micro(synthetic_bin, max_updates=10, save_every=2), run)
    trainer.open_run(resume=False)
    end = trainer.run(progress=False)
    assert end["interrupted"] is True and end["updates"] == 2
    assert [e["updates"] for e in events(run, "checkpoint")] == [2]
    assert "interrupted: finishing the save under way\n" in capsys.readouterr().err
    monkeypatch.setattr(trainer_module.ckpt, "save_checkpoint", save)
    train(micro(synthetic_bin, max_updates=4, save_every=2), run, resume=True, progress=False)
    trained = events(run, "train")  # (the stop's train event, after the save, cut and its updates logged again)
    assert [e["updates"] for e in trained] == [4] and trained[0]["tokens"] == events(run, "end")[-1]["tokens"]


def test_force_starts_the_run_folder_afresh(synthetic_bin: Path, tmp_path: Path):
    """--force on an existing run: the old run's events, checkpoints and kept copies are gone, not mixed into
    the new run's (its log had two starts, and an old update-U.pt stayed for `nmt average` to find)."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=4, save_every=2, keep_last=5), run, progress=False)
    train(micro(synthetic_bin, max_updates=1), run, force=True, progress=False)
    assert [e["kind"] for e in read_events(run / "events.jsonl")] == ["start", "train", "valid", "checkpoint", "end"]
    assert kept_checkpoints(run) == []
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 1


def test_force_deletes_no_file_that_training_did_not_write(synthetic_bin: Path, tmp_path: Path):
    """A user's notes and translations in the run folder, or a file in its checkpoints/, went with --force
    without a word; they are named and the run is left as it was (preprocess --force does so too). A save
    that a kill cut short (*.tmp) and a worker's error log are the run's."""
    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=2, keep_last=1), run, progress=False)
    for name in ("worker-errors.log", "checkpoints/.last.pt.4242.tmp", "checkpoints/best.pt.tmp",
                 "checkpoints/update-7.pt.tmp", ".config.json.123.tmp", "events.jsonl.tmp",
                 "checkpoints/.write-probe.tmp"):  # fmt: skip
        (run / name).write_text("the run's")
    for name in ("NOTES.md", "hyp.en", "checkpoints/mine.pt", "notes.tmp", "checkpoints/avg.tmp", ".draft.2.tmp"):
        (run / name).write_text("mine")
        with pytest.raises(UserError, match=rf"holds what nmt-train did not write \({name}\), which --force would"):
            train(micro(synthetic_bin, max_updates=1), run, force=True, progress=False)
        assert (run / name).read_text() == "mine" and events(run, "end")[-1]["updates"] == 2
        (run / name).unlink()
    train(micro(synthetic_bin, max_updates=1), run, force=True, progress=False)
    assert events(run, "end")[-1]["updates"] == 1 and not (run / "worker-errors.log").exists()


def test_config_json_records_the_training_splits_pairs_and_tokens_of_both_sides(synthetic_bin: Path,
                                                                                tmp_path: Path):  # fmt: skip
    """config.json's corpus counts the training split's pairs and its source plus target tokens, as
    `nmt report` shows them ("N pairs, M tokens") and a resume compares them."""
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    Trainer(micro(synthetic_bin), run).open_run(resume=False)
    split = json.loads((synthetic_bin / "manifest.json").read_text())["splits"]["train"]
    corpus = json.loads((run / "config.json").read_text())["corpus"]
    assert corpus["train_pairs"] == split["sentences"] > 0
    assert corpus["train_tokens"] == split["src_tokens"] + split["tgt_tokens"] > split["src_tokens"] > 0


def test_a_manifest_whose_vocabulary_size_is_not_its_vocabularys_is_refused(synthetic_bin: Path, tmp_path: Path):
    """The vocabulary's hash matches, but manifest.json says another size: the model would be built for that
    size; one line says to preprocess again."""
    from async_nmt.train.trainer import Trainer

    bin_dir = tmp_path / "bin"
    shutil.copytree(synthetic_bin, bin_dir)
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    (bin_dir / "manifest.json").write_text(json.dumps({**manifest, "vocab_size": manifest["vocab_size"] + 8}))
    with pytest.raises(UserError, match="not the vocabulary .* was preprocessed with"):
        Trainer(micro(bin_dir), tmp_path / "run")


def _setup_warnings(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, workers_on: list[str],
                    resumed: bool = False, **options: Any) -> str:  # fmt: skip
    """What the trainer warns of as a run starts (`resumed`: as a resume goes on), for `options` and the workers'
    devices `workers_on`."""
    from async_nmt.train.trainer import Trainer

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    trainer = types.SimpleNamespace(cfg=TrainConfig(**options), devices=workers_on, resumed=resumed,
                                    validator=types.SimpleNamespace(language="de"))  # fmt: skip
    Trainer._warn_of_setup(trainer)
    return capsys.readouterr().err


def test_an_async_mode_of_two_workers_is_not_warned_of(capsys, monkeypatch):
    """Only one worker makes an async mode train as sync does; two are asynchronous (no warning)."""
    for mode in ("async", "async-accum"):
        assert _setup_warnings(capsys, monkeypatch, ["cpu", "cpu"], mode=mode, workers=2, accum=2,
                               devices=["cpu"]) == ""  # fmt: skip
    assert "with one worker trains as sync does" in _setup_warnings(capsys, monkeypatch, ["cpu"], mode="async",
                                                                    devices=["cpu"])  # fmt: skip


def test_async_accum_of_one_push_an_update_is_warned_of_as_async(capsys, monkeypatch):
    """--mode async-accum --accum 1 is plain async: it was taken without a word (a user sweep)."""
    said = _setup_warnings(capsys, monkeypatch, ["cpu", "cpu"], mode="async-accum", workers=2, accum=1,
                           devices=["cpu"])  # fmt: skip
    assert said.startswith("warning: --mode async-accum with --accum 1 updates at every push, as --mode async")


def test_the_setup_warnings_of_a_resume_do_not_advise_options_that_it_keeps(capsys, monkeypatch):
    """A resume keeps the run's --workers and --accum: its warnings advise them for a new run (until 2026-12-08
    they said "give --workers 3" and "give --accum N", which the resume then refused)."""
    cases = [
        (["cpu", "cpu"], dict(workers=2, devices=["cpu", "cpu", "cpu"]), "--workers 3 to use them all"),
        (["cpu"], dict(mode="async", devices=["cpu"]), "--workers N for N workers"),
        (["cpu", "cpu"], dict(mode="async-accum", workers=2, accum=1, devices=["cpu"]), "--accum N to sum"),
    ]
    for workers_on, options, advice in cases:
        assert f"; give {advice}" in _setup_warnings(capsys, monkeypatch, workers_on, **options)
        said = _setup_warnings(capsys, monkeypatch, workers_on, resumed=True, **options)
        assert f"; start a new run with {advice}" in said and "give" not in said, said


def test_simulate_warns_that_the_other_devices_are_not_used(capsys, monkeypatch):
    """--simulate runs every worker in one process on the first device: the other --devices are named unused."""
    said = _setup_warnings(capsys, monkeypatch, ["cuda:0", "cuda:1", "cuda:0"], mode="async", workers=3,
                           simulate=True, devices=["cuda:0", "cuda:1"])  # fmt: skip
    assert said == ("warning: --simulate emulates every worker in one process on cuda:0; the other --devices "
                    "(cuda:1) are not used\n")  # fmt: skip
    assert _setup_warnings(capsys, monkeypatch, ["cpu", "cpu"], mode="async", workers=2, simulate=True,
                           devices=["cpu"]) == ""  # fmt: skip
    # a device named again: "--devices names 3 devices but --workers is 2: ... give --workers 3", which
    # --simulate would not use either
    said = _setup_warnings(capsys, monkeypatch, ["cpu", "cpu"], mode="async", workers=2, simulate=True,
                           devices=["cpu", "cpu", "cpu"])  # fmt: skip
    assert said == "warning: --simulate emulates every worker in one process on cpu; the other --devices (cpu, cpu) " \
                   "are not used\n"  # fmt: skip


def test_a_run_that_no_limit_stops_is_warned_of():
    """With no --max-updates, --max-epochs, --max-time or --patience a run trains until Ctrl-C; it began
    without a word (user test). Any one of the limits is enough to say nothing."""
    from async_nmt.train.trainer import endless_warning

    assert "trains until Ctrl-C or SIGTERM, which save it" in endless_warning(TrainConfig(bin_dir="bin"))
    for limit in (dict(max_updates=1), dict(max_epochs=1), dict(max_time=1.0), dict(patience=1, valid_every=1)):
        assert endless_warning(TrainConfig(bin_dir="bin", **limit)) is None, limit


def test_a_group_that_agreed_on_ctrl_c_at_a_validation_step_saves_without_validating(synthetic_bin: Path,
                                                                                      tmp_path: Path):  # fmt: skip
    """Ctrl-C reaches a sync group, whose ranks agree on it after update 2, a --valid-every 2 step: the run saves
    at 2 and stops, and does not first translate the valid set (minutes on a large one)."""
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro(synthetic_bin, max_updates=10, valid_every=2, log_every=1), run)
    trainer.open_run(resume=False)
    advance = trainer.workers.advance

    def agreed_on_ctrl_c() -> Any:
        taken = advance()
        trainer.workers.interrupted = trainer.updates == 2  # (what a group's agree_stop sets)
        return taken

    trainer.workers.advance = agreed_on_ctrl_c
    end = trainer.run(progress=False)
    assert end["interrupted"] is True and end["updates"] == 2
    assert events(run, "valid") == [] and [e["updates"] for e in events(run, "checkpoint")] == [2]


@pytest.mark.parametrize("mode, world, may_skip", [("sync", 1, True), ("sync", 2, True), ("diloco", 2, True),
                                                   ("async", 2, False), ("async-accum", 3, False)])  # fmt: skip
def test_only_a_trainer_that_no_worker_ranks_wait_for_may_skip_a_run_at_its_limit(monkeypatch, tmp_path: Path, mode,
                                                                                  world, may_skip):  # fmt: skip
    """A resumed run at its limit is left as it is ("nothing to do") by a trainer alone or by the ranks of a
    sync group (they agree on it); torchrun's async server trains instead (and stops at once), as its worker
    ranks wait for it."""
    from async_nmt.train import launch

    asked = []

    class Trainer:
        def __init__(self, cfg, run_dir, rank=0, world=1, interrupt=None, scratch=False):
            pass

        def open_run(self, resume: bool, may_skip: bool = True) -> bool:
            asked.append(may_skip)
            return False

    monkeypatch.setattr(launch, "Trainer", Trainer)
    assert launch.run_trainer(TrainConfig(mode=mode), tmp_path, True, False, rank=0, world=world) is None
    assert asked == [may_skip]


def test_a_trainer_that_may_not_skip_trains_on_from_a_run_at_its_limit(synthetic_bin: Path, tmp_path: Path):
    """`open_run(may_skip=False)` (torchrun's async server) opens a run that stands at its limit, which a trainer
    alone leaves as it is."""
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    train(micro(synthetic_bin, max_updates=2), run, progress=False)
    assert Trainer(micro(synthetic_bin, max_updates=2), run).open_run(resume=True) is False
    trainer = Trainer(micro(synthetic_bin, max_updates=2), run)
    assert trainer.open_run(resume=True, may_skip=False) is True
    end = trainer.run(progress=False)
    assert end["updates"] == 2 and end["stopped_by"] == "--max-updates 2"


# ---------------------------------------------------------------------- launch.py
@pytest.mark.parametrize(
    "options, world, said",
    [
        (dict(simulate=True, mode="async", workers=2), 3,
         "RANK/WORLD_SIZE are set (torchrun): --simulate runs in one process; start it without torchrun"),
        (dict(mode="sync", workers=3), 2, "--workers 3 differs from WORLD_SIZE=2"),
        (dict(mode="async"), 1, "--mode async under torchrun needs 2 ranks or more: rank 0 serves, the others push"),
        (dict(mode="async-accum", workers=3, accum=3), 3, "--workers 3: under torchrun the workers are ranks 1..2, "
                                                          "so --workers must be 2 (WORLD_SIZE=3, rank 0 serves)"),
        (dict(mode="async", workers=2, shards=2), 3, "--shards: under torchrun the server is rank 0, one shard"),
    ],
    ids=["simulate", "sync-workers", "async-alone", "async-workers", "shards"],
)  # fmt: skip
def test_a_torchrun_rank_refuses_options_its_group_cannot_run(synthetic_bin: Path, tmp_path: Path, monkeypatch,
                                                              options, world, said):  # fmt: skip
    """Each rank checks its options against WORLD_SIZE before it joins (one line, which `_agree_to_start` then
    tells the other ranks)."""
    import contextlib

    from async_nmt.train.launch import _check_rank

    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError) as refused, contextlib.ExitStack() as held:
        _check_rank(micro(synthetic_bin, **options), tmp_path / "run", False, False, 1, world, held)
    assert str(refused.value) == said


@pytest.mark.parametrize("mode, given, world, workers", [("sync", 1, 3, 3), ("sync", 3, 3, 3), ("diloco", 1, 2, 2),
                                                         ("async", 1, 3, 2), ("async-accum", 2, 3, 2)])  # fmt: skip
def test_a_torchrun_rank_takes_its_workers_from_world_size(synthetic_bin: Path, tmp_path: Path, monkeypatch, mode,
                                                           given, world, workers):  # fmt: skip
    """--workers left at 1 under torchrun: every rank trains (sync, diloco) or every rank but the server pushes
    (async modes); and each rank's --devices become the one device of its local rank."""
    import contextlib

    from async_nmt.train.launch import _check_rank

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = micro(synthetic_bin, mode=mode, workers=given, sync_every=2 if mode == "diloco" else 0)
    with contextlib.ExitStack() as held:
        node, device = _check_rank(cfg, tmp_path / "run", False, False, 1, world, held)
    assert (cfg.workers, node, device, cfg.devices) == (workers, ["cpu", "cpu"], "cpu", ["cpu"])


def test_a_sync_rank_resumes_only_from_a_copy_of_the_run_on_its_node(synthetic_bin: Path, tmp_path: Path,
                                                                     monkeypatch):  # fmt: skip
    """Every sync rank loads its node's last.pt: rank 1 on a node without the run folder says so."""
    import contextlib

    from async_nmt.train.launch import _check_rank

    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    with pytest.raises(UserError) as refused, contextlib.ExitStack() as held:
        _check_rank(micro(synthetic_bin, mode="sync"), tmp_path / "run", True, False, 1, 2, held)
    assert str(refused.value) == (f"{last}: not on this node; every sync rank resumes from its run folder's copy: "
                                  "copy the run folder to each node")  # fmt: skip


def _agree(rank: int, problem: str | None, options: dict | None, others: dict[int, tuple[str | None, dict | None]]):
    """`_agree_to_start` for `rank`, where the other ranks posted `others` (rank: (problem, options)) from host
    node-R, in a store of this process."""
    import torch.distributed as dist

    from async_nmt.train.launch import _agree_to_start

    store = dist.HashStore()
    board = dist.PrefixStore("async-nmt/start/", store)
    for other, (their_problem, their_options) in others.items():
        board.set(str(other), json.dumps({"host": f"node-{other}", "problem": their_problem, "options": their_options}))
        board.set(f"read/{other}", "1")
    _agree_to_start(store, rank, 1 + len(others), problem, options)


START = {"lr": 0.002, "label_smoothing": 0.1, "corpus": {"vocab_hash": "a"}, "resume": False, "run config": True}


def test_ranks_that_can_start_alike_start(monkeypatch):
    """The same options (the presence of config.json aside, which only explains a difference) start the group."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    _agree(0, None, START, {1: (None, {**START, "run config": False}), 2: (None, dict(START))})


@pytest.mark.parametrize(
    "theirs, said",
    [
        ({"lr": 0.05}, "rank 1 on node-1 was given other options than rank 0: --lr 0.05 (rank 0: 0.002); start "
                       "every rank alike (only --devices and the corpus's path may differ)"),
        ({"label_smoothing": 0.2, "corpus": {"vocab_hash": "b"}},
         "rank 1 on node-1 was given other options than rank 0: --label-smoothing 0.2 (rank 0: 0.1), the corpus "
         "(BIN) (another) (rank 0: (another)); start every rank alike (only --devices and the corpus's path may "
         "differ)"),
        ({"resume": True}, "rank 1 on node-1 was given other options than rank 0: --resume True (rank 0: False); "
                           "start every rank alike (only --devices and the corpus's path may differ)"),
    ],
    ids=["lr", "two", "resume"],
)  # fmt: skip
def test_a_rank_given_other_options_than_rank_0_stops_every_rank_naming_them(monkeypatch, theirs, said):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError) as refused:
        _agree(0, None, START, {1: (None, {**START, **theirs})})
    assert str(refused.value) == said


def test_a_resume_says_why_a_rank_was_given_other_options(monkeypatch):
    """On --resume, a node without the run's config.json took the options its command line left out from their
    defaults; a node whose last.pt is another save is told to copy rank 0's run folder."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    ours = {**START, "resume": True, "checkpoint": {"updates": 4, "crc32": 7}}
    with pytest.raises(UserError) as refused:
        _agree(0, None, ours, {1: (None, {**ours, "lr": 0.05, "run config": False})})
    assert str(refused.value) == (
        "rank 1 on node-1 was given other options than rank 0: --lr 0.05 (rank 0: 0.002); its node has no copy of "
        "the run's config.json, where --resume takes the options that its command line leaves out: give them there"
    )
    with pytest.raises(UserError) as refused:
        _agree(0, None, ours, {1: (None, {**ours, "checkpoint": {"updates": 2, "crc32": 5}, "run config": False})})
    assert str(refused.value) == (
        "rank 1 on node-1 was given other options than rank 0: its node's last.pt at update 2 (parameters' CRC-32 5) "
        "(rank 0: at update 4 (parameters' CRC-32 7)); copy rank 0's run folder to that node"
    )


def test_a_rank_that_cannot_start_says_why_and_the_others_name_it(monkeypatch):
    """The rank with the problem says its own one line; every other rank names that rank and its problem."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError) as refused:
        _agree(0, "--lr must be positive", None, {1: (None, START)})
    assert str(refused.value) == "--lr must be positive"
    with pytest.raises(UserError) as refused:
        _agree(0, None, START, {1: (None, START), 2: ("RUN: in use by pid 9", None)})
    assert str(refused.value) == "rank 2 on node-2 cannot start (RUN: in use by pid 9), so neither does rank 0"


def test_only_the_first_rank_of_a_node_says_why_the_group_cannot_start(monkeypatch):
    """A node's other ranks leave without a line of their own (exit code 2): one line a node."""
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as left:
        _agree(1, None, START, {0: (None, {**START, "lr": 0.05})})
    assert left.value.code == 2
    _agree(1, None, START, {0: (None, START)})  # (alike: it starts)


@pytest.mark.parametrize("rank, progress", [(0, True), (0, False), (1, True), (1, False)])
def test_only_rank_0_says_how_the_run_ended_and_not_under_quiet(monkeypatch, capsys, tmp_path: Path, rank, progress):
    """The summary table is rank 0's, and --quiet (no progress) leaves it out; an interrupted run's "saved" line
    and exit code 130 are rank 0's alone (each rank of a group said it, and left past its group's teardown)."""
    from async_nmt.train import launch

    summaries = []

    class Trainer:
        stopped_after_end = False  # (the stop cut the run short)

        def __init__(self, cfg, run_dir, rank=0, world=1, interrupt=None, scratch=False):
            pass

        def open_run(self, resume: bool, may_skip: bool = True) -> bool:
            return True

        def run(self, progress: bool = True) -> dict:
            return {"interrupted": True, "updates": 3}

    monkeypatch.setattr(launch, "Trainer", Trainer)
    monkeypatch.setattr(launch, "print_summary", lambda summary, trainer: summaries.append(summary))
    if rank == 0:
        with pytest.raises(SystemExit) as stopped:
            launch.run_trainer(TrainConfig(), tmp_path, False, progress, rank=rank, world=2)
        assert stopped.value.code == 130
        assert capsys.readouterr().err == f"interrupted: saved {tmp_path / 'checkpoints' / 'last.pt'}\n"
    else:
        assert launch.run_trainer(TrainConfig(), tmp_path, False, progress, rank=rank, world=2)["updates"] == 3
        assert capsys.readouterr().err == ""
    assert len(summaries) == (rank == 0 and progress)
    if rank == 0:  # a benchmark's temporary run folder: no checkpoint named that will be gone
        with pytest.raises(SystemExit) as stopped:
            launch.run_trainer(TrainConfig(), tmp_path, False, progress, rank=rank, world=2, scratch=True)
        assert stopped.value.code == 130 and capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("ranks", [False, True])
def test_train_passes_scratch_to_the_trainer_or_the_ranks(monkeypatch, synthetic_bin: Path, tmp_path: Path, ranks):
    """The benchmarks' Ctrl-C said `interrupted: saved <checkpoint>` of a folder they then deleted."""
    from async_nmt.train import launch

    seen = []
    monkeypatch.setattr(launch, "spawns_ranks", lambda cfg: ranks)
    monkeypatch.setattr(launch, "run_trainer", lambda *args, scratch=False: seen.append(scratch))
    monkeypatch.setattr(launch, "launch_ranks", lambda *args: seen.append(args[-1]))
    for scratch in (False, True):
        launch.train(TrainConfig(bin_dir=str(synthetic_bin)), tmp_path / f"run-{scratch}", scratch=scratch)
    assert seen == [False, True]


def test_torchrun_ranks_without_devices_take_the_gpu_of_their_local_rank(monkeypatch):
    """No --devices under torchrun: local rank i trains on cuda:i (all on cuda:0 would share one GPU), or the CPU."""
    from async_nmt.train.launch import node_devices

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert node_devices([], 3) == ["cuda:0", "cuda:1", "cuda:2"]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert node_devices([], 2) == ["cpu", "cpu"]


def test_a_second_ctrl_c_stops_a_group_of_ranks_at_once(tmp_path: Path, monkeypatch, capsys):
    """The first Ctrl-C tells the ranks to stop at their next step; a second stops them at once (ranks killed)."""
    import threading

    from async_nmt.train import launch, processes

    signals, stopped = iter([KeyboardInterrupt, KeyboardInterrupt, RuntimeError("the second was ignored")]), []

    def check_workers(*args: Any) -> None:
        raise next(signals)

    monkeypatch.setattr(processes, "check_workers", check_workers)
    monkeypatch.setattr(processes, "stop", lambda ranks, grace_s: stopped.append(grace_s))
    ranks = [types.SimpleNamespace(exitcode=None, is_alive=lambda: True) for _ in range(2)]
    interrupt = threading.Event()
    with pytest.raises(KeyboardInterrupt):
        launch.supervise(ranks, None, ["cpu", "cpu"], tmp_path, interrupt, launch.stop_notice("sync"))
    assert interrupt.is_set() and stopped == [0.0]
    assert capsys.readouterr().err == "interrupted: stopping within two steps (Ctrl-C again to stop at once, unsaved)\n"


def test_a_first_ctrl_c_as_the_supervisor_looks_at_the_ranks_stops_them_saved(tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C or SIGTERM that came while the supervisor asked whether the ranks were alive (between its
    checks) killed them at once, unsaved and without the notice, as a second one does (seen once in a full
    test run: `timeout`'s SIGTERM to a sync group exited 130 without the notice)."""
    import threading

    from async_nmt.train import launch, processes

    interrupt, looks, stopped = threading.Event(), [], []

    def is_alive() -> bool:
        looks.append(interrupt.is_set())
        if len(looks) == 1:
            raise KeyboardInterrupt  # the signal, as it lands in the loop's look at the ranks
        return len(looks) < 4

    monkeypatch.setattr(processes, "check_workers", lambda *args: None)
    monkeypatch.setattr(processes, "stop", lambda ranks, grace_s: stopped.append(grace_s))
    monkeypatch.setattr(launch.time, "sleep", lambda s: None)
    ranks = [types.SimpleNamespace(exitcode=130, is_alive=is_alive)]
    try:
        code = launch.supervise(ranks, None, ["cpu"], tmp_path, interrupt, launch.stop_notice("sync"))
    except KeyboardInterrupt:  # (raised on, it would stop pytest itself)
        pytest.fail(f"the first Ctrl-C was raised on; the ranks were stopped with grace {stopped}")
    assert code == 130 and interrupt.is_set() and not stopped and looks == [False, True, True, True]
    assert capsys.readouterr().err == launch.stop_notice("sync") + "\n"


def test_a_diloco_group_says_it_stops_where_its_ranks_next_meet_not_at_the_next_step():
    """Diloco's ranks stop where they next meet, up to a round later: its notice said "at the next step", and
    a user who saw it train on and pressed Ctrl-C again lost the save."""
    from async_nmt.train.launch import stop_notice

    assert "within two steps" in stop_notice("sync") and "step" not in stop_notice("diloco")
    assert "where the ranks next meet" in stop_notice("diloco") and "round's end" in stop_notice("diloco")
    assert "unsaved" in stop_notice("diloco")


# ---------------------------------------------------------------------- processes.py
def _check(tmp_path: Path, monkeypatch, exitcodes: list[int | None], messages: list[tuple]) -> None:
    """`check_workers` of processes that exited with `exitcodes` (None: running), `messages` on the error queue."""
    import queue

    from async_nmt.train import processes

    monkeypatch.setattr(processes, "MESSAGE_GRACE_S", 0.0)
    errors = queue.SimpleQueue()
    for message in messages:
        errors.put(message)
    workers = [types.SimpleNamespace(exitcode=code) for code in exitcodes]
    processes.check_workers(workers, errors, ["cpu", "cuda:1", "cuda:2"][: len(exitcodes)], tmp_path)


def test_workers_that_run_or_ended_by_ctrl_c_are_no_failure(tmp_path: Path, monkeypatch):
    _check(tmp_path, monkeypatch, [None, 0, 130], [])


OOM = "as the kernel's out-of-memory killer sends when memory runs out"


@pytest.mark.parametrize(
    "exitcodes, messages, said",
    [
        ([None, -9], [], f"worker 1 (cuda:1) was killed by signal 9 (SIGKILL, {OOM})"),
        ([None, -11], [], "worker 1 (cuda:1) was killed by signal 11 (SIGSEGV)"),
        ([None, 3], [], "worker 1 (cuda:1) exited with code 3"),
        # the root cause first: the silent death, then the first error it caused
        ([1, -9, 1], [(0, "cpu", "error", "RuntimeError: Connection closed by peer", "Traceback ..."),
                      (2, "cuda:2", "error", "RuntimeError: timeout", "Traceback ...")],
         f"worker 1 (cuda:1) was killed by signal 9 (SIGKILL, {OOM}); then worker 0 failed: RuntimeError: Connection "
         "closed by peer"),
        # gloo's source file and advice left out: the cause before it says what happened
        ([1, -9], [(0, "cpu", "error", "RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
                   "pair.cc:537] Read error [127.0.0.1]:47552: Connection reset by peer. This is typically caused by "
                   "a remote worker crashing. GLHF! \U0001f3d6", "Traceback ...")],
         f"worker 1 (cuda:1) was killed by signal 9 (SIGKILL, {OOM}); then worker 0 failed: RuntimeError: Read error "
         "[127.0.0.1]:47552: Connection reset by peer"),
    ],
    ids=["sigkill", "sigsegv", "exit-code", "then", "then-gloo"],
)  # fmt: skip
def test_a_worker_that_died_without_a_word_is_named_first(tmp_path: Path, monkeypatch, exitcodes, messages, said):
    from async_nmt.errors import WorkerFailed

    with pytest.raises(WorkerFailed) as failed:
        _check(tmp_path, monkeypatch, exitcodes, messages)
    assert str(failed.value) == said and failed.value.exit_code == 1


def test_a_worker_that_raised_is_one_line_and_its_traceback_goes_to_the_log(tmp_path: Path, monkeypatch):
    from async_nmt.errors import WorkerFailed

    with pytest.raises(WorkerFailed) as failed:
        _check(tmp_path, monkeypatch, [None, 1], [(1, "cuda:1", "error", "ValueError: bad", "Traceback: line 7")])
    log = tmp_path / "worker-errors.log"
    assert str(failed.value) == f"worker 1 (cuda:1) failed: ValueError: bad (traceback in {log})"
    assert log.read_text() == "worker 1 (cuda:1):\nTraceback: line 7\n"
    with pytest.raises(WorkerFailed) as failed:  # a run folder that cannot take the log: the line alone
        _check(tmp_path / "gone", monkeypatch, [None, 1], [(1, "cuda:1", "error", "ValueError: bad", "Traceback")])
    assert str(failed.value) == "worker 1 (cuda:1) failed: ValueError: bad"


@pytest.mark.parametrize("code", [1, 2])
def test_a_workers_user_error_is_its_one_line_with_its_exit_code(tmp_path: Path, monkeypatch, code: int):
    """A worker's own one-line error (a bad option: 2; a divergence, out of memory: 1) is the run's, as it is."""
    import queue

    from async_nmt.errors import WorkerFailed
    from async_nmt.train import processes

    monkeypatch.setattr(processes, "die_with_parent", lambda: None)
    monkeypatch.setattr(processes.signal, "signal", lambda *args: None)
    monkeypatch.setattr(processes, "MESSAGE_GRACE_S", 0.0)
    errors = queue.SimpleQueue()
    error = WorkerFailed("out of memory") if code == 1 else UserError("--max-tokens: too few batches")
    with pytest.raises(SystemExit) as exited, processes.worker_process(0, "cpu", errors):
        raise error
    assert exited.value.code == code
    with pytest.raises(UserError) as raised:
        processes.check_workers([types.SimpleNamespace(exitcode=code)], errors, ["cpu"], tmp_path)
    assert str(raised.value) == str(error) and raised.value.exit_code == code


def test_stop_signals_set_says_its_message_and_puts_the_handlers_back(monkeypatch, capsys):
    import os
    import signal
    import threading
    import time

    from async_nmt.train import processes

    before = [signal.getsignal(sig) for sig in processes.STOP_SIGNALS]
    flag = threading.Event()
    with processes.stop_signals_set(flag, "interrupted: stopping at the next step"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # (Python runs the handler at the next instruction of the main thread)
    assert flag.is_set() and capsys.readouterr().err == "interrupted: stopping at the next step\n"
    assert [signal.getsignal(sig) for sig in processes.STOP_SIGNALS] == before


def test_spawning_workers_leaves_the_parents_stop_signals_as_they_were():
    """The parent ignores Ctrl-C and SIGTERM only while it forks a worker (which starts with them ignored): after
    the spawn they act again (a parent left ignoring them could not be stopped but by kill -9)."""
    import signal
    import time

    from async_nmt.train import processes

    before = [signal.getsignal(sig) for sig in processes.STOP_SIGNALS]
    started = processes.spawn(time.sleep, [(0.0,)])
    processes.stop(started)
    assert [signal.getsignal(sig) for sig in processes.STOP_SIGNALS] == before
    assert signal.SIG_IGN not in before and started[0].exitcode == 0


def test_workers_share_the_cores_they_may_run_on_at_least_one_thread_each(monkeypatch):
    """Each worker on a GPU took every core (os.cpu_count, not the cores the process may run on)."""
    from async_nmt.train import processes

    monkeypatch.setattr(processes.os, "cpu_count", lambda: 64)  # (the machine's; not those of this process)
    monkeypatch.setattr(processes.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [processes.cpu_threads("cpu", ["cpu"] * n) for n in (1, 3, 8, 20)] == [8, 2, 1, 1]
    assert [processes.cpu_threads("cuda:0", [f"cuda:{i}" for i in range(n)]) for n in (1, 3, 8, 20)] == [8, 2, 1, 1]
    mixed = ["cpu", "cpu", "cuda:0", "cuda:1"]  # the CPU workers share the cores; a GPU's takes its share
    assert [processes.cpu_threads(d, mixed) for d in mixed] == [4, 4, 2, 2]


def test_the_next_fence_is_reckoned_from_the_counted_updates():
    """Worker processes push on after the trainer collects: counted at 19 with the server at 20 (the fence of
    --valid-every 20), the next fence is still 20, which the trainer then waits for and validates at. Reckoned
    from the server's 20 it was 40, and the validation at 20 was done without waiting for the pushes."""
    from async_nmt.train.modes.workers import Counted
    from async_nmt.train.trainer import Trainer

    class Stub:
        counted_updates = Trainer.counted_updates
        updates = Trainer.updates

    stub: Any = Stub()
    stub.cfg = TrainConfig(valid_every=20, save_every=0, max_updates=0)
    stub.server = types.SimpleNamespace(updates=20)
    stub.workers = types.SimpleNamespace(counted=Counted(19, 19, 1e-3, 0.5))
    assert Trainer._next_fence(stub) == 20
    stub.workers.counted = None  # (in-process modes: the server's count, which the statistics reach)
    assert Trainer._next_fence(stub) == 40


def test_a_limit_reached_after_the_loops_last_look_is_drained_before_the_closing_validation(
    synthetic_bin: Path, tmp_path: Path, monkeypatch
):
    """The loop's look after update 4 finds no limit, the next look at its top does (as a --max-time limit passes
    while the loop logs, and worker processes push on): the pushes in flight (here one more update) are drained
    and logged before the closing validation and save. Without that drain, the run validated and saved a server
    still being written, and lost the statistics of those pushes."""
    from async_nmt.train.trainer import Trainer

    order: list[tuple[str, int]] = []
    looks = iter([False] * 8)  # updates 1-4: the look at the loop's top, then the one after the update

    def should_stop(self) -> bool:
        return next(looks, True)

    monkeypatch.setattr(Trainer, "should_stop", should_stop)
    validate = Trainer.validate

    def validating(self):
        order.append(("validate", self.updates))
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", validating)
    run = tmp_path / "run"
    trainer = Trainer(micro(synthetic_bin, max_updates=0, log_every=100), run)
    trainer.open_run(resume=False)

    def drain() -> Any:  # a push in flight finishes its update
        order.append(("drain", trainer.updates))
        return trainer.workers.advance()

    trainer.workers.drain = drain
    end = trainer.run(progress=False)
    assert order == [("drain", 4), ("validate", 5)]
    trained = events(run, "train")
    assert [e["updates"] for e in trained] == [5]  # (--log-every 100: the one the stop writes)
    assert trained[0]["tokens"] == end["tokens"] and end["updates"] == 5
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 5


def test_a_divergence_names_the_update_its_losses_were_counted_to(tmp_path: Path):
    """Worker processes push on after the trainer collects: losses counted to update 19, the server at 20, the
    message names 19 (it named the live 20, an update whose losses were not read)."""
    from async_nmt.errors import TrainingDiverged
    from async_nmt.train.modes.workers import Counted
    from async_nmt.train.trainer import Trainer

    class Stub:
        counted_updates = Trainer.counted_updates
        updates = Trainer.updates

    stub: Any = Stub()
    stub.run_dir, stub.saved_at = tmp_path, 10
    stub.server = types.SimpleNamespace(updates=20)
    stub.workers = types.SimpleNamespace(counted=Counted(19, 19, 1e-3, 0.5))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at update 19; .*last.pt \(update 10\) is kept"):
        Trainer._diverged(stub, "the training loss is nan")


def test_ctrl_c_after_a_bad_loss_keeps_the_last_good_save(synthetic_bin: Path, tmp_path: Path):
    """--save-every 4, the loss of update 5 NaN, Ctrl-C as update 7 begins: the stop reads the losses before it
    saves, and keeps the save of update 4 (it saved the bad state of update 6 over it, and said it was saved)."""
    from async_nmt.errors import TrainingDiverged
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro(synthetic_bin, max_updates=10, save_every=4, log_every=10), run)
    trainer.open_run(resume=False)
    poison(trainer, nan_at=5, interrupt_at=6)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at update 6; .*last.pt \(update 4\) is kept"):
        trainer.run(progress=False)
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 4
    end = events(run, "end")[-1]
    assert end["diverged"] is True and end["interrupted"] is True and end["updates"] == 6


@pytest.mark.parametrize("saved", [True, False])
def test_a_second_ctrl_c_to_a_group_of_ranks_says_whether_rank_0_had_saved(tmp_path: Path, monkeypatch, capsys,
                                                                            saved: bool):  # fmt: skip
    """Spawned sync ranks ignore Ctrl-C; their supervisor stops them at once at a second one. Where rank 0 had
    saved for the first (its end event written), the line says so (it said "interrupted" alone)."""
    from async_nmt.train import launch
    from async_nmt.train.events import EventLog

    run = tmp_path / "run"
    run.mkdir()
    log = EventLog(run / "events.jsonl")
    log.write("start", updates=0)
    if saved:
        log.write("end", updates=3, interrupted=True, converged=False)
    log.close()

    def second_ctrl_c(*args: Any, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(launch.processes, "spawn", lambda target, args: [])
    monkeypatch.setattr(launch, "supervise", second_ctrl_c)
    cfg = TrainConfig(mode="sync", workers=2, devices=["cpu", "cpu"])
    with pytest.raises(SystemExit if saved else KeyboardInterrupt) as stopped:
        launch.launch_ranks(cfg, run, False, False, ["cpu", "cpu"])
    if saved:
        assert stopped.value.code == 130
        assert capsys.readouterr().err == f"interrupted: saved {run / 'checkpoints' / 'last.pt'}\n"


@pytest.mark.parametrize(
    "saved, given, said",
    [
        (dict(mode="sync"), dict(sync_every=3), "--sync-every applies to --mode diloco only"),
        (dict(mode="async"), dict(accum=2), "--accum sums pushes on the parameter server and only applies"),
        (dict(mode="diloco", sync_every=4, max_updates=90), dict(sync_every=200), "saved with --sync-every 4, not 200"),
        (dict(mode="async-accum", accum=2), dict(accum=3), "saved with --accum 2, not 3"),
    ],
)  # fmt: skip
def test_resume_names_an_option_of_another_mode_as_a_new_run_does(saved, given, said, tmp_path: Path):
    """`--resume --sync-every 3` of a sync run was "saved with --sync-every 0, not 3"; an option of the run's own
    mode is still refused as changed (diloco's was checked against the other options of last.pt as it stood)."""
    from async_nmt.train.trainer import check_resume_options

    run = TrainConfig(**saved)
    with pytest.raises(UserError, match=said):
        check_resume_options(run, TrainConfig(**{**saved, **given}), tmp_path / "last.pt")
