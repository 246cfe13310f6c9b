"""Batch translation: sentencepiece in, length-sorted token-budget batches through search, input order out."""

from __future__ import annotations

import contextlib
import io
import math
import os
import select
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import sentencepiece as spm
import torch
from torch import Tensor

from async_nmt.config import MAX_BEAM, UNK_ID, Precision, temporary_beside
from async_nmt.data.batches import round_up
from async_nmt.devices import amp_dtype_for, out_of_memory, resolve_device
from async_nmt.errors import (
    OutOfMemory,
    UserError,
    briefly,
    cannot_write,
    check_line_ends,
    check_not_unmarked_utf16,
    drop_stdout,
    lone_returns,
    not_utf8,
    sigterm_interrupts,
)
from async_nmt.model.checkpoint import check_translation_output, load_model
from async_nmt.model.search import Scored, beam_search, cast_for_search, generate, release_capture_pool
from async_nmt.model.transformer import Transformer
from async_nmt.progress import ProgressBar
from async_nmt.score import decode_lines, read_bytes, read_stdin


def _padded(length: int, max_width: int) -> int:
    """Padded as in training: source lengths from a small set of shapes."""
    return min(round_up(length), max_width)


def _batches(order: list[int], lengths: list[int], max_tokens: int, max_width: int) -> list[list[int]]:
    """Cut `order` (indices, longest first) into batches whose padded size fits `max_tokens`."""
    batches: list[list[int]] = []
    for i in order:
        if batches and _padded(lengths[batches[-1][0]], max_width) * (len(batches[-1]) + 1) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class OutOfMemoryAdvice:
    """What a search that runs the device out of memory tells the user to do, in the options of the command that
    translates (`nmt translate`'s by default): where a batch is searched again in halves (a warning), and where
    one sentence alone does it (the error)."""

    halving: str = "a smaller --max-tokens avoids this"
    one_sentence: str = "try a smaller --beam or --max-len-a, or another --device"


def translate_lines(
    model: Transformer,
    sp: spm.SentencePieceProcessor,
    lines: list[str],
    *,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    max_tokens: int = 4000,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int], object] | None = None,
    fixed_shapes: bool = False,
    first_line: int = 1,
    unknown: UnknownInput | None = None,
    notices: Counter[str] | None = None,
    nbest: int = 0,
    name: str | None = None,
    advice: OutOfMemoryAdvice = OutOfMemoryAdvice(),
) -> list[str]:
    """Translate `lines` (detokenized text) in order; empty lines stay empty without reaching the model, as do
    lines of no pieces (a zero-width space, a control character: preprocess drops them as empty; the model
    made a sentence up from nothing for them). `amp_dtype` autocasts the search (None: fp32); `progress` is
    called with the number of lines done, as they are done; `fixed_shapes`: see `search.beam_search`;
    `first_line`: the input line number of `lines[0]`, for messages; `unknown` counts the input's unknown
    pieces; `notices`, `name` and `advice`: see `translate_ids`. With `nbest`, each line's output is its n-best
    list (`nbest_lines`) instead of its translation."""
    outputs = [""] * len(lines)
    if nbest:
        outputs = [nbest_lines(first_line - 1 + i, [(0.0, 0.0, "")]) for i in range(len(lines))]
    todo = [i for i, line in enumerate(lines) if line.strip()]
    encoded = sp.encode([lines[i] for i in todo]) if todo else []
    todo, sources = [i for i, ids in zip(todo, encoded, strict=True) if ids], [ids for ids in encoded if ids]
    if progress is not None and len(todo) < len(lines):
        progress(len(lines) - len(todo))  # the empty lines are done
    if not todo:
        return outputs
    if unknown is not None:
        unknown.add(sources)
    hyps = translate_ids(
        model,
        sources,
        beam=beam,
        lenpen=lenpen,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        max_tokens=max_tokens,
        device=device,
        amp_dtype=amp_dtype,
        progress=progress,
        fixed_shapes=fixed_shapes,
        line_numbers=[first_line + i for i in todo],
        notices=notices,
        nbest=nbest,
        name=name,
        advice=advice,
    )
    if nbest:
        for i, scored in zip(todo, hyps, strict=True):
            texts = [one_line(text) for text in sp.decode([ids for _, ids in scored])] if scored else []
            # (the log-probability: the score times the length**lenpen it was divided by, eos counted)
            entries = [(score, score * (len(ids) + 1) ** lenpen, text)
                       for (score, ids), text in zip(scored, texts, strict=True)]  # fmt: skip
            outputs[i] = nbest_lines(first_line - 1 + i, entries)
        return outputs
    for i, text in zip(todo, sp.decode(hyps), strict=True):
        outputs[i] = one_line(text)
    return outputs


