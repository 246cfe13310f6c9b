"""sacreBLEU scores (BLEU and chrF or chrF++, and TER if asked, with their signatures) of detokenized
hypotheses against one or more references. sacreBLEU is imported when a score is asked for, never with
`nmt`'s start-up."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import math
import os
import re
import select
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from async_nmt.config import language_code
from async_nmt.errors import (
    GZIP_MAGIC,
    UserError,
    check_line_ends,
    check_not_unmarked_utf16,
    lone_returns,
    not_utf8,
)

if TYPE_CHECKING:
    from sacrebleu.metrics import BLEU, CHRF


def decode_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 bytes -> lines (split on newlines only, so line counts match `wc -l`); errors name the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise not_utf8(name, line, data) from None
    if not text:
        return []
    check_not_unmarked_utf16(name, data)
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    check_line_ends(name, len(lines), data.count(b"\n"), lone_returns(data))
    return [line.removesuffix("\r") for line in lines]


STDIN = "-"  # HYP `-`: stdin, as sacreBLEU and `nmt translate -i -` take it


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, with one-line errors for a missing or unreadable file."""
    return decode_lines(read_bytes(path), str(path))


def read_bytes(path: Path) -> bytes:
    """A file's bytes, with one-line errors for a missing or unreadable file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None


def read_stdin() -> bytes:
    """All of stdin's bytes, to its end (stdin must not be None). A pipe that another program sharing it made
    non-blocking (O_NONBLOCK) is waited on where it is empty: read once, it gave what had come so far (`nmt
    translate --chunk-size 0` translated 25 of 100 lines, exit code 0). A blocking one is read once, as
    before: read again, a terminal would wait for a second Ctrl-D."""
    stream = sys.stdin.buffer
    try:
        fd = stream.fileno()
        blocking = os.get_blocking(fd)
    except (OSError, ValueError, AttributeError):  # (a stdin without a file number, as in tests)
        blocking = True
    if blocking:
        return stream.read()
    chunks: list[bytes] = []
    while (data := stream.read()) != b"":  # (None: nothing yet)
        if data is None:
            select.select([fd], [], [])
        else:
            chunks.append(data)
    return b"".join(chunks)


@dataclass(frozen=True)
class ScoreOptions:
    """sacreBLEU's metric options, named as its command line names them (`sacrebleu --help`)."""

    tokenize: str | None = None  # BLEU's tokenizer; None: sacreBLEU's default (13a)
    lowercase: bool = False  # BLEU
    chrf_lowercase: bool = False
    chrf_word_order: int = 0  # 0: chrF; 2: chrF++
    force: bool = False  # BLEU: no warning about hypotheses that look tokenized
    ter: bool = False  # TER too (sacreBLEU's defaults)
    trg_lang: str = ""  # the target language, as `-l SRC-TGT` gives it: BLEU's tokenizer where none is given


def target_language(pair: str | None) -> str:
    """TGT of a language pair `SRC-TGT` (sacreBLEU's `-l`), "" for none; anything else is a one-line error."""
    if pair is None:
        return ""
    if not re.fullmatch(r"[A-Za-z]+-[A-Za-z]+", pair):
        raise UserError(f"-l must be a language pair SRC-TGT, as en-de (got {pair!r})")
    return pair.split("-")[1].lower()


def bleu_tokenizers() -> tuple[str, ...]:
    """sacreBLEU's BLEU tokenizers (`--tokenize`), as its installed version names them."""
    from sacrebleu.metrics import BLEU

    return tuple(BLEU.TOKENIZERS)


