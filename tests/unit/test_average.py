"""Checkpoint averaging: the mean of the kept checkpoints' parameters, and one-line errors."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from async_nmt.cli import main
from async_nmt.errors import UserError
from async_nmt.model.checkpoint import (
    average_checkpoints,
    find_checkpoint,
    kept_checkpoints,
    kept_path,
    last_kept,
    read_checkpoint,
)
from async_nmt.train.checkpoint import save_checkpoint


def save_kept(run: Path, updates: int, params: torch.Tensor, d_model: int = 8) -> Path:
    path = kept_path(run, updates)
    state = {"model_config": {"d_model": d_model}, "train_config": {}, "corpus": {"vocab_hash": "v"},
             "vocab_model": b"spm", "params": params, "server": {"updates": updates}}  # fmt: skip
    save_checkpoint(state, path)
    return path


def test_the_average_is_the_mean_of_the_last_n_kept_checkpoints(tmp_path: Path):
    torch.manual_seed(0)
    params = {u: torch.randn(50) for u in (5, 10, 15, 100)}  # 100 sorts after 15 as a number, not as text
    for updates, p in params.items():
        save_kept(tmp_path, updates, p)
    assert [p.name for p in kept_checkpoints(tmp_path)] == ["update-5.pt", "update-10.pt", "update-15.pt",
                                                            "update-100.pt"]  # fmt: skip
    paths = last_kept(tmp_path, 3)
    averaged = average_checkpoints(paths)
    torch.testing.assert_close(averaged["params"], (params[10] + params[15] + params[100]) / 3)
    assert "server" not in averaged  # no training state: it translates, it does not resume
    out = tmp_path / "avg.pt"
    save_checkpoint(averaged, out)
    assert torch.equal(read_checkpoint(out)["params"], averaged["params"])


def test_an_average_of_saves_older_than_last_pt_is_warned_of(tmp_path: Path):
    """A run resumed with --keep-last 0 keeps no saves: `nmt average` averaged the older ones it had kept, and
    said nothing of last.pt's later update."""
    for updates in (5, 10):
        save_kept(tmp_path, updates, torch.randn(50))
    for last, warned in ((10, False), (20, True)):
        save_checkpoint({**read_checkpoint(kept_path(tmp_path, 10)), "server": {"updates": last}},
                        tmp_path / "checkpoints" / "last.pt")  # fmt: skip
        result = CliRunner().invoke(main, ["average", str(tmp_path), "--last", "2", "-o", str(tmp_path / "a.pt")])
        assert result.exit_code == 0, result.output
        said = (f"warning: {tmp_path / 'checkpoints' / 'last.pt'} is at update 20, but the newest kept save is "
                "update-10.pt: the run kept none since (resumed with --keep-last 0, or a save cut short before "
                "its copy")  # fmt: skip
        assert (said in result.output) == warned, result.output
        (tmp_path / "a.pt").unlink()


def test_a_kept_saves_name_is_checked_against_the_update_it_holds(tmp_path: Path):
    """The last N are chosen by name: a save renamed, or copied over another, was averaged as the update its
    name said, and `update-7.pt` beside `update-007.pt` counted one model twice."""
    for updates in (5, 10, 15):
        save_kept(tmp_path, updates, torch.full((8,), float(updates)))
    renamed = kept_path(tmp_path, 20)
    os.replace(kept_path(tmp_path, 5), renamed)  # the oldest, named as the newest
    with pytest.raises(UserError, match=f"{renamed}: holds the save of update 5, not of update 20 as its name"):
        average_checkpoints(last_kept(tmp_path, 3))
    renamed.unlink()
    twice = tmp_path / "checkpoints" / "update-015.pt"
    twice.write_bytes(kept_path(tmp_path, 15).read_bytes())
    with pytest.raises(UserError, match=r"update-0?15\.pt: the same update, 15, as .*update-0?15\.pt; averaging"):
        average_checkpoints(last_kept(tmp_path, 3))
    code = CliRunner().invoke(main, ["average", str(tmp_path), "--last", "2", "-o", str(tmp_path / "a.pt")])
    assert code.exit_code == 2 and "the same update, 15" in code.output and not (tmp_path / "a.pt").exists()
    twice.unlink()
    torch.testing.assert_close(average_checkpoints(last_kept(tmp_path, 2))["params"], torch.full((8,), 12.5))