# the characters that end a line to some reader (Python's str.splitlines, universal newlines): a vocabulary
# made with --normalization identity or nfkc keeps those of its training text (NEL, U+2028) as pieces
LINE_BREAKS = str.maketrans(dict.fromkeys("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029", " "))


def one_line(text: str) -> str:
    """A translation as one line to any reader: each character that may end a line a space."""
    return text.translate(LINE_BREAKS)


NBEST_SEPARATOR = " ||| "


def nbest_lines(line: int, scored: list[tuple[float, float, str]]) -> str:
    """An input line's n-best list as Moses and Marian write one: a line `LINE ||| TRANSLATION ||| F0= LOGPROB
    ||| SCORE` for each (score, log-probability, translation) of `scored`, best first (LINE counts the input's
    lines from 0; the third field holds the features, here the one, the log-probability, as Marian's F0 of one
    model), joined by newlines. (The features' field was missing, and Moses's and Marian's readers took the
    score for the features.) An empty line has one empty hypothesis of score 0, and so, scored -inf, has a
    sentence that finished none."""
    scored = scored or [(-math.inf, -math.inf, "")]
    return "\n".join(f"{line}{NBEST_SEPARATOR}{text}{NBEST_SEPARATOR}F0= {logprob:.4f}{NBEST_SEPARATOR}{score:.4f}"
                     for score, logprob, text in scored)  # fmt: skip


class UnknownInput:
    """Counts the input's pieces that the vocabulary does not know (<unk>), and warns once when they are
    most of it: the input is likely in another language than the model's source, or another script."""

    SHARE = 0.5  # of the pieces read so far (but word boundaries alone)

    def __init__(self, sp: spm.SentencePieceProcessor) -> None:
        self.space = sp.piece_to_id("\u2581")  # a word boundary alone, before a word it does not know
        self.pieces = self.unknown = 0
        self.warned = False

    def add(self, sources: list[list[int]]) -> None:
        self.pieces += sum(len(s) - s.count(self.space) for s in sources)
        self.unknown += sum(s.count(UNK_ID) for s in sources)
        if not self.warned and self.unknown > self.SHARE * self.pieces:
            self.warned = True
            print(f"warning: {self.unknown / self.pieces:.0%} of the input's pieces are unknown to the model's "
                  "vocabulary (<unk>): is the input in its source language?", file=sys.stderr)  # fmt: skip


