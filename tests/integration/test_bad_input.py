"""Bad input never costs the user data, and is refused in one line naming what and where (exit 2)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import command, write_synthetic_corpus

from async_nmt.cli import main
from async_nmt.errors import UserError, reason

TRAIN = ["--preset", "micro", "--devices", "cpu", "--max-tokens", "512", "--valid-max-sentences", "10", "--quiet"]


def nmt(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin, prog_name="nmt")


def one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(synthetic_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A micro run with 2 kept checkpoints."""
    run = tmp_path_factory.mktemp("runs") / "run"
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "4", "--valid-every", "2", "--keep-last", "2")
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("where", ["the corpus folder", "a folder above it"])
def test_train_force_refuses_a_run_folder_that_is_or_holds_the_corpus(synthetic_bin: Path, tmp_path: Path, where):
    bin_dir = tmp_path / "work" / "bin"
    shutil.copytree(synthetic_bin, bin_dir)
    before = files(tmp_path / "work")
    run = bin_dir if where == "the corpus folder" else tmp_path / "work"
    one_line_error(nmt("train", bin_dir, run, *TRAIN, "--max-updates", "1", "--force"), "must not be the corpus")
    assert files(tmp_path / "work") == before


def test_train_force_deletes_a_run_folder_only_and_never_a_run_inside_it(
    synthetic_bin: Path, run_dir: Path, tmp_path: Path
):
    """A mistyped RUN_DIR (a folder of notes and runs) is refused, --force or not; so is a run folder that
    holds another run."""
    folder = tmp_path / "experiments"
    shutil.copytree(run_dir, folder / "sub" / "run")
    (folder / "notes.txt").write_text("keep")
    holder = tmp_path / "holder"
    shutil.copytree(run_dir, holder)
    shutil.copytree(run_dir, holder / "inner")
    before = files(tmp_path)
    for force in ([], ["--force"]):
        one_line_error(nmt("train", synthetic_bin, folder, *TRAIN, "--max-updates", "1", *force), "not a run folder")
    one_line_error(nmt("train", synthetic_bin, holder, *TRAIN, "--max-updates", "1", "--force"), "holds another run")
    assert files(tmp_path) == before


