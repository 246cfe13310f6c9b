"""scripts/*.py end as the `nmt` CLI does on bad input (`errors.run_script`: one line, exit code 2, no
traceback), refuse values that would run without end or divide by zero before any work, and give every
option a help text."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ENV, ROOT, run_forked

from async_nmt import __version__
from async_nmt.errors import UserError, WorkerFailed, run_script
from async_nmt.provenance import source_commit

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def ends_with(main: Callable[[], object], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    with pytest.raises(SystemExit) as end:
        run_script(main)
    return end.value.code, capsys.readouterr().err


def test_run_script_takes_sigterm_for_ctrl_c(capsys: pytest.CaptureFixture[str]):
    """SIGTERM (`kill`, `timeout`) outside nmt-train's loop ended a script without a word (exit -15)."""

    def terminated() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the signal's KeyboardInterrupt comes first)
        raise AssertionError("not interrupted")

    def outside(*_: object) -> None:  # (where run_script left it to this: the test fails, not pytest's process)
        raise AssertionError("SIGTERM came to the handler outside run_script's")

    before = signal.signal(signal.SIGTERM, outside)
    try:
        assert ends_with(terminated, capsys) == (130, "interrupted\n")
        assert signal.getsignal(signal.SIGTERM) is outside
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_script_stopped_while_it_imports_says_interrupted(signum: int, synthetic_bin: Path):
    """Ctrl-C while a script imported torch (about its first second) printed the import's traceback, and
    SIGTERM ended it without a word (async_nmt.script_start). Whenever it comes, the end is the same."""
    args = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), str(synthetic_bin), "--preset", "micro",
            "--device", "cpu", "--seconds", "30"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(0.3)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (130, "", "interrupted\n")


def test_script_start_takes_the_signals_of_the_script_run_alone(tmp_path: Path):
    """Its handlers are the process's whose `__main__` imported it: a test that imported a script's functions
    had pytest's Ctrl-C taken over (a later test's SIGINT to itself ended the whole suite, exit 130), and a
    process the script spawned (which imports it as __mp_main__) had them too."""
    import importlib

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    sys.modules.pop("async_nmt.script_start", None)
    try:
        importlib.import_module("async_nmt.script_start")  # imported here, by a module that is not __main__
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
    script = tmp_path / "spawns.py"
    script.write_text(
        "import async_nmt.script_start  # noqa\n"
        "import multiprocessing, signal\n"
        "def name():\n"
        "    return getattr(signal.getsignal(signal.SIGTERM), '__name__', 'its own')\n"
        "def child():\n"
        "    print('child', name(), flush=True)\n"
        "if __name__ == '__main__':\n"
        "    print('script', name(), flush=True)\n"
        "    process = multiprocessing.get_context('spawn').Process(target=child)\n"
        "    process.start()\n"
        "    process.join()\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=60)
    assert done.stdout.split("\n") == ["script _interrupted", "child its own", ""], done.stderr


def test_ctrl_c_in_bench_paramserver_leaves_no_files_behind(tmp_path: Path):
    """Its gloo ranks' error files (torch.multiprocessing's, two a Ctrl-C) were left in the temporary folder."""
    args = [sys.executable, str(ROOT / "scripts" / "bench_paramserver.py"), "--numel", "20000000", "--transport",
            "gloo", "--repeat", "1000"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "TMPDIR": str(tmp_path)})  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("pymp-*")):  # (the manager of the ranks' results: they start now)
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(3.0)  # (their imports, then about 10 s of messages)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "interrupted\n")
    assert not list(tmp_path.iterdir())


def test_run_script_ends_a_user_error_with_one_line_and_its_exit_code(capsys: pytest.CaptureFixture[str]):
    def bad_option() -> None:
        raise UserError("--seconds must be a positive number")

    def failed() -> None:
        raise WorkerFailed("worker 1 failed")

    assert ends_with(bad_option, capsys) == (2, "error: --seconds must be a positive number\n")
    assert ends_with(failed, capsys) == (1, "error: worker 1 failed\n")


