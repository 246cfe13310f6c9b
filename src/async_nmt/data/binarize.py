"""Raw parallel text -> token id arrays (flat int32 ids + int64 offsets, .npy, memory-mapped) + manifest.

A preprocessed corpus folder (BIN) holds, for each split and language, `{split}.{lang}.ids.npy` and
`{split}.{lang}.offsets.npy`; the joint sentencepiece model `spm.model`; the raw text of valid and test
(`{split}.{lang}`, BLEU references and translation inputs); and `manifest.json`.

`manifest.json` holds the languages (`src`, `tgt`), `vocab_size` and `vocab_hash`, per-split counts
(`splits`), the preprocess `options`, `raw_dir`, and `train_long_sides`: {"limit": LONG_SIDE (255),
"count": training sides (source and target counted apart) longer than `limit` tokens, "pairs": training
pairs with such a side, "longest": the longest training side in tokens}. A model with P positions fits
P - 1 tokens and eos, so the presets' 256 positions truncate exactly the sides that `count` counts;
`longest` tells any other P whether it truncates anything (see `length_warning`). Manifests written
before this field existed have no `train_long_sides`; they still load.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import click
import numpy as np

from async_nmt.config import (
    MANIFEST,
    SPLITS,
    SPM_PREFIX,
    corpus_files,
    corpus_languages,
    language_code,
    missing_folders,
    remove_empty,
    run_folder_in,
)
from async_nmt.data.vocab import load_vocab, train_vocab, vocab_hash
from async_nmt.errors import (
    UserError,
    briefly,
    check_line_ends,
    check_not_unmarked_utf16,
    lone_returns,
    not_utf8,
    reason,
)
from async_nmt.progress import ProgressBar

CHUNK_LINES = 20_000  # lines encoded per sentencepiece batch
MANIFEST_KEYS = {"src", "tgt", "vocab_size", "vocab_hash", "splits"}  # what training and translation read
SPLIT_KEYS = ("sentences", "src_tokens", "tgt_tokens")  # what training reads of each split's counts
LONG_SIDE = 255  # tokens: the longest side that fits the presets' 256 positions with its eos


def preprocess(
    raw_dir: Path,
    bin_dir: Path,
    *,
    src: str | None = None,
    tgt: str | None = None,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    max_len: int = 250,
    max_ratio: float = 3.0,
    normalization: str = "nmt_nfkc",
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train the joint vocabulary on RAW/train.{SRC,TGT} and binarize every split of RAW into BIN.

    Languages: `src`/`tgt` default to the two suffixes of RAW/train.*. Which one is the source: suffixes
    `src` and `tgt` map to themselves; otherwise the target is English where one side is (`en`, `EN`,
    `en_US`; bible-de-en: de -> en); otherwise the alphabetically first suffix is the source. Pass
    --src/--tgt to choose.

    Training pairs with an empty side, a side longer than `max_len` tokens, or a length ratio above
    `max_ratio` are dropped; valid and test keep every line (so references stay aligned), their ids cut to
    `max_len` (counted in their `cut`, and a warning says so). Training sides longer than LONG_SIDE tokens
    (possible with --max-len above 255) are kept but counted in the manifest's `train_long_sides` (see the
    module docstring), and a warning says so.
    Everything is written into a temporary folder beside BIN that replaces BIN only at the end. Returns the
    manifest.
    """
    raw_dir, bin_dir = Path(raw_dir), Path(bin_dir)
    if not raw_dir.is_dir():
        what = "not a folder" if raw_dir.exists() else "no such folder"
        raise UserError(f"{raw_dir}: {what} (expected raw text files train.SRC, train.TGT, ...)")
    if bin_dir.exists() and not bin_dir.is_dir():
        raise UserError(f"{bin_dir}: exists and is not a folder")
    if bin_dir.resolve() in (raw_dir.resolve(), *raw_dir.resolve().parents):
        raise UserError(f"{bin_dir}: the output folder must not be the raw folder {raw_dir} or hold it")
    _check_replaceable(bin_dir, force)
    existed = bin_dir.exists()
    if max_len < 1 or not max_ratio >= 1:  # (nan is not >= 1)
        raise UserError(f"--max-len must be >= 1 and --max-ratio >= 1 (got {max_len}, {max_ratio})")
    if math.isinf(max_ratio):  # (manifest.json would hold Infinity, which JSON has not)
        raise UserError(f"--max-ratio must be a finite number (got {max_ratio}); one above --max-len keeps every pair")
    src, tgt = _languages(raw_dir, src, tgt)
    _check_ours(bin_dir, force, {src, tgt})
    splits = [s for s in SPLITS if s == "train" or any((raw_dir / f"{s}.{x}").exists() for x in (src, tgt))]
    checked = {s: _check_pair(raw_dir / f"{s}.{src}", raw_dir / f"{s}.{tgt}") for s in splits}
    counts = {s: lines for s, (lines, _, _) in checked.items()}

    # where the files go: a symbolic link's target (a link to scratch storage stays one), `.` by its name
    target = bin_dir.resolve()
    into = target.is_dir() and not any(target.iterdir())  # an empty folder that exists: it gets the files
    try:
        here: Path | None = Path.cwd()
    except FileNotFoundError:  # (a shell in a folder since deleted: no current folder to keep)
        here = None
    if force and not into and here is not None and target in (here, *here.parents):
        raise UserError(f"{bin_dir}: the current folder (or one above it), which --force would replace under "
                        "this shell; run from elsewhere")  # fmt: skip
    # a preprocess killed (kill -9, a lost node) left its temporary folder, gigabytes of arrays maybe, unnamed
    patterns = (f".{target.name}.tmp-*", f".{target.name}.old-*")
    places = [place for place in {target.parent, target} if place.is_dir()]
    left = sorted(str(p) for place in places for pattern in patterns for p in place.glob(pattern))
    if left:
        click.echo(f"warning: {briefly(left, 3)}: left by an nmt preprocess into {bin_dir} that was killed, or one "
                   f"still running; delete {'it' if len(left) == 1 else 'them'} where none runs", err=True)  # fmt: skip
    made = [] if into else missing_folders(target.parent)  # (taken away again where nothing is written)
    try:
        # (made in the empty folder itself: the same file system where it is a mount point, no rights on its parent)
        if not into:
            target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target if into else target.parent))
    except OSError as err:
        remove_empty(made)
        file = next((up for up in bin_dir.parents if up.exists() and not up.is_dir()), None)
        why = f"{file} is a file, not a folder" if file is not None else err.strerror or str(err)
        raise UserError(f"{bin_dir}: cannot make the folder ({why})") from None
    try:
        if progress and sys.stderr.isatty():  # sentencepiece shows nothing, and may take minutes
            click.echo(f"training a {model_type} vocabulary of {vocab_size} pieces on train.{src} and "
                       f"train.{tgt} ({counts['train']:,} lines each)...", err=True)  # fmt: skip
        texts = [_as_encoded(path, tmp) if path in checked["train"][2] else path
                 for path in (raw_dir / f"train.{src}", raw_dir / f"train.{tgt}")]  # fmt: skip
        model = train_vocab(texts, tmp / SPM_PREFIX, vocab_size, model_type, longest_line=checked["train"][1],
                            progress=progress, normalization=normalization)  # fmt: skip
        for text in texts:
            if text.parent == tmp:
                text.unlink()
        sp = load_vocab(model)
        stats = {}
        quiet = None if progress else True  # None: tqdm's own test, off where stderr is not a terminal
        with ProgressBar(total=sum(counts.values()), unit=" pairs", desc="encoding", disable=quiet) as bar:
            for split in splits:
                stats[split] = _encode_split(sp, raw_dir, tmp, split, src, tgt, max_len, max_ratio, bar)
        if stats["train"]["sentences"] == 0:
            raise UserError(
                f"{raw_dir / f'train.{src}'}: no training pairs left after filtering "
                f"(--max-len {max_len}, --max-ratio {max_ratio})"
            )
        manifest = {
            "src": src,
            "tgt": tgt,
            "vocab_size": sp.get_piece_size(),
            "vocab_hash": vocab_hash(model),
            "splits": stats,
            "options": {
                "vocab_size": vocab_size,
                "model_type": model_type,
                "max_len": max_len,
                "max_ratio": max_ratio,
                "normalization": normalization,
            },
            "raw_dir": str(raw_dir.resolve()),
            "train_long_sides": _long_sides(tmp, src, tgt),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if not into:  # what is there now, which may have changed since the checks above (another preprocess)
            if not existed and bin_dir.exists():
                raise UserError(f"{bin_dir}: appeared meanwhile (another preprocess?); nothing was written")
            _check_replaceable(bin_dir, force)
            _check_ours(bin_dir, force, {src, tgt})
        _replace_dir(tmp, target)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)
        if isinstance(err, OSError) and (err.filename is None or Path(err.filename).parent == tmp):
            raise _write_error(err, bin_dir) from None
        raise
    summary = ", ".join(
        f"{s} {v['sentences']} ({v['src_tokens']}+{v['tgt_tokens']} tokens"
        + (f", {v['dropped']} dropped)" if s == "train" else ")")
        for s, v in stats.items()
    )
    click.echo(f"preprocessed {src}->{tgt} into {bin_dir}: vocab {manifest['vocab_size']}; {summary}", err=True)
    if warning := dropped_warning(stats["train"], max_len, max_ratio):
        click.echo(warning, err=True)
    uses = {
        "valid": "the valid loss scores the cut pairs; BLEU translates and scores the whole text",
        "test": "their text is kept whole, and `nmt translate` reads that",
    }  # (the test's ids: no loss reads them)
    for split in ("valid", "test"):  # (cut without a word, and the valid loss scored the cut sentences)
        if stats.get(split, {}).get("cut"):
            click.echo(f"warning: {split}: {stats[split]['cut']:,} of {stats[split]['sentences']:,} pairs have a side "
                       f"over --max-len {max_len} pieces, whose ids are cut to {max_len}: {uses[split]}",
                       err=True)  # fmt: skip
    if manifest["vocab_size"] < vocab_size:
        click.echo(f"warning: the vocabulary has {manifest['vocab_size']} pieces, not the {vocab_size} asked for: "
                   "the training text has no more", err=True)  # fmt: skip
    if "valid" not in stats:
        named = [f"{name}.{src}/{name}.{tgt}" for name in ("dev", "devtest", "validation", "val")
                 if (raw_dir / f"{name}.{src}").is_file() and (raw_dir / f"{name}.{tgt}").is_file()]  # fmt: skip
        hint = (
            f" ({named[0]} is there, which preprocess does not read: name it valid.{src}/valid.{tgt})" if named else ""
        )
        click.echo(
            f"warning: {raw_dir} has no valid.{src}/valid.{tgt}: `nmt train` needs a valid split{hint}", err=True
        )
    long = manifest["train_long_sides"]
    if long["pairs"]:
        have = "training pair has" if long["pairs"] == 1 else "training pairs have"
        click.echo(
            f"warning: {long['pairs']} {have} a side longer than {LONG_SIDE} tokens (up to "
            f"{long['longest']}); models with {LONG_SIDE + 1} positions (every preset) truncate them "
            f"(--max-len {LONG_SIDE} drops them)",
            err=True,
        )
    return manifest


