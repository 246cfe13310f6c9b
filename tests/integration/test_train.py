"""Training end to end on the synthetic corpus: learning, resume, the run folder, and bad options."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import bin_with_target, command, record_amp_dtypes, run_forked

from async_nmt.cli import main
from async_nmt.config import LOCK_NAME, RunConfig, TrainConfig, is_run_folder, load_json, model_config
from async_nmt.model.checkpoint import kept_checkpoints, kept_update, read_checkpoint
from async_nmt.model.transformer import Transformer
from async_nmt.provenance import device_name, versions
from async_nmt.train.checkpoint import save_checkpoint
from async_nmt.train.events import read_events
from async_nmt.train.launch import train
from async_nmt.train.summary import seconds

NMT_TRAIN = command("nmt-train")


def micro_config(bin_dir: Path, **overrides) -> TrainConfig:
    options = dict(bin_dir=str(bin_dir), preset="micro", max_tokens=1024, lr=2e-3, warmup=50, dropout=0.0,
                   devices=["cpu"], valid_every=0, valid_max_sentences=40, seed=7)  # fmt: skip
    return TrainConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def learned_run(synthetic_bin: Path, tmp_path_factory) -> Path:
    """A micro model trained on the toy pair until it translates it well (shared by several tests)."""
    run = tmp_path_factory.mktemp("runs") / "learned"
    train(micro_config(synthetic_bin, max_updates=300, valid_every=150), run, progress=False, log_every=10)
    return run


def test_loss_goes_down_and_the_model_learns_the_toy_pair(learned_run: Path):
    events = read_events(learned_run / "events.jsonl")
    losses = [e["loss"] for e in events if e["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0]
    valid = [e for e in events if e["kind"] == "valid"]
    assert valid[-1]["bleu"] > 80
    assert [e["kind"] for e in events][0] == "start" and events[-1]["kind"] == "end"


def test_run_folder_holds_what_translate_and_report_need(learned_run: Path):
    assert (learned_run / "checkpoints" / "last.pt").is_file()
    assert (learned_run / "checkpoints" / "best.pt").is_file()
    config = json.loads((learned_run / "config.json").read_text())
    assert config["train"]["preset"] == "micro" and config["model"]["d_model"] == 64
    for event in read_events(learned_run / "events.jsonl"):
        for key in ("kind", "train_s", "wall_s", "updates", "pushes", "tokens", "epoch"):
            assert key in event
        if event["kind"] == "train":
            assert {"loss", "lr", "tok_per_s", "staleness_mean", "staleness_max"} <= event.keys()
    train_s = [e["train_s"] for e in read_events(learned_run / "events.jsonl")]
    assert train_s == sorted(train_s)
    assert not (learned_run / LOCK_NAME).exists()  # the lock file goes with the nmt-train that held it


def test_config_json_reads_back_as_the_run_config(synthetic_bin: Path, learned_run: Path):
    saved = load_json(RunConfig, learned_run / "config.json")
    assert load_json(RunConfig, str(learned_run / "config.json")) == saved  # a path as a string too (README)
    assert saved.train == micro_config(synthetic_bin, max_updates=300, valid_every=150, log_every=10)
    assert saved.model == model_config("micro", saved.corpus.vocab_size, dropout=0.0)
    assert saved.corpus.src == "src" and saved.corpus.tgt == "tgt"


def test_an_ended_run_resumes_under_new_stopping_options_and_its_config_says_so(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path
):
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    cfg = micro_config(synthetic_bin, max_updates=310, valid_every=150)
    end = train(cfg, run, resume=True, progress=False)
    assert end is not None and end["updates"] == 310
    events = read_events(run / "events.jsonl")
    # each session's end: the first, after the save the run resumed from, is kept (it was cut until 2026-12-07)
    assert [(e["updates"], e["stopped_by"]) for e in events if e["kind"] == "end"] == [
        (300, "--max-updates 300"), (310, "--max-updates 310")]  # fmt: skip
    assert load_json(RunConfig, run / "config.json").train == cfg
    starts = [e for e in events if e["kind"] == "start"]  # each says what was in force from there
    assert [e["max_updates"] for e in starts] == [300, 310] and [e["valid_every"] for e in starts] == [150, 150]
    # and the code that trained from there: the commit (where the package runs from a git checkout), torch
    assert all(e["versions"] == versions() for e in starts) and starts[-1]["versions"]["torch"] == torch.__version__
    assert starts[-1]["device_name"] == device_name("cpu")  # (what its times were measured on)


def test_resume_takes_the_options_left_out_from_the_run_and_a_run_at_its_limit_is_left_alone(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path
):
    """`nmt-train BIN RUN --resume --max-updates N` resumes a run trained with --preset micro and other
    options than the defaults (it was refused: "model configuration differs"); a --preset given against
    the run's is refused in one line; resuming a run that stands at its limit changes nothing."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "302")
    assert code == 0, output
    assert load_json(RunConfig, run / "config.json").train == micro_config(synthetic_bin, max_updates=302,
                                                                           valid_every=150, log_every=10)  # fmt: skip
    assert read_events(run / "events.jsonl")[-1]["updates"] == 302
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "304",
                           "--preset", "tiny")  # fmt: skip
    assert code == 2 and len(output.strip().splitlines()) == 1 and "resume without them" in output, output
    assert "given, --preset tiny (" in output and "--dropout" not in output  # (--dropout was named, not given)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet")
    assert code == 0 and "nothing to do" in output and "--max-updates 302" in output, output
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    # so is one at its --max-time (whose training clock was not yet restored when this was checked)
    timed = tmp_path / "timed"
    code, output = run_cli("train", str(synthetic_bin), str(timed), "--quiet", "--preset", "micro", "--devices",
                           "cpu", "--max-tokens", "512", "--valid-every", "0", "--valid-max-sentences", "5",
                           "--max-time", "0.5", "--log-every", "3")  # fmt: skip
    assert code == 0, output
    assert load_json(RunConfig, timed / "config.json").train.log_every == 3  # a resume logs as the run did
    before = {p: p.read_bytes() for p in sorted(timed.rglob("*")) if p.is_file()}
    code, output = run_cli("train", str(synthetic_bin), str(timed), "--resume", "--quiet")
    assert code == 0 and "nothing to do" in output and "--max-time 0.5" in output, output
    assert {p: p.read_bytes() for p in sorted(timed.rglob("*")) if p.is_file()} == before


def test_a_resumed_run_keeps_the_end_event_of_the_session_before(synthetic_bin: Path, tmp_path: Path):
    """The end event after the save a run resumes from (why and when that session ended: a limit, Ctrl-C) was
    cut with the events after the save; what follows a save of a later update is still cut."""
    run, kept = tmp_path / "run", dict(save_every=1, keep_last=10)
    train(micro_config(synthetic_bin, max_updates=2, **kept), run, progress=False, log_every=1)
    train(micro_config(synthetic_bin, max_updates=4, **kept), run, resume=True, progress=False, log_every=1)
    events = read_events(run / "events.jsonl")
    ends = [(e["updates"], e["stopped_by"]) for e in events if e["kind"] == "end"]
    assert ends == [(2, "--max-updates 2"), (4, "--max-updates 4")]
    kinds = [e["kind"] for e in events]
    assert kinds[kinds.index("end") - 1 : kinds.index("end") + 2] == ["checkpoint", "end", "start"]
    first_end = next(e for e in events if e["kind"] == "end")
    resumed = [e for e in events if e["kind"] == "start"][-1]
    assert resumed["wall_s"] >= first_end["wall_s"]  # (the wall clock goes on from it)
    saves = run / "checkpoints"
    (saves / "last.pt").unlink()  # rewound to update 2: the end at update 4 is of updates abandoned
    shutil.copyfile(saves / "update-2.pt", saves / "last.pt")
    train(micro_config(synthetic_bin, max_updates=3, **kept), run, resume=True, progress=False, log_every=1)
    ends = [(e["updates"], e["stopped_by"]) for e in read_events(run / "events.jsonl") if e["kind"] == "end"]
    assert ends == [(2, "--max-updates 2"), (3, "--max-updates 3")]


@pytest.mark.parametrize("damage", ["missing", "torn"])
def test_resume_without_a_readable_config_json_takes_the_options_from_last_pt(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path, damage: str
):
    """It took the built-in defaults: "model configuration differs ... --preset tiny", and given --preset
    micro the run went on at another --lr, --warmup and --valid-every without a word."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    if damage == "missing":
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_bytes((run / "config.json").read_bytes()[:100])
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 0, output
    assert "warning:" in output and "taken from" in output and "last.pt" in output
    assert load_json(RunConfig, run / "config.json").train == micro_config(synthetic_bin, max_updates=301,
                                                                           valid_every=150, log_every=10)  # fmt: skip


@pytest.mark.parametrize(("field", "edited", "saved"), [("preset", "tiny", "micro"), ("max_tokens", 2048, 1024)])
def test_a_config_json_edited_by_hand_is_named_not_the_command_line(synthetic_bin: Path, learned_run: Path,
                                                                    tmp_path: Path, field, edited, saved):  # fmt: skip
    """config.json saying --preset tiny or --max-tokens 2048 where last.pt was saved with micro and 1024: the
    refusal said "the options given, --preset tiny", which no one had typed."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"][field] = edited
    (run / "config.json").write_text(json.dumps(config))
    option = "--" + field.replace("_", "-")
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 2 and output == (f"error: {run / 'config.json'}: {option} {edited}, but "
                                    f"{run / 'checkpoints' / 'last.pt'} was saved with {saved} (config.json "
                                    f"edited?); resume with {option} {saved}, or start a new run\n")  # fmt: skip
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301",
                           option, str(saved))  # fmt: skip
    assert code == 0, output


@pytest.mark.parametrize(("field", "edited", "message"), [
    ("precision", "fp8", "--precision 'fp8': not one of auto, bf16, fp32"),
    ("adam_eps", -1, "adam_eps must be a finite number of 0 or more (got -1)"),
    ("adam_betas", [0.9, 1.5], "adam_betas must be two numbers in [0, 1) (got [0.9, 1.5])"),
])  # fmt: skip
def test_a_config_json_edited_out_of_range_is_refused(synthetic_bin: Path, learned_run: Path, tmp_path: Path,
                                                      field, edited, message):  # fmt: skip
    """--precision fp8 trained in fp32 (the start event said so, config.json kept fp8), and an adam_eps of -1
    trained with it, without a word."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"][field] = edited
    (run / "config.json").write_text(json.dumps(config))
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 2 and output.startswith(f"error: {message} (the options not given come from "), output
    assert len(output.splitlines()) == 1


@pytest.mark.parametrize("inside", ["run", "run/checkpoints", "corpus"])
def test_a_run_inside_another_run_or_a_corpus_is_refused(synthetic_bin: Path, learned_run: Path, tmp_path: Path,
                                                         inside: str):  # fmt: skip
    """It was made there, and the outer run's --force then refused to delete it ("holds another run")."""
    outer = tmp_path / "copy"
    shutil.copytree(learned_run if inside != "corpus" else synthetic_bin, outer)
    run = outer / inside.partition("/")[2] / "sub" if "/" in inside else outer / "sub"
    code, output = run_cli("train", str(synthetic_bin), str(run), "--preset", "micro", "--devices", "cpu",
                           "--max-updates", "1", "--quiet")  # fmt: skip
    what = "the run" if inside != "corpus" else "the preprocessed corpus"
    assert code == 2 and output == (f"error: {run}: inside {what} {outer.resolve()}, whose --force this run would "
                                    "then block; train into a folder of its own\n"), output  # fmt: skip
    assert not run.exists()
    if inside == "run":  # one made there before this check (as if: moved there) resumes
        train(micro_config(synthetic_bin, max_updates=1), tmp_path / "before", progress=False)
        shutil.move(tmp_path / "before", run)
        code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--max-updates", "2", "--quiet")
        assert code == 0, output


def test_a_folder_above_the_run_with_files_of_those_names_of_its_own_is_no_run_or_corpus(
    synthetic_bin: Path, tmp_path: Path
):
    """A project's manifest.json (a web extension's), or a config.json of its own beside an events.jsonl, made
    every run below it refused."""
    (tmp_path / "manifest.json").write_text('{"name": "my-extension"}')
    (tmp_path / "config.json").write_text('{"debug": true}')
    (tmp_path / "events.jsonl").write_text("")
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "runs" / "x"), "--preset", "micro",
                           "--devices", "cpu", "--max-updates", "1", "--valid-every", "0", "--quiet")  # fmt: skip
    assert code == 0, output


def test_a_config_json_of_the_same_model_written_otherwise_resumes(synthetic_bin: Path, tmp_path: Path):
    """config.json's --dropout 0.1, the micro preset's own, where last.pt was saved without --dropout (as a
    resume given --dropout 0.1 that died before its first save leaves it): the same model, which resumes
    (refused as "saved with None", and `--dropout None` cannot be typed). Another dropout is refused with
    last.pt's as it was built, which can."""
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, dropout=None, max_updates=2), run, progress=False)
    config = json.loads((run / "config.json").read_text())
    config["train"]["dropout"] = 0.1
    (run / "config.json").write_text(json.dumps(config))
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "3")
    assert code == 0, output
    config["train"]["dropout"] = 0.3
    (run / "config.json").write_text(json.dumps(config))
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "4")
    assert code == 2 and "--dropout 0.3, but " in output and "resume with --dropout 0.1, or" in output, output


