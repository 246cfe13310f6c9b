"""Vocabulary and binarization: round trip, filtering, layout, loading API, safe overwriting."""

from __future__ import annotations

import codecs
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SRC_WORDS, toy_translate, write_synthetic_corpus

from async_nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from async_nmt.data.binarize import (
    TokenArray,
    _languages,
    length_warning,
    load_manifest,
    load_split,
    preprocess,
    read_lines,
)
from async_nmt.data.vocab import load_vocab, train_vocab, vocab_hash, vocab_matches
from async_nmt.errors import UserError


def raw_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --------------------------------------------------------------------------- vocab
def test_vocab_ids_and_hash(synthetic_raw: Path, tmp_path: Path) -> None:
    model = train_vocab([synthetic_raw / "train.src", synthetic_raw / "train.tgt"], tmp_path / "spm", 100)
    assert model == tmp_path / "spm.model" and (tmp_path / "spm.vocab").is_file()
    sp = load_vocab(model)
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
    # the hash is of the vocabulary, not of the file, which records the paths sentencepiece read and wrote
    (tmp_path / "again").mkdir()
    again = train_vocab([synthetic_raw / "train.src", synthetic_raw / "train.tgt"], tmp_path / "again" / "spm", 100)
    assert again.read_bytes() != model.read_bytes()
    assert vocab_hash(again) == vocab_hash(model)
    other = train_vocab([synthetic_raw / "train.src", synthetic_raw / "train.tgt"], tmp_path / "other", 90)
    assert vocab_hash(other) != vocab_hash(model)
    # a corpus preprocessed before recorded the hash of the file; it still matches, and only its own file
    file_hash = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    assert vocab_matches(sp, model, file_hash) and vocab_matches(sp, model, vocab_hash(model))
    assert vocab_hash(sp) == vocab_hash(model)  # the same from the loaded vocabulary
    assert not vocab_matches(load_vocab(again), again, file_hash)


