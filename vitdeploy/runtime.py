"""Where torch work runs: the device, the autocast precision, and the processes of a torchrun job.

A command that runs models in torch opens a ``session`` (its ``--device``/``--amp`` options and,
under ``torchrun``, the process group from the environment torchrun sets) and library code reads
it with ``current()``. Without a session everything runs as before: one process, CPU, fp32.

Data parallelism follows DDP's arithmetic: ``--batch-size`` is the global batch; each process
takes one contiguous shard of it (``shard_bounds``); a step's loss on a shard is weighted by the
shard's share of the global batch and gradients are summed over processes (one bucketed
all-reduce), so 1 and N processes take the same optimisation step. Statistics a method decides
from (importance sums, calibration scores, accuracy counts) go through ``reduce_sum`` before the
decision, so every process decides the same. Only the main process (rank 0) writes files
(``vitdeploy.io`` stages nothing elsewhere) and shows progress bars.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from vitdeploy.errors import VitDeployError

T = TypeVar("T")
AMP_CHOICES = ("bf16", "fp16", "off")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
COLLECTIVE_POLL_S = 2e-4


@dataclass(frozen=True)
class Runtime:
    """One process's view of the job: its device, autocast precision, rank and the world size."""

    device: str = "cpu"
    amp: str = "off"
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes outputs and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast at this runtime's precision (a no-op with ``amp='off'``)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=_AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active for fp16 only (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.torch_device.type, enabled=self.amp == "fp16")

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        non_blocking = self.torch_device.type == "cuda"
        return tuple(t.to(self.torch_device, non_blocking=non_blocking) for t in tensors)

    @contextlib.contextmanager
    def on_device(self, *modules: torch.nn.Module) -> Iterator[None]:
        """``modules`` on this runtime's device for the body, then back where they were (models
        live on the CPU between passes; on the CPU this does nothing)."""
        if self.torch_device.type == "cpu":
            yield
            return
        homes = [next(module.parameters()).device for module in modules]
        for module in modules:
            module.to(self.torch_device)
        try:
            yield
        finally:
            for module, home in zip(modules, homes):
                module.to(home)

    def shard_bounds(self, count: int) -> tuple[int, int]:
        """This process's contiguous share ``[start, stop)`` of ``count`` items (sizes differ by at most 1)."""
        base, extra = divmod(count, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def shard(self, items):
        """This process's share of a sequence or tensor (``shard_bounds`` along the first axis)."""
        start, stop = self.shard_bounds(len(items))
        return items[start:stop]

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every process (a float64 copy on ``tensor``'s device); itself with one."""
        total = tensor.detach().to(torch.float64)
        if self.world_size == 1:
            return total
        work = total.to(self._collective_device)
        _collective(lambda: dist.all_reduce(work, async_op=True))
        return work.to(tensor.device)

    def global_count(self, local: int) -> int:
        """The number of items over every process, given this process's ``local`` count."""
        return local if self.world_size == 1 else int(self.reduce_sum(torch.tensor(float(local))).item())

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients over every process in place, in one bucketed all-reduce (DDP's job)."""
        if self.world_size == 1:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        bucket = torch.cat([g.reshape(-1) for g in grads]).to(self._collective_device)
        _collective(lambda: dist.all_reduce(bucket, async_op=True))
        offset = 0
        for grad in grads:
            grad.copy_(bucket[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def from_main(self, compute: Callable[[], T]) -> T:
        """``compute()`` run by the main process alone, its result handed to every process: for
        measurements (timing is only meaningful on a quiet machine, and every process must decide
        from the same figures) and for files the main process creates for all."""
        if self.world_size == 1:
            return compute()
        box = [compute() if self.main else None]
        _collective(lambda: dist.barrier(async_op=True))  # the long wait, interruptible
        _collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def require_divisible_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise VitDeployError(f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                                 f"{self.world_size} processes of this torchrun job")

    @property
    def _collective_device(self) -> torch.device:
        return self.torch_device if dist.get_backend() == "nccl" else torch.device("cpu")


_CURRENT: contextvars.ContextVar[Runtime] = contextvars.ContextVar("vitdeploy_runtime", default=Runtime())


def current() -> Runtime:
    """The runtime of the command in progress (one CPU process in fp32 when none was opened)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(runtime: Runtime) -> Iterator[Runtime]:
    """Make ``runtime`` the current one for the body (no process group is started: see ``session``)."""
    token = _CURRENT.set(runtime)
    try:
        yield runtime
    finally:
        _CURRENT.reset(token)


@contextlib.contextmanager
def session(runtime: Runtime) -> Iterator[Runtime]:
    """``runtime`` (see ``resolve``) as the current one, joined to its torchrun job when it has
    several processes; the job is left again at the end."""
    started = _join_job(runtime)
    try:
        with use(runtime):
            yield runtime
    finally:
        if started:
            dist.destroy_process_group()


def resolve(device: str | None = None, amp: str | None = None) -> Runtime:
    """The runtime for ``--device`` and ``--amp`` (None: CUDA when present, bf16 there, else CPU
    fp32) in the torchrun job the environment names (if any), checked against this machine."""
    rank, world_size, local_rank = (int(os.environ.get(k, d)) for k, d in
                                    (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = _device(device or ("cuda" if torch.cuda.is_available() else "cpu"), local_rank, world_size)
    kind = torch.device(device).type
    amp = amp or ("bf16" if kind == "cuda" else "off")
    if amp not in AMP_CHOICES:
        raise VitDeployError(f"--amp {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    if amp == "fp16" and kind != "cuda":
        raise VitDeployError("--amp fp16 needs a CUDA device (its loss scaling is for GPUs); on the CPU use "
                             "--amp bf16 or --amp off")
    return Runtime(device, amp, rank, world_size)


def _device(name: str, local_rank: int, world_size: int) -> str:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VitDeployError(f"--device {name!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise VitDeployError(f"--device {name!r}: vitdeploy trains on cpu or cuda")
    if device.type == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise VitDeployError(f"--device {name} asks for a GPU, but torch sees no CUDA device on this machine "
                             "(use --device cpu)")
    index = device.index if device.index is not None else (local_rank if world_size > 1 else 0)
    if index >= torch.cuda.device_count():
        raise VitDeployError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return f"cuda:{index}"


def _join_job(runtime: Runtime) -> bool:
    """Start the process group of a torchrun job (NCCL on GPUs, gloo on CPUs); False for one process."""
    if runtime.world_size == 1 or dist.is_initialized():
        return False
    if runtime.torch_device.type == "cuda":
        torch.cuda.set_device(runtime.torch_device)
    backend = "nccl" if runtime.torch_device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise VitDeployError(f"cannot join the torchrun job ({_first_line(exc)})") from None
    return True


def _collective(start: Callable[[], dist.Work | None]) -> None:
    """Run a collective; an asynchronous one is waited for in short sleeps, so that a signal (torchrun
    stopping the job after another process died) still reaches this process's handler. A peer that
    failed is one user-facing line."""
    try:
        work = start()
        while work is not None and not work.is_completed():
            time.sleep(COLLECTIVE_POLL_S)
        if work is not None:
            work.wait()
    except RuntimeError as exc:  # torch.distributed.DistError and the backends' own errors
        raise VitDeployError(f"another process of this torchrun job failed or stopped answering "
                             f"({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The gist of a backend's error: its first line, without gloo's or NCCL's source-location prefix."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line)