def test_a_save_from_before_the_two_dropouts_resumes_and_another_dropout_is_refused_by_name(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path
):
    """A last.pt whose model config lacks --embed-dropout's and --attention-dropout's fields (saved before
    2026-12-06) resumes as the model it was; a resume that gives another --attention-dropout is refused in
    one line that names that option, not --preset."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["model_config"] = {k: v for k, v in state["model_config"].items() if not k.endswith("_dropout")}
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "params_crc32")}, last)
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 0 and "differs" not in output, output
    assert read_events(run / "events.jsonl")[-1]["updates"] == 301
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "302",
                           "--attention-dropout", "0.1")  # fmt: skip
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "given, --attention-dropout 0.1 (attention_dropout 0.0 not 0.1)" in output and "--preset" not in output
    # the embeddings' dropout as it is in effect (the dropout's, 0.0 here, where the run left it to follow it):
    # the same value resumes (it was "embed_dropout None not 0.0"), and another is refused by it
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "302",
                           "--embed-dropout", "0.0")  # fmt: skip
    assert code == 0 and read_events(run / "events.jsonl")[-1]["updates"] == 302, output
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "303",
                           "--embed-dropout", "0.2")  # fmt: skip
    assert code == 2 and "given, --embed-dropout 0.2 (embed_dropout 0.0 not 0.2)" in output, output


def test_resume_without_last_pt_or_events_jsonl(synthetic_bin: Path, learned_run: Path, tmp_path: Path):
    """Without last.pt but with other saves, the error named --force, which deletes them; without
    events.jsonl (an empty one was fine) the resume failed with "No such file or directory"."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    (run / "checkpoints" / "last.pt").rename(run / "checkpoints" / "update-300.pt")
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 2 and len(output.strip().splitlines()) == 1 and "--force" not in output, output
    assert "best.pt, update-300.pt" in output and "cp" in output
    (run / "checkpoints" / "update-300.pt").rename(run / "checkpoints" / "last.pt")
    (run / "events.jsonl").unlink()
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301")
    assert code == 0 and "events.jsonl is missing" in output, output
    log = read_events(run / "events.jsonl")
    assert log[-1]["kind"] == "end" and log[-1]["updates"] == 301
    assert log[0]["kind"] == "start"  # (it began with the checkpoint event of the save it resumed)
    code, output = run_cli("report", str(run))
    assert code == 0, output
    (run / "events.jsonl").write_text("")  # (an empty one resumed without a word)
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "302")
    assert code == 0 and "events.jsonl is empty: the log starts again at update 301" in output, output


def _with_best(run: Path, **best: float) -> None:
    """last.pt's record of the run's best save, changed (a best that no validation beats: BLEU 100, loss 0)."""
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=False)
    state["best"] = {**state["best"], **best}
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "params_crc32")}, last)


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_a_lost_best_pt_is_said_at_resume_and_translate_does_not_take_last_pt(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path, damage: str
):
    """A run whose best.pt was gone resumed without a word, its summary naming best.pt, and `nmt translate
    RUN` took last.pt, though the README says it does so only in a run that never validated."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    _with_best(run, updates=150, bleu=100.0, valid_loss=0.0)  # a best save before last.pt's update 300
    best = run / "checkpoints" / "best.pt"
    best.unlink() if damage == "missing" else best.write_bytes(b"")
    code, output = run_cli("translate", str(run), "--beam", "1", "--device", "cpu", input="ba\n")
    if damage == "missing":
        assert code == 2 and len(output.strip().splitlines()) == 1, output
        assert f"no best.pt in {run / 'checkpoints'}, though the run saved its best there (update 150" in output
        assert f"--checkpoint last, or {run / 'checkpoints' / 'last.pt'} itself, translates" in output
        assert "its kept save" not in output
        kept = run / "checkpoints" / "update-150.pt"  # (named only: the message does not read it)
        shutil.copyfile(run / "checkpoints" / "last.pt", kept)
        code, output = run_cli("translate", str(run), "--beam", "1", "--device", "cpu", input="ba\n")
        assert code == 2 and f"(update 150, valid BLEU 100.00); its kept save {kept} holds that model;" in output
        kept.unlink()
    else:
        assert code == 2 and "not a checkpoint, or one cut short" in output, output
    code, output = run_cli(
        "translate", str(run), "--checkpoint", "last", "--beam", "1", "--device", "cpu", input="ba\n"
    )
    assert code == 0, output
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--max-updates", "301",
                           "--valid-every", "0")  # fmt: skip
    what = "missing" if damage == "missing" else "not a whole checkpoint"
    assert code == 0 and f"warning: {best} is {what}: the run's best save (update 150" in output, output
    assert "(update 150: lost)" in output and "--checkpoint last < SOURCE" in output  # the summary says so too


def test_translate_refuses_a_best_pt_that_is_not_the_runs_best_save(learned_run: Path, tmp_path: Path):
    """A save cut short as it wrote best.pt (a kill, a full disk) left the best.pt before it, which `nmt
    translate RUN` took without a word, though last.pt records another best."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    best = run / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=False)
    state["server"]["updates"] = 200  # the best.pt of an earlier validation
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "params_crc32")}, best)
    _with_best(run, updates=300, bleu=100.0, valid_loss=0.0)  # last.pt (update 300) is the best
    for record, where in ((300, "--checkpoint last translates with it"), (150, "no kept save holds it"),
                          (150, f"{run / 'checkpoints' / 'update-150.pt'} holds it")):  # fmt: skip
        _with_best(run, updates=record)
        if "update-150" in where:
            shutil.copyfile(run / "checkpoints" / "last.pt", run / "checkpoints" / "update-150.pt")
        code, output = run_cli("translate", str(run), "--beam", "1", "--device", "cpu", input="ba\n")
        assert code == 2 and len(output.strip().splitlines()) == 1, output
        assert (
            f"{run}: {best} holds update 200, not the run's best save (update {record}, valid BLEU 100.00: a "
            f"save cut short, or a rewound run); {where}, `nmt-train BIN {run} --resume`"
        ) in output
    (run / LOCK_NAME).write_text(f"{os.getpid()}\n")  # the run training now: a new best being saved, perhaps
    code, output = run_cli("translate", str(run), "--beam", "1", "--device", "cpu", input="ba\n")
    assert code == 0 and f"warning: {run}: {best} holds update 200, not the run's best save" in output, output
    assert "the run, training, may be saving now; translating with it" in output
    (run / LOCK_NAME).unlink()
    for which in ("last", "best"):  # (asked for by name: taken)
        code, output = run_cli("translate", str(run), "--checkpoint", which, "--beam", "1", "--device", "cpu",
                               input="ba\n")  # fmt: skip
        assert code == 0, output


def test_a_best_pt_lost_where_last_pt_is_that_save_is_made_again(synthetic_bin: Path, learned_run: Path,
                                                                 tmp_path: Path):  # fmt: skip
    """Killed between writing last.pt and copying it to best.pt (or best.pt deleted), a run whose best save
    is last.pt: translate takes last.pt, and --resume makes best.pt again before training writes over it."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    _with_best(run, updates=300, bleu=100.0, valid_loss=0.0)
    best = run / "checkpoints" / "best.pt"
    best.unlink()
    code, output = run_cli("translate", str(run), "--beam", "1", "--device", "cpu", input="ba\n")
    assert code == 0, output
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--max-updates", "301",
                           "--valid-every", "0")  # fmt: skip
    assert code == 0 and f"warning: {best} was missing; made again from last.pt" in output, output
    assert read_checkpoint(best)["best"]["updates"] == 300 and "(update 300: best.pt)" in output


def test_no_compile_turns_a_runs_compile_off_on_resume(synthetic_bin: Path, learned_run: Path, tmp_path: Path):
    """A resume takes the options it is not given from config.json: --compile, a plain flag, could not be
    turned off again."""
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    config = json.loads((run / "config.json").read_text())
    config["train"]["compile"] = True
    (run / "config.json").write_text(json.dumps(config))
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "301",
                           "--no-compile")  # fmt: skip
    assert code == 0, output
    assert load_json(RunConfig, run / "config.json").train.compile is False
    assert [e["compile"] for e in read_events(run / "events.jsonl") if e["kind"] == "start"][-1] is False


@pytest.mark.parametrize(
    "extra, option",
    [(["--max-tokens", "512"], "--max-tokens"), (["--seed", "8"], "--seed"), (["--mode", "async"], "--mode"),
     (["--workers", "2", "--simulate"], "--workers"), (["--simulate"], "--simulate"),
     (["--valid-max-sentences", "10"], "--valid-max-sentences"), (["--valid-beam", "4"], "--valid-beam")],
)  # fmt: skip
def test_resume_with_options_that_move_the_data_positions_is_refused(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path, extra, option
):
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    before = {p: p.read_bytes() for p in (run / "events.jsonl", run / "checkpoints" / "last.pt")}
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--preset", "micro",
                           "--max-tokens", "1024", "--lr", "2e-3", "--warmup", "50", "--dropout", "0", "--seed", "7",
                           "--devices", "cpu", *extra)  # fmt: skip
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and option in output and "Traceback" not in output, output
    assert all(p.read_bytes() == content for p, content in before.items())  # nothing changed


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_validation_searches_at_the_training_precision(synthetic_bin: Path, tmp_path: Path, monkeypatch, precision,
                                                       dtype):  # fmt: skip
    from async_nmt.train import validate

    seen = record_amp_dtypes(monkeypatch, validate, "translate_lines")
    train(micro_config(synthetic_bin, precision=precision, max_updates=1, valid_every=1, valid_max_sentences=5,
                      max_tokens=256), tmp_path / "run", progress=False)  # fmt: skip
    assert seen == [dtype]


def test_the_trainers_streams_cut_batches_as_batch_sort_says(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    from async_nmt.data import batches
    from async_nmt.train.trainer import Trainer

    sorts = []
    cut = batches.make_batches
    monkeypatch.setattr(
        batches, "make_batches", lambda *args, sort, **kwargs: sorts.append(sort) or cut(*args, sort=sort, **kwargs)
    )
    for sort in ("target", "longest"):
        sorts.clear()
        trainer = Trainer(micro_config(synthetic_bin, batch_sort=sort, workers=2, simulate=True), tmp_path / sort)
        assert sorts == [sort]  # one list, which each worker's stream takes its share of
        assert trainer.streams[0].batches is trainer.streams[1].batches


def test_compile_is_applied_where_the_gradients_are_computed(synthetic_bin: Path, tmp_path: Path):
    from async_nmt.train.step import build_model
    from async_nmt.train.trainer import Trainer

    model_cfg = model_config("tiny", 64, d_model=32, ff_dim=64, heads=2, enc_layers=1, dec_layers=1)
    compiled, _ = build_model(model_cfg, torch.device("cpu"), compiled=True)  # what an async worker process builds
    plain, _ = build_model(model_cfg, torch.device("cpu"))
    assert hasattr(compiled.hidden, "_torchdynamo_orig_callable")  # torch.compile's wrapper
    assert not hasattr(plain.hidden, "_torchdynamo_orig_callable")
    # one worker, and each sync rank, computes with the trainer's own model
    trainer = Trainer(micro_config(synthetic_bin, compile=True), tmp_path / "run")
    assert hasattr(trainer.model.hidden, "_torchdynamo_orig_callable")
    # once: it was compiled twice (a compiled function wrapped again)
    assert not hasattr(trainer.model.hidden._torchdynamo_orig_callable, "_torchdynamo_orig_callable")
    # async worker processes compile their own; the trainer's model only validates
    trainer = Trainer(micro_config(synthetic_bin, compile=True, mode="async", workers=2), tmp_path / "async")
    assert not hasattr(trainer.model.hidden, "_torchdynamo_orig_callable")
    trainer.workers.close()


def test_the_compiled_stack_has_no_graph_break_as_batch_shapes_change(monkeypatch):
    """--compile is only worth it as whole graphs: a graph break falls back to eager around it, and one in
    the decoder's loop over layers ran the whole decoder eagerly (a symbolic is_causal, once the shapes
    changed). Training steps in bf16 with dropout on, over batches of three shapes, break nothing. Graph
    breaks are dynamo's, before any backend: the eager backend finds them in seconds, where inductor's code
    generation took 80 s of the test."""
    from torch._dynamo.utils import counters

    from async_nmt.train.step import compile_model

    compile_as_is = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **options: compile_as_is(fn, **{**options, "backend": "eager"}))
    torch._dynamo.reset()
    counters.clear()
    model = Transformer(model_config("tiny", 64, d_model=32, ff_dim=64, heads=2, enc_layers=1, dec_layers=1))
    compile_model(model.train())
    generator = torch.Generator().manual_seed(0)
    for rows, src_len, tgt_len in ((8, 16, 24), (16, 8, 16), (24, 24, 8)):
        src = torch.randint(4, 64, (rows, src_len), generator=generator)
        prev = torch.randint(4, 64, (rows, tgt_len), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(src, prev)
        assert logits.shape == (rows, tgt_len, 64)
        logits.float().sum().backward()
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()


def test_resume_continues_with_the_same_losses(synthetic_bin: Path, tmp_path: Path):
    cfg = micro_config(synthetic_bin, max_updates=12, dropout=0.1)
    train(cfg, tmp_path / "whole", progress=False, log_every=1)
    train(
        micro_config(synthetic_bin, max_updates=6, dropout=0.1),
        tmp_path / "split",
        progress=False,
        log_every=1,
    )
    train(cfg, tmp_path / "split", resume=True, progress=False, log_every=1)

    def losses(run):
        return {e["updates"]: e["loss"] for e in read_events(run / "events.jsonl") if e["kind"] == "train"}

    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 13))
    for update in range(7, 13):
        assert split[update] == pytest.approx(whole[update], rel=1e-5, abs=1e-6)
    resumed_start = [e for e in read_events(tmp_path / "split" / "events.jsonl") if e["kind"] == "start"][-1]
    assert resumed_start["resumed"] is True and resumed_start["updates"] == 6
    # the clocks go on from where the first part left off: the checkpoint's event came after its write
    for clock in ("wall_s", "train_s"):
        times = [e[clock] for e in read_events(tmp_path / "split" / "events.jsonl")]
        assert times == sorted(times), clock
    # not only the logged losses: the parameters and Adam's state end the same, to the bit
    ends = [read_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("whole", "split")]
    assert torch.equal(ends[0]["params"], ends[1]["params"])
    torch.testing.assert_close(ends[0]["server"], ends[1]["server"], rtol=0, atol=0, equal_nan=True)


def test_a_resume_from_a_save_at_update_0_says_it_resumed(synthetic_bin: Path, tmp_path: Path):
    """Ctrl-C while the worker processes start saves at update 0: the resume's start event said `resumed`
    false, as the run's first start event does."""
    from async_nmt.train.trainer import Trainer

    run, cfg = tmp_path / "run", micro_config(synthetic_bin, max_updates=2)
    trainer = Trainer(cfg, run)
    assert trainer.open_run(resume=False)
    trainer.save()
    trainer.events.close()
    train(cfg, run, resume=True, progress=False)
    starts = [e for e in read_events(run / "events.jsonl") if e["kind"] == "start"]
    assert starts[-1]["updates"] == 0 and starts[-1]["resumed"] is True


