"""The joint sentencepiece vocabulary: train it on both training sides, load it, fingerprint it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import sentencepiece as spm

from async_nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from async_nmt.errors import UserError, reason

INPUT_SENTENCE_SIZE = 2_000_000  # sentences sampled (shuffled) for training; enough for a joint 32k model


def train_vocab(files: list[Path], prefix: Path, vocab_size: int, model_type: str = "unigram") -> Path:
    """Train a joint sentencepiece model on `files`; write `prefix.model` and `prefix.vocab`.

    Ids are fixed: pad=0, unk=1, bos=2, eos=3. The size is a soft limit (`hard_vocab_limit=False`), so a
    tiny corpus gets a smaller vocabulary instead of an error. Returns the `.model` path.
    """
    if vocab_size < 8:
        raise UserError(f"--vocab-size {vocab_size} is too small (need at least 8)")
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"{f}: no such file")
    prefix = Path(prefix)
    try:
        spm.SentencePieceTrainer.train(
            input=[str(f) for f in files],
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=2,
            input_sentence_size=INPUT_SENTENCE_SIZE,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
    except (RuntimeError, OSError) as err:
        what = f"sentencepiece could not train a {model_type} vocabulary of {vocab_size}"
        raise UserError(f"{what}: {reason(err)}") from None
    model = prefix.with_name(prefix.name + ".model")
    if not model.is_file():
        raise UserError(f"sentencepiece wrote no model at {model}")
    return model


def load_vocab(path: Path) -> spm.SentencePieceProcessor:
    """Load a sentencepiece model (UserError if it is missing or not a model)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such sentencepiece model")
    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        raise UserError(f"{path}: not a sentencepiece model ({reason(err)})") from None


def vocab_hash(path: Path) -> str:
    """The first 16 hex digits of the sha256 of the model file (ties checkpoints to their vocabulary)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