def test_averaging_refuses_too_few_checkpoints_and_another_model(tmp_path: Path):
    save_kept(tmp_path, 5, torch.zeros(8))
    with pytest.raises(UserError, match="1 kept checkpoints, fewer than the 2 asked for .*--keep-last 2"):
        last_kept(tmp_path, 2)
    with pytest.raises(UserError, match="no such run folder"):
        last_kept(tmp_path / "nowhere", 1)
    other = save_kept(tmp_path, 10, torch.zeros(8), d_model=16)
    # (it said "another model config" alone: which setting differs, and how, is named)
    with pytest.raises(UserError, match=rf"{other}: another model config than .* \(d_model 16, not \d+\)"):
        average_checkpoints(last_kept(tmp_path, 2))


def test_too_few_kept_checkpoints_of_a_run_that_keeps_enough_says_so(tmp_path: Path):
    """A run trained with --keep-last 3 that has saved twice so far: "train with --keep-last 3 or more" sent its
    user to an option the run had."""
    (tmp_path / "config.json").write_text('{"train": {"keep_last": 3}}')
    save_kept(tmp_path, 5, torch.zeros(8))
    save_kept(tmp_path, 10, torch.zeros(8))
    with pytest.raises(UserError, match=r"2 kept checkpoints, fewer than the 3 asked for \(the run keeps its last 3 "
                       r"saves, --keep-last 3, but has kept 2 so far: average fewer, or train on\)"):  # fmt: skip
        last_kept(tmp_path, 3)
    with pytest.raises(UserError, match=r"fewer than the 4 asked for \(train with --keep-last 4 or more\)"):
        last_kept(tmp_path, 4)


def test_a_save_from_before_the_two_dropouts_averages_with_a_later_one_of_the_same_model(tmp_path: Path):
    """A run resumed across 2026-12-06 keeps saves whose model config lacks the embeddings' and attention's
    dropouts beside saves that hold their defaults: the same model. Another attention dropout is not."""
    save_kept(tmp_path, 5, torch.zeros(8))  # (model_config {"d_model": 8}, as before)
    later = kept_path(tmp_path, 10)
    state = {"model_config": {"d_model": 8, "embed_dropout": None, "attention_dropout": 0.0}, "train_config": {},
             "corpus": {"vocab_hash": "v"}, "vocab_model": b"spm", "params": torch.ones(8)}  # fmt: skip
    save_checkpoint(state, later)
    assert torch.equal(average_checkpoints(last_kept(tmp_path, 2))["params"], torch.full((8,), 0.5))
    save_checkpoint({**state, "model_config": {"d_model": 8, "attention_dropout": 0.1}}, later)
    with pytest.raises(UserError, match=f"{later}: another model config"):
        average_checkpoints(last_kept(tmp_path, 2))


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def make_run(run: Path) -> Path:
    """A run folder as training leaves it (config.json beside checkpoints/), with three kept saves."""
    run.mkdir()
    (run / "config.json").write_text("{}")
    for updates in (5, 10, 15):
        save_kept(run, updates, torch.full((8,), float(updates)))
    return run


def average(*args: object):
    return runner().invoke(main, ["average", *map(str, args)])


def one_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr, result.stderr