def _write_error(err: OSError, bin_dir: Path) -> OSError:
    """A write into the temporary folder that failed (a full disk), as the CLI names it: BIN, not the temporary
    folder, which is gone, and why; numpy's short write said only "127426 requested and 13280 written"."""
    name = f"{Path(err.filename).name}: " if err.filename is not None else ""
    why = err.strerror or f"{err}; is the disk full?"
    return OSError(err.errno, f"cannot write the corpus ({name}{why})", str(bin_dir))


def _long_sides(out: Path, src: str, tgt: str) -> dict[str, int]:
    """The manifest's `train_long_sides`, from the training token arrays written into `out`."""
    src_len, tgt_len = (np.diff(np.load(out / f"train.{lang}.offsets.npy")) for lang in (src, tgt))
    src_long, tgt_long = src_len > LONG_SIDE, tgt_len > LONG_SIDE
    return {
        "limit": LONG_SIDE,
        "count": int(src_long.sum() + tgt_long.sum()),
        "pairs": int((src_long | tgt_long).sum()),
        "longest": int(max(src_len.max(initial=0), tgt_len.max(initial=0))),
    }


def length_warning(manifest: dict[str, Any], max_positions: int) -> str | None:
    """A one-line warning when the model (with `max_positions` positions) truncates training sides, else None.

    A side fits in `max_positions - 1` tokens plus eos; longer ones are cut (`collate`). No warning when the
    manifest's --max-len fits (preprocess dropped every longer pair) or its longest training side fits. The
    number of pairs is exact for the presets' 256 positions (the manifest counts sides over LONG_SIDE); for
    other models the warning names the longest side instead. A manifest older than `train_long_sides` only
    has its --max-len to go by.
    """
    fits = max_positions - 1
    max_len = manifest.get("options", {}).get("max_len")
    if max_len is not None and max_len <= fits:
        return None
    advice = f"such sides are truncated (preprocess with --max-len {fits} to drop them)"
    long = manifest.get("train_long_sides")
    if long is None:
        if max_len is None:
            return None
        return (
            f"warning: the corpus was preprocessed with --max-len {max_len}, so training pairs may have a side "
            f"longer than the model's {fits} tokens; {advice}"
        )
    if long["longest"] <= fits:
        return None
    longest = long["longest"]
    if long["limit"] == fits:
        pairs = long["pairs"]
        have = "training pair has" if pairs == 1 else "training pairs have"
        return f"warning: {pairs} {have} a side longer than the model's {fits} tokens (up to {longest}); {advice}"
    return f"warning: training pairs have sides up to {longest} tokens, longer than the model's {fits} tokens; {advice}"


