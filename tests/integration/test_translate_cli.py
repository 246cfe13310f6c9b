"""Batch translation and `nmt translate`: input order, empty lines, truncation, stdin/stdout, errors."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import record_amp_dtypes, run_forked, stdin_that_does_not_block

from async_nmt import translate
from async_nmt.cli import main
from async_nmt.config import EOS_ID, PAD_ID, ModelConfig
from async_nmt.data.vocab import load_vocab, train_vocab
from async_nmt.devices import amp_dtype_for
from async_nmt.errors import UserError
from async_nmt.model.search import cast_for_search
from async_nmt.model.transformer import Transformer
from async_nmt.translate import translate_lines

LINES = [  # words of the synthetic corpus (consonants bdgklmnp), so sentencepiece round-trips them
    "ba de gi ko",
    "",
    "mu na pe ga be di ba de gi ko lu mo ne pi la no",
    "   ",
    "ka",
    "pu ba lo pi ne mo lu ko gi de ba",
    "de de",
    "",
    "ga ke li mo nu pa le mi po bu da ge ki lo mu na pe li no ku ba",
    "bi ke",
]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def sp(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory):
    prefix = tmp_path_factory.mktemp("vocab") / "spm"
    return load_vocab(train_vocab([synthetic_raw / "train.src", synthetic_raw / "train.tgt"], prefix, 200))


def small_model(vocab_size: int, max_positions: int = 64, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab_size,
        d_model=32,
        heads=4,
        enc_layers=1,
        dec_layers=1,
        ff_dim=64,
        max_positions=max_positions,
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # a bigger eos logit, so that outputs end at different lengths
        model.embed.weight[EOS_ID] *= 1.5
    return model


@pytest.fixture(scope="module")
def run_dir(sp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with checkpoints/best.pt of a small random model, written as the trainer writes it."""
    from async_nmt.train.checkpoint import checkpoint_path, save_checkpoint

    model = small_model(sp.get_piece_size())
    run = tmp_path_factory.mktemp("run")
    state = {
        "model_config": asdict(model.cfg),
        "params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
        "vocab_model": sp.serialized_model_proto(),
    }
    save_checkpoint(state, checkpoint_path(run, "best"))
    return run


def identity_search(seen: list[torch.Tensor]):
    """A stand-in for search that 'translates' a sentence into its own source tokens."""

    def generate(model, src, beam, **kwargs):
        seen.append(src.clone())
        return [row[row.ne(PAD_ID)][:-1].tolist() for row in src]

    return generate


def test_translate_lines_keeps_input_order_and_empty_lines(sp, monkeypatch):
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(translate, "generate", identity_search(seen))
    model = small_model(sp.get_piece_size())
    out = translate_lines(model, sp, LINES, beam=3, max_tokens=40)
    assert out == [line if line.strip() else "" for line in LINES]
    assert len(seen) > 2  # several batches
    assert sum(len(src) for src in seen) == sum(bool(line.strip()) for line in LINES)
    for src in seen:
        assert src.size(1) % 8 == 0 and (src.numel() <= 40 or len(src) == 1)
        assert (src.ne(PAD_ID).sum(1) == src.eq(EOS_ID).cumsum(1).argmax(1) + 1).all()  # eos ends each row
    widths = [src.size(1) for src in seen]
    assert widths == sorted(widths, reverse=True)  # sorted by length


def test_a_translation_is_one_line_to_any_reader(tmp_path: Path, monkeypatch):
    """A vocabulary made with `--normalization identity` (or nfkc) keeps the line separators of its training
    text as pieces (NEL, U+2028): a translation holding one was several lines to `str.splitlines` and to
    readers that split there, and its lines no longer paired with the input's."""
    breaks = "\x85\u2028\u2029\x0b\x0c\x1c\x1d\x1e"
    text = tmp_path / "text"
    text.write_text("".join(f"word{i}{breaks[i % len(breaks)]}more words {i}\n" for i in range(400)))
    vocab = load_vocab(train_vocab([text], tmp_path / "spm", 100, normalization="identity"))
    assert all(vocab.decode(vocab.encode(c)) == c for c in breaks)  # (pieces of the vocabulary)
    monkeypatch.setattr(translate, "generate", identity_search([]))
    lines = [f"word1{c}more" for c in breaks]
    model = small_model(vocab.get_piece_size())
    assert translate_lines(model, vocab, lines, beam=2) == ["word1 more"] * len(breaks)

    def scored(model, src, nbest, **kwargs):  # type: ignore[no-untyped-def]
        return [[(0.0, ids)] for ids in identity_search([])(model, src, 2)]

    monkeypatch.setattr(translate, "beam_search", scored)
    nbest = translate_lines(model, vocab, lines, beam=2, nbest=1)
    assert "\n".join(nbest).splitlines() == [
        f"{i} ||| word1 more ||| F0= 0.0000 ||| 0.0000" for i in range(len(breaks))
    ]


def test_empty_input_never_touches_the_model(sp, monkeypatch):
    """Nor do lines of no pieces (a zero-width space, a byte order mark inside the input, control characters),
    which preprocess drops as empty: the model made a sentence up for them from the end of sentence alone."""
    monkeypatch.setattr(translate, "generate", lambda *a, **k: pytest.fail("search was called"))
    model = small_model(sp.get_piece_size())
    blank = ["", "  ", "\t", "\u200b", "\ufeff", "\x01\x02"]
    assert all(sp.encode(line) == [] for line in blank)
    assert translate_lines(model, sp, blank) == [""] * len(blank)
    assert translate_lines(model, sp, []) == []


@pytest.mark.parametrize("chunk_size", ["0", "1"])
def test_a_byte_order_mark_alone_is_no_line(run_dir: Path, tmp_path: Path, chunk_size: str):
    """An empty file saved with a BOM (as Windows editors save "UTF-8 with BOM") gave one empty line where an
    empty file gives none; a BOM and a newline is one line, as `wc -l` counts it."""
    for data, lines in ((b"\xef\xbb\xbf", 0), (b"\xef\xbb\xbf\n", 1), (b"\xef\xbb\xbf\xef\xbb\xbf", 1), (b"", 0)):
        source = tmp_path / "in.txt"
        source.write_bytes(data)
        options = ["translate", str(run_dir), "--beam", "1", "--chunk-size", chunk_size]
        for result in (runner().invoke(main, options, input=data), runner().invoke(main, [*options, "-i", source])):
            assert result.exit_code == 0 and result.stdout.count("\n") == lines, (data, result.output)
    piped = subprocess.run([sys.executable, "-m", "async_nmt.cli", *options], input=b"\xef\xbb\xbf",
                           capture_output=True, timeout=120)  # fmt: skip
    assert (piped.returncode, piped.stdout) == (0, b""), piped.stderr


