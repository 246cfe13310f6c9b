"""The checkpoint format and its reading side: find a run's checkpoint, read it, build its model for inference.

A checkpoint is one `torch.save` dict with `format`, `model_config`, `train_config`, `corpus`, `vocab_model`
(the sentencepiece model's bytes), `params` (the flat fp32 parameter vector, in `model.parameters()` order),
`params_crc32` (checked on reading; older checkpoints lack it) and what training needs to resume (written
and read by `train/`).

With `--keep-last N` a run also keeps its last N saves as `checkpoints/update-U.pt` (U = updates), the
input of checkpoint averaging: `average_checkpoints` gives a checkpoint whose parameters are their mean
and which holds no training state (it translates, it does not resume).
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import zipfile
import zlib
from dataclasses import fields
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from torch.nn.utils import vector_to_parameters

from async_nmt.config import (
    LOCK_NAME,
    MANIFEST,
    RUN_MARKS,
    VOCAB_NAME,
    ModelConfig,
    check_replaceable,
    corpus_files,
    corpus_languages,
    from_dict,
    is_run_folder,
    raw_corpus_file,
    train_section,
)
from async_nmt.errors import UserError, reason
from async_nmt.model.transformer import Transformer

FORMAT_VERSION = 1
KEPT = re.compile(r"update-(\d+)\.pt")  # a save kept by --keep-last
REQUIRED = ("model_config", "vocab_model", "params")  # what translation reads


def checkpoint_path(run_dir: Path, which: str) -> Path:
    return run_dir / "checkpoints" / f"{which}.pt"


def kept_path(run_dir: Path, updates: int) -> Path:
    return checkpoint_path(run_dir, f"update-{updates}")


def kept_checkpoints(run_dir: Path) -> list[Path]:
    """The saves a run kept (--keep-last), oldest first."""
    folder = run_dir / "checkpoints"
    return sorted((p for p in folder.glob("update-*.pt") if KEPT.fullmatch(p.name)), key=kept_update)


def kept_update(path: Path) -> int:
    """The update of a kept save, from its name (update-U.pt)."""
    match = KEPT.fullmatch(path.name)
    assert match is not None, path
    return int(match.group(1))


def last_kept(run_dir: Path, count: int) -> list[Path]:
    """The `count` most recent kept saves of a run folder, oldest first; one-line error when there are fewer."""
    if run_dir.is_file():
        raise UserError(f"{run_dir}: a file; averaging needs the run folder that kept the checkpoints")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    if count < 1:
        raise UserError(f"--last {count}: the number of checkpoints to average must be at least 1")
    if not (run_dir / "checkpoints").is_dir():  # e.g. RUN/checkpoints given for RUN
        hint = f" ({run_dir.parent}?)" if run_dir.name == "checkpoints" else ""
        raise UserError(f"{run_dir}: has no checkpoints/ folder; averaging needs the run folder that holds "
                        f"checkpoints/{hint}")  # fmt: skip
    kept = kept_checkpoints(run_dir)
    if len(kept) < count:
        keeps = _keep_last(run_dir)  # (a run that keeps enough has not saved that often yet: no option helps)
        hint = f"train with --keep-last {count} or more"
        if keeps >= count:
            hint = (
                f"the run keeps its last {keeps} saves, --keep-last {keeps}, but has kept {len(kept)} so far: "
                "average fewer, or train on"
            )
        raise UserError(f"{run_dir}: {len(kept)} kept checkpoints, fewer than the {count} asked for ({hint})")
    return kept[-count:]


def _keep_last(run_dir: Path) -> int:
    """The --keep-last in force in a run, as its config.json says; 0 where it cannot be read."""
    keeps = (train_section(run_dir) or {}).get("keep_last")
    return keeps if isinstance(keeps, int) else 0


def runs_checkpoints_folder(path: Path, run_dir: Path) -> Path | None:
    """The checkpoints/ folder of a run that a file written at `path` would land in (at any depth), if any:
    `run_dir`'s, or a folder named checkpoints beside a run's config.json or events.jsonl. Found from where
    the file is written: a symbolic link at `path` is replaced, not the file it points to."""
    own = (run_dir / "checkpoints").resolve()
    marks = [mark for mark in RUN_MARKS if mark != "checkpoints"]  # every existing checkpoints/ has itself
    for folder in path.parent.resolve().joinpath(path.name).parents:
        if folder == own or (folder.name == "checkpoints" and any((folder.parent / m).exists() for m in marks)):
            return folder
    return None


def check_not_a_run_file(path: Path, run_dir: Path, what: str, never: str = "never replaced") -> None:
    """An output file `what` (the average, the translations) is never written into a run's checkpoints/
    folder, over a run's own files (its vocabulary too: `nmt report` compares runs by it) or over a file of a
    preprocessed corpus (BIN) (`never` says so: "never replaced, even with --force" where the command has
    --force)."""
    if (folder := runs_checkpoints_folder(path, run_dir)) is not None:
        raise UserError(f"{path}: inside {folder}, where the run's own checkpoints live ({never}); write {what} "
                        "elsewhere")  # fmt: skip
    folder = path.parent.resolve()  # (a symbolic link at `path` is replaced, not what it points to)
    if path.name in (*RUN_MARKS, LOCK_NAME, VOCAB_NAME) and is_run_folder(folder):
        raise UserError(f"{path}: a file of the run {path.parent} ({never}); write {what} elsewhere")
    if (
        (folder / MANIFEST).is_file()
        and (folder / path.name).exists()
        and (  # (a new file there is the user's)
            (languages := corpus_languages(folder)) is None or path.name in corpus_files(languages)
        )
    ):
        raise UserError(f"{path}: a file of the preprocessed corpus {path.parent} ({never}); write {what} "
                        "elsewhere")  # fmt: skip


def whole_archive(path: Path) -> bool:
    """A regular file that is a whole zip archive, as torch.save writes (zipfile reads only its end for it)."""
    return path.is_file() and zipfile.is_zipfile(path)


def best_save(best: dict[str, Any]) -> str:
    """A run's best save, as messages name it: `update U, valid BLEU B`."""
    return f"update {best['updates']}, valid BLEU {best['bleu']:.2f}"


