"""`nmt score`: sacreBLEU's own numbers and signatures, --json, and one-line errors for bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sacrebleu
from click.testing import CliRunner
from conftest import stdin_that_does_not_block

import async_nmt
from async_nmt.cli import main
from async_nmt.errors import UserError
from async_nmt.score import corpus_scores, read_hypotheses

REFS = ["The cat sat on the mat.", "Die Katze schläft – heute.", "A dog barks at the moon tonight.", ""]
HYPS = ["The cat sat on a mat.", "Die Katze schläft heute.", "The dog barked at the moon.", "extra"]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_corpus_scores_are_sacrebleus_own():
    scores = corpus_scores(HYPS, REFS)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100
    assert scores["bleu_signature"].startswith("nrefs:1|") and "tok:13a" in scores["bleu_signature"]
    assert "nc:6|nw:0" in scores["chrf_signature"]
    identical = corpus_scores(REFS, REFS)
    assert identical["bleu"] == 100.0 and identical["chrf"] == 100.0  # exactly (it was 100.00000000000004)


def test_mismatched_counts_name_both():
    with pytest.raises(UserError, match="3 hypotheses but 4 references"):
        corpus_scores(HYPS[:3], REFS)


def test_score_command_prints_bleu_and_chrf(tmp_path: Path):
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    expected = corpus_scores(HYPS, REFS)
    details = sacrebleu_details(sacrebleu.metrics.BLEU().corpus_score(HYPS, [REFS]))
    assert lines == [
        f"BLEU = {expected['bleu']:.2f} {details} ({expected['bleu_signature']})",
        f"chrF = {expected['chrf']:.2f} ({expected['chrf_signature']})",
    ]


def sacrebleu_details(score) -> str:
    """What sacreBLEU's text prints after a BLEU score: `88.9/71.4/60.0/33.3 (BP = 0.895 ratio = ...)`."""
    return score.format(width=2).split(" ", 3)[3]


def test_score_json(tmp_path: Path):
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert data["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert set(data) >= {"bleu", "chrf", "bleu_signature", "chrf_signature"}
    own = sacrebleu.corpus_bleu(HYPS, [REFS])  # its n-gram precisions, brevity penalty and lengths too
    assert data["bleu_precisions"] == pytest.approx(own.precisions) and data["bleu_bp"] == pytest.approx(own.bp)
    assert (data["hyp_len"], data["ref_len"], data["bleu_ratio"]) == (
        own.sys_len,
        own.ref_len,
        pytest.approx(own.ratio),
    )


def test_ter_is_sacrebleus_own_with_one_reference_or_several(tmp_path: Path):
    hyp, ref, ref2 = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS), write(tmp_path / "ref2", REFS2)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--ter"])
    assert result.exit_code == 0, result.output
    ter = sacrebleu.metrics.TER()
    expected = ter.corpus_score(HYPS, [REFS]).score
    assert 0 < expected < 100
    assert result.stdout.splitlines()[2] == f"TER = {expected:.2f} ({ter.get_signature()})"
    data = json.loads(runner().invoke(main, ["score", str(hyp), str(ref), str(ref2), "--ter", "--json"]).stdout)
    assert data["ter"] == pytest.approx(sacrebleu.metrics.TER().corpus_score(HYPS, [REFS, REFS2]).score)
    assert data["ter_signature"].startswith("nrefs:2|")
    assert json.loads(runner().invoke(main, ["score", str(ref), str(ref), "--ter", "--json"]).stdout)["ter"] == 0
    assert "ter" not in json.loads(runner().invoke(main, ["score", str(hyp), str(ref), "--json"]).stdout)


def test_lines_split_on_newlines_only(tmp_path: Path):
    # A form feed or a Unicode line separator inside a line must not add lines.
    hyp = tmp_path / "hyp"
    hyp.write_bytes("a\u2028b\x0cc\r\nd\n".encode())
    ref = write(tmp_path / "ref", ["a b c", "d"])
    assert runner().invoke(main, ["score", str(hyp), str(ref), "--json"]).exit_code == 0


