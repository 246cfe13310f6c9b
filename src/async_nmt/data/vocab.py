"""The joint sentencepiece vocabulary: train it on both training sides, load it, fingerprint it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import sentencepiece as spm

from async_nmt.config import BOS_ID, EOS_ID, NORMALIZATIONS, PAD_ID, UNK_ID
from async_nmt.errors import UserError, held_interrupts, reason
from async_nmt.progress import ProgressBar

INPUT_SENTENCE_SIZE = 2_000_000  # sentences sampled (shuffled) for training; enough for a joint 32k model
SPM_MAX_SENTENCE_LENGTH = 4192  # sentencepiece's default limit, in bytes
# the largest --vocab-size: sentencepiece's unigram trainer never ends above 2^31 / 1.1 pieces (it aims at 1.1
# times the size, an int that overflows), and one of a billion pieces is none that a model embeds
MAX_VOCAB_SIZE = 2**30


def train_vocab(
    files: list[Path], prefix: Path, vocab_size: int, model_type: str = "unigram", longest_line: int = 0,
    progress: bool = False, normalization: str = "nmt_nfkc",
) -> Path:  # fmt: skip
    """Train a joint sentencepiece model on `files`; write `prefix.model` and `prefix.vocab`.

    Ids are fixed: pad=0, unk=1, bos=2, eos=3. The size is a soft limit (`hard_vocab_limit=False`), so a
    tiny corpus gets a smaller vocabulary instead of an error. `longest_line` (bytes) raises sentencepiece's
    limit on a line's length (4,192 bytes), above which it leaves lines out of training without a word.
    Returns the `.model` path. With `progress`, on a terminal, the time it has taken so far counts up
    (sentencepiece says nothing, for minutes on a large corpus). `normalization` is sentencepiece's rule
    (`NORMALIZATIONS`), which the model holds and applies when it encodes.
    """
    if normalization not in NORMALIZATIONS:
        raise UserError(f"--normalization {normalization}: not one of {', '.join(NORMALIZATIONS)}")
    if vocab_size < 8:
        raise UserError(f"--vocab-size {vocab_size} is too small: it needs at least 8 pieces, and one for each "
                        "character of the training text")  # fmt: skip
    if vocab_size > MAX_VOCAB_SIZE:  # (2,000,000,000 trained for ever, where a Ctrl-C stopped it)
        raise UserError(f"--vocab-size {vocab_size} is too large: at most {MAX_VOCAB_SIZE:,} (2^30) pieces")
    for f in files:
        if not Path(f).is_file():
            raise UserError(f"{f}: no such file")
    prefix = Path(prefix)
    options = dict(
        input=[str(f) for f in files],
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        normalization_rule_name=normalization,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=2,
        input_sentence_size=INPUT_SENTENCE_SIZE,
        shuffle_input_sentence=True,
        max_sentence_length=max(SPM_MAX_SENTENCE_LENGTH, longest_line + 1),
        minloglevel=2,
    )
    error = _train_in_child(options, progress)
    if error is not None:
        what = f"sentencepiece could not train a {model_type} vocabulary of {vocab_size}"
        raise UserError(f"{what}: {_spm_reason(RuntimeError(error))}")
    model = prefix.with_name(prefix.name + ".model")
    if not model.is_file():
        raise UserError(f"sentencepiece wrote no model at {model}")
    return model


def _train_in_child(options: dict[str, Any], progress: bool = False) -> str | None:
    """Run sentencepiece's trainer in a child process; its error message, or None. Ctrl-C (or SIGTERM) stops
    it at once: the trainer runs in C++ for minutes on a large corpus, where this process would see the
    signal only when it returned. The child is a fresh interpreter running `_CHILD` (not multiprocessing,
    whose children re-import the main module, which a script read from stdin does not have, and which a
    daemonic process may not start); it ends if this process dies (kill -9), and ignores Ctrl-C."""
    with tempfile.TemporaryFile() as stderr:
        child, held = _start_holding_interrupts([sys.executable, "-c", _CHILD, str(os.getpid())], stderr)
        try:
            if held:
                raise KeyboardInterrupt
            out = _wait_counting(child, json.dumps(options).encode(), progress)  # (a Ctrl-C arrives here)
        except BaseException:
            child.kill()
            child.wait()
            raise
        try:  # (the child's last line: a library may print before it)
            return json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            stderr.seek(0)
            said = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()]
            return f"its process ended with exit code {child.returncode}" + (f": {said[-1]}" if said else "")


def _start_holding_interrupts(args: list[str], stderr: Any) -> tuple[subprocess.Popen, bool]:
    """The child process started, and whether a Ctrl-C (or SIGTERM) came meanwhile: it is held until the
    child is known, so that the caller stops it (one between its fork and Popen's return left it training,
    its parent gone)."""
    with held_interrupts() as caught:
        child = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    return child, bool(caught)


def _wait_counting(child: subprocess.Popen, payload: bytes, progress: bool) -> bytes:
    """`child`'s output once it ends, `payload` sent to its stdin; meanwhile, with `progress` on a terminal,
    the time it has taken counts up on stderr. (The payload is written whole first: a `communicate` that
    timed out before it wrote, retried without input, never sent it, and the child waited for it forever.)"""
    try:  # (a few hundred bytes, which the child reads whole first; communicate then closes its stdin)
        child.stdin.write(payload)
        child.stdin.flush()
    except BrokenPipeError:  # the child is gone already: its output says why
        pass
    with ProgressBar(desc="training the vocabulary", bar_format="{desc}: {elapsed}", leave=False,
                     disable=None if progress else True) as bar:  # fmt: skip
        while True:
            try:
                return child.communicate(timeout=1.0)[0]
            except subprocess.TimeoutExpired:
                bar.refresh()


# The child: train with the options read from stdin, print the error's message or null as JSON. A thread
# ends it when its parent (whose pid is its argument) is gone; the trainer holds no Python lock meanwhile.
_CHILD = """
import json, os, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)
threading.Thread(target=watch, daemon=True).start()
import sentencepiece as spm
try:
    spm.SentencePieceTrainer.train(**json.load(sys.stdin))