def test_average_without_last_takes_the_last_5_kept_and_says_which(tmp_path: Path):
    """`--last` is 5 unless given (as --help states): of six kept saves, the first is left out of the mean; the
    command says on stderr which saves went into which file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for updates in (2, 4, 6, 8, 10, 12):
        save_kept(run, updates, torch.full((8,), float(updates)))
    result = average(run, "-o", tmp_path / "avg.pt")
    assert result.exit_code == 0, result.output
    assert torch.equal(read_checkpoint(tmp_path / "avg.pt")["params"], torch.full((8,), (4 + 6 + 8 + 10 + 12) / 5))
    names = "update-4.pt, update-6.pt, update-8.pt, update-10.pt, update-12.pt"
    assert result.stderr == f"averaged {names} into {tmp_path / 'avg.pt'}\n"


def test_force_never_writes_into_any_runs_checkpoints(tmp_path: Path):
    r1, r2 = make_run(tmp_path / "r1"), make_run(tmp_path / "r2")
    best = r2 / "checkpoints" / "best.pt"
    best.write_bytes(b"r2's best")
    for output in (best, r2 / "checkpoints" / "new.pt", r2 / "checkpoints" / "sub" / "x.pt",
                   r1 / "checkpoints" / "update-5.pt"):  # fmt: skip
        one_line(average(r1, "--last", "2", "-o", output, "--force"), "where the run's own checkpoints live")
    assert best.read_bytes() == b"r2's best" and not (r2 / "checkpoints" / "sub").exists()
    link = tmp_path / "link.pt"  # a link is replaced, not the checkpoint it points to
    link.symlink_to(best)
    assert average(r1, "--last", "2", "-o", link, "--force").exit_code == 0
    assert best.read_bytes() == b"r2's best" and not link.is_symlink()
    mine = tmp_path / "mine" / "checkpoints"  # a folder of that name outside a run is the user's
    mine.mkdir(parents=True)
    assert average(r1, "--last", "2", "-o", mine / "avg.pt").exit_code == 0
    torch.testing.assert_close(read_checkpoint(mine / "avg.pt")["params"], torch.full((8,), 12.5))


def test_force_never_replaces_a_named_pipe_or_a_device(tmp_path: Path):
    """`--force` made a named pipe, and /dev/null or /dev/full as root, a regular file of the checkpoint. (A
    pipe only: a test that failed so would replace the machine's /dev/null.)"""
    run = make_run(tmp_path / "run")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line(average(run, "--last", "2", "-o", fifo, "--force"), "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_a_kept_save_that_a_run_deletes_meanwhile_is_listed_again(tmp_path: Path, monkeypatch):
    """A run still training keeps update-20.pt and deletes update-10.pt (--keep-last 2) between the listing and
    its reading: the saves are listed again, and the average is of update-15.pt and update-20.pt (it failed,
    "not a readable checkpoint (No such file or directory)")."""
    from async_nmt.model import checkpoint

    run = make_run(tmp_path / "run")  # (kept saves of updates 5, 10 and 15)
    read = checkpoint.read_checkpoint

    def training_meanwhile(path: Path, *args, **kwargs):
        if not kept_path(run, 20).exists():
            save_kept(run, 20, torch.full((8,), 20.0))
            kept_path(run, 10).unlink()
        return read(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "read_checkpoint", training_meanwhile)
    result = average(run, "--last", "2", "-o", tmp_path / "avg.pt")
    assert result.exit_code == 0, result.output
    assert torch.equal(read(tmp_path / "avg.pt")["params"], torch.full((8,), 17.5))
    assert "averaged update-15.pt, update-20.pt" in result.stderr


def test_output_folders_are_one_line_and_none_is_made(tmp_path: Path):
    run = make_run(tmp_path / "run")
    afile = tmp_path / "afile"
    afile.write_text("text")
    one_line(average(run, "-o", afile / "x.pt", "--last", "2"), f"{afile} is a file, not a folder")
    one_line(average(run, "-o", afile / "sub" / "x.pt", "--last", "2"), f"{afile} is a file, not a folder")
    missing = tmp_path / "new" / "dir"
    one_line(average(run, "-o", missing / "x.pt", "--last", "2"), f"no folder {missing}; make it first")
    assert not (tmp_path / "new").exists()
    one_line(average(run, "-o", tmp_path, "--last", "2"), "is a folder, not an output file")


def test_dash_is_no_output_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`-o -` is stdout for nmt translate; for a checkpoint it is refused, not a file named - made here."""
    run = make_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    one_line(average(run, "-o", "-", "--last", "2"), "-o -")
    assert not (tmp_path / "-").exists()


def test_an_output_whose_name_is_not_utf8_is_written(tmp_path: Path):
    """The temporary file beside the output is named after it, measured in bytes: a name that is not UTF-8
    (avg\\xff.pt, as a Latin-1 file system makes) has no str encoding, and was a UnicodeEncodeError, a traceback
    (`nmt translate -o` and `nmt average -o` alike)."""
    from async_nmt.config import temporary_beside

    for updates in (5, 10):
        save_kept(tmp_path, updates, torch.full((8,), float(updates)))
    out = tmp_path / os.fsdecode(b"avg\xff.pt")
    result = CliRunner().invoke(main, ["average", str(tmp_path), "--last", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert torch.equal(read_checkpoint(out)["params"], torch.full((8,), 7.5))
    assert sorted(os.listdir(tmp_path)) == sorted(["checkpoints", out.name])  # (no temporary file left)
    assert temporary_beside(out).name == os.fsdecode(b".avg\xff.pt." + str(os.getpid()).encode() + b".tmp")


def test_the_checkpoints_folder_given_as_run_hints_at_the_run(tmp_path: Path):
    run = make_run(tmp_path / "run")
    one_line(average(run / "checkpoints", "-o", tmp_path / "x.pt"), f"averaging needs the run folder that holds "
             f"checkpoints/ ({run}?)")  # fmt: skip
    assert not (tmp_path / "x.pt").exists()


def test_force_never_replaces_a_runs_own_files(tmp_path: Path):
    run = make_run(tmp_path / "run")
    (run / "events.jsonl").write_text("{}\n")
    for name in ("config.json", "events.jsonl"):
        before = (run / name).read_bytes()
        one_line(average(run, "--last", "2", "-o", run / name, "--force"), f"a file of the run {run}")
        assert (run / name).read_bytes() == before
    assert average(run, "--last", "2", "-o", run / "avg.pt").exit_code == 0  # beside them is fine


def test_force_never_replaces_a_raw_corpus_file(tmp_path: Path):
    """`nmt average --force -o raw/test.en` replaced the test set's reference with a zip archive, where `nmt
    translate -o` refuses it (the README says neither command replaces a corpus's files)."""
    run = make_run(tmp_path / "run")
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train.de", "train.en", "test.de", "test.en"):
        (raw / name).write_text("a line\n")
    one_line(average(run, "--last", "2", "-o", raw / "test.en", "--force"), f"a file of the raw corpus {raw}")
    assert (raw / "test.en").read_text() == "a line\n"
    (tmp_path / "notes.en").write_text("mine\n")  # (a file of that name elsewhere is the user's to replace)
    assert average(run, "--last", "2", "-o", tmp_path / "notes.en", "--force").exit_code == 0


def test_saves_of_one_model_average_whether_or_not_they_name_its_embeddings_dropout(tmp_path: Path):
    """A run resumed with `--embed-dropout` at the value it followed (the dropout's) saves it by name, where
    its earlier saves left it None: the same model, averaged; another value is another model."""
    first, second = save_kept(tmp_path, 5, torch.zeros(8)), save_kept(tmp_path, 10, torch.ones(8))
    for path, embed in ((first, None), (second, 0.1)):
        state = read_checkpoint(path)
        state["model_config"] = {"d_model": 8, "dropout": 0.1, "embed_dropout": embed}
        save_checkpoint({k: v for k, v in state.items() if k not in ("format", "params_crc32")}, path)
    torch.testing.assert_close(average_checkpoints([first, second])["params"], torch.full((8,), 0.5))
    state["model_config"]["embed_dropout"] = 0.2
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "params_crc32")}, second)
    with pytest.raises(UserError, match="another model config"):
        average_checkpoints([first, second])


def test_checkpoints_of_another_size_are_one_line(tmp_path: Path):
    save_kept(tmp_path, 5, torch.zeros(8))
    other = save_kept(tmp_path, 10, torch.zeros(10))
    with pytest.raises(UserError, match=f"{other}: 10 parameters, .* 8; cannot average them"):
        average_checkpoints(last_kept(tmp_path, 2))


def test_a_failed_or_interrupted_write_leaves_nothing_and_no_users_file_is_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """torch's writer raises RuntimeError on a full disk (not OSError): one line naming the output, exit 1,
    no temporary file left; Ctrl-C likewise leaves none. A file of the user's named OUTPUT.tmp is untouched."""
    run = make_run(tmp_path / "run")
    out = tmp_path / "avg.pt"
    mine = tmp_path / "avg.pt.tmp"
    mine.write_text("my notes")
    real_save = torch.save

    def save_then_fail(error: BaseException):
        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            raise error

        return save

    monkeypatch.setattr(torch, "save", save_then_fail(RuntimeError("[enforce fail at inline_container.cc:672] . "
                                                                   "unexpected pos 405376 vs 405270")))  # fmt: skip
    result = average(run, "--last", "2", "-o", out)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"error: {out}: cannot write the checkpoint" in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt.tmp", "run"] and mine.read_text() == "my notes"
    # a disk with less room than the parameters is full, said so (not as torch's C++ line, "unexpected pos")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=20))
    result = average(run, "--last", "2", "-o", out)
    assert result.exit_code == 1 and result.stderr == f"error: {out}: cannot write the checkpoint (the disk is full: " \
        "20 bytes free, fewer than the parameters' 32)\n", result.stderr  # fmt: skip
    monkeypatch.setattr(torch, "save", save_then_fail(KeyboardInterrupt()))
    result = average(run, "--last", "2", "-o", out)
    assert result.exit_code != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg.pt.tmp", "run"]
    monkeypatch.setattr(torch, "save", real_save)
    assert average(run, "--last", "2", "-o", out).exit_code == 0 and mine.read_text() == "my notes"


def test_averaging_zero_checkpoints_is_refused_not_all_of_them(tmp_path: Path):
    """`--last 0` is one line; `kept[-0:]` would have averaged every kept checkpoint without a word."""
    for updates in (5, 10):
        save_kept(tmp_path, updates, torch.zeros(8))
    with pytest.raises(UserError, match="--last 0: the number of checkpoints to average must be at least 1"):
        last_kept(tmp_path, 0)
    assert [p.name for p in last_kept(tmp_path, 1)] == ["update-10.pt"]


def test_averaging_refuses_another_corpus_and_the_average_keeps_its_inputs_corpus(tmp_path: Path):
    """Checkpoints of the same model trained on another corpus (another vocabulary of the same size) have
    parameters that mean other pieces: their mean is refused. The average records its inputs' corpus, as
    the checkpoints do (what it was trained on)."""
    save_kept(tmp_path, 5, torch.zeros(8))
    save_kept(tmp_path, 10, torch.ones(8))
    averaged = average_checkpoints(last_kept(tmp_path, 2))
    assert averaged["corpus"] == {"vocab_hash": "v"}
    torch.testing.assert_close(averaged["params"], torch.full((8,), 0.5))
    other = kept_path(tmp_path, 15)
    save_checkpoint({"model_config": {"d_model": 8}, "train_config": {}, "corpus": {"vocab_hash": "w"},
                     "vocab_model": b"spm", "params": torch.ones(8)}, other)  # fmt: skip
    with pytest.raises(UserError, match=f"{other}: another corpus than .*update-10.pt; cannot average them"):
        average_checkpoints(last_kept(tmp_path, 2))


def test_a_run_folder_gives_its_best_checkpoint_before_its_last(tmp_path: Path):
    """Without --checkpoint, a run that has validated translates with best.pt, not with last.pt (the run's
    latest save, which may be worse); last.pt only where there is no best.pt."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.pt").write_bytes(b"last")
    assert find_checkpoint(tmp_path) == folder / "last.pt"
    (folder / "best.pt").write_bytes(b"best")
    assert find_checkpoint(tmp_path) == folder / "best.pt"
    assert find_checkpoint(tmp_path, "last") == folder / "last.pt"


def test_a_run_folder_whose_name_ends_in_pt_is_a_run_folder(tmp_path: Path):
    """`nmt-train BIN runs/base.pt` trains such a run, and `nmt average` averages it, but `nmt translate
    runs/base.pt` (the command its summary prints) said "a folder, not a checkpoint": only a folder named
    .pt that is no run, as RUN/checkpoints/last.pt made a folder, is that."""
    run = tmp_path / "base.pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"last")
    assert find_checkpoint(run) == run / "checkpoints" / "last.pt"
    assert find_checkpoint(run, "last") == run / "checkpoints" / "last.pt"
    folder = run / "checkpoints" / "best.pt"
    folder.mkdir()
    with pytest.raises(UserError, match=f"{folder}: a folder, not a checkpoint"):
        find_checkpoint(folder)


def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path):
    """A dict with every key translation reads, but of another format version (a later async-nmt's) or of
    none (another program's), is refused in one line, not read as this version's."""
    state = {"model_config": {"d_model": 8}, "vocab_model": b"spm", "params": torch.zeros(8)}
    for name, extra in (("later.pt", {"format": 2}), ("none.pt", {})):
        torch.save({**state, **extra}, tmp_path / name)
        with pytest.raises(UserError, match=f"{name}: not an async-nmt checkpoint \\(format 1\\)"):
            read_checkpoint(tmp_path / name)
    torch.save({**state, "format": 1}, tmp_path / "ours.pt")
    assert torch.equal(read_checkpoint(tmp_path / "ours.pt")["params"], torch.zeros(8))


def test_a_failed_checkpoint_write_names_the_checkpoint_not_its_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A full disk while a checkpoint is written is an OSError that names the checkpoint (the CLI's one
    line says which file), with the system's reason, and leaves no temporary file."""

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as failed:
        save_kept(tmp_path, 5, torch.zeros(8))
    assert failed.value.filename == str(kept_path(tmp_path, 5)) and failed.value.errno == errno.ENOSPC
    assert os.strerror(errno.ENOSPC) in failed.value.strerror
    assert list((tmp_path / "checkpoints").iterdir()) == []  # neither the checkpoint nor its temporary file


def test_a_link_to_nowhere_as_the_output_is_replaced_only_with_force(tmp_path: Path):
    """An output path that is a symbolic link, even one to a file that does not exist, is the user's: it
    is replaced only with --force."""
    run = make_run(tmp_path / "run")
    link = tmp_path / "avg.pt"
    link.symlink_to(tmp_path / "nowhere.pt")
    one_line(average(run, "--last", "2", "-o", link), "exists; use --force to replace it")
    assert link.is_symlink() and not (tmp_path / "nowhere.pt").exists()
    assert average(run, "--last", "2", "-o", link, "--force").exit_code == 0
    assert not link.is_symlink() and not (tmp_path / "nowhere.pt").exists()
    torch.testing.assert_close(read_checkpoint(link)["params"], torch.full((8,), 12.5))


def test_load_model_gives_the_saved_weights_in_eval_mode_and_refuses_a_vector_of_another_length(tmp_path: Path):
    """`load_model` (inference) gives the checkpoint's parameters in a model in eval mode (no dropout), and a
    parameter vector longer than its model_config's model is refused in one line, not loaded as its prefix."""
    from dataclasses import asdict

    from async_nmt.config import ModelConfig
    from async_nmt.data.vocab import load_vocab, train_vocab
    from async_nmt.model.checkpoint import load_model
    from async_nmt.model.transformer import Transformer

    (tmp_path / "text").write_text("ab ba\nab\ncab\n", encoding="utf-8")
    sp = load_vocab(train_vocab([tmp_path / "text"], tmp_path / "spm", 12))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=sp.get_piece_size(), d_model=8, heads=2, enc_layers=1, dec_layers=1, ff_dim=16)
    params = torch.cat([p.detach().reshape(-1) for p in Transformer(cfg).parameters()])
    state = {"model_config": asdict(cfg), "vocab_model": sp.serialized_model_proto(), "params": params}
    save_checkpoint(state, tmp_path / "model.pt")
    model, vocab = load_model(tmp_path / "model.pt")
    assert not model.training and vocab.get_piece_size() == sp.get_piece_size()
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), params)
    save_checkpoint({**state, "params": torch.cat([params, torch.zeros(1)])}, tmp_path / "longer.pt")
    with pytest.raises(UserError, match="longer.pt: parameter count does not match its model configuration"):
        load_model(tmp_path / "longer.pt")


def test_a_checkpoint_whose_path_is_not_utf8_translates(tmp_path: Path):
    """torch maps a file by its name as a UTF-8 str: a run folder whose name is not UTF-8 (run\\xff) gave "not a
    readable checkpoint ('utf-8' codec can't encode character ...)" of a whole checkpoint; it is read whole."""
    from dataclasses import asdict

    from async_nmt.config import ModelConfig
    from async_nmt.data.vocab import load_vocab, train_vocab
    from async_nmt.model.checkpoint import load_model
    from async_nmt.model.transformer import Transformer

    (tmp_path / "text").write_text("ab ba\nab\ncab\n", encoding="utf-8")
    sp = load_vocab(train_vocab([tmp_path / "text"], tmp_path / "spm", 12))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=sp.get_piece_size(), d_model=8, heads=2, enc_layers=1, dec_layers=1, ff_dim=16)
    params = torch.cat([p.detach().reshape(-1) for p in Transformer(cfg).parameters()])
    run = tmp_path / os.fsdecode(b"run\xff")
    save_checkpoint({"model_config": asdict(cfg), "vocab_model": sp.serialized_model_proto(), "params": params},
                    run / "checkpoints" / "last.pt")  # fmt: skip
    model, _ = load_model(run)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), params)
    (tmp_path / "in").write_text("ab\n\ncab\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["translate", str(run), "-i", str(tmp_path / "in"), "--beam", "2"])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.output


def test_a_lost_best_is_one_apart_from_last_pt():
    """A run that validated has lost its best save where best.pt is gone, unless last.pt is that save (a run
    killed between writing last.pt and copying it to best.pt): `nmt translate RUN` then takes last.pt."""
    from async_nmt.model.checkpoint import lost_best

    assert lost_best({"updates": 300, "bleu": 90.0}, 301)
    assert not lost_best({"updates": 300, "bleu": 90.0}, 300)
    assert not lost_best(None, 7)  # stopped before its first validation
