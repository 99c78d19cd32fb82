"""Where and how tensors are computed: device choice, mixed precision, memory format.

Shared by training, embedding and evaluation so that all three run the model
the same way.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator

import torch

from contrastkit.errors import ConfigError


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on ``n`` threads inside the block, then restore the previous count.

    Small problems (a linear probe on a few thousand features, seed-label
    models) run faster on one thread, and on a busy CPU several threads can
    make them 100x slower (measured on 2 shared cores: 9 s instead of 0.06 s).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available here; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: Apple MPS is not available here; use --device auto or cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name!r} is not one of auto, cpu, cuda, mps")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    if platform.system() != "Linux":
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device``; None means plain fp32."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise ConfigError("--precision fp16 needs a CUDA device; use bf16 or fp32 on this device")
        return torch.float16
    if name == "bf16":
        return torch.bfloat16
    raise ConfigError(f"--precision {name!r} is not one of auto, bf16, fp16, fp32")


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """Autocast context for ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class Runtime:
    """How the model runs: device, autocast dtype, memory format."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def create(cls, device: str, precision: str, channels_last: bool, local_rank: int | None = None) -> "Runtime":
        """Resolve ``--device`` and ``--precision``.

        Args:
            device: auto, cpu, cuda or mps.
            precision: auto, bf16, fp16 or fp32.
            channels_last: NHWC memory format.
            local_rank: under torchrun, this process's index on its machine
                (``LOCAL_RANK``): a CUDA device becomes ``cuda:<local_rank>``
                and is made the current one, so each process has its own GPU.

        Raises:
            ConfigError: the device is unavailable, or ``local_rank`` names a
                GPU this machine does not have.
        """
        dev = resolve_device(device)
        if local_rank is not None and dev.type == "cuda":
            count = torch.cuda.device_count()
            if not 0 <= local_rank < count:
                raise ConfigError(f"process LOCAL_RANK={local_rank} needs GPU {local_rank}, but {count} GPU(s) are "
                                  f"visible; start at most {count} processes per machine (torchrun --nproc-per-node {count})")
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        return cls(dev, resolve_precision(precision, dev), channels_last)

    def autocast(self) -> ContextManager:
        return autocast(self.device, self.dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Put a float image batch in the model's memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        return f"{self.device} {dtype}{' channels_last' if self.channels_last else ''}"