def test_vocab_tiny_corpus_soft_limit(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("ab ba\nab\n", encoding="utf-8")
    sp = load_vocab(train_vocab([tmp_path / "a"], tmp_path / "m", 5000))
    assert 4 < sp.get_piece_size() < 5000


def test_a_vocabulary_of_fewer_than_8_pieces_is_refused_before_training(tmp_path: Path) -> None:
    """--vocab-size 7 is one line naming the least size, 8, before sentencepiece starts; 8 trains."""
    (tmp_path / "a").write_text("ab ba\nab\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"--vocab-size 7 is too small: it needs at least 8 pieces, and one for each"):
        train_vocab([tmp_path / "a"], tmp_path / "m7", 7)
    assert not (tmp_path / "m7.model").exists()
    assert 4 < load_vocab(train_vocab([tmp_path / "a"], tmp_path / "m8", 8)).get_piece_size() <= 8


def test_a_vocabulary_of_over_2_to_the_30_pieces_is_refused_before_training(tmp_path: Path, monkeypatch) -> None:
    """--vocab-size 2000000000 (a typo's zeros): sentencepiece's unigram trainer never ended (above 2^31 / 1.1
    it loops), and 3000000000 was its "cannot parse as int"; now one line before it starts."""
    from async_nmt.data import vocab

    def started(*args, **kwargs):
        raise AssertionError("sentencepiece's trainer started")

    monkeypatch.setattr(vocab, "_train_in_child", started)
    (tmp_path / "a").write_text("ab ba\nab\n", encoding="utf-8")
    for size in (2**30 + 1, 2_000_000_000, 3_000_000_000):
        with pytest.raises(UserError, match=rf"--vocab-size {size} is too large: at most 1,073,741,824 \(2\^30\)"):
            train_vocab([tmp_path / "a"], tmp_path / "m", size)
    with pytest.raises(AssertionError, match="started"):  # (2^30 trains: a few seconds on this text, not run here)
        train_vocab([tmp_path / "a"], tmp_path / "m", 2**30)


def test_an_empty_training_text_is_said_in_our_words(tmp_path: Path) -> None:
    """sentencepiece's failed check on a text without sentences is one line that says so."""
    (tmp_path / "empty").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match=r"could not train a unigram vocabulary of 100: the training text has no "
                       r"sentences$"):  # fmt: skip
        train_vocab([tmp_path / "empty"], tmp_path / "m", 100)


def test_the_vocabulary_hash_is_its_documented_digest_of_pieces_scores_and_kinds(tmp_path: Path) -> None:
    """Corpora and checkpoints record `vocab_hash`, and a resume compares it: it stays what it is
    documented to be, the first 16 hex digits of a sha256 over each piece's text, score (repr) and four
    kind flags (control, unknown, unused, byte), in id order, so a run resumes on a corpus made before."""
    (tmp_path / "a").write_text("ab ba\nab\ncab\n", encoding="utf-8")
    sp = load_vocab(train_vocab([tmp_path / "a"], tmp_path / "m", 12))
    lines = []
    for i in range(sp.get_piece_size()):
        flags = (sp.is_control(i), sp.is_unknown(i), sp.is_unused(i), sp.is_byte(i))
        lines.append(f"{sp.id_to_piece(i)}\t{sp.get_score(i)!r}\t{''.join(str(int(f)) for f in flags)}\n")
    assert lines[UNK_ID].endswith("\t0100\n") and lines[PAD_ID].endswith("\t1000\n")
    assert vocab_hash(sp) == hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize(("normalization", "folds"), [("nmt_nfkc", True), ("identity", False)])
def test_the_normalization_decides_whether_full_width_characters_come_back(
    tmp_path: Path, normalization: str, folds: bool
) -> None:
    """sentencepiece's default (NFKC) turned a Chinese corpus's '，' and '？' into ',' and '?' in every
    translation; --normalization identity keeps the corpus's own characters."""
    import unicodedata

    text = "我们，你们？ＡＢ"
    (tmp_path / "a").write_text((text + "\n") * 50 + "他们。\n" * 50, encoding="utf-8")
    sp = load_vocab(train_vocab([tmp_path / "a"], tmp_path / "m", 40, normalization=normalization))
    expected = unicodedata.normalize("NFKC", text) if folds else text  # folded: 我们,你们?AB
    assert sp.decode(sp.encode(text)) == expected
    with pytest.raises(UserError, match="--normalization nfd: not one of nmt_nfkc"):
        train_vocab([tmp_path / "a"], tmp_path / "m", 40, normalization="nfd")


def test_load_vocab_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such"):
        load_vocab(tmp_path / "none.model")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not a sentencepiece model"):
        load_vocab(tmp_path / "bad.model")


# --------------------------------------------------------------------------- languages
@pytest.mark.parametrize(
    ("suffixes", "expected"),
    [
        (("src", "tgt"), ("src", "tgt")),
        (("de", "en"), ("de", "en")),
        (("en", "ro"), ("ro", "en")),
        (("ro", "de"), ("de", "ro")),
        (("EN", "FR"), ("FR", "EN")),  # (upper case: EN was the source, by the order of the names)
        (("tgt", "SRC"), ("SRC", "tgt")),
        (("ZH", "de"), ("de", "ZH")),  # (alphabetically in any case: ZH, sorted before de, was the source)
        (("en_US", "fr"), ("fr", "en_US")),  # (with a region English is English too: it was the source)
        (("en-GB", "zh"), ("zh", "en-GB")),
        (("en_GB", "en_US"), ("en_GB", "en_US")),  # (two Englishes: by the alphabet)
    ],
)
def test_language_rule(tmp_path: Path, suffixes: tuple[str, str], expected: tuple[str, str]) -> None:
    for s in suffixes:
        (tmp_path / f"train.{s}").write_text("x\n")
    assert _languages(tmp_path, None, None) == expected
    assert _languages(tmp_path, expected[1], None) == expected[::-1]
    assert _languages(tmp_path, None, expected[0]) == expected[::-1]


def test_language_rule_needs_two_suffixes(tmp_path: Path) -> None:
    for s in ("de", "en", "fr"):
        (tmp_path / f"train.{s}").write_text("x\n")
    with pytest.raises(UserError, match="--src/--tgt"):
        _languages(tmp_path, None, None)
    assert _languages(tmp_path, "fr", "en") == ("fr", "en")


def test_one_language_given_that_has_no_train_file_is_named_as_missing(tmp_path: Path) -> None:
    """It said it could not tell the other language of 'xx' from de and en (user test)."""
    for s in ("de", "en"):
        (tmp_path / f"train.{s}").write_text("x\n")
    for given in (("xx", None), (None, "xx")):
        with pytest.raises(UserError, match=r"train\.xx: no such file \(train\.\* here: de, en\)"):
            _languages(tmp_path, *given)


# --------------------------------------------------------------------------- round trip
def test_round_trip_and_manifest(synthetic_raw: Path, synthetic_bin: Path) -> None:
    manifest = load_manifest(synthetic_bin)
    sp = load_vocab(synthetic_bin / "spm.model")
    assert (manifest["src"], manifest["tgt"]) == ("src", "tgt")
    assert manifest["vocab_size"] == sp.get_piece_size()
    assert manifest["vocab_hash"] == vocab_hash(synthetic_bin / "spm.model")
    assert manifest["options"]["vocab_size"] == 200
    assert set(manifest["splits"]) == {"train", "valid", "test"}
    for split in ("train", "valid", "test"):
        data = load_split(synthetic_bin, split)
        stats = manifest["splits"][split]
        for side, lang in (("src", "src"), ("tgt", "tgt")):
            arr: TokenArray = getattr(data, side)
            lines = raw_lines(synthetic_raw / f"{split}.{lang}")
            assert len(arr) == len(lines) == stats["sentences"]
            assert stats[f"{side}_tokens"] == len(arr.ids) == int(arr.lengths.sum())
            assert arr.offsets[0] == 0 and arr.offsets[-1] == len(arr.ids)
            assert arr.lengths.dtype == np.int32 and arr.ids.dtype == np.int32
            assert np.array_equal(arr.lengths, np.diff(arr.offsets))
            decoded = sp.decode([arr[i].tolist() for i in range(len(arr))])
            assert decoded == [" ".join(x.split()) for x in lines]
            assert BOS_ID not in arr.ids and EOS_ID not in arr.ids
            assert np.array_equal(arr[-1], arr[len(arr) - 1])
        assert stats["dropped"] == 0
    assert read_lines(synthetic_bin, "valid", "src") == raw_lines(synthetic_raw / "valid.src")
    assert read_lines(synthetic_bin, "test", "tgt") == raw_lines(synthetic_raw / "test.tgt")
    assert not list(synthetic_bin.glob("train.src")) and (synthetic_bin / "valid.tgt").is_file()


def test_filtering_train_only(tmp_path: Path) -> None:
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=300, n_valid=20, n_test=0)
    for f in raw.glob("test.*"):
        f.unlink()
    long_src = " ".join(["ba"] * 60)
    bad = [("", "DABx"), (long_src, long_src.upper()), ("ba", " ".join(["DABx"] * 12))]
    for split in ("train", "valid"):
        with (
            open(raw / f"{split}.src", "a", encoding="utf-8") as fs,
            open(raw / f"{split}.tgt", "a", encoding="utf-8") as ft,
        ):
            fs.writelines(s + "\n" for s, _ in bad)
            ft.writelines(t + "\n" for _, t in bad)
    manifest = preprocess(raw, tmp_path / "bin", vocab_size=120, max_len=40, max_ratio=3.0)
    assert set(manifest["splits"]) == {"train", "valid"}
    sp = load_vocab(tmp_path / "bin" / "spm.model")

    src, tgt = raw_lines(raw / "train.src"), raw_lines(raw / "train.tgt")
    s_len, t_len = (list(map(len, sp.encode(x))) for x in (src, tgt))
    keep = [
        i
        for i, (a, b) in enumerate(zip(s_len, t_len, strict=True))
        if a and b and a <= 40 and b <= 40 and max(a, b) <= 3.0 * max(1, min(a, b))
    ]
    assert set(range(300, 303)).isdisjoint(keep)  # the three bad pairs are gone
    train = load_split(tmp_path / "bin", "train")
    stats = manifest["splits"]["train"]
    assert stats["sentences"] == len(train) == len(keep) and stats["dropped"] == 303 - len(keep)
    by_rule = stats["dropped_for"]  # the bad pairs: one of each rule (and the corpus's own, by ratio)
    assert by_rule["empty"] == 1 and by_rule["max_len"] == 1 and by_rule["max_ratio"] == stats["dropped"] - 2 >= 1
    assert sp.decode([train.src[j].tolist() for j in range(len(train))]) == [src[i] for i in keep]
    assert sp.decode([train.tgt[j].tolist() for j in range(len(train))]) == [tgt[i] for i in keep]

    valid = load_split(tmp_path / "bin", "valid")
    assert len(valid) == 23 and manifest["splits"]["valid"]["dropped"] == 0
    assert len(valid.src[20]) == 0 and valid.tgt.lengths[21] == 40 and valid.src.lengths.max() <= 40
    assert len(read_lines(tmp_path / "bin", "valid", "src")) == 23