@pytest.mark.parametrize(
    "hyp_bytes,ref_bytes,message",
    [
        (None, b"a\n", "hyp: no such file"),
        (b"", b"a\n", "hyp: is empty"),
        (b"a\n", b"", "ref: is empty"),
        (b"a\nb\n", b"a\n", "hyp has 2 line(s) but"),
        (
            b"a\rb\rc\r",
            b"a\nb\nc\n",
            "hyp: 1 line(s) but 3 carriage returns (\\r) inside them: are its lines ended by \\r alone?",
        ),  # (it was "hyp has 1 lines but ref has 3"; and 100 against itself)  # fmt: skip
        (b"a\r\nb\r\n", b"a\rb\r", "ref: 1 line(s) but 2 carriage returns"),  # (\r\n line ends are taken)
        (b"ok\n\xff\xfe bad\n", b"a\nb\n", "hyp: line 2 is not valid UTF-8"),
        (
            "a\nb\n".encode("utf-16"),
            b"a\nb\n",
            "hyp: line 1 is not valid UTF-8; it is UTF-16: convert it (iconv -f UTF-16 -t UTF-8)",
        ),  # fmt: skip
        (  # without a byte order mark: valid UTF-8 with NUL bytes (a line count off by one, "b\0\n\0")
            "a b\nc\n".encode("utf-16-le"),
            b"a b\nc\n",
            "hyp: line 1 has a NUL byte beside each character; it is UTF-16 (LE) without a byte order mark: "
            "convert it (iconv -f UTF-16LE -t UTF-8)",
        ),  # fmt: skip
        (
            b"a b\nc\n",
            "a b\nc\n".encode("utf-16-be"),
            "ref: line 1 has a NUL byte beside each character; it is "
            "UTF-16 (BE) without a byte order mark: convert it (iconv -f UTF-16BE -t UTF-8)",
        ),  # fmt: skip
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, hyp_bytes, ref_bytes, message):
    hyp, ref = tmp_path / "hyp", tmp_path / "ref"
    if hyp_bytes is not None:
        hyp.write_bytes(hyp_bytes)
    ref.write_bytes(ref_bytes)
    result = runner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and result.stderr.startswith("error: ")


REFS2 = ["The cat was sitting on the mat.", "Die Katze schläft heute.", "A dog barks at the moon.", "more"]


def test_several_references_and_stdin_as_sacrebleu_takes_them(tmp_path: Path):
    ref, ref2 = write(tmp_path / "ref", REFS), write(tmp_path / "ref2", REFS2)
    result = runner().invoke(main, ["score", "-", str(ref), str(ref2), "--json"], input="\n".join(HYPS) + "\n")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score)
    assert data["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, REFS2]).score)
    assert data["bleu"] > corpus_scores(HYPS, REFS)["bleu"]  # the second reference counts
    assert data["bleu_signature"].startswith("nrefs:2|") and data["chrf_signature"].startswith("nrefs:2|")


def test_a_reference_of_another_length_is_one_line_naming_it(tmp_path: Path):
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    short = write(tmp_path / "short", REFS2[:3])
    result = runner().invoke(main, ["score", str(hyp), str(ref), str(short)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{hyp} has 4 line(s) but {short} has 3" in result.stderr


@pytest.mark.parametrize(
    "options,bleu_args,chrf_args,fragments",
    [
        (["--tokenize", "char"], {"tokenize": "char"}, {}, ["tok:char"]),
        (["-tok", "intl", "--lowercase"], {"tokenize": "intl", "lowercase": True}, {}, ["tok:intl", "case:lc"]),
        (["--tokenize", "none", "--chrf-word-order", "2"], {"tokenize": "none"}, {"word_order": 2}, ["nw:2"]),
        (["-cw", "1", "--chrf-lowercase"], {}, {"word_order": 1, "lowercase": True}, ["nw:1", "case:lc"]),
    ],
)
def test_sacrebleu_options_give_its_scores_and_signatures(tmp_path: Path, options, bleu_args, chrf_args, fragments):
    from sacrebleu.metrics import BLEU, CHRF

    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), *options])
    assert result.exit_code == 0, result.output
    bleu, chrf = BLEU(**bleu_args), CHRF(**chrf_args)
    bleu_score, chrf_score = bleu.corpus_score(HYPS, [REFS]).score, chrf.corpus_score(HYPS, [REFS]).score
    chrf_name = "chrF" + "+" * chrf_args.get("word_order", 0)
    details = sacrebleu_details(bleu.corpus_score(HYPS, [REFS]))
    assert result.stdout.splitlines() == [
        f"BLEU = {bleu_score:.2f} {details} ({bleu.get_signature()})",
        f"{chrf_name} = {chrf_score:.2f} ({chrf.get_signature()})",
    ]
    assert all(fragment in result.stdout for fragment in fragments)