def test_long_lines_are_truncated_with_one_warning_that_names_them(sp, monkeypatch, capsys):
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(translate, "generate", identity_search(seen))
    model = small_model(sp.get_piece_size(), max_positions=12)
    long = [number for number, line in enumerate(LINES, 1) if len(sp.encode(line)) > 11]
    assert 1 < len(long) < len([line for line in LINES if line.strip()])
    out = translate_lines(model, sp, LINES, max_tokens=24)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: lines {', '.join(map(str, long))}: longer than the model's 11 tokens, truncated"]
    for line, hyp in zip(LINES, out, strict=True):
        ids = sp.encode(line)
        assert hyp == (sp.decode(ids[:11]) if line.strip() else "")
    assert all(src.size(1) <= 12 for src in seen)


@pytest.mark.parametrize("chunk_size", [4, 2, 0])
def test_long_lines_of_a_long_input_are_named_once_and_counted_at_the_end(sp, monkeypatch, capsys, tmp_path: Path,
                                                                          chunk_size: int):  # fmt: skip
    """A window at a time, each window with long lines gave a warning of its own: thousands for a large
    corpus. The first window that has any names its lines (numbered in the whole input, at most 10 of them);
    the end gives the count of all, unless that warning named them all (`--chunk-size 0`, one window)."""
    monkeypatch.setattr(translate, "generate", identity_search([]))
    model = small_model(sp.get_piece_size(), max_positions=12)
    monkeypatch.setattr(translate, "load_model", lambda *args, **kwargs: (model, sp))
    long = [number for number, line in enumerate(LINES, 1) if len(sp.encode(line)) > 11]
    copies = 6
    numbers = [copy * len(LINES) + number for copy in range(copies) for number in long]
    assert len(numbers) > 10
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES * copies) + "\n", encoding="utf-8")
    translate.translate_file(tmp_path / "run", src, tmp_path / "out.txt", beam=1, device="cpu", chunk_size=chunk_size)
    err = capsys.readouterr().err.strip().splitlines()
    if chunk_size:  # the first window with a long line
        window = (numbers[0] - 1) // chunk_size
        named = [number for number in numbers if (number - 1) // chunk_size == window]  # (at 2, the second's)
    else:
        named = numbers
    shown = ", ".join(map(str, named[:10])) + (f" and {len(named) - 10} more" if len(named) > 10 else "")
    warnings = [f"warning: line{'s' if len(named) > 1 else ''} {shown}: longer than the model's 11 tokens, truncated"]
    if len(named) < len(numbers):
        warnings.append(f"warning: {len(numbers)} lines in all were longer than the model's 11 tokens, and truncated")
    assert err == warnings
    assert len((tmp_path / "out.txt").read_text().splitlines()) == copies * len(LINES)


def test_batched_translation_equals_one_line_at_a_time(sp):
    model = small_model(sp.get_piece_size()).train()
    for beam in (1, 3):
        batched = translate_lines(model, sp, LINES, beam=beam, max_tokens=64)
        alone = [translate_lines(model, sp, [line], beam=beam)[0] for line in LINES]
        assert batched == alone
        assert (
            len({len(h.split()) for h, x in zip(batched, LINES, strict=True) if x.strip()}) > 2
        )  # real, varied outputs
        assert all(h == "" for h, x in zip(batched, LINES, strict=True) if not x.strip())
    assert model.training  # the caller's mode is restored


def test_translate_cli_stdin_to_stdout(run_dir: Path, sp):
    from async_nmt.model.checkpoint import load_model

    text = "".join(line + "\n" for line in LINES)
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "2", "--device", "cpu"], input=text)
    assert result.exit_code == 0, result.stderr
    model, vocab = load_model(run_dir, "best", "cpu")
    amp = amp_dtype_for("auto", torch.device("cpu"))  # (as the command's default; bf16 and fp32 may differ)
    cast_for_search(model, amp)
    assert result.stdout.split("\n")[:-1] == translate_lines(model, vocab, LINES, beam=2, amp_dtype=amp)
    assert result.stdout.count("\n") == len(LINES) and result.stdout.strip()
    assert result.stderr == ""  # nothing to warn of (a summary of 0 truncated lines went unseen)


def test_the_beam_asked_for_is_the_beam_searched(run_dir: Path, sp, monkeypatch):
    """--beam reaches the search, from the command and from `translate_lines` (a translate that always
    searched greedily passed every test: they compared it with itself)."""
    real, beams = translate.generate, []

    def spy(model, src, beam, **kwargs):
        beams.append(beam)
        return real(model, src, beam, **kwargs)

    monkeypatch.setattr(translate, "generate", spy)
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "3", "--device", "cpu"], input="ba de\nka\n")
    assert result.exit_code == 0, result.stderr
    assert beams and set(beams) == {3}
    beams.clear()
    translate_lines(small_model(sp.get_piece_size()), sp, LINES, beam=4, max_tokens=24)
    assert len(beams) > 1 and set(beams) == {4}


@pytest.mark.parametrize("name", ["out.txt", "o" * 250 + ".txt"])  # the longest name: its temporary file's
def test_translate_cli_files_are_written_whole(run_dir: Path, tmp_path: Path, name: str):  # was too long
    src, out = tmp_path / "in.txt", tmp_path / name
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    result = runner().invoke(main, ["translate", str(run_dir), "-i", str(src), "-o", str(out), "--beam", "1"])
    assert result.exit_code == 0, result.stderr
    assert out.read_text(encoding="utf-8").count("\n") == len(LINES)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt", name])  # no temporary files left


def test_a_dash_is_stdin_and_stdout(run_dir: Path):
    args = ["translate", str(run_dir), "--beam", "1"]
    alone = runner().invoke(main, args, input="ba de\nka\n")
    dashes = runner().invoke(main, [*args, "-i", "-", "-o", "-"], input="ba de\nka\n")
    assert alone.exit_code == dashes.exit_code == 0, dashes.stderr
    assert dashes.stdout == alone.stdout and alone.stdout.count("\n") == 2