def test_long_training_sides_are_counted_in_the_manifest(tmp_path: Path) -> None:
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=300, n_valid=20, n_test=0)
    for f in raw.glob("test.*"):
        f.unlink()
    rng = random.Random(1)
    # 300 words are over 255 tokens whatever the vocabulary (every word starts a piece of its own)
    long = [" ".join(rng.choice(SRC_WORDS) for _ in range(n)) for n in (300, 400, 300, 150)]
    with open(raw / "train.src", "a", encoding="utf-8") as fs, open(raw / "train.tgt", "a", encoding="utf-8") as ft:
        fs.writelines(s + "\n" for s in long)
        ft.writelines(toy_translate(s) + "\n" for s in long)
    manifest = preprocess(raw, tmp_path / "bin", vocab_size=100, max_len=1000)

    sp = load_vocab(tmp_path / "bin" / "spm.model")
    s_len, t_len = (list(map(len, sp.encode(raw_lines(raw / f"train.{x}")))) for x in ("src", "tgt"))
    kept = [(a, b) for a, b in zip(s_len, t_len, strict=True) if max(a, b) <= 3.0 * min(a, b)]
    assert len(kept) == 304 and min(s_len[300:303] + t_len[300:303]) > 255  # nothing dropped
    expected = {
        "limit": 255,
        "count": sum((a > 255) + (b > 255) for a, b in kept),
        "pairs": sum(max(a, b) > 255 for a, b in kept),
        "longest": max(max(a, b) for a, b in kept),
    }
    assert manifest["train_long_sides"] == expected and expected["count"] >= 6
    assert load_manifest(tmp_path / "bin")["train_long_sides"] == expected
    train = load_split(tmp_path / "bin", "train")
    assert max(train.src.lengths.max(), train.tgt.lengths.max()) == expected["longest"]

    pairs = expected["pairs"]
    assert length_warning(manifest, 256) == (
        f"warning: {pairs} training pairs have a side longer than the model's 255 tokens (up to "
        f"{expected['longest']}); such sides are truncated (preprocess with --max-len 255 to drop them)"
    )
    assert length_warning(manifest, expected["longest"] + 1) is None  # a model with positions enough
    assert f"sides up to {expected['longest']} tokens, longer than the model's 127 tokens;" in length_warning(
        manifest, 128
    )