def test_a_chrf_word_order_above_chrfs_character_order_is_refused(tmp_path: Path):
    """`-cw 1000000` took 521 s and 12.7 GB, and a larger one the machine's memory."""
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "-cw", "7"])
    assert result.exit_code == 2 and "7 is not in the range 0<=x<=6" in result.stderr, result.output
    assert runner().invoke(main, ["score", str(hyp), str(ref), "-cw", "6"]).exit_code == 0


def test_tokenizers_are_sacrebleus_own_list(tmp_path: Path):
    from sacrebleu.metrics import BLEU

    help_text = runner().invoke(main, ["score", "--help"], terminal_width=400).stdout
    assert all(name in help_text for name in BLEU.TOKENIZERS)
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--tokenize", "no-such"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "'no-such' is not one of 'none'" in result.stderr


def test_a_tokenizer_sacrebleu_cannot_load_is_one_line(tmp_path: Path):
    if importlib.util.find_spec("MeCab") is not None:
        pytest.skip("sacreBLEU's Japanese tokenizer is installed here")
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--tokenize", "ja-mecab"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--tokenize ja-mecab: sacreBLEU cannot use it here" in result.stderr and "sacrebleu[ja]" in result.stderr


@pytest.mark.parametrize("end", ["", "  "])  # trailing spaces stripped first, as by sacreBLEU's command line
def test_tokenized_hypotheses_warn_in_one_line_that_names_force(tmp_path: Path, end: str):
    tokenized = [f"line {i} .{end}" for i in range(120)]
    hyp, ref = write(tmp_path / "hyp", tokenized), write(tmp_path / "ref", tokenized)
    result = runner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {hyp}: 100 or more lines end in a tokenized period (' .'); sacreBLEU scores detokenized "
        "text: detokenize it, or give --force if it is"
    ]
    forced = runner().invoke(main, ["score", str(hyp), str(ref), "--force"])
    assert forced.exit_code == 0 and forced.stderr == "" and forced.stdout == result.stdout


