"""What would make the host wait for a GPU, counted on any device: every read of a tensor's values into Python
(`.item()`, `float()`, `int()`, `bool()`, `.tolist()`) and every operator whose output size depends on the
values (`nonzero`, `masked_select`, boolean-mask indexing). On a GPU each one waits for all the work queued
before it, so a training update must make none, and a search only the reads of its schedule."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from async_nmt.config import TrainConfig, model_config
from async_nmt.model import search as search_module
from async_nmt.model.search import beam_search, greedy_search
from async_nmt.model.transformer import Transformer
from async_nmt.train.processes import free_port, leave_group
from async_nmt.train.trainer import Trainer

DEVICE = torch.device(os.environ.get("ASYNC_NMT_TEST_DEVICE", "cpu"))  # cuda:0 runs these tests on a GPU
# Operators that read values back to the host (under inference mode `.item()` and `bool()` arrive as item and
# is_nonzero, elsewhere as _local_scalar_dense). repeat_interleave with an int repeat is not one: it expands.
READS = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.masked_select",
         "aten.equal", "aten._unique2", "aten.unique_consecutive", "aten.repeat_interleave.Tensor",
         "aten.repeat_interleave.self_Tensor"}  # fmt: skip


class HostReads(TorchDispatchMode):
    """Records each read of a tensor's values (see the module's docstring), except of the tensors `exempt`:
    counters that stay in host memory by design. `on_read()` says where it happened (a test's own count)."""

    def __init__(self, exempt: tuple[torch.Tensor, ...] = (), on_read=lambda: None) -> None:
        super().__init__()
        self.exempt = {t.untyped_storage().data_ptr() for t in exempt}
        self.on_read = on_read
        self.reads: list[tuple[str, object, str]] = []

    def note(self, what: str, tensor: torch.Tensor) -> None:
        if tensor.untyped_storage().data_ptr() not in self.exempt:
            self.reads.append((what, self.on_read(), "".join(traceback.format_stack(limit=5)[:-2])))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket)
        if name in READS or str(func).removesuffix(".default") in READS:
            self.note(str(func).removesuffix(".default"), args[0])
        elif name == "aten.index" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.note("boolean-mask indexing", args[0])
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostReads:
        self._tolist, mode = torch.Tensor.tolist, self

        def tolist(tensor: torch.Tensor):  # type: ignore[no-untyped-def]
            mode.note("tolist", tensor)
            return mode._tolist(tensor)

        torch.Tensor.tolist = tolist  # type: ignore[method-assign]  # reads memory without an operator
        return super().__enter__()

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]
        super().__exit__(*exc)