def test_resume_finishes_a_save_that_a_kill_cut_off_before_its_event(synthetic_bin: Path, tmp_path: Path):
    run = tmp_path / "run"
    cfg = micro_config(synthetic_bin, max_updates=4, valid_every=4, keep_last=2)
    train(cfg, run, progress=False, log_every=1)
    log = (run / "events.jsonl").read_text().splitlines(keepends=True)
    kinds = [json.loads(line)["kind"] for line in log]
    assert kinds[-3:] == ["valid", "checkpoint", "end"]
    # as if killed just after last.pt was replaced: no best.pt, no kept copy, no checkpoint event (or a torn one)
    (run / "events.jsonl").write_text("".join(log[:-2]) + '{"kind": "check')
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "update-4.pt").unlink()
    train(cfg, run, resume=True, progress=False, log_every=1)
    events = read_events(run / "events.jsonl")
    resumed_at = [i for i, e in enumerate(events) if e["kind"] == "start"][1]
    before = events[resumed_at - 1]
    assert before["kind"] == "checkpoint" and before["updates"] == 4 and before["best"] is True
    assert read_checkpoint(run / "checkpoints" / "best.pt")["server"]["updates"] == 4
    assert (run / "checkpoints" / "update-4.pt").is_file()


@pytest.mark.parametrize("accum", [3, 4])
def test_async_accum_with_one_worker_takes_one_update_per_n_pushes(synthetic_bin: Path, tmp_path: Path, accum: int):
    """Also where an epoch limit stops the run: the update under way is finished first, as with worker
    processes (one worker pushed once per step, and a run ended with a partial sum that its final model
    and best.pt lacked, though its tokens and epochs counted it)."""
    train(micro_config(synthetic_bin, mode="async-accum", accum=accum, max_updates=4), tmp_path / "r",
          progress=False, log_every=1)  # fmt: skip
    last = [e for e in read_events(tmp_path / "r" / "events.jsonl") if e["kind"] == "train"][-1]
    assert last["updates"] == 4 and last["pushes"] == 4 * accum
    train(micro_config(synthetic_bin, mode="async-accum", accum=accum, max_epochs=1), tmp_path / "e",
          progress=False, log_every=1)  # fmt: skip
    end = read_events(tmp_path / "e" / "events.jsonl")[-1]
    server = read_checkpoint(tmp_path / "e" / "checkpoints" / "last.pt")["server"]
    assert end["pushes"] == accum * end["updates"] == server["pushes"] and server["grad_sum"] is None


def run_cli(*args: str, input: str | None = None):
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--accum", "4"], "--local-accum 4"),
        (["--devices", "cuda:7"], "cuda:7"),
        (["--devices", "tpu"], "tpu"),
        (["--resume", "--force"], "contradict"),
        (["--lr", "-1"], "--lr"),
        (["--valid-max-sentences", "-1"], "--valid-max-sentences"),
        (["--valid-beam", "0"], "--valid-beam must be 1 to 2,147,483,648 (got 0)"),
        (["--devices", "cpu,"], "names an empty device"),
        (["--mode", "async", "--shards", "100000"], "--shards must be 0 (one per device) to 64"),
        # a server of one shard, --shards ignored until 2026-12-05
        (["--mode", "async", "--shards", "2"], "give --workers 2 or more"),
        # a predicted clock of Infinity trained, and its events could then not be read back
        (["--simulate", "--workers", "2", "--mode", "async", "--simulate-token-us", "inf"], "--simulate-token-us"),
        (["--simulate", "--workers", "2", "--mode", "async", "--link-gbps", "1e-320"], "--link-gbps must be at"),
        (["--seed", "18446744073709551616"], "--seed must be"),  # a traceback
        (["--seed", "100000000000000000"], "--seed must be"),  # async workers failed on seed * 1000
        (["--mode", "async", "--workers", "2", "--simulate", "--shards", "2"], "--simulate emulates one shard"),
    ],
)
def test_bad_train_options_give_one_line_and_exit_2(synthetic_bin: Path, tmp_path: Path, extra, message):
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "run"), "--max-updates", "1", *extra)
    assert code == 2, output
    assert len(output.strip().splitlines()) == 1 and message in output and "Traceback" not in output


def test_existing_run_is_not_overwritten_and_bad_checkpoints_are_refused(
    synthetic_bin: Path, learned_run: Path, tmp_path: Path
):
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    code, output = run_cli("train", str(synthetic_bin), str(run), "--max-updates", "1")
    assert code == 2 and "--resume" in output and "--force" in output
    assert (run / "checkpoints" / "last.pt").read_bytes() == before

    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--preset", "small", "--quiet")
    assert code == 2 and "model configuration" in output and len(output.strip().splitlines()) == 1

    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet")
    assert code == 2 and "last.pt" in output and len(output.strip().splitlines()) == 1

    code, output = run_cli("train", str(tmp_path / "nowhere"), str(tmp_path / "r2"), "--quiet")
    assert code == 2 and "nowhere" in output and not (tmp_path / "r2").exists()


def test_resume_with_another_vocabulary_is_refused(synthetic_raw: Path, learned_run: Path, tmp_path: Path):
    from async_nmt.data.binarize import preprocess

    other = tmp_path / "other-bin"
    preprocess(synthetic_raw, other, vocab_size=60)  # the toy corpus has 112 pieces at 150 as at 200: the same
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    code, output = run_cli("train", str(other), str(run), "--resume", "--quiet")
    assert code == 2 and "vocabulary" in output and len(output.strip().splitlines()) == 1


def test_resume_on_another_corpus_with_the_same_vocabulary_is_refused(synthetic_raw: Path, learned_run: Path,
                                                                      tmp_path: Path):  # fmt: skip
    """The same raw text preprocessed with a lower --max-len: the same vocabulary, fewer training pairs, other
    batch lists, where the saved data positions would point elsewhere (it resumed without a word)."""
    from async_nmt.data.binarize import load_manifest, preprocess

    other = tmp_path / "short-bin"
    preprocess(synthetic_raw, other, vocab_size=200, max_len=8)
    ours = load_manifest(Path(json.loads((learned_run / "config.json").read_text())["train"]["bin_dir"]))
    assert load_manifest(other)["vocab_hash"] == ours["vocab_hash"]
    assert load_manifest(other)["splits"]["train"]["sentences"] < ours["splits"]["train"]["sentences"]
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    before = (run / "events.jsonl").read_bytes()
    code, output = run_cli("train", str(other), str(run), "--resume", "--max-updates", "310", "--quiet")
    assert code == 2 and "training pairs" in output and len(output.strip().splitlines()) == 1, output
    assert (run / "events.jsonl").read_bytes() == before


def test_nmt_train_is_nmt_train_subcommand():
    out = subprocess.run([str(NMT_TRAIN), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--mode" in out and "--local-accum" in out and "BIN_DIR RUN_DIR" in out


def test_ctrl_c_during_a_best_save_waits_for_it(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """The signal comes as best.pt is being copied (after last.pt): best.pt is written whole, no temporary
    file is left, and the run then stops as Ctrl-C stops it. Before, best.pt was never written."""
    import os
    import signal

    copy = shutil.copyfile

    def copy_then_ctrl_c(src, dst, *args, **kwargs):
        done = copy(src, dst, *args, **kwargs)
        if str(dst).endswith("best.pt.tmp"):
            os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(shutil, "copyfile", copy_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train(micro_config(synthetic_bin, max_updates=20, valid_every=4), run, progress=False, log_every=1)
    assert stopped.value.code == 130
    events = read_events(run / "events.jsonl")
    assert events[-1]["kind"] == "end" and events[-1]["interrupted"] is True and events[-1]["updates"] == 4
    best, last = (read_checkpoint(run / "checkpoints" / f"{name}.pt") for name in ("best", "last"))
    assert torch.equal(best["params"], last["params"]) and best["validated_at"] == 4
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_ctrl_c_during_an_update_of_a_scratch_run_says_stopping_not_saving(
    synthetic_bin: Path, tmp_path: Path, monkeypatch, capsys
):
    """A benchmark's temporary run (`scratch`, which its caller deletes): Ctrl-C during an update said
    "interrupted: saving after the update under way" of a save no one would see. It now says "stopping"."""
    import os
    import signal

    from async_nmt.train import step
    from async_nmt.train.trainer import UPDATE_HELD

    computed = []
    train_step = step.train_step

    def second_batch_then_ctrl_c(*args, **kwargs):
        computed.append(1)
        if len(computed) == 2:  # within the first update, of 4 batches
            os.kill(os.getpid(), signal.SIGINT)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(step, "train_step", second_batch_then_ctrl_c)
    with pytest.raises(SystemExit) as stopped:
        train(micro_config(synthetic_bin, max_updates=5, local_accum=4), tmp_path / "run", progress=False,
              scratch=True)  # fmt: skip
    err = capsys.readouterr().err
    assert stopped.value.code == 130 and len(computed) == 4, err
    assert UPDATE_HELD.replace("saving", "stopping") in err and "saving" not in err and err.endswith("interrupted\n")


def test_ctrl_c_as_the_workers_end_after_the_closing_save_ends_the_run_as_finished(
    synthetic_bin: Path, tmp_path: Path, monkeypatch, capsys
):
    """The run at its limit, validated and saved: a Ctrl-C as its worker processes ended (a second or two, found
    by a stress sweep of async runs) stopped it with "interrupted", exit code 130 and no end event. It cut
    nothing: the run ends as finished, and says so."""
    import os
    import signal

    from async_nmt.train import trainer as trainer_module

    build = trainer_module.build_workers

    def ctrl_c_as_they_close(ctx):
        workers = build(ctx)
        close = workers.close

        def close_after_ctrl_c() -> None:
            os.kill(os.getpid(), signal.SIGINT)
            close()

        workers.close = close_after_ctrl_c
        return workers

    monkeypatch.setattr(trainer_module, "build_workers", ctrl_c_as_they_close)
    run = tmp_path / "run"
    try:
        end = train(micro_config(synthetic_bin, max_updates=3), run, progress=False)
    except KeyboardInterrupt:  # (else it would end the test session)
        pytest.fail("the Ctrl-C as the workers ended stopped the finished run")
    assert end["interrupted"] is False and end["stopped_by"] == "--max-updates 3"
    assert read_events(run / "events.jsonl")[-1] == end
    assert capsys.readouterr().err.endswith(f"interrupted after the run's end: it cut nothing, and {run} is finished "
                                            "(--max-updates 3)\n")  # fmt: skip


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])  # Ctrl-C; `kill` or a batch scheduler's notice
def test_ctrl_c_saves_a_checkpoint_and_exits(synthetic_bin: Path, tmp_path: Path, signum: str):
    import signal
    import time

    run = tmp_path / "run"
    proc = _nmt_train(synthetic_bin, run, "--preset", "micro", "--devices", "cpu", "--max-tokens", "512",
                      "--valid-every", "0", "--log-every", "1")  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(e["kind"] == "train" for e in _events(run)):
            time.sleep(0.2)
        proc.send_signal(getattr(signal, signum))
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()  # no-op when it ended
    assert proc.returncode == 130, stderr
    assert "interrupted: saved" in stderr and "Traceback" not in stderr
    assert "stopped by" in stderr and "an interrupt (Ctrl-C or SIGTERM)" in stderr  # the summary, as at an end
    events = read_events(run / "events.jsonl")
    assert events[-1]["kind"] == "end" and events[-1]["interrupted"] is True
    saved = [e for e in events if e["kind"] == "checkpoint"][-1]
    assert saved["updates"] >= 1 and (run / "checkpoints" / "last.pt").is_file()
    # the checkpoint holds the update the run stopped at, and a resume goes on from there
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == saved["updates"]
    assert events[-1]["updates"] == saved["updates"]
    code, output = run_cli("train", str(synthetic_bin), str(run), "--quiet", "--preset", "micro", "--devices", "cpu",
                           "--max-tokens", "512", "--valid-every", "0", "--log-every", "1", "--resume",
                           "--max-updates", str(saved["updates"] + 2))  # fmt: skip
    assert code == 0, output
    resumed = read_events(run / "events.jsonl")
    start = [e for e in resumed if e["kind"] == "start"][-1]
    assert start["resumed"] is True and start["updates"] == saved["updates"]
    assert resumed[-1]["kind"] == "end" and resumed[-1]["updates"] == saved["updates"] + 2
    # as if never stopped: Ctrl-C waited for the step it came in (it once saved the data position of a
    # batch taken but not trained on, and the resumed run skipped that batch); every update was logged
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "whole"), "--quiet", "--preset", "micro",
                           "--devices", "cpu", "--max-tokens", "512", "--valid-every", "0", "--log-every", "1",
                           "--max-updates", str(saved["updates"] + 2))  # fmt: skip
    assert code == 0, output

    def trained(events: list[dict]) -> dict[int, tuple]:
        return {e["updates"]: (e["tokens"], e["loss"]) for e in events if e["kind"] == "train"}

    assert trained(resumed) == trained(read_events(tmp_path / "whole" / "events.jsonl"))


def test_an_async_run_prints_its_staleness_in_each_line_and_the_summary(synthetic_bin: Path, tmp_path: Path):
    """Staleness, the subject of the async modes, was logged in the events but never printed."""
    args = [str(synthetic_bin), str(tmp_path / "run"), "--preset", "micro", "--devices", "cpu", "--mode", "async",
            "--workers", "3", "--simulate", "--max-tokens", "256", "--valid-every", "0", "--log-every", "3",
            "--max-updates", "6", "--valid-max-sentences", "5"]  # fmt: skip
    done = CliRunner().invoke(main, ["train", *args])  # (in this process: the workers are emulated in it)
    assert done.exit_code == 0, done.output
    events = [e for e in _events(tmp_path / "run") if e["kind"] == "train"]
    lines = [line for line in done.stderr.splitlines() if line.startswith("update ") and "valid" not in line]
    assert len(lines) == len(events) == 2
    for line, event in zip(lines, events, strict=True):
        assert line.endswith(f"staleness {event['staleness_mean']:.2f} (max {event['staleness_max']})")
    hist = [a + b for a, b in itertools.zip_longest(*(e["staleness_hist"] for e in events), fillvalue=0)]
    mean = sum(i * n for i, n in enumerate(hist)) / sum(hist)
    assert f"mean {mean:.2f}, max {len(hist) - 1} ({sum(hist)} pushes)" in done.stderr and len(hist) > 1
    end = _events(tmp_path / "run")[-1]  # the emulated devices' rate beside their predicted time
    assert f"({end['tokens'] / end['predicted_s']:,.0f} tokens/s)" in done.stderr
    # a short run's times to a tenth of a second (its predicted time was "0 s")
    assert f"│ {end['predicted_s']:.1f} s on 3 real devices" in done.stderr and end["predicted_s"] < 10
    # (to a tenth below 10 s, as `seconds` writes them: a loaded machine took 10.8 s, written "11 s")
    assert f"│ {seconds(end['train_s'])} (wall {seconds(end['wall_s'])})" in done.stderr