def test_score_does_not_import_torch(tmp_path: Path):
    # `nmt score` starts in a fraction of the time that importing torch takes
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    code = ("import sys\nfrom async_nmt.cli import main\n"
            f"main(['score', {str(hyp)!r}, {str(ref)!r}], standalone_mode=False)\n"
            "print('torch' in sys.modules)")  # fmt: skip
    src = str(Path(async_nmt.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize(
    "text", [b"x\ry\n", b"hello\r", b"a\r\r\nb\r\r\n"], ids=["a \\r inside", "one line", "\\r\\r\\n"]
)
def test_a_stray_carriage_return_is_text_not_a_line_end(tmp_path: Path, text: bytes):
    """Refused as \\r-only line ends, though the lines end in \\n (or the text has one line)."""
    hyp = tmp_path / "hyp"
    hyp.write_bytes(text)
    result = runner().invoke(main, ["score", str(hyp), str(hyp)])
    assert result.exit_code == 0, result.stderr


CHINESE = ["我们今天去北京看朋友", "他们明天在上海开会", "这个问题很难回答", "我喜欢喝中国茶"]


def test_a_chinese_target_is_scored_with_sacrebleus_zh_tokenizer():
    """Validation scored Chinese with 13a, which takes a whole line for one word: a valid BLEU of about 0
    whatever the model, which then chose best.pt and counted --patience."""
    hyps = [line[:-1] + "的" for line in CHINESE]  # most characters right, each line's last one wrong
    assert corpus_scores(hyps, CHINESE)["bleu"] == 0.0
    zh = corpus_scores(hyps, CHINESE, language="zh")
    assert zh["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [CHINESE], tokenize="zh").score) and zh["bleu"] > 30
    assert "tok:zh" in zh["bleu_signature"]
    assert corpus_scores(hyps, CHINESE, language="en")["bleu"] == 0.0  # (13a elsewhere, as sacreBLEU's -l picks)


def test_a_language_pair_picks_bleus_tokenizer_as_sacrebleus_l_does(tmp_path: Path):
    hyps = [line[:-1] + "的" for line in CHINESE]
    hyp, ref = write(tmp_path / "hyp.zh", hyps), write(tmp_path / "ref.zh", CHINESE)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "-l", "en-zh", "--json"])
    assert result.exit_code == 0 and result.stderr == "", result.stderr  # (no warning of 13a on Chinese)
    expected = sacrebleu.metrics.BLEU(trg_lang="zh")
    assert json.loads(result.stdout)["bleu"] == pytest.approx(expected.corpus_score(hyps, [CHINESE]).score)
    assert "tok:zh" in json.loads(result.stdout)["bleu_signature"]
    hyp_en, ref_en = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    plain = runner().invoke(main, ["score", str(hyp_en), str(ref_en)]).stdout
    assert runner().invoke(main, ["score", str(hyp_en), str(ref_en), "--language-pair", "de-en"]).stdout == plain
    other = runner().invoke(main, ["score", str(hyp), str(ref), "-l", "zh-en"])  # (13a on a Chinese reference)
    assert other.exit_code == 0 and "looks like Chinese or Japanese text" in other.stderr
    given = runner().invoke(main, ["score", str(hyp), str(ref), "-l", "en-zh", "-tok", "char", "--json"])
    assert "tok:char" in json.loads(given.stdout)["bleu_signature"]  # --tokenize wins, as in sacreBLEU
    for pair in ("zh", "en-", "en_zh", "en-zh-x"):
        refused = runner().invoke(main, ["score", str(hyp), str(ref), "-l", pair])
        assert refused.exit_code == 2 and refused.stderr.strip().splitlines() == [
            f"error: -l must be a language pair SRC-TGT, as en-de (got {pair!r})"
        ]


def test_score_warns_of_a_chinese_reference_with_the_default_tokenizer(tmp_path: Path):
    hyp, ref = tmp_path / "hyp.zh", tmp_path / "ref.zh"
    hyp.write_text("".join(line + "\n" for line in CHINESE[::-1]), encoding="utf-8")
    ref.write_text("".join(line + "\n" for line in CHINESE), encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 0 and "looks like Chinese or Japanese text" in result.stderr
    assert "--tokenize zh" in result.stderr
    result = CliRunner().invoke(main, ["score", str(hyp), str(ref), "--tokenize", "zh"])
    assert result.exit_code == 0 and result.stderr == ""
    (tmp_path / "ref.en").write_text("we go to Beijing today\n" * 4)
    result = CliRunner().invoke(main, ["score", str(hyp), str(tmp_path / "ref.en")])
    assert "looks like" not in result.stderr


def test_gzip_files_are_scored_as_sacrebleu_reads_them_and_named_where_they_cannot_be(tmp_path: Path):
    """WMT's references come as .gz, which sacreBLEU reads: `nmt score` said "line 1 is not valid UTF-8"."""
    import gzip

    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt.gz"
    lines = ["the cat sat on the mat today", "a dog ran in the park at noon"]
    hyp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ref.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    result = CliRunner().invoke(main, ["score", str(hyp), str(ref), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bleu"] == 100.0
    ref.write_bytes(gzip.compress(b"the cat\n")[:-6])  # cut short
    result = CliRunner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 2 and "ref.txt.gz: a damaged gzip file" in result.output
    from async_nmt.score import read_lines  # (as translate reads a file: not decompressed, but named)

    (tmp_path / "source.gz").write_bytes(gzip.compress(b"ba de\n"))
    with pytest.raises(UserError, match=r"source\.gz: line 1 is not valid UTF-8.*gzip-compressed: decompress it"):
        read_lines(tmp_path / "source.gz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
@pytest.mark.parametrize("piped", ["hyp", "ref"])
def test_a_pipe_is_read_to_its_end_once(tmp_path: Path, piped: str):
    """A file was opened twice, for the gzip check, then the text: `nmt score <(...) REF` said "/dev/fd/63: is
    empty", and a FIFO written in two parts lost the first."""
    hyps = [f"sentence number {i} of the test" for i in range(40)]
    paths = {"hyp": write(tmp_path / "hyp.txt", hyps), "ref": write(tmp_path / "ref.txt", hyps)}
    fifo = paths[piped] = tmp_path / "pipe"
    os.mkfifo(fifo)

    def writer() -> None:
        with open(fifo, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in hyps[:10]))
            f.flush()
            time.sleep(0.3)
            f.write("".join(line + "\n" for line in hyps[10:]))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    result = CliRunner().invoke(main, ["score", str(paths["hyp"]), str(paths["ref"]), "--json"])
    thread.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bleu"] == pytest.approx(100.0)


def test_a_target_written_without_spaces_and_no_tokenizer_here_is_warned_of():
    """A Japanese target's valid BLEU is 13a's, about 0, without a word; Chinese has its own tokenizer."""
    from async_nmt.score import tokenizer_warning

    assert "ja-mecab (pip install sacrebleu[ja]) or char" in tokenizer_warning("ja")
    assert tokenizer_warning("th").endswith("nmt score --tokenize char")
    assert [tokenizer_warning(lang) for lang in ("zh", "en", "ko", None)] == [None] * 4
    assert tokenizer_warning("JA") and tokenizer_warning("th_TH")  # (a suffix in another case, with a region)


def test_a_chinese_target_is_chinese_in_any_case_and_with_a_region():
    """`train.ZH`'s valid BLEU was 13a's, one word a line: 0 where `train.zh`'s was 47.94 for the same model."""
    from async_nmt.score import tokenizer_for

    assert [tokenizer_for(lang) for lang in ("zh", "ZH", "zh-CN", "zh_Hant")] == ["zh"] * 4
    assert [tokenizer_for(lang) for lang in ("en", "zhx", "ja", None)] == [None] * 4


def test_unsegmented_means_more_than_half_of_the_letters_are_chinese_or_japanese():
    """A line mixing Han and Latin counts as unsegmented where its Han characters are most of its letters."""
    from async_nmt.score import CJ, looks_unsegmented

    mixed, half, latin = "我们今天去Beijing看朋友", "今天我们都要去Beijing", "We went to 北京 today to see friends"
    # (their Han shares of the letters: more than half, exactly half, well under half)
    assert len(CJ.findall(mixed)) * 2 > sum(ch.isalpha() for ch in mixed)
    assert len(CJ.findall(half)) * 2 == sum(ch.isalpha() for ch in half)
    assert len(CJ.findall(latin)) * 4 < sum(ch.isalpha() for ch in latin)
    assert looks_unsegmented([mixed])
    assert not looks_unsegmented([half]) and not looks_unsegmented([latin])


def test_the_unsegmented_check_reads_more_than_the_first_line(tmp_path: Path):
    """A Chinese reference under an English heading ("Chapter 1") is still warned of."""
    ref = write(tmp_path / "ref.zh", ["Chapter 1", *CHINESE])
    hyp = write(tmp_path / "hyp.zh", ["Chapter 1", *CHINESE[::-1]])
    result = runner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 0, result.output
    assert f"warning: {ref}: looks like Chinese or Japanese text" in result.stderr


@pytest.mark.parametrize("language", ["lo", "km", "my"])
def test_lao_khmer_and_burmese_targets_are_warned_of_as_written_without_spaces(language: str):
    """Lao, Khmer and Burmese have no spaces between words either, and no tokenizer but char here."""
    from async_nmt.score import tokenizer_warning

    warning = tokenizer_warning(language)
    assert warning is not None and f"warning: {language} is written without spaces" in warning
    assert warning.endswith("nmt score --tokenize char")


def test_other_sacrebleu_warnings_are_relayed_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A warning sacreBLEU logs (other than the tokenized-period one) is one line on stderr, naming sacreBLEU."""
    import logging

    from sacrebleu.metrics import BLEU

    corpus_score = BLEU.corpus_score

    def warned(self, *args, **kwargs):
        logging.getLogger("sacrebleu").warning("something odd\n    on two lines")
        return corpus_score(self, *args, **kwargs)

    monkeypatch.setattr(BLEU, "corpus_score", warned)
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: sacreBLEU: something odd on two lines\n"
    assert json.loads(result.stdout)["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)


def test_hypotheses_on_stdin_are_read_to_the_end_of_a_pipe_that_does_not_block(monkeypatch):
    """HYP `-` from a pipe that another program sharing it made non-blocking (O_NONBLOCK) was what had come
    so far: "stdin has 25 line(s) but REF has 100"."""
    with stdin_that_does_not_block(monkeypatch, b"a b\n", b"c\nd\n"):
        assert read_hypotheses(Path("-")) == ["a b", "c", "d"]


def test_stdin_as_a_reference_is_refused(tmp_path: Path):
    """`-` is stdin for HYP only: as a REF it is a one-line error, exit 2."""
    hyp = write(tmp_path / "hyp", HYPS)
    result = runner().invoke(main, ["score", str(hyp), "-"], input="\n".join(REFS) + "\n")
    assert result.exit_code == 2
    assert result.stderr == "error: -: stdin can be HYP only; give each REF as a file\n"


def test_errors_name_stdin_as_stdin(tmp_path: Path):
    """HYP `-` is named "stdin" in the messages about it, not "-"."""
    ref = write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", "-", str(ref)], input="")
    assert result.exit_code == 2 and result.stderr == "error: stdin: is empty\n"
    result = runner().invoke(main, ["score", "-", str(ref)], input="a\nb\n")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: stdin has 2 line(s) but {ref} has {len(REFS)}")


def test_a_chinese_first_reference_is_warned_of_beside_an_english_second(tmp_path: Path):
    """The check reads the first reference: a Chinese one is warned of whatever the second is."""
    zh = write(tmp_path / "ref.zh", CHINESE)
    en = write(tmp_path / "ref.en", ["we go to Beijing today"] * len(CHINESE))
    hyp = write(tmp_path / "hyp.zh", CHINESE[::-1])
    result = runner().invoke(main, ["score", str(hyp), str(zh), str(en)])
    assert result.exit_code == 0, result.output
    assert f"warning: {zh}: looks like Chinese or Japanese text" in result.stderr


def toy_systems(tmp_path: Path) -> tuple[Path, Path, Path, list[str], list[str], list[str]]:
    """A reference of 60 lines, a good system (1 word in 5 replaced) and a poor one (1 in 2), seeded."""
    import random

    rng = random.Random(1)
    words = "the a cat dog sat on mat ran fast slow big small red blue house tree".split()
    refs = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(60)]

    def noisy(p: float) -> list[str]:
        return [" ".join(w if rng.random() > p else rng.choice(words) for w in line.split()) for line in refs]

    good, poor = noisy(0.2), noisy(0.5)
    return (
        write(tmp_path / "ref", refs),
        write(tmp_path / "good", good),
        write(tmp_path / "poor", poor),
        refs,
        good,
        poor,
    )


def test_a_baseline_is_tested_by_sacrebleus_paired_bootstrap(tmp_path: Path):
    """--baseline BASE: sacreBLEU's paired bootstrap resampling, its scores, means, intervals and p-values (as its
    --paired-bs gives them), each score the one `nmt score` gives each file alone; two systems that differ
    this much differ significantly."""
    from sacrebleu.significance import PairedTest

    ref, good, poor, refs, good_lines, poor_lines = toy_systems(tmp_path)
    result = runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(poor), "--json", "--ter"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    paired = data["paired"]
    assert (paired["test"], paired["samples"], paired["seed"], paired["baseline"]) == (
        "paired bootstrap resampling",
        1000,
        "12345",
        str(poor),
    )
    alone = json.loads(runner().invoke(main, ["score", str(poor), str(ref), "--json", "--ter"]).stdout)
    metrics = {"bleu": sacrebleu.metrics.BLEU(), "chrf": sacrebleu.metrics.CHRF(), "ter": sacrebleu.metrics.TER()}
    _, own = PairedTest([("b", poor_lines), ("g", good_lines)], metrics, [refs], test_type="bs", n_samples=1000)()
    for key, name in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        m = paired[key]
        assert (m["score"], m["baseline_score"]) == (pytest.approx(data[key]), pytest.approx(alone[key])), key
        assert m["p_value"] == pytest.approx(own[name][1].p_value) and m["p_value"] < 0.05, key
        assert (m["mean"], m["ci"]) == (pytest.approx(own[name][1].mean), pytest.approx(own[name][1].ci)), key
        assert (m["baseline_mean"], m["baseline_ci"]) == (pytest.approx(own[name][0].mean),
                                                          pytest.approx(own[name][0].ci)), key  # fmt: skip
    text = runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(poor)]).stdout.splitlines()
    b = paired["bleu"]
    assert text[2].startswith(f"paired bootstrap resampling against {poor} (1,000 resamples, seed 12345;")
    assert text[3] == (f"BLEU: {good} {b['score']:.2f} ({b['mean']:.2f} ± {b['ci']:.2f}), baseline "
                       f"{b['baseline_score']:.2f} ({b['baseline_mean']:.2f} ± {b['baseline_ci']:.2f}): difference "
                       f"{b['score'] - b['baseline_score']:+.2f}, p = {b['p_value']:.4f}")  # fmt: skip
    # chrF named as the line of its score names it (sacreBLEU's chrF2 in --json)
    assert text[1].startswith("chrF = ") and text[4].startswith("chrF: ") and len(text) == 5
    fewer = json.loads(runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(poor), "--json",
                                              "--resamples", "50"]).stdout)["paired"]  # fmt: skip
    assert fewer["samples"] == 50 and fewer["bleu"]["p_value"] == pytest.approx(1 / 51)  # none of 50 as far apart


def test_a_baseline_of_the_same_translations_does_not_differ(tmp_path: Path):
    """The same translations differ by nothing, which is all chance: p = 1 (sacreBLEU's own test counts the
    resampled differences above the real one, none, and gave 1/1001, a "significant" difference)."""
    ref, good, _, *_ = toy_systems(tmp_path)
    copy = write(tmp_path / "copy", good.read_text(encoding="utf-8").splitlines())
    paired = json.loads(runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(copy),
                                               "--json"]).stdout)["paired"]  # fmt: skip
    for key in ("bleu", "chrf"):
        assert paired[key]["p_value"] == 1.0 and paired[key]["score"] == paired[key]["baseline_score"], key


def test_a_baseline_that_differs_only_in_what_a_metric_does_not_count_does_not_differ_by_it(tmp_path: Path):
    """Translations that differ from the baseline's only in what a metric does not count (case under -lc, the
    spaces between words) have the same statistics on every line: a difference of +0.00 that every resample
    repeats, all chance, p = 1 (it was 1/(N + 1), "significant"); a metric that counts it keeps sacreBLEU's p."""
    ref, good, _, _, good_lines, _ = toy_systems(tmp_path)
    cased = write(tmp_path / "cased", [line.replace("cat", "Cat") for line in good_lines])
    spaced = write(tmp_path / "spaced", [line.replace(" ", "  ", 1) for line in good_lines])
    lowercased = json.loads(runner().invoke(main, ["score", str(cased), str(ref), "--baseline", str(good), "-lc",
                                                   "--json"]).stdout)["paired"]  # fmt: skip
    assert lowercased["bleu"]["score"] == lowercased["bleu"]["baseline_score"] and lowercased["bleu"]["p_value"] == 1
    assert lowercased["chrf"]["p_value"] < 0.05  # (chrF counts case here: the test as sacreBLEU's)
    paired = json.loads(runner().invoke(main, ["score", str(spaced), str(ref), "--baseline", str(good), "--json",
                                               "--ter"]).stdout)["paired"]  # fmt: skip
    for key in ("bleu", "chrf", "ter"):
        assert paired[key]["score"] == paired[key]["baseline_score"] and paired[key]["p_value"] == 1.0, key


def test_a_baseline_that_cannot_be_tested_is_one_line(tmp_path: Path):
    ref, good, poor, *_ = toy_systems(tmp_path)
    short = write(tmp_path / "short", ["a b c"] * 3)
    cases = [
        (
            ["--baseline", str(short)],
            f"error: {good} has 60 line(s) but the baseline {short} has 3: the counts must match",
        ),  # fmt: skip
        (["--baseline", str(tmp_path / "none")], f"error: {tmp_path / 'none'}: no such file"),
        (["--baseline", "-"], "error: --baseline -: stdin can be HYP only; give the baseline as a file"),
        (["--resamples", "100"], "error: --resamples is of the test against a baseline: give --baseline BASE too"),
        (["--baseline", str(poor), "--resamples", "10001"], "--resamples"),
    ]
    for args, message in cases:
        result = runner().invoke(main, ["score", str(good), str(ref), *args])
        assert result.exit_code == 2 and result.stdout == "", (args, result.output)
        assert len(result.stderr.splitlines()) == 1 and message in result.stderr, (args, result.stderr)


def test_a_seed_that_sacrebleus_paired_test_cannot_take_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """SACREBLEU_SEED that sacreBLEU cannot take was a traceback (ValueError: abc, 1.5, numpy's -3); 0, which its
    test of the two systems takes for no seed, gave other means and intervals at each run, said to be of seed 0."""
    ref, good, poor, *_ = toy_systems(tmp_path)
    for seed in ("abc", "1.5", "-3", "0"):
        monkeypatch.setenv("SACREBLEU_SEED", seed)
        result = runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(poor), "--resamples", "20"])
        assert result.exit_code == 2 and result.stdout == "", (seed, result.output)
        assert result.stderr == (f"error: SACREBLEU_SEED={seed}: the paired test's seed must be a whole number above 0 "
                                 "(sacreBLEU's test takes 0 for no seed), or none for no seed\n"), seed  # fmt: skip
    runs = []
    for seed in ("7", "7", "None"):
        monkeypatch.setenv("SACREBLEU_SEED", seed)
        result = runner().invoke(main, ["score", str(good), str(ref), "--baseline", str(poor), "--resamples", "20",
                                        "--json"])  # fmt: skip
        assert result.exit_code == 0, (seed, result.output)
        runs.append(json.loads(result.stdout)["paired"])
    assert runs[0] == runs[1] and runs[0]["seed"] == "7" and runs[2]["seed"] == "None"  # seeded: the same twice
    monkeypatch.setenv("SACREBLEU_SEED", "abc")
    assert runner().invoke(main, ["score", str(good), str(ref)]).exit_code == 0  # (no test: no seed read)