def translate_ids(
    model: Transformer,
    sources: list[list[int]],
    *,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    max_tokens: int = 4000,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: Callable[[int], object] | None = None,
    use_cache: bool = True,
    fixed_shapes: bool = False,
    line_numbers: list[int] | None = None,
    notices: Counter[str] | None = None,
    nbest: int = 0,
    name: str | None = None,
    advice: OutOfMemoryAdvice = OutOfMemoryAdvice(),
) -> list[list[int]] | list[list[Scored]]:
    """Translate token-id sentences (no eos) in order: truncate, sort by length, batch, search, restore.
    `progress` is called with the number of sentences of each batch done; `line_numbers`: the input line
    of each sentence, for messages (default: 1, 2, ...); `notices`: how often each warning's cause came so
    far; a warning is given the first time only (a command that translates its input a window at a time
    warns once, and `translate_file` sums up at the end); `name`, where given, names the input in them (a
    validation's valid.LANG); `advice`: what its messages of running the device out of memory tell the user
    to do, in the options of the command that translates. With `nbest`, each sentence's
    n-best list of a beam search (`search.beam_search`; at `beam` 1 too) instead of its output."""
    cfg = model.cfg
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    limit = cfg.max_positions - 1  # source tokens before eos
    notices = Counter() if notices is None else notices
    truncated = [i for i, x in enumerate(sources) if len(x) > limit]
    if truncated and not notices["truncated"]:
        numbers = [line_numbers[i] if line_numbers else i + 1 for i in truncated]
        shown = briefly([str(number) for number in numbers], 10)
        where = f"{name}: " if name else ""
        print(f"warning: {where}line{'s' if len(numbers) > 1 else ''} {shown}: longer than the model's {limit} "
              "tokens, truncated", file=sys.stderr)  # fmt: skip
        notices["truncated_named"] = len(numbers)
    notices["truncated"] += len(truncated)
    ids = [list(x[:limit]) + [cfg.eos_id] for x in sources]
    lengths = [len(x) for x in ids]
    order = sorted(range(len(ids)), key=lambda i: -lengths[i])  # longest first: memory trouble shows at once
    outputs: list = [[] for _ in ids]

    kwargs = dict(lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b, use_cache=use_cache,
                  amp_dtype=amp_dtype, fixed_shapes=fixed_shapes)  # fmt: skip

    def search(batch: list[int]) -> list:
        """Search `batch` (indices, longest first); a batch that runs the device out of memory is searched
        again in halves, down to one sentence."""
        try:
            src = _source_tensor(batch, ids, cfg.pad_id, cfg.max_positions, device)
            if nbest:
                return beam_search(model, src, beam=beam, nbest=nbest, **kwargs)
            return generate(model, src, beam, **kwargs)
        except RuntimeError as err:  # (leaving the handler drops the frames that hold the batch's tensors)
            if not out_of_memory(err):
                raise
        if device.type == "cuda":
            release_capture_pool()  # (what the captures hold: the cache's emptying skips a live pool)
            torch.cuda.empty_cache()
        if len(batch) == 1:
            raise OutOfMemory(
                f"{device} ran out of memory translating one sentence of {lengths[batch[0]]} tokens with beam "
                f"{beam}; {advice.one_sentence}"
            )
        if not notices["halved"]:
            print(
                f"warning: {device} ran out of memory translating {len(batch)} sentences at once; translating "
                f"such batches in halves ({advice.halving})",
                file=sys.stderr,
            )
        notices["halved"] += 1
        half = (len(batch) + 1) // 2
        return search(batch[:half]) + search(batch[half:])

    was_training = model.training
    model.eval()
    try:
        for batch in _batches(order, lengths, max_tokens, cfg.max_positions):
            for i, hyp in zip(batch, search(batch), strict=True):
                outputs[i] = hyp
            if progress is not None:
                progress(len(batch))
    finally:
        model.train(was_training)
    return outputs


def _source_tensor(batch: list[int], ids: list[list[int]], pad_id: int, max_width: int, device: torch.device) -> Tensor:
    """The sentences `batch` (indices into `ids`, longest first) as a right-padded [B, S] tensor on `device`."""
    lengths = np.array([len(ids[i]) for i in batch])
    width = _padded(int(lengths[0]), max_width)
    src_np = np.full((len(batch), width), pad_id, dtype=np.int64)
    src_np[np.arange(width) < lengths[:, None]] = np.concatenate([ids[i] for i in batch])  # row by row, in order
    src = torch.from_numpy(src_np)
    if device.type == "cuda":
        src = src.pin_memory()
    return src.to(device, non_blocking=True)


# A score, log-probability / length**lenpen, is computed in fp32: 256 positions**16 is inf there, and a
# hypothesis' score over it -0.0, the best of any. Within +-10, lengths up to 1,024 positions (the presets
# have 256) and log-probabilities of -1e-6 to -1e5 give normal, nonzero scores.
MAX_LENPEN = 10.0