def test_output_through_a_link_or_a_named_pipe_is_written_into_not_replaced(run_dir: Path, tmp_path: Path):
    """As `>` would: a symbolic link stays a link and its target gets the text; a named pipe stays a pipe
    and its reader gets the text (it used to be replaced by a file, and the reader waited for ever)."""
    import os
    import stat
    import threading

    expected = runner().invoke(main, ["translate", str(run_dir), "--beam", "1"], input="ba de\nka\n").stdout
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old\n")
    link.symlink_to(target)
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "-o", str(link)], input="ba de\nka\n")
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and target.read_text() == expected
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "-o", str(fifo)], input="ba de\nka\n")
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert received == [expected] and stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.txt", "target.txt"]


def test_a_replaced_output_file_keeps_its_permissions(run_dir: Path, tmp_path: Path):
    """As with `>`: a file of mode 640 stays 640 (the temporary file that replaced it had the umask's 644)."""
    out = tmp_path / "hyp.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "-o", str(out)], input="ba de\n")
    assert result.exit_code == 0, result.stderr
    assert out.read_text() != "old\n" and out.stat().st_mode & 0o777 == 0o640


def test_a_read_only_output_file_is_written_as_redirection_would_or_kept(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """-o replaced a file through a temporary file and a rename, which a folder's write permission allows:
    a read-only file that `>` could not write was replaced. Now -o writes it where `>` could (root can) and
    is refused where it could not, the file kept."""
    import os

    out = tmp_path / "hyp.txt"
    out.write_text("old\n")
    out.chmod(0o444)
    try:
        open(out, "a").close()  # what `>` would meet
        writable = True
    except PermissionError:
        writable = False
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "-o", str(out)], input="ba de\n")
    assert (result.exit_code, out.read_text() == "old\n") == ((0, False) if writable else (2, True)), result.stderr
    out.chmod(0o644)
    out.write_text("old\n")  # (as for a user who cannot write it, below)
    out.chmod(0o444)
    readable = os.access  # (click checks that the path is readable)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: mode != os.W_OK and readable(path, mode, **kw))
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "-o", str(out)], input="ba de\n")
    assert result.exit_code == 2 and f"{out}: cannot write (Permission denied)" in result.stderr
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["hyp.txt"]


def test_checkpoint_choices_are_kept_or_refused_never_swapped(run_dir: Path, tmp_path: Path):
    """Without --checkpoint a run without best.pt (no validation) translates with last.pt; an explicit
    --checkpoint best there, or --checkpoint with a checkpoint file, or with --average, is refused, and so is
    the run's checkpoints/ folder given for the run."""
    import shutil

    last_only = tmp_path / "run"
    (last_only / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "checkpoints" / "best.pt", last_only / "checkpoints" / "last.pt")
    args = ["--beam", "1", "--device", "cpu"]
    assert runner().invoke(main, ["translate", str(last_only), *args], input="ba\n").exit_code == 0
    refused = {
        "no best.pt": [str(last_only), "--checkpoint", "best"],
        "is a checkpoint file": [str(run_dir / "checkpoints" / "best.pt"), "--checkpoint", "last"],
        "give one of them": [str(last_only), "--checkpoint", "last", "--average", "2"],
        # (it said "no checkpoint (best.pt or last.pt) in RUN/checkpoints", which holds them)
        f"a run's checkpoints folder; give the run folder ({last_only})": [str(last_only / "checkpoints")],
    }
    for message, given in refused.items():
        result = runner().invoke(main, ["translate", *given, *args], input="ba\n")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
        assert message in result.stderr


def test_chunks_give_the_outputs_of_the_whole_input(run_dir: Path, tmp_path: Path):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    args = ["translate", str(run_dir), "-i", str(src), "--beam", "2", "--precision", "fp32"]
    whole = runner().invoke(main, [*args, "--chunk-size", "0"])
    chunked = runner().invoke(main, [*args, "--chunk-size", "3"])
    assert whole.exit_code == chunked.exit_code == 0, chunked.stderr
    assert chunked.stdout == whole.stdout and whole.stdout.count("\n") == len(LINES)


def test_nbest_lists_every_line_with_its_best_translation_first(run_dir: Path, tmp_path: Path):
    """--nbest N: N lines `LINE ||| TRANSLATION ||| F0= LOGPROB ||| SCORE` an input line (0-based), best first,
    as Moses and Marian write them (the features' field was missing: their readers took the score for it); the
    first is the translation --beam gives alone; an empty line one empty hypothesis; chunks change nothing."""
    import re

    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    args = ["translate", str(run_dir), "-i", str(src), "--beam", "3", "--precision", "fp32"]
    best = runner().invoke(main, args)
    nbest = runner().invoke(main, [*args, "--nbest", "3", "--chunk-size", "4"])
    assert best.exit_code == nbest.exit_code == 0, nbest.stderr
    entries = [line.split(" ||| ") for line in nbest.stdout.splitlines()]
    assert all(len(entry) == 4 and re.fullmatch(r"F0= -?\d+\.\d{4}", entry[2]) for entry in entries), entries
    numbers = [int(number) for number, _, _, _ in entries]
    assert numbers == sorted(numbers) and set(numbers) == set(range(len(LINES)))
    # the log-probability is the score times length**lenpen (at least 2 tokens, eos counted; lenpen 1)
    assert all(float(f0[4:]) <= 2 * float(score) + 1e-3 for _, text, f0, score in entries if text)
    unnormalized = runner().invoke(main, [*args, "--nbest", "3", "--lenpen", "0"])
    assert unnormalized.exit_code == 0 and unnormalized.stdout, unnormalized.stderr
    assert all(
        f0 == f"F0= {score}" for _, _, f0, score in (line.split(" ||| ") for line in unnormalized.stdout.splitlines())
    )
    lists = [
        [(float(score), text) for number, text, _, score in entries if int(number) == i] for i in range(len(LINES))
    ]
    assert [hyps[0][1] for hyps in lists] == best.stdout.split("\n")[:-1]
    for line, hyps in zip(LINES, lists, strict=True):
        if line.strip():
            assert 1 <= len(hyps) <= 3 and [s for s, _ in hyps] == sorted((s for s, _ in hyps), reverse=True)
            assert all(score < 0 for score, _ in hyps) and len({text for _, text in hyps}) == len(hyps)
        else:
            assert hyps == [(0.0, "")]
    assert sum(len(hyps) > 1 for hyps in lists) > 3  # (the check is not vacuous)
    whole = runner().invoke(main, [*args, "--nbest", "3", "--chunk-size", "0"])
    assert whole.stdout == nbest.stdout
    for given, message in ((["--nbest", "4"], "--nbest 4 is more than --beam 3"), (["--nbest", "-1"], "negative")):
        refused = runner().invoke(main, [*args, *given])
        assert refused.exit_code == 2 and message in refused.stderr and refused.stderr.count("\n") == 1
        assert refused.stdout == ""


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_input_that_is_not_typed_is_translated_a_window_at_a_time(run_dir: Path, tmp_path: Path, monkeypatch,
                                                                  source: str):  # fmt: skip
    """A long input is read, translated and written WINDOW lines at a time by default (it was read whole:
    all of it in memory, and no output before the end); the outputs are those of the whole input."""
    src = tmp_path / "in.txt"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    args = ["translate", str(run_dir), "--beam", "2", "--precision", "fp32"]
    given = ["-i", str(src)] if source == "file" else []
    stdin = src.read_text() if source == "stdin" else None
    whole = runner().invoke(main, [*args, *given, "--chunk-size", "0"], input=stdin)
    monkeypatch.setattr(translate, "WINDOW", 3)
    real, sizes = translate.translate_lines, []
    monkeypatch.setattr(translate, "translate_lines", lambda model, sp, lines, **kw: sizes.append(len(lines))
                        or real(model, sp, lines, **kw))  # fmt: skip
    windowed = runner().invoke(main, [*args, *given], input=stdin)
    assert whole.exit_code == windowed.exit_code == 0, windowed.stderr
    assert sizes == [3, 3, 3, 1] and windowed.stdout == whole.stdout and whole.stdout.count("\n") == len(LINES)