def test_a_run_folder_where_the_lock_cannot_be_made_is_one_line(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """A read-only file system or folder: the lock file, the first thing nmt-train writes, cannot be made."""
    import errno
    import os

    from async_nmt.train import lock

    def read_only(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(lock, "_open_lock_file", read_only)
    message = f"{tmp_path / 'run'}: cannot create the lock file .nmt-train.lock (Read-only file system)"
    one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--max-updates", "1"), message)
    assert not (tmp_path / "run").exists()  # made for the lock, and removed again
    (tmp_path / "file").write_text("keep")
    one_line_error(nmt("train", synthetic_bin, tmp_path / "file" / "run", *TRAIN, "--max-updates", "1"),
                   "cannot make the folder (Not a directory)")  # fmt: skip


def test_preprocess_force_refuses_an_output_folder_that_holds_the_raw_one(tmp_path: Path):
    raw = write_synthetic_corpus(tmp_path / "work" / "raw", n_train=50, n_valid=5, n_test=5)
    before = files(tmp_path / "work")
    one_line_error(nmt("preprocess", raw, tmp_path / "work", "--vocab-size", "60", "--force"), "must not be the raw")
    assert files(tmp_path / "work") == before


@pytest.mark.parametrize("where", ["the output folder", "a folder below it"])
def test_preprocess_force_refuses_an_output_folder_that_is_or_holds_a_run(run_dir: Path, tmp_path: Path, where):
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    out = tmp_path / "out"
    shutil.copytree(run_dir, out if where == "the output folder" else out / "runs" / "run")
    before = files(out)
    one_line_error(nmt("preprocess", raw, out, "--vocab-size", "60", "--force"), "training run", "--force would delete")
    assert files(out) == before


def test_a_folder_that_cannot_be_made_is_one_line(run_dir: Path, tmp_path: Path):
    """Output folders under a file: preprocess says so (exit 2); report's --out, like any error of the
    system that no command foresaw, is `error: PATH: REASON` (exit 1), never a traceback."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    (tmp_path / "file").write_text("keep")
    one_line_error(nmt("preprocess", raw, tmp_path / "file" / "bin", "--vocab-size", "60"), "cannot make the folder")
    result = nmt("report", run_dir, "--out", tmp_path / "file" / "report")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'file' / 'report'}: Not a directory"]
    assert (tmp_path / "file").read_text() == "keep"


def test_a_loop_of_symbolic_links_on_the_way_to_an_output_is_one_line(run_dir: Path, synthetic_bin: Path,
                                                                      tmp_path: Path):  # fmt: skip
    """Output paths through links that lead to each other: preprocess's BIN, average's AVG.pt and train's RUN
    were a traceback (pathlib's RuntimeError "Symlink loop from ..."), exit code 1; now one line, exit 2."""
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for args in (("preprocess", raw, loop / "bin", "--vocab-size", "60"),
                 ("average", run_dir, "--last", "2", "-o", loop / "avg.pt"),
                 ("train", synthetic_bin, loop / "run", *TRAIN, "--max-updates", "1")):  # fmt: skip
        line = one_line_error(nmt(*args), "a loop of symbolic links")
        assert line.startswith(f"error: {loop}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "loop2", "raw"]


@pytest.mark.parametrize(
    "vocab_size, fragment",
    [(12, "it needs at least"), (10000, "not the 10000 asked for")],
)
def test_preprocess_says_how_large_a_vocabulary_can_be(tmp_path: Path, vocab_size, fragment):
    raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
    result = nmt("preprocess", raw, tmp_path / "bin", "--vocab-size", vocab_size)
    if vocab_size == 12:  # fewer pieces than the text has characters: refused, in words
        line = one_line_error(result, fragment, "--vocab-size")
        assert "trainer_interface" not in line
    else:  # more than the text allows: a smaller vocabulary, and a warning that says so
        assert result.exit_code == 0, result.output
        manifest = json.loads((tmp_path / "bin" / "manifest.json").read_text())
        assert f"warning: the vocabulary has {manifest['vocab_size']} pieces, {fragment}" in result.stderr


@pytest.mark.parametrize(
    "field, value",
    [
        ("bleu", '"x"'),
        ("bleu", "null"),
        ("bleu", "NaN"),
        ("updates", '"a"'),
        ("train_s", "true"),
        ("valid_loss", '"abc"'),
    ],
)
def test_report_refuses_an_event_whose_field_is_not_a_number(run_dir: Path, tmp_path: Path, field, value):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines) if '"valid"' in line)
    event = json.loads(lines[number])
    lines[number] = json.dumps(event).replace(f'"{field}": {json.dumps(event[field])}', f'"{field}": {value}') + "\n"
    assert value in lines[number]
    (run / "events.jsonl").write_text("".join(lines))
    one_line_error(nmt("report", run), f"events.jsonl:{number + 1}", f"its {field} is {value}, not a finite number")


def test_resume_refuses_an_average_in_place_of_last_pt(run_dir: Path, synthetic_bin: Path, tmp_path: Path):
    """An average (`nmt average`) holds no optimizer or data state: one line, where a KeyError was."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert nmt("average", run, "--last", "2", "-o", tmp_path / "avg.pt").exit_code == 0
    shutil.copyfile(tmp_path / "avg.pt", run / "checkpoints" / "last.pt")
    one_line_error(nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume"), "no training state")


def test_resume_refuses_the_corpus_the_other_way_round(run_dir: Path, synthetic_bin: Path, tmp_path: Path):
    """The same vocabulary, the languages swapped: a src->tgt run does not go on as tgt->src."""
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    shutil.copytree(synthetic_bin, bin_dir)
    shutil.copytree(run_dir, run)
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    manifest["src"], manifest["tgt"] = manifest["tgt"], manifest["src"]
    (bin_dir / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(nmt("train", bin_dir, run, *TRAIN, "--max-updates", "6", "--resume"), "trained src->tgt")


def test_resume_refuses_a_corpus_of_another_normalization(run_dir: Path, synthetic_raw: Path, tmp_path: Path):
    """The same pieces, preprocessed with `--normalization identity`: the vocabulary's hash is the same, and the
    run resumed with a tokenizer that reads text otherwise (its spm.model replaced by the BIN's) without a word."""
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    shutil.copytree(run_dir, run)
    kept = (run / "spm.model").read_bytes()
    assert (
        nmt("preprocess", synthetic_raw, bin_dir, "--vocab-size", "200", "--normalization", "identity").exit_code == 0
    )
    assert json.loads((bin_dir / "manifest.json").read_text())["vocab_hash"] == json.loads(
        (run / "config.json").read_text())["corpus"]["vocab_hash"]  # fmt: skip
    one_line_error(nmt("train", bin_dir, run, *TRAIN, "--max-updates", "6", "--resume"),
                   "normalizes text otherwise", "(--normalization identity)")  # fmt: skip
    assert (run / "spm.model").read_bytes() == kept


def test_report_reads_a_log_with_blank_lines(run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    expected = nmt("report", run, "--json")
    with open(run / "events.jsonl", "a") as f:
        f.write("\n  \n")
    result = nmt("report", run, "--json")
    assert expected.exit_code == result.exit_code == 0, result.output
    assert result.stdout == expected.stdout


@pytest.mark.parametrize("damage", ["another spm.model", "manifest without vocab_hash"])
def test_a_corpus_that_fails_its_checks_leaves_the_old_run_in_place(
    synthetic_bin: Path, run_dir: Path, tmp_path: Path, damage
):
    bin_dir, old_run = tmp_path / "bin", tmp_path / "old"
    shutil.copytree(synthetic_bin, bin_dir)
    shutil.copytree(run_dir, old_run)
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    if damage == "another spm.model":  # a vocabulary of another size, as another corpus would have
        raw = write_synthetic_corpus(tmp_path / "raw", n_train=50, n_valid=5, n_test=5)
        assert nmt("preprocess", raw, tmp_path / "other", "--vocab-size", "40").exit_code == 0
        shutil.copyfile(tmp_path / "other" / "spm.model", bin_dir / "spm.model")
        fragment = "spm.model: not the vocabulary"
    else:
        del manifest["vocab_hash"]
        fragment = "lacks vocab_hash"
    (bin_dir / "manifest.json").write_text(json.dumps(manifest))
    before = files(old_run)
    one_line_error(nmt("train", bin_dir, old_run, *TRAIN, "--max-updates", "1", "--force"), fragment)
    assert files(old_run) == before


def test_average_never_replaces_a_file_unasked_nor_a_checkpoint_of_the_run(run_dir: Path, tmp_path: Path):
    kept = tmp_path / "precious.pt"
    kept.write_bytes(b"precious")
    one_line_error(nmt("average", run_dir, "--last", "2", "-o", kept), "exists; use --force")
    assert kept.read_bytes() == b"precious"
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    one_line_error(nmt("average", run_dir, "--last", "2", "-o", last, "--force"), "the run's own checkpoints")
    assert last.read_bytes() == before
    assert nmt("average", run_dir, "--last", "2", "-o", kept, "--force").exit_code == 0
    assert torch.load(kept, weights_only=False)["averaged"]  # replaced, as asked
    one_line_error(nmt("translate", last, "--average", "2", "--device", "cpu"), "a file; averaging needs the run")


def test_translations_never_replace_a_raw_corpus_file(run_dir: Path, synthetic_raw: Path, tmp_path: Path):
    """`translate -i RAW/test.de -o RAW/test.en` replaced the reference with the translations, which then
    scored BLEU 100; a new file there, or one not named as the corpus's, is the user's to write."""
    raw = tmp_path / "raw"
    shutil.copytree(synthetic_raw, raw)
    before = (raw / "test.tgt").read_bytes()
    one_line_error(nmt("translate", run_dir, "-i", raw / "test.src", "-o", raw / "test.tgt", "--device", "cpu"),
                   f"{raw / 'test.tgt'}: a file of the raw corpus {raw} (a reference?)")  # fmt: skip
    link = tmp_path / "hyp"
    link.symlink_to(raw / "test.tgt")
    one_line_error(nmt("translate", run_dir, "-o", link, "--device", "cpu", stdin="ba\n"), "a file of the raw corpus")
    assert (raw / "test.tgt").read_bytes() == before
    for name in ("test.hyp", "hyp.tgt", "test.tgt.hyp"):
        result = nmt("translate", run_dir, "-o", raw / name, "--device", "cpu", "--beam", "1", stdin="ba\n")
        assert result.exit_code == 0 and (raw / name).read_text().count("\n") == 1, result.output


def test_outputs_never_replace_a_runs_vocabulary_nor_a_corpus_file(run_dir: Path, synthetic_bin: Path, tmp_path: Path):
    """`translate -o RUN/spm.model` made the run's vocabulary a text file, and `average -o BIN/spm.model --force`
    the corpus's a checkpoint, without a word (training on BIN then failed; report compared runs otherwise)."""
    vocab, reference = run_dir / "spm.model", synthetic_bin / "test.tgt"
    before = {path: path.read_bytes() for path in (vocab, reference, synthetic_bin / "spm.model")}
    one_line_error(nmt("translate", run_dir, "-o", vocab, "--device", "cpu", stdin="ba\n"), "a file of the run")
    one_line_error(nmt("average", run_dir, "--last", "2", "-o", vocab, "--force"), "a file of the run",
                   "never replaced, even with --force")  # fmt: skip
    one_line_error(nmt("translate", run_dir, "-o", reference, "--device", "cpu", stdin="ba\n"),
                   "a file of the preprocessed corpus")  # fmt: skip
    one_line_error(nmt("average", run_dir, "--last", "2", "-o", synthetic_bin / "spm.model", "--force"),
                   "a file of the preprocessed corpus")  # fmt: skip
    link = tmp_path / "link"
    link.symlink_to(synthetic_bin)
    one_line_error(nmt("translate", run_dir, "-o", link / "test.tgt", "--device", "cpu", stdin="ba\n"), "corpus")
    for protected, said in ((vocab, "a file of the run"), (reference, "a file of the preprocessed corpus")):
        linked = tmp_path / f"out-{protected.name}"  # translate writes into what a link points to, as `>` does
        linked.symlink_to(protected)
        one_line_error(nmt("translate", run_dir, "-o", linked, "--device", "cpu", stdin="ba\n"), f"{linked} -> ",
                       said)  # fmt: skip
    assert all(path.read_bytes() == data for path, data in before.items())
    loop = tmp_path / "loop"  # (links that lead to each other: a traceback, once links were followed)
    loop.symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(loop)
    for model in (run_dir, run_dir / "checkpoints" / "last.pt"):  # (a checkpoint file: a traceback before too)
        one_line_error(nmt("translate", model, "-o", loop, "--device", "cpu", stdin="ba\n"), "leads nowhere")
    corpus = tmp_path / "bin"  # a new file in a corpus folder is the user's to write
    shutil.copytree(synthetic_bin, corpus)
    for _ in range(2):  # and again: the file is the user's, not the corpus's (it was refused the second time)
        result = nmt("translate", run_dir, "-o", corpus / "hyp.en", "--device", "cpu", "--beam", "1", stdin="ba\n")
        assert result.exit_code == 0, result.output
    assert (corpus / "hyp.en").read_text().count("\n") == 1


def test_translate_refuses_to_write_over_its_input(run_dir: Path, tmp_path: Path):
    source = tmp_path / "source.txt"
    source.write_text("a b c\n")
    one_line_error(nmt("translate", run_dir, "-i", source, "-o", source, "--device", "cpu"), "replace the input")
    assert source.read_text() == "a b c\n"


def test_translate_refuses_to_write_over_the_file_it_reads_as_stdin(run_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    """`nmt translate RUN -o FILE < FILE` replaced the source with its translations without a word."""
    from async_nmt.translate import translate_file

    source, link = tmp_path / "source.txt", tmp_path / "link.txt"
    source.write_text("a b c\n")
    link.symlink_to(source)
    for out, stdin in ((source, "-"), (link, None)):
        with open(source, encoding="utf-8") as f:
            monkeypatch.setattr("sys.stdin", f)  # (a real file, as the shell's `<` gives it; CliRunner's has none)
            with pytest.raises(UserError, match="the output would replace stdin; write it elsewhere"):
                translate_file(run_dir, stdin, out, device="cpu")
        assert source.read_text() == "a b c\n"
    other = tmp_path / "other.txt"
    with open(source, encoding="utf-8") as f:  # another output is written as before
        monkeypatch.setattr("sys.stdin", f)
        translate_file(run_dir, None, other, beam=1, device="cpu")
    assert len(other.read_text().splitlines()) == 1


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"vocab_model": b"junk"}, "its vocabulary is not a sentencepiece model"),
        ({"vocab_size": 7}, "its vocabulary has"),
        ({"d_model": "x"}, "its model_config does not build a model"),
        ({"drop": "model_config"}, "an incomplete async-nmt checkpoint (no model_config)"),
    ],
    ids=["junk vocabulary", "another vocabulary size", "bad model_config", "no model_config"],
)
def test_translate_refuses_a_checkpoint_whose_contents_are_broken(run_dir: Path, tmp_path: Path, change, fragment):
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    if "drop" in change:
        del state[change["drop"]]
    elif "vocab_model" in change:
        state["vocab_model"] = change["vocab_model"]
    else:
        state["model_config"] = {**state["model_config"], **change}
    torch.save(state, tmp_path / "broken.pt")
    one_line_error(nmt("translate", tmp_path / "broken.pt", "--device", "cpu", stdin="a b\n"), "broken.pt", fragment)


def test_translate_refuses_a_truncated_or_foreign_checkpoint_in_one_line(run_dir: Path, tmp_path: Path):
    (tmp_path / "cut.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes()[:1000])
    one_line_error(nmt("translate", tmp_path / "cut.pt", "--device", "cpu", stdin="a b\n"), "cut.pt",
                   "not a checkpoint, or one cut short")  # fmt: skip
    (tmp_path / "text.pt").write_text("not a model\n")
    one_line_error(nmt("translate", tmp_path / "text.pt", "--device", "cpu", stdin="a b\n"), "text.pt",
                   "not a checkpoint, or one cut short")  # fmt: skip
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as archive:  # a zip archive, but not torch.save's
        archive.writestr("notes.txt", "hello")
    one_line_error(nmt("translate", tmp_path / "zip.pt", "--device", "cpu", stdin="a b\n"), "zip.pt",
                   "not a readable checkpoint (")  # fmt: skip


class _Touch:
    """Pickled as a call of Path.touch: a checkpoint that runs code as it loads."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_a_checkpoint_that_would_run_code_is_refused_unrun(run_dir: Path, tmp_path: Path):
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    marker = tmp_path / "ran"
    torch.save({**state, "extra": _Touch(marker)}, tmp_path / "trojan.pt")
    one_line_error(nmt("translate", tmp_path / "trojan.pt", "--device", "cpu", stdin="a b\n"), "trojan.pt",
                   "which no async-nmt checkpoint does")  # fmt: skip
    assert not marker.exists()


@pytest.mark.parametrize(
    "message, expected",
    [
        ("short. Two sentences stay whole.", "short. Two sentences stay whole."),
        ("\n  first   line\nsecond line", "first line"),
        ("A first sentence. " + "x " * 100, "A first sentence."),
        ("word " * 50, "word " * 30 + "word..."),  # 157 characters and "..."
        ("", "RuntimeError"),
    ],
)
def test_a_library_message_becomes_a_clause_of_a_one_line_error(message: str, expected: str):
    assert reason(RuntimeError(message)) == expected


def test_resume_refuses_a_corrupt_event_log(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines = (run / "events.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "garbage{\n"
    (run / "events.jsonl").write_text("".join(lines))
    one_line_error(nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume"), "events.jsonl:2")


@pytest.mark.parametrize(
    "option",
    [["--lr", "nan"], ["--max-time", "nan"], ["--clip-norm", "nan"], ["--lr", "inf"],
     ["--worker-speeds", "1,nan", "--workers", "2", "--mode", "async"],
     ["--outer-lr", "inf", "--mode", "diloco", "--workers", "2", "--sync-every", "2"],
     # config.json and the start event held Infinity, which JSON has not (and other readers refuse)
     ["--max-time", "inf"], ["--clip-norm", "1e999"],
     ["--link-gbps", "inf", "--simulate", "--workers", "2", "--mode", "async"]],
    ids=lambda option: " ".join(option[:2]),
)  # fmt: skip
def test_nan_options_are_refused(synthetic_bin: Path, tmp_path: Path, option):
    line = one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--max-updates", "1", *option),
                          option[0])  # fmt: skip
    assert "negative" not in line  # (--max-time nan and --clip-norm nan "must not be negative")
    assert not (tmp_path / "run").exists()


def test_an_empty_name_is_refused_not_taken_for_the_working_folder(synthetic_bin: Path, run_dir: Path,
                                                                    tmp_path: Path, monkeypatch):  # fmt: skip
    """`nmt-train BIN ""` said ".: exists and is not a run folder" (and trained into the working folder where
    it was empty); `nmt translate ""` looked for a checkpoint there."""
    monkeypatch.chdir(tmp_path)
    for args, name in (
        (["train", synthetic_bin, "", *TRAIN, "--max-updates", "1"], "RUN_DIR"),
        (["translate", ""], "RUN_OR_CHECKPOINT"),
        (["translate", run_dir, "-o", ""], "--output"),
        (["score", "", "ref"], "HYP"),
        (["preprocess", "", tmp_path / "bin"], "RAW_DIR"),
        (["average", run_dir, "-o", ""], "--output"),
    ):
        one_line_error(nmt(*args, stdin="a b\n"), f"{name}'", "an empty name")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("workers", ["99999999999999999999", "1025"])
def test_more_than_1024_workers_are_refused(synthetic_bin: Path, tmp_path: Path, workers: str):
    """--workers 99999999999999999999 hung silently as it listed a device for each worker (and a sync run
    spawns a process a worker before the trainer finds too few batches for them)."""
    one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--max-updates", "1", "--workers", workers),
                   "--workers must be at most 1024")  # fmt: skip


def test_an_accum_past_a_million_pushes_is_refused(synthetic_bin: Path, tmp_path: Path):
    """--accum 99999999999999999999: a traceback ("Overflow when unpacking long long") as the workers started."""
    one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--max-updates", "1", "--workers", "2",
                       "--mode", "async-accum", "--accum", "99999999999999999999"),
                   "--accum must be at most 1,048,576")  # fmt: skip


@pytest.mark.parametrize("speeds", ["1,1e-300", "1,0.0009", "1,1001"])
def test_worker_speeds_beyond_a_thousandfold_are_refused(synthetic_bin: Path, tmp_path: Path, speeds: str):
    """--worker-speeds 1,1e-300 with real workers: "worker 1 (cpu) failed: OverflowError: timestamp out of
    range for platform time_t" (the slowed worker's sleep), exit 1."""
    line = one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--max-updates", "1", "--workers",
                              "2", "--mode", "async", "--worker-speeds", speeds), "--worker-speeds")  # fmt: skip
    assert "between 0.001 and 1000" in line