def check_options(beam: int, lenpen: float, max_len_a: float, max_len_b: int, max_tokens: int, nbest: int = 0) -> None:
    if not 1 <= beam <= MAX_BEAM:
        raise UserError(f"--beam must be 1 to {MAX_BEAM:,} (got {beam})")
    if nbest < 0:
        raise UserError(f"--nbest must not be negative (got {nbest})")
    if nbest > beam:  # (as fairseq: the list is drawn from the beam's finished hypotheses)
        raise UserError(f"--nbest {nbest} is more than --beam {beam}: the n-best list is drawn from the beam's "
                        f"finished hypotheses; give --beam {nbest} or more")  # fmt: skip
    if not -MAX_LENPEN <= lenpen <= MAX_LENPEN:  # (nan and inf too)
        raise UserError(f"--lenpen must be {-MAX_LENPEN:g} to {MAX_LENPEN:g} (got {lenpen:g}): beyond, length**lenpen "
                        "overflows")  # fmt: skip
    if math.isnan(max_len_a):  # (inf: up to the model's positions)
        raise UserError("--max-len-a must be a number (got nan)")
    if max_len_a < 0 or max_len_b < 0:
        raise UserError(f"--max-len-a and --max-len-b must not be negative (got {max_len_a}, {max_len_b})")
    if max_len_a == max_len_b == 0:  # (every line was empty, exit code 0)
        raise UserError("--max-len-a 0 and --max-len-b 0 leave no room for an output token: give one above 0")
    if max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1 (got {max_tokens})")


STDIO = "-"  # --input - / --output -: stdin / stdout, as sacreBLEU and fairseq take it


BOM = "\ufeff"  # a byte order mark (Windows editors write one) is no part of the first sentence


def read_input(path: Path | None) -> list[str]:
    """The lines to translate: of `path`, or of stdin where it is None or `-`."""
    if path is not None and str(path) != STDIO:
        data = read_bytes(path)
    elif sys.stdin is None:
        raise UserError("stdin is closed; give the source with --input")
    else:
        data = read_stdin()
    lines = decode_lines(data, "stdin" if path is None or str(path) == STDIO else str(path))
    if lines:
        lines[0] = lines[0].removeprefix(BOM)
    return [] if data == BOM.encode() else lines  # (a BOM alone: no line, as no text)


WINDOW = 10_000  # lines read, translated and written at a time, by default, from anything but a terminal
PIPE_PAUSE_S = 0.05  # a pipe that gives nothing for this long has paused: what came is translated (fewer lines)
PIPE_READ = 1 << 16  # bytes read from a pipe at a time (what it holds, on Linux)
PAUSE = None  # `_lines_as_they_come`: the writer has paused
CHECK_BLOCK = 1 << 24  # bytes `checked_lines` reads at a time


def check_not_the_input(output_path: Path | None, input_path: Path | None) -> None:
    """The output file is not the input: named (`-i`, a link to it too) or as stdin (`< FILE`, which
    `-o FILE` replaced with the translations without a word, the source lost); nor is stdout, where the
    output goes there (`-i FILE >> FILE` read the translations back as input, a window at a time, and
    translated them again without end; `> FILE` had emptied the input, and the output was empty)."""
    to_stdout = output_path is None or str(output_path) == STDIO
    from_stdin = input_path is None or str(input_path) == STDIO
    try:
        if (to_stdout and sys.stdout is None) or (from_stdin and sys.stdin is None):
            return
        out = os.fstat(sys.stdout.fileno()) if to_stdout else os.stat(output_path)  # type: ignore[arg-type]
        if not stat.S_ISREG(out.st_mode):  # (a terminal may be stdin and the output both)
            return
        source = os.fstat(sys.stdin.fileno()) if from_stdin else os.stat(input_path)  # type: ignore[arg-type]
    except (OSError, io.UnsupportedOperation, ValueError, AttributeError):  # (no such file yet; no file number)
        return
    if (out.st_dev, out.st_ino) != (source.st_dev, source.st_ino):
        return
    if to_stdout:
        raise UserError(f"stdout: the file it reads ({'stdin' if from_stdin else input_path}); write the "
                        "translations elsewhere")  # fmt: skip
    raise UserError(f"{output_path}: the output would replace {'stdin' if from_stdin else 'the input'}; write it "
                    "elsewhere")  # fmt: skip


def checked_lines(path: Path | None) -> int | None:
    """The lines of `path` (stdin where it is None or `-`) from where reading starts, where it is a regular
    file (`< FILE` too), each checked to be UTF-8: a line that is not is a UserError before anything is
    translated (read a window at a time, it failed only after the windows before it, hours of work that an
    output file then lost). None for a pipe or a terminal (unknown until read, and checked as read) and for
    a file that cannot be read (`input_chunks` says why). The file is read for it, but never moved."""
    try:
        if path is None or str(path) == STDIO:
            if sys.stdin is None:
                return None
            return _regular_file_lines(sys.stdin.fileno(), "stdin")
        if not Path(path).is_file():  # (opening a named pipe would wait for its writer)
            return None
        with open(path, "rb") as f:
            return _regular_file_lines(f.fileno(), str(path))
    except (OSError, io.UnsupportedOperation):  # (a stdin without a file number, as in tests)
        return None