def metrics(options: ScoreOptions) -> tuple[BLEU, CHRF]:
    """sacreBLEU's BLEU and CHRF with `options`; a tokenizer sacreBLEU cannot load here (ja-mecab without
    its extra packages, flores200 whose model cannot be downloaded) is a one-line error."""
    from sacrebleu.metrics import BLEU, CHRF

    try:
        bleu = BLEU(tokenize=options.tokenize, lowercase=options.lowercase, force=options.force,
                    trg_lang=options.trg_lang)  # fmt: skip
    except (ImportError, RuntimeError, OSError, SystemExit) as err:  # SystemExit: its download of a model failed
        why = "its download failed" if isinstance(err, SystemExit) else " ".join(str(err).split())
        if options.tokenize is None and options.trg_lang:  # (chosen by the target language)
            chosen = getattr(BLEU, "_TOKENIZER_MAP", {}).get(options.trg_lang, "its tokenizer")  # (sacreBLEU's own)
            raise UserError(f"-l: BLEU's tokenizer for a {options.trg_lang} target, {chosen}: sacreBLEU cannot use "
                            f"it here ({why}); give another with --tokenize") from None  # fmt: skip
        raise UserError(f"--tokenize {options.tokenize}: sacreBLEU cannot use it here ({why})") from None
    chrf = CHRF(word_order=options.chrf_word_order, lowercase=options.chrf_lowercase)
    return bleu, chrf


def sacrebleu_scores(hyps: list[str], ref_streams: list[list[str]], options: ScoreOptions | None = None) -> dict:
    """Corpus BLEU and chrF of `hyps` against the references `ref_streams` (one list of lines per
    reference file, each as long as `hyps`), and TER where `options` ask for it, with sacreBLEU's signatures."""
    for refs in ref_streams:
        if len(hyps) != len(refs):
            raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references: the counts must match")
    bleu, chrf = metrics(options or ScoreOptions())
    bleu_score = bleu.corpus_score(hyps, ref_streams)
    # (rounded past any digit that means something: sacreBLEU's exp of a sum of logs gives an identical text
    # 100.00000000000004)
    return {
        "bleu": round(float(bleu_score.score), 10),
        "chrf": round(float(chrf.corpus_score(hyps, ref_streams).score), 10),
        # what sacreBLEU prints after BLEU: its n-gram precisions and brevity penalty, the lengths' ratio
        "bleu_precisions": [round(float(p), 10) for p in bleu_score.precisions],
        "bleu_bp": round(float(bleu_score.bp), 10),
        "bleu_ratio": round(float(bleu_score.ratio), 10),
        "hyp_len": int(bleu_score.sys_len),
        "ref_len": int(bleu_score.ref_len),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    } | (ter_score(hyps, ref_streams) if options and options.ter else {})


@dataclass(frozen=True)
class PairedOptions:
    """sacreBLEU's paired bootstrap resampling test (Koehn 2004) of HYP against a baseline's hypotheses of the
    same sources (`sacrebleu REF -i BASE HYP --paired-bs`)."""

    baseline: Path
    samples: int = 1000  # resamples