def test_typed_input_is_translated_a_line_at_a_time(run_dir: Path, monkeypatch, capsys):
    """From a terminal, where a person types, each line is translated as it comes, not in windows of
    10,000 lines that wait for the input's end."""

    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"ba de\nka\nde de\n"), encoding="utf-8"))
    real, sizes = translate.translate_lines, []
    monkeypatch.setattr(translate, "translate_lines", lambda model, sp, lines, **kw: sizes.append(len(lines))
                        or real(model, sp, lines, **kw))  # fmt: skip
    translate.translate_file(run_dir, None, None, beam=1, device="cpu", chunk_size=None)  # (the command's default)
    assert sizes == [1, 1, 1] and capsys.readouterr().out.count("\n") == 3


def test_running_out_of_memory_is_one_warning_for_the_whole_input(run_dir: Path, monkeypatch):
    """The warning that batches are translated in halves is given once a command, not once a chunk."""
    monkeypatch.setattr(translate, "generate", out_of_memory_above(1, [], "cpu"))
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "--chunk-size", "3"],
                             input="\n".join(LINES) + "\n")  # fmt: skip
    assert result.exit_code == 0 and result.stdout.count("\n") == len(LINES), result.stderr
    assert result.stderr.count("ran out of memory") == 1, result.stderr


def test_progress_counts_every_line_empty_or_not(sp):
    done: list[int] = []
    translate_lines(small_model(sp.get_piece_size()), sp, LINES, beam=2, max_tokens=24, progress=done.append)
    assert sum(done) == len(LINES) and len(done) > 2  # the empty lines, then batch by batch


@pytest.mark.parametrize(("text", "lines"), [("", 0), ("a\n", 1), ("a\nb", 2), ("a\n\nb\n", 3), ("\n", 1),
                                            ("ab\ncd\nef", 3), ("äbc\nd\nxyzw\n", 3), ("abcdefg\n", 1)])  # fmt: skip
@pytest.mark.parametrize("block", [3, 1 << 24])
def test_the_progress_bar_total_is_the_file_lines(tmp_path: Path, monkeypatch, text: str, lines: int, block: int):
    monkeypatch.setattr(translate, "CHECK_BLOCK", block)  # (3 bytes: lines and characters across reads)
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode())
    assert translate.checked_lines(path) == lines == len(list(translate.input_chunks(path, 1)))
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # (no file number: the total is unknown)
    assert translate.checked_lines(None) is None and translate.checked_lines(Path("-")) is None
    assert translate.checked_lines(tmp_path / "missing") is None


@pytest.mark.parametrize("block", [4, 1 << 24])
def test_a_line_that_is_not_utf8_fails_before_anything_is_translated(run_dir: Path, tmp_path: Path, monkeypatch,
                                                                    block: int):  # fmt: skip
    """Read a window at a time, a bad line in a later window failed after the windows before it were translated
    (hours of a large input, which an output file then lost)."""
    monkeypatch.setattr(translate, "CHECK_BLOCK", block)
    monkeypatch.setattr(translate, "WINDOW", 3)
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_bytes(b"ba de\nka\ngi\nko\nmu\nna\npe\nhal\xff lo\nga\n")
    out.write_text("OLD\n")
    monkeypatch.setattr(translate, "translate_lines", lambda *args, **kwargs: pytest.fail("translated"))
    for given in (["-i", str(src)], []):  # a file, and stdin redirected from it (`< in.txt`)
        with open(src, "rb") as stdin:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stdin))
            with pytest.raises(UserError, match=r"line 8 is not valid UTF-8"):
                translate.translate_file(run_dir, Path(given[1]) if given else None, out, beam=1, device="cpu")
    assert out.read_text() == "OLD\n"