def _regular_file_lines(fd: int, name: str) -> int | None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return None
    count, returns, offset, rest = 0, 0, os.lseek(fd, 0, os.SEEK_CUR), b""
    while True:
        block = os.pread(fd, CHECK_BLOCK, offset)
        offset += len(block)
        data = rest + block
        cut = data.rfind(b"\n") + 1 if block else len(data)  # whole lines; at the end, the last without its newline
        lines, rest = data[:cut], data[cut:]
        try:
            lines.decode("utf-8")
        except UnicodeDecodeError as err:
            number = count + lines.count(b"\n", 0, err.start) + 1
            raise not_utf8(name, number, lines if count == 0 else b"") from None
        if count == 0:
            check_not_unmarked_utf16(name, lines)
        count += lines.count(b"\n")
        returns += lone_returns(lines)  # (whole lines: no \r\n is cut in two)
        if not block:
            # (the last line without its newline; a BOM alone is none, as `input_chunks` reads it)
            unended = not lines.endswith(b"\n") and len(lines) > 0 and not (count == 0 and lines == BOM.encode())
            total = count + unended
            check_line_ends(name, total, count, returns)
            return total


def input_chunks(path: Path | None, chunk_size: int, checked: bool = False) -> Iterator[list[str]]:
    """The lines to translate (of `path`, or of stdin where it is None or `-`), `chunk_size` at a time as
    they are read; 0: all of them at once. `checked`: the line ends were checked already (`checked_lines`)."""
    if chunk_size == 0:
        yield read_input(path)
        return
    from_file = path is not None and str(path) != STDIO
    if from_file:
        try:
            stream, name = open(path, "rb"), str(path)  # noqa: SIM115 (closed below)
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except OSError as err:
            raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    elif sys.stdin is None:
        raise UserError("stdin is closed; give the source with --input")
    else:
        stream, name = sys.stdin.buffer, "stdin"
    with stream if from_file else contextlib.nullcontext():
        lines: list[str] = []
        newlines = returns = 0  # so far (a pipe: a regular file was checked whole, `checked_lines`)
        fd = _pipe_fd(stream)
        number = 0
        for raw in iter(stream) if fd is None else _lines_as_they_come(fd):
            if raw is PAUSE:
                if lines:
                    if not checked:
                        check_line_ends(name, number, newlines, returns)
                    yield lines
                    lines = []
                continue
            if number == 0 and raw == BOM.encode():  # a BOM alone, the whole input: no line, as no text
                continue
            number += 1
            try:
                line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
                lines.append(line.removeprefix(BOM) if number == 1 else line)
            except UnicodeDecodeError:
                raise not_utf8(name, number, raw if number == 1 else b"") from None
            if number == 1:
                check_not_unmarked_utf16(name, raw)
            newlines, returns = newlines + raw.endswith(b"\n"), returns + lone_returns(raw)
            if len(lines) == chunk_size:
                if not checked:
                    check_line_ends(name, number, newlines, returns)
                yield lines
                lines = []
        if lines:
            if not checked:
                check_line_ends(name, number, newlines, returns)
            yield lines