def test_a_log_that_is_not_a_terminal_gets_a_line_per_train_event_and_no_bar(synthetic_bin: Path, tmp_path: Path):
    """In a log file or batch job the bar's `\\r` redraws would make one endless line: there each train
    event is a line of its own, as is each validation; --quiet silences them."""
    args = ["train", str(synthetic_bin), str(tmp_path / "run"), "--preset", "micro", "--devices", "cpu",
            "--max-tokens", "512", "--valid-every", "4", "--valid-max-sentences", "5", "--log-every", "2",
            "--max-updates", "4"]  # fmt: skip
    done = subprocess.run([str(NMT_TRAIN), *args[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("update ")]
    assert [line.split(":")[0] for line in lines] == ["update 2", "update 4", "update 4"]
    assert "loss" in lines[0] and "tok/s" in lines[0] and "valid loss" in lines[2] and "BLEU" in lines[2]
    event = next(e for e in _events(tmp_path / "run") if e["kind"] == "train")  # the nll, the valid loss's measure
    assert f"loss {event['loss']:.3f} (nll {event['nll']:.3f})" in lines[0]
    assert "stopped by" in done.stderr and "--max-updates 4" in done.stderr  # the summary says why it ended
    assert "best.pt" in done.stderr and "nmt translate" in done.stderr  # ... and what to do next
    assert _events(tmp_path / "run")[-1]["stopped_by"] == "--max-updates 4"
    quiet = CliRunner().invoke(main, [*args, "--force", "--quiet"])  # (as the same command in this process)
    assert quiet.exit_code == 0, quiet.output
    assert "update " not in quiet.stderr


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["alone", "a sync group"])
def test_a_run_started_with_ctrl_c_ignored_trains_on_through_it(synthetic_bin: Path, tmp_path: Path, workers):
    """`nmt-train ... &` in a script ignores Ctrl-C, as a background job does: it took it over, and a Ctrl-C of
    the terminal's foreground job stopped the run too. SIGTERM still stops it."""
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen([str(NMT_TRAIN), str(synthetic_bin), str(run), *MICRO, "--log-every", "1", *workers,
                             "--max-updates", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(e["kind"] == "train" for e in _events(run)):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        at = max(e["updates"] for e in _events(run))
        while time.time() < deadline and max(e["updates"] for e in _events(run)) < at + 3:
            time.sleep(0.2)
        assert proc.poll() is None and max(e["updates"] for e in _events(run)) >= at + 3
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted: saved" in stderr, stderr
    assert "Ctrl-C again" not in stderr  # (which it ignores)


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return read_events(path) if path.exists() else []


MICRO = ["--quiet", "--preset", "micro", "--devices", "cpu", "--max-tokens", "512", "--valid-every", "0",
         "--valid-max-sentences", "5"]  # fmt: skip


def _nmt_train(*args: str | Path) -> subprocess.Popen:
    """`nmt-train ARGS` as a process whose output is read (Ctrl-C acts in it as in a terminal: conftest's
    `ctrl_c_as_in_a_terminal`)."""
    return subprocess.Popen([str(NMT_TRAIN), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def _start_training(bin_dir: Path, run: Path, *extra: str) -> subprocess.Popen:
    """An nmt-train that saves every update and runs until it is stopped."""
    return _nmt_train(bin_dir, run, *MICRO, "--log-every", "1", "--save-every", "1", "--max-updates", "100000",
                      *extra)  # fmt: skip


def _wait_for_a_checkpoint(run: Path, proc: subprocess.Popen) -> None:
    import time

    deadline = time.time() + 120
    while not any(e["kind"] == "checkpoint" for e in _events(run)):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint in 120 s"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "first, second",
    [  # the audit's two cases: both processes exited 0, the first one's run lost
        (["--mode", "sync", "--workers", "2"], ["--resume", "--max-updates", "400"]),  # spawned ranks
        (["--mode", "async", "--workers", "1"], ["--force", "--mode", "sync", "--max-updates", "2"]),
    ],
)
def test_a_second_nmt_train_on_a_run_in_use_is_refused_and_the_first_goes_on(
    synthetic_bin: Path, tmp_path: Path, first: list[str], second: list[str]
):
    import signal

    run = tmp_path / "run"
    proc = _start_training(synthetic_bin, run, *first)
    try:
        _wait_for_a_checkpoint(run, proc)
        before = (run / "config.json").read_bytes()
        code, output = run_cli("train", str(synthetic_bin), str(run), *MICRO, *second)
        assert proc.poll() is None  # still training: refused for the lock, not for a run that ended
        proc.send_signal(signal.SIGINT)  # stopped as Ctrl-C stops it: a checkpoint, exit 130
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # no-op when it ended
    assert code == 2, output
    assert output.strip() == (f"error: {run}: in use by another nmt-train (pid {proc.pid}); wait for it to end, "
                              "or stop it")  # fmt: skip
    assert proc.returncode == 130, stderr
    assert (run / "config.json").read_bytes() == before
    events = read_events(run / "events.jsonl")
    assert [e["kind"] for e in events].count("start") == 1 and events[0]["resumed"] is False
    trained = [e["updates"] for e in events if e["kind"] == "train"]
    assert trained == sorted(set(trained)) and trained
    assert events[-1]["kind"] == "end" and events[-1]["interrupted"] is True
    saved = [e for e in events if e["kind"] == "checkpoint"][-1]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == saved["updates"]
    assert not (run / LOCK_NAME).exists()
    # released at its end: the second command now goes through
    code, output = run_cli("train", str(synthetic_bin), str(run), *MICRO, "--resume", "--max-updates",
                           str(saved["updates"] + 1))  # fmt: skip
    assert code == 0, output


def test_a_run_killed_with_kill_9_is_not_left_locked(synthetic_bin: Path, tmp_path: Path):
    """The kernel drops a dead process's flock: the lock file stays behind, held by no one, and is no run
    mark (a folder with only it is a fresh one)."""
    run = tmp_path / "run"
    proc = _start_training(synthetic_bin, run)
    try:
        _wait_for_a_checkpoint(run, proc)
    finally:
        proc.kill()
        proc.communicate()
    assert (run / LOCK_NAME).exists()
    saved = [e for e in _events(run) if e["kind"] == "checkpoint"][-1]["updates"]
    code, output = run_cli("train", str(synthetic_bin), str(run), *MICRO, "--resume", "--max-updates", str(saved + 1))
    assert code == 0, output
    assert read_events(run / "events.jsonl")[-1]["updates"] == saved + 1 and not (run / LOCK_NAME).exists()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / LOCK_NAME).write_text("123\n")  # left by a killed nmt-train before it wrote anything
    assert not is_run_folder(fresh)
    code, output = run_cli("train", str(synthetic_bin), str(fresh), *MICRO, "--max-updates", "1")
    assert code == 0, output


def test_only_torchruns_global_rank_0_owns_the_run(monkeypatch):
    from async_nmt.train.lock import owns_run

    assert owns_run()
    monkeypatch.setenv("WORLD_SIZE", "4")
    for rank, owns in (("0", True), ("1", False), ("3", False)):
        monkeypatch.setenv("RANK", rank)
        assert owns_run() is owns


def test_a_run_lock_says_its_holders_pid_keeps_the_lock_through_a_clear_and_leaves_the_run(tmp_path: Path):
    """The lock file holds its owner's pid alone (not over a longer one a killed trainer left), which the
    refusal of another holder names; the owner's nested lock (the CLI's, then launch's) is let through, and
    clearing the folder for a fresh start keeps the held lock file; on leaving, the lock file goes, the folder
    the lock made stays with what the run wrote, and the next lock of this process is taken anew."""
    import fcntl
    import os

    from async_nmt.errors import UserError
    from async_nmt.train.lock import clear_run_dir, run_lock

    def foreign_flock_refused(path: Path) -> bool:  # as another process's flock of the file would be
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    run = tmp_path / "new" / "run"
    run.mkdir(parents=True)
    (run / LOCK_NAME).write_text("4194304123\n")  # left by an nmt-train killed with kill -9
    with run_lock(run):
        assert (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with run_lock(Path(os.path.relpath(run))):  # (the same folder, spelt another way)
            (run / "events.jsonl").write_text("{}\n")
            (run / "checkpoints").mkdir()
            clear_run_dir(run)
            assert [p.name for p in run.iterdir()] == [LOCK_NAME] and foreign_flock_refused(run / LOCK_NAME)
        assert foreign_flock_refused(run / LOCK_NAME)  # still held after the nested lock left
        (run / "events.jsonl").write_text("{}\n")
    assert [p.name for p in run.iterdir()] == ["events.jsonl"]
    with run_lock(run):
        assert foreign_flock_refused(run / LOCK_NAME)
    # a lock file that is not nmt-train's own was written through: a link to events.jsonl left it a pid
    for name, make in (("symlink", lambda lock: lock.symlink_to("events.jsonl")),
                       ("hard link", lambda lock: lock.hardlink_to(lock.parent / "events.jsonl")),
                       ("fifo", os.mkfifo)):  # fmt: skip
        odd = tmp_path / name.replace(" ", "-")
        odd.mkdir()
        (odd / "events.jsonl").write_text('{"kind": "start"}\n')
        make(odd / LOCK_NAME)
        with pytest.raises(UserError, match=f"{odd / LOCK_NAME}: .*not nmt-train's lock file; remove it"):
            with run_lock(odd):
                pass
        assert (odd / "events.jsonl").read_text() == '{"kind": "start"}\n' and os.path.lexists(odd / LOCK_NAME)
    held = tmp_path / "held"
    held.mkdir()
    (held / LOCK_NAME).write_text("4242\n")
    fd = os.open(held / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another nmt-train, pid 4242, holds it
        with pytest.raises(UserError) as refused:
            with run_lock(held):
                pass
        assert str(refused.value) == f"{held}: in use by another nmt-train (pid 4242); wait for it to end, or stop it"
    finally:
        os.close(fd)
    made = tmp_path / "a" / "b"
    with run_lock(made):
        (made / "events.jsonl").write_text("{}\n")
    assert [p.name for p in made.iterdir()] == ["events.jsonl"]  # a run began there: it stays
    empty = tmp_path / "c" / "d"
    with run_lock(empty):
        assert (empty / LOCK_NAME).is_file()
    assert not (tmp_path / "c").exists()  # folders made for a lock and left empty go


def test_a_lock_file_its_owner_unlinked_as_it_was_opened_is_opened_again(tmp_path: Path, monkeypatch):
    """An owner that ends unlinks its lock file; a trainer that opened the file just before would lock an orphan
    that no other trainer finds (two trainers on one run again): it opens the file the name leads to anew."""
    import os

    from async_nmt.train import lock

    real, opened = lock._open_lock_file, []

    def open_as_the_owner_ends(path):
        fd = real(path)
        if not opened:
            os.unlink(path)  # the previous owner ends between this open and the flock
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock, "_open_lock_file", open_as_the_owner_ends)
    run = tmp_path / "run"
    with lock.run_lock(run):
        assert len(opened) == 2 and (run / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_simulated_async_run_logs_staleness_and_predicted_time_and_repeats(synthetic_bin: Path, tmp_path: Path):
    def run(name):
        cfg = micro_config(synthetic_bin, mode="async", workers=2, simulate=True, worker_speeds=[1.0, 0.5],
                          max_updates=8)  # fmt: skip
        train(cfg, tmp_path / name, progress=False, log_every=4)
        return [e for e in read_events(tmp_path / name / "events.jsonl") if e["kind"] == "train"]

    first, second = run("a"), run("b")
    assert [e["loss"] for e in first] == pytest.approx([e["loss"] for e in second], rel=1e-6)
    assert [e["staleness_hist"] for e in first] == [e["staleness_hist"] for e in second]
    assert first[-1]["pushes"] == 8 and first[-1]["staleness_max"] >= 1
    assert 0 < first[0]["predicted_s"] < first[-1]["predicted_s"]


@pytest.mark.parametrize(
    "mode",
    [
        dict(mode="sync", worker_speeds=[1.0, 0.5]),
        dict(mode="async", worker_speeds=[1.0, 0.5]),
        dict(mode="async-accum", accum=2, worker_speeds=[1.0, 0.3]),
        dict(mode="diloco", sync_every=3),
    ],
    ids=lambda options: options["mode"],
)
def test_report_reprices_a_simulated_run_to_what_the_same_run_on_another_link_predicts(
    mode: dict, synthetic_bin: Path, tmp_path: Path
):
    from async_nmt.errors import UserError
    from async_nmt.report import Run, reprice

    def run(gbps):  # a fixed token price: the clock depends on the tokens and the link alone
        cfg = micro_config(synthetic_bin, workers=2, simulate=True, simulate_token_us=100, link_gbps=gbps,
                           max_updates=7, **mode)  # fmt: skip
        train(cfg, tmp_path / str(gbps), progress=False, log_every=2)
        return Run(str(gbps), tmp_path / str(gbps), read_events(tmp_path / str(gbps) / "events.jsonl"))

    fast, slow = run(100.0), run(0.01)
    repriced = reprice(fast, 0.01)
    clocks = [[e["predicted_s"] for e in r.events if "predicted_s" in e] for r in (fast, slow, repriced)]
    assert len(clocks[0]) >= 5 and clocks[1][-1] > 2 * clocks[0][-1]  # the slow link shows on the clock
    assert clocks[2] == pytest.approx(clocks[1], rel=1e-5, abs=1e-5)  # events keep 6 decimals
    assert [e["predicted_s"] for e in reprice(slow, 100.0).events if "predicted_s" in e] == pytest.approx(
        clocks[0], rel=1e-5, abs=1e-5
    )
    if mode["mode"].startswith("async"):  # a run resumed from one logged before the per-device clocks
        cut = len(fast.events) // 2
        old = Run("old", fast.path, [{k: v for k, v in e.items() if k != "worker_s"} if i < cut else e
                                     for i, e in enumerate(fast.events)])  # fmt: skip
        with pytest.raises(UserError, match="worker_s"):
            reprice(old, 0.01)
        kept = [e for e in reprice(old, 0.01, partial=True).events if "predicted_s" in e]
        unpriced = sum("predicted_s" in e for e in fast.events[:cut])
        assert unpriced and [e["predicted_s"] for e in kept] == pytest.approx(clocks[1][unpriced:], rel=1e-5, abs=1e-5)


def test_a_sync_runs_clock_replayed_at_other_speeds_is_the_run_trained_at_those_speeds(
    synthetic_bin: Path, tmp_path: Path
):
    """scripts/replay_sync_clock.py: sync's updates do not depend on the workers' speeds, only its clock."""

    def run(name, speeds):
        cfg = micro_config(synthetic_bin, mode="sync", workers=3, simulate=True, simulate_token_us=50,
                           worker_speeds=speeds, local_accum=2, max_updates=7, valid_every=5)  # fmt: skip
        train(cfg, tmp_path / name, progress=False, log_every=2)
        return read_events(tmp_path / name / "events.jsonl")

    equal, slow = run("equal", [1.0, 1.0, 1.0]), run("slow", [1.0, 0.8, 0.5])
    assert [e.get("loss") for e in equal] == [e.get("loss") for e in slow]  # the same updates

    # what the later replays read, made first: the replays then run in three batches of forks (each batch one
    # process that imports torch once, `run_forked`), not a process each
    resumed = tmp_path / "resumed"  # a run resumed at other prices (link and token)
    for updates, prices in (
        (4, {"link_gbps": 0.05, "simulate_token_us": 50}),
        (7, {"link_gbps": 1.0, "simulate_token_us": 20}),
    ):
        cfg = micro_config(synthetic_bin, mode="sync", workers=3, simulate=True, worker_speeds=[1.0, 1.0, 1.0],
                           local_accum=2, max_updates=updates, valid_every=5, **prices)  # fmt: skip
        train(cfg, resumed, resume=updates > 4, progress=False, log_every=2)
    expected = read_events(resumed / "events.jsonl")
    measured = tmp_path / "measured"  # (its first segment timed its tokens: not replayable)
    shutil.copytree(resumed, measured)
    (measured / "events.jsonl").write_text("".join(json.dumps({**e, "simulate_token_us": 0} if i == 0 else e) + "\n"
                                                   for i, e in enumerate(expected)))  # fmt: skip
    other = tmp_path / "other-bin"  # another corpus: its training split one pair short
    shutil.copytree(synthetic_bin, other)
    manifest = json.loads((other / "manifest.json").read_text())
    pairs = manifest["splits"]["train"]["sentences"]
    manifest["splits"]["train"]["sentences"] = pairs - 1
    (other / "manifest.json").write_text(json.dumps(manifest))

    def replays(*cases: tuple[str, str, list[str]] | tuple[str, str, list[str], Path]
                ) -> list[subprocess.CompletedProcess[str]]:  # fmt: skip
        """replay_sync_clock.py RUN OUT --worker-speeds SPEEDS MORE... for each (OUT, SPEEDS, MORE[, RUN]), in
        turn (RUN: the run "equal" where not given)."""
        return run_forked([("replay_sync_clock.py", [str(case[3] if len(case) > 3 else tmp_path / "equal"),
                                                     str(tmp_path / case[0]), "--worker-speeds", case[1], *case[2]],
                            False) for case in cases])  # fmt: skip

    slow_done, equal_done = replays(("replayed-1,0.8,0.5", "1,0.8,0.5", []), ("replayed-1,1,1", "1,1,1", []))
    for speeds, expected_log, done in (("1,0.8,0.5", slow, slow_done), ("1,1,1", equal, equal_done)):
        out = tmp_path / f"replayed-{speeds}"
        assert done.returncode == 0, done.stderr
        replayed = read_events(out / "events.jsonl")
        clocks = [[e["predicted_s"] for e in log if "predicted_s" in e] for log in (replayed, expected_log)]
        assert len(clocks[0]) >= 5 and clocks[0] == pytest.approx(clocks[1], rel=1e-6)
        assert replayed[0]["clock_replayed_from"] == str(tmp_path / "equal")
    assert slow[-1]["predicted_s"] > 1.5 * equal[-1]["predicted_s"]  # the slow worker shows on the clock
    # OUT = RUN, another run, or a replay without --force: refused, untouched (RUN was rewritten in place)
    before = {name: (tmp_path / name / "events.jsonl").read_bytes() for name in ("equal", "slow", "replayed-1,1,1")}
    refused = (("equal", ["--force"], "is RUN itself"), ("slow", ["--force"], "is not a replay"),
               ("replayed-1,1,1", [], "holds a replay already; use --force"))  # fmt: skip
    for (_, _, error), done in zip(refused, replays(*((out, "1,0.8,0.5", force) for out, force, _ in refused)),
                                   strict=True):  # fmt: skip
        assert done.returncode == 2 and error in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert before == {name: (tmp_path / name / "events.jsonl").read_bytes() for name in before}
    again, done, unreplayable, elsewhere = replays(
        ("replayed-1,1,1", "1,0.8,0.5", ["--force"]),
        ("replayed-resumed", "1,1,1", [], resumed),  # replayed at each segment's prices (all at config.json's before)
        ("replayed-measured", "1,1,1", [], measured),
        ("replayed-other", "1,1,1", ["--bin", str(other)]),  # --bin of another corpus was replayed, on other batches
    )
    assert again.returncode == 0 and read_events(tmp_path / "replayed-1,1,1" / "events.jsonl")[-1]["predicted_s"] == (
        pytest.approx(slow[-1]["predicted_s"], rel=1e-6))  # fmt: skip
    assert done.returncode == 0, done.stderr
    clocks = [[e["predicted_s"] for e in log if "predicted_s" in e]
              for log in (read_events(tmp_path / "replayed-resumed" / "events.jsonl"), expected)]  # fmt: skip
    assert sum(e["kind"] == "start" for e in expected) == 2 and len(clocks[0]) >= 5
    assert clocks[0] == pytest.approx(clocks[1], rel=1e-6)
    assert unreplayable.returncode == 2 and unreplayable.stderr == (
        f"error: {measured}: its start at update 0 measured its tokens' time (no --simulate-token-us): only a fixed "
        "price can be replayed\n")  # fmt: skip
    assert elsewhere.returncode == 2 and elsewhere.stderr == (
        f"error: {other}: not the corpus {tmp_path / 'equal'} was trained on (train_pairs {pairs - 1} where "
        f"{tmp_path / 'equal'} has {pairs}); give its BIN with --bin\n")  # fmt: skip


def test_staleness_lr_inverse_divides_the_logged_lr_by_the_staleness(synthetic_bin: Path, tmp_path: Path):
    from async_nmt.train.optim import inverse_sqrt_lr

    run = tmp_path / "run"
    code, output = run_cli("train", str(synthetic_bin), str(run), "--quiet", "--preset", "micro", "--devices", "cpu",
                           "--mode", "async", "--workers", "3", "--simulate", "--worker-speeds", "1,1,0.3",
                           "--staleness-lr", "inverse", "--max-updates", "12", "--log-every", "1", "--lr", "1e-3",
                           "--warmup", "4", "--max-tokens", "512")  # fmt: skip
    assert code == 0, output
    log = read_events(run / "events.jsonl")
    assert log[0]["staleness_lr"] == "inverse" and log[0]["batch_sort"] == "target"  # (the default; not logged)
    # the summary names it beside the mode, as `nmt report` does (lr/s): it left it out
    summary = CliRunner().invoke(main, ["train", str(synthetic_bin), str(run), "--resume", "--max-updates", "13"])
    assert summary.exit_code == 0 and "lr / staleness (--staleness-lr inverse)" in summary.stderr, summary.output
    trained = [e for e in log if e["kind"] == "train"]  # one push, one update each (async, --log-every 1)
    assert len(trained) == 12 and max(e["staleness_max"] for e in trained) >= 2
    for e in trained:
        expected = inverse_sqrt_lr(e["updates"], 1e-3, 4) / max(1, e["staleness_mean"])
        assert e["lr"] == pytest.approx(expected, rel=1e-5)  # the events keep 6 significant digits


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--staleness-lr", "inverse"], "--staleness-lr"),
        (["--staleness-lr", "none"], "--staleness-lr applies to the async modes"),  # (the default: it did nothing)
        (["--accum", "1"], "--accum sums pushes on the parameter server and only applies to --mode async-accum"),
        (["--sync-every", "10"], "--mode diloco only"),
        (["--outer-lr", "0.7"], "--outer-lr applies to --mode diloco only"),  # (its default: it did nothing, silently)
        (["--outer-momentum", "0.9", "--mode", "async"], "--outer-momentum applies to --mode diloco only"),
        (["--mode", "diloco", "--simulate", "--workers", "2"], "--sync-every"),
        (["--mode", "diloco", "--simulate", "--workers", "2", "--sync-every", "0"], "--sync-every"),
        (["--mode", "diloco", "--simulate", "--workers", "2", "--sync-every", "4", "--outer-lr", "0"], "--outer-lr"),
        # it ended before its first outer step, and saved the initial model as best.pt and last.pt
        (["--mode", "diloco", "--simulate", "--workers", "2", "--sync-every", "4"], "is more than --max-updates 1"),
        (["--simulate-token-us", "5"], "add --simulate"),
        (["--link-gbps", "25"], "add --simulate"),
        (["--link-gbps", "80"], "add --simulate"),
        (["--link-gbps", "0", "--simulate"], "--link-gbps"),
        (["--patience", "3", "--valid-every", "0"], "--valid-every"),
        (["--worker-speeds", "1,0.5"], "needs several workers"),
        (["--workers", "2", "--simulate", "--worker-speeds", "1,1,1"], "3 speeds for 2 workers"),
        (["--worker-speeds", "1,x", "--simulate"], "--worker-speeds"),
    ],
)
def test_bad_simulation_options(synthetic_bin: Path, tmp_path: Path, extra, message):
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "run"), "--max-updates", "1", *extra)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output


def test_a_diloco_resume_past_its_first_outer_step_with_max_updates_below_sync_every_has_nothing_to_do(
    synthetic_bin: Path, tmp_path: Path
):
    """`--resume --max-updates 2` of a diloco run of H 3 at update 6 is at its limit: nothing to do, as in any
    mode; until 2026-12-08 it was refused, as "the run would end before its first outer step, with the initial
    model", which it had taken twice. A run that has not reached its first outer step is still refused so."""
    run = tmp_path / "run"
    common = ["--preset", "micro", "--devices", "cpu", "--mode", "diloco", "--sync-every", "3",
              "--valid-max-sentences", "3", "--quiet"]  # fmt: skip
    code, output = run_cli("train", str(synthetic_bin), str(run), *common, "--max-updates", "6", "--valid-every", "3")
    assert code == 0, output
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--max-updates", "2")
    assert code == 0 and "nothing to do" in output and "before its first outer step" not in output, output
    from async_nmt.errors import UserError
    from async_nmt.train.modes import check_mode_options

    cfg = TrainConfig(mode="diloco", sync_every=3, max_updates=2)
    for resumed_at in (0, 1, 2):  # a new run, and resumes before the first outer step
        with pytest.raises(UserError, match="before its first outer step"):
            check_mode_options(cfg, resumed_at=resumed_at)
    check_mode_options(cfg, resumed_at=3)


def test_one_diloco_worker_without_simulate_has_no_predicted_clock(synthetic_bin: Path, tmp_path: Path):
    """It ran emulated, and its events had a predicted clock (`nmt report --x predicted` took it) and its
    summary a "predicted time ... on 1 real devices", as no other run that is not --simulate has."""
    train(micro_config(synthetic_bin, mode="diloco", sync_every=2, max_updates=4), tmp_path / "r", progress=False,
          log_every=1)  # fmt: skip
    logged = read_events(tmp_path / "r" / "events.jsonl")
    assert [e["updates"] for e in logged if e["kind"] == "train"] == [1, 2, 3, 4]
    assert not any("predicted_s" in e for e in logged)


@pytest.mark.parametrize(
    "options, split_at",
    [
        (dict(mode="async", workers=3, worker_speeds=[1.0, 1.0, 0.4]), 5),
        (dict(mode="diloco", workers=2, sync_every=4), 6),  # stopped 2 steps into the second round
    ],
    ids=["async", "diloco"],
)
def test_simulated_run_resumes_to_the_same_losses_staleness_clock_and_parameters(
    options: dict, split_at: int, synthetic_bin: Path, tmp_path: Path
):
    def cfg(updates):
        return micro_config(synthetic_bin, simulate=True, max_updates=updates, dropout=0.1, simulate_token_us=5.0,
                            **options)  # fmt: skip

    train(cfg(10), tmp_path / "whole", progress=False, log_every=1)
    train(cfg(split_at), tmp_path / "split", progress=False, log_every=1)
    train(cfg(10), tmp_path / "split", resume=True, progress=False, log_every=1)

    def trained(run):
        return {e["updates"]: e for e in read_events(run / "events.jsonl") if e["kind"] == "train"}

    whole, split = trained(tmp_path / "whole"), trained(tmp_path / "split")
    for update in range(split_at + 1, 11):
        assert split[update]["loss"] == pytest.approx(whole[update]["loss"], rel=1e-5)
        assert split[update]["staleness_hist"] == whole[update]["staleness_hist"]
        assert split[update]["predicted_s"] == pytest.approx(whole[update]["predicted_s"], rel=1e-9)
        assert split[update]["worker_s"] == pytest.approx(whole[update]["worker_s"], rel=1e-9)
    final = [torch.load(run / "checkpoints" / "last.pt", weights_only=False)["params"] for run in
             (tmp_path / "whole", tmp_path / "split")]  # fmt: skip
    torch.testing.assert_close(final[0], final[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss", ["nan", "huge"])
def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_checkpoint(synthetic_bin: Path, tmp_path: Path,
                                                                           loss: str):  # fmt: skip
    """NaN, or (--lr 1e4 with Adam) a finite loss of 1e10 nats a token, which trained on without a word."""
    from async_nmt.errors import TrainingDiverged
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro_config(synthetic_bin, max_updates=20, valid_every=4, log_every=1), run)
    trainer.open_run(resume=False)
    advance = trainer.workers.advance

    def poisoned():  # the 6th update's loss is NaN or huge, as when the parameters blew up
        stats, staleness = advance()
        if trainer.updates == 6:
            stats.loss = float("nan") if loss == "nan" else 1e10 * stats.tokens
        return stats, staleness

    trainer.workers.advance = poisoned
    match = "loss is nan" if loss == "nan" else "loss is 1e[+]10 a token, over 10 times a uniform guess's"
    with pytest.raises(TrainingDiverged, match=f"{match}.* at update 6.*update 4"):
        trainer.run(progress=False)
    events = read_events(run / "events.jsonl")
    assert events[-1]["kind"] == "end" and events[-1]["diverged"] is True
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert saved["server"]["updates"] == 4 and torch.isfinite(saved["params"]).all()


def test_a_run_resumes_on_its_corpus_preprocessed_again(synthetic_raw: Path, tmp_path: Path):
    """Preprocessing the same raw text again gives the same vocabulary, and `--resume` takes it: the model
    file differs (sentencepiece records the temporary folder it was trained in), its vocabulary does not."""
    bin_dir, run = tmp_path / "bin", tmp_path / "run"
    assert run_cli("preprocess", str(synthetic_raw), str(bin_dir), "--vocab-size", "200")[0] == 0
    first = (bin_dir / "spm.model").read_bytes()
    common = ["--preset", "micro", "--devices", "cpu", "--max-tokens", "1024", "--valid-every", "0", "--quiet"]
    code, output = run_cli("train", str(bin_dir), str(run), *common, "--max-updates", "2")
    assert code == 0, output
    code, output = run_cli("preprocess", str(synthetic_raw), str(bin_dir), "--vocab-size", "200", "--force")
    assert code == 0, output
    assert (bin_dir / "spm.model").read_bytes() != first
    code, output = run_cli("train", str(bin_dir), str(run), *common, "--max-updates", "4", "--resume")
    assert code == 0, output
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 4


OUT_OF_MEMORY = {  # as CUDA raises it, and as the CPU's allocator does (a plain RuntimeError)
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 503808000 bytes."
    ),  # fmt: skip
}


@pytest.mark.parametrize("how", ["cuda", "cpu"])
def test_out_of_memory_in_a_training_step_is_one_line_naming_the_batch(synthetic_bin: Path, tmp_path: Path,
                                                                        monkeypatch, how: str):  # fmt: skip
    """A batch that runs the device out of memory (simulated here as CUDA raises it, and as the CPU does: a
    traceback until 2026-12-05) stops the run with one line that gives the batch's size and the option to
    lower; the checkpoints saved before it are kept."""
    from async_nmt.train import step

    real, calls = step.train_step, []

    def tight(model, batch, *args):
        calls.append(batch.src.shape)
        if len(calls) == 7:
            raise OUT_OF_MEMORY[how]()
        return real(model, batch, *args)

    monkeypatch.setattr(step, "train_step", tight)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(synthetic_bin), str(run), "--preset", "micro", "--devices", "cpu",
                                       "--max-tokens", "1024", "--max-updates", "20", "--valid-every", "4",
                                       "--valid-max-sentences", "5", "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = result.stderr.strip().splitlines()
    rows, width = calls[-1]
    assert f"cpu ran out of memory on a training batch of {rows} sentences (source {rows} x {width}," in line
    assert "--max-tokens" in line
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 4


def test_out_of_memory_in_validation_names_nmt_trains_options(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """A valid sentence that alone runs the device out of memory in validation's search is one line that
    names nmt-train's options: it named `nmt translate`'s (--beam, --max-len-a, --device), which nmt-train has
    not, until 2026-12-08."""
    from async_nmt import translate

    def generate(model, src, beam, **kwargs):
        raise OUT_OF_MEMORY["cpu"]()

    monkeypatch.setattr(translate, "generate", generate)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(synthetic_bin), str(run), "--preset", "micro", "--devices", "cpu",
                                       "--max-tokens", "1024", "--max-updates", "2", "--valid-every", "0",
                                       "--valid-max-sentences", "5", "--valid-beam", "2", "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "ran out of memory translating one sentence" in line and "with beam 2;" in line, line
    assert "--valid-beam" in line and "--devices" in line, line
    assert not any(option in line for option in ("--beam", "--max-len-a", "--device ", "--device,")), line
    # before its first checkpoint it says to start the run over: it said to resume, which was then refused
    assert "start it over (--force) with --devices of more memory" in line and "resume" not in line, line
    # and the batch searched again in halves first says what a resume cannot change (it said "a smaller
    # --max-tokens avoids this", which a resume keeps)
    assert (
        "in halves (a new run with a smaller --max-tokens, which batches validation too, avoids this)" in result.stderr
    ), result.stderr
    assert not (run / "checkpoints" / "last.pt").exists()

    monkeypatch.undo()
    search = translate.generate  # (the real search, until the run has a checkpoint)

    def generate_once_saved(model, src, beam, **kwargs):
        if (run / "checkpoints" / "last.pt").exists():
            raise OUT_OF_MEMORY["cpu"]()
        return search(model, src, beam, **kwargs)

    monkeypatch.setattr(translate, "generate", generate_once_saved)
    result = CliRunner().invoke(main, ["train", str(synthetic_bin), str(run), "--preset", "micro", "--devices", "cpu",
                                       "--max-tokens", "1024", "--max-updates", "4", "--valid-every", "2",
                                       "--valid-max-sentences", "5", "--valid-beam", "2", "--quiet",
                                       "--force"])  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "which a resume keeps: resume with --devices of more memory" in line, line


def test_keep_last_keeps_the_last_saves_that_nmt_average_and_translate_average_use(synthetic_bin: Path,
                                                                                    tmp_path: Path):  # fmt: skip
    from async_nmt.model.checkpoint import kept_checkpoints, read_checkpoint

    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=20, valid_every=5, valid_max_sentences=5, keep_last=2), run,
          progress=False)  # fmt: skip
    kept = kept_checkpoints(run)
    assert [p.name for p in kept] == ["update-15.pt", "update-20.pt"]  # the older saves (5, 10) were dropped
    for path in kept:
        assert read_checkpoint(path)["server"]["updates"] == int(path.stem.split("-")[1])
    code, output = run_cli("average", str(run), "--last", "2", "-o", str(tmp_path / "avg.pt"))
    assert code == 0, output
    mean = (read_checkpoint(kept[0])["params"] + read_checkpoint(kept[1])["params"]) / 2
    torch.testing.assert_close(read_checkpoint(tmp_path / "avg.pt")["params"], mean)

    source = (synthetic_bin / "test.src").read_text().splitlines()[:5]
    source_file = tmp_path / "src.txt"
    source_file.write_text("\n".join(source) + "\n")
    outputs = []
    for args in ([str(tmp_path / "avg.pt")], [str(run), "--average", "2"]):
        out = tmp_path / f"hyp{len(outputs)}.txt"
        code, output = run_cli("translate", *args, "-i", str(source_file), "-o", str(out), "--device", "cpu",
                               "--beam", "2")  # fmt: skip
        assert code == 0, output
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 5

    code, output = run_cli("average", str(run), "--last", "3", "-o", str(tmp_path / "avg3.pt"))
    assert code == 2 and "--keep-last 3" in output and len(output.strip().splitlines()) == 1