def test_length_warning_only_when_a_side_is_longer_than_the_model(synthetic_bin: Path) -> None:
    manifest = load_manifest(synthetic_bin)  # --max-len 250: every side fits 256 positions
    assert manifest["train_long_sides"]["count"] == 0 and manifest["train_long_sides"]["pairs"] == 0
    assert length_warning(manifest, 256) is None
    longest = manifest["train_long_sides"]["longest"]
    assert 3 < longest < 250
    assert f"sides up to {longest} tokens, longer than the model's 3 tokens;" in length_warning(manifest, 4)

    # --max-len above the model's positions, but no side is actually longer: no warning
    high = {**manifest, "options": {**manifest["options"], "max_len": 1000}}
    assert length_warning(high, 256) is None
    one = {**high, "train_long_sides": {"limit": 255, "count": 2, "pairs": 1, "longest": 300}}
    assert length_warning(one, 256).startswith("warning: 1 training pair has a side longer than the model's 255")

    # a manifest from before train_long_sides: only its --max-len tells
    old = {k: v for k, v in manifest.items() if k != "train_long_sides"}
    assert length_warning(old, 256) is None
    old_high = {**old, "options": {**old["options"], "max_len": 1000}}
    warning = length_warning(old_high, 256)
    assert warning.startswith("warning: the corpus was preprocessed with --max-len 1000") and "\n" not in warning
    assert "--max-len 255 to drop them" in warning