DROPPED_WARN = 0.05  # a share of the training pairs dropped that says so, and why


def dropped_warning(train: dict[str, Any], max_len: int, max_ratio: float) -> str | None:
    """A warning where more than `DROPPED_WARN` of the training pairs were dropped, by rule: a misaligned
    corpus, or pieces far longer on one side (one language's words split into many more pieces than the
    other's), shows there. (45% of a corpus went, said only as a count.)"""
    total = train["sentences"] + train["dropped"]
    if not total or train["dropped"] <= DROPPED_WARN * total:
        return None
    why = {"empty": "a side empty", "max_len": f"a side over --max-len {max_len} pieces",
           "max_ratio": f"a side over --max-ratio {max_ratio:g} times the other's pieces"}  # fmt: skip
    by_rule = train["dropped_for"]
    parts = [f"{n:,} with {why[rule]}" for rule, n in by_rule.items() if n]
    advice = "check that the corpus's lines are aligned" + (
        ", or raise the limit" * bool(by_rule["max_len"] or by_rule["max_ratio"])
    )
    return (f"warning: {train['dropped']:,} of {total:,} training pairs ({train['dropped'] / total:.1%}) were "
            f"dropped: {'; '.join(parts)}; {advice}")  # fmt: skip


def train_languages(raw_dir: Path) -> list[str]:
    """The language suffixes of the files `train.LANG` in `raw_dir` (not `train.tok.de`, nor a folder), sorted."""
    found = sorted({p.name[len("train.") :] for p in raw_dir.glob("train.*") if p.is_file()})
    return [s for s in found if s and "." not in s]


