"""Devices, processes and precision shared by the generator kinds (one multi-process mechanism: accelerate).

Under ``accelerate launch`` (or torchrun) every process gets its rank from accelerate's state; a single process
gets rank 0 of 1. Training loops use :func:`make_accelerator` (placement, DDP); stages use ``process_index`` /
``num_processes`` / ``wait_for_everyone`` of the same object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from synthmed.errors import UserError


def resolve_precision(setting: str, device: torch.device,
                      key: str = "generator.ddpm.mixed_precision") -> torch.dtype | None:
    """The autocast dtype (None = fp32). ``auto``: bf16 on CUDA when supported else fp16; on CPU bf16 only where
    oneDNN has native bf16 (AVX512-BF16 / AMX): on AVX2-only CPUs bf16 autocast is ~10x slower than fp32."""
    if setting == "no":
        return None
    if device.type == "cuda":
        if setting == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if setting == "bf16" else torch.float16
    if setting == "fp16":
        raise UserError(f"{key}=fp16 needs a CUDA device (use bf16 or no on CPU)")
    if setting == "auto":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return torch.bfloat16 if native else None
    return torch.bfloat16


def make_accelerator(device: str = "auto") -> Any:
    """An ``accelerate.Accelerator`` for placement and DDP; mixed precision is handled by our own autocast."""
    from accelerate import Accelerator, PartialState
    from accelerate.state import AcceleratorState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but CUDA is not available")
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":", 1)[1]))
    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(True)  # one process: allow a new device setting in the same interpreter
    return Accelerator(cpu=cpu, mixed_precision="no")


def processes(device: str = "auto") -> tuple[int, int, Callable[[], None]]:
    """(process index, number of processes, barrier) from accelerate's state: (0, 1, no-op) for a plain run."""
    from accelerate import PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    return state.process_index, state.num_processes, state.wait_for_everyone