def test_a_config_json_value_of_another_type_is_named_and_last_pts_taken(synthetic_bin: Path, run_dir: Path,
                                                                         tmp_path: Path):  # fmt: skip
    """A hand-edited config.json with "max_tokens": "512" failed the resume with a TypeError's traceback."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["max_tokens"] = str(config["train"]["max_tokens"])
    (run / "config.json").write_text(json.dumps(config))
    result = nmt("train", synthetic_bin, run, "--resume", "--max-updates", "5", "--quiet")
    assert result.exit_code == 0, result.output
    warning = result.stderr.splitlines()[0]
    assert warning.startswith(f"warning: {run / 'config.json'}: not a readable RunConfig (max_tokens is '512', not "
                              "of type int); the run's options are taken from")  # fmt: skip
    assert json.loads((run / "config.json").read_text())["train"]["max_tokens"] == 512  # written again, whole
    # an infinite --max-time or --clip-norm, which runs begun before 2026-12-05 may hold: no limit, no clipping
    config = json.loads((run / "config.json").read_text())
    config["train"].update(max_time=float("inf"), clip_norm=float("inf"))  # (written as Infinity)
    (run / "config.json").write_text(json.dumps(config))
    result = nmt("train", synthetic_bin, run, "--resume", "--max-updates", "6", "--quiet")
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert json.loads((run / "config.json").read_text())["train"]["max_time"] == 0


def test_a_config_json_value_out_of_range_names_config_json(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    """A hand-edited config.json with "lr": -1 said `--lr must be positive`, an option the user had not typed."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["lr"] = -1
    (run / "config.json").write_text(json.dumps(config))
    before = files(run)
    one_line_error(nmt("train", synthetic_bin, run, "--resume", "--max-updates", "5", "--quiet"), "--lr",
                   f"(the options not given come from {run / 'config.json'}, as --resume takes them)")  # fmt: skip
    assert files(run) == before