def _languages(raw_dir: Path, src: str | None, tgt: str | None) -> tuple[str, str]:
    for option, value in (("--src", src), ("--tgt", tgt)):  # (`--src a/b` failed with a temporary folder's path)
        if value is not None and (not value.strip() or "/" in value or os.sep in value or "\0" in value):
            raise UserError(f"{option} {value!r}: not a language suffix of RAW's file names (train.SUFFIX), as de")
    found = train_languages(raw_dir)
    if src and tgt:
        if src == tgt:
            raise UserError(f"--src and --tgt are both {src!r}")
        return src, tgt
    given = src or tgt
    if given and given not in found:  # (it said it could not tell the other language of a missing one)
        raise UserError(f"{raw_dir / f'train.{given}'}: no such file (train.* here: {', '.join(found) or 'none'})")
    if given:
        others = [s for s in found if s != given]
        if len(others) != 1:
            raise UserError(f"{raw_dir}: cannot tell the other language of {given!r} from train.* {found}")
        return (given, others[0]) if src else (others[0], given)
    if not found and (raw_dir / MANIFEST).is_file():  # (it said "found no train.*" beside train.de.ids.npy)
        raise UserError(f"{raw_dir}: a preprocessed corpus (it has {MANIFEST}); RAW is a folder of plain text files "
                        "named train.SRC and train.TGT (e.g. train.de and train.en)")  # fmt: skip
    if len(found) != 2:  # (what else RAW holds is looked at only here, to say why)
        # (a named pipe or a device named train.de was not named: only train.de.txt, "not taken for a language")
        irregular = sorted(p.name for p in raw_dir.glob("train.*") if p.exists() and not p.is_file() and not p.is_dir())
        notes = [f"not regular files: {briefly(irregular, 4)}"] if irregular else []
        if not found:
            files = sorted(p.name for p in raw_dir.iterdir() if p.is_file() and not p.name.startswith("."))
            seen = briefly(files, 6) if files else "none"
            odd = f" ({notes[0]})" if notes else ""
            raise UserError(f"{raw_dir}: expected plain text files named train.SRC and train.TGT (e.g. train.de and "
                            f"train.en; valid.* and test.* alike), found none{odd}: its files are {seen}")  # fmt: skip
        dotted = sorted(p.name for p in raw_dir.glob("train.*.*") if p.is_file())  # (train.de.gz: read only if named)
        notes = [f"not taken for a language: {briefly(dotted, 4)}"] * bool(dotted) + notes
        unread = f" ({'; '.join(notes)})" if notes else ""
        raise UserError(f"{raw_dir}: expected train.SRC and train.TGT (two language suffixes), found {found}{unread}; "
                        "pass --src/--tgt")  # fmt: skip
    a, b = found
    if {a.lower(), b.lower()} == {"src", "tgt"}:
        return (a, b) if a.lower() == "src" else (b, a)
    english = [s for s in (a, b) if language_code(s) == "en"]  # (train.EN and train.en_US too)
    if len(english) == 1:
        return (b, a) if english[0] == a else (a, b)
    return (a, b) if a.lower() <= b.lower() else (b, a)  # (alphabetically in any case: train.ZH was the source of de)