def test_patience_stops_when_the_last_validations_bring_no_better_bleu(synthetic_bin: Path, tmp_path: Path):
    from async_nmt.train.trainer import Trainer

    run = tmp_path / "run"
    trainer = Trainer(micro_config(synthetic_bin, max_updates=100, valid_every=2, patience=3, log_every=1), run)
    trainer.open_run(resume=False)
    bleus = iter([1.0, 5.0, 4.0, 5.0, 4.5, 9.0, 9.0])  # best at the 2nd; 3 validations without gain end it

    def validator(*args, **kwargs):
        return {"valid_loss": 1.0, "valid_ppl": 2.7, "bleu": next(bleus), "chrf": 0.0}

    validator.sources = ["ba"]  # (what the trainer's bar counts)
    trainer.validator = validator
    trainer.run(progress=False)
    events = read_events(run / "events.jsonl")
    assert [e["bleu"] for e in events if e["kind"] == "valid"] == [1.0, 5.0, 4.0, 5.0, 4.5]
    assert events[-1]["kind"] == "end" and events[-1]["updates"] == 10 and events[-1]["converged"] is True
    # a run that its patience stopped is left as it is when resumed (it trained one more interval)
    again = Trainer(micro_config(synthetic_bin, max_updates=100, valid_every=2, patience=3, log_every=1), run)
    assert again.open_run(resume=True) is False
    assert read_events(run / "events.jsonl") == events