def test_the_progress_bar_total_of_a_file_on_stdin_is_its_lines_from_where_reading_starts(tmp_path: Path, monkeypatch):
    """`nmt translate RUN < FILE`: stdin is the file; counting its lines must not move it. A pipe has none."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"a\nb\nc\n")
    with open(path, "rb", buffering=0) as f:
        f.seek(2)  # (a shell hands over a file where its last reader left it)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(f))
        assert translate.checked_lines(None) == 2 and f.tell() == 2 and f.read() == b"b\nc\n"
    read, write = os.pipe()
    with open(read, "rb") as r, open(write, "wb") as w:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(r))
        w.write(b"a\n")
        assert translate.checked_lines(None) is None


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path, chunk_size: int):
    """Windows editors begin a file with one; sentencepiece would encode it into the first sentence."""
    marked = tmp_path / "marked.txt"
    marked.write_text("\n".join(LINES) + "\n", encoding="utf-8-sig")
    read = [line for chunk in translate.input_chunks(marked, chunk_size) for line in chunk]
    assert read == LINES


@pytest.mark.parametrize("chunk", [["--chunk-size", "1"], [], ["--chunk-size", "3"]])
def test_a_chunk_is_written_before_the_input_ends(run_dir: Path, chunk: list[str]):
    """Each line's translation comes out as soon as it is read where the pipe then pauses, as from a script
    that sends a line and waits for it: with --chunk-size 1 (it used to wait for the end of stdin), and
    with the default window or any other (they used to wait until it filled)."""
    import select

    proc = subprocess.Popen(
        [sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "1", "--device", "cpu",
         *chunk],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for line in (b"ba de gi\n", b"ka\n"):
            proc.stdin.write(line)
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 120)
            assert ready, "no output while stdin stays open"
            assert proc.stdout.readline().endswith(b"\n")  # one output line a line in
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()


def test_a_pipe_gives_its_lines_in_whole_windows_while_it_keeps_up():
    """Lines that come together come with no pause between them; a pause comes where nothing more does, also
    where the next line has begun but not ended (the finished line was held back until it did), and before
    a line's end that is slow to come; a last line without a newline is kept; a non-blocking pipe is waited
    for (it was "Resource temporarily unavailable")."""
    import fcntl

    pause = translate.PAUSE
    read, write = os.pipe()
    os.set_blocking(read, False)
    try:
        os.write(write, b"ba de\nka\ngi\n")
        lines = translate._lines_as_they_come(read)
        assert [next(lines) for _ in range(4)] == [b"ba de\n", b"ka\n", b"gi\n", pause]
        os.write(write, b"mu\nlo")
        assert [next(lines) for _ in range(2)] == [b"mu\n", pause]
        os.write(write, b" pe\n")
        assert next(lines) == b"lo pe\n"
        assert fcntl.fcntl(read, fcntl.F_GETFL) & os.O_NONBLOCK
        os.write(write, b"no end")
        os.close(write)
        write = -1
        assert [x for x in lines if x is not pause] == [b"no end"]
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_sigterm_leaves_the_output_file_as_it_was_and_no_temporary_file(run_dir: Path, tmp_path: Path):
    """`kill` or `timeout` stops a translation as Ctrl-C does: exit 130, the old output kept, nothing left
    behind (it used to leave an empty hidden temporary file beside the output)."""
    import select
    import signal

    out = tmp_path / "out.txt"
    out.write_text("OLD\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "1", "--device", "cpu",
         "--chunk-size", "1", "-o", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        proc.stdin.write(b"ba de gi\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 120
        while not _written(tmp_path):  # the first line is translated: the run is under way
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
            select.select([], [], [], 0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert proc.stderr.read().decode().strip().splitlines()[-1] == "interrupted"
    finally:
        proc.kill()
    assert out.read_text() == "OLD\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_sigterm_as_it_starts_is_an_interrupt_too(run_dir: Path):
    """SIGTERM while the command imports torch (seconds on a CPU) ended it with exit code 143 and no word."""
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--device", "cpu"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"libc10" not in Path(f"/proc/{proc.pid}/maps").read_bytes():  # torch's libraries are loading
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        assert proc.stderr.read().decode().strip().splitlines() == ["interrupted"]
    finally:
        proc.kill()


def _written(folder: Path) -> bool:
    """Whether the temporary output file in `folder` holds a line (the first translation is written)."""
    return any(path.stat().st_size > 0 for path in folder.glob(".out.txt.*.tmp"))


def test_input_the_vocabulary_does_not_know_is_translated_with_one_warning(run_dir: Path):
    """Text in another script (the wrong language, or a model of the other direction) becomes <unk>: it is
    translated, as fairseq and Marian do, but the user is told once."""
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "1", "--chunk-size", "1"],
                             input="ба де ги ко\nгде\nba de\n")  # fmt: skip
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.output
    warnings = [line for line in result.stderr.splitlines() if "unknown to the model's vocabulary" in line]
    assert len(warnings) == 1 and "source language" in warnings[0], result.stderr
    known = runner().invoke(main, ["translate", str(run_dir), "--beam", "1"], input="ba de gi ko\nka\n")
    assert known.exit_code == 0 and "unknown" not in known.stderr


def test_stdin_read_whole_waits_for_the_end_of_a_pipe_that_does_not_block(monkeypatch):
    """`--chunk-size 0` from a pipe that another program sharing it made non-blocking (O_NONBLOCK) read what
    had come so far: 25 of 100 lines were translated, exit code 0."""
    with stdin_that_does_not_block(monkeypatch, b"ba de\n", b"gi\nko\n"):
        assert translate.read_input(None) == ["ba de", "gi", "ko"]


def test_empty_stdin_gives_empty_output(run_dir: Path):
    result = runner().invoke(main, ["translate", str(run_dir)], input="")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["--beam", "0"], "ba\n", "--beam must be 1 to 2,147,483,648"),
        (["--beam", str(2**63)], "ba\n", "--beam must be 1 to"),  # a traceback of torch's (an overflow)
        (["--checkpoint", "last"], "ba\n", "no last.pt in"),  # (the run has best.pt only)
        (["--max-tokens", "0"], "ba\n", "--max-tokens must be at least 1"),
        (["--max-len-b", "-1"], "ba\n", "must not be negative"),
        (["--max-len-a", "nan"], "ba\n", "--max-len-a must be a number (got nan)"),  # ("must not be negative")
        (["--max-len-a", "0", "--max-len-b", "0"], "ba\n", "leave no room for an output token"),  # (empty lines)
        ([], b"ba\n\xff\xfe\n", "stdin: line 2 is not valid UTF-8"),
        (["-i", "missing.txt"], "", "missing.txt: no such file"),
        (["--device", "tpu"], "ba\n", "--device: 'tpu' is not a device"),
        ([], "ba\rde\rgi\r", "stdin: 1 line(s) but 3 carriage returns"),  # (one line of three, truncated)
        (["--chunk-size", "0"], "ba\rde\r", "stdin: 1 line(s) but 2 carriage returns"),
        (["--device", "cpu:1"], "ba\n", "--device: cpu:1 is not there (the CPU is one device: cpu)"),  # (taken)
        (["--chunk-size", "-1"], "ba\n", "--chunk-size must not be negative (got -1)"),
        (["--lenpen", "16"], "ba\n", "--lenpen must be -10 to 10 (got 16)"),  # (256**16 is inf in fp32)
        (["--lenpen", "-11"], "ba\n", "--lenpen must be -10 to 10 (got -11)"),
        (["--lenpen", "nan"], "ba\n", "--lenpen must be -10 to 10 (got nan)"),
    ],
)
def test_bad_translate_input_exits_2_with_one_line(run_dir: Path, args, stdin, message):
    result = runner().invoke(main, ["translate", str(run_dir), *args], input=stdin)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_file_of_lines_ended_by_a_carriage_return_alone_is_refused_before_any_work(run_dir: Path, tmp_path: Path):
    """Thirty sentences with old Mac line ends were one line: translated as one, truncated, with a warning of
    its length only."""
    source, out = tmp_path / "source.txt", tmp_path / "out.txt"
    source.write_bytes(b"ba de\r" * 30)
    out.write_text("kept\n")
    result = runner().invoke(main, ["translate", str(run_dir), "-i", str(source), "-o", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{source}: 1 line(s) but 30 carriage returns (\\r) inside them" in result.stderr
    assert out.read_text() == "kept\n"
    source.write_bytes(b"ba de\r\n" * 3)  # \r\n line ends are read as lines
    assert (
        runner().invoke(main, ["translate", str(run_dir), "-i", str(source), "-o", str(out), "--beam", "1"]).exit_code
        == 0
    )
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "encoding,said",
    [
        ("utf-16", "line 1 is not valid UTF-8; it is UTF-16: convert it (iconv -f UTF-16 -t UTF-8)"),
        # without a byte order mark the ASCII text was valid UTF-8: translated, as nonsense, with a warning
        ("utf-16-le", "line 1 has a NUL byte beside each character; it is UTF-16 (LE) without a byte order mark: "
         "convert it (iconv -f UTF-16LE -t UTF-8)"),
        ("utf-16-be", "(BE) without a byte order mark: convert it (iconv -f UTF-16BE -t UTF-8)"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("args", [["-i", "SOURCE"], ["-i", "SOURCE", "--chunk-size", "0"], []])
def test_a_utf16_source_is_named_so(run_dir: Path, tmp_path: Path, args: list[str], encoding: str, said: str):
    source = tmp_path / "source.txt"
    source.write_bytes("ba de\nka\n".encode(encoding))
    args = [str(source) if arg == "SOURCE" else arg for arg in args]
    result = runner().invoke(main, ["translate", str(run_dir), *args], input=None if args else source.read_bytes())
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.strip().endswith(said) and result.stdout == ""


@pytest.mark.parametrize("from_file", [True, False])
def test_a_stray_carriage_return_in_a_last_window_is_text(run_dir: Path, tmp_path: Path, from_file: bool):
    """Each window's line ends were checked alone: a short last window whose line held stray \\r failed the
    command after every window before it was translated (and, with -o, that work was lost)."""
    text = "ba\nde\nka\nba\na\rb\rc\rd\n"
    source, out = tmp_path / "source.txt", tmp_path / "out.txt"
    source.write_text(text, newline="")
    args = ["-i", str(source)] if from_file else []
    result = runner().invoke(main, ["translate", str(run_dir), *args, "-o", str(out), "--chunk-size", "2",
                                    "--beam", "1"], input=None if from_file else text)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(out.read_text().splitlines()) == 5


def test_the_output_never_replaces_the_checkpoint_or_a_runs_files(run_dir: Path, tmp_path: Path):
    """`-o` the checkpoint file made it a text file of translations, and `-o RUN/checkpoints/best.pt` so,
    without a word."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    best = run / "checkpoints" / "best.pt"
    before = best.read_bytes()
    for model, out in ((best, best), (run, best), (run, run / "checkpoints" / "other.pt"), (run, run / "config.json")):
        result = runner().invoke(main, ["translate", str(model), "-o", str(out), "--beam", "1"], input="ba\n")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "write the translations elsewhere" in result.stderr
    assert best.read_bytes() == before and not (run / "checkpoints" / "other.pt").exists()