def _check_pair(src_path: Path, tgt_path: Path) -> tuple[int, int, list[Path]]:
    """Validate a parallel file pair (exists, non-empty, UTF-8, same line count); return its line count, its
    longest line in bytes and which of the two have Windows line ends or a byte order mark."""
    (n_src, long_src, plain_src), (n_tgt, long_tgt, plain_tgt) = _check_text(src_path), _check_text(tgt_path)
    if src_path.samefile(tgt_path):  # (a copy task may mean it; a link made by mistake trains one)
        click.echo(f"warning: {src_path} and {tgt_path} are the same file: the model learns to copy", err=True)
    if n_src != n_tgt:
        longer = src_path if n_src > n_tgt else tgt_path
        raise UserError(
            f"misaligned: {src_path} has {n_src} lines but {tgt_path} has {n_tgt}; "
            f"line {min(n_src, n_tgt) + 1} of {longer} has no partner"
        )
    return (
        n_src,
        max(long_src, long_tgt),
        [p for p, plain in ((src_path, plain_src), (tgt_path, plain_tgt)) if not plain],
    )


def _check_text(path: Path) -> tuple[int, int, bool]:
    """A text file's line count, longest line in bytes and whether it is plain (no Windows line end, no byte
    order mark); UserError if it is missing, empty, not UTF-8, of blank lines only, or has its lines ended by
    a carriage return alone (read as one long line)."""
    if not path.is_file():  # (a folder, a named pipe, a device such as /dev/null: not read as a corpus file)
        raise UserError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    n = longest = returns = newlines = windows = 0
    text = False  # a line with more than white space seen
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):  # noqa: B007 (n is the count afterwards)
                decoded = line.decode("utf-8")
                if n == 1:
                    check_not_unmarked_utf16(str(path), line)
                longest = max(longest, len(line))
                returns += lone_returns(line)
                newlines += line.endswith(b"\n")
                # (a return that ends the file, with no newline after it, too: encoding strips it as well)
                windows += line.rstrip(b"\n").endswith(b"\r") or (n == 1 and line.startswith(codecs.BOM_UTF8))
                text = text or bool(decoded.replace("\ufeff", "").strip())
    except UnicodeDecodeError as err:  # (the byte counted from 1, as `cut -b` counts)
        with open(path, "rb") as f:
            raise not_utf8(str(path), n, f.read(64), f"{err.reason} at byte {err.start + 1}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if n == 0:
        raise UserError(f"{path}: empty file")
    check_line_ends(str(path), n, newlines, returns)  # old Mac line ends: a corpus of one line (a valid or test split)
    if not text:
        raise UserError(f"{path}: all {n:,} lines are blank")
    return n, longest, not windows


def _as_encoded(path: Path, tmp: Path) -> Path:
    """A copy in `tmp` of the text file `path` as its lines are encoded: without Windows line ends and byte
    order mark, which sentencepiece's trainer keeps (with `--normalization identity` or `nfkc`, a `\r` and a
    `\ufeff` became pieces, and the text after `dos2unix` another vocabulary)."""
    copy = tmp / f".vocab-text.{path.name}"
    try:
        with open(copy, "w", encoding="utf-8", newline="\n") as out:
            for chunk in _read_chunks(path):
                out.writelines(line + "\n" for line in chunk)
    except OSError as err:  # (a full disk: the error named no file)
        raise UserError(f"{tmp.parent}: cannot write a copy of {path} without its Windows line ends for the "
                        f"vocabulary ({err.strerror or err})") from None  # fmt: skip
    return copy


def _read_chunks(path: Path):
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # (-sig: without a byte order mark)
        chunk: list[str] = []
        for line in f:
            chunk.append(line.rstrip("\r\n"))
            if len(chunk) == CHUNK_LINES:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _encode_split(
    sp, raw_dir: Path, out: Path, split: str, src: str, tgt: str, max_len: int, max_ratio: float, bar: ProgressBar
) -> dict[str, int]:
    ids: dict[str, list[np.ndarray]] = {src: [], tgt: []}
    lens: dict[str, list[np.ndarray]] = {src: [], tgt: []}
    dropped = dict.fromkeys(("empty", "max_len", "max_ratio"), 0)  # pairs dropped, by the first rule they fail
    cut = 0  # valid and test pairs with a side whose ids are cut to max_len (the text is kept whole)
    src_file, tgt_file = raw_dir / f"{split}.{src}", raw_dir / f"{split}.{tgt}"
    for s_lines, t_lines in zip(_read_chunks(src_file), _read_chunks(tgt_file), strict=True):
        s_ids, t_ids = sp.encode(s_lines), sp.encode(t_lines)
        s_len = np.fromiter(map(len, s_ids), dtype=np.int64, count=len(s_ids))
        t_len = np.fromiter(map(len, t_ids), dtype=np.int64, count=len(t_ids))
        if split == "train":
            full = (s_len > 0) & (t_len > 0)
            fits = full & (s_len <= max_len) & (t_len <= max_len)
            keep = fits & (np.maximum(s_len, t_len) <= max_ratio * np.maximum(1, np.minimum(s_len, t_len)))
            dropped["empty"] += int((~full).sum())
            dropped["max_len"] += int((full & ~fits).sum())
            dropped["max_ratio"] += int((fits & ~keep).sum())
            idx = np.flatnonzero(keep)
            s_ids, t_ids = [s_ids[i] for i in idx], [t_ids[i] for i in idx]
        else:
            cut += int(((s_len > max_len) | (t_len > max_len)).sum())
            s_ids, t_ids = [x[:max_len] for x in s_ids], [x[:max_len] for x in t_ids]
        for lang, seqs in ((src, s_ids), (tgt, t_ids)):
            n_lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
            flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int32, count=int(n_lens.sum()))
            ids[lang].append(flat)
            lens[lang].append(n_lens)
        bar.update(len(s_lines))
    stats: dict[str, Any] = {"sentences": 0, "src_tokens": 0, "tgt_tokens": 0, "dropped": sum(dropped.values())}
    if split == "train":
        stats["dropped_for"] = dropped
    else:
        stats["cut"] = cut
    for lang, key in ((src, "src_tokens"), (tgt, "tgt_tokens")):
        flat = np.concatenate(ids[lang]) if ids[lang] else np.zeros(0, np.int32)
        n_lens = np.concatenate(lens[lang]) if lens[lang] else np.zeros(0, np.int64)
        offsets = np.zeros(len(n_lens) + 1, dtype=np.int64)
        np.cumsum(n_lens, out=offsets[1:])
        np.save(out / f"{split}.{lang}.ids.npy", flat.astype(np.int32, copy=False))
        np.save(out / f"{split}.{lang}.offsets.npy", offsets)
        stats["sentences"], stats[key] = len(n_lens), int(flat.size)
    if split != "train":
        for path in (src_file, tgt_file):
            with (
                open(path, encoding="utf-8-sig", newline="\n") as f,  # a reference without a byte order mark
                open(out / path.name, "w", encoding="utf-8") as g,
            ):
                g.writelines(line.rstrip("\r\n") + "\n" for line in f)
    return stats


