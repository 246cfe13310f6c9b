"""Shared fixtures: a synthetic parallel corpus (a toy language pair a tiny model learns in seconds)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# One thread for torch, here and in the processes the tests start (spawned ranks set their own share of the
# cores): the micro models the tests train run slower on two, which spin-wait (test_train.py took 96 s on two
# cores, 84 s on one). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).parents[1]
# the subprocesses import this checkout's async_nmt, whatever the environment has installed
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def command(name: str) -> Path:
    """A command of the environment that runs the tests (`nmt`, `nmt-train`, `torchrun`): beside its Python, as
    a venv has them, else the first on PATH (scripts/gpu_setup.sh's, which leaves the Python's folder alone)."""
    beside = Path(sys.executable).with_name(name)
    found = beside if beside.exists() else shutil.which(name)
    return Path(found) if found else beside


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


@contextlib.contextmanager
def stdin_that_does_not_block(monkeypatch: pytest.MonkeyPatch, first: bytes, rest: bytes) -> Iterator[None]:
    """stdin a pipe that another program sharing it made non-blocking (O_NONBLOCK), whose writer sends
    `first`, pauses (the reader finds the pipe empty), then sends `rest` and closes it."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BufferedReader(io.FileIO(read_end, "r")), encoding="utf-8"))

    def write() -> None:
        os.write(write_end, first)
        time.sleep(0.3)
        os.write(write_end, rest)
        os.close(write_end)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        writer.join()
        sys.stdin.close()


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


@pytest.fixture(autouse=True)
def no_stop_notice_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no Ctrl-C or SIGTERM noticed (`errors.new_notice`): after one that a test before it
    sent, a SIGTERM is never a new notice, and was dropped (a test of SIGTERM failed in the whole suite only)."""
    from async_nmt import errors

    monkeypatch.setattr(errors, "_LAST_NOTICE", [-float("inf")])


@pytest.fixture(scope="session")
def synthetic_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_corpus(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def synthetic_bin(synthetic_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from async_nmt.data.binarize import preprocess

    out = tmp_path_factory.mktemp("bin") / "bin"
    preprocess(synthetic_raw, out, vocab_size=200)
    return out


# One process runs many scripts, each in a process forked from it: the imports (torch: 2 s a process) are paid
# once, and each script still runs as `python SCRIPT ARGS` would, up to its exit code, stdout and stderr (read
# from its own file descriptors). With "help", a script runs up to its parse_args, then reports its options
# without a help text instead of parsing.
FORKS = r"""
import argparse, json, os, runpy, signal, sys, tempfile, traceback
import torch  # noqa: F401  (what every script imports: once, before the forks)

# ... and the package's modules that they import, with theirs (numpy, rich, sentencepiece...), which each fork
# imported again (a quarter of a second each). Not async_nmt.script_start: a script imports it first, as its
# __main__, to take the signals (imported here, the fork's import would be a no-op that takes nothing). What
# these imports print on stderr (a warning) each fork prints first, as a script importing them would.
with tempfile.TemporaryFile() as said:
    stderr = os.dup(2)
    os.dup2(said.fileno(), 2)
    try:
        import async_nmt.errors, async_nmt.provenance, async_nmt.report, async_nmt.train.launch
        import async_nmt.train.modes.paramserver, async_nmt.translate
    finally:
        sys.stderr.flush()
        os.dup2(stderr, 2)
        os.close(stderr)
    said.seek(0)
    IMPORTS_SAID = said.read()

def help_report(parser, *args, **kwargs):
    parser.format_help()  # what --help prints: a help text with a stray % fails here
    print(json.dumps({
        "description": parser.description or "",
        "no_help": [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
                    if not (a.help or "").strip()],
    }))
    sys.exit(0)

def run(script, args, help):
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(script)  # as `python SCRIPT` sets it
    if help:
        argparse.ArgumentParser.parse_args = help_report
    signal.alarm(60)
    code = 1
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (0 if end.code is None else 1)
        if not isinstance(end.code, int | None):
            print(end.code, file=sys.stderr)
    except BaseException:  # a bug's traceback, as Python prints it (and the fork never goes on as the runner)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

results = []
for case in json.load(sys.stdin):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.write(2, IMPORTS_SAID)
            run(case["script"], case["args"], case["help"])
        status = os.waitpid(pid, 0)[1]
        out.seek(0)
        err.seek(0)
        results.append({"returncode": os.waitstatus_to_exitcode(status), "stdout": out.read().decode(),
                        "stderr": err.read().decode()})
print(json.dumps(results))
"""


def run_forked(cases: list[tuple[str, list[str], bool]]) -> list[subprocess.CompletedProcess[str]]:
    """Run each (script name, arguments, help check) as `python scripts/NAME ARGS` would, in forks of one
    process that has imported torch."""
    payload = [{"script": str(ROOT / "scripts" / name), "args": args, "help": help} for name, args, help in cases]
    done = subprocess.run([sys.executable, "-c", FORKS], input=json.dumps(payload), capture_output=True,
                          text=True, env=ENV, timeout=60 + 30 * len(cases))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [subprocess.CompletedProcess(case["args"], r["returncode"], r["stdout"], r["stderr"])
            for case, r in zip(payload, json.loads(done.stdout), strict=True)]  # fmt: skip
