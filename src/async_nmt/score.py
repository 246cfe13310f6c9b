"""sacreBLEU scores (BLEU and chrF, with their signatures) of detokenized hypotheses against references."""

from __future__ import annotations

import json
from pathlib import Path

from async_nmt.errors import UserError


def decode_lines(data: bytes, name: str) -> list[str]:
    """UTF-8 bytes -> lines (split on newlines only, so line counts match `wc -l`); errors name the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{name}: line {line} is not valid UTF-8") from None
    if not text:
        return []
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, with one-line errors for a missing or unreadable file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    return decode_lines(data, str(path))


def corpus_scores(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU and chrF of `hyps` against one reference each, with sacreBLEU's signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hyps) != len(refs):
        raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references: the counts must match")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": float(bleu.corpus_score(hyps, [refs]).score),
        "chrf": float(chrf.corpus_score(hyps, [refs]).score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


def score_command(hyp: Path, ref: Path, as_json: bool = False) -> None:
    """`nmt score`: print BLEU and chrF of the file `hyp` against the file `ref`."""
    hyps, refs = read_lines(hyp), read_lines(ref)
    for path, lines in ((hyp, hyps), (ref, refs)):
        if not lines:
            raise UserError(f"{path}: is empty")
    if len(hyps) != len(refs):
        raise UserError(f"{hyp} has {len(hyps)} lines but {ref} has {len(refs)}: the counts must match")
    scores = corpus_scores(hyps, refs)
    if as_json:
        print(json.dumps(scores))
    else:
        print(f"BLEU = {scores['bleu']:.2f} ({scores['bleu_signature']})")
        print(f"chrF = {scores['chrf']:.2f} ({scores['chrf_signature']})")