def written_to(path: Path) -> Path:
    """The file that a write to `path` reaches, through any symbolic links (one to a file not there yet: where
    `>` would make it). A loop of links is one line, on every Python (3.11's `resolve` raised RuntimeError, a
    traceback; 3.13's returns a path)."""
    try:
        return Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:
        return path.resolve()
    except OSError as err:  # (ELOOP), which `open` refuses too
        raise UserError(f"{path}: a symbolic link that leads nowhere ({err.strerror or err})") from None


def check_translation_output(path: Path, model_path: Path) -> None:
    """`nmt translate -o` never replaces the checkpoint it translates with, nor a run's (it made the
    checkpoint a text file of translations, and a run's best.pt so, without a word)."""
    target = written_to(path)
    if model_path.is_file() and target == model_path.resolve():
        raise UserError(f"{path}: the checkpoint that translates; write the translations elsewhere")
    run_dir = model_path if model_path.is_dir() else model_path.parent
    check_not_a_run_file(path, run_dir, "the translations")
    if path.is_symlink():  # the translations go into what it points to, as `>` writes (a run's events.jsonl was)
        try:
            check_not_a_run_file(target, run_dir, "the translations")
        except UserError as err:
            raise UserError(f"{path} -> {err}") from None
    # any other checkpoint too (`nmt average`'s AVG.pt, one copied out of a run), which `-o` for `-i` made a
    # text file; `nmt average` replaces one only with --force
    if whole_archive(path):
        raise UserError(f"{path}: a zip archive (a checkpoint?), which translations would replace; write them "
                        "elsewhere")  # fmt: skip
    # a raw corpus's text, as test.en, the reference that the translations of test.de are scored against:
    # replaced, it scored them BLEU 100 (`>` still writes there, for one who means it)
    if raw_corpus_file(target):
        raise UserError(f"{path}: a file of the raw corpus {target.parent} (a reference?), which translations "
                        "would replace; write them elsewhere")  # fmt: skip