def test_run_script_ends_ctrl_c_with_interrupted_and_130(capsys: pytest.CaptureFixture[str]):
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert ends_with(interrupted, capsys) == (130, "interrupted\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_script_whose_stdout_is_full_or_gone_ends_as_a_command_does(unbuffered: bool):
    """A full disk on stdout is one line naming stdout, exit code 1 (with stdout buffered, as most users run,
    it was Python's `Exception ignored` at exit and exit code 120); a reader of stdout that has gone ends it
    quietly with exit code 0 (it was `error: Broken pipe`, exit code 1)."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"} | ({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    script = ["-c", "from async_nmt.errors import run_script; run_script(lambda: print('{\"bench\": 1}' * 1000))"]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, *script], stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=60)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    # (it was `error: No space left on device` where the print failed, unbuffered or past the buffer)
    assert done.stderr == "error: stdout: cannot write (No space left on device)\n"
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the script writes: every write fails
    try:
        done = subprocess.run([sys.executable, *script], stdout=write, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=60)  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


def test_run_script_names_the_path_of_a_system_error(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    def missing() -> None:
        (tmp_path / "nope").read_text()

    def denied() -> None:
        raise PermissionError(13, "Permission denied", "/out")

    assert ends_with(missing, capsys) == (2, f"error: {tmp_path / 'nope'}: No such file or directory\n")
    assert ends_with(denied, capsys) == (1, "error: /out: Permission denied\n")


def test_run_script_names_both_paths_of_a_system_error_that_has_two(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    """A rename (os.replace) that fails names its source and its destination, as the system gave them, as
    FROM -> TO (`FROM: TO: REASON` read as if the first had failed)."""
    source, target = tmp_path / "gone.tmp", tmp_path / "out.txt"

    def rename() -> None:
        os.replace(source, target)

    assert ends_with(rename, capsys) == (2, f"error: {source} -> {target}: No such file or directory\n")


def test_run_script_returns_when_main_does_and_keeps_a_bugs_traceback(capsys: pytest.CaptureFixture[str]):
    run_script(lambda: 7)
    assert capsys.readouterr().err == ""
    with pytest.raises(ZeroDivisionError):
        run_script(lambda: 1 / 0)


@pytest.fixture(scope="module")
def help_checks() -> dict[str, subprocess.CompletedProcess[str]]:
    return dict(zip(SCRIPTS, run_forked([(script.name, ["--help"], True) for script in SCRIPTS]), strict=True))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_every_option_of_a_script_has_help(script: Path, help_checks: dict[str, subprocess.CompletedProcess[str]]):
    done = help_checks[script]
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["no_help"] == []
    first_paragraph = found["description"].split("\n\n")[0].strip()
    assert first_paragraph[-1] in ".)?", first_paragraph  # not cut mid-sentence
    # an example command's line continuation is shown (a docstring not raw lost its `\\`, and the command
    # read as one line that a shell would not run as shown)
    continued = [line.strip() for line in script.read_text().split('"""')[1].splitlines() if line.endswith("\\")]
    assert all(line in found["description"] for line in continued if line[:-1].strip() in found["description"])


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          env=ENV, timeout=60)  # fmt: skip


BAD_INPUT = [
    ("bench_modes.py", ["--bin", "/nope", "--modes", "sync,bogus"], "--modes: 'bogus' is not one of sync, async"),
    ("bench_modes.py", ["--bin", "/nope", "--seconds", "0"], "--seconds must be a positive number"),
    ("bench_modes.py", ["--bin", "/nope", "--devices", "cpu,cpu,cpu"], "--devices names 3 devices but --workers is 2"),
    ("bench_translate.py", ["--run", "/nope", "--preset", "tiny"], "--preset: not with --run"),
    ("bench_translate.py", ["--run", "/nope", "--vocab", "100"], "--vocab: not with --run"),
    ("bench_translate.py", ["--vocab", "0"], "--vocab must be at least 5"),
    (
        "bench_translate.py",
        ["--preset", "micro", "--max-len", "1000", "--device", "cpu"],
        "--max-len 1000: the model reads at most 255 source tokens",
    ),
    ("bench_modes.py", ["--bin", "/nope", "--slow", "2"], "--slow must be above 0 and below 1"),
    ("bench_modes.py", ["--bin", "/nope", "--modes", "diloco"], "--modes diloco needs --sync-every H"),
    ("bench_train.py", ["/nope", "--seconds", "0"], "--seconds must be a positive, finite number"),
    ("bench_train.py", ["/nope", "--seconds", "-5"], "--seconds must be a positive, finite number"),
    ("bench_train.py", ["/nope", "--seconds", "inf"], "--seconds must be a positive, finite number"),
    ("bench_train.py", ["/nope", "--log-every", "0"], "--log-every must be at least 1"),
    ("bench_train.py", ["/nope", "--precision", "fp32", "--plain-autocast"], "--plain-autocast is an A/B of bf16"),
    ("bench_train.py", ["/nope", "--repeats", "0"], "--repeats must be at least 1"),
    ("bench_paramserver.py", ["--shards", "0"], "--shards must be 1 to 64"),
    ("bench_paramserver.py", ["--shards", "65"], "--shards must be 1 to 64"),
    ("bench_paramserver.py", ["--shards", "3", "--numel", "2"], "--shards 3: more than the 2 parameters"),
    ("bench_translate.py", ["--sentences", "0"], "--sentences must be at least 1"),
    ("bench_step.py", ["--steps", "0"], "--steps must be at least 1"),
    ("bench_step.py", ["--device", "cuda:99"], "--device: cuda:99 is not there"),
    ("parity_train.py", ["/nope", "--updates", "0"], "--updates must be at least 1"),
    ("parity_train.py", ["/nope", "--seeds", "1", "1"], "--seeds: a seed is given twice"),
    ("parity_train.py", ["/nope", "--seeds", "1", str(2**40)], "--seeds: every seed must be an integer between"),
    ("parity_train.py", ["/nope", "--updates", "4", "--valid-at", "4"], "--valid-at: every N must be from 1"),
    ("parity_train.py", ["/nope", "--updates", "4", "--valid-at", "0"], "--valid-at: every N must be from 1"),
    (
        "parity_train.py",
        ["/nope", "--bare-init", "product", "--bare-embed-init", "torch"],
        "--bare-embed-init torch sets the bare model's own start",
    ),
    ("batch_padding.py", ["/nope"], "/nope: no such folder"),
    ("ab_step.py", ["/nope", "--batches", "0"], "--batches must be at least 1"),
    (
        "ab_step.py",
        ["/nope", "--switch", "low-precision-copies", "--precision", "fp32"],
        "--switch low-precision-copies is an A/B of bf16 autocast",
    ),
    ("results_convergence.py", ["/nope"], "/nope: no such folder"),
    ("results_convergence.py", [str(ROOT / "scripts")], f"{ROOT / 'scripts'}: no CONFIG-sSEED run folder"),
    (
        "results_convergence.py",
        [str(ROOT / "docs/results/convergence"), "--plots", str(ROOT / "README.md")],
        f"--plots: {ROOT / 'README.md'} is a file",
    ),
    ("replay_sync_clock.py", ["/nope", "/nope-out", "--worker-speeds", "1,1"], "/nope: not a run folder"),
    # (a speed of 1e-320 replayed an infinite clock, written into the events as Infinity, which JSON has not)
    (
        "replay_sync_clock.py",
        ["/nope", "/nope-out", "--worker-speeds", "1e-320,1"],
        "--worker-speeds: every speed must be between 0.001 and 1000, as nmt-train takes them",
    ),
    ("count_ops.py", ["/nope", "--run", "/nope-run", "--preset", "micro"], "--preset: not with --run"),
    # argparse's own: its usage (8 lines for bench_train.py), then the error
    ("bench_train.py", ["/nope", "--seconds", "abc"], "argument --seconds: invalid float value: 'abc' (see `bench_"),
    ("bench_step.py", ["--bogus"], "unrecognized arguments: --bogus (see `bench_step.py --help`)"),
    ("results_convergence.py", [], "the following arguments are required: dir"),
]


