"""`nmt score`: sacreBLEU's own numbers and signatures, --json, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from click.testing import CliRunner

from async_nmt.cli import main
from async_nmt.errors import UserError
from async_nmt.score import corpus_scores

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
    assert corpus_scores(REFS, REFS)["bleu"] == pytest.approx(100.0)


def test_mismatched_counts_name_both():
    with pytest.raises(UserError, match="3 hypotheses but 4 references"):
        corpus_scores(HYPS[:3], REFS)


def test_score_command_prints_bleu_and_chrf(tmp_path: Path):
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    expected = corpus_scores(HYPS, REFS)
    assert lines == [
        f"BLEU = {expected['bleu']:.2f} ({expected['bleu_signature']})",
        f"chrF = {expected['chrf']:.2f} ({expected['chrf_signature']})",
    ]


def test_score_json(tmp_path: Path):
    hyp, ref = write(tmp_path / "hyp", HYPS), write(tmp_path / "ref", REFS)
    result = runner().invoke(main, ["score", str(hyp), str(ref), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert data["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert set(data) >= {"bleu", "chrf", "bleu_signature", "chrf_signature"}


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
        (b"a\nb\n", b"a\n", "hyp has 2 lines but"),
        (b"ok\n\xff\xfe bad\n", b"a\nb\n", "hyp: line 2 is not valid UTF-8"),
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