def test_a_cut_last_pt_at_resume_says_how_to_go_on_and_names_no_missing_file(synthetic_bin: Path, run_dir: Path,
                                                                               tmp_path: Path):  # fmt: skip
    """A damaged last.pt's error named the way out (another save, copied to last.pt); a cut one's did not.
    A missing BIN folder was "not a preprocessed corpus (no manifest.json)", and /dev/null "no such checkpoint"."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    before = files(run)
    one_line_error(nmt("train", synthetic_bin, run, "--resume", "--max-updates", "5", "--quiet"),
                   "last.pt: cut short (not a whole zip archive", "resume from another save (best.pt")  # fmt: skip
    assert files(run) == before
    last.write_bytes(b"\x8a" * 1000)  # other bytes altogether were "cut short" too
    one_line_error(nmt("train", synthetic_bin, run, "--resume", "--max-updates", "5", "--quiet"),
                   "last.pt: not a checkpoint (not a zip archive, as torch.save writes)")  # fmt: skip
    one_line_error(nmt("train", tmp_path / "nope", tmp_path / "new", *TRAIN), f"{tmp_path / 'nope'}: no such folder")
    one_line_error(nmt("translate", "/dev/null", stdin="a b\n"), "/dev/null: not a regular file")


def test_a_checkpoints_folder_that_cannot_be_written_fails_before_training(synthetic_bin: Path, tmp_path: Path,
                                                                          monkeypatch):  # fmt: skip
    """A read-only checkpoints folder (a mount) trained every update, then failed at the first save."""
    import errno

    write_bytes = Path.write_bytes

    def read_only(self: Path, data: bytes) -> int:
        if self.parent.name == "checkpoints":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    run = tmp_path / "run"
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "4")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: {run / 'checkpoints'}: cannot write a checkpoint there (Read-only file "
                                     "system)")  # fmt: skip
    assert not (run / "events.jsonl").exists()  # (it fails before the log starts: nothing trained)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_too_few_batches_for_the_workers_is_one_line_and_the_folder_can_be_reused(synthetic_bin, tmp_path, mode):
    """A corpus that makes fewer batches than --workers: one line naming the options (it was a traceback,
    and a sync start left a folder of worker-errors.log that --force refused to clear)."""
    run = tmp_path / "run"
    too_few = ["--mode", mode, "--workers", "2", "--max-tokens", "10000000", "--max-updates", "1"]
    one_line_error(nmt("train", synthetic_bin, run, *TRAIN[:4], *too_few), "too few for 2 workers", "--max-tokens")
    result = nmt("train", synthetic_bin, run, *TRAIN, "--mode", mode, "--workers", "2", "--max-updates", "1",
                 "--valid-every", "0", "--force")  # fmt: skip
    assert result.exit_code == 0, result.output


def test_translate_refuses_a_nan_length_limit_and_takes_inf_for_the_models_positions(run_dir: Path):
    one_line_error(nmt("translate", run_dir, "--max-len-a", "nan", stdin="ba de\n"), "--max-len-a")
    for a in ("inf", "1e308"):  # (a * source tokens overflowed int() after the model had loaded)
        result = nmt("translate", run_dir, "--max-len-a", a, "--beam", "1", stdin="ba de\n\nka\n")
        assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_every_device_named_must_exist_even_one_a_worker_would_not_use(synthetic_bin: Path, tmp_path: Path):
    result = nmt("train", synthetic_bin, tmp_path / "run", *TRAIN[2:], "--max-updates", "1", "--devices", "cpu,cuda:0")
    one_line_error(result, "cuda:0 is not there")


def test_report_refuses_an_out_file_and_a_nan_target(run_dir: Path, tmp_path: Path):
    (tmp_path / "file").write_text("keep")
    one_line_error(nmt("report", run_dir, "--out", tmp_path / "file"), "is not a folder")
    assert (tmp_path / "file").read_text() == "keep"
    one_line_error(nmt("report", run_dir, "--target-bleu", "nan"), "--target-bleu")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["translate", "run", "--beam", "abc"], "(see `nmt translate --help`)"),
        (["score", "only-one"], "Missing argument 'REF [REF...]'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["report", "run", "--link-gbps", "0"], "--link-gbps"),
        (["report", "run", "--link-gbps", "1"], "use it with --x predicted"),
        # sacreBLEU's REF -i HYP: the order is named (swapped, the two score otherwise)
        (["score", "ref.en", "-i", "hyp.en"], "It takes HYP then REF..., not sacreBLEU's REF -i HYP."),
        # the options of fairseq, Marian and Sockeye are named with ours (Click guessed by their spelling:
        # "--source-lang": "Did you mean '--force'?")
        (["preprocess", "raw", "bin", "--source-lang", "de"], "fairseq's --source-lang is --src here."),
        (["preprocess", "raw", "bin", "-t", "en"], "fairseq's -t is --tgt here."),
        (["train", "bin", "run", "--update-freq", "8"], "fairseq's --update-freq is --local-accum here."),
        (["train", "bin", "run", "--optimizer-delay", "8"], "Marian's --optimizer-delay is --local-accum here."),
        (["train", "bin", "run", "--max-num-checkpoint-not-improved", "3"], "Sockeye's"),
    ],
)
def test_usage_errors_are_one_line_too(args, fragment):
    one_line_error(nmt(*args), "error: ", fragment)


def test_nmt_train_names_our_option_for_one_of_fairseq_too():
    """nmt-train, the same command as `nmt train`, names them as it does."""
    from async_nmt.cli import train

    result = CliRunner().invoke(train, ["bin", "run", "--max-update", "5"], prog_name="nmt-train")
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [
        "error: No such option '--max-update': fairseq's --max-update is --max-updates here. (see `nmt-train --help`)"
    ], result.output


def test_help_and_a_bare_group_still_show_the_usage():
    assert nmt("train", "--help").exit_code == 0 and "BIN_DIR RUN_DIR" in nmt("train", "--help").stdout
    bare = nmt("corpus")
    assert "Usage:" in bare.output and "list" in bare.output


def test_valid_text_that_does_not_match_its_ids_is_refused_before_the_run_folder_is_made(
    synthetic_bin: Path, tmp_path: Path
):
    bin_dir = tmp_path / "bin"
    shutil.copytree(synthetic_bin, bin_dir)
    tgt = json.loads((bin_dir / "manifest.json").read_text())["tgt"]
    lines = (bin_dir / f"valid.{tgt}").read_text().splitlines(keepends=True)
    (bin_dir / f"valid.{tgt}").write_text("".join(lines[:5]))
    one_line_error(nmt("train", bin_dir, tmp_path / "run", *TRAIN, "--max-updates", "1"),
                   f"the valid text's tgt side has 5 lines but the valid split's ids {len(lines)}")  # fmt: skip
    # reading fewer (it said "0 of the 5 lines the valid split's ids have", of ids of 30 lines)
    (bin_dir / f"valid.{tgt}").write_text("")
    one_line_error(nmt("train", bin_dir, tmp_path / "run", *TRAIN, "--max-updates", "1", "--valid-max-sentences", "5"),
                   f"has 0 lines but the valid split's ids {len(lines)}")  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_a_token_array_of_another_vocabulary_or_an_empty_one_is_one_line_and_force_keeps_the_run(
    synthetic_bin: Path, run_dir: Path, tmp_path: Path
):
    """Ids past the vocabulary failed mid-epoch with the embedding's IndexError, `--force` having cleared the old
    run's checkpoints; an empty .npy file was numpy's EOFError, which Click took for Ctrl-C ("interrupted",
    exit code 130)."""
    import numpy as np

    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    shutil.copytree(synthetic_bin, bin_dir)
    shutil.copytree(run_dir, run)
    manifest = json.loads((bin_dir / "manifest.json").read_text())
    ids = bin_dir / f"train.{manifest['tgt']}.ids.npy"
    np.save(ids, np.load(ids) + manifest["vocab_size"])
    one_line_error(nmt("train", bin_dir, run, *TRAIN, "--max-updates", "1", "--force"), "outside the vocabulary")
    assert (run / "checkpoints" / "last.pt").is_file()
    (bin_dir / f"valid.{manifest['src']}.ids.npy").write_bytes(b"")
    shutil.copyfile(synthetic_bin / ids.name, ids)
    result = nmt("train", bin_dir, run, *TRAIN, "--max-updates", "1", "--force")
    one_line_error(result, f"valid.{manifest['src']}.ids.npy: unreadable token array")
    assert "interrupted" not in result.output


def test_a_checkpoint_whose_parameter_bytes_were_damaged_is_refused(run_dir: Path, tmp_path: Path):
    data = bytearray((run_dir / "checkpoints" / "last.pt").read_bytes())
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    raw = state["params"].numpy().tobytes()
    at = data.find(raw[:64])  # the stored parameter bytes (torch.save keeps tensors uncompressed)
    assert at > 0
    data[at + 100 : at + 4100] = b"\x7f" * 4000
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    one_line_error(nmt("translate", tmp_path / "damaged.pt", "--device", "cpu", stdin="a b\n"), "damaged.pt: damaged")


def test_a_checkpoint_whose_vocabulary_bytes_were_damaged_is_refused(run_dir: Path, tmp_path: Path):
    """Only the parameters had a checksum that was read: a byte changed in the pickle (the vocabulary, the
    model's settings) translated with another vocabulary without a word, or failed with a traceback."""
    data = bytearray((run_dir / "checkpoints" / "best.pt").read_bytes())
    with zipfile.ZipFile(run_dir / "checkpoints" / "best.pt") as archive:
        entry = next(info for info in archive.infolist() if info.filename.endswith("/data.pkl"))
    start = entry.header_offset  # the pickle is stored as it is: find a piece of the vocabulary in it
    at = data.find(b"<unk>", start, start + 30 + len(entry.filename) + entry.compress_size + 64)
    assert at > 0
    data[at + 3] = ord("j")  # "<unj>": still a sentencepiece model
    (tmp_path / "damaged.pt").write_bytes(bytes(data))
    for args in (("translate", tmp_path / "damaged.pt", "--device", "cpu"), ("average",)):
        if args[0] == "average":  # the same file as a kept checkpoint of a run
            run = tmp_path / "run"
            shutil.copytree(run_dir, run)
            kept = sorted((run / "checkpoints").glob("update-*.pt"))[-1]
            kept.unlink()
            kept.write_bytes(bytes(data))
            args = ("average", run, "--last", "2", "-o", tmp_path / "avg.pt")
        one_line_error(nmt(*args, stdin="a b\n"), "damaged (data.pkl, its vocabulary and settings, does not "
                                                     "match its checksum)")  # fmt: skip


def test_a_checkpoint_saved_without_checksums_translates(run_dir: Path, tmp_path: Path):
    """torch.save with torch's compute_crc32 off writes a CRC of 0 for every entry: no checksum, not damage."""
    from async_nmt.model.checkpoint import read_checkpoint

    serialization = pytest.importorskip("torch.utils.serialization")
    state = read_checkpoint(run_dir / "checkpoints" / "best.pt")
    original = serialization.config.save.compute_crc32
    serialization.config.save.compute_crc32 = False
    try:
        torch.save(state, tmp_path / "nocrc.pt")
    finally:
        serialization.config.save.compute_crc32 = original
    with zipfile.ZipFile(tmp_path / "nocrc.pt") as archive:
        assert next(i for i in archive.infolist() if i.filename.endswith("/data.pkl")).CRC == 0
    result = nmt("translate", tmp_path / "nocrc.pt", "--device", "cpu", "--beam", "1", stdin="a b\n")
    assert result.exit_code == 0, result.output


def test_a_resume_refuses_damaged_training_state(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    """A byte flipped in an Adam moment passed the parameters' checksum: the run resumed and diverged two
    updates later, "Try a lower --lr", with last.pt the damaged file."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    last = run / "checkpoints" / "last.pt"
    (run / "checkpoints" / "update-4.pt").unlink()  # (a hard link of last.pt)
    data = bytearray(last.read_bytes())
    raw = torch.load(last, weights_only=False)["server"]["optimizer"]["exp_avg"].numpy().tobytes()
    at = data.find(raw[:64])
    assert at > 0
    data[at + 3] ^= 0x7F  # an exponent byte: a moment of about 1e38
    last.write_bytes(bytes(data))
    one_line_error(nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume"), "last.pt: damaged")


def test_a_resume_refuses_another_validation_set(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    """A BIN preprocessed again with other valid text (same training text, so the same vocabulary) was taken:
    its BLEUs were compared with a best one measured on other sentences."""
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    shutil.copytree(synthetic_bin, bin_dir)
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["bin_dir"] = str(bin_dir)
    (run / "config.json").write_text(json.dumps(config))
    tgt = json.loads((bin_dir / "manifest.json").read_text())["tgt"]
    lines = (bin_dir / f"valid.{tgt}").read_text().splitlines(keepends=True)
    lines[0] = "another reference\n"
    (bin_dir / f"valid.{tgt}").write_text("".join(lines))
    one_line_error(nmt("train", bin_dir, run, *TRAIN, "--max-updates", "6", "--resume"),
                   "validated on other sentences")  # fmt: skip


def test_a_last_pt_that_is_not_a_file_is_not_offered_as_a_save_to_copy(synthetic_bin: Path, run_dir: Path,
                                                                         tmp_path: Path):  # fmt: skip
    """A last.pt that is a folder was named among the saves to copy to last.pt, whose `cp` then put the copy
    inside it."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "last.pt").mkdir()
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume")
    one_line_error(result, f"{run}: checkpoints/last.pt is not a file to resume from, but best.pt, update-2.pt, "
                   "update-4.pt: remove it, then copy the one to go on from to last.pt (cp)")  # fmt: skip
    last = run / "checkpoints" / "last.pt"
    one_line_error(nmt("translate", last, stdin="a b\n"), f"{last}: a folder, not a checkpoint")


def test_a_resume_that_fails_before_it_starts_leaves_the_log_as_it_was(synthetic_bin: Path, run_dir: Path,
                                                                        tmp_path: Path, monkeypatch):  # fmt: skip
    """A checkpoints folder that cannot be written is found after the log is cut back to the save: the end
    event of the session it resumed was lost with it, and a finished run looked unfinished for good."""
    from async_nmt.train import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = (run / "events.jsonl").read_bytes()
    assert json.loads(before.splitlines()[-1])["kind"] == "end"

    def unwritable(folder: Path) -> None:
        raise UserError(f"{folder}: cannot write a checkpoint there")

    monkeypatch.setattr(ckpt, "check_writable", unwritable)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume")
    assert result.exit_code == 2 and "cannot write a checkpoint there" in result.output
    assert (run / "events.jsonl").read_bytes() == before
    monkeypatch.undo()
    assert nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume").exit_code == 0  # (on from it)
    events = [json.loads(line) for line in (run / "events.jsonl").read_bytes().splitlines()]
    assert [e["kind"] for e in events].count("end") == 2 and events[-1]["updates"] == 6


def test_a_save_cut_short_at_best_pt_is_finished_by_a_resume_at_the_runs_limit(synthetic_bin: Path, run_dir: Path,
                                                                                tmp_path: Path):  # fmt: skip
    """A full disk as best.pt was written: the run ended with its end event where the save's checkpoint event
    was to be, and a resume at the run's limit said "nothing to do", leaving best.pt of the update before."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    lines = (run / "events.jsonl").read_bytes().splitlines(keepends=True)
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[-2:] == ["checkpoint", "end"] and json.loads(lines[-2])["best"]
    last = json.loads(lines[-2])["updates"]
    (run / "events.jsonl").write_bytes(b"".join(lines[:-2] + lines[-1:]))  # no checkpoint event: cut short
    shutil.copy(run / "checkpoints" / "update-2.pt", run / "checkpoints" / "best.pt")  # the best.pt before
    (run / "checkpoints" / f"update-{last}.pt").unlink()  # (kept after best.pt: not made)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", str(last), "--resume")
    assert result.exit_code == 0 and "nothing to do" not in result.output, result.output
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False, map_location="cpu")
    assert best["server"]["updates"] == last
    events = [json.loads(line) for line in (run / "events.jsonl").read_bytes().splitlines()]
    # the save finished first, its checkpoint event where it belongs (the end in its place is cut), then the session
    assert [e["kind"] for e in events if e["updates"] == last][-4:] == ["valid", "checkpoint", "start", "end"]
    assert (run / "checkpoints" / f"update-{last}.pt").is_file()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_accum_beyond_an_epoch_is_refused(synthetic_bin: Path, tmp_path: Path, workers: int):
    """--local-accum 10^8 trained and never pushed, and --max-time, read between updates, did not stop it. A
    worker's push may sum at most the batches it takes in an epoch."""
    from async_nmt.config import TrainConfig
    from async_nmt.train.trainer import Trainer

    mode = {"mode": "async", "workers": workers, "simulate": True} if workers > 1 else {}
    options = dict(bin_dir=str(synthetic_bin), preset="micro", devices=["cpu"], max_tokens=512, **mode)
    share = min(len(stream) for stream in Trainer(TrainConfig(**options), tmp_path / "run").streams)
    assert Trainer(TrainConfig(**options, local_accum=share), tmp_path / "run")  # (all of them: taken)
    flags = ["--mode", "async", "--workers", str(workers), "--simulate"] if workers > 1 else []
    result = nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, *flags, "--max-updates", "1",
                 "--local-accum", str(share + 1))  # fmt: skip
    one_line_error(result, f"--local-accum {share + 1} is more than the {share} batches", "--max-tokens 512")
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_update_rule(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--local-accum", "2")
    one_line_error(result, "saved with --local-accum 1, not 2")
    # another sort makes another batch list, which the saved data position does not point into
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--batch-sort", "longest")
    one_line_error(result, "saved with --batch-sort target, not longest")
    # an option of another mode is said as a new run says it ("saved with --sync-every 0, not 3" misled)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--sync-every", "3")
    one_line_error(result, "--sync-every applies to --mode diloco only")
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--outer-lr", "0.7")
    one_line_error(result, "--outer-lr applies to --mode diloco only")  # (the default, given: it did nothing)


@pytest.mark.parametrize("saved", [{"mode": "async-accum", "accum": 2}, {"mode": "diloco", "sync_every": 5}])
def test_resume_with_another_mode_names_the_mode(synthetic_bin: Path, run_dir: Path, tmp_path: Path, saved: dict):
    """The mode is refused as an option the run cannot change. The saved options that go with it were checked
    first, with the mode given anew: "--accum ... only applies to --mode async-accum; ... use --local-accum 2",
    advice that a resume then refused too."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"].update(saved)
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoints" / "last.pt").unlink()  # (a sync run's, which config.json, so edited, is checked against)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--mode", "sync")
    one_line_error(result, f"{run / 'config.json'}: saved with --mode {saved['mode']}, not sync")


def test_the_early_resume_check_leaves_workers_to_torchrun(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Under torchrun `--workers 1` is set from the ranks after the resume reads config.json, which holds the
    ranks' count: the same command line resumed must not be refused for it there (the trainer checks the
    options against last.pt once they are set)."""
    from async_nmt.config import TrainConfig
    from async_nmt.train.options import resumed_config

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"].update(mode="async", workers=3)  # (a torchrun run of 4 ranks)
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoints" / "last.pt").unlink()  # (a sync run's, which config.json, so edited, is checked against)
    cfg, source = resumed_config(TrainConfig(mode="async", workers=1), run, {"workers"})
    assert (cfg.mode, cfg.workers, source) == ("async", 1, run / "config.json")
    with pytest.raises(UserError, match="saved with --mode async, not sync"):
        resumed_config(TrainConfig(mode="sync", workers=1), run, {"mode", "workers"})


def test_resume_with_other_workers_names_the_workers(synthetic_bin: Path, run_dir: Path, tmp_path: Path):
    """`--resume --workers 2` of a run of 3 workers with 3 --worker-speeds was refused for the speeds ("3
    speeds for 2 workers"); given 2 speeds then, for the workers: the option a resume cannot change first."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = json.loads((run / "config.json").read_text())
    config["train"].update(mode="async", workers=3, worker_speeds=[1.0, 1.0, 0.5])
    (run / "config.json").write_text(json.dumps(config))
    (run / "checkpoints" / "last.pt").unlink()  # (a sync run's, which config.json, so edited, is checked against)
    result = nmt("train", synthetic_bin, run, *TRAIN, "--max-updates", "6", "--resume", "--workers", "2")
    one_line_error(result, f"{run / 'config.json'}: saved with --workers 3, not 2")


def test_shards_outside_the_async_modes_are_refused(synthetic_bin: Path, tmp_path: Path):
    one_line_error(nmt("train", synthetic_bin, tmp_path / "run", *TRAIN, "--shards", "2"), "--shards")


def wait_until_it_reads_stdin(pid: int, longest: float = 3.0) -> None:
    """Until the process `pid` waits in a read of its stdin (x86-64 Linux: /proc/PID/syscall names read(0, ...)),
    its start-up and handlers behind it; at most `longest` seconds, the wait where that cannot be seen."""
    import platform
    import time

    deadline = time.monotonic() + longest
    while time.monotonic() < deadline:
        try:
            call = Path(f"/proc/{pid}/syscall").read_text().split()[:2]
        except OSError:
            call = []
        if platform.machine() == "x86_64" and call == ["0", "0x0"]:  # (syscall 0: read; its first argument: fd 0)
            return
        time.sleep(0.05)


def test_ctrl_c_in_a_command_is_one_line(tmp_path: Path):
    """Ctrl-C while `nmt score -` waits for stdin: `interrupted` alone on stderr, exit code 130 (Click's own
    handling printed an empty line before it)."""
    import os
    import signal
    import subprocess

    ref = tmp_path / "ref.txt"
    ref.write_text("a line\n", encoding="utf-8")
    nmt = command("nmt")
    proc = subprocess.Popen([str(nmt), "score", "-", str(ref)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until_it_reads_stdin(proc.pid)  # it reads stdin, which stays open
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and stderr == "interrupted\n", repr(stderr)


def test_a_command_started_with_ctrl_c_ignored_leaves_it_ignored(tmp_path: Path):
    """A job that a script starts with `&` ignores Ctrl-C, which is the terminal's foreground job's: `nmt` took
    it over, and a Ctrl-C meant for another program stopped it ("interrupted", exit code 130)."""
    import os
    import signal
    import subprocess
    import time

    ref = tmp_path / "ref.txt"
    ref.write_text("a line\n", encoding="utf-8")
    nmt = command("nmt")
    proc = subprocess.Popen([str(nmt), "score", "-", str(ref)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        wait_until_it_reads_stdin(proc.pid)  # it reads stdin, which stays open
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None
        stdout, stderr = proc.communicate("a line\n", timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "BLEU" in stdout and "interrupted" not in stderr, stderr


def test_resume_of_a_run_stopped_before_its_first_save_says_to_start_it_over(synthetic_bin: Path, tmp_path: Path):
    """Ctrl-C while the workers started leaves config.json and no checkpoint: --resume has nothing to go on
    from, and says what will (a folder that is no run gets no such hint)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}", encoding="utf-8")
    one_line_error(
        nmt("train", synthetic_bin, run, *TRAIN, "--resume"), "nothing to resume", "start it over with --force"
    )
    line = one_line_error(nmt("train", synthetic_bin, tmp_path / "none", *TRAIN, "--resume"), "nothing to resume")
    assert "--force" not in line and not (tmp_path / "none").exists()  # nor is a folder left made for its lock


def test_an_eof_error_is_the_error_it_is_not_ctrl_c(tmp_path: Path, monkeypatch):
    """Click takes an EOFError for Ctrl-C: a command's EOFError (a bug's; numpy's of an empty .npy file was
    one) was "interrupted", exit code 130. It stays an EOFError, whose traceback says where it came from."""
    from async_nmt import score

    def broken(*args, **kwargs):
        raise EOFError("No data left in file")

    monkeypatch.setattr(score, "score_command", broken)
    ref = tmp_path / "ref.txt"
    ref.write_text("a line\n", encoding="utf-8")
    result = nmt("score", ref, ref)
    assert isinstance(result.exception, EOFError) and result.exit_code == 1
    assert "interrupted" not in result.output


def test_a_name_that_is_not_utf8_is_shown_with_its_bytes_escaped(tmp_path: Path):
    """A name that is not UTF-8 (run\\xff, as a Latin-1 file system makes) is said as the report's tables show
    it, run\\xff: Python's stderr wrote the surrogate that holds the byte, run\\udcff."""
    import subprocess

    run = bytes(tmp_path) + b"/run\xff"
    proc = subprocess.run([bytes(command("nmt")), b"translate", run], stdin=subprocess.DEVNULL, capture_output=True)
    assert proc.returncode == 2 and proc.stderr == b"error: " + run.replace(b"\xff", b"\\xff") + (
        b": no such run folder or checkpoint\n"
    ), proc.stderr