@pytest.mark.parametrize("inference", [False, True])
def test_the_probe_sees_each_kind_of_read(inference: bool):
    with torch.inference_mode(inference):
        x = torch.arange(6, device=DEVICE)
        with HostReads() as probe:
            float(x[0]), bool(x[1]), x.sum().item(), x.tolist(), x[x > 2], x.nonzero(), x.repeat_interleave(3)
    assert len(probe.reads) == 6, [what for what, _, _ in probe.reads]
    assert [what for what, _, _ in probe.reads][3:] == ["tolist", "boolean-mask indexing", "aten.nonzero"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_training_update_reads_nothing_back_from_the_device(synthetic_bin: Path, tmp_path: Path, precision: str):
    """The whole update of a one-worker run (next batch, copy, forward and backward with dropout, clipping,
    Adam) issues no read: the losses stay on the device until a log line needs them."""
    cfg = TrainConfig(bin_dir=str(synthetic_bin), preset="micro", max_tokens=1024, dropout=0.1, clip_norm=1.0,
                      devices=[str(DEVICE)], precision=precision, valid_every=0, seed=7)  # fmt: skip
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.workers.start()
    trainer.update()  # a first update makes what is made once (optimizer state, the bf16 copies)
    with HostReads(exempt=(trainer.server.counters, trainer.server.norms)) as probe:
        for _ in range(3):
            trainer.update()
    assert trainer.updates == 4
    assert not probe.reads, "".join(f"{what} at\n{where}" for what, _, where in probe.reads)


def _sync_rank(rank: int, world: int, port: int, cfg: TrainConfig, run_dir: Path, out: Path) -> None:
    """One rank of a sync group (spawned): three updates after a first one, under the probe; writes what it
    found to out/RANK.txt (empty: no read)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    device = torch.device(cfg.devices[rank])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    trainer = Trainer(cfg, run_dir, rank=rank, world=world)
    trainer.workers.start()
    # as the trainer's loop does: no save ahead (the step before one gathers the ranks' states, a read)
    trainer.workers.allow(trainer._next_fence())
    trainer.update()
    # host memory by design: the server's counters, and the agreement the step before copied to the host
    with HostReads(exempt=(trainer.server.counters, trainer.server.norms, trainer.workers.flags)) as probe:
        for _ in range(3):
            trainer.update()
            trainer.should_stop()
    reads = "".join(f"{what} at\n{where}" for what, _, where in probe.reads)
    (out / f"{rank}.txt").write_text(reads if trainer.updates == 4 else f"{trainer.updates} updates")
    leave_group()  # as a spawned rank of nmt-train ends


def test_a_sync_step_reads_nothing_back_from_the_device(synthetic_bin: Path, tmp_path: Path):
    """A sync rank's update (its batch, the other ranks' tokens, the all-reduces, Adam) and the agreement on
    stopping issue no read: the agreement is read one step late, when its all-reduce has long finished. On
    GPUs the test needs two: ranks sharing one GPU all-reduce through host memory (gloo), which reads."""
    if DEVICE.type == "cuda" and torch.cuda.device_count() < 2:
        pytest.skip("a sync group on GPUs needs two (NCCL)")
    devices = [str(DEVICE), "cuda:1"] if DEVICE.type == "cuda" else ["cpu", "cpu"]
    cfg = TrainConfig(bin_dir=str(synthetic_bin), preset="micro", mode="sync", workers=2, max_tokens=1024,
                      dropout=0.1, devices=devices, precision="fp32", valid_every=0, seed=7)  # fmt: skip
    torch.multiprocessing.start_processes(_sync_rank, (2, free_port(), cfg, tmp_path / "run", tmp_path), nprocs=2,
                                          start_method="spawn")  # fmt: skip
    for rank in range(2):
        reads = (tmp_path / f"{rank}.txt").read_text()
        assert not reads, f"rank {rank}: {reads}"


@pytest.mark.parametrize("fixed_shapes", [False, True])
@pytest.mark.parametrize("beam", [1, 4])
def test_a_search_reads_the_device_only_on_its_schedule(monkeypatch: pytest.MonkeyPatch, beam: int, fixed_shapes: bool):
    """Reads happen before the first step (the length limits), every `check_every` steps (which sentences
    have ended) and after the last step (the outputs), never in between."""
    torch.manual_seed(0)
    model = Transformer(model_config("tiny", 50, d_model=32, ff_dim=64, heads=2, enc_layers=1, dec_layers=2))
    model.to(DEVICE).eval()
    src = torch.randint(4, 50, (6, 9)).to(DEVICE)  # the same sentences on every device
    src[:, -1] = model.cfg.eos_id
    steps = [0]
    if fixed_shapes:  # each step is one call of what _replayable returns (on CUDA a graph replay), after its first
        replayable = search_module._replayable

        def counted_replayable(step, device):  # type: ignore[no-untyped-def]
            run = replayable(step, device)
            steps[0] += 1

            def counted_run() -> None:
                steps[0] += 1
                run()

            return counted_run

        monkeypatch.setattr(search_module, "_replayable", counted_replayable)
    else:  # one projection to the vocabulary a step
        project = Transformer.project

        def counted(self: Transformer, states: torch.Tensor) -> torch.Tensor:
            steps[0] += 1
            return project(self, states)

        monkeypatch.setattr(Transformer, "project", counted)
    search = greedy_search if beam == 1 else beam_search
    options = {} if beam == 1 else {"beam": beam}
    with HostReads(on_read=lambda: steps[0]) as probe:
        search(model, src, max_len_a=0, max_len_b=18, check_every=4, fixed_shapes=fixed_shapes, **options)
    last = steps[0]
    assert last >= 8  # the schedule was tested over several checks
    off = [(what, step, where) for what, step, where in probe.reads if step % 4 and step != last]
    assert not off, "".join(f"{what} after step {step} of {last}, at\n{where}" for what, step, where in off)
    assert len({step for _, step, _ in probe.reads if step not in (0, last)}) <= (last - 1) // 4