@pytest.fixture(scope="module")
def bad_input_runs() -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    runs = run_forked([(script, args, False) for script, args, _ in BAD_INPUT])
    return {(script, *args): done for (script, args, _), done in zip(BAD_INPUT, runs, strict=True)}


@pytest.mark.parametrize(("script", "args", "error"), BAD_INPUT)
def test_a_bad_option_or_input_is_one_line_and_exit_code_2_before_any_work(
    script: str, args: list[str], error: str, bad_input_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]]
):
    done = bad_input_runs[(script, *args)]
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {error}") and done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""  # nothing ran (bench_modes: not even its single worker)


def test_gpu_setup_leaves_the_folder_of_a_python_without_nmt_alone(tmp_path: Path):
    """gpu_setup.sh wrote nmt and nmt-train beside the first python3 on PATH: into /usr/bin, or a pyenv's
    shims, on a user's machine. Now they go into a folder of their own, first on PATH while the script runs
    and taken away at its end; they run this checkout's nmt with the Python that runs the tests."""
    env_dir = tmp_path / "env"  # a Python whose folder has no nmt, that imports what this one does
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=60)
    (site,) = env_dir.glob("lib/python*/site-packages")
    (site / "parent.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in sys.path if p))
    before = sorted(path.name for path in (env_dir / "bin").iterdir())
    (tmp_path / "out").mkdir()
    script = "source scripts/gpu_setup.sh >/dev/null; command -v nmt; nmt --version; nmt-train --version"
    env = {**ENV, "OUT": str(tmp_path / "out"), "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    where, nmt_version, train_version = done.stdout.splitlines()
    assert Path(where).parent.name.startswith("nmt-commands.") and not Path(where).parent.exists()
    assert __version__ in nmt_version and __version__ in train_version
    assert sorted(path.name for path in (env_dir / "bin").iterdir()) == before


def test_gpu_bench_refuses_a_pack_inside_its_output_folder(tmp_path: Path):
    """`OUT=/tmp/gb PACK=$OUT/gb.tgz` (the header's command) packed into OUT itself: tar failed on its own
    growing file, and a device call brought back none of the results. Refused before any work, and the
    header now gives PACK first, where $OUT is still the call's."""
    out = tmp_path / "gb"
    env = {**ENV, "OUT": str(out), "PACK": str(out / "gb.tgz")}
    result = subprocess.run(["bash", "scripts/gpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is inside OUT" in result.stderr and result.stdout == "" and sorted(p.name for p in out.iterdir()) == []
    header = (ROOT / "scripts" / "gpu_bench.sh").read_text().splitlines()
    commands = [line for line in header if line.startswith("#   ") and "gpu_bench.sh" in line and "PACK=" in line]
    assert commands and all(line.split()[1].startswith("PACK=") for line in commands)


@pytest.mark.parametrize(
    ("knob", "error"),
    [("BUDGET=8m", "BUDGET=8m: give a whole number of at least 1"), ("SENTENCES=0", "SENTENCES=0: give a whole"),
     ("TESTS=yes", "TESTS=yes: give 0 or 1"), ("COMPILE=2", "COMPILE=2: give 0 or 1"),
     ("DEVICE=gpu", "DEVICE=gpu: give cpu or cuda:N"), ("PRESETS=base huge", "PRESETS=base huge: give some of")],
)  # fmt: skip
def test_gpu_bench_refuses_a_bad_knob_before_any_work(tmp_path: Path, knob: str, error: str):
    """The one device call a session may get: BUDGET=8m was bash's arithmetic error at the first step (exit 1),
    and a switch other than 1 (TESTS=yes) was taken as off without a word."""
    name, value = knob.split("=", 1)
    env = {**ENV, "OUT": str(tmp_path / "out"), name: value}
    result = subprocess.run(["bash", "scripts/gpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(f"error: {error}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "" and not (tmp_path / "out").exists()


SHELL_SCRIPTS = sorted(
    path.name
    for path in (ROOT / "scripts").glob("*.sh")
    if path.name not in ("arguments.sh", "steps.sh", "gpu_setup.sh")
)  # (the last three: sourced)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_a_shell_scripts_help_shows_its_header_and_an_argument_is_refused(script: str, tmp_path: Path):
    """Their knobs are environment variables, and arguments were ignored: `--help` began the whole job
    (experiment_convergence.sh trained two runs into docs/results, gpu_checks.sh ran its steps)."""
    env = {**ENV, "OUT": str(tmp_path / "out"), "DOCS": str(tmp_path / "docs"), "RUNS": str(tmp_path / "runs")}
    header = (ROOT / "scripts" / script).read_text().splitlines()[1]
    for args, code in ((["--help"], 0), (["-h"], 0), (["--seconds", "5"], 2), (["--help", "x"], 2)):
        result = subprocess.run(["bash", f"scripts/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                                env=env, timeout=60)  # fmt: skip
        assert result.returncode == code, result.stderr
        if code == 0:
            assert result.stdout.splitlines()[0] == header.removeprefix("# ") and not result.stderr
        else:
            assert result.stderr == f"error: {script} takes no arguments (got: {' '.join(args)}); its knobs are " \
                f"environment variables (see bash scripts/{script} --help)\n"  # fmt: skip
        assert not any(tmp_path.iterdir())  # nothing made


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_a_shell_scripts_help_names_every_knob(script: str):
    """`bash scripts/NAME.sh --help` prints the knobs (README, Benchmarks): it left out experiment_bible.sh's BIN,
    OUT and commands, gpu_experiment.sh's run folders, PRESET, LR, WARMUP, MAX_TOKENS and DEVICE, the WORKERS
    and DEVICE of the GPU scripts' mode benchmarks, and the commands of the others. A knob is a variable read
    with a default (`${NAME:-...}`), in the script or in gpu_setup.sh where the script sources it."""
    text = (ROOT / "scripts" / script).read_text()
    if "gpu_setup.sh" in text:  # (its mode_benches reads DEVICE and WORKERS)
        text += (ROOT / "scripts" / "gpu_setup.sh").read_text()
    knobs = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):?-", text)) - {"STEPS_STOPPED"}  # (steps.sh's own, not a knob)
    assert knobs
    shown = subprocess.run(["bash", f"scripts/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                           env=ENV, timeout=60).stdout  # fmt: skip
    assert sorted(knob for knob in knobs if not re.search(rf"\b{knob}\b", shown)) == []


def test_the_bench_scripts_refuse_a_wrong_folder_or_bin_before_any_work(tmp_path: Path):
    """Run from elsewhere, every benchmark failed to find its script (gpu_bench.sh then exited 0); given a BIN
    that is not one, gpu_bench.sh's steps failed one by one until its budget was spent."""
    for script in ("cpu_bench.sh", "gpu_bench.sh", "gpu_experiment.sh", "gpu_checks.sh"):
        env = {**ENV, "OUT": str(tmp_path / "out")}
        result = subprocess.run(["bash", str(ROOT / "scripts" / script)], cwd=tmp_path, capture_output=True,
                                text=True, env=env, timeout=60)  # fmt: skip
        assert result.returncode == 2 and result.stderr == f"error: run it from the repository root (bash " \
            f"scripts/{script})\n", result.stderr  # fmt: skip
        assert not (tmp_path / "out").exists() and not (tmp_path / "gpu-out").exists()  # (nothing made there)
    env = {**ENV, "OUT": str(tmp_path / "out"), "BIN": str(tmp_path / "nope")}
    result = subprocess.run(["bash", "scripts/gpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and "nope: no preprocessed corpus" in result.stderr, result.stderr


def test_cpu_bench_stops_at_ctrl_c(tmp_path: Path):
    """Ctrl-C (a benchmark's exit code 130) stopped only the benchmark under way: the script went on to the next
    (nine Ctrl-Cs to stop it), and its file is left as it was."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "manifest.json").write_text("{}")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 130\n")
    fake.chmod(0o755)
    env = {**ENV, "OUT": str(tmp_path / "out"), "BIN": str(tmp_path / "bin"), "RUN": str(tmp_path / "run"),
           "PYTHON": str(fake)}  # fmt: skip
    result = subprocess.run(["bash", "scripts/cpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 130 and result.stderr.count("== ") == 1, result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_cpu_bench_passes_a_sigterm_to_itself_alone_on_to_the_benchmark(tmp_path: Path):
    """`kill` of the script alone waited for the benchmark under way (minutes), then ended with 143, no word and
    the benchmark's output left in OUT/NAME.jsonl.tmp. It passes it on, and stops as at Ctrl-C."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "manifest.json").write_text("{}")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    fake = tmp_path / "python"  # a benchmark that prints a line, then ends as the scripts do at SIGTERM
    fake.write_text("#!/usr/bin/env bash\ntrap 'kill $!; echo interrupted >&2; exit 130' TERM\necho '{}'\n"
                    "sleep 30 & wait\n")  # fmt: skip
    fake.chmod(0o755)
    env = {**ENV, "OUT": str(tmp_path / "out"), "BIN": str(tmp_path / "bin"), "RUN": str(tmp_path / "run"),
           "PYTHON": str(fake)}  # fmt: skip
    started = subprocess.Popen(["bash", "scripts/cpu_bench.sh"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip

    def printed() -> bool:  # the benchmark's line in OUT/NAME.jsonl.tmp: it runs, its trap set, the script's too
        try:
            return any(path.read_text() for path in (tmp_path / "out").glob("*.jsonl.tmp"))
        except OSError:
            return False

    try:
        deadline = time.monotonic() + 10
        while not printed() and time.monotonic() < deadline:
            time.sleep(0.05)
        started.send_signal(signal.SIGTERM)  # (the script alone: its benchmark runs in its own process)
        _, stderr = started.communicate(timeout=10)
    finally:
        started.kill()
    assert started.returncode == 143 and stderr.count("== ") == 1 and stderr.endswith("interrupted\n"), stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_cpu_bench_refuses_an_unknown_name_in_only(tmp_path: Path):
    """ONLY=nope ran nothing and said nothing, exit code 0."""
    env = {**ENV, "OUT": str(tmp_path / "out"), "ONLY": "translate nope"}
    result = subprocess.run(["bash", "scripts/cpu_bench.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ONLY: 'nope' is not one of: step-tiny "), \
        result.stderr  # fmt: skip
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "knob, said",
    [({"WORKERS": "0"}, "WORKERS=0: give a whole number of at least 1"), ({"MAX_TIME": "0"}, "MAX_TIME=0: give "
     "seconds above 0"), ({"PRESET": "huge"}, "PRESET=huge: give one of"), ({"BIN": "/nope"}, "BIN=/nope: no "
     "preprocessed corpus"),
     # (the check compared WORKERS with WARMUP's value, not its name: WARMUP=0 let WORKERS=0 through, and
     # WARMUP=1e3 was bash's arithmetic error blaming WORKERS)
     ({"WORKERS": "0", "WARMUP": "0"}, "WORKERS=0: give a whole number of at least 1"),
     ({"WARMUP": "1e3"}, "WARMUP=1e3: give a whole number (0 or more)"),
     # (these failed each mode's run in turn, after the set-up; a user sweep)
     ({"LR": "0"}, "LR=0: give a number above 0"), ({"LR": "1e400"}, "LR=1e400: give a number above 0"),
     ({"DEVICE": "gpu"}, "DEVICE=gpu: give cpu or cuda:N")],
    ids=["workers", "max-time", "preset", "bin", "workers-warmup-0", "warmup-1e3", "lr-0", "lr-1e400", "device"],
)  # fmt: skip
def test_gpu_experiment_refuses_a_bad_knob_before_any_run(tmp_path: Path, synthetic_bin: Path, knob: dict, said: str):
    """WORKERS=0 failed in bash's arithmetic (division by 0); a bad PRESET or MAX_TIME failed each mode's run."""
    env = {**ENV, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "BIN": str(synthetic_bin), **knob}
    result = subprocess.run(["bash", "scripts/gpu_experiment.sh"], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(f"error: {said}"), result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def a_fake_nmt(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for `nmt` that logs each call (into the log returned beside it) and does nothing else."""
    log, fake = tmp_path / "nmt.log", tmp_path / "fake-nmt"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >>"{log}"\n')
    fake.chmod(0o755)
    return fake, log


@pytest.mark.parametrize(
    "knob, said",
    [({"CONFIGS": "sync bogus"}, "CONFIGS, EXTRA_CONFIGS: 'bogus' is not a configuration (one of sync async "),
     ({"EXTRA_CONFIGS": "diloco"}, "CONFIGS, EXTRA_CONFIGS: 'diloco' is not a configuration"),
     ({"SEEDS": "1 x"}, "SEEDS: 'x' is not a whole number"), ({"SEEDS": " "}, "SEEDS is empty"),
     ({"LANES": "0"}, "LANES=0: give a whole number of at least 1"),
     ({"TRAIN_PAIRS": "ten"}, "TRAIN_PAIRS=ten: give a whole number of at least 1"),
     ({"PATIENCE": "0"}, "PATIENCE=0: give a whole number of at least 1")],
    ids=["configs", "extra-configs", "seeds", "no-seeds", "lanes", "train-pairs", "patience"],
)  # fmt: skip
def test_experiment_convergence_refuses_a_bad_knob_before_any_work(tmp_path: Path, knob: dict, said: str):
    """An unknown configuration was trained as a run of nmt train's default mode (sync) under its name, its
    results copied into DOCS; LANES=0 ran every run at once (xargs -P 0), and a bad number failed at the first
    command that took it, after the corpus was fetched and preprocessed."""
    fake, log = a_fake_nmt(tmp_path)
    env = {**ENV, "OUT": str(tmp_path / "out"), "DOCS": str(tmp_path / "docs"), "RAW": str(tmp_path / "raw"),
           "NMT": str(fake), **knob}  # fmt: skip
    result = subprocess.run(["bash", "scripts/experiment_convergence.sh"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith(f"error: {said}"), result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-nmt"]  # nothing ran, nothing made


@pytest.mark.parametrize("max_time", ["0", "0.0", "abc"])
def test_experiment_bible_refuses_a_max_time_that_sets_no_limit_before_any_run(tmp_path: Path, max_time: str):
    """MAX_TIME=0 is nmt train's "no limit": the first run trained until Ctrl-C, and the others never started."""
    fake, log = a_fake_nmt(tmp_path)
    env = {**ENV, "OUT": str(tmp_path / "out"), "NMT_TRAIN": str(fake), "NMT": str(fake), "MAX_TIME": max_time}
    result = subprocess.run(["bash", "scripts/experiment_bible.sh"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert (result.returncode, result.stderr) == (2, f"error: MAX_TIME={max_time}: give seconds above 0\n")
    assert result.stdout == "" and sorted(p.name for p in tmp_path.iterdir()) == ["fake-nmt"]


def test_experiment_bible_names_a_run_that_failed(tmp_path: Path):
    """A run that failed ended the script (exit code 1) without a word: its error was in its log alone."""
    fake = tmp_path / "fake-nmt-train"
    fake.write_text("#!/usr/bin/env bash\necho 'error: the reason' >&2\nexit 2\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {**ENV, "OUT": str(out), "NMT_TRAIN": str(fake)}
    result = subprocess.run(["bash", "scripts/experiment_bible.sh"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    log = out / "sim-sync-1e-3.log"
    assert (result.returncode, result.stderr) == (1, f"error: sim-sync-1e-3 failed, exit code 2: error: the reason "
                                                     f"({log})\n")  # fmt: skip
    assert result.stdout.count("== ") == 1  # (no run after it)


def test_experiment_convergence_runs_no_extra_configuration_where_extra_configs_is_empty(tmp_path: Path):
    """`EXTRA_CONFIGS=` (empty), the way to leave them out, was taken for the default: every seed of the six
    extra configurations was trained after CONFIGS' runs (hours of them)."""
    log, fake = tmp_path / "nmt.log", tmp_path / "fake-nmt"
    fake.write_text(  # (a run that ends at once, a translation, a score: what the script reads of each)
        f'#!/usr/bin/env bash\necho "$*" >>"{log}"\n'
        "case $1 in\n"
        '  train) mkdir -p "$3"; echo \'{"kind": "end", "interrupted": false}\' >"$3/events.jsonl"; '
        'echo {} >"$3/config.json" ;;\n'
        '  translate) while (($#)); do [[ $1 == -o ]] && : >"$2"; shift; done ;;\n'
        "  score) echo {} ;;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    (tmp_path / "out" / "bin").mkdir(parents=True)
    (tmp_path / "out" / "bin" / "manifest.json").write_text("{}")  # (the corpus is made: nothing preprocessed)
    env = {**ENV, "OUT": str(tmp_path / "out"), "DOCS": str(tmp_path / "docs"), "NMT": str(fake), "PYTHON": "true",
           "CONFIGS": "sync", "EXTRA_CONFIGS": "", "SEEDS": "1", "LANES": "1"}  # fmt: skip
    result = subprocess.run(["bash", "scripts/experiment_convergence.sh"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    trained = [line.split()[2] for line in log.read_text().splitlines() if line.startswith("train ")]
    assert trained == [str(tmp_path / "out" / "sync-s1")]


def steps(out: Path, commands: str, options: str = "") -> subprocess.Popen[str]:
    """A script of `step`s (scripts/steps.sh, as the GPU scripts run them) ended by steps_end, started;
    `options`: its first line (`set -euo pipefail`)."""
    out.mkdir()
    script = f"{options}\nOUT={out}\nsource scripts/steps.sh\n{commands}\nsteps_end\n"
    return subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)  # fmt: skip


def test_a_step_that_fails_leaves_the_others_and_the_script_exits_1_naming_it(tmp_path: Path):
    """gpu_bench.sh exited 0 whatever its steps did."""
    stdout, stderr = (done := steps(tmp_path / "out", "step ok 30 true\nstep bad 30 false\nstep late 1 sleep 5\n"
                                    "step after 30 true")).communicate(timeout=60)  # fmt: skip
    assert done.returncode == 1 and stderr == f"error: failed: bad late (see {tmp_path / 'out'}/steps.txt and " \
        "their logs)\n", stderr  # fmt: skip
    ran = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    assert [line.split(" in ")[0] for line in ran] == ["== ok: exit 0", "== bad: exit 1", "== late: exit 124",
                                                       "== after: exit 0"]  # fmt: skip


@pytest.mark.parametrize("options", ["", "set -euo pipefail"])
def test_ctrl_c_stops_the_step_under_way_and_the_script(tmp_path: Path, options: str):
    """A terminal's Ctrl-C reaches the script, not its step (`timeout` runs it in a process group of its own):
    the script waited for the step to end, then went on to the next one. Under set -e too."""
    started = steps(tmp_path / "out", "step long 60 sleep 30\nstep next 60 true", options)
    try:
        log = tmp_path / "out" / "long.log"
        deadline = time.monotonic() + 30
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        started.send_signal(signal.SIGINT)  # the script alone, as a terminal does (its step is in another group)
        _, stderr = started.communicate(timeout=10)
    finally:
        started.kill()  # (no-op when it ended)
    assert started.returncode == 130 and stderr == "interrupted\n", stderr
    ran = (tmp_path / "out" / "steps.txt").read_text().splitlines()
    assert ran[0].startswith("== long: exit ") and ran[0].endswith(", interrupted") and len(ran) == 2
    assert ran[1] == "== next: skipped, interrupted"


def test_bench_train_repeats_the_pair_in_turn_and_pools_them(synthetic_bin: Path):
    """--repeats 2 runs the product and the bare loop twice each, in turn: the line pools their tokens and
    gives each pair's ratio. (What it measures is not asserted: speed is the benchmarks' to measure.)"""
    # (in a fork of a process that has imported torch and the package, `run_forked`: as `python SCRIPT ARGS` runs)
    (done,) = run_forked([("bench_train.py", [str(synthetic_bin), "--preset", "micro", "--device", "cpu", "--seconds",
                                              "1", "--max-tokens", "256", "--precision", "fp32", "--parts-updates",
                                              "1", "--repeats", "2", "--log-every", "1"], False)])  # fmt: skip
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr  # (torch's about nested tensors)
    line = json.loads(done.stdout)
    assert line["repeats"] == 2 and line["warm_process"] and len(line["ratios"]) == 2
    assert line["torch"] == torch.__version__ and line["async_nmt"] == __version__  # what made the figures
    commit = source_commit()  # (the tree may turn dirty as the suite runs, in a checkout being worked in)
    assert (line["commit"] or "").removesuffix("+dirty") == (commit or "").removesuffix("+dirty")
    # (null under 3 train events a run: always on the CPU at the default 50, which --log-every now lowers)
    assert line["log_every"] == 1 and line["tok_per_s_second_half"] > 0
    second_halves = line["tok_per_s_second_half"] / line["bare_tok_per_s_second_half"]
    assert line["ratio_second_half"] == pytest.approx(second_halves, abs=2e-3)
    assert line["ratio_median"] == round(sum(line["ratios"]) / 2, 3) and all(ratio > 0 for ratio in line["ratios"])
    assert line["updates"] >= 2 and line["tok_per_s"] > 0 and line["bare_nn_transformer_tok_per_s"] > 0


AB_SWITCHES = ["packed-source", "low-precision-copies"]


@pytest.fixture(scope="module")
def ab_step_runs(synthetic_bin: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """ab_step.py on each switch, in forks of one process that imports torch once (`run_forked`)."""
    runs = run_forked([("ab_step.py", [str(synthetic_bin), "--preset", "micro", "--max-tokens", "256", "--batches",
                                       "2", "--switch", switch, "--precision", "bf16"], False)
                       for switch in AB_SWITCHES])  # fmt: skip
    return dict(zip(AB_SWITCHES, runs, strict=True))


@pytest.mark.parametrize("switch", AB_SWITCHES)
def test_ab_step_times_both_sides_of_a_switch_in_two_rounds(
    switch: str, ab_step_runs: dict[str, subprocess.CompletedProcess[str]]
):
    done = ab_step_runs[switch]
    assert done.returncode == 0 and done.stderr == "", done.stderr
    line = json.loads(done.stdout)
    assert line["switch"] == switch and line["batches"] == 2 and len(line["speedup_rounds"]) == 2
    assert line["ms_on"] > 0 and line["ms_off"] > 0
    assert line["speedup"] == pytest.approx(line["ms_off"] / line["ms_on"], rel=1e-2)
    assert 0 < line["padding"]["src"] < 1 and 0 <= line["padding"]["tgt"] < 1  # (synthetic sentences vary)


def test_replay_sync_clock_names_bin_where_the_runs_bin_folder_is_gone(tmp_path: Path):
    """The run's BIN folder gone (moved, or another machine's path): the error named the folder, not --bin."""
    run_dir = tmp_path / "sync-s1"
    run_dir.mkdir()
    config = json.loads((ROOT / "docs/results/convergence/sync-s1/config.json").read_text())
    config["train"]["bin_dir"] = str(tmp_path / "gone")
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "events.jsonl").write_text((ROOT / "docs/results/convergence/sync-s1/events.jsonl").read_text())
    other = tmp_path / "other"  # another run, copied before any replay
    shutil.copytree(run_dir, other)
    # the four in forks of one process that imports torch once (`run_forked`), as `python SCRIPT ARGS` runs them
    gone, inside, in_other, nowhere = run_forked([
        ("replay_sync_clock.py", [str(run_dir), str(out), "--worker-speeds", "1,1,1,0.5"], False)
        for out in (tmp_path / "out", run_dir / "replay", other / "replay", tmp_path / "nope" / "out")
    ])  # fmt: skip
    assert gone.returncode == 2 and gone.stderr == (f"error: {tmp_path / 'gone'}: no such folder, where {run_dir} was "
                                                    "trained from: give its BIN folder with --bin\n")  # fmt: skip
    # an OUT inside RUN was taken: RUN then held a folder nmt-train had not written
    assert (inside.returncode, inside.stderr) == (2, f"error: {run_dir / 'replay'}: is inside RUN; give an OUT beside "
                                                     "it\n")  # fmt: skip
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "events.jsonl"]
    # nor inside another run (whose --force it then blocked), nor in a folder that is not there (it was made)
    assert (in_other.returncode, in_other.stderr) == (2, f"error: {other / 'replay'}: inside the run {other}, whose "
                                                         "--force the replay would then block; give an OUT of its "
                                                         "own\n")  # fmt: skip
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "events.jsonl"]
    assert (nowhere.returncode, nowhere.stderr) == (2, f"error: {tmp_path / 'nope'}: no such folder\n")
    assert not (tmp_path / "nope").exists()


def _convergence_run(folder: Path, simulated: bool) -> None:
    """A finished run of the convergence experiment's folder layout: a start, one validation, an end."""
    clock = {"predicted_s": 2.0} if simulated else {}
    counts = {"updates": 10, "train_s": 1.0, "wall_s": 1.0, "pushes": 10, "tokens": 1000, "epoch": 0.1, **clock}
    events = [{"kind": "start", **counts, "updates": 0, "resumed": False}, {"kind": "valid", **counts, "bleu": 1.5},
              {"kind": "end", **counts, "interrupted": False}]  # fmt: skip
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    (folder / "config.json").write_text(json.dumps({"train": {"patience": 0}}))


def test_results_convergence_names_what_it_reads_and_says_when_it_draws_nothing(tmp_path: Path):
    """Given runs not trained with --simulate, it printed its first tables, then advised `--x time`, an option
    of `nmt report` it does not have; given no sync run, --plots drew nothing without a word."""
    _convergence_run(tmp_path / "plain" / "sync-s1", simulated=False)
    done = run("results_convergence.py", str(tmp_path / "plain"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("error: sync-s1: its events have no predicted_s (not a --simulate run): this script reads "
                           "the convergence experiment's runs; `nmt report --x time` compares others\n")  # fmt: skip
    _convergence_run(tmp_path / "async" / "async-s1", simulated=True)
    done = run("results_convergence.py", str(tmp_path / "async"), "--plots", str(tmp_path / "plots"))
    assert done.returncode == 0 and done.stdout.startswith("Finished runs (stopped by the epoch cap): 1, and 0 ")
    assert (
        done.stderr == f"--plots: none written (no finished sync run to set their target) into {tmp_path / 'plots'}\n"
    )
    assert not (tmp_path / "plots").exists()


def test_parity_train_scores_on_the_way_without_changing_the_runs(synthetic_bin: Path):
    """`--valid-at` scores both sides at earlier updates: the product by training to the mark and resuming,
    the bare loop inside its loop. Neither changes what the last update scores (the resume goes on with the
    same numbers; scoring draws no random numbers), and each mark is scored where it stands."""
    common = [str(synthetic_bin), "--preset", "micro", "--updates", "6", "--max-tokens", "256", "--seeds", "3",
              "--precision", "fp32", "--device", "cpu", "--warmup", "2"]  # fmt: skip

    # both in forks of one process that imports torch once (`run_forked`), as `python SCRIPT ARGS` runs them
    done = run_forked([("parity_train.py", [*common, *extra], False) for extra in ([], ["--valid-at", "2", "4"])])
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
    straight, marked = ([json.loads(line) for line in d.stdout.splitlines()] for d in done)
    assert [line["updates"] for line in marked] == [2, 4, 6, 2, 4, 6]  # per seed, then the summaries, the last last
    assert marked[2] | {"product_s": 0, "bare_s": 0} == straight[0] | {"product_s": 0, "bare_s": 0}
    assert marked[-1] | {"seeds": 0} == straight[-1] | {"seeds": 0}
    assert marked[0]["product_s"] is None and marked[2]["product_s"] > 0
    assert marked[0]["precision"] == "fp32" and marked[0]["bin"] == str(synthetic_bin)  # (auto is bf16 on some CPUs)
    for side in ("product_valid_nll", "bare_valid_nll"):  # both learn: the marks are not the last update's NLL
        assert marked[0][side] > marked[1][side] > marked[2][side]


def test_parity_trains_bare_init_product_starts_as_the_products_model(
    synthetic_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """`parity_train.py --bare-init product`: the bare nn.Transformer starts as the model that the product's
    trainer builds for the same seed (parameters, positions, every weight in its place): the same logits.
    Its own initialisation gives others."""
    from async_nmt.config import PAD_ID, TrainConfig
    from async_nmt.data.batches import collate_rows, make_batches
    from async_nmt.data.binarize import load_split
    from async_nmt.train.trainer import Trainer

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from parity_train import bare_model, copy_product_init

    cfg = TrainConfig(bin_dir=str(synthetic_bin), preset="micro", devices=["cpu"], seed=3, precision="fp32",
                      attention_dropout=0.1, embed_dropout=0.0)  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    split = load_split(synthetic_bin, "valid")
    rows = next(iter(make_batches(split.src.lengths, split.tgt.lengths, 512, trainer.model_cfg.max_positions)))
    batch = collate_rows(split.src, split.tgt, rows, trainer.model_cfg.max_positions)
    assert (batch.src == PAD_ID).any()  # (padding, which both mask)
    with torch.no_grad():
        ours = trainer.model.eval()(batch.src, batch.prev_tgt)
        for init, same in (("product", True), ("own", False)):
            bare = bare_model(trainer.model_cfg, 3, "product", False, init).eval()
            assert torch.allclose(bare(batch.src, batch.prev_tgt), ours, atol=1e-5) == same, init
        for param in trainer.model.parameters():  # every norm too (at the start they are all alike)
            param.add_(torch.randn_like(param), alpha=0.1)
        copy_product_init(trainer.model, bare)
        torch.testing.assert_close(bare(batch.src, batch.prev_tgt), trainer.model(batch.src, batch.prev_tgt),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