def paired_seed() -> str:
    """The seed of sacreBLEU's paired test, as it reads it: SACREBLEU_SEED, 12345 where unset, `none` (in any
    case) for none. A value it cannot take is a one-line error: it raised ValueError, a traceback (abc, 1.5, and
    numpy's refusal of -3); and 0, which its test of the two systems takes for no seed while the baseline's
    interval is seeded with it: the hypotheses' means and intervals changed from run to run, said to be of seed 0."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    if seed.lower() == "none":
        return seed
    try:
        value = int(seed)
    except ValueError:
        value = -1
    if value <= 0:
        raise UserError(f"SACREBLEU_SEED={seed}: the paired test's seed must be a whole number above 0 (sacreBLEU's "
                        "test takes 0 for no seed), or none for no seed")  # fmt: skip
    return seed


def paired_scores(hyps: list[str], base: list[str], ref_streams: list[list[str]], options: ScoreOptions,
                  paired: PairedOptions) -> dict:  # fmt: skip
    """sacreBLEU's paired bootstrap resampling of `hyps` against `base` on each metric (BLEU, chrF, TER where
    `options` ask): both scores, their bootstrap means and 95% confidence intervals, and the p-value of their
    difference, seeded as sacreBLEU seeds it (12345, or SACREBLEU_SEED). (Its approximate randomization, the
    other test it has, counts only shuffles that differ by more than the systems do: for two systems that
    differ in one line every shuffle differs by as much, and p is its smallest, 1/(trials + 1).)"""
    from sacrebleu.metrics import TER
    from sacrebleu.significance import PairedTest

    seed = paired_seed()
    bleu, chrf = metrics(options)
    named = {"bleu": bleu, "chrf": chrf} | ({"ter": TER()} if options.ter else {})
    test = PairedTest([("baseline", base), ("hyp", hyps)], named, ref_streams, test_type="bs",
                      n_samples=paired.samples)  # fmt: skip
    signatures, results = test()  # keyed by sacreBLEU's names of the metrics: BLEU, chrF2, TER

    def number(value: float | None) -> float | None:  # (sacreBLEU's are numpy's float32 too: not JSON's)
        return None if value is None else round(float(value), 10)

    out: dict = {"test": "paired bootstrap resampling", "samples": paired.samples,
                 "seed": seed, "baseline": str(paired.baseline)}  # fmt: skip
    for key, name in zip(named, list(results)[1:], strict=True):
        base_result, hyp_result = results[name]
        # the same translations differ by nothing, which is all chance: p = 1 (sacreBLEU counts only resampled
        # differences above the real one, none here, and gave 1/(samples + 1), "significant"); and so do
        # translations that differ only in what the metric does not count (case under -lc, spaces), whose
        # every line has the same statistics: they were a difference of +0.00 with p = 0.001
        same = hyps == base or (
            hyp_result.score == base_result.score
            and named[key]._extract_corpus_statistics(hyps, ref_streams)
            == named[key]._extract_corpus_statistics(base, ref_streams)
        )
        p_value = 1.0 if same else hyp_result.p_value
        out[key] = {
            "name": name, "score": number(hyp_result.score), "mean": number(hyp_result.mean),
            "ci": number(hyp_result.ci), "p_value": number(p_value),
            "baseline_score": number(base_result.score), "baseline_mean": number(base_result.mean),
            "baseline_ci": number(base_result.ci), "signature": str(signatures[name]),
        }  # fmt: skip
    return out


def paired_lines(paired: dict, hyp_name: str) -> list[str]:
    """`paired_scores` as text: what it tested, then a line a metric."""
    lines = [f"paired bootstrap resampling against {paired['baseline']} ({paired['samples']:,} resamples, seed "
             f"{paired['seed']}; score (mean ± 95% CI of the resamples); p < 0.05: a difference unlikely to be "
             "chance):"]  # fmt: skip
    for key in ("bleu", "chrf", "ter"):
        if key in paired:
            m = paired[key]
            name = re.sub(r"^chrF\d+", "chrF", m["name"])  # (sacreBLEU's chrF2++ as the scores above name it)
            lines.append(f"{name}: {hyp_name} {_figure(m['score'])} ({_figure(m['mean'])} ± {_figure(m['ci'])}), "
                         f"baseline {_figure(m['baseline_score'])} ({_figure(m['baseline_mean'])} ± "
                         f"{_figure(m['baseline_ci'])}): difference {_figure(m['score'] - m['baseline_score'], '+')}, "
                         f"p = {m['p_value']:.4f}")  # fmt: skip
    return lines


def _figure(value: float, sign: str = "") -> str:
    """A score as the tables show it, to 2 decimals, or to 2 significant digits where those show 0 and it is not
    (the BLEU of an untrained model, 0.0017 against 0.0028, read "difference -0.00, p = 0.0010")."""
    if not 0 < abs(value) < 0.005:
        return f"{value:{sign}.2f}"
    return f"{value:{sign}.{1 - math.floor(math.log10(abs(value)))}f}"  # (0.000089, not .2g's 8.9e-05)


def bleu_details(scores: dict) -> str:
    """What sacreBLEU prints after the BLEU score: `88.9/71.4/60.0/33.3 (BP = 0.895 ratio = 0.900 hyp_len = 9
    ref_len = 10)`, the 1- to 4-gram precisions, the brevity penalty and the lengths (of `sacrebleu_scores`)."""
    precisions = "/".join(f"{p:.1f}" for p in scores["bleu_precisions"])
    return (f"{precisions} (BP = {scores['bleu_bp']:.3f} ratio = {scores['bleu_ratio']:.3f} "
            f"hyp_len = {scores['hyp_len']:d} ref_len = {scores['ref_len']:d})")  # fmt: skip


def ter_score(hyps: list[str], ref_streams: list[list[str]]) -> dict:
    """sacreBLEU's corpus TER (edits per reference word, in %) and its signature."""
    from sacrebleu.metrics import TER

    ter = TER()
    return {
        "ter": round(float(ter.corpus_score(hyps, ref_streams).score), 10),
        "ter_signature": str(ter.get_signature()),
    }


