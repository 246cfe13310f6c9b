"""Typed configuration: model presets and training options, saved to and loaded from JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from async_nmt.errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

Mode = Literal["sync", "async", "async-accum", "diloco"]
MODES: tuple[str, ...] = get_args(Mode)
ASYNC_MODES = ("async", "async-accum")  # a parameter server applies the pushes as they come: they can be stale
RANK_MODES = ("sync", "diloco")  # the workers are ranks of an all-reduce group, each with a trainer of its own
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# how a push's staleness scales the learning rate of the update it joins (Zhang et al. 2016: lr / max(1, s))
StalenessLr = Literal["none", "inverse"]
STALENESS_LRS: tuple[str, ...] = get_args(StalenessLr)
# --batch-sort: how data/batches.py orders a batch's pairs; here, not there, so that the command line's
# options do not import torch (which data/batches.py needs) with every `nmt` command
SORTS = ("target", "longest")


@dataclass
class ModelConfig:
    """Encoder-decoder Transformer (pre-norm, tied embeddings, sinusoidal positions)."""

    vocab_size: int = 8000
    d_model: int = 256
    heads: int = 4
    enc_layers: int = 3
    dec_layers: int = 3
    ff_dim: int = 1024
    dropout: float = 0.1  # the sublayers' outputs' and the feed-forward activation's (the embeddings': below)
    embed_dropout: float | None = None  # the embeddings' (with positions); None: dropout's, as fairseq places it
    attention_dropout: float = 0.0  # the attention weights' (nn.Transformer and Marian drop them; fairseq not)
    max_positions: int = 256  # longest source or target sequence, bos/eos included
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def in_effect(self) -> ModelConfig:
        """This model with its embeddings' dropout named where it follows `dropout` (None): configurations that
        build the same model are then equal (a resume refused `--embed-dropout 0.1` of a run whose None was
        0.1, "embed_dropout None not 0.1")."""
        return replace(self, embed_dropout=self.dropout if self.embed_dropout is None else self.embed_dropout)


PRESETS: dict[str, dict[str, Any]] = {
    # micro is for smoke tests and CI: it learns a toy corpus in seconds on one CPU core; too small for real data
    "micro": dict(d_model=64, heads=2, enc_layers=2, dec_layers=2, ff_dim=256, dropout=0.1),
    "tiny": dict(d_model=256, heads=4, enc_layers=3, dec_layers=3, ff_dim=1024, dropout=0.1),
    "small": dict(d_model=512, heads=8, enc_layers=3, dec_layers=3, ff_dim=2048, dropout=0.1),
    "base": dict(d_model=512, heads=8, enc_layers=6, dec_layers=6, ff_dim=2048, dropout=0.1),
    "big": dict(d_model=1024, heads=16, enc_layers=6, dec_layers=6, ff_dim=4096, dropout=0.3),
}

# Peak learning rate and warmup updates when --lr/--warmup are not given. tiny's short warmup suits the
# few hundred updates a CPU run of minutes allows; base/big follow fairseq's Vaswani-style recipes.
TRAIN_DEFAULTS: dict[str, tuple[float, int]] = {
    "micro": (2e-3, 50),
    "tiny": (7e-4, 250),
    "small": (7e-4, 1000),
    "base": (7e-4, 4000),
    "big": (5e-4, 4000),
}


def model_config(preset: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The named preset for a vocabulary, with any fields overridden."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    return ModelConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})


MAX_BEAM = 2**31  # `nmt translate --beam`, `nmt train --valid-beam` (2^62 overflowed torch's sizes: a traceback)
DROPOUTS = ("dropout", "embed_dropout", "attention_dropout")  # the options that override the preset's model


def dropout_overrides(cfg: TrainConfig) -> dict[str, float]:
    """The dropouts that the options give (`model_config`'s overrides); the model's defaults for the rest."""
    return {name: getattr(cfg, name) for name in DROPOUTS if getattr(cfg, name) is not None}


@dataclass
class TrainConfig:
    """Everything `nmt train` was asked to do; saved as RUN/config.json."""

    bin_dir: str = ""
    preset: str = "tiny"
    mode: Mode = "sync"
    workers: int = 1
    accum: int = 1  # async-accum: pushes summed per update
    local_accum: int = 1  # batches a worker sums before one push
    sync_every: int = 0  # diloco: inner steps per round (H)
    outer_lr: float = 0.7  # diloco: the outer SGD step's learning rate
    outer_momentum: float = 0.9  # diloco: the outer step's Nesterov momentum
    staleness_lr: StalenessLr = "none"  # async modes: an update's lr / max(1, mean staleness of its pushes)
    devices: list[str] = field(default_factory=list)
    simulate: bool = False  # emulate `workers` workers deterministically in one process
    worker_speeds: list[float] = field(default_factory=list)  # relative speed of each worker (slower: sleeps)
    simulate_token_us: float = 0.0  # --simulate: a token's compute price on the predicted clock; 0 = measured
    link_gbps: float = 80.0  # --simulate: the link between a worker and the server (or ring neighbours), Gb/s
    shards: int = 0  # parameter-server shards; 0 = one per device
    max_tokens: int = 4096
    batch_sort: str = "target"  # how sentences are sorted into batches (data.batches.make_batches)
    lr: float = 7e-4
    warmup: int = 250
    clip_norm: float = 0.0
    label_smoothing: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    dropout: float | None = None  # None: the preset's (as for the two below: the model's defaults)
    embed_dropout: float | None = None
    attention_dropout: float | None = None
    valid_every: int = 500
    valid_max_sentences: int = 0  # 0 = the whole valid split
    valid_beam: int = 1  # the beam of validation's translations; 1 = greedy
    save_every: int = 0  # 0 = only at validation and at the end
    keep_last: int = 0  # also keep the last N saves as checkpoints/update-U.pt (for averaging); 0 = none
    max_updates: int = 0
    max_epochs: int = 0
    max_time: float = 0.0  # seconds of training clock
    patience: int = 0  # stop after this many validations without a better valid BLEU; 0 = never
    seed: int = 1
    precision: Precision = "auto"
    compile: bool = False
    log_every: int = 50  # updates between `train` events (and the progress bar's figures)


@dataclass
class CorpusInfo:
    """The languages and vocabulary a run was trained on (from the BIN folder's manifest)."""

    src: str = ""
    tgt: str = ""
    vocab_size: int = 0
    vocab_hash: str = ""
    train_pairs: int = 0  # the training split's pairs and tokens (0: a run from before 2026-12-05)
    train_tokens: int = 0

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> CorpusInfo:
        """What a BIN folder's manifest says of its corpus."""
        train = manifest["splits"]["train"]
        return cls(**{k: manifest[k] for k in ("src", "tgt", "vocab_size", "vocab_hash")},
                   train_pairs=train["sentences"], train_tokens=train["src_tokens"] + train["tgt_tokens"])  # fmt: skip


@dataclass
class RunConfig:
    """RUN/config.json: the training options, the model and the corpus of a run."""

    train: TrainConfig
    model: ModelConfig
    corpus: CorpusInfo


def torchrun_rank() -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) where torchrun started this process as one of its ranks, else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


RUN_MARKS = ("config.json", "events.jsonl", "checkpoints")  # what every run folder has from its start
# held by the nmt-train that owns a run (train/lock.py); not a mark: a folder with only it is a fresh one
LOCK_NAME = ".nmt-train.lock"


def is_run_folder(folder: Path) -> bool:
    return any((Path(folder) / mark).exists() for mark in RUN_MARKS)


MANIFEST = "manifest.json"  # what marks a preprocessed corpus (BIN) folder (data/binarize.py writes it)


def language_code(language: str | None) -> str | None:
    """A corpus's language suffix as a language code: lower case, without a region or script (`zh-CN`,
    `zh_Hans`: `zh`)."""
    return None if language is None else re.split(r"[-_]", language.lower(), maxsplit=1)[0]


# sentencepiece's Unicode normalizations (`nmt preprocess --normalization`); nmt_ adds its NMT rules to NFKC
NORMALIZATIONS = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")
SPLITS = ("train", "valid", "test")  # the splits of a corpus, raw (RAW, `nmt corpus get`) and preprocessed (BIN)
SPM_PREFIX = "spm"  # a BIN's sentencepiece model and vocabulary: spm.model, spm.vocab
VOCAB_NAME = f"{SPM_PREFIX}.model"  # the sentencepiece model of a BIN, and its copy in a run folder


def corpus_files(languages: Iterable[str]) -> set[str]:
    """The names of the files `nmt preprocess` writes into a BIN of these languages: its manifest, the
    vocabulary, each split's token arrays, and the raw text of valid and test (any other file there is the
    user's: --force and an output path leave it alone)."""
    names = {MANIFEST, VOCAB_NAME, f"{SPM_PREFIX}.vocab"}
    for split in SPLITS:
        for lang in languages:
            names |= {f"{split}.{lang}.ids.npy", f"{split}.{lang}.offsets.npy"}
            if split != "train":
                names.add(f"{split}.{lang}")
    return names


def raw_corpus_file(path: Path) -> bool:
    """Whether `path` is a file of a raw corpus (RAW: what `nmt corpus get` writes and `nmt preprocess`
    reads): `SPLIT.LANG`, there, beside the `train.LANG` files of two languages or more, LANG one of them."""
    split, _, lang = Path(path).name.partition(".")
    if split not in SPLITS or not lang or "." in lang or not Path(path).is_file():
        return False
    found = {p.name[len("train.") :] for p in Path(path).parent.glob("train.*") if p.is_file()}
    languages = {name for name in found if name and "." not in name}
    return lang in languages and len(languages) >= 2


def corpus_languages(folder: Path) -> set[str] | None:
    """The languages (src, tgt) that the manifest of the BIN `folder` names; None where it has none that
    reads (a damaged one, or not a BIN)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        languages = {manifest["src"], manifest["tgt"]}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return languages if all(isinstance(lang, str) for lang in languages) else None


def train_section(folder: Path) -> dict[str, Any] | None:
    """The `train` section of a run folder's config.json; None where there is none, or the file cannot be
    read as a run's (a project's own config.json, one torn or hand-broken)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    section = config.get("train") if isinstance(config, dict) else None
    return section if isinstance(section, dict) else None