def _pipe_fd(stream: object) -> int | None:
    """The file number of `stream` where it is a pipe or a socket (read by `_lines_as_they_come`), else None."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        mode = os.fstat(fd).st_mode
    except (OSError, AttributeError, io.UnsupportedOperation, ValueError):  # (a stdin without a file number)
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def _lines_as_they_come(fd: int) -> Iterator[bytes | None]:
    """The lines of the pipe `fd` (with their newline; the last may have none), and PAUSE (None) where the
    writer pauses (nothing comes within `PIPE_PAUSE_S`), so that what has come is translated and written
    then, not when the window fills or the pipe closes. (A script that sends a line and waits for its
    translation waited for ever: a pipe's lines were translated 10,000 at a time.) A pipe that a fast
    writer keeps full (`cat FILE |`) gives no pause, and whole windows. A line's pieces are joined once,
    where it ends."""
    pieces: list[bytes] = []  # of the line under way
    while True:
        if not select.select([fd], [], [], PIPE_PAUSE_S)[0]:
            yield PAUSE
        data = _read_waiting(fd)
        if not data:
            break
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pieces.append(data[start : end + 1])
            yield b"".join(pieces)
            pieces, start = [], end + 1
        if start < len(data):
            pieces.append(data[start:])
    if pieces:
        yield b"".join(pieces)


def _read_waiting(fd: int) -> bytes:
    """What the pipe `fd` holds (b"" at its end), waiting for it where it is empty, a non-blocking one too."""
    while True:
        try:
            return os.read(fd, PIPE_READ)
        except BlockingIOError:  # (O_NONBLOCK, set by whoever shares the pipe: "Resource temporarily unavailable")
            select.select([fd], [], [])


class ReaderGone(Exception):
    """Whoever read stdout stopped reading (`| head`): the command ends quietly, as `cat` does."""


@contextlib.contextmanager
def output_writer(path: Path | None) -> Iterator[Callable[[str], None]]:
    """A function that writes text to `path` at once (flushed), or to stdout where `path` is None or `-`, as
    UTF-8 whatever the locale. A file is written through a temporary file in the same folder, which
    replaces it when the block ends without an error: `path` is never half-written. Anything else is
    written into as `>` would write into it, never replaced: a symbolic link (its target gets the text), a
    device such as /dev/null or /dev/stdout, a named pipe."""
    if path is None or str(path) == STDIO:
        if sys.stdout is None:
            raise UserError("stdout is closed; name an output file with --output")
        yield _stdout_write
        return
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an output file")
    into = path.is_symlink() or (path.exists() and not path.is_file())
    if not into and path.is_file() and not os.access(path, os.W_OK):  # (the rename below would replace it)
        raise UserError(f"{path}: cannot write (Permission denied), as > could not")
    target = path if into else temporary_beside(path)
    try:
        f = open(target, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed below)
    except OSError as err:
        where = "" if into else f" a file in {path.parent}"
        raise UserError(f"{path}: cannot write{where} ({err.strerror or err})") from None

    if not into and path.is_file():  # the text takes the read and write permissions of the file it replaces
        with contextlib.suppress(OSError):  # (`>` keeps the file itself; never its setuid bits on text)
            os.chmod(target, path.stat().st_mode & 0o777)

    def write(text: str) -> None:
        f.write(text)
        f.flush()

    try:
        with f:
            yield write
        if not into:
            os.replace(target, path)
    except OSError as err:  # a full disk: an error of the system (exit code 1), named by `path`
        if not into:
            target.unlink(missing_ok=True)
        raise cannot_write(err, str(path)) from None
    except BaseException:
        if not into:
            target.unlink(missing_ok=True)
        raise


def _stdout_write(text: str) -> None:
    try:
        out = getattr(sys.stdout, "buffer", None)  # bytes, so the locale cannot change the encoding
        if out is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            sys.stdout.flush()
            _write_all(out, text.encode("utf-8"))
    except BrokenPipeError:
        drop_stdout()  # nothing more reaches the closed pipe
        raise ReaderGone from None
    except OSError as err:
        raise cannot_write(err, "stdout") from None


def _write_all(out: BinaryIO, data: bytes) -> None:
    """Write all of `data` to the binary stream `out` (stdout's), and flush it, waiting where a pipe is full.
    A raw stream (PYTHONUNBUFFERED, `python -u`) takes what fits and says how much, and a pipe that another
    program sharing it made non-blocking (O_NONBLOCK) takes nothing while it is full: a buffered stream
    raises BlockingIOError then. The rest was lost: without a word, exit code 0, unbuffered
    (324 of 5,035 lines reached a slow reader); `error: stdout: cannot write`, buffered."""
    view = memoryview(data)
    while True:
        try:
            written = out.write(view) if view else 0
            view = view[written or 0 :]  # (None: a raw stream that took nothing)
            if not view:
                out.flush()
                return
        except BlockingIOError as err:  # (buffered: it took `characters_written` bytes, into its buffer)
            view = view[err.characters_written :]
        with contextlib.suppress(OSError, ValueError):  # (a stream without a file number does not block)
            select.select([], [out.fileno()], [])


def default_max_tokens(device: torch.device) -> int:
    """Source tokens per translation batch: 4000 on the CPU; 16000 on a GPU, where a decoding step costs
    the host about the same whatever the batch, so larger batches spread that cost (issue 8's H200
    figures were taken at 16000)."""
    return 16000 if device.type == "cuda" else 4000


def translate_file(
    model_path: Path,
    input_path: Path | None,
    output_path: Path | None,
    *,
    beam: int = 5,
    lenpen: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    max_tokens: int | None = None,
    checkpoint: str | None = None,
    average: int = 0,
    device: str | None = None,
    precision: Precision = "auto",
    cuda_graphs: bool = False,
    chunk_size: int | None = 0,
    nbest: int = 0,
) -> None:
    """`nmt translate`: lines of `input_path` (stdin if None or `-`) -> `output_path` (stdout if None or `-`);
    `max_tokens` None: `default_max_tokens` of the device; `cuda_graphs`: search with fixed shapes
    (`search.greedy_search`, `search.beam_search`), which on CUDA replays each step as a CUDA graph;
    `chunk_size` lines are translated and written at a time (0: all at once; None: 1 from a terminal, where a
    person types, else `WINDOW`, which bounds the memory a long input takes and writes output as it goes);
    `nbest`: each line's n-best list instead of its translation (`nbest_lines`)."""
    torch_device = resolve_device(device, "--device")
    max_tokens = default_max_tokens(torch_device) if max_tokens is None else max_tokens
    check_options(beam, lenpen, max_len_a, max_len_b, max_tokens, nbest)
    check_not_the_input(output_path, input_path)
    if output_path is not None and str(output_path) != STDIO:
        check_translation_output(Path(output_path), Path(model_path))
    reading_stdin = input_path is None or str(input_path) == STDIO
    typed = reading_stdin and sys.stdin is not None and sys.stdin.isatty()  # by a person, line by line
    if chunk_size is None:
        chunk_size = 1 if typed else WINDOW
    if chunk_size < 0:
        raise UserError(f"--chunk-size must not be negative (got {chunk_size})")
    if average < 0:
        raise UserError("--average must not be negative")
    if average and checkpoint is not None:
        raise UserError(f"--average {average} translates with a mean of kept checkpoints; --checkpoint "
                        f"{checkpoint} names one: give one of them")  # fmt: skip
    total = checked_lines(input_path) if chunk_size else None  # (read whole, the input is checked as it is read)
    model, sp = load_model(Path(model_path), checkpoint, torch_device, average=average)
    amp_dtype = amp_dtype_for(precision, torch_device)
    cast_for_search(model, amp_dtype)
    options = dict(beam=beam, lenpen=lenpen, max_len_a=max_len_a, max_len_b=max_len_b, max_tokens=max_tokens,
                   amp_dtype=amp_dtype, fixed_shapes=cuda_graphs, nbest=nbest)  # fmt: skip
    # SIGTERM (`kill`, `timeout`) stops it as Ctrl-C does: the output file is left as it was, no temporary
    try:
        with (
            sigterm_interrupts(),
            output_writer(output_path) as write,
            ProgressBar(
                total=total, unit="sent", file=sys.stderr, disable=True if typed and chunk_size else None
            ) as bar,
        ):
            first_line, unknown, notices = 1, UnknownInput(sp), Counter[str]()
            for lines in input_chunks(input_path, chunk_size, checked=total is not None):
                if bar.total is None and chunk_size == 0:  # stdin, read whole
                    bar.total = len(lines)
                    bar.refresh()
                hyps = translate_lines(model, sp, lines, progress=bar.update, first_line=first_line,
                                       unknown=unknown, notices=notices, **options)  # type: ignore[arg-type]  # fmt: skip
                bar.clear()  # (stdout may be the terminal the bar is drawn on)
                write("".join(hyp + "\n" for hyp in hyps))
                bar.refresh()
                first_line += len(lines)
        if notices["truncated"] > notices["truncated_named"]:  # (later windows' lines were counted, not named)
            print(f"warning: {notices['truncated']:,} lines in all were longer than the model's "
                  f"{model.cfg.max_positions - 1} tokens, and truncated", file=sys.stderr)  # fmt: skip
    except ReaderGone:
        return