def _check_replaceable(bin_dir: Path, force: bool) -> None:
    """BIN may be written: new, empty, or with `force` a preprocessed corpus that holds no training run."""
    if bin_dir.exists() and any(bin_dir.iterdir()):  # --force replaces only what preprocess wrote
        if force and (run := run_folder_in(bin_dir)) is not None:
            what = "is a training run" if run == bin_dir else f"holds the training run {run}"
            raise UserError(f"{bin_dir}: {what}, which --force would delete; preprocess into another folder")
        if not (bin_dir / MANIFEST).is_file():
            raise UserError(f"{bin_dir}: exists and is not a preprocessed corpus (no {MANIFEST}); preprocess into "
                            "a new or empty folder")  # fmt: skip
        if not force:
            raise UserError(f"{bin_dir} exists; use --force to overwrite")


def _check_ours(bin_dir: Path, force: bool, languages: set[str]) -> None:
    """With `force`, a corpus in BIN holds only what preprocess wrote (of `languages` or its own), all of
    which --force deletes."""
    if force and (bin_dir / MANIFEST).is_file():
        ours = corpus_files(languages | (corpus_languages(bin_dir) or set()))
        if others := sorted(p.name for p in bin_dir.iterdir() if p.name not in ours or p.is_dir()):
            raise UserError(f"{bin_dir}: holds what preprocess did not write ({briefly(others)}), which --force would "
                            "delete; move it out, or preprocess into another folder")  # fmt: skip