def test_the_output_never_replaces_a_checkpoint_outside_a_run(run_dir: Path, tmp_path: Path):
    """`nmt translate RUN -o AVG.pt`, typed for `-i`, made an averaged checkpoint a text file, exit code 0
    (`nmt average` replaces one only with --force); a text file is replaced, as ever."""
    avg, text = tmp_path / "avg.pt", tmp_path / "old.en"
    shutil.copy(run_dir / "checkpoints" / "best.pt", avg)
    text.write_text("old\n")
    before = avg.read_bytes()
    result = runner().invoke(main, ["translate", str(run_dir), "-o", str(avg), "--beam", "1"], input="ba\n")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        f"error: {avg}: a zip archive (a checkpoint?), which translations would replace; write them elsewhere"
    ]
    assert avg.read_bytes() == before
    result = runner().invoke(main, ["translate", str(run_dir), "-o", str(text), "--beam", "1"], input="ba\n")
    assert result.exit_code == 0 and text.read_text() != "old\n", result.stderr


def test_unwritable_output_exits_2(run_dir: Path, tmp_path: Path):
    for out in (tmp_path / "no" / "such" / "out.txt", tmp_path):
        result = runner().invoke(main, ["translate", str(run_dir), "-o", str(out), "--beam", "1"], input="ba\n")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
        assert str(out) in result.stderr


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_is_an_error_of_the_system_naming_where(run_dir: Path):
    """`error: PATH: REASON`, exit code 1, as README says of a full disk (it was exit code 2)."""
    result = runner().invoke(main, ["translate", str(run_dir), "-o", "/dev/full", "--beam", "1"], input="ba\n")
    assert result.exit_code == 1 and result.stderr.strip() == "error: /dev/full: cannot write (No space left on device)"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as most users run (120 there)
    for env in (buffered, {**buffered, "PYTHONUNBUFFERED": "1"}):
        with open("/dev/full", "w") as full:
            done = subprocess.run([sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "1"],
                                  input="ba\n", stdout=full, stderr=subprocess.PIPE, text=True, timeout=120,
                                  env=env)  # fmt: skip
        assert done.returncode == 1 and done.stderr.strip() == "error: stdout: cannot write (No space left on device)"


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "PYTHONUNBUFFERED"])
def test_a_full_stdout_that_does_not_block_loses_nothing(monkeypatch, buffered: bool):
    """A pipe that another program sharing it made non-blocking (O_NONBLOCK) and that is full, its reader
    slow: a buffered stdout raised BlockingIOError (`error: stdout: cannot write`, the rest
    lost), and an unbuffered one (PYTHONUNBUFFERED, `python -u`) took the part of a window that fitted and
    dropped the rest without a word, exit code 0 (324 of 5,035 lines reached the reader). It waits for room."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    raw = io.FileIO(write_end, "w")
    stdout = io.TextIOWrapper(io.BufferedWriter(raw) if buffered else raw, encoding="utf-8",
                              write_through=not buffered)  # fmt: skip
    monkeypatch.setattr("sys.stdout", stdout)
    text = "".join(f"{i} {'x' * 100}\n" for i in range(3000))  # (more than the 64 KiB a pipe holds)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            translate._stdout_write(text)
        except BaseException as err:
            failed.append(err)
        finally:
            with contextlib.suppress(OSError):
                stdout.close()
            raw.close()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=0.5)  # (the reader is slow: the pipe fills)
    with open(read_end, "rb") as reader:
        received = reader.read()
    writer.join()
    assert not failed and received.decode() == text


def test_an_output_file_that_cannot_be_put_into_place_leaves_no_temporary_file(run_dir: Path, tmp_path: Path,
                                                                                   monkeypatch):  # fmt: skip
    """A full disk as the translations go into place: one line naming the output, exit code 1, and the
    folder as it was (no temporary file beside it)."""
    import errno

    src = tmp_path / "in.txt"
    src.write_text("ba de\nka\n", encoding="utf-8")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(translate.os, "replace", full)
    result = runner().invoke(main, ["translate", str(run_dir), "-i", str(src), "-o", str(tmp_path / "out.txt"),
                                    "--beam", "1"])  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'out.txt'}: cannot write (No space left on device)"
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


def test_missing_run_folder_exits_2(tmp_path: Path):
    result = runner().invoke(main, ["translate", str(tmp_path / "nope")], input="ba\n")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_a_run_training_before_its_first_save_is_named_so_not_told_to_train(tmp_path: Path):
    """A run that nmt-train has just begun has no checkpoint yet: "train it first" was said to one training it."""
    from async_nmt.config import LOCK_NAME

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / LOCK_NAME).write_text(f"{os.getpid()}\n")  # (a live process: the run is training)
    result = runner().invoke(main, ["translate", str(run)], input="ba\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == (f"error: {run}: no checkpoint (best.pt or last.pt) in {run / 'checkpoints'} yet: the run "
                             "is training and saves its first at its first validation (--valid-every) or "
                             "--save-every; translate once it has\n")  # fmt: skip
    (run / LOCK_NAME).unlink()  # not training: train it
    result = runner().invoke(main, ["translate", str(run)], input="ba\n")
    assert result.exit_code == 2 and "(train it first)" in result.stderr


def test_nmt_translate_in_a_real_process(run_dir: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "2", "--device", "cpu"],
        input=b"ba de gi\n\nka\n",
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode("utf-8").split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""


@pytest.mark.parametrize("source", ["-i FILE", "< FILE"])
def test_a_stdout_that_is_the_input_file_is_refused(run_dir: Path, tmp_path: Path, source: str):
    """`nmt translate RUN -i FILE >> FILE` read its own translations back as input, a window at a time, and
    translated them again without end, filling the disk (`cat` refuses so: "input file is output file");
    `> FILE` had emptied the input before it started, and gave an empty output without a word."""
    path = tmp_path / "source.txt"
    text = "ba de gi\nka\nde de\n"
    path.write_text(text)
    command = [sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "1", "--device", "cpu",
               "--chunk-size", "1"]  # fmt: skip
    where = "-i " + shlex.quote(str(path)) if source == "-i FILE" else "< " + shlex.quote(str(path))
    name = path if source == "-i FILE" else "stdin"
    for redirect in (">>", ">"):
        path.write_text(text)
        shell = f"exec {' '.join(shlex.quote(part) for part in command)} {where} {redirect} {shlex.quote(str(path))}"
        proc = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == f"error: stdout: the file it reads ({name}); write the translations elsewhere\n"
        assert path.read_text() == (text if redirect == ">>" else "")


def test_a_closed_or_full_stderr_costs_the_translations_nothing(run_dir: Path):
    """`2>&-` made Python's stderr None: the progress bar failed, and so did the error's line (exit code 1,
    no output, no word); `2>/dev/full` made a warning end the command with no output."""
    command = [sys.executable, "-m", "async_nmt.cli", "translate", str(run_dir), "--beam", "2", "--device", "cpu"]
    text = "бa дe ги\n\nка ба\n".encode()  # mostly unknown pieces: a warning
    # with a stderr that takes the warning: the translations to compare with (in this process, as `nmt` runs)
    plain = runner().invoke(main, command[3:], input=text)
    assert plain.exit_code == 0 and "warning: " in plain.stderr, plain.output
    assert plain.stdout_bytes.count(b"\n") == 3
    for redirect in ("2>&-", "2>/dev/full"):
        shell = " ".join(shlex.quote(part) for part in command) + " " + redirect
        proc = subprocess.run(["bash", "-c", shell], input=text, stdout=subprocess.PIPE, timeout=120)
        assert (proc.returncode, proc.stdout) == (0, plain.stdout_bytes), redirect


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_translate_honours_precision(run_dir: Path, monkeypatch, precision, dtype):
    seen = record_amp_dtypes(monkeypatch, translate, "generate")
    text = "".join(line + "\n" for line in LINES)
    result = runner().invoke(main, ["translate", str(run_dir), "--device", "cpu", "--precision", precision], input=text)
    assert result.exit_code == 0, result.stderr
    assert seen and set(seen) == {dtype}


def test_auto_precision_is_bf16_only_where_the_device_has_it_and_fp32_and_bf16_are_as_asked(monkeypatch):
    """--precision auto autocasts to bf16 on a device with native bf16 and runs fp32 on one without (an auto
    that was always bf16 passed on this machine's CPU, which has bf16); fp32 and bf16 are what they say
    whatever the device has."""
    from async_nmt import devices

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(devices, "bf16_supported", lambda device, native=native: native)
        assert devices.amp_dtype_for("auto", cpu) == (torch.bfloat16 if native else None)
        assert devices.amp_dtype_for("fp32", cpu) is None
        assert devices.amp_dtype_for("bf16", cpu) == torch.bfloat16


def test_device_names_become_devices_that_exist_or_one_line_naming_the_option(monkeypatch):
    """With one GPU: no name is the first GPU, `cuda` is cuda:0 (its index given), cuda:1 is refused (it was
    taken, to fail later inside torch); a device type other than cpu and cuda (mps, meta) is refused, not run
    on the CPU, and so is an empty name; without a usable GPU a cuda name says so. Each message names the
    option that gave the name."""
    from async_nmt import devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in (None, "cuda", "cuda:0"):
        device = devices.resolve_device(name)
        assert (device.type, device.index) == ("cuda", 0), name
    with pytest.raises(UserError, match=r"^--device: cuda:1 is not there \(this machine has 1 GPUs\)$"):
        devices.resolve_device("cuda:1", "--device")
    for name in ("mps", "meta"):
        with pytest.raises(UserError, match=rf"^--devices: '{name}' is not supported \(use cpu or cuda:N\)$"):
            devices.resolve_device(name)
    for name in ("", " "):  # (an empty one ran on the default device)
        with pytest.raises(UserError, match=rf"^--device: '{name}' is not a device \(use cpu or cuda:N\)$"):
            devices.resolve_device(name, "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^--device: cuda:0 is not there \(this machine has no usable GPU\)$"):
        devices.resolve_device("cuda:0", "--device")
    assert devices.resolve_device(None) == torch.device("cpu")


def test_translate_searches_with_the_documented_defaults_and_fixed_shapes_only_with_cuda_graphs(
    run_dir: Path, monkeypatch
):
    """With no option, every batch is searched as README and --help state: `--beam 5`, `--lenpen 1.0`, at most
    `--max-len-a 1.2` x source + `--max-len-b 10` tokens, shapes not fixed; `--cuda-graphs` (on any device)
    searches with fixed shapes. (A default beam of 4, or a --cuda-graphs that never reached the search,
    passed every test: on the CPU its outputs are the same.)"""
    real, calls = translate.generate, []

    def spy(model, src, beam, **kwargs):
        calls.append((beam, kwargs["lenpen"], kwargs["max_len_a"], kwargs["max_len_b"], kwargs["fixed_shapes"]))
        return real(model, src, beam, **kwargs)

    monkeypatch.setattr(translate, "generate", spy)
    result = runner().invoke(main, ["translate", str(run_dir), "--device", "cpu"], input="ba de\nka\n")
    assert result.exit_code == 0, result.stderr
    assert calls and set(calls) == {(5, 1.0, 1.2, 10, False)}
    calls.clear()
    args = ["translate", str(run_dir), "--device", "cpu", "--beam", "1", "--cuda-graphs"]
    result = runner().invoke(main, args, input="ba de\nka\n")
    assert result.exit_code == 0, result.stderr
    assert calls and {call[-1] for call in calls} == {True}


def test_translation_batches_are_larger_on_a_gpu_by_default():
    from async_nmt.translate import default_max_tokens

    assert default_max_tokens(torch.device("cpu")) == 4000
    assert default_max_tokens(torch.device("cuda:0")) == 16000  # the host's cost per step, spread wider


def test_bench_translate_counts_the_steps_and_larger_batches_take_fewer(run_dir: Path, sp, tmp_path: Path):
    """scripts/bench_translate.py counts the decoding steps that a GPU's host issues one at a time: many
    small batches take more of them than one batch of the same sentences. Its source tokens are those the
    model reads: a line of --input longer than the model's positions is cut (it counted them all)."""
    import json

    common = ["--device", "cpu", "--precision", "fp32", "--beam", "2", "--check-every", "4"]
    cases = [[*common, "--preset", "micro", "--vocab", "64", "--sentences", "12", "--min-len", "3", "--max-len", "12",
              "--max-tokens", str(max_tokens)] for max_tokens in (16, 100_000)]  # fmt: skip
    long_input = tmp_path / "long.src"
    long_input.write_text("".join(" ".join(["word"] * 300) + "\n" for _ in range(2)))
    assert all(len(ids) > 63 for ids in sp.encode(long_input.read_text().splitlines()))  # (run_dir's: 64 positions)
    cases.append([*common, "--run", str(run_dir), "--input", str(long_input), "--sentences", "2"])
    lines = []
    for done in run_forked([("bench_translate.py", args, False) for args in cases]):
        assert done.returncode == 0, done.stderr
        lines.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large, long = lines
    assert small["check_every"] == large["check_every"] == 4
    for search in ("greedy_steps", "beam_steps"):
        assert small[search] > large[search] > 0, (search, small, large)
    assert long["src_tokens"] == 2 * (64 - 1)


OUT_OF_MEMORY = {  # as CUDA says it, and as the CPU's allocator does (a plain RuntimeError)
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough "
        "memory: you tried to allocate 503808000 bytes."
    ),  # fmt: skip
    # plain RuntimeErrors on a GPU too: cuBLAS's workspace, and a CUDA call's own (a traceback before)
    "cublas": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuda call": lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously..."),
}