def test_a_validation_that_ctrl_c_cut_short_is_done_when_the_run_resumes(
    synthetic_bin: Path, tmp_path: Path, monkeypatch
):
    """Ctrl-C during the validation at update 4: the run saves and stops; the resumed run validates at
    update 4 first, so its valid events, best.pt and patience are an uninterrupted run's."""
    scripted_validation(monkeypatch, [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)])
    cfg = micro_config(synthetic_bin, max_updates=6, valid_every=2)
    train(cfg, tmp_path / "whole", progress=False)

    ctrl_c_at_the_second_validation(monkeypatch, [(1.0, 3.0)])
    with pytest.raises(SystemExit) as stopped:
        train(cfg, tmp_path / "split", progress=False)
    assert stopped.value.code == 130
    assert read_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["server"]["updates"] == 4
    scripted_validation(monkeypatch, [(2.0, 2.0), (3.0, 1.0)])
    train(cfg, tmp_path / "split", resume=True, progress=False)

    def validations(run: str) -> list[tuple[int, float]]:
        return [(e["updates"], e["bleu"]) for e in read_events(tmp_path / run / "events.jsonl") if e["kind"] == "valid"]

    assert validations("split") == validations("whole") == [(2, 1.0), (4, 2.0), (6, 3.0)]


def test_a_second_ctrl_c_after_the_stops_save_says_it_is_saved(synthetic_bin: Path, tmp_path: Path, monkeypatch,
                                                                 capsys):  # fmt: skip
    """A second Ctrl-C while the stop waits for the workers to end, its save and end event written: the save
    stands, and the line says so (it said "interrupted" alone, where the first had said "unsaved")."""
    from async_nmt.train.modes.local import LocalWorker

    ctrl_c_at_the_second_validation(monkeypatch, [(1.0, 3.0)])
    close = LocalWorker.close

    def closed_then_interrupted(self):
        close(self)
        if any(e["kind"] == "end" for e in read_events(tmp_path / "run" / "events.jsonl")):
            raise KeyboardInterrupt

    monkeypatch.setattr(LocalWorker, "close", closed_then_interrupted)
    try:  # (a KeyboardInterrupt that escaped would stop pytest itself)
        train(micro_config(synthetic_bin, max_updates=6, valid_every=2), tmp_path / "run", progress=False)
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C ended the run as one stopped unsaved")
    except SystemExit as stopped:
        assert stopped.code == 130
    else:
        pytest.fail("the run was not stopped")
    assert capsys.readouterr().err.splitlines()[-1] == f"interrupted: saved {tmp_path / 'run/checkpoints/last.pt'}"
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["server"]["updates"] == 4


def test_a_ctrl_c_in_the_closing_save_ends_the_run_as_finished(synthetic_bin: Path, tmp_path: Path, monkeypatch,
                                                                capsys):  # fmt: skip
    """A Ctrl-C held off by the closing save (at --max-updates, its validation done) cuts nothing: the run
    ends as finished, exit 0. It ended as interrupted: `nmt report` then showed it as a run that --resume goes
    on with, and --resume said "nothing to do". A Ctrl-C in an earlier save still stops the run."""
    from async_nmt.report import load_run
    from async_nmt.train.trainer import Trainer

    save = Trainer.save

    def interrupted_at(update: int):
        def saved_then_interrupted(self, *args, **kwargs):
            save(self, *args, **kwargs)
            if self.updates == update:  # (as `uninterrupted` raises the held Ctrl-C as the save ends)
                raise KeyboardInterrupt

        monkeypatch.setattr(Trainer, "save", saved_then_interrupted)

    interrupted_at(4)
    summary = train(micro_config(synthetic_bin, max_updates=4, valid_every=2), tmp_path / "run", progress=False)
    end = read_events(tmp_path / "run" / "events.jsonl")[-1]
    assert summary["interrupted"] is False and end["kind"] == "end" and end["updates"] == 4
    assert end["interrupted"] is False and end["stopped_by"] == "--max-updates 4"
    assert load_run(tmp_path / "run").finished
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted after the run's end: it cut nothing, and {tmp_path / 'run'} is finished (--max-updates 4)"
    )

    interrupted_at(2)
    with pytest.raises(SystemExit) as stopped:
        train(micro_config(synthetic_bin, max_updates=4, valid_every=2), tmp_path / "early", progress=False)
    end = read_events(tmp_path / "early" / "events.jsonl")[-1]
    assert stopped.value.code == 130 and end["interrupted"] is True and end["updates"] == 2


def test_an_error_in_the_stop_of_a_ctrl_c_ends_the_log_as_failed(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """A Ctrl-C whose save fails (a full disk) left no end event: `nmt report` showed the run as one that
    --resume goes on with."""
    import errno

    from async_nmt.train.trainer import Trainer

    ctrl_c_at_the_second_validation(monkeypatch, [(1.0, 3.0)])
    save = Trainer.save

    def full_at_update_4(self, *args, **kwargs):
        if self.updates == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.run_dir / "checkpoints"))
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "save", full_at_update_4)
    with pytest.raises(OSError):
        train(micro_config(synthetic_bin, max_updates=6, valid_every=2), tmp_path / "run", progress=False)
    end = read_events(tmp_path / "run" / "events.jsonl")[-1]
    assert end["kind"] == "end" and end["updates"] == 4 and "No space left on device" in end["failed"]


def ctrl_c_at_the_second_validation(monkeypatch, scores: list[tuple[float, float]]) -> None:
    """Validation returns these (BLEU, valid loss) in turn (`scripted_validation`), and Ctrl-C comes in the
    second."""
    from async_nmt.train import validate

    scripted_validation(monkeypatch, scores)
    fake = validate.Validator.__call__

    def interrupted(self, *args, **kwargs):
        if getattr(self, "_calls", 0) == 1:
            raise KeyboardInterrupt
        self._calls = getattr(self, "_calls", 0) + 1
        return fake(self, *args, **kwargs)

    monkeypatch.setattr(validate.Validator, "__call__", interrupted)


def scripted_validation(monkeypatch, scores: list[tuple[float, float]]) -> None:
    """Validation returns these (BLEU, valid loss) in turn, whatever the model."""
    from async_nmt.train import validate

    queue = list(scores)

    def fake(self, model, sp, amp_dtype, progress=None, resumable=True):
        bleu, loss = queue.pop(0)
        return {"valid_loss": loss, "valid_ppl": 1.0, "bleu": bleu, "chrf": bleu}

    monkeypatch.setattr(validate.Validator, "__call__", fake)


