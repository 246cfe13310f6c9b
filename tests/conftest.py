"""Shared fixtures: a synthetic parallel corpus (a toy language pair a tiny model learns in seconds)."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import pytest

SRC_WORDS = [f"{c}{v}" for c in "bdgklmnprst" for v in "aeiou"][:40]
TGT_WORDS = [w.upper()[::-1] + "x" for w in SRC_WORDS]
LEXICON = dict(zip(SRC_WORDS, TGT_WORDS, strict=True))


def toy_translate(sentence: str) -> str:
    """The toy language pair: a word-by-word lexicon (monotone, so a tiny model learns it in a minute)."""
    return " ".join(LEXICON[w] for w in sentence.split())


def write_synthetic_corpus(
    out: Path, n_train: int = 3000, n_valid: int = 100, n_test: int = 100, seed: int = 0
) -> Path:
    """Write {train,valid,test}.{src,tgt} of the toy pair into `out` and return it."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        src = [" ".join(rng.choice(SRC_WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]
        (out / f"{split}.src").write_text("".join(s + "\n" for s in src), encoding="utf-8")
        (out / f"{split}.tgt").write_text("".join(toy_translate(s) + "\n" for s in src), encoding="utf-8")
    return out


def record_amp_dtypes(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list:
    """Wrap `module.name` (a search entry point) so that every call records its `amp_dtype` argument."""
    seen: list = []
    search = getattr(module, name)

    def spy(*args, **kwargs):
        seen.append(kwargs["amp_dtype"])
        return search(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return seen


def bin_with_target(bin_dir: Path, folder: Path, language: str) -> Path:
    """A copy of the preprocessed corpus `bin_dir` in `folder` whose target language is `language` (its
    manifest says so and its target files are named so: valid.tgt -> valid.LANGUAGE, ...)."""
    import json
    import shutil

    shutil.copytree(bin_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "tgt": language}))
    for path in folder.iterdir():
        if ".tgt" in path.name:
            path.rename(path.with_name(path.name.replace(".tgt", f".{language}")))
    return folder


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that runs (zombies left out), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_in_a_terminal():
    """Ctrl-C raises KeyboardInterrupt in the tests, and the processes they start take it as in a terminal,
    also where the suite runs in the background: a non-interactive shell starts a background job with SIGINT
    ignored, which Python then leaves so (`setsid nohup make test &`). Tests that send themselves SIGINT
    failed there with "DID NOT RAISE KeyboardInterrupt". A started process gets SIGINT's default action,
    as exec resets a handled signal."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def synthetic_bin(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from async_nmt.data.binarize import preprocess

    out = tmp_path_factory.mktemp("bin") / "bin"
    preprocess(synthetic_raw, out, vocab_size=200)
    return out