def corpus_scores(hyps: list[str], refs: list[str], language: str | None = None) -> dict:
    """Corpus BLEU and chrF of `hyps` against one reference each, with sacreBLEU's defaults for the target
    `language` (`tokenizer_for`) and their signatures."""
    return sacrebleu_scores(hyps, [refs], ScoreOptions(tokenize=tokenizer_for(language)))


def tokenizer_for(language: str | None) -> str | None:
    """BLEU's tokenizer for a target language, as sacreBLEU's `-l SRC-zh` picks it: `zh` for Chinese, which
    has no spaces between words (13a scored a whole line as one word, and a valid BLEU of about 0 chose
    best.pt); None (13a) elsewhere. (Japanese and Korean, whose tokenizers need MeCab, stay 13a.) The
    language is read as `language_code` reads it (`ZH` and `zh-CN` are Chinese: `train.ZH`'s valid BLEU was
    13a's, 0)."""
    return "zh" if language_code(language) == "zh" else None


UNSPACED = ("ja", "th", "lo", "km", "my")  # written without spaces between words, with no tokenizer here


def tokenizer_warning(language: str | None) -> str | None:
    """A warning for a target language whose words 13a cannot split and sacreBLEU has no tokenizer for that
    needs nothing more (ja-mecab needs MeCab): its valid BLEU stays near 0 (zh has its own, `tokenizer_for`)."""
    if language_code(language) not in UNSPACED:
        return None
    tokenizers = "ja-mecab (pip install sacrebleu[ja]) or char" if language_code(language) == "ja" else "char"
    return (f"warning: {language} is written without spaces between words, which 13a, the tokenizer of the valid "
            "BLEU, does not split: the valid BLEU stays near 0, and best.pt follows the valid loss between "
            f"equal BLEUs; score translations with nmt score --tokenize {tokenizers}")  # fmt: skip


CJ = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # kana and Han (not Hangul)