def test_crlf_and_no_final_newline(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.de").write_bytes(b"ein haus\r\nzwei h\xc3\xa4user")
    (raw / "train.en").write_bytes(b"a house\r\ntwo houses\n")
    preprocess(raw, tmp_path / "bin", vocab_size=40)
    data, sp = load_split(tmp_path / "bin", "train"), load_vocab(tmp_path / "bin" / "spm.model")
    assert sp.decode(data.src[1].tolist()) == "zwei häuser" and sp.decode(data.tgt[0].tolist()) == "a house"


@pytest.mark.parametrize("normalization", ["identity", "nfkc"])
def test_windows_line_ends_and_a_byte_order_mark_make_no_other_vocabulary(
    synthetic_raw: Path, tmp_path: Path, normalization: str
) -> None:
    """sentencepiece's trainer kept them: `\r` and `\ufeff` became pieces, and the text after `dos2unix` gave
    another vocabulary, on which a run would not resume."""
    windows = tmp_path / "windows"
    shutil.copytree(synthetic_raw, windows)
    for name in ("train.src", "train.tgt"):
        text = (windows / name).read_bytes().replace(b"\n", b"\r\n")
        (windows / name).write_bytes(codecs.BOM_UTF8 + text if name == "train.src" else text)
    plain = preprocess(synthetic_raw, tmp_path / "plain", vocab_size=90, normalization=normalization)
    other = preprocess(windows, tmp_path / "other", vocab_size=90, normalization=normalization)
    assert other["vocab_hash"] == plain["vocab_hash"]
    pieces = {load_vocab(tmp_path / "other" / "spm.model").id_to_piece(i) for i in range(other["vocab_size"])}
    assert not any("\r" in piece or "\ufeff" in piece for piece in pieces)
    for side in ("src", "tgt"):
        assert np.array_equal(np.load(tmp_path / "other" / f"train.{side}.ids.npy"),
                              np.load(tmp_path / "plain" / f"train.{side}.ids.npy"))  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == sorted(
        p.name for p in (tmp_path / "plain").iterdir()
    )
    last = tmp_path / "last"  # a return alone at the very end, no newline after it: stripped as well
    shutil.copytree(synthetic_raw, last)
    (last / "train.tgt").write_bytes((last / "train.tgt").read_bytes().rstrip(b"\n") + b"\r")
    assert preprocess(last, tmp_path / "last-bin", vocab_size=90, normalization=normalization)["vocab_hash"] == (
        plain["vocab_hash"])  # fmt: skip


# --------------------------------------------------------------------------- overwriting
def test_force_replaces_only_at_the_end(synthetic_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "bin"
    first = preprocess(synthetic_raw, out, vocab_size=90)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="--force"):
        preprocess(synthetic_raw, out, vocab_size=100)
    bad = write_synthetic_corpus(tmp_path / "bad", n_train=50, n_valid=5, n_test=5)
    (bad / "valid.tgt").write_text("one line only\n")
    with pytest.raises(UserError, match="misaligned"):
        preprocess(bad, out, vocab_size=100, force=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in out.iterdir()) == before and load_manifest(out) == first
    manifest = preprocess(synthetic_raw, out, vocab_size=100, force=True)
    assert load_manifest(out) == manifest != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "bin"]


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_preprocess_did_not_write_is_never_replaced(synthetic_raw: Path, tmp_path: Path, force: bool):
    """--force replaces a corpus folder, never another corpus's raw text or a folder of notes."""
    out = write_synthetic_corpus(tmp_path / "other-raw", n_train=20, n_valid=5, n_test=5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="is not a preprocessed corpus"):
        preprocess(synthetic_raw, out, vocab_size=100, force=force)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_vocabulary_learns_from_lines_longer_than_sentencepieces_limit(tmp_path: Path) -> None:
    """sentencepiece leaves lines over 4,192 bytes out of training without a word; preprocess raises its
    limit, so the long lines' characters and words are in the vocabulary, not unknown."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(6)) for _ in range(30)]
    for side in ("src", "tgt"):
        long = [" ".join(rng.choice(words) for _ in range(700)) for _ in range(8)]  # about 4,900 bytes each
        short = [" ".join(rng.choice("klmnop") for _ in range(5)) for _ in range(3)]
        (raw / f"train.{side}").write_text("\n".join(long + short) + "\n")
        (raw / f"valid.{side}").write_text("\n".join(short) + "\n")
    preprocess(raw, tmp_path / "bin", vocab_size=60, max_len=2000)
    sp = load_vocab(tmp_path / "bin" / "spm.model")
    assert sp.get_piece_size() == 60
    assert all(UNK_ID not in sp.encode(word) for word in words)


def test_empty_bin_dir_is_fine(tmp_path: Path) -> None:
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    (tmp_path / "bin").mkdir()
    preprocess(raw, tmp_path / "bin", vocab_size=60)
    assert json.loads((tmp_path / "bin" / "manifest.json").read_text())["splits"]["test"]["sentences"] == 5


# --------------------------------------------------------------------------- loading errors
def test_a_corpus_goes_where_bin_points_and_with_the_umasks_mode(synthetic_raw: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """BIN a symbolic link (to scratch storage) became a real folder beside it, the target left empty (or stale,
    with --force) and a hidden link left over; BIN `.` failed with a traceback after all the work; a new BIN
    was 0700 whatever the umask (a shared corpus unreadable to the user's group)."""
    import os
    import stat

    scratch, link = tmp_path / "scratch", tmp_path / "link"
    scratch.mkdir()
    scratch.chmod(0o2750)  # a folder the user made: its mode and setgid bit stay
    link.symlink_to(scratch)
    preprocess(synthetic_raw, link, vocab_size=200)
    assert link.is_symlink() and (scratch / "manifest.json").is_file()
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o2750
    first = (scratch / "manifest.json").stat().st_mtime_ns
    preprocess(synthetic_raw, link, vocab_size=150, force=True)  # replaced where it lies, the link kept
    assert link.is_symlink() and json.loads((scratch / "manifest.json").read_text())["options"]["vocab_size"] == 150
    assert (scratch / "manifest.json").stat().st_mtime_ns != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "scratch"]  # no hidden leftovers
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o2750
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    preprocess(synthetic_raw, Path("."), vocab_size=200)
    assert (here / "manifest.json").is_file() and Path.cwd() == here and os.listdir(".") != []
    with pytest.raises(UserError, match="the current folder .*which --force would replace under this shell"):
        preprocess(synthetic_raw, Path("."), vocab_size=200, force=True)
    old = os.umask(0o022)
    try:
        preprocess(synthetic_raw, tmp_path / "new", vocab_size=200)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755