@pytest.mark.parametrize(("at_8", "best_at"), [((7, 1.2), 8), ((7.000001, 1.6), 4), ((7.004, 1.6), 4)])
def test_best_pt_is_the_checkpoint_of_the_best_bleu_ties_going_to_the_lower_loss(
    synthetic_bin: Path, tmp_path: Path, monkeypatch, at_8: tuple[float, float], best_at: int
):
    # updates 2, 4, 6, 8, 10: the best BLEU is 7 at 4 and at 8, where the loss is lower; the end validates 10.
    # BLEUs that differ only past the 2 decimals shown are ties (7.000001 at a higher loss was best.pt)
    scripted_validation(monkeypatch, [(3, 2.0), (7, 1.5), (5, 1.0), at_8, (6, 1.1)])
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=10, valid_every=2), run, progress=False)
    assert read_checkpoint(run / "checkpoints" / "best.pt")["server"]["updates"] == best_at
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 10
    valid = [e for e in read_events(run / "events.jsonl") if e["kind"] == "valid"]
    best_8 = at_8[0] if best_at == 8 else 7
    assert [e["best_bleu"] for e in valid] == [3, 7, 7, best_8, best_8]


def test_patience_stops_after_n_validations_without_a_better_bleu(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    scripted_validation(monkeypatch, [(3, 2.0), (7, 1.5), (6, 1.0), (7, 1.6), (5, 1.0), (9, 1.0)])
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=20, valid_every=2, patience=3), run, progress=False)
    end = read_events(run / "events.jsonl")[-1]
    assert end["updates"] == 10 and end["converged"] is True  # best at 4; 6, 8 (a tie, higher loss) and 10 not
    assert end["stopped_by"] == "--patience 3"
    # the updates since the last train event (every 50 updates) are logged before each validation that may
    # stop the run (those before the last one were not: the stop came after the logging)
    trained = [e for e in read_events(run / "events.jsonl") if e["kind"] == "train"]
    assert [e["updates"] for e in trained] == [2, 4, 6, 8, 10]


def test_patience_counts_validations_across_a_resume_with_another_valid_every(
    synthetic_bin: Path, tmp_path: Path, monkeypatch
):
    """--patience N is N validations without a better one, as the README says, not N x --valid-every updates:
    a resume with another --valid-every (or one after a --max-time stop, whose closing validation is off the
    grid) stopped a validation or more late, or early."""
    scripted_validation(monkeypatch, [(5, 1.0)] + [(4, 1.0)] * 9)  # the best at update 2, none better after
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=4, valid_every=2, patience=3), run, progress=False)
    # validated at 2 (the best) and 4; then every 4 updates: 8 and 12 make three without a better one
    train(micro_config(synthetic_bin, max_updates=40, valid_every=4, patience=3), run, resume=True, progress=False)
    events = read_events(run / "events.jsonl")
    assert [e["updates"] for e in events if e["kind"] == "valid"] == [2, 4, 8, 12]
    assert (events[-1]["updates"], events[-1]["stopped_by"]) == (12, "--patience 3")


def test_a_resumed_run_knows_its_last_validation_for_the_summary(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """The summary's "last valid" is the run's, as its other rows are: a resumed session that Ctrl-C stopped
    before it validated printed none, though the run had validated."""
    from async_nmt.train.trainer import Trainer

    scripted_validation(monkeypatch, [(5, 1.0), (4, 0.9)])
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=4, valid_every=2), run, progress=False)
    trainer = Trainer(micro_config(synthetic_bin, max_updates=8, valid_every=2), run)
    assert trainer.open_run(resume=True) is True
    assert trainer.last_valid is not None and (trainer.last_valid["bleu"], trainer.last_valid["valid_loss"]) == (4, 0.9)


def test_the_max_time_that_stopped_a_run_is_named_as_given(synthetic_bin: Path, tmp_path: Path):
    """`stopped_by` (the end event, the summary, "nothing to do") names --max-time as the command line gave
    it: 1234567 seconds read "--max-time 1.23457e+06", another number."""
    from async_nmt.train.events import TrainingClock
    from async_nmt.train.trainer import Trainer

    trainer = Trainer(micro_config(synthetic_bin, max_time=1234567.0), tmp_path / "run")
    trainer.clock = TrainingClock(1234568.0)
    assert trainer.limit_reached() == "--max-time 1234567"


def test_max_epochs_counts_the_batches_trained_on_in_an_emulation(synthetic_bin: Path, tmp_path: Path):
    """--simulate takes each worker's next batches ahead of its push: they were counted as trained, and
    --max-epochs 1 stopped after 12 of an epoch's 19 batches (with --local-accum 4)."""
    from async_nmt.data.batches import BatchStream
    from async_nmt.data.binarize import load_manifest, load_split

    run = tmp_path / "run"
    cfg = micro_config(synthetic_bin, mode="async", workers=2, simulate=True, local_accum=4, max_epochs=1,
                       max_tokens=4096)  # fmt: skip
    train(cfg, run, progress=False, log_every=1)
    split = load_split(synthetic_bin, "train")
    max_len = model_config("micro", load_manifest(synthetic_bin)["vocab_size"]).max_positions
    epoch = sum(len(BatchStream(split, 4096, max_len, 7, w, 2)) for w in range(2))
    end = read_events(run / "events.jsonl")[-1]
    trained = end["pushes"] * 4
    assert end["stopped_by"] == "--max-epochs 1" and trained - 4 < epoch <= trained, (end["pushes"], epoch)
    assert end["epoch"] == round(trained / epoch, 4)


def test_a_save_at_the_last_update_is_written_once(synthetic_bin: Path, tmp_path: Path):
    """--save-every dividing --max-updates saved the last update, then its closing validation saved it again."""
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=6, save_every=3, valid_every=0), run, progress=False)
    saved = [(e["updates"], e["best"]) for e in read_events(run / "events.jsonl") if e["kind"] == "checkpoint"]
    assert saved == [(3, False), (6, True)]


def test_the_training_clock_starts_at_the_start_event(learned_run: Path, synthetic_bin: Path, tmp_path: Path):
    """It ran from the trainer's making: a new run's start event said 0.03-0.07 s of set-up in train_s, and a
    resumed one's as much past its save's. (The bounds, 0.01 s, leave room for a loaded machine: a resume took
    0.004 s under a load of 8 on 2 cores, where 0.002 failed.)"""
    start = read_events(learned_run / "events.jsonl")[0]
    assert start["kind"] == "start" and start["train_s"] < 0.01, start  # (it is some 1e-4 s now)
    run = tmp_path / "copy"
    shutil.copytree(learned_run, run)
    saved = read_checkpoint(run / "checkpoints" / "last.pt")["train_s"]
    train(micro_config(synthetic_bin, max_updates=301, valid_every=150), run, resume=True, progress=False)
    resumed = [e for e in read_events(run / "events.jsonl") if e["kind"] == "start"][-1]
    assert resumed["updates"] == 300 and resumed["train_s"] == pytest.approx(saved, abs=0.01)


def test_the_start_event_names_the_validation_sentences_that_nmt_report_compares(synthetic_bin: Path,
                                                                                  tmp_path: Path):  # fmt: skip
    from async_nmt.train.validate import Validator

    train(micro_config(synthetic_bin, max_updates=1, valid_max_sentences=40), tmp_path / "run", progress=False)
    start = read_events(tmp_path / "run" / "events.jsonl")[0]
    assert start["valid_crc32"] == Validator(synthetic_bin, 1024, 256, 40).fingerprint
    assert start["valid_crc32"] != Validator(synthetic_bin, 1024, 256, 20).fingerprint


def test_valid_beam_is_in_the_start_events_and_a_resume_keeps_it(synthetic_bin: Path, tmp_path: Path):
    """--valid-beam N validates with beam search of N beams (1, the default, is greedy, as before it was an
    option); a resume that leaves it out keeps the run's, as the best BLEU so far was measured with it."""
    run = tmp_path / "run"
    common = ["--preset", "micro", "--devices", "cpu", "--max-tokens", "512", "--valid-max-sentences", "5", "--quiet"]
    code, output = run_cli("train", str(synthetic_bin), str(run), *common, "--max-updates", "1", "--valid-beam", "3")
    assert code == 0, output
    code, output = run_cli("train", str(synthetic_bin), str(run), "--resume", "--quiet", "--max-updates", "2")
    assert code == 0, output
    assert [e["valid_beam"] for e in read_events(run / "events.jsonl") if e["kind"] == "start"] == [3, 3]
    assert load_json(RunConfig, run / "config.json").train.valid_beam == 3
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "greedy"), *common, "--max-updates", "1")
    assert code == 0, output
    assert read_events(tmp_path / "greedy" / "events.jsonl")[0]["valid_beam"] == 1


def test_max_epochs_stops_at_the_end_of_the_epoch(synthetic_bin: Path, tmp_path: Path):
    from async_nmt.data.batches import BatchStream
    from async_nmt.data.binarize import load_split

    cfg = micro_config(synthetic_bin, max_epochs=1)
    batches = len(BatchStream(load_split(synthetic_bin, "train"), cfg.max_tokens, 256, cfg.seed))
    train(cfg, tmp_path / "run", progress=False)
    end = read_events(tmp_path / "run" / "events.jsonl")[-1]
    assert end["updates"] == batches and end["epoch"] == pytest.approx(1.0) and end["stopped_by"] == "--max-epochs 1"


@pytest.mark.parametrize("speeds", [[1.0, 0.25], [0.25, 1.0]])
def test_an_epoch_counts_every_workers_batches_whatever_their_speeds(synthetic_bin: Path, tmp_path: Path, speeds):
    """Async workers at different speeds: --max-epochs 1 trains one pass over the data, however the workers
    share it (the epoch was worker 0's progress alone: 65% of the data with speeds 1 and 0.5, 128% with
    0.5 and 1)."""
    from async_nmt.data.batches import BatchStream
    from async_nmt.data.binarize import load_split

    cfg = micro_config(synthetic_bin, mode="async", workers=2, simulate=True, worker_speeds=speeds, max_epochs=1)
    split = load_split(synthetic_bin, "train")
    batches = sum(len(BatchStream(split, cfg.max_tokens, 256, cfg.seed, w, 2)) for w in range(2))
    train(cfg, tmp_path / "run", progress=False)
    end = read_events(tmp_path / "run" / "events.jsonl")[-1]
    # (an emulated worker holds its next batch: the data positions run up to one batch a worker ahead)
    assert batches - 2 <= end["pushes"] <= batches + 2 and end["epoch"] >= 1.0


def test_a_nan_valid_loss_stops_the_run_without_saving_it(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    from async_nmt.errors import TrainingDiverged

    scripted_validation(monkeypatch, [(3, 2.0), (4, float("nan"))])
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="the valid loss is nan"):
        train(micro_config(synthetic_bin, max_updates=10, valid_every=2), run, progress=False)
    assert read_checkpoint(run / "checkpoints" / "best.pt")["server"]["updates"] == 2
    assert read_checkpoint(run / "checkpoints" / "last.pt")["server"]["updates"] == 2
    assert read_events(run / "events.jsonl")[-1]["diverged"] is True


def test_an_update_taken_as_soon_as_the_gate_opens_is_still_logged_and_saved(synthetic_bin: Path, tmp_path: Path,
                                                                             monkeypatch):  # fmt: skip
    """Async workers holding a computed push take the update that `allow` lets in at once, before the trainer
    reads the update count: that update must still get its train event and its checkpoint (they were skipped,
    and the next event counted two pushes; seen once in CI). Workers that push inside `allow` stand for them."""
    from async_nmt.model.checkpoint import kept_checkpoints
    from async_nmt.train import trainer as trainer_module

    class EagerWorkers:
        def __init__(self, inner):
            self.inner, self.early = inner, []

        def allow(self, updates: int) -> None:
            self.inner.allow(updates)
            if self.inner.server.updates < updates:
                self.early.append(self.inner.advance())

        def advance(self):
            return self.early.pop()

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

    build = trainer_module.build_workers
    monkeypatch.setattr(trainer_module, "build_workers", lambda ctx: EagerWorkers(build(ctx)))
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=6, save_every=2, keep_last=10), run, progress=False, log_every=1)
    trained = [e for e in read_events(run / "events.jsonl") if e["kind"] == "train"]
    assert [e["updates"] for e in trained] == [1, 2, 3, 4, 5, 6]
    assert [sum(e["staleness_hist"]) for e in trained] == [1] * 6
    assert [p.name for p in kept_checkpoints(run)] == ["update-2.pt", "update-4.pt", "update-6.pt"]


def test_a_rewound_run_replaces_the_kept_saves_it_makes_again(synthetic_bin: Path, tmp_path: Path, capsys):
    """A run resumed from an older save (last.pt replaced by update-2.pt) kept the abandoned run's
    update-4.pt and update-6.pt, which `nmt average --last` then mixed in. It deletes them, and says so (they
    went without a word, where the run's own message said how to rewind)."""
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=6, save_every=2, keep_last=10), run, progress=False)
    abandoned = (run / "checkpoints" / "update-4.pt").read_bytes()
    (run / "checkpoints" / "last.pt").unlink()  # (a hard link of update-6.pt: cp would write through it)
    shutil.copyfile(run / "checkpoints" / "update-2.pt", run / "checkpoints" / "last.pt")
    capsys.readouterr()
    train(micro_config(synthetic_bin, max_updates=4, save_every=2, keep_last=10, lr=1e-4), run, resume=True,
          progress=False)  # fmt: skip
    assert (f"warning: {run} resumes from update 2: the kept saves after it are deleted (update-4.pt, update-6.pt), "
            "and its events after it\n") in capsys.readouterr().err  # fmt: skip
    again = (run / "checkpoints" / "update-4.pt").read_bytes()
    assert again != abandoned and again == (run / "checkpoints" / "last.pt").read_bytes()
    assert sorted(p.name for p in (run / "checkpoints").glob("update-*.pt")) == ["update-2.pt", "update-4.pt"]


