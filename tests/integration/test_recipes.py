"""The recipes: bible-de-en.sh and wmt16-en-ro.sh (on a tiny stand-in of its downloads) end to end in a tiny
configuration, the WMT ones also as dry runs (no network)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import command, write_synthetic_corpus

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
BIN = command("nmt").parent  # the environment running the tests, which has `nmt`
WMT = ["wmt14-en-de.sh", "wmt16-en-ro.sh", "wmt17-en-de.sh"]
# the knobs common.sh checks as it is sourced, for scripts that source it for its functions
KNOBS = (
    "DRY_RUN=0 SIMULATE=0 X=time MODES=sync PRESET=micro WORKERS=1 ACCUM=1 BEAM=1 MAX_TOKENS=64 VOCAB_SIZE=64 "
    "WARMUP=0 MAX_UPDATES=1 VALID_EVERY=0 VALID_MAX_SENTENCES=0 LR=1e-3 CLIP_NORM=0 LABEL_SMOOTHING=0 "
    "MAX_TIME=0 TARGET_BLEU= DEVICES=cpu WORKER_SPEEDS= SEEDS=1"
)


def knobs(recipe: str) -> set[str]:
    """The knobs a recipe's header documents (`#   NAME  ...` or `#   A, B  ...`)."""
    text = (RECIPES / recipe).read_text(encoding="utf-8")
    return {name for line in re.findall(r"^#   ([A-Z_]+(?:, [A-Z_]+)*) ", text, re.M) for name in line.split(", ")}