def looks_unsegmented(lines: list[str], sample: int = 1000) -> bool:
    """Whether `lines` look like Chinese or Japanese text: most of the first `sample` lines' letters are of
    those scripts. (Their words have no spaces between them: 13a scores whole runs of them as one word.
    Korean, written with spaces, is not counted.)"""
    text = "".join(lines[:sample])
    letters = sum(ch.isalpha() for ch in text)
    return letters > 0 and len(CJ.findall(text)) > letters / 2


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def sacrebleu_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings sacreBLEU logs in the block, kept from stderr (where Python's last-resort handler would
    print them) so that the command can word them as its own."""
    logger, handler = logging.getLogger("sacrebleu"), _Collect()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def read_scored(path: Path) -> list[str]:
    """The lines of a file to score, gzip-compressed or not, as sacreBLEU reads them (WMT's references come
    as .gz; one was "line 1 is not valid UTF-8"). Read once: a pipe (`<(...)`, a FIFO) is read to its end
    (it was opened twice, for the gzip check and then the text: "/dev/fd/63: is empty", or the lines after
    the first chunk)."""
    data = read_bytes(path)
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(f"{path}: a damaged gzip file ({err})") from None
    return decode_lines(data, str(path))


def read_hypotheses(hyp: Path) -> list[str]:
    """The lines of the file `hyp` (gzip-compressed or not), or of stdin where it is `-`."""
    if str(hyp) != STDIN:
        return read_scored(hyp)
    if sys.stdin is None:
        raise UserError("stdin is closed; give HYP as a file")
    return decode_lines(read_stdin(), "stdin")


def print_warnings(warnings: list[logging.LogRecord], name: str) -> None:
    """sacreBLEU's warnings about the hypotheses `name`, on stderr. Its warning about tokenized hypotheses is
    three lines and points at its Python API's `force` parameter; its command line's --force is ours too, so
    the warning says that, in one line."""
    tokenized = [w for w in warnings if w.funcName == "_extract_corpus_statistics"]
    if tokenized:
        print(f"warning: {name}: 100 or more lines end in a tokenized period (' .'); sacreBLEU scores "
              "detokenized text: detokenize it, or give --force if it is", file=sys.stderr)  # fmt: skip
    for warning in warnings:
        if warning not in tokenized:
            print(f"warning: sacreBLEU: {' '.join(warning.getMessage().split())}", file=sys.stderr)


def score_command(hyp: Path, refs: list[Path], options: ScoreOptions | None = None, as_json: bool = False,
                  paired: PairedOptions | None = None) -> None:  # fmt: skip
    """`nmt score`: print BLEU and chrF of the file `hyp` (stdin where it is `-`) against the files `refs`, and
    with `paired` a significance test against a baseline's hypotheses."""
    options = options or ScoreOptions()
    for ref in refs:
        if str(ref) == STDIN:
            raise UserError("-: stdin can be HYP only; give each REF as a file")
    if paired and str(paired.baseline) == STDIN:
        raise UserError("--baseline -: stdin can be HYP only; give the baseline as a file")
    if paired:
        paired_seed()  # (before any file is read)
    hyp_name = "stdin" if str(hyp) == STDIN else str(hyp)
    # trailing whitespace stripped, as sacreBLEU's command line reads its files: the same scores either way,
    # and its warning about tokenized hypotheses sees "... .  " as ending in " ."
    hyps = [line.rstrip() for line in read_hypotheses(hyp)]
    if not hyps:
        raise UserError(f"{hyp_name}: is empty")
    ref_streams = []
    for ref in refs:
        lines = read_scored(ref)
        if not lines:
            raise UserError(f"{ref}: is empty")
        if len(lines) != len(hyps):
            raise UserError(f"{hyp_name} has {len(hyps):,} line(s) but {ref} has {len(lines):,}: the counts must "
                            "match")  # fmt: skip
        ref_streams.append([line.rstrip() for line in lines])
    base = None
    if paired:
        base = [line.rstrip() for line in read_scored(paired.baseline)]
        if not base:
            raise UserError(f"{paired.baseline}: is empty")
        if len(base) != len(hyps):
            raise UserError(f"{hyp_name} has {len(hyps):,} line(s) but the baseline {paired.baseline} has "
                            f"{len(base):,}: the counts must match")  # fmt: skip
        if len(hyps) == 1:  # (every resample is that line: any difference came out significant, p = 1/(N + 1))
            raise UserError(f"--baseline: {hyp_name} has 1 line, and the paired bootstrap resamples lines: every "
                            "resample would be that line, its difference no measure of chance; test more "
                            "lines")  # fmt: skip
    chosen = options.trg_lang in ("zh", "ja", "ko")  # (sacreBLEU's -l picks zh, ja-mecab, ko-mecab for them)
    if options.tokenize is None and not chosen and looks_unsegmented(ref_streams[0]):
        print(f"warning: {refs[0]}: looks like Chinese or Japanese text, whose words the default tokenizer "
              "(13a) does not split: give --tokenize zh for Chinese (ja-mecab or char for Japanese), as "
              "sacreBLEU's -l picks it", file=sys.stderr)  # fmt: skip
    with sacrebleu_warnings() as warnings:
        scores = sacrebleu_scores(hyps, ref_streams, options)
    print_warnings(warnings, hyp_name)
    if paired and base is not None:
        with sacrebleu_warnings() as warnings:  # (the baseline's own, naming it)
            sacrebleu_scores(base, ref_streams, options)
        print_warnings(warnings, str(paired.baseline))
        # (forced: each side's warnings were given above, and the test would give them again)
        scores["paired"] = paired_scores(hyps, base, ref_streams, dataclasses.replace(options, force=True), paired)
    if as_json:
        print(json.dumps(scores))
    else:
        chrf = "chrF" + "+" * options.chrf_word_order  # sacreBLEU's names (chrF2++) without the beta
        print(f"BLEU = {scores['bleu']:.2f} {bleu_details(scores)} ({scores['bleu_signature']})")
        print(f"{chrf} = {scores['chrf']:.2f} ({scores['chrf_signature']})")
        if options.ter:
            print(f"TER = {scores['ter']:.2f} ({scores['ter_signature']})")
        for line in paired_lines(scores["paired"], hyp_name) if "paired" in scores else []:
            print(line)