@pytest.mark.parametrize(
    "rewind_to, best_at, kept, best_pt",
    [(2, 2, True, "abandoned"), (4, 2, True, "abandoned"), (4, 2, False, "abandoned"), (4, 2, True, "missing")],
)
def test_a_rewound_runs_best_pt_is_its_best_save_again(synthetic_bin: Path, tmp_path: Path, capsys, rewind_to: int,
                                                       best_at: int, kept: bool, best_pt: str):  # fmt: skip
    """Rewound to an older last.pt, a run kept a best.pt of the updates it abandoned: the summary and `nmt
    report` named the best save as of the rewind, and `nmt translate RUN` took the abandoned model without a
    word. best.pt is made again from the save of the run's best update (last.pt, or a kept one), or deleted
    where there is none. A best.pt that is missing is made again from a kept save too (it was lost where
    last.pt was not the best save)."""
    run, saves = tmp_path / "run", tmp_path / "run" / "checkpoints"
    options = dict(save_every=2, valid_every=2, valid_max_sentences=4, keep_last=10)
    train(micro_config(synthetic_bin, max_updates=6, **options), run, progress=False)
    state = read_checkpoint(saves / f"update-{rewind_to}.pt")  # (its record of the best save, made certain)
    state["best"] = {**state["best"], "updates": best_at}
    (saves / "last.pt").unlink()  # (a hard link of update-6.pt: a write would reach it)
    save_checkpoint(state, saves / "last.pt")
    (saves / "best.pt").unlink()
    if best_pt == "abandoned":
        shutil.copyfile(saves / "update-6.pt", saves / "best.pt")  # best as the abandoned run went on
    if not kept:
        (saves / f"update-{best_at}.pt").unlink()
    capsys.readouterr()
    train(micro_config(synthetic_bin, max_updates=rewind_to + 1, **options), run, resume=True, progress=False)
    err = capsys.readouterr().err
    source = "last.pt" if rewind_to == best_at else f"update-{best_at}.pt"
    if best_pt == "missing":
        assert f"warning: {saves / 'best.pt'} was missing; made again from {source}, which is the run's best save (" \
               f"update {best_at}, valid BLEU " in err, err  # fmt: skip
    else:
        was = f"warning: {saves / 'best.pt'} held update 6, not the run's best save (update {best_at}, valid BLEU "
        assert was in err, err
        if kept:
            assert f"); made again from {source}\n" in err
        else:
            assert "), which is lost; best.pt is deleted, and written again at the next validation" in err
    best = read_checkpoint(saves / "last.pt")["best"]  # the run's, as it ended (a validation at its end)
    if (saves / "best.pt").exists():
        assert read_checkpoint(saves / "best.pt")["server"]["updates"] == best["updates"] != 6
    else:
        assert not kept and best["updates"] == best_at


def test_a_run_rewound_to_before_its_first_validation_or_to_its_limit_leaves_nothing_it_abandons(
    synthetic_bin: Path, tmp_path: Path, capsys
):
    """Rewound to a save from before any validation, a run kept the best.pt of the updates it abandoned (its
    record of a best save is none, and the check stopped there); rewound to a save at its limit, it said
    "nothing to do" and kept the abandoned kept saves and best.pt (`nmt average`, `nmt translate` took them)."""
    run, saves = tmp_path / "run", tmp_path / "run" / "checkpoints"
    options = dict(save_every=1, valid_every=3, valid_max_sentences=4, keep_last=10)
    train(micro_config(synthetic_bin, max_updates=6, **options), run, progress=False)
    assert read_checkpoint(saves / "update-2.pt")["best"] is None
    shutil.copytree(saves, tmp_path / "saves")
    for rewind_to, limit in ((2, 2), (4, 4)):  # (the second: update 4 is a limit; it validated at 3)
        (saves / "last.pt").unlink()  # (a hard link of the last kept save)
        shutil.copyfile(tmp_path / "saves" / f"update-{rewind_to}.pt", saves / "last.pt")
        shutil.copyfile(tmp_path / "saves" / "update-6.pt", saves / "best.pt")  # as the abandoned updates left it
        shutil.copyfile(tmp_path / "saves" / "update-6.pt", saves / "update-9.pt")  # (a kept save of them)
        capsys.readouterr()
        train(micro_config(synthetic_bin, max_updates=limit, **options), run, resume=True, progress=False)
        err = capsys.readouterr().err
        assert "nothing to do" not in err and f"resumes from update {rewind_to}: the kept saves after it" in err, err
        assert max(kept_update(path) for path in kept_checkpoints(run)) == rewind_to
        if rewind_to == 2:
            assert f"{saves / 'best.pt'} held update 6, after update 2, where the run resumes before any " in err
        best = read_checkpoint(saves / "last.pt")["best"]  # (the run's, as it ended: a validation at its end)
        assert read_checkpoint(saves / "best.pt")["server"]["updates"] == best["updates"] <= rewind_to


def test_more_devices_than_workers_is_warned_of(synthetic_bin: Path, tmp_path: Path):
    """`--devices cuda:0,cuda:1,cuda:2,cuda:3` without `--workers 4` trained on one device without a word."""
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "run"), "--preset", "micro", "--devices",
                           "cpu,cpu", "--max-updates", "1", "--valid-max-sentences", "3", "--quiet")  # fmt: skip
    assert code == 0, output
    assert "warning: --devices names 2 devices but --workers is 1: only cpu trains; give --workers 2" in output


@pytest.mark.parametrize("mode, accum, summed", [("async", [], ""), ("async-accum", ["--accum", "3"],
                                                                        ", the sum of 3 in turn")])  # fmt: skip
def test_an_async_mode_with_one_worker_is_warned_of(synthetic_bin: Path, tmp_path: Path, mode, accum, summed):
    """`--mode async` without `--workers N` trained as sync does, with no word that nothing was asynchronous."""
    code, output = run_cli("train", str(synthetic_bin), str(tmp_path / "run"), "--preset", "micro", "--devices", "cpu",
                           "--mode", mode, *accum, "--max-updates", "1", "--valid-max-sentences", "3",
                           "--quiet")  # fmt: skip
    assert code == 0, output
    assert (f"warning: --mode {mode} with one worker trains as sync does (one worker's gradient an update{summed}, "
            "never stale); give --workers N for N workers") in output  # fmt: skip


@pytest.mark.parametrize("options", [{}, {"mode": "async-accum", "workers": 2, "accum": 2, "simulate": True}],
                         ids=["one worker", "simulated async-accum"])  # fmt: skip
def test_a_run_killed_after_a_save_logs_every_update_once_resumed(synthetic_bin: Path, tmp_path: Path, options):
    """Killed (kill -9) after a save between two `train` events, a run resumed from that save never logged the
    updates between the last event and the save: the resumed event covered only those after it (the audit:
    28 of 30 updates in the events; loss 4.522 where the straight run logged 4.663)."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cfg = micro_config(synthetic_bin, max_updates=10, save_every=3, keep_last=10, **options)
    train(cfg, straight, progress=False, log_every=5)
    shutil.copytree(straight, killed)
    (killed / "checkpoints" / "last.pt").unlink()  # killed after the save at 3, with an event at 5 in the log
    shutil.copyfile(killed / "checkpoints" / "update-3.pt", killed / "checkpoints" / "last.pt")
    train(cfg, killed, resume=True, progress=False, log_every=5)
    logged = [[e for e in read_events(run / "events.jsonl") if e["kind"] == "train"] for run in (straight, killed)]
    assert [e["updates"] for e in logged[1]] == [e["updates"] for e in logged[0]] == [5, 10]
    for ours, theirs in zip(*logged, strict=True):  # the same pushes in each event, the same mean loss
        assert ours["staleness_hist"] == theirs["staleness_hist"] and ours["pushes"] == theirs["pushes"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


def test_a_japanese_target_is_warned_of_as_the_run_starts(synthetic_bin: Path, tmp_path: Path, capsys):
    """Its valid BLEU is 13a's, about 0, and that chose best.pt without a word."""
    japanese = bin_with_target(synthetic_bin, tmp_path / "ja", "ja")
    train(micro_config(japanese, max_updates=1, valid_max_sentences=5), tmp_path / "run", progress=False)
    assert "warning: ja is written without spaces between words" in capsys.readouterr().err
    train(micro_config(synthetic_bin, max_updates=1, valid_max_sentences=5), tmp_path / "plain", progress=False)
    assert "without spaces" not in capsys.readouterr().err


def test_the_progress_bar_times_training_without_its_validations(synthetic_bin: Path, tmp_path: Path, monkeypatch):
    """On a terminal, the bar's elapsed time and rate took in every validation: its rate fell after each,
    and its time to go rose. Two validations of 3 s each must not show on it."""
    import io
    import re
    import time

    from async_nmt.train.trainer import Trainer

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    trainer = Trainer(micro_config(synthetic_bin, max_updates=4, valid_every=2, log_every=1), tmp_path / "run")
    trainer.open_run(resume=False)
    validate = type(trainer.validator).__call__

    def slow_validation(*args, **kwargs):  # (on the training clock's pause, as a validation is)
        time.sleep(3.0)
        return validate(*args, **kwargs)

    monkeypatch.setattr(type(trainer.validator), "__call__", slow_validation)
    monkeypatch.setattr(sys, "stderr", Terminal())
    trainer.run(progress=True)
    shown = re.findall(r"train: 100%.*?4/4 \[(\d+):(\d+)", sys.stderr.getvalue())
    assert shown, sys.stderr.getvalue()
    minutes, seconds = map(int, shown[-1])
    trained = read_events(tmp_path / "run" / "events.jsonl")[-1]["train_s"]  # the training clock
    assert 60 * minutes + seconds < trained + 3, (shown, trained)  # (with the validations: 6 s more and over)


def test_a_log_every_given_to_train_is_the_one_config_json_records(synthetic_bin: Path, tmp_path: Path):
    """`train(cfg, run, log_every=2)` logged every 2 updates while config.json said 50, the value a resume
    then took: the number was passed apart from the config. It now replaces the config's."""
    run = tmp_path / "run"
    train(micro_config(synthetic_bin, max_updates=4), run, progress=False, log_every=2)
    events = read_events(run / "events.jsonl")
    assert [e["updates"] for e in events if e["kind"] == "train"] == [2, 4]
    assert load_json(RunConfig, run / "config.json").train.log_every == 2 == events[0]["log_every"]


@pytest.mark.parametrize("mode", ["diloco", "sync"])
def test_a_run_stopped_by_patience_says_so_though_its_closing_validation_improved(synthetic_bin: Path,
                                                                                  tmp_path: Path, monkeypatch,
                                                                                  mode: str):  # fmt: skip
    """diloco stops at the end of the round under way (as a sync group stops at the step its ranks agree
    on): where the closing validation there found a better model, the end event said nothing had stopped
    the run (stopped_by null, converged false), and so did the summary ("stopped by -"). Validation here
    gives BLEU 0 and a loss that improves only at the closing validation, as the audit's runs did (the
    validations inside a round saw the parameters of its start)."""
    from async_nmt.train.trainer import Trainer
    from async_nmt.train.validate import Validator

    losses = iter([5.0, 5.0, 4.0, 3.0])
    monkeypatch.setattr(Validator, "__call__", lambda *a, **k: dict(valid_loss=next(losses), valid_ppl=1.0,
                                                                     bleu=0.0, chrf=0.0))  # fmt: skip
    cfg = micro_config(synthetic_bin, mode=mode, workers=2, simulate=True, valid_every=1, patience=1,
                       max_updates=40, **({"sync_every": 3} if mode == "diloco" else {}))  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.open_run(resume=False)
    if mode == "sync":  # a sync group's ranks agree to stop one step after the leader's wish
        agree_stop, wished_at = trainer.workers.agree_stop, []

        def one_step_later(wish: bool) -> bool:
            if wish and not wished_at:
                wished_at.append(trainer.updates)
            return agree_stop(bool(wished_at) and trainer.updates > wished_at[0])

        trainer.workers.agree_stop = one_step_later
    end = trainer.run(progress=False)
    assert end["updates"] == 3, end
    assert (end["stopped_by"], end["converged"]) == ("--patience 1", True), end


def test_a_second_ctrl_c_stops_an_update_under_way_at_once(synthetic_bin: Path, tmp_path: Path):
    """One worker (or --simulate) holds Ctrl-C until the update under way is done, so that the checkpoint
    holds whole updates. A slow update (here --local-accum 2000) held every signal without a word: a second
    Ctrl-C, or `timeout`'s, did nothing until it ended (an audit's update of 11 minutes needed kill -9). The
    first now says so at once, and a second stops at once, unsaved, as elsewhere."""
    import signal
    import time

    from async_nmt.train.trainer import UPDATE_HELD

    run = tmp_path / "run"
    # (2,000 batches of 2 sentences: a push of most of an epoch, the most --local-accum may sum)
    proc = _nmt_train(synthetic_bin, run, "--preset", "micro", "--devices", "cpu", "--max-tokens", "16",
                      "--valid-every", "0", "--local-accum", "2000", "--max-updates", "1")  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(e["kind"] == "start" for e in _events(run)):
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)  # (a second within errors.REPEAT_S is the same notice)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # no-op when it ended
    assert proc.returncode == 130, stderr
    assert UPDATE_HELD in stderr and "interrupted: saved" not in stderr and "Traceback" not in stderr, stderr
    assert not (run / "checkpoints" / "last.pt").exists()
    assert not any(e["kind"] in ("train", "end") for e in _events(run))  # it stopped within its first update


def test_the_start_event_records_the_worker_speeds_and_shards_a_resume_may_change(synthetic_bin: Path,
                                                                                   tmp_path: Path):  # fmt: skip
    """A resume may change --worker-speeds and --shards; the start events did not say which were in force, nor,
    for --shards 0 (one per device), how many shards the server had: `server_shards`."""

    def starts(run: Path) -> list[tuple]:
        events = read_events(run / "events.jsonl")
        return [(e["worker_speeds"], e["shards"], e["server_shards"]) for e in events if e["kind"] == "start"]

    common = dict(mode="async", workers=2, valid_every=0)
    speeds = dict(simulate=True, worker_speeds=[1.0, 0.5])  # emulated workers: one shard
    train(micro_config(synthetic_bin, **common, **speeds, max_updates=2), tmp_path / "a", progress=False)
    train(micro_config(synthetic_bin, **common, simulate=True, max_updates=4), tmp_path / "a", resume=True,
          progress=False)  # fmt: skip
    assert starts(tmp_path / "a") == [([1.0, 0.5], 0, 1), ([], 0, 1)]
    # worker processes share a server of --shards S (0: one per device, here one: cpu)
    train(micro_config(synthetic_bin, **common, max_updates=1, shards=3), tmp_path / "b", progress=False)
    assert starts(tmp_path / "b") == [([], 3, 3)]
