"""The table printed at the end of a run."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from async_nmt.config import ASYNC_MODES
from async_nmt.train.events import read_events, run_staleness

if TYPE_CHECKING:
    from async_nmt.train.trainer import Trainer


def print_summary(summary: dict[str, Any], trainer: Trainer) -> None:
    table = Table(title=f"run {trainer.run_dir}", show_header=False)
    stopped_by = "an interrupt (Ctrl-C or SIGTERM)" if summary["interrupted"] else summary.get("stopped_by") or "-"
    cfg = trainer.cfg
    how = [f"workers {cfg.workers}"] + [f"accum {cfg.accum}"] * (cfg.mode == "async-accum")
    how += [f"H {cfg.sync_every}, outer lr {cfg.outer_lr:g}, momentum {cfg.outer_momentum:g}"] * (cfg.mode == "diloco")
    how += ["lr / staleness (--staleness-lr inverse)"] * (cfg.staleness_lr == "inverse")
    how += ["simulated in one process"] * cfg.simulate
    rows = [
        ("mode", f"{cfg.mode} ({', '.join(how)})"),
        ("stopped by", stopped_by),
        ("updates", f"{summary['updates']:,}"),
        ("epochs", f"{summary['epoch']:.2f}"),
        ("target tokens", f"{summary['tokens']:,}"),
        ("training time", f"{seconds(summary['train_s'])} (wall {seconds(summary['wall_s'])})"),
        ("tokens/s", f"{summary['tokens'] / max(summary['train_s'], 1e-9):,.0f}"),
    ]
    if cfg.mode in ASYNC_MODES or cfg.mode == "diloco":  # the pushes' staleness over the whole run (a resumed
        # one too); diloco's is each worker step's inner steps since the last sync, as `nmt report` shows it
        mean, most, pushes = run_staleness(read_events(trainer.run_dir / "events.jsonl"))
        if mean is not None and cfg.mode == "diloco":
            rows.append(("steps since sync", f"mean {mean:.2f}, max {most} ({pushes:,} worker steps)"))
        elif mean is not None:
            rows.append(("staleness", f"mean {mean:.2f}, max {most} ({pushes:,} pushes)"))
    if "predicted_s" in summary:
        rate = summary["tokens"] / max(summary["predicted_s"], 1e-9)  # (tokens/s above: this one process's)
        rows.append(("predicted time", f"{seconds(summary['predicted_s'])} on {trainer.cfg.workers} real devices "
                                       f"({rate:,.0f} tokens/s)"))  # fmt: skip
    if trainer.last_valid:
        rows.append(
            (
                "last valid",
                f"loss {trainer.last_valid['valid_loss']:.3f}, BLEU {trainer.last_valid['bleu']:.2f}",
            )
        )
    lost = trainer.best_lost  # best.pt was gone at the resume (it warned): translate needs last.pt
    if trainer.best:
        saved = "lost" if lost else "best.pt"
        rows.append(("best valid BLEU", f"{trainer.best['bleu']:.2f} (update {trainer.best['updates']}: {saved})"))
    rows.append(("checkpoints", str(trainer.run_dir / "checkpoints")))
    if trainer.best:  # what a user does next (it translates with best.pt)
        last = " --checkpoint last" if lost else ""
        rows.append(("translate", f"nmt translate {shlex.quote(str(trainer.run_dir))}{last} < SOURCE > OUTPUT"))
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=True).print(table)


def seconds(value: float) -> str:
    """`12 s`, or `0.4 s` below 10 (a short run's predicted time showed as 0 s)."""
    return f"{value:.1f} s" if value < 10 else f"{value:,.0f} s"