def check_average_output(path: Path, run_dir: Path, force: bool) -> None:
    """Where `nmt average` may write its checkpoint: never into a run's checkpoints/, over an existing file
    only with `force`, and into an existing folder only (as `nmt translate -o`, it makes none)."""
    if str(path) == "-":  # (stdout for `nmt translate -o`; a checkpoint is a file)
        raise UserError("-o -: the average is a checkpoint file; name one (AVG.pt)")
    check_not_a_run_file(path, run_dir, "the average", "never replaced, even with --force")
    if raw_corpus_file(path):  # (as `nmt translate -o`; --force replaced a reference with a zip archive)
        raise UserError(f"{path}: a file of the raw corpus {path.parent} (a reference?), never replaced, even with "
                        "--force; write the average elsewhere")  # fmt: skip
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an output file")
    check_replaceable(path)
    if (path.exists() or path.is_symlink()) and not force:
        raise UserError(f"{path}: exists; use --force to replace it")
    for folder in path.parents:  # the nearest that exists must be a folder, and be the file's own
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise UserError(f"{path}: {folder} is a file, not a folder")
            if folder != path.parent:
                raise UserError(f"{path}: no folder {path.parent}; make it first")
            return


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose parameters are the mean of those of `paths` (same model and vocabulary), without
    training state. Summed in float64, so the order of the files does not change the result. A kept save's
    name is not trusted: one that holds another update than its name says (renamed, or copied over) is
    refused, as are two saves of the same update (`update-7.pt` and `update-007.pt`), which would count one
    model twice."""
    first = read_checkpoint(paths[0])
    seen: dict[int, Path] = {}
    _check_kept_update(paths[0], first, seen)
    total = first["params"].double()
    model = from_dict(ModelConfig, first["model_config"]).in_effect()
    for path in paths[1:]:
        state = read_checkpoint(path)
        _check_kept_update(path, state, seen)
        # (compared as models: a save from before 2026-12-06 lacks the two dropouts that later ones hold, and a
        # resume that named the embeddings' dropout saves it where earlier saves let it follow the dropout)
        if (other := from_dict(ModelConfig, state["model_config"]).in_effect()) != model:
            differ = [f"{f.name} {getattr(other, f.name)}, not {getattr(model, f.name)}" for f in fields(model)
                      if getattr(other, f.name) != getattr(model, f.name)]  # fmt: skip
            raise UserError(f"{path}: another model config than {paths[0]} ({'; '.join(differ)}); cannot average them")
        if state.get("corpus") != first.get("corpus"):
            raise UserError(f"{path}: another corpus than {paths[0]}; cannot average them")
        if state["params"].shape != first["params"].shape:
            raise UserError(f"{path}: {state['params'].numel():,} parameters, {paths[0]} {first['params'].numel():,};"
                            " cannot average them")  # fmt: skip
        total += state["params"].double()
    keep = ("format", "model_config", "train_config", "corpus", "vocab_model")
    return {**{k: first[k] for k in keep if k in first}, "params": (total / len(paths)).float(),
            "averaged": [str(p) for p in paths]}  # fmt: skip


def _check_kept_update(path: Path, state: dict[str, Any], seen: dict[int, Path]) -> None:
    """`path`'s save is the update its name says (update-U.pt), and none of those in `seen` is."""
    updates = state.get("server", {}).get("updates")
    if not isinstance(updates, int):  # (an averaged checkpoint, without training state, has none)
        return
    if KEPT.fullmatch(path.name) and kept_update(path) != updates:
        raise UserError(f"{path}: holds the save of update {updates}, not of update {kept_update(path)} as its "
                        "name says; cannot average by it (was it renamed or copied over?)")  # fmt: skip
    if updates in seen:
        raise UserError(f"{path}: the same update, {updates}, as {seen[updates]}; averaging them would count one "
                        "model twice")  # fmt: skip
    seen[updates] = path


def average_last_kept(run_dir: Path, count: int, tries: int = 5) -> tuple[list[Path], dict[str, Any]]:
    """The `count` most recent kept saves of `run_dir` (`last_kept`) and their average. A run still training
    deletes its oldest kept save as it keeps a new one: one gone between the listing and its reading is listed
    again (it was an error, "not a readable checkpoint (No such file or directory)")."""
    for _ in range(tries - 1):
        paths = last_kept(run_dir, count)
        try:
            averaged = average_checkpoints(paths)
            break
        except UserError:
            if all(path.exists() for path in paths):
                raise
    else:
        paths = last_kept(run_dir, count)
        averaged = average_checkpoints(paths)
    if (warning := _older_than_last(run_dir, paths[-1])) is not None:
        print(warning, file=sys.stderr)
    return paths, averaged