def out_of_memory_above(rows: int, sizes: list[int], device: str = "cuda"):
    """A stand-in for search that runs out of memory, as `device` says it, on batches of more than `rows`."""
    real = translate.generate

    def generate(model, src, beam, **kwargs):
        sizes.append(src.size(0))
        if src.size(0) > rows:
            raise OUT_OF_MEMORY[device]()
        return real(model, src, beam, **kwargs)

    return generate


@pytest.mark.parametrize("device", list(OUT_OF_MEMORY))
def test_a_batch_that_runs_out_of_memory_is_translated_in_halves(sp, monkeypatch, capsys, device: str):
    model = small_model(sp.get_piece_size())
    expected = translate_lines(model, sp, LINES, beam=2, max_tokens=1000)
    sizes: list[int] = []
    monkeypatch.setattr(translate, "generate", out_of_memory_above(2, sizes, device))
    assert translate_lines(model, sp, LINES, beam=2, max_tokens=1000) == expected
    assert sizes == [7, 4, 2, 2, 3, 2, 1]  # the 7 non-empty lines in one batch, then halves until they fit
    err = capsys.readouterr().err
    assert err.count("ran out of memory") == 1 and "7 sentences" in err and "--max-tokens" in err


def test_other_runtime_errors_are_not_taken_for_running_out_of_memory(sp, monkeypatch):
    def generate(model, src, beam, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(translate, "generate", generate)
    with pytest.raises(RuntimeError, match="shapes"):
        translate_lines(small_model(sp.get_piece_size()), sp, LINES)


def test_out_of_memory_on_one_sentence_exits_1_with_one_line(run_dir: Path, monkeypatch):
    monkeypatch.setattr(translate, "generate", out_of_memory_above(0, [], "cpu"))
    result = runner().invoke(main, ["translate", str(run_dir), "--beam", "2"], input="ba de gi\nka\n")
    assert result.exit_code == 1 and "Traceback" not in result.output
    warning, error = result.stderr.strip().splitlines()  # the warning that it halves the batch, then the error
    assert "translating 2 sentences at once" in warning
    assert "ran out of memory translating one sentence of 4 tokens with beam 2" in error and "--beam" in error