def test_a_baseline_of_one_line_is_refused(tmp_path: Path):
    """The paired bootstrap resamples lines: of one line, every resample is that line, and any difference came
    out significant (p = 1/(N + 1), its interval ± 0.00). A one-line error; the scores alone are still given."""
    lines = (("hyp", "the cat sat on the mat"), ("ref", "the cat sat on a mat"), ("base", "a dog ran"))
    hyp, ref, base = (write(tmp_path / name, [line]) for name, line in lines)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--baseline", str(base)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr == (f"error: --baseline: {hyp} has 1 line, and the paired bootstrap resamples lines: every "
                             "resample would be that line, its difference no measure of chance; test more "
                             "lines\n")  # fmt: skip
    assert runner().invoke(main, ["score", str(hyp), str(ref)]).exit_code == 0


def test_a_tokenized_baseline_is_warned_of_by_its_own_name(tmp_path: Path):
    tokenized = [f"line {i} ." for i in range(120)]
    hyp, ref = write(tmp_path / "hyp", [f"line {i}." for i in range(120)]), write(tmp_path / "ref", tokenized)
    base = write(tmp_path / "base", tokenized)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--baseline", str(base)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"warning: {base}: 100 or more lines end in a tokenized period (' .'); sacreBLEU scores detokenized "
        "text: detokenize it, or give --force if it is"
    ]


