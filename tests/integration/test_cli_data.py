"""`nmt corpus` and `nmt preprocess` from the command line: every bad input is one line and exit code 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import command, toy_translate, write_synthetic_corpus

from async_nmt.cli import main


def nmt(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_synthetic_corpus(tmp_path / "raw", n_train=200, n_valid=20, n_test=20)


def test_preprocess_ok(raw: Path, tmp_path: Path) -> None:
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "preprocessed src->tgt" in result.stderr
    assert (tmp_path / "bin" / "manifest.json").is_file()


def test_a_byte_order_mark_is_neither_text_nor_reference(raw: Path, tmp_path: Path) -> None:
    """Files saved with a UTF-8 byte order mark give the corpus that the same files without one give: the
    same ids, and references that score 100 against the clean text."""
    marked = tmp_path / "marked"
    marked.mkdir()
    for path in raw.iterdir():
        (marked / path.name).write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert nmt("preprocess", raw, tmp_path / "plain", "--vocab-size", "100").exit_code == 0
    assert nmt("preprocess", marked, tmp_path / "bin", "--vocab-size", "100").exit_code == 0
    for name in ("test.tgt", "valid.src", "test.tgt.ids.npy", "valid.src.offsets.npy", "test.src.ids.npy"):
        assert (tmp_path / "bin" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_preprocess_warns_of_sides_longer_than_the_presets_positions(raw: Path, tmp_path: Path) -> None:
    result = nmt("preprocess", raw, tmp_path / "plain", "--vocab-size", "100", "--max-len", "1000")
    assert result.exit_code == 0 and "warning" not in result.stderr
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["train_long_sides"]["pairs"] == 0

    long = " ".join(["ba", "de", "gi"] * 100)  # 300 words: over 255 tokens on both sides
    with open(raw / "train.src", "a", encoding="utf-8") as fs, open(raw / "train.tgt", "a", encoding="utf-8") as ft:
        fs.write(long + "\n")
        ft.write(toy_translate(long) + "\n")
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100", "--max-len", "1000")
    assert result.exit_code == 0, result.output
    warning = result.stderr.strip().splitlines()[-1]
    assert warning.startswith("warning: 1 training pair has a side longer than 255 tokens (up to ")
    assert warning.endswith("truncate them (--max-len 255 drops them)")
    manifest = json.loads((tmp_path / "bin" / "manifest.json").read_text())
    assert manifest["train_long_sides"]["count"] == 2 and manifest["train_long_sides"]["pairs"] == 1

    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100", "--max-len", "255", "--force")
    assert result.exit_code == 0 and "warning" not in result.stderr and "tokens, 1 dropped)" in result.stderr


def test_preprocess_says_how_many_valid_and_test_pairs_it_cuts_to_max_len(raw: Path, tmp_path: Path) -> None:
    """Valid and test keep every pair, their ids cut to --max-len: without a word, and the valid loss scored
    the cut pairs."""
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100", "--max-len", "4")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "bin" / "manifest.json").read_text())
    lengths = np.diff(np.load(tmp_path / "bin" / "valid.src.offsets.npy"))
    assert lengths.max() == 4 and 0 < manifest["splits"]["valid"]["cut"] <= 20
    for split in ("valid", "test"):
        cut = manifest["splits"][split]["cut"]
        assert f"warning: {split}: {cut:,} of 20 pairs have a side over --max-len 4 pieces" in result.stderr
    # (the test split's warning spoke of the valid loss, which never reads it)
    assert "the valid loss scores" not in result.stderr.split("warning: test:")[1]
    assert "their text is kept whole, and `nmt translate` reads that" in result.stderr
    result = nmt("preprocess", raw, tmp_path / "whole", "--vocab-size", "100")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


def test_preprocess_without_options_preprocesses_with_the_librarys_defaults(tmp_path: Path, monkeypatch) -> None:
    """`nmt preprocess RAW BIN` binarizes as `preprocess(RAW, BIN)` does: a vocabulary of 8000 (README), unigram,
    --max-len 250, --max-ratio 3.0, nmt_nfkc (README), languages from the file names, no --force."""
    import inspect

    from async_nmt.data import binarize

    defaults = {name: p.default for name, p in inspect.signature(binarize.preprocess).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name != "progress"}  # fmt: skip
    assert defaults["vocab_size"] == 8000 and defaults["normalization"] == "nmt_nfkc"
    calls = []
    monkeypatch.setattr(binarize, "preprocess", lambda raw, out, **options: calls.append(options))
    assert nmt("preprocess", tmp_path / "raw", tmp_path / "bin").exit_code == 0
    assert calls == [{**defaults, "progress": True}]


def test_a_failed_preprocess_leaves_no_folder_it_made(raw: Path, tmp_path: Path) -> None:
    """BIN under folders that do not exist, the vocabulary refused: the folders made for it went on, empty
    (a symbolic link's target's too); a folder that was there stays."""
    (tmp_path / "link").symlink_to(tmp_path / "scratch" / "deep" / "bin")
    (tmp_path / "there").mkdir()
    for bin_dir in (tmp_path / "new" / "deep" / "bin", tmp_path / "link", tmp_path / "there" / "bin"):
        assert_one_line_error(nmt("preprocess", raw, bin_dir, "--vocab-size", "8"), "it needs at least")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "raw", "there"]
    assert list((tmp_path / "there").iterdir()) == []
    result = nmt("preprocess", raw, tmp_path / "link", "--vocab-size", "100")  # (and the link takes it now)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scratch" / "deep" / "bin" / "manifest.json").is_file()


@pytest.mark.parametrize("failure", ["numpy's short write", "a write that names no file"])
def test_a_full_disk_names_the_corpus_folder_and_why(raw: Path, tmp_path: Path, monkeypatch, failure: str) -> None:
    """A full disk as the arrays are written: numpy's OSError names no file and no reason (it said `error:
    127426 requested and 13280 written`), and a text file's write names no file (`error: No space left on
    device`); now `error: BIN: cannot write the corpus (...)`, exit code 1, and nothing left behind."""
    import errno

    from async_nmt.data import binarize

    save = binarize.np.save

    def full(path, array, *args, **kwargs):
        if Path(path).name == "train.tgt.ids.npy":
            if failure == "a write that names no file":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise OSError(f"{array.size} requested and 13280 written")  # (numpy's, errno and file None)
        return save(path, array, *args, **kwargs)

    monkeypatch.setattr(binarize.np, "save", full)
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    why = "No space left on device)" if failure == "a write that names no file" else "written; is the disk full?)"
    assert result.stderr.startswith(f"error: {tmp_path / 'bin'}: cannot write the corpus (")
    assert result.stderr.strip().endswith(why) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_missing_raw_dir(tmp_path: Path) -> None:
    assert_one_line_error(nmt("preprocess", tmp_path / "nope", tmp_path / "bin"), "nope: no such folder")
    assert not (tmp_path / "bin").exists()


def test_missing_train_file(raw: Path, tmp_path: Path) -> None:
    (raw / "train.tgt").unlink()
    line = assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), "--src/--tgt")
    assert "not taken for a language" not in line
    (raw / "train.tgt.gz").write_bytes(b"")  # (named only in the message: it is no language suffix)
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), "found ['src'] (not taken for a language: "
                          "train.tgt.gz); pass --src/--tgt")  # fmt: skip
    (raw / "train.tgt.gz").unlink()
    result = nmt("preprocess", raw, tmp_path / "bin", "--src", "src", "--tgt", "tgt")
    assert_one_line_error(result, f"{raw / 'train.tgt'}: no such file")


def test_raw_files_that_are_no_train_lang_are_named_for_what_they_are(raw: Path, tmp_path: Path) -> None:
    """`train.tok.de` files, a preprocessed corpus given as RAW, and a named pipe `train.tgt` were each said to
    be "found no train.*" or only `train.tgt.txt` "not taken for a language"."""
    import os

    tok = tmp_path / "tok"
    tok.mkdir()
    for name in ("train.tok.de", "train.tok.en"):
        (tok / name).write_text("a\n")
    assert_one_line_error(nmt("preprocess", tok, tmp_path / "bin"), "found none: its files are train.tok.de, "
                          "train.tok.en")  # fmt: skip
    assert nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "60").exit_code == 0
    assert_one_line_error(nmt("preprocess", tmp_path / "bin", tmp_path / "bin2"), "a preprocessed corpus (it has "
                          "manifest.json); RAW is a folder of plain text files")  # fmt: skip
    (raw / "train.tgt").unlink()
    os.mkfifo(raw / "train.tgt")
    (raw / "train.tgt.txt").write_text("a\n")
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin3"), "found ['src'] (not taken for a language: "
                          "train.tgt.txt; not regular files: train.tgt); pass --src/--tgt")  # fmt: skip


@pytest.mark.parametrize("option", ["--src", "--tgt"])
@pytest.mark.parametrize("value", ["a/b", " ", ""])
def test_a_language_that_is_no_file_name_suffix_is_refused(raw: Path, tmp_path: Path, option: str, value: str) -> None:
    """`--src a/b` with a folder train.a holding b failed with "…/.bin.tmp-…/train.a/b.ids.npy: No such file"."""
    (raw / "train.a").mkdir()
    shutil.copy(raw / "train.src", raw / "train.a" / "b")
    other = "--tgt" if option == "--src" else "--src"
    result = nmt("preprocess", raw, tmp_path / "bin", option, value, other, "tgt" if option == "--src" else "src")
    assert_one_line_error(result, f"{option} {value!r}: not a language suffix of RAW's file names (train.SUFFIX)")
    assert not (tmp_path / "bin").exists()


def test_missing_partner_of_valid(raw: Path, tmp_path: Path) -> None:
    (raw / "valid.src").unlink()
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), f"{raw / 'valid.src'}: no such file")


def test_a_raw_file_or_folder_that_is_not_one_is_named_so(raw: Path, tmp_path: Path) -> None:
    """A link to /dev/null (or a named pipe) in RAW, and a file given as RAW, were each "no such" file or folder."""
    (raw / "valid.src").unlink()
    (raw / "valid.src").symlink_to("/dev/null")
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), f"{raw / 'valid.src'}: not a regular file")
    assert_one_line_error(nmt("preprocess", raw / "train.src", tmp_path / "bin"), "train.src: not a folder")


def test_empty_file(raw: Path, tmp_path: Path) -> None:
    (raw / "test.tgt").write_bytes(b"")
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), f"{raw / 'test.tgt'}: empty file")


def test_an_infinite_max_ratio_is_refused(raw: Path, tmp_path: Path) -> None:
    """manifest.json held Infinity, which JSON has not."""
    said = "--max-ratio must be a finite number (got inf); one above --max-len keeps every pair"
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin", "--max-ratio", "inf"), said)
    assert not (tmp_path / "bin").exists()


def test_a_side_of_blank_lines_is_named(raw: Path, tmp_path: Path) -> None:
    """It was "train.src: no training pairs left after filtering (--max-len ..., --max-ratio ...)", naming the
    good side and options that cannot help, after the vocabulary was trained."""
    lines = (raw / "train.tgt").read_text(encoding="utf-8").splitlines()
    (raw / "train.tgt").write_text("\ufeff" + "".join(" \t\n" for _ in lines), encoding="utf-8")
    assert_one_line_error(
        nmt("preprocess", raw, tmp_path / "bin"), f"{raw / 'train.tgt'}: all {len(lines)} lines are blank"
    )


def test_lines_ended_by_a_carriage_return_alone_are_refused(raw: Path, tmp_path: Path) -> None:
    """Old Mac line ends made a valid split of one sentence (truncated), without a word."""
    for side in ("src", "tgt"):
        path = raw / f"valid.{side}"
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), f"{raw / 'valid.src'}: 1 line(s) but",
                          "tr '\\r' '\\n'")  # fmt: skip
    for side in ("src", "tgt"):  # Windows line ends (and a stray \r inside a line) are fine
        path = raw / f"valid.{side}"
        path.write_bytes(path.read_bytes().replace(b"\r", b"\r\n").replace(b" ", b" \r ", 1))
    assert nmt("preprocess", raw, tmp_path / "bin").exit_code == 0


def test_non_utf8_line(raw: Path, tmp_path: Path) -> None:
    lines = (raw / "train.src").read_bytes().split(b"\n")
    lines[4] = b"caf\xe9 " + lines[4]
    (raw / "train.src").write_bytes(b"\n".join(lines))
    line = assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), "train.src: line 5 is not valid UTF-8")
    assert "at byte 4)" in line  # counted from 1, as `cut -b` counts ("caf" is bytes 1-3)


def test_force_keeps_a_corpus_that_holds_files_of_the_users(raw: Path, tmp_path: Path) -> None:
    """`--force` deleted a hypothesis file and a folder of evaluations the user kept in BIN, without a word
    (and, told apart by a pattern of names, test.hyp and train.log still)."""
    bin_dir = tmp_path / "bin"
    assert nmt("preprocess", raw, bin_dir, "--vocab-size", "100").exit_code == 0
    mine = ("evals", "test.hyp", "test.hyp.tgt", "train.log")
    (bin_dir / "evals").mkdir()
    for name in mine[1:]:
        (bin_dir / name).write_text("mine\n")
    assert_one_line_error(nmt("preprocess", raw, bin_dir, "--vocab-size", "100", "--force"),
                          f"{bin_dir}: holds what preprocess did not write (evals, test.hyp, test.hyp.tgt, "
                          "train.log), which --force would delete; move it out")  # fmt: skip
    assert all((bin_dir / name).exists() for name in mine) and (bin_dir / "manifest.json").is_file()
    for name in mine[1:]:
        (bin_dir / name).unlink()
    (bin_dir / "evals").rmdir()
    assert nmt("preprocess", raw, bin_dir, "--vocab-size", "100", "--force").exit_code == 0  # its own files only
    dotted = tmp_path / "dotted"  # languages with a dot in their names: still its own files
    dotted.mkdir()
    for path in raw.iterdir():
        split, lang = path.name.split(".", 1)
        shutil.copyfile(path, dotted / f"{split}.{lang}.tok")
    for _ in range(2):
        result = nmt("preprocess", dotted, tmp_path / "bin2", "--src", "src.tok", "--tgt", "tgt.tok", "--vocab-size",
                     "100", "--force")  # fmt: skip
        assert result.exit_code == 0, result.output


def test_a_utf16_file_is_named_so(raw: Path, tmp_path: Path) -> None:
    text = (raw / "valid.tgt").read_text(encoding="utf-8")
    (raw / "valid.tgt").write_bytes(text.encode("utf-16"))  # (with its byte order mark, as editors write it)
    line = assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin"), "valid.tgt: line 1 is not valid UTF-8")
    assert line.endswith("; it is UTF-16: convert it (iconv -f UTF-16 -t UTF-8)")


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", ["ascii", "umlauts"])
def test_a_utf16_file_without_a_byte_order_mark_is_named_so(raw: Path, tmp_path: Path, encoding: str, text: str):
    """UTF-16 without a byte order mark (a file cut from one, or written so): ASCII text in it is valid UTF-8,
    a NUL byte beside each character, and was preprocessed into a corpus of NUL pieces (a vocabulary of single
    characters, half its pairs dropped as too long, with a warning to check the alignment); other text was
    "not valid UTF-8", without the hint."""
    lines = (raw / "train.tgt").read_text(encoding="utf-8")
    if text == "umlauts":
        lines = "Über " + lines
    (raw / "train.tgt").write_bytes(lines.encode(encoding))
    order = encoding[-2:].upper()
    line = assert_one_line_error(nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100"), "train.tgt: line 1")
    assert line.endswith(f"; it is UTF-16 ({order}) without a byte order mark: convert it (iconv -f UTF-16{order} -t "
                         "UTF-8)"), line  # fmt: skip
    assert not (tmp_path / "bin").exists()


def test_the_same_file_on_both_sides_is_warned_of(raw: Path, tmp_path: Path) -> None:
    """A link made by mistake (train.en -> train.de) trained a copying model without a word."""
    (raw / "train.tgt").unlink()
    (raw / "train.tgt").symlink_to(raw / "train.src")
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100")
    assert result.exit_code == 0, result.output
    assert f"warning: {raw / 'train.src'} and {raw / 'train.tgt'} are the same file: the model learns to copy" in (
        result.stderr.splitlines()
    )


def test_misaligned(raw: Path, tmp_path: Path) -> None:
    lines = (raw / "train.tgt").read_text(encoding="utf-8").splitlines()
    (raw / "train.tgt").write_text("".join(x + "\n" for x in lines[:-3]), encoding="utf-8")
    assert_one_line_error(
        nmt("preprocess", raw, tmp_path / "bin"),
        "misaligned",
        f"{raw / 'train.src'} has 200 lines",
        f"{raw / 'train.tgt'} has 197",
        "line 198 of",
    )


@pytest.mark.parametrize("force", [False, True], ids=["a new BIN", "--force"])
def test_what_appears_in_bin_while_preprocess_runs_is_kept(raw: Path, tmp_path: Path, monkeypatch, force: bool):
    """BIN was checked only as preprocess began: a folder that appeared there meanwhile (a user's; another
    preprocess's, two started together without --force) was deleted at the end without a word."""
    from async_nmt.data import binarize

    bin_dir = tmp_path / "bin"
    if force:
        assert nmt("preprocess", raw, bin_dir, "--vocab-size", "100").exit_code == 0
    encode = binarize._encode_split

    def meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "notes.txt").write_text("precious")
        return encode(*args, **kwargs)

    monkeypatch.setattr(binarize, "_encode_split", meanwhile)
    said = "holds what preprocess did not write (notes.txt)" if force else "appeared meanwhile (another preprocess?)"
    assert_one_line_error(nmt("preprocess", raw, bin_dir, "--vocab-size", "100", *["--force"] * force), said)
    assert (bin_dir / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "raw"]  # (no temporary folder left)


def test_existing_bin_without_force(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "bin"
    out.mkdir()
    (out / "model.txt").write_text("precious")
    assert_one_line_error(nmt("preprocess", raw, out), "is not a preprocessed corpus")
    assert [p.name for p in out.iterdir()] == ["model.txt"] and (out / "model.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "raw"]


def test_corpus_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNC_NMT_CACHE", str(tmp_path / "cache"))
    assert_one_line_error(nmt("corpus", "get", "bible-xx-en", tmp_path / "out"), "unknown corpus", "bible-de-en")
    assert_one_line_error(
        nmt("corpus", "get", "wmt14-en-de", tmp_path / "out"), "needs internet", "recipes/wmt14-en-de.sh"
    )
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test.en").write_text("mine\n")
    assert_one_line_error(nmt("corpus", "get", "bible-de-en", tmp_path / "out"), "test.en already exists", "--force")
    assert not (tmp_path / "cache").exists()  # refused before any download


def test_corpus_list() -> None:
    result = nmt("corpus", "list")
    assert result.exit_code == 0 and "bible-de-en" in result.stdout and "wmt16-en-ro" in result.stdout


def test_real_entry_point(tmp_path: Path) -> None:
    exe = command("nmt")
    if not exe.exists():
        pytest.skip("the nmt entry point is not installed")
    proc = subprocess.run(
        [exe, "preprocess", str(tmp_path / "none"), str(tmp_path / "bin")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_preprocess_without_a_valid_split_warns_that_train_needs_one(raw: Path, tmp_path: Path) -> None:
    for path in raw.glob("valid.*"):
        path.unlink()
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "60")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "needs a valid split" in result.stderr and "is there" not in result.stderr
    (raw / "dev.src").write_text("ba\n")  # a WMT name for it: named in the warning (it said nothing of it)
    (raw / "dev.tgt").write_text("AB\n")
    result = nmt("preprocess", raw, tmp_path / "bin2", "--vocab-size", "60")
    assert "needs a valid split (dev.src/dev.tgt is there, which preprocess does not read: name it " \
           "valid.src/valid.tgt)" in result.stderr, result.stderr  # fmt: skip


def _trainer_children(pid: int) -> list[int]:
    """The processes that `pid` started to train a vocabulary, from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"SentencePieceTrainer" in command:
            children.append(int(stat.parent.name))
    return children


def write_long_training_corpus(raw: Path) -> None:
    """A corpus whose vocabulary takes sentencepiece about 2 s to train on a 2-core machine."""
    import random

    raw.mkdir()
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnpqrstvwxz" for b in "aeiouy"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(40000)]
    for side in ("src", "tgt"):
        lines = (" ".join(rng.choices(words, k=12)) for _ in range(60000))
        (raw / f"train.{side}").write_text("\n".join(lines) + "\n")
        (raw / f"valid.{side}").write_text("ba\n")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_vocabulary_training_at_once_and_leaves_nothing(tmp_path: Path, signal_name: str):
    """sentencepiece trains in C++ for minutes on a large corpus, where Ctrl-C reached the command only
    when it returned. It trains in a child process, which the command stops: it ends at once, with
    `interrupted`, no BIN, no temporary folder and no sentencepiece process left behind."""
    import os
    import signal
    import time

    raw = tmp_path / "raw"
    write_long_training_corpus(raw)
    proc = subprocess.Popen([sys.executable, "-m", "async_nmt.cli", "preprocess", str(raw), str(tmp_path / "bin"),
                             "--vocab-size", "8000"], stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (children := _trainer_children(proc.pid)):  # the trainer's process
            assert proc.poll() is None and time.monotonic() < deadline, "no child process trained the vocabulary"
            time.sleep(0.02)
        os.killpg(proc.pid, getattr(signal, signal_name))  # as a terminal's Ctrl-C reaches the whole group
        start = time.monotonic()
        assert proc.wait(timeout=30) == 130
        assert time.monotonic() - start < 5
        assert proc.stderr.read().decode().strip().splitlines()[-1] == "interrupted"
    finally:
        proc.kill()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert not any(Path(f"/proc/{child}").exists() for child in children)  # stopped and reaped


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_the_vocabulary_trainer_does_not_outlive_a_killed_preprocess(tmp_path: Path):
    """kill -9 (the OOM killer, a scheduler's hard kill) of preprocess: its trainer process ends too, instead of
    training on for nobody."""
    import os
    import signal
    import time

    raw = tmp_path / "raw"
    write_long_training_corpus(raw)
    proc = subprocess.Popen([sys.executable, "-m", "async_nmt.cli", "preprocess", str(raw), str(tmp_path / "bin"),
                             "--vocab-size", "8000"], stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (children := _trainer_children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "no child process trained the vocabulary"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{child}/stat").exists() and b") Z" not in Path(f"/proc/{child}/stat").read_bytes()
                  for child in children):  # fmt: skip
            assert time.monotonic() < deadline, "the trainer went on after preprocess was killed"
            time.sleep(0.05)
    finally:
        proc.kill()


def test_a_temporary_folder_left_by_a_killed_preprocess_is_named_by_the_next(raw: Path, tmp_path: Path):
    """kill -9 of preprocess left `.BIN.tmp-*` beside BIN (its arrays, gigabytes on a large corpus), which no
    later run removed or named. It is not removed (a preprocess into BIN still running has one too): named."""
    left = tmp_path / ".bin.tmp-x1y2z3"
    left.mkdir()
    (left / "train.src.ids.npy").write_bytes(b"partial")
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100")
    assert result.exit_code == 0, result.output
    assert f"warning: {left}: left by an nmt preprocess into {tmp_path / 'bin'} that was killed" in result.stderr
    assert left.is_dir() and (tmp_path / "bin" / "manifest.json").is_file()
    left.joinpath("train.src.ids.npy").unlink()
    left.rmdir()
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", "100", "--force")
    assert result.exit_code == 0 and "left by" not in result.stderr, result.output


def test_a_script_read_from_stdin_can_train_a_vocabulary(tmp_path: Path):
    """The trainer's process is a fresh interpreter: a script piped into python (no file to re-import, as
    multiprocessing's children would) trains as one run from a file."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    files = [str(raw / "train.src"), str(raw / "train.tgt")]
    script = (
        f"from async_nmt.data.vocab import train_vocab\nprint(train_vocab({files!r}, {str(tmp_path / 'm')!r}, 60))\n"
    )
    done = subprocess.run([sys.executable, "-"], input=script.encode(), capture_output=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "m.model").is_file(), done.stderr.decode()


def test_commands_that_print_their_results_refuse_a_closed_stdout(tmp_path: Path) -> None:
    """`nmt score A B >&-` printed into nothing and exited 0: the results were lost without a word."""
    import os

    text = tmp_path / "ref.txt"
    text.write_text("the cat sat on the mat\n", encoding="utf-8")
    nmt = command("nmt")
    for args in (["score", text, text], ["corpus", "list"]):
        done = subprocess.run([str(nmt), *map(str, args)], capture_output=False, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.close(1), timeout=120)  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip() == "error: stdout is closed; the results are printed there (redirect it to a file)"
        if Path("/dev/full").exists():  # and a full disk there is named: it was "error: No space left on device"
            # (stdout buffered, as most users run: Python's flush at exit failed again, exit code 120)
            buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
            with open("/dev/full", "w") as full:
                done = subprocess.run([str(nmt), *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True,
                                      timeout=120, env=buffered)  # fmt: skip
            assert done.returncode == 1
            assert done.stderr.strip() == "error: stdout: cannot write (No space left on device)"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_help_and_version_on_a_full_stdout_are_one_line() -> None:
    """`nmt --help`, `nmt --version` and `nmt-train --help` printed a traceback of 41 lines there, and a
    command's `--help` "error: No space left on device", naming no stdout."""
    import os

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    nmt = command("nmt")
    for args in ([nmt, "--help"], [nmt, "--version"], [nmt, "translate", "--help"], [nmt, "corpus", "--help"],
                 [nmt, "corpus", "list", "--help"], [command("nmt-train"), "-h"]):  # fmt: skip
        with open("/dev/full", "w") as full:
            done = subprocess.run(list(map(str, args)), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                                  env=buffered)  # fmt: skip
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.strip() == "error: stdout: cannot write (No space left on device)", (args, done.stderr)


def test_nmt_train_has_a_version_as_nmt_has() -> None:
    """`nmt-train --version` was "No such option", where `nmt --version` works."""
    from importlib.metadata import version

    nmt_train = command("nmt-train")
    done = subprocess.run([str(nmt_train), "--version"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, f"nmt-train, version {version('async-nmt')}\n"), done.stderr


def test_report_refuses_a_closed_stdout_only_where_its_results_go_there(tmp_path: Path) -> None:
    """`nmt report RUN >&-` is refused as `nmt score` is (its table would be lost); with --out its results are
    the files it writes there, and a closed stdout is no matter."""
    import os

    nmt = command("nmt")
    committed_run = Path(__file__).parents[2] / "docs" / "results" / "demo"
    for extra, code in (([], 2), (["--out", str(tmp_path / "out")], 0)):
        done = subprocess.run([str(nmt), "report", str(committed_run), *extra], stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: os.close(1), timeout=120)  # fmt: skip
        assert done.returncode == code, (extra, done.stderr)
        if code == 2:
            assert (
                done.stderr.strip() == "error: stdout is closed; the results are printed there (redirect it to a file)"
            )
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_report_with_out_names_a_full_stdout(tmp_path: Path) -> None:
    """`nmt report RUN --out DIR > /dev/full` said "error: No space left on device", naming no stdout, where
    `nmt report RUN` names it; the files are written first."""
    import os

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    nmt = command("nmt")
    committed_run = Path(__file__).parents[2] / "docs" / "results" / "demo"
    for extra in ([], ["--json"]):
        with open("/dev/full", "w") as full:
            args = [str(nmt), "report", str(committed_run), "--out", str(tmp_path / "out"), *extra]
            done = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, env=buffered)
        assert done.returncode == 1, (extra, done.stderr)
        assert done.stderr.strip() == "error: stdout: cannot write (No space left on device)", (extra, done.stderr)
    assert (tmp_path / "out" / "report.md").is_file()


def test_a_reader_of_stdout_that_has_gone_ends_a_command_quietly(tmp_path: Path) -> None:
    """`nmt score --help | true`: "error: Broken pipe", exit 1; `nmt --help | true` and `nmt corpus list |
    true` (Click's and rich's answers) exit 1. Now each ends as a reader that stops early always ended
    `translate`: exit 0, nothing on stderr. The pipe's read end is closed before the command starts, so
    that every write to it fails (a live `| true` races the writer)."""
    import os

    text = tmp_path / "ref.txt"
    text.write_text("the cat sat on the mat\n", encoding="utf-8")
    nmt = command("nmt")
    committed_run = Path(__file__).parents[2] / "docs" / "results" / "demo"
    for args in (["--help"], ["--version"], ["score", "--help"], ["score", text, text], ["corpus", "list"],
                 ["report", committed_run]):  # fmt: skip
        read, write = os.pipe()
        os.close(read)
        try:
            done = subprocess.run([str(nmt), *map(str, args)], stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120)  # fmt: skip
        finally:
            os.close(write)
        assert (done.returncode, done.stderr) == (0, ""), args


@pytest.mark.parametrize(
    "name, words, expected",
    [("nmt", "nmt tr", ["train", "translate"]), ("nmt", "nmt score h r --base", ["--baseline"]),
     ("nmt", "nmt translate run --beam 5 --ch", ["--checkpoint", "--chunk-size"]),
     ("nmt-train", "nmt-train --valid-b", ["--valid-beam"])],
)  # fmt: skip
def test_the_shell_completes_commands_and_options(name: str, words: str, expected: list[str]) -> None:
    """README: `eval "$(_NMT_COMPLETE=bash_source nmt)"` in ~/.bashrc completes the commands and options (Click's
    completion, through the group that turns errors into one line), and so does nmt-train's."""
    import os

    variable = f"_{name.upper().replace('-', '_')}_COMPLETE"
    script = subprocess.run([str(command(name))], env={**os.environ, variable: "bash_source"}, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert script.returncode == 0 and f"complete -o nosort -F _{name.replace('-', '_')}_completion" in script.stdout
    asked = {"COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1), variable: "bash_complete"}
    done = subprocess.run([str(command(name))], env={**os.environ, **asked}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [line.split(",", 1)[1] for line in done.stdout.splitlines()] == expected