def run_folder_in(folder: Path, below_only: bool = False) -> Path | None:
    """A training run that is `folder` or lies below it (`below_only`: below it), if there is one: what a
    `--force` that deletes `folder` must not reach unasked."""
    folder = Path(folder)
    if not below_only and is_run_folder(folder):
        return folder
    for path in folder.rglob("config.json"):
        if path.parent != folder and is_run_folder(path.parent) and (path.parent / "events.jsonl").exists():
            return path.parent
    return None


C = TypeVar("C")


def from_dict(cls: type[C], data: dict[str, Any], typed: bool = False) -> C:
    """The dataclass `cls` from a dict written by `asdict`: nested dataclasses and tuples rebuilt, unknown
    keys (from a newer version) ignored, missing ones defaulted. `typed`: a value of another type than its
    field's (a number, string or flag, or a list) is a TypeError that names it (a hand-edited config.json:
    a string for a number failed a resume later, with a traceback)."""
    if not isinstance(data, dict):
        raise TypeError(f"a JSON {_json_type(data)}, not an object")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, typed)
        else:
            if typed and not _of_type(value, hint):
                raise TypeError(f"{f.name} is {value!r}, not of type {_type_name(hint)}")
            if typing.get_origin(hint) is tuple:
                value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _of_type(value: Any, hint: Any) -> bool:
    """Whether `value` (read from JSON) fits `hint`: int (not a bool), float (an int too), str, bool, None,
    a union of those, or a list or tuple; any other hint (a Literal: the options' own checks) fits."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_of_type(value, arg) for arg in typing.get_args(hint))
    if origin in (list, tuple):
        args = [arg for arg in typing.get_args(hint) if arg is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and Ellipsis not in typing.get_args(hint):  # tuple[float, float]: so many, each its own
            return len(value) == len(args) and all(_of_type(v, a) for v, a in zip(value, args, strict=True))
        return all(_of_type(v, args[0]) for v in value) if args else True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "true or false", type(None): "null"}
    return names.get(type(value), "number")


def _type_name(hint: Any) -> str:
    """As the source writes it: int, float | None, tuple[float, float]."""
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def temporary_beside(path: Path) -> Path:
    """A hidden temporary file beside `path`, of this process, to write and then rename onto `path`: named
    after it where the name fits the file system's 255 bytes (one that did not failed a write that `>`
    makes). Its bytes as the file system takes them: a name that is not UTF-8 (out\xff.txt) has no str encoding,
    and was a UnicodeEncodeError, a traceback."""
    name = f".{path.name}.{os.getpid()}.tmp"
    return path.with_name(name if len(os.fsencode(name)) <= 255 else f".async-nmt.{os.getpid()}.tmp")


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and the folders above it that do not exist, deepest first: those that making it makes, which
    `remove_empty` takes away again where the command then writes nothing (a failure, Ctrl-C)."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            break
        missing.append(path)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders `folders` (deepest first) that are still empty; one that is not keeps those above it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # (not there, or something was put into it meanwhile)
            if folder.exists():
                return


def check_replaceable(path: Path) -> None:
    """A file written through `temporary_beside` replaces what is at `path`: never a device or a named pipe
    (`nmt average --force` made /dev/full a regular file, as root would /dev/null); a symbolic link is
    replaced, not what it points to."""
    if not path.is_symlink() and path.exists() and not path.is_file() and not path.is_dir():
        raise UserError(f"{path}: not a regular file (a device or a named pipe), which is never replaced; "
                        "write elsewhere")  # fmt: skip


def save_json(cfg: Any, path: Path | str) -> None:
    """Written whole or not at all (a temporary file, then renamed): a run's config.json is rewritten at
    every resume, and a kill in the middle left a torn one."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        tmp.write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        tmp.replace(path)
    except OSError as err:  # (a full disk's failed write names no file)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def load_json(cls: type[C], path: Path | str) -> C:
    path = Path(path)
    try:
        return from_dict(cls, json.loads(path.read_text()), typed=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: not a readable {cls.__name__} ({err})") from None