def _older_than_last(run_dir: Path, newest: Path) -> str | None:
    """A warning where the run's last.pt is of a later update than its newest kept save: it kept none since
    (resumed with --keep-last 0, or a save cut short before its kept copy), and an average of them was taken
    without a word for the run's last ones."""
    last = checkpoint_path(run_dir, "last")
    try:
        updates = read_checkpoint(last, mmap=True, check_params=False).get("server", {}).get("updates")
    except UserError:  # (no last.pt, or a damaged one: translation and --resume say so where they read it)
        return None
    if not isinstance(updates, int) or updates <= kept_update(newest):
        return None
    return (f"warning: {last} is at update {updates}, but the newest kept save is {newest.name}: the run kept "
            "none since (resumed with --keep-last 0, or a save cut short before its copy, which a resume makes), "
            "so this averages older saves than its last")  # fmt: skip


def read_checkpoint(path: Path, mmap: bool = False, check_params: bool = True) -> dict[str, Any]:
    """Load a checkpoint written by training, with one-line errors for anything else. `mmap`: map the file
    and read only what is used (translation reads the parameters, not the optimizer's two vectors).
    `check_params`: against their checksum, which reads them all (not where only the configs are read)."""
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint")
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    if not path.is_file():  # (/dev/null, a named pipe: "no such checkpoint" for a file that is there)
        raise UserError(f"{path}: not a regular file, so not a checkpoint")
    if not whole_archive(path):  # what torch.save writes; torch.load's own message on other files misleads
        raise UserError(f"{path}: not a checkpoint, or one cut short (torch.save writes a zip archive; this is "
                        "not a whole one)")  # fmt: skip
    _check_pickle(path)
    # torch maps a file by its name as a UTF-8 str: one whose name is not UTF-8 (run\xff/...) is read whole (it
    # said "not a readable checkpoint ('utf-8' codec can't encode character ...)" of a checkpoint that was)
    mmap = mmap and utf8_name(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only's refusal: the file would have run code to load
        if (refused := re.search(r"GLOBAL ([\w.]+)", str(err))) is None:
            raise UserError(f"{path}: not a readable checkpoint ({reason(err)})") from None
        raise UserError(f"{path}: not loaded: it holds {refused.group(1)}, which no async-nmt checkpoint does "
                        "(such a file can run code as it loads)") from None  # fmt: skip
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({reason(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: not an async-nmt checkpoint (format {FORMAT_VERSION})")
    missing = [key for key in REQUIRED if key not in state]
    if missing or not isinstance(state["params"], torch.Tensor) or not isinstance(state["model_config"], dict):
        what = f"no {', '.join(missing)}" if missing else "params or model_config of the wrong type"
        raise UserError(f"{path}: an incomplete async-nmt checkpoint ({what})")
    if check_params and "params_crc32" in state and params_crc32(state["params"]) != state["params_crc32"]:
        raise UserError(f"{path}: damaged (its parameters do not match the checksum saved with them)")
    return state


def utf8_name(path: Path) -> bool:
    """Whether `path` is UTF-8 text, as libraries that take a file's name as a str need it (a name that is not
    holds surrogates in Python: os.fsdecode(b"run\\xff"))."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_pickle(path: Path) -> None:
    """The checkpoint's pickle (data.pkl: its vocabulary, model_config and corpus, all but the tensors)
    matches the CRC-32 its zip archive holds (torch.load checks none; the parameters have a checksum of their
    own). A damaged byte there gave a silently different vocabulary, or a traceback from the model."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((info for info in archive.infolist() if info.filename.endswith("/data.pkl")), None)
            # none: not torch.save's layout (torch.load says so); a CRC of 0: saved with torch's compute_crc32 off
            if entry is None or (entry.CRC == 0 and entry.file_size > 0):
                return
            with archive.open(entry) as f:
                while f.read(1 << 20):  # (the CRC is compared at the end)
                    pass
    except zipfile.BadZipFile as err:
        if "CRC" in str(err):
            raise UserError(f"{path}: damaged (data.pkl, its vocabulary and settings, does not match its "
                            "checksum)") from None  # fmt: skip
        raise UserError(f"{path}: not a readable checkpoint ({reason(err)})") from None
    except (OSError, EOFError, ValueError) as err:
        raise UserError(f"{path}: not a readable checkpoint ({reason(err)})") from None


def _safe_globals() -> list[Any]:
    """What a checkpoint holds beyond tensors and Python's plain types: numpy's random state (an array), under
    the names numpy 2 and numpy 1 give its pieces, and the batches each emulated worker holds (--simulate).
    torch.load takes nothing else (`weights_only`): a pickle can name any function to call as it loads, and
    a checkpoint from elsewhere must not run code here."""
    import numpy as np

    from async_nmt.data.batches import Batch  # a dataclass of tensors and numbers

    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array constructor, wherever it lives
    names = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
    return [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct, *((reconstruct, n) for n in names), Batch]


def params_crc32(params: torch.Tensor) -> int:
    """CRC-32 of the parameter vector's bytes: torch.load does not verify the checksums of its zip entries."""
    return zlib.crc32(params.detach().cpu().contiguous().view(torch.uint8).numpy())


def find_checkpoint(path: Path, which: str | None = None) -> Path:
    """A run folder -> its `which` checkpoint ("best" or "last"; None: best, or last in a run that has no
    best, one stopped before its first validation); a checkpoint file -> itself, where `which` must be None."""
    # (RUN/checkpoints/last.pt made a folder: "no checkpoint in" it; a run folder may be named so too)
    if path.is_dir() and path.suffix == ".pt" and not (path / "checkpoints").is_dir():
        raise UserError(f"{path}: a folder, not a checkpoint")
    if path.is_dir():
        names = ("best", "last") if which is None else (which,)
        for name in names:
            candidate = checkpoint_path(path, name)
            if candidate.is_file():
                return candidate
        if which == "best" and checkpoint_path(path, "last").is_file():
            raise UserError(f"{path}: no {which}.pt in {path / 'checkpoints'} (a run stopped before its first "
                            "validation has only last.pt); leave out --checkpoint to take it")  # fmt: skip
        if which == "last" and checkpoint_path(path, "best").is_file():
            raise UserError(f"{path}: no last.pt in {path / 'checkpoints'}; leave out --checkpoint to take "
                            "best.pt")  # fmt: skip
        if not (path / "checkpoints").is_dir() and any((path / f"{name}.pt").is_file() for name in ("best", "last")):
            raise UserError(f"{path}: a run's checkpoints folder; give the run folder ({path.parent}) or one of "
                            "its .pt files")  # fmt: skip
        where = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        if in_training(path):  # ("train it first" said to one who had just started it)
            raise UserError(f"{path}: no checkpoint (best.pt or last.pt) in {where} yet: the run is training and "
                            "saves its first at its first validation (--valid-every) or --save-every; translate "
                            "once it has")  # fmt: skip
        raise UserError(f"{path}: no checkpoint (best.pt or last.pt) in {where}: give a run folder that has "
                        "saved one (train it first), or a .pt file")  # fmt: skip
    if not path.exists():
        raise UserError(f"{path}: no such run folder or checkpoint")
    if which is not None:
        raise UserError(f"{path}: is a checkpoint file; --checkpoint {which} chooses one in a run folder")
    return path


def lost_best(best: dict[str, Any] | None, updates: int | None) -> bool:
    """Whether a run whose last.pt stands at update `updates` has a best save (`best`, as the run records it)
    apart from last.pt, one that only best.pt held: a run that validated, unless last.pt is that save (killed
    before its copy to best.pt was made). Translation and the resume both ask it of a run without best.pt."""
    return bool(best) and best["updates"] != updates


def vocab_from_checkpoint(state: dict[str, Any], path: Path | str = "checkpoint") -> spm.SentencePieceProcessor:
    """The sentencepiece model a checkpoint carries; one-line errors for a broken one or another vocabulary."""
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(state["vocab_model"])
    except (RuntimeError, TypeError) as err:
        raise UserError(f"{path}: its vocabulary is not a sentencepiece model ({reason(err)})") from None
    if sp.get_piece_size() != state["model_config"].get("vocab_size"):
        raise UserError(f"{path}: its vocabulary has {sp.get_piece_size()} pieces but its model "
                        f"{state['model_config'].get('vocab_size')}")  # fmt: skip
    return sp


def in_training(run: Path) -> bool:
    """Whether an nmt-train is training `run` now: its lock file (train/lock.py) names a live process. (Not by
    taking the lock, even shared for a moment: an nmt-train starting then would be refused.) A pid left by a
    killed nmt-train that another process took since counts too."""
    try:
        fd = os.open(run / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            pid = os.read(fd, 32).decode("ascii", errors="replace").strip()
        finally:
            os.close(fd)
    except OSError:
        return False
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except PermissionError:  # (another user's)
        return True
    except (OSError, OverflowError):
        return False
    return True


def _check_best_is_the_runs(run: Path, best_file: Path, state: dict[str, Any]) -> None:
    """best.pt holds the best save that the run's last.pt records. A save cut short as it wrote best.pt (a
    kill, a full disk) or a run rewound to an older last.pt left one of another update, which `nmt translate
    RUN` took without a word (a resume makes it again). A last.pt that cannot be read is no matter here."""
    last_file = best_file.with_name("last.pt")
    try:
        last = read_checkpoint(last_file, mmap=True, check_params=False) if last_file.is_file() else {}
    except UserError:
        return
    best, held = last.get("best"), state.get("server", {}).get("updates")
    if not best or held is None or best.get("updates") == held:
        return
    if in_training(run):  # (a new best saved as this read: last.pt written, best.pt not yet copied)
        print(f"warning: {run}: {best_file} holds update {held}, not the run's best save ({best_save(best)}), which "
              "the run, training, may be saving now; translating with it", file=sys.stderr)  # fmt: skip
        return
    kept = kept_path(run, best["updates"])
    if last.get("server", {}).get("updates") == best["updates"]:
        where = "--checkpoint last translates with it"
    else:
        where = f"{kept} holds it" if kept.is_file() else "no kept save holds it"
    raise UserError(f"{run}: {best_file} holds update {held}, not the run's best save ({best_save(best)}: a save "
                    f"cut short, or a rewound run); {where}, `nmt-train BIN {run} --resume` makes best.pt again, "
                    "and --checkpoint best takes it as it is")  # fmt: skip


def load_model(
    path: Path, which: str | None = None, device: torch.device | str | None = None, average: int = 0
) -> tuple[Transformer, spm.SentencePieceProcessor]:
    """The model (eval mode, on `device`, default the CPU) and vocabulary of a run folder or checkpoint file;
    `average` > 0: of the mean of the run folder's last `average` kept checkpoints instead."""
    if average:
        kept, state = average_last_kept(Path(path), average)
        ckpt_file = kept[-1]
    else:
        ckpt_file = find_checkpoint(Path(path), which)
        state = read_checkpoint(ckpt_file, mmap=True)
        fell_back = Path(path).is_dir() and which is None and ckpt_file.name == "last.pt"  # (best.pt is gone)
        if fell_back and lost_best(state.get("best"), state.get("server", {}).get("updates")):
            kept = kept_path(Path(path), state["best"]["updates"])
            held = f"; its kept save {kept} holds that model" if kept.is_file() else ""
            raise UserError(f"{path}: no best.pt in {ckpt_file.parent}, though the run saved its best there "
                            f"({best_save(state['best'])}){held}; --checkpoint last, or {ckpt_file} itself, "
                            "translates with the last save")  # fmt: skip
        if Path(path).is_dir() and which is None and ckpt_file.name == "best.pt":  # (--checkpoint best: as asked)
            _check_best_is_the_runs(Path(path), ckpt_file, state)
    sp = vocab_from_checkpoint(state, ckpt_file)
    try:
        model = Transformer.uninitialized(from_dict(ModelConfig, state["model_config"]))
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{ckpt_file}: its model_config does not build a model ({reason(err)})") from None
    if sum(p.numel() for p in model.parameters()) != state["params"].numel():
        raise UserError(f"{ckpt_file}: parameter count does not match its model configuration")
    with torch.no_grad():
        vector_to_parameters(state["params"], model.parameters())
    return model.to(device or "cpu").eval(), sp