def test_an_empty_bin_is_written_from_within_and_a_shells_lost_folder_is_no_error(
    synthetic_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty BIN that is a mount point failed at the end, after all the work: the files were made beside it,
    on the parent's file system ("Invalid cross-device link"); now in it. `--force` from a shell whose folder
    was deleted failed with "No such file or directory", nothing named; a new BIN under a setgid folder lost
    the bit that mkdir gives."""
    import os
    import stat
    import tempfile

    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(Path(kwargs["dir"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    empty = tmp_path / "empty"
    empty.mkdir()
    preprocess(synthetic_raw, empty, vocab_size=200)
    assert made == [empty] and (empty / "manifest.json").is_file()
    assert not [p for p in empty.iterdir() if p.name.startswith(".")]  # its temporary folder is gone
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    preprocess(synthetic_raw, empty, vocab_size=150, force=True)
    assert made[-1] == tmp_path  # (a corpus is replaced from beside it)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    preprocess(synthetic_raw, shared / "bin", vocab_size=200)
    assert os.stat(shared / "bin").st_mode & stat.S_ISGID


def test_a_corpus_replaced_with_force_keeps_its_folders_group(synthetic_raw: Path, tmp_path: Path) -> None:
    """A shared corpus (group `g`, mode 2770) preprocessed again with --force kept its mode, setgid bit too,
    but took the user's own group: unreadable to `g`, and the setgid bit then handed on the wrong group."""
    import os
    import stat

    bin_dir = tmp_path / "bin"
    preprocess(synthetic_raw, bin_dir, vocab_size=200)
    others = [g for g in ({0, 1} if os.geteuid() == 0 else set(os.getgroups())) if g != bin_dir.stat().st_gid]
    if not others:
        pytest.skip("the user is in no other group to give the folder")
    os.chown(bin_dir, -1, others[0])
    bin_dir.chmod(0o2770)
    preprocess(synthetic_raw, bin_dir, vocab_size=150, force=True)
    assert json.loads((bin_dir / "manifest.json").read_text())["options"]["vocab_size"] == 150
    assert bin_dir.stat().st_gid == others[0] and stat.S_IMODE(bin_dir.stat().st_mode) == 0o2770
    assert {p.stat().st_gid for p in bin_dir.iterdir()} == {others[0]}  # its files too, for the group to read


def test_loading_errors(synthetic_bin: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothing: no such folder .*nmt preprocess"):
        load_manifest(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no manifest\.json.*nmt preprocess"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(UserError, match=r"manifest\.json: unreadable .*nmt preprocess"):  # there, but corrupt
        load_split(tmp_path, "train")
    manifest = json.loads((synthetic_bin / "manifest.json").read_text())
    del manifest["vocab_size"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"manifest\.json: not a valid manifest \(lacks vocab_size\)"):
        load_manifest(tmp_path)
    with pytest.raises(UserError, match="no dev split"):
        load_split(synthetic_bin, "dev")
    with pytest.raises(UserError, match="missing"):
        TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy")
    np.save(tmp_path / "x.ids.npy", np.arange(5, dtype=np.int32))
    np.save(tmp_path / "x.offsets.npy", np.array([0, 2, 4], dtype=np.int64))
    with pytest.raises(UserError, match="does not match"):
        TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy")
    (tmp_path / "x.offsets.npy").write_bytes(b"not an array")
    with pytest.raises(UserError, match=r"x\.offsets\.npy: unreadable token array"):  # the file that is broken
        TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy")
    (tmp_path / "x.offsets.npy").write_bytes(b"")  # (numpy's EOFError, which the CLI took for Ctrl-C)
    with pytest.raises(UserError, match=r"x\.offsets\.npy: unreadable token array"):
        TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy")


@pytest.mark.parametrize(
    "splits, problem",
    [
        ([], "its splits are not an object"),
        ({"train": 5}, "split train is not an object"),
        ({"train": {"sentences": 3, "tgt_tokens": 9}}, "split train's src_tokens is not a count"),
        ({"train": {"sentences": 3, "src_tokens": "9", "tgt_tokens": 9}}, "split train's src_tokens is not a count"),
    ],
)
def test_a_manifest_whose_splits_lack_their_counts_is_one_line(synthetic_bin: Path, tmp_path: Path, splits, problem):
    """Training read them after it had begun the run folder: a KeyError's traceback, and a folder of spm.model
    alone that even --force then refused as not a run folder."""
    manifest = json.loads((synthetic_bin / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "splits": splits}))
    with pytest.raises(UserError, match=rf"manifest\.json: not a valid manifest \({problem}\); run `nmt preprocess"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    "ids, offsets, message",
    [
        ([0, 1, 7, 2], [0, 2, 4], r"x\.ids\.npy: ids 0 to 7, outside the vocabulary's 0 to 6 \(another corpus"),
        ([0, -1, 3, 2], [0, 2, 4], r"x\.ids\.npy: ids -1 to 3, outside"),
        ([0, 1, 3, 2], [0, 3, 1, 4], r"x\.offsets\.npy: offsets that go down \(sentence 1\)"),
        ([0, 1, 3, 2], [1, 2, 4], r"x\.offsets\.npy: does not match x\.ids\.npy"),
        (np.array([0.0, 1.0]), [0, 2], r"x\.ids\.npy: not a token array \(a 1-D array of float64\)"),
        ([[0, 1], [2, 3]], [0, 4], r"x\.ids\.npy: not a token array \(a 2-D array of int"),
    ],
    ids=["id past the vocabulary", "negative id", "offsets going down", "offsets from 1", "float ids", "2-D ids"],
)
def test_token_arrays_are_checked_as_read(tmp_path: Path, ids, offsets, message) -> None:
    """Ids of another corpus's vocabulary, or offsets that go down, failed mid-epoch with a traceback from the
    embedding or the collation (after `--force` had cleared the old run); float ids were taken."""
    np.save(tmp_path / "x.ids.npy", np.asarray(ids))
    np.save(tmp_path / "x.offsets.npy", np.asarray(offsets, dtype=np.int64))
    with pytest.raises(UserError, match=message):
        TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy", vocab_size=7)
    np.save(tmp_path / "x.ids.npy", np.array([0, 1, 6, 2], dtype=np.int32))  # the same files, whole
    np.save(tmp_path / "x.offsets.npy", np.array([0, 2, 2, 4], dtype=np.int64))
    assert TokenArray(tmp_path / "x.ids.npy", tmp_path / "x.offsets.npy", vocab_size=7).lengths.tolist() == [2, 0, 2]


def test_a_ctrl_c_as_the_vocabulary_process_starts_stops_it(monkeypatch):
    """A Ctrl-C between the trainer process's fork and Popen's return left that process training, its
    parent gone (a blocked signal mask in the main thread held nothing: numpy's thread took the signal)."""
    import os
    import signal
    import subprocess
    import time

    from async_nmt import errors
    from async_nmt.data import vocab

    started, real = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGINT)  # as Popen returns
        time.sleep(0.05)
        return started[-1]

    monkeypatch.setattr(vocab.subprocess, "Popen", popen)
    monkeypatch.setattr(errors, "_LAST_NOTICE", [-float("inf")])
    with pytest.raises(KeyboardInterrupt):
        vocab._train_in_child({})
    assert started and started[0].poll() is not None  # stopped and reaped


def test_many_dropped_training_pairs_are_a_warning_that_says_why() -> None:
    """45% of a corpus went, said only as a count in the summary line."""
    from async_nmt.data.binarize import dropped_warning

    train = {"sentences": 3311, "dropped": 2689, "dropped_for": {"empty": 0, "max_len": 0, "max_ratio": 2689}}
    assert dropped_warning(train, 250, 3.0) == (
        "warning: 2,689 of 6,000 training pairs (44.8%) were dropped: 2,689 with a side over --max-ratio 3 times "
        "the other's pieces; check that the corpus's lines are aligned, or raise the limit"
    )
    empty = {"sentences": 90, "dropped": 10, "dropped_for": {"empty": 10, "max_len": 0, "max_ratio": 0}}
    assert dropped_warning(empty, 250, 3.0).endswith(
        "(10.0%) were dropped: 10 with a side empty; check that the corpus's lines are aligned"
    )  # (no limit to raise)
    few = {"sentences": 29062, "dropped": 4, "dropped_for": {"empty": 4, "max_len": 0, "max_ratio": 0}}
    assert dropped_warning(few, 250, 3.0) is None


def test_pairs_exactly_at_max_len_and_max_ratio_are_kept(tmp_path: Path) -> None:
    """--max-len and --max-ratio are the largest length and ratio kept (a pair is dropped only above them):
    with both set to a length and a ratio that training pairs have exactly, those pairs stay."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=300, n_valid=5, n_test=0)
    for f in raw.glob("test.*"):
        f.unlink()
    with open(raw / "train.src", "a", encoding="utf-8") as fs, open(raw / "train.tgt", "a", encoding="utf-8") as ft:
        fs.write("ba\n" + " ".join(["ba"] * 9) + "\n")  # two pairs whose target is far longer than the source
        ft.write(" ".join(["ABx"] * 6) + "\n" + " ".join(["ABx"] * 12) + "\n")
    first = preprocess(raw, tmp_path / "all", vocab_size=100, max_len=1000, max_ratio=100.0)
    sp = load_vocab(tmp_path / "all" / "spm.model")
    s_len, t_len = (list(map(len, sp.encode(raw_lines(raw / f"train.{x}")))) for x in ("src", "tgt"))
    pairs = [(max(a, b), min(a, b)) for a, b in zip(s_len, t_len, strict=True)]
    longest, ratio = max(long for long, _ in pairs), max(long / short for long, short in pairs)
    assert ratio == int(ratio) > 3  # (a whole ratio: no rounding at the edge)
    manifest = preprocess(raw, tmp_path / "bin", vocab_size=100, max_len=longest, max_ratio=ratio)
    assert manifest["vocab_hash"] == first["vocab_hash"]  # the same pieces, so the same lengths
    assert manifest["splits"]["train"]["sentences"] == len(pairs) == len(load_split(tmp_path / "bin", "train"))
    assert manifest["splits"]["train"]["dropped"] == 0


def test_a_training_pair_with_one_long_side_counts_as_a_long_pair(tmp_path: Path) -> None:
    """`train_long_sides.pairs` counts the pairs with a side over 255 tokens, either side: a pair whose
    source alone is long is one of them (and one side of `count`)."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=200, n_valid=5, n_test=0)
    for f in raw.glob("test.*"):
        f.unlink()
    long = " ".join(["ba", "de"] * 150)  # 300 words: over 255 tokens whatever the vocabulary
    with open(raw / "train.src", "a", encoding="utf-8") as fs, open(raw / "train.tgt", "a", encoding="utf-8") as ft:
        fs.write(long + "\n")
        ft.write(" ".join(toy_translate(long).split()[:150]) + "\n")  # under 255 tokens: 150 words of 1-2 pieces
    manifest = preprocess(raw, tmp_path / "bin", vocab_size=100, max_len=1000)
    sp = load_vocab(tmp_path / "bin" / "spm.model")
    s_len, t_len = (list(map(len, sp.encode(raw_lines(raw / f"train.{x}")))) for x in ("src", "tgt"))
    assert s_len[-1] > 255 >= t_len[-1]
    assert (manifest["train_long_sides"]["pairs"], manifest["train_long_sides"]["count"]) == (1, 1)


def test_a_split_with_one_side_missing_is_refused_not_skipped(tmp_path: Path) -> None:
    """RAW/valid.src without its valid.tgt (a misnamed file) is an error naming the missing file: skipped,
    the corpus had no valid split, which `nmt train` needs, or left the test split out unnoticed."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    (raw / "valid.tgt").rename(raw / "valid.en")
    with pytest.raises(UserError, match=r"valid\.tgt: no such file"):
        preprocess(raw, tmp_path / "bin", vocab_size=60, src="src", tgt="tgt")
    assert not (tmp_path / "bin").exists()


def test_a_split_whose_sides_differ_in_sentences_or_counts_below_0_is_refused(synthetic_bin: Path, tmp_path: Path):
    """A BIN whose valid target arrays hold one sentence fewer than its source (arrays of another
    prepress), or a manifest with a negative count, is refused as it loads: training would pair sentences
    that are not each other's translation, or count from nonsense."""
    import shutil

    bin_dir = tmp_path / "bin"
    shutil.copytree(synthetic_bin, bin_dir)
    offsets = np.load(bin_dir / "valid.tgt.offsets.npy")
    ids = np.load(bin_dir / "valid.tgt.ids.npy")
    np.save(bin_dir / "valid.tgt.offsets.npy", offsets[:-1])
    np.save(bin_dir / "valid.tgt.ids.npy", ids[: offsets[-2]])
    n = len(offsets) - 1
    with pytest.raises(UserError, match=f"valid has {n} source but {n - 1} target sentences"):
        load_split(bin_dir, "valid")
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    manifest["splits"]["train"]["tgt_tokens"] = -1
    (bin_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"not a valid manifest \(split train's tgt_tokens is not a count\)"):
        load_manifest(bin_dir)


def test_no_length_warning_where_the_corpus_was_cut_to_what_the_model_fits(synthetic_bin: Path) -> None:
    """A corpus preprocessed with --max-len 255, the very advice of the warning, fits the presets' 256
    positions: no warning, also for a manifest from before `train_long_sides`; 254 fits 255 positions."""
    manifest = load_manifest(synthetic_bin)
    old = {k: v for k, v in manifest.items() if k != "train_long_sides"}
    assert length_warning({**old, "options": {**old["options"], "max_len": 255}}, 256) is None
    assert length_warning({**old, "options": {**old["options"], "max_len": 255}}, 255) is not None
    assert length_warning({**old, "options": {**old["options"], "max_len": 254}}, 255) is None


def test_a_share_of_dropped_pairs_of_exactly_5_percent_is_no_warning() -> None:
    """The warning is for more than 5% of the training pairs dropped; 5 of 100 is not, 6 of 100 is."""
    from async_nmt.data.binarize import dropped_warning

    rules = {"empty": 0, "max_len": 0}
    assert dropped_warning({"sentences": 95, "dropped": 5, "dropped_for": {**rules, "max_ratio": 5}}, 250, 3.0) is None
    assert "(6.0%) were dropped" in dropped_warning(
        {"sentences": 94, "dropped": 6, "dropped_for": {**rules, "max_ratio": 6}}, 250, 3.0
    )


def test_force_never_replaces_a_corpus_holding_raw_training_text(synthetic_raw: Path, tmp_path: Path) -> None:
    """preprocess writes no train.LANG into BIN (only valid and test keep their text): a train.src found
    there is the user's (their raw corpus copied in), which --force would delete, so it is refused."""
    import shutil

    out = tmp_path / "bin"
    preprocess(write_synthetic_corpus(tmp_path / "small", n_train=30, n_valid=5, n_test=5), out, vocab_size=60)
    shutil.copy(synthetic_raw / "train.src", out / "train.src")
    before = (out / "train.src").read_bytes()
    with pytest.raises(UserError, match=r"holds what preprocess did not write \(train\.src\)"):
        preprocess(synthetic_raw, out, vocab_size=100, force=True)
    assert (out / "train.src").read_bytes() == before