except (RuntimeError, OSError) as err:
    print(json.dumps(str(err)))
else:
    print(json.dumps(None))
"""


def _spm_reason(err: BaseException) -> str:
    """sentencepiece's error without the source location and failed condition it starts with
    ("INTERNAL: src/trainer_interface.cc(638) [...] "), and its commonest ones in our words."""
    text = re.sub(r"^[A-Z_]+: \S+\(\d+\) \[.*?\] ?", "", " ".join(str(err).split()))
    if chars := re.search(r"required_chars\. (\d+) vs (\d+)", text):
        return (f"it needs at least {chars[2]} pieces, one for each character of the training text and the "
                "special ones: use a larger --vocab-size")  # fmt: skip
    if "sentences_.empty()" in str(err):
        return "the training text has no sentences"
    return reason(RuntimeError(text or str(err)))


def load_vocab(path: Path) -> spm.SentencePieceProcessor:
    """Load a sentencepiece model (UserError if it is missing or not a model)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such sentencepiece model")
    # read here, not by sentencepiece, which takes the file's name as a str only: a folder's name that is not
    # UTF-8 (run\xff/spm.model, which `nmt report` reads) was a TypeError, a traceback
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(data)
    except RuntimeError as err:
        why = "sentencepiece could not parse it" if "Parse" in str(err) else reason(err)
        raise UserError(f"{path}: not a sentencepiece model ({why if data else 'an empty file'})") from None
    return sp


def vocab_hash(vocab: Path | spm.SentencePieceProcessor) -> str:
    """The first 16 hex digits of a sha256 over a vocabulary (a model file, or one loaded): each piece, its
    score and its kind (normal, control, unknown, unused, byte), in id order. It ties checkpoints and corpora
    to their vocabulary. Not a hash of the file: sentencepiece writes its training options into the model,
    among them the paths of its input and of the temporary folder `preprocess` trains in, so the same
    vocabulary made twice hashed differently, and a run could not resume on its corpus preprocessed again.
    """
    sp = vocab if isinstance(vocab, spm.SentencePieceProcessor) else load_vocab(vocab)
    digest = hashlib.sha256()
    kinds = (sp.is_control, sp.is_unknown, sp.is_unused, sp.is_byte)
    for i in range(sp.get_piece_size()):
        kind = "".join("1" if is_kind(i) else "0" for is_kind in kinds)
        digest.update(f"{sp.id_to_piece(i)}\t{sp.get_score(i)!r}\t{kind}\n".encode())
    return digest.hexdigest()[:16]


# text that each of sentencepiece's rules (--normalization) makes into another string: full-width letters, a
# ligature, a circled digit, half-width kana, a no-break, an ideographic and a zero-width space, control
# characters, upper case, and spaces doubled and around it
NORMALIZATION_PROBE = "  Ｄｅｒ  ﬁ ①\u00a0x ﾊﾟ\u200b\u3000y\x07z\u2028  "


def normalizes_alike(a: spm.SentencePieceProcessor, b: spm.SentencePieceProcessor) -> bool:
    """Whether two vocabularies normalize text alike. `vocab_hash`, over the pieces alone, is the same for a
    vocabulary made with another --normalization (on text where the rules agree), which tokenizes otherwise."""
    return a.normalize(NORMALIZATION_PROBE) == b.normalize(NORMALIZATION_PROBE)


def vocab_matches(sp: spm.SentencePieceProcessor, path: Path, recorded: str) -> bool:
    """Whether `recorded` is the `vocab_hash` of `sp`, loaded from `path`, or the hash of that file, which
    corpora preprocessed before 2026-12-05 recorded (the first 16 hex digits of its sha256)."""
    if recorded == vocab_hash(sp):
        return True
    try:
        return recorded == hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
