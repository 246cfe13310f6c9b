"""The recipes: bible-de-en.sh end to end in a tiny configuration, the WMT ones as dry runs (no network)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BIN = Path(sys.executable).parent  # the environment running the tests, which has `nmt`
WMT = ["wmt14-en-de.sh", "wmt16-en-ro.sh", "wmt17-en-de.sh"]


def knobs(recipe: str) -> set[str]:
    """The knobs a recipe's header documents (`#   NAME  ...` or `#   A, B  ...`)."""
    text = (RECIPES / recipe).read_text(encoding="utf-8")
    return {name for line in re.findall(r"^#   ([A-Z_]+(?:, [A-Z_]+)*) ", text, re.M) for name in line.split(", ")}


def run_recipe(recipe: str, timeout: float = 60, **env: object) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in knobs(recipe)}  # a knob left in the shell must not leak
    clean["PATH"] = f"{BIN}{os.pathsep}{clean.get('PATH', '')}"
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        ["bash", str(RECIPES / recipe)], env=clean, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", *WMT])
def test_every_knob_is_documented(recipe: str) -> None:
    text = (RECIPES / recipe).read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n# ") and "\nset -euo pipefail\n" in text
    if recipe in WMT:  # the shared knobs of the WMT recipes are set in the file they source
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/wmt-defaults.sh"' in text
        text += (RECIPES / "wmt-defaults.sh").read_text(encoding="utf-8")
    defaults = set(re.findall(r"^([A-Z_]+)=\$\{\1:-", text, re.M))
    assert defaults and defaults == knobs(recipe)


@pytest.mark.slow
def test_bible_recipe_end_to_end(synthetic_raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # one thread: the tiny model gains little from two, and spin-waits when another job shares the cores
    result = run_recipe(
        "bible-de-en.sh", timeout=300, OUT=out, RAW=synthetic_raw, SRC="src", TGT="tgt", SIMULATE=1, WORKERS=2,
        MAX_UPDATES=20, VALID_EVERY=10, MAX_TOKENS=1024, VOCAB_SIZE=200, VALID_MAX_SENTENCES=20, BEAM=1,
        NMT=BIN / "nmt", OMP_NUM_THREADS=1,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("sync", "async", "async-accum"):
        assert (out / "runs" / mode / "events.jsonl").is_file()
        assert (out / "test" / f"{mode}.tgt").is_file()
    assert result.stdout.count("BLEU =") == 3  # the test set scored with each run
    for name in ("report.md", "bleu_over_time.png", "valid_loss.png"):
        assert (out / "report" / name).stat().st_size > 0
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "async-accum" in markdown and "predicted" in markdown  # SIMULATE=1 reports on the predicted clock


@pytest.mark.parametrize("recipe", WMT)
def test_wmt_recipes_dry_run(recipe: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_recipe(recipe, OUT=out, DRY_RUN=1)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for expected in ("--preset base", "--lr 0.0003", "--warmup 16000", "--clip-norm 5", "--label-smoothing 0.1",
                     "--workers 4", "--devices cuda:0,cuda:1,cuda:2,cuda:3", "--mode async-accum --accum 4",
                     "curl -fL", "--echo src", "--echo ref", f"nmt report {out}/runs/sync"):  # fmt: skip
        assert expected in text, expected
    assert not out.exists()  # a dry run writes nothing and downloads nothing
    pair = "en-ro" if "en-ro" in recipe else "en-de"
    test_set = {"wmt14-en-de.sh": "wmt14/full", "wmt16-en-ro.sh": "wmt16", "wmt17-en-de.sh": "wmt17"}[recipe]
    assert f"sacrebleu -t {test_set} -l {pair} --echo src > {out}/raw/test.en" in text
    assert f"nmt preprocess {out}/raw {out}/bin --src en --tgt {pair[3:]}" in text


def test_wmt_recipe_uses_downloaded_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("training-parallel-ep-v8/europarl-v8.ro-en.en", "training-parallel-ep-v8/europarl-v8.ro-en.ro",
                 "SETIMES.en-ro.en", "SETIMES.en-ro.ro"):  # fmt: skip
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("a line\n", encoding="utf-8")
    result = run_recipe("wmt16-en-ro.sh", OUT=tmp_path / "out", DATA=data, DRY_RUN=1, SIMULATE=1, DEVICES="cuda:0")
    assert result.returncode == 0, result.stderr
    assert "curl" not in result.stdout and "tar " not in result.stdout and "zipfile" not in result.stdout
    assert f"cat {data}/training-parallel-ep-v8/europarl-v8.ro-en.ro {data}/SETIMES.en-ro.ro" in result.stdout
    assert "--devices cuda:0 --" in result.stdout and "--simulate" in result.stdout and "--x predicted" in result.stdout
