"""The versions that a run's start event and the benchmark lines record (async_nmt.provenance)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from async_nmt import provenance
from async_nmt.provenance import source_commit, versions

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
IDENTITY = ("-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false")  # (whatever the user's)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def package_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Point source_commit at another package folder, asked afresh."""

    def at(folder: Path) -> None:
        monkeypatch.setattr(provenance, "_HERE", folder)
        source_commit.cache_clear()

    for key in [key for key in os.environ if key.startswith("GIT_")] + ["ASYNC_NMT_COMMIT"]:  # (a git hook's)
        monkeypatch.delenv(key, raising=False)
    yield at
    source_commit.cache_clear()


def test_the_commit_is_the_checkouts_and_a_change_not_committed_marks_it_dirty(tmp_path: Path, package_at) -> None:
    repo = tmp_path / "repo"
    package = repo / "src" / "async_nmt"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (repo / "README.md").write_text("readme\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, *IDENTITY, "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    package_at(package)
    assert source_commit() == head
    (repo / "untracked.txt").write_text("not a change of the code\n")
    source_commit.cache_clear()
    assert source_commit() == head
    (repo / "README.md").write_text("changed\n")  # any tracked file
    source_commit.cache_clear()
    assert source_commit() == head + "+dirty"


def test_an_untracked_copy_inside_a_checkout_has_no_commit_unless_the_environment_names_one(
    tmp_path: Path, package_at, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package installed into a `.venv` inside a checkout is not the checkout's code: no commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("readme\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, *IDENTITY, "commit", "-q", "-m", "one")
    installed = repo / ".venv" / "site-packages" / "async_nmt"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("x = 1\n")
    package_at(installed)
    assert source_commit() is None
    monkeypatch.setenv("ASYNC_NMT_COMMIT", "abc123")
    source_commit.cache_clear()
    assert source_commit() == "abc123"
    package_at(tmp_path / "elsewhere")  # not in a checkout at all (and not there)
    assert source_commit() == "abc123"


def test_versions_name_the_package_torch_and_python() -> None:
    found = versions()
    assert found["torch"] == torch.__version__ and found["cuda"] == torch.version.cuda
    assert found["async_nmt"] and found["python"] and found["python"].count(".") == 2


def test_the_cpus_name_is_the_same_whatever_threads_a_process_takes() -> None:
    """A sync run's ranks each take a share of the cores, an async run's trainer more: named with the threads,
    the recipe's own report warned that its runs on one machine "differ in device"."""
    from async_nmt.provenance import device_name, timed_on

    threads = torch.get_num_threads()
    try:
        named = device_name("cpu")
        torch.set_num_threads(1)
        assert device_name("cpu") == named and timed_on("cpu") == {"device_name": named, "threads": 1}
    finally:
        torch.set_num_threads(threads)