def run_recipe(
    recipe: str, timeout: float = 60, args: tuple[str, ...] = (), **env: object
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in knobs(recipe)}  # a knob left in the shell must not leak
    clean["PATH"] = f"{BIN}{os.pathsep}{clean.get('PATH', '')}"
    clean.update({k: str(v) for k, v in env.items()})
    return subprocess.run(
        ["bash", str(RECIPES / recipe), *args], env=clean, capture_output=True, text=True, timeout=timeout, check=False
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
    # one thread: the micro model gains little from two, and spin-waits when another job shares the cores
    result = run_recipe(
        "bible-de-en.sh", timeout=300, OUT=out, RAW=synthetic_raw, SRC="src", TGT="tgt", SIMULATE=1, WORKERS=2,
        MAX_UPDATES=20, VALID_EVERY=10, MAX_TOKENS=1024, VOCAB_SIZE=200, VALID_MAX_SENTENCES=20, BEAM=1,
        NMT=BIN / "nmt", OMP_NUM_THREADS=1, PRESET="micro",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for mode in ("sync", "async", "async-accum"):
        assert (out / "runs" / mode / "events.jsonl").is_file()
        assert (out / "test" / f"{mode}.tgt").is_file()
    assert result.stdout.count("BLEU =") == 3  # the test set scored with each run
    # each after the first tested against the first's translations (nmt score --baseline)
    assert result.stdout.count(f"paired bootstrap resampling against {out / 'test' / 'sync.tgt'} ") == 2
    for name in ("report.md", "bleu_over_time.png", "valid_loss.png"):
        assert (out / "report" / name).stat().st_size > 0
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "async-accum" in markdown and "predicted" in markdown  # SIMULATE=1 reports on the predicted clock

    # run again, the recipe keeps what it made: the corpus is not preprocessed again, and each run resumes
    events = {mode: (out / "runs" / mode / "events.jsonl").read_bytes() for mode in ("sync", "async", "async-accum")}
    again = dict(OUT=out, RAW=synthetic_raw, SRC="src", TGT="tgt", SIMULATE=1, WORKERS=2, MAX_UPDATES=20,
                 VALID_EVERY=10, MAX_TOKENS=1024, VOCAB_SIZE=200, VALID_MAX_SENTENCES=20, BEAM=1,
                 NMT=BIN / "nmt", OMP_NUM_THREADS=1, PRESET="micro")  # fmt: skip
    listed = run_recipe("bible-de-en.sh", DRY_RUN=1, **again).stdout
    assert " preprocess " not in listed and "--force" not in listed.split("corpus get")[-1]
    assert listed.count(" --resume") == 3
    result = run_recipe("bible-de-en.sh", timeout=300, **{**again, "MODES": "sync"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to do" in result.stderr and result.stdout.count("BLEU =") == 1
    assert all((out / "runs" / mode / "events.jsonl").read_bytes() == log for mode, log in events.items())


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", "wmt17-en-de.sh"])
def test_seeds_train_each_mode_with_each_seed_and_test_it_against_the_first_modes_of_that_seed(
    recipe: str, tmp_path: Path
) -> None:
    """SEEDS="1 2": runs/MODE-sSEED each, trained with --seed SEED, its test translation scored against the
    first mode's of the same seed, and every run in the report (whose seeds table then sums each mode up); one
    seed, the default, keeps runs/MODE, as before SEEDS."""
    out = tmp_path / "out"
    listed = run_recipe(recipe, OUT=out, DRY_RUN=1, MODES="sync async-accum", SEEDS="1 2").stdout.splitlines()
    trains = [line for line in listed if line.startswith("nmt train ")]
    assert [(line.split()[3], line.split()[line.split().index("--seed") + 1]) for line in trains] == [
        (str(out / "runs" / f"{mode}-s{seed}"), str(seed)) for mode in ("sync", "async-accum") for seed in (1, 2)
    ]
    scores = [line.split()[2:] for line in listed if line.startswith("nmt score ")]
    test = out / "test"
    assert [[s[0], *s[2:]] for s in scores] == [
        [str(test / "sync-s1.en") if "bible" in recipe else str(test / "sync-s1.de")],
        [str(test / "sync-s2.en") if "bible" in recipe else str(test / "sync-s2.de")],
        *(
            [str(test / f"async-accum-s{s}.{t}"), "--baseline", str(test / f"sync-s{s}.{t}")]
            for s in (1, 2)
            for t in ["en" if "bible" in recipe else "de"]
        ),
    ]
    report = next(line for line in listed if line.startswith("nmt report "))
    assert all(str(out / "runs" / f"{m}-s{s}") in report.split() for m in ("sync", "async-accum") for s in (1, 2))
    one = run_recipe(recipe, OUT=out, DRY_RUN=1, MODES="sync").stdout
    assert f"train {out / 'bin'} {out / 'runs' / 'sync'} " in one and "--seed 1" in one


@pytest.mark.parametrize("recipe", WMT)
def test_wmt_recipes_dry_run(recipe: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_recipe(recipe, OUT=out, DRY_RUN=1)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for expected in ("--preset base", "--lr 0.0003", "--warmup 16000", "--clip-norm 5", "--label-smoothing 0.1",
                     "--workers 4", "--devices cuda:0,cuda:1,cuda:2,cuda:3", "--mode async-accum --accum 4",
                     "curl -fsSL", "--echo src", "--echo ref", f"nmt report {out}/runs/sync"):  # fmt: skip
        assert expected in text, expected
    assert not out.exists()  # a dry run writes nothing and downloads nothing
    pair = "en-ro" if "en-ro" in recipe else "en-de"
    test_set = {"wmt14-en-de.sh": "wmt14/full", "wmt16-en-ro.sh": "wmt16", "wmt17-en-de.sh": "wmt17"}[recipe]
    assert f"sacrebleu -t {test_set} -l {pair} --echo src > {out}/raw/test.en" in text
    assert f"nmt preprocess {out}/raw {out}/bin --src en --tgt {pair[3:]}" in text


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", "wmt14-en-de.sh"])
@pytest.mark.parametrize(
    "knob, value, message",
    [("DRY_RUN", "true", "DRY_RUN=true: give 0 or 1"), ("SIMULATE", "yes", "SIMULATE=yes: give 0 or 1"),
     ("X", "bleu", "X=bleu: give one of"), ("MODES", "sync bogus", "MODES: 'bogus' is not one of"),
     ("MODES", " ", "MODES is empty"), ("X", "predicted", "X=predicted needs SIMULATE=1"),
     ("MODES", "sync async sync", "MODES: 'sync' is given twice"),
     ("MODES", "sync,async", "MODES: 'sync,async' is not one of sync, async, async-accum (separated by spaces"),
     ("PRESET", "huge", "PRESET=huge: give one of micro"), ("WORKERS", "0", "WORKERS=0: give a whole number"),
     ("BEAM", "0", "BEAM=0: give a whole number"), ("VALID_EVERY", "-1", "VALID_EVERY=-1: give a whole number"),
     ("TARGET_BLEU", "abc", "TARGET_BLEU=abc: give a number"), ("LR", "fast", "LR=fast: give a number"),
     ("MODES", "\t\n", "MODES is empty"), ("LR", "0", "LR=0: give a number above 0"),
     ("LABEL_SMOOTHING", "1.5", "LABEL_SMOOTHING=1.5: give a number below 1"),
     ("TARGET_BLEU", "0.0", "TARGET_BLEU=0.0: give a number above 0"),
     # (these failed only at the first nmt train, after the corpus was fetched and preprocessed; MAX_TIME=0
     # with MAX_UPDATES=0, the default, trained the first mode until Ctrl-C; user test)
     ("TARGET_BLEU", "-1", "TARGET_BLEU=-1: give a number above 0"), ("MAX_TIME", "0", "MAX_TIME=0 and MAX_UPDATES=0"),
     ("DEVICES", "gpu", "DEVICES=gpu: give cpu or cuda:N"), ("DEVICES", "cpu,", "DEVICES=cpu,: give cpu"),
     ("WORKER_SPEEDS", "1,1", "WORKER_SPEEDS=1,1: give 4 speeds"),
     ("WORKER_SPEEDS", "1,1,1,0", "WORKER_SPEEDS=1,1,1,0: give speeds between 0.001 and 1000"),
     # (these two failed only at nmt train or preprocess, after the corpus was fetched; a user test)
     ("WORKER_SPEEDS", "1,1,1,0.5,", "WORKER_SPEEDS=1,1,1,0.5,: give comma-separated numbers"),
     ("VOCAB_SIZE", "4", "VOCAB_SIZE=4: give a vocabulary of at least 8 pieces"),
     # (beyond a double's range, mawk compared them as text: the no-limit guard let 1e-400 through, which nmt
     # train reads as 0, and 1e400 was refused only at nmt train or at the report, after the runs; a user test)
     ("MAX_TIME", "1e-400", "MAX_TIME=1e-400 and MAX_UPDATES=0: give one of them a limit"),
     ("LR", "1e400", "LR=1e400: give a number above 0, a finite one"),
     ("TARGET_BLEU", "1e400", "TARGET_BLEU=1e400: give a number above 0, a finite one"),
     ("LR", "1e-400", "LR=1e-400: give a number above 0"),
     # (beyond what nmt train or translate take: refused at the first run, after the corpus was fetched and
     # preprocessed, or at the first translation, after the run had trained; a user sweep)
     ("WORKERS", "2000", "WORKERS=2000: give a whole number from 1 to 1024"),
     ("WORKERS", "99999999999999999999", "WORKERS=99999999999999999999: give a whole number from 1 to 1024"),
     ("ACCUM", "2000000", "ACCUM=2000000: give a whole number from 1 to 1048576"),
     ("BEAM", "3000000000", "BEAM=3000000000: give a whole number from 1 to 2^31"),
     ("SEEDS", "1 x", "SEEDS: 'x' is not a whole number"), ("SEEDS", "1 2 1", "SEEDS: '1' is given twice"),
     ("SEEDS", " ", "SEEDS is empty"), ("SEEDS", "1,2", "SEEDS: '1,2' is not a whole number"),
     ("SEEDS", "99999999999", "SEEDS: '99999999999' is not a whole number of at most 9 digits"),
     ("SEEDS", "1 01", "SEEDS: '01' is not a whole number of at most 9 digits, written plainly (01 is 1"),
     ("SEEDS", "-0", "SEEDS: '-0' is not a whole number")],
)  # fmt: skip
def test_bad_knobs_fail_before_anything_runs(recipe: str, knob: str, value: str, message: str,
                                             tmp_path: Path) -> None:  # fmt: skip
    """DRY_RUN=true ran the recipe for real (downloads and all), SIMULATE=yes was taken as 0, and a bad X or
    mode, an X of predicted without SIMULATE=1, an unknown preset, no modes, a bad number failed only after the
    data was fetched and preprocessed, or after hours of training."""
    result = run_recipe(recipe, OUT=tmp_path / "out", **{knob: value})
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", "wmt14-en-de.sh"])
def test_worker_speeds_with_one_worker_fail_before_anything_runs(recipe: str, tmp_path: Path) -> None:
    """WORKERS=1 with WORKER_SPEEDS=1 (a speed a worker) passed the checks, and nmt train refused it (`--worker-speeds
    needs several workers`) only after the corpus was fetched and preprocessed."""
    result = run_recipe(recipe, OUT=tmp_path / "out", WORKERS=1, WORKER_SPEEDS=1)
    assert result.returncode == 2 and result.stderr == "error: WORKER_SPEEDS=1: needs WORKERS of 2 or more " \
        "(WORKERS=1)\n", result.stderr  # fmt: skip
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", "wmt14-en-de.sh"])
def test_help_shows_the_knobs_and_an_argument_is_refused(recipe: str, tmp_path: Path) -> None:
    """Arguments were ignored: `bash RECIPE --help` began the whole run (the corpus, then hours of training,
    or the WMT downloads)."""
    result = run_recipe(recipe, OUT=tmp_path / "out", args=("--help",))
    assert result.returncode == 0 and "Knobs (environment variables" in result.stdout, result.stderr
    assert all(f"  {knob}" in result.stdout for knob in ("OUT", "MAX_TIME", "DRY_RUN"))
    result = run_recipe(recipe, OUT=tmp_path / "out", args=("--max-time", "60"))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {recipe} takes no arguments (got: --max-time "
                                                               "60); its knobs are environment variables")  # fmt: skip
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "curl, said",
    [
        ("curl: (6) Could not resolve host: www.statmt.org", "is the internet reachable?"),
        # the server answered: the file is not there (it asked whether the internet was reachable)
        ("curl: (22) The requested URL returned error: 404", "the server has not got it: its address may have changed"),
        # a server down for a while, or one that limits its rate: no new address to look for
        ("curl: (22) The requested URL returned error: 503", "the server refused it or failed: try again later"),
    ],
    ids=["offline", "http-404", "http-503"],
)
def test_a_download_that_fails_is_one_line_and_leaves_no_part(tmp_path: Path, curl: str, said: str) -> None:
    """Offline, curl's progress meter, its retries' warnings and its error came through, and the recipe ended
    with curl's exit code, naming nothing of its own."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "curl").write_text(f"#!/bin/sh\necho '{curl}' >&2\nexit {curl[7:9].strip(')')}\n")
    (fake / "curl").chmod(0o755)
    out = tmp_path / "out"
    result = run_recipe("wmt14-en-de.sh", OUT=out, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 1, result.stderr
    url = "https://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz"
    assert result.stderr == f"error: could not download {url} into {out}/download ({curl}); {said}\n"
    assert list((out / "download").iterdir()) == []


def test_a_raw_folder_of_the_user_is_never_overwritten(tmp_path: Path) -> None:
    """A RAW without train.SRC got `nmt corpus get --force`: the user's files were replaced by the Bible, of
    whatever pair CORPUS named. Only the recipe's own OUT/raw is overwritten; a CORPUS of another pair than
    SRC-TGT is refused."""
    raw = tmp_path / "mine"
    raw.mkdir()
    (raw / "test.en").write_text("my own line\n", encoding="utf-8")
    listed = run_recipe("bible-de-en.sh", OUT=tmp_path / "out", RAW=raw, DRY_RUN=1).stdout
    assert f"nmt corpus get bible-de-en {raw}\n" in listed  # without --force: it refuses to replace test.en
    result = run_recipe("bible-de-en.sh", OUT=tmp_path / "out", RAW=raw)
    assert (
        result.returncode == 2 and result.stderr == f"error: {raw}/test.en already exists; use --force to overwrite\n"
    )
    result = run_recipe("bible-de-en.sh", OUT=tmp_path / "out", RAW=raw, SRC="fr")
    assert result.returncode == 2 and result.stderr.startswith("error: CORPUS=bible-de-en is not of SRC=fr and TGT=en")
    assert [p.name for p in raw.iterdir()] == ["test.en"] and (raw / "test.en").read_text() == "my own line\n"
    assert "--force" in run_recipe("bible-de-en.sh", OUT=tmp_path / "out", DRY_RUN=1).stdout.split("\n")[0]


@pytest.mark.parametrize("recipe", ["bible-de-en.sh", *WMT])
def test_a_recipe_run_again_does_not_make_its_corpus_again(recipe: str, tmp_path: Path) -> None:
    """Once OUT/bin is preprocessed, the raw corpus is not fetched and written again: a WMT recipe run again
    downloaded its test sets and rewrote OUT/raw (offline, without sacreBLEU's cache, it failed)."""
    (tmp_path / "out" / "bin").mkdir(parents=True)
    (tmp_path / "out" / "bin" / "manifest.json").write_text("{}", encoding="utf-8")
    result = run_recipe(recipe, OUT=tmp_path / "out", DRY_RUN=1)
    assert result.returncode == 0, result.stderr
    assert all(word not in result.stdout for word in ("curl", "sacrebleu", "cat ", "corpus get", " preprocess "))
    assert "bin exists: its corpus is not made or preprocessed again" in result.stdout
    assert " train " in result.stdout


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


LANGS = (("en", "src"), ("ro", "tgt"))  # the toy pair's sides as the recipe's languages
# split, sacreBLEU test set, folder in its tarball, file prefix: newsdev2016 (valid) and newstest2016 (test)
EVAL_SETS = (("valid", "wmt16/dev", "dev", "newsdev2016"), ("test", "wmt16", "test", "newstest2016"))


def fake_wmt16_en_ro_download(data: Path, toy: Path) -> dict[str, list[str]]:
    """Fill DATA as wmt16-en-ro.sh's downloads would, in miniature, from the toy pair in `toy`: Europarl and
    SETIMES as the archives the recipe unpacks (same names, same paths inside), newsdev2016 and newstest2016 as
    sacreBLEU's cache under DATA/sacrebleu (its downloaded tarball and what it unpacked). Returns the lines
    OUT/raw/{train,valid,test}.{en,ro} must hold."""
    side = {lang: (toy / f"train.{ext}").read_text(encoding="utf-8").splitlines() for lang, ext in LANGS}
    europarl, setimes = {k: v[:300] for k, v in side.items()}, {k: v[300:] for k, v in side.items()}
    data.mkdir(parents=True)
    with tarfile.open(data / "training-parallel-ep-v8.tgz", "w:gz") as tgz:
        for lang, lines in europarl.items():
            add_text(tgz, f"training-parallel-ep-v8/europarl-v8.ro-en.{lang}", lines)
        add_text(tgz, "training-parallel-ep-v8/europarl-v8.bg-en.en", ["another pair, not unpacked"])
    with zipfile.ZipFile(data / "SETIMES2.en-ro.txt.zip", "w") as zf:
        for lang, lines in setimes.items():
            zf.writestr(f"SETIMES.en-ro.{lang}", "".join(line + "\n" for line in lines))
        zf.writestr("README", "SETIMES2\n")
    expected = {f"train.{lang}": europarl[lang] + setimes[lang] for lang in ("en", "ro")}
    for split, name, folder, sgm in EVAL_SETS:
        raw = data / "sacrebleu" / name / "raw"
        raw.mkdir(parents=True)
        with tarfile.open(raw / f"{name.replace('/', '_')}.{folder}.tgz", "w:gz") as tgz:
            for lang, ext in LANGS:
                lines = (toy / f"{split}.{ext}").read_text(encoding="utf-8").splitlines()
                expected[f"{split}.{lang}"] = lines
                role = "src" if lang == "en" else "ref"
                doc = [f'<{role}set setid="{sgm}" srclang="any">', '<doc docid="toy" genre="news" origlang="en">']
                doc += [f'<seg id="{i}">{line}</seg>' for i, line in enumerate(lines, 1)] + ["</doc>", f"</{role}set>"]
                path = raw / folder / f"{sgm}-enro-{role}.{lang}.sgm"
                path.parent.mkdir(exist_ok=True)
                path.write_text("".join(line + "\n" for line in doc), encoding="utf-8")
                tgz.add(path, arcname=f"{folder}/{path.name}")
    return expected


def add_text(tgz: tarfile.TarFile, name: str, lines: list[str]) -> None:
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tgz.addfile(info, io.BytesIO(payload))


@pytest.mark.slow
def test_wmt_recipe_end_to_end_on_downloaded_data(tmp_path: Path) -> None:
    toy = write_synthetic_corpus(tmp_path / "toy", n_train=500, n_valid=20, n_test=12)
    data, out = tmp_path / "data", tmp_path / "out"
    expected = fake_wmt16_en_ro_download(data, toy)
    offline = "http://127.0.0.1:9"  # any download (curl, sacreBLEU's urllib) fails at once instead of going out
    result = run_recipe(
        "wmt16-en-ro.sh", timeout=120, OUT=out, DATA=data, PRESET="micro", VOCAB_SIZE=120, LR=7e-4, WARMUP=5,
        MAX_TOKENS=256, MAX_UPDATES=4, VALID_EVERY=4, VALID_MAX_SENTENCES=10, MODES="async-accum", WORKERS=2,
        DEVICES="cpu", SIMULATE=1, BEAM=1, NMT=BIN / "nmt", PYTHON=sys.executable, OMP_NUM_THREADS=1,
        http_proxy=offline, https_proxy=offline, HTTP_PROXY=offline, HTTPS_PROXY=offline, no_proxy="", NO_PROXY="",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for name, lines in expected.items():  # Europarl then SETIMES, each side in its place; dev and test sets
        assert (out / "raw" / name).read_text(encoding="utf-8").splitlines() == lines, name
    assert len(expected["train.en"]) == 500 and len(expected["valid.ro"]) == 20 and len(expected["test.en"]) == 12
    assert not (data / "training-parallel-ep-v8" / "europarl-v8.bg-en.en").exists()  # only the pair's files unpacked
    for mode in ("async-accum",):  # the bible recipe's test runs every mode
        events = [json.loads(line) for line in (out / "runs" / mode / "events.jsonl").read_text().splitlines()]
        assert events[-1]["kind"] == "end" and events[-1]["updates"] == 4, events[-1]
        hyps = (out / "test" / f"{mode}.ro").read_text(encoding="utf-8").splitlines()
        assert len(hyps) == len(expected["test.en"])  # one translation per test source line
    assert result.stdout.count("BLEU =") == 1  # the test set scored with the run
    assert "async-accum" in (out / "report" / "report.md").read_text(encoding="utf-8")


def test_a_command_that_fails_leaves_no_output_file(tmp_path: Path) -> None:
    """Offline, sacreBLEU's failed download left an empty raw/valid.en behind (run_to wrote into it at once)."""
    script = (f'set -euo pipefail; {KNOBS}; source "{RECIPES}/common.sh"; '
              f'run_to "{tmp_path}/out.txt" sh -c "echo partial; exit 3"')  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and list(tmp_path.iterdir()) == []
    done = subprocess.run(["bash", "-c", script.replace("exit 3", "exit 0")], capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0 and (tmp_path / "out.txt").read_text() == "partial\n"


def test_a_test_set_sacrebleu_cannot_download_is_one_line(tmp_path: Path) -> None:
    """Offline, with the training data in DATA but no sacreBLEU cache, the recipe ended in sacreBLEU's
    traceback (65 lines)."""
    offline = "http://127.0.0.1:9"
    script = (f'set -euo pipefail; {KNOBS} SRC=en TGT=ro RAW="{tmp_path}/raw" '
              f'DATA="{tmp_path}/data" SACREBLEU_BIN="{BIN / "sacrebleu"}"; source "{RECIPES}/common.sh"; '
              f'mkdir -p "$RAW" "$DATA"; raw_eval valid wmt16/dev')  # fmt: skip
    env = {**os.environ, "http_proxy": offline, "https_proxy": offline, "HTTP_PROXY": offline,
           "HTTPS_PROXY": offline, "no_proxy": "", "NO_PROXY": ""}  # fmt: skip
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: sacreBLEU could not give test set wmt16/dev (en-ro, src)")
    assert len(done.stderr.strip().splitlines()) == 1 and list((tmp_path / "raw").iterdir()) == []


FAKE_TRAIN = """\
import os, signal, sys, time

fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # (written in signal handlers: unbuffered)


def log(word):
    os.write(fd, (word + "\\n").encode())


log(sys.argv[2])
if sys.argv[2] == "train":  # as nmt takes signals (errors.new_notice), saving for SAVE_S s on the first notice
    last = []

    def noticed(number, frame):
        log(signal.Signals(number).name)
        if last and (number == signal.SIGTERM or time.monotonic() - last[0] < 1.0):
            return  # the same notice again: a SIGTERM after one, or anything within a second of it
        if last:  # a second Ctrl-C: at once, unsaved
            print("interrupted", file=sys.stderr, flush=True)
            os._exit(130)
        last.append(time.monotonic())
        raise KeyboardInterrupt

    try:
        for number in (signal.SIGINT, signal.SIGTERM):  # (one ignored as it started stays so: errors.heeded)
            if signal.getsignal(number) is not signal.SIG_IGN:
                signal.signal(number, noticed)
        log("started")
        while True:
            time.sleep(0.02)
    except KeyboardInterrupt:
        time.sleep(float(os.environ["SAVE_S"]))  # the save
        log("saved")
        print("interrupted", file=sys.stderr)
        sys.exit(130)
"""


def with_a_fake_nmt(tmp_path: Path, body: str) -> tuple[Path, dict[str, str]]:
    """The log a stand-in for `nmt` (a bash script of `body`, `{log}` in it the log) writes, and the environment
    that runs bible-de-en.sh with it, MODES=sync, on an OUT whose bin/ is there (nothing is preprocessed)."""
    log, fake = tmp_path / "log", tmp_path / "fake-nmt"
    fake.write_text("#!/usr/bin/env bash\n" + body.format(log=log) + "\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    (out / "bin").mkdir(parents=True)
    (out / "bin" / "manifest.json").write_text("{}", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in knobs("bible-de-en.sh")}
    env.update(OUT=str(out), MODES="sync", NMT=str(fake))
    return log, env


@pytest.mark.parametrize("how", ["kill", "timeout", "ctrl-c", "ctrl-c twice"])
def test_a_stopped_recipe_waits_for_its_step_to_save_and_ends(how: str, tmp_path: Path) -> None:
    """`timeout` (SIGTERM to the recipe's process group) ended the recipe while its `nmt train` was still
    saving, and `kill` of the recipe alone left the run training, unseen. The recipe passes a signal on to
    the step as SIGTERM, waits for it to end, and ends with exit code 130, running nothing after it; a second
    Ctrl-C reaches the step too, as SIGINT (which a shell's background job would ignore, as `nmt` now leaves
    it), and stops it at once."""
    (tmp_path / "fake.py").write_text(FAKE_TRAIN)
    log, env = with_a_fake_nmt(tmp_path, f'exec "{sys.executable}" "{tmp_path / "fake.py"}" "{{log}}" "$@"')
    # the save outlasts the second Ctrl-C (1.6 s) by far; once, a second is ages to a recipe that would not wait
    env["SAVE_S"] = "3.0" if how == "ctrl-c twice" else "1.0"
    started = subprocess.Popen(["bash", str(RECIPES / "bible-de-en.sh")], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip

    def logged(word: str) -> None:
        for _ in range(600):
            if log.exists() and word in log.read_text().split():
                return
            time.sleep(0.05)

    try:
        logged("started")
        {"kill": lambda: os.kill(started.pid, signal.SIGTERM),
         "timeout": lambda: os.killpg(started.pid, signal.SIGTERM),
         "ctrl-c": lambda: os.killpg(started.pid, signal.SIGINT),
         "ctrl-c twice": lambda: os.killpg(started.pid, signal.SIGINT)}[how]()  # fmt: skip
        if how == "ctrl-c twice":
            time.sleep(1.6)  # (a second Ctrl-C within a second is the first one's copy, to nmt)
            os.killpg(started.pid, signal.SIGINT)
        _, stderr = started.communicate(timeout=30)
        ran = log.read_text().split()  # (as the recipe ended: the step had ended by then)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGKILL)
    assert started.returncode == 130 and stderr.endswith("interrupted\n"), stderr
    # the signal, and the recipe's SIGTERM where it came to the group too (nmt takes it as the same notice)
    sent = {"SIGTERM"} if how in ("kill", "timeout") else {"SIGINT", "SIGTERM"}
    assert ran[:2] == ["train", "started"] and "translate" not in ran, ran
    if how == "ctrl-c twice":  # stopped at once, unsaved
        assert "saved" not in ran and ran.count("SIGINT") == 2 and set(ran[2:]) <= sent, ran
    else:
        # (the recipe's SIGTERM may come once the step has saved, as it exits: on a loaded machine it did)
        signals = [word for word in ran[2:] if word != "saved"]
        assert ran.count("saved") == 1 and ran[2] in sent and set(signals) <= sent and 1 <= len(signals) <= 3, ran


def test_a_recipe_runs_its_steps_with_stdin_closed(tmp_path: Path) -> None:
    """Each step runs in the background with /dev/null for stdin: given the recipe's (`<&0`), a step ran with
    file 0 closed where that was (a job started with `<&-`), which the first file it opened would then take."""
    log, env = with_a_fake_nmt(tmp_path, '[[ -e /proc/self/fd/0 ]] || exit 9\necho "$1" >>"{log}"')
    done = subprocess.run(["bash", "-c", f'exec 0<&-; exec bash "{RECIPES / "bible-de-en.sh"}"'], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["train", "translate", "score", "report"]