def _replace_dir(tmp: Path, bin_dir: Path) -> None:
    """Move the finished `tmp` to `bin_dir`, replacing an old `bin_dir` only now, whose mode it takes (a
    new one: the umask's and its parent's setgid bit, where mkdtemp's 0700 kept a shared corpus from the
    user's group). An empty folder that existed, in which `tmp` was made, gets the files, and stays the
    folder it was (its mode, group, mount, a shell's current folder)."""
    if tmp.parent == bin_dir:
        if others := sorted(p.name for p in bin_dir.iterdir() if p != tmp):
            raise UserError(f"{bin_dir}: {others[0]} appeared in it meanwhile (another preprocess?); nothing was "
                            "written")  # fmt: skip
        names = sorted(os.listdir(tmp), key=lambda name: name == MANIFEST)  # the manifest last: a whole corpus
        try:
            for name in names:
                os.replace(tmp / name, bin_dir / name)
        except BaseException:  # (Ctrl-C too: a corpus without its manifest, which --force then refused)
            for name in names:
                (bin_dir / name).unlink(missing_ok=True)
            raise
        tmp.rmdir()
        return
    if bin_dir.exists():  # (a shared corpus kept its mode, setgid bit too, but took the user's group)
        with contextlib.suppress(OSError):  # (a group the user is not in: the folder keeps the user's)
            group = bin_dir.stat().st_gid
            for path in (*tmp.iterdir(), tmp):  # (its files too, made in mkdtemp's folder, of the user's group)
                os.chown(path, -1, group)
        shutil.copymode(bin_dir, tmp)
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask | os.stat(tmp).st_mode & stat.S_ISGID)
    old = None
    if bin_dir.exists():
        old = bin_dir.with_name(f".{bin_dir.name}.old-{os.getpid()}")
        os.replace(bin_dir, old)
    try:
        os.replace(tmp, bin_dir)
    except OSError:
        if old is not None:
            os.replace(old, bin_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- loading
def load_manifest(bin_dir: Path) -> dict[str, Any]:
    """The manifest of a preprocessed corpus folder (UserError if it is not one)."""
    path = Path(bin_dir) / MANIFEST
    if not Path(bin_dir).exists():
        raise UserError(f"{bin_dir}: no such folder (a preprocessed corpus: run `nmt preprocess` first)")
    if not path.is_file():
        raise UserError(f"{bin_dir}: not a preprocessed corpus (no manifest.json); run `nmt preprocess` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err}); run `nmt preprocess` again") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a valid manifest (not a JSON object); run `nmt preprocess` again")
    missing = sorted(MANIFEST_KEYS - manifest.keys())
    if missing or not isinstance(manifest["vocab_size"], int) or manifest["vocab_size"] < 1:
        what = f"lacks {', '.join(missing)}" if missing else "has a bad vocab_size"
        raise UserError(f"{path}: not a valid manifest ({what}); run `nmt preprocess` again")
    if (problem := _splits_problem(manifest["splits"])) is not None:  # (a KeyError from training, its run begun)
        raise UserError(f"{path}: not a valid manifest ({problem}); run `nmt preprocess` again")
    return manifest


def _splits_problem(splits: Any) -> str | None:
    if not isinstance(splits, dict):
        return "its splits are not an object"
    for name, counts in splits.items():
        if not isinstance(counts, dict):
            return f"split {name} is not an object"
        for key in SPLIT_KEYS:
            if not isinstance(counts.get(key), int) or isinstance(counts[key], bool) or counts[key] < 0:
                return f"split {name}'s {key} is not a count"
    return None


def _read_array(path: Path, load: Callable[[Path], np.ndarray]) -> np.ndarray:
    try:
        return load(path)
    except (OSError, ValueError, EOFError) as err:  # (EOFError: an empty file; Click took it for Ctrl-C)
        raise UserError(f"{path}: unreadable token array ({reason(err)}); run `nmt preprocess` again") from None


class TokenArray:
    """Sentences of token ids stored flat: sentence i is `ids[offsets[i]:offsets[i+1]]` (memory-mapped).
    Checked as read, where `vocab_size` is given: every id a piece of the vocabulary, the offsets rising
    from 0 (a damaged or mixed-up array failed mid-epoch, with a traceback from the model's embedding,
    after `--force` had cleared the old run)."""

    def __init__(self, ids_path: Path, offsets_path: Path, vocab_size: int | None = None) -> None:
        for p in (ids_path, offsets_path):
            if not Path(p).is_file():
                raise UserError(f"{p}: missing; run `nmt preprocess` again")
        self.ids: np.ndarray = _read_array(ids_path, _load_npy)
        self.offsets: np.ndarray = _read_array(offsets_path, np.load)
        again = "; run `nmt preprocess` again"
        for path, array in ((ids_path, self.ids), (offsets_path, self.offsets)):
            if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                raise UserError(f"{path}: not a token array (a {array.ndim}-D array of {array.dtype}){again}")
        if len(self.offsets) < 1 or int(self.offsets[-1]) != len(self.ids) or int(self.offsets[0]) != 0:
            raise UserError(f"{offsets_path}: does not match {Path(ids_path).name}{again}")
        lengths = np.diff(self.offsets)
        if len(lengths) and int(lengths.min()) < 0:
            raise UserError(f"{offsets_path}: offsets that go down (sentence {int(np.argmin(lengths))}){again}")
        if vocab_size is not None and len(self.ids):
            low, high = int(self.ids.min()), int(self.ids.max())
            if low < 0 or high >= vocab_size:
                raise UserError(f"{ids_path}: ids {low} to {high}, outside the vocabulary's 0 to {vocab_size - 1} "
                                f"(another corpus's array?){again}")  # fmt: skip
        self.lengths: np.ndarray = lengths.astype(np.int32)

    @classmethod
    def from_rows(cls, rows: Sequence[np.ndarray]) -> TokenArray:
        """An in-memory array of the sentences `rows` (what a preprocessed file would hold)."""
        self = cls.__new__(cls)
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        self.ids = np.concatenate([np.asarray(r, dtype=np.int32) for r in rows]) if rows else np.zeros(0, np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.lengths = lengths.astype(np.int32)
        return self

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if i < 0:
            i += len(self)
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


@dataclass
class ParallelSplit:
    src: TokenArray
    tgt: TokenArray

    def __len__(self) -> int:
        return len(self.src)


def load_split(bin_dir: Path, split: str, checked: bool = True) -> ParallelSplit:
    """The token arrays of one split, both sides (UserError if the split is not there); `checked`: their
    ids against the vocabulary too (`TokenArray`; a pass over them, which a second reader of the same BIN
    may skip)."""
    bin_dir = Path(bin_dir)
    manifest = load_manifest(bin_dir)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        raise UserError(f"{bin_dir}: has no {split} split (it has: {have}); add RAW/{split}.* and preprocess again")
    src, tgt = (
        TokenArray(
            bin_dir / f"{split}.{x}.ids.npy",
            bin_dir / f"{split}.{x}.offsets.npy",
            manifest["vocab_size"] if checked else None,
        )
        for x in (manifest["src"], manifest["tgt"])
    )
    if len(src) != len(tgt):
        raise UserError(f"{bin_dir}: {split} has {len(src)} source but {len(tgt)} target sentences")
    return ParallelSplit(src, tgt)


def read_lines(bin_dir: Path, split: str, side: str) -> list[str]:
    """The raw text lines of `split` ("valid" or "test") on `side` ("src" or "tgt"), as copied into BIN."""
    if side not in ("src", "tgt"):
        raise ValueError(f"side must be 'src' or 'tgt', not {side!r}")
    manifest = load_manifest(bin_dir)
    path = Path(bin_dir) / f"{split}.{manifest[side]}"
    try:
        with open(path, encoding="utf-8", newline="\n") as f:
            return [line.rstrip("\n") for line in f]
    except OSError:
        raise UserError(f"{path}: missing (only valid and test text is kept); run `nmt preprocess` again") from None
