"""Device names from the command line -> torch devices, with one-line errors for devices that are not there."""

from __future__ import annotations

import torch

from async_nmt.errors import UserError


def default_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str | None, option: str = "--devices") -> torch.device:
    """`None` means the first GPU if there is one, else the CPU; errors name the `option` that gave it. An
    empty name is refused (`--device ''` ran on the default device, as if no name were given)."""
    name = default_device() if name is None else name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"{option}: {name!r} is not a device (use cpu or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"{option}: {name} is not there (this machine has no usable GPU)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"{option}: {name} is not there (this machine has {torch.cuda.device_count()} GPUs)")
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise UserError(f"{option}: {name!r} is not supported (use cpu or cuda:N)")
    if device.index:  # torch takes cpu:N for the CPU, whatever N: no core or socket of its own
        raise UserError(f"{option}: {name} is not there (the CPU is one device: cpu)")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on GPUs and CPUs with native bf16 instructions: on CUDA from Ampere on (compute
    capability 8.0). (`torch.cuda.is_bf16_supported()` counts emulation too, slower than fp32 on a V100 or
    a T4, and asks of the current GPU, not `device`.)"""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of --precision on `device` (None: fp32)."""
    if precision == "bf16" or (precision == "auto" and bf16_supported(device)):
        return torch.bfloat16
    return None


def out_of_memory(err: BaseException) -> bool:
    """Whether `err` is a device running out of memory: CUDA's OutOfMemoryError, or one that torch raises as
    a plain RuntimeError: the CPU allocator's ("DefaultCPUAllocator: not enough memory: you tried to
    allocate N bytes", or "can't allocate memory" in older versions), cuBLAS's workspace that it could not
    allocate (CUBLAS_STATUS_ALLOC_FAILED), or a CUDA call's ("CUDA error: out of memory")."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    if not isinstance(err, RuntimeError):
        return False
    text = str(err)
    return ("DefaultCPUAllocator" in text and "allocate" in text) or any(
        sign in text for sign in ("CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory")
    )