def test_scores_that_round_to_0_are_shown_to_2_significant_digits():
    """An untrained model's BLEU, 0.0017 against 0.0028 (p = 0.0010), read "difference -0.00"."""
    from async_nmt.score import paired_lines

    bleu = {"name": "BLEU", "score": 0.0017, "mean": 0.00169, "ci": 0.000245, "p_value": 0.000999,
            "baseline_score": 0.0028, "baseline_mean": 0.0028, "baseline_ci": 0.0, "signature": ""}  # fmt: skip
    chrf = {**bleu, "name": "chrF2", "score": 40.126, "mean": 40.1, "ci": 0.7, "baseline_score": 39.75}
    lines = paired_lines({"baseline": "base", "samples": 1000, "seed": "12345", "bleu": bleu, "chrf": chrf}, "hyp")
    assert lines[1] == "BLEU: hyp 0.0017 (0.0017 ± 0.00024), baseline 0.0028 (0.0028 ± 0.00): difference -0.0011, " \
                       "p = 0.0010"  # fmt: skip
    bleu["ci"] = 0.0000891  # (not 8.9e-05)
    assert "(0.0017 ± 0.000089)" in paired_lines({"baseline": "b", "samples": 9, "seed": "1", "bleu": bleu}, "h")[1]
    assert lines[2] == "chrF: hyp 40.13 (40.10 ± 0.70), baseline 39.75 (0.0028 ± 0.00): difference +0.38, p = 0.0010"
    chrf["name"] = "chrF2++"  # (--chrf-word-order 2: "chrF++ = ..." above it)
    plus = paired_lines({"baseline": "b", "samples": 9, "seed": "1", "chrf": chrf}, "h")
    assert plus[1].startswith("chrF++: h 40.13")
