"""Devices, processes and precision shared by the generator kinds (one multi-process mechanism: accelerate).

Under ``accelerate launch`` (or torchrun) every process gets its rank from accelerate's state; a single process
gets rank 0 of 1. Training loops use :func:`make_accelerator` (placement, DDP) and :class:`DataParallel` (each
process takes its share of every global batch, so N processes train what one would); stages use
``process_index`` / ``num_processes`` / ``wait_for_everyone`` of the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DataParallel:
    """The processes that train one model together (data parallelism; ``world == 1``: a plain single process).

    Every process draws the same global batch from the same seeded generator and keeps its ``share`` of the rows;
    the model is wrapped in DDP, which averages the gradients. The local loss of :meth:`local_loss` (own mean x
    rows x world / batch) makes that average the gradient of the global batch mean, also when the batch does not
    divide evenly, so N processes follow the 1-process trajectory up to float reduction order."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls, device: str = "auto") -> DataParallel:
        rank, world, _ = processes(device)
        return cls(rank, world)

    def share(self, n: int) -> slice:
        """This process's contiguous rows of a batch of ``n`` (sizes differ by at most one)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def check_batch(self, n: int, key: str) -> None:
        if n < self.world:
            raise UserError(f"{key} is {n} but {self.world} processes train this model together: each needs at "
                            f"least one image per step (raise {key} or launch fewer processes)")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP around ``model`` when several processes train it (gloo on CPU, nccl on GPU), else ``model``."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = None
        if device.type == "cuda":
            ids = [device.index if device.index is not None else torch.cuda.current_device()]
        return DistributedDataParallel(model, device_ids=ids)

    def local_loss(self, mean: torch.Tensor, n_local: int, batch: int) -> torch.Tensor:
        """The loss to back-propagate, from the mean loss over this process's ``n_local`` rows of ``batch``:
        weighted by its share so that DDP's gradient average is the gradient of the global batch mean."""
        return mean * (n_local * self.world / batch) if self.world > 1 else mean

    def global_mean(self, mean: torch.Tensor, n_local: int, batch: int) -> float:
        """The mean loss over the whole batch (the same number on every process)."""
        if self.world == 1:
            return float(mean.detach())
        import torch.distributed as dist

        total = (mean.detach().float() * n_local).reshape(1)
        dist.all_reduce(total)
        return float(total) / batch

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
