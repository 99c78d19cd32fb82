"""Data-parallel training with PyTorch's own engine: torchrun set-up, gather-with-grad, rank-0 helpers.

``torchrun --nproc-per-node N -m contrastkit train ...`` starts N copies of
the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in their environment (``--nnodes`` and a rendezvous endpoint
spread them over machines). :func:`init` joins the process group they
describe: NCCL when the model runs on a CUDA GPU, gloo on CPUs. Every
function here also works in a single process without ``torch.distributed``
initialised, where collectives are the identity: the training loop and the
methods have one code path.

Batches. ``--batch-size`` is the *global* batch. Each of the W ranks takes
a contiguous block of ``batch_size / W`` items of every global batch
(:func:`shard`), and :func:`gather_batch` concatenates the ranks' blocks in
rank order, so the gathered batch is the single-process batch, item for item.

Gradients. A contrastive loss couples the whole batch, so each rank computes
the loss ``L`` of the gathered global batch (SimCLR, arXiv 2002.05709, Sec. 2
and Appendix B: negatives are drawn from every core's examples). With
embeddings ``z_i`` of rank ``r(i)``, a single process with the global batch
gets ``dL/dtheta = sum_i dL/dz_i dz_i/dtheta``. Under data parallelism:

- every rank computes the same ``L`` from the same gathered tensor, so the
  gradient reaching the gathered tensor, ``G = dL/dZ``, is the same on every
  rank;
- :func:`gather_with_grad`'s backward all-reduces (sums) that gradient over
  the W ranks and keeps this rank's rows: ``W dL/dz_i`` for its own ``z_i``;
- rank r's parameter gradient is then ``g_r = W sum_{i on r} dL/dz_i dz_i/dtheta``;
- DistributedDataParallel averages: ``1/W sum_r g_r = sum_i dL/dz_i dz_i/dtheta``,
  exactly the single-process gradient.

Losses that are a mean of per-sample terms (BYOL, SimSiam, MoCo against its
queue, DINO, the supervised baseline) need no gather: the mean of the W
local means of equal-sized blocks is the global mean, and DDP's averaging
gives the global gradient. tests/test_distributed.py checks both cases
against a single process with the global batch.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from contrastkit.errors import ConfigError

T = TypeVar("T")


# --------------------------------------------------------------------------
# Where this process stands
# --------------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun: the number of processes to train with (1 when not launched by it)."""
    return max(_env_int("WORLD_SIZE", 1), 1)


def env_rank() -> int:
    """``RANK`` set by torchrun (0 when not launched by it); readable before the process group exists."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """``LOCAL_RANK`` set by torchrun: this process's index on its machine, which picks its GPU (0 by default)."""
    return _env_int("LOCAL_RANK", 0)


def is_initialized() -> bool:
    """True when a ``torch.distributed`` process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the process group; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the process group; 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def is_distributed() -> bool:
    """True when training runs on more than one process (collectives are not the identity)."""
    return world_size() > 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the process that logs, shows progress and writes files."""
    return rank() == 0


def backend_for(device: torch.device) -> str:
    """The process-group backend for a model on ``device``: ``nccl`` on CUDA GPUs, ``gloo`` on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


# --------------------------------------------------------------------------
# Set-up and tear-down
# --------------------------------------------------------------------------


def init(device: torch.device) -> bool:
    """Join the process group that torchrun's environment describes, if there is one.

    Does nothing in a single process (``WORLD_SIZE`` unset or 1) or when a
    process group already exists (a caller that set one up itself keeps it).
    For CUDA, pick the device first (:meth:`Runtime.create` with
    ``local_rank``): NCCL binds each rank to the current device.

    Args:
        device: the device the model runs on; chooses the backend (:func:`backend_for`).

    Returns:
        True when this call created the process group; the caller then owns
        it and calls :func:`cleanup` when done.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but the rest of torchrun's environment
            is missing, this PyTorch has no ``torch.distributed``, or the
            device is neither CPU nor CUDA.
    """
    if is_initialized() or env_world_size() == 1:
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; train in one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} unset: start distributed "
                          "training with torchrun (see `torchrun --help`), or unset WORLD_SIZE")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"distributed training runs on CUDA GPUs (nccl) or CPUs (gloo), not on {device.type}; "
                          "use --device cuda or --device cpu")
    dist.init_process_group(backend=backend_for(device), init_method="env://")
    return True


def cleanup() -> None:
    """Leave and destroy the process group (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _all_gather_into(out: torch.Tensor, x: torch.Tensor) -> None:
    """``out`` (W N, ...) = every rank's ``x`` (N, ...) in rank order (``all_gather_single`` from torch 2.13 on)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, x)


def _comm_device() -> torch.device:
    """Where collective buffers must live: the current CUDA device for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------
# Batches across ranks
# --------------------------------------------------------------------------


def local_batch_size(global_batch: int, world: int) -> int:
    """Images per rank and step when ``--batch-size`` (the global batch) is split over ``world`` ranks.

    Raises:
        ConfigError: ``global_batch`` is not a multiple of ``world``, or gives
            a rank fewer than 2 images (batch norm and contrastive losses need 2).
    """
    if world < 1:
        raise ConfigError(f"the world size must be >= 1, got {world}")
    if global_batch % world:
        lower = global_batch // world * world
        raise ConfigError(f"--batch-size {global_batch} is the global batch, split evenly over the {world} processes; "
                          f"use a multiple of {world}, e.g. {lower or world * 2} or {lower + world}")
    if global_batch // world < 2:
        raise ConfigError(f"--batch-size {global_batch} gives each of the {world} processes fewer than 2 images; "
                          f"use --batch-size {2 * world} or more")
    return global_batch // world


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous block of one global batch of item indices.

    Applied to every global batch of the epoch's permutation
    (``train.epoch_order``), this is a distributed sampler: each epoch the
    ranks see disjoint shards of a fresh shuffle, the same number of steps
    each (the trainer drops the incomplete last batch), and the union of the
    ranks' blocks at a step is exactly the batch a single process takes at
    that step. As it is a pure function of the step, resume stays exact.

    Args:
        batch: item indices of one global batch, shape (B,), B divisible by ``world``.
        rank: this rank, in [0, world).
        world: number of ranks.

    Returns:
        Item indices (B / world,) of this rank.
    """
    if not 0 <= rank < world or len(batch) % world:
        raise ValueError(f"cannot shard a batch of {len(batch)} items for rank {rank} of {world}")
    local = len(batch) // world
    return batch[rank * local : (rank + 1) * local]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces the gradient and keeps this rank's rows.

    The backward is solo-learn's ``GatherLayer`` / SimCLR's cross-replica
    gather: see the module docstring for why the sum (not the mean) makes
    DDP's gradient averaging give the single-process gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (W B, ...)
        x = x.contiguous()
        world, me = dist.get_world_size(), dist.get_rank()
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _all_gather_into(out, x)
        ctx.rows = (me * x.shape[0], (me + 1) * x.shape[0])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # (W B, ...) -> (B, ...)
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, end = ctx.rows
        return grad[start:end]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (B, ...) concatenated in rank order, (W B, ...), with gradients flowing back.

    The gradient reaching rank r's ``x`` is the sum over all ranks of the
    gradients reaching rows ``r B .. (r + 1) B`` of the result. All ranks must
    pass the same shape. In a single process, ``x`` itself.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The global batch of several per-rank tensors (B, ...) each, with one collective and gradients.

    This is how methods make their loss that of the global batch: they pass
    the local embeddings (and predictions) of their views and compute the
    loss on the result. The tensors are flattened, concatenated and gathered
    in float32 (the dtype every loss computes in; bf16 autocast outputs come
    back as float32), then split back: result k has shape (W B, ...) of
    ``tensors[k]``, rows in rank order. In a single process the inputs are
    returned unchanged. Works under ``torch.no_grad`` too (keys, teachers).
    """
    if not tensors:
        return ()
    if not is_distributed():
        return tensors
    b = tensors[0].shape[0]
    if any(t.shape[0] != b for t in tensors):
        raise ValueError(f"gather_batch: all tensors need the same batch size, got {[tuple(t.shape) for t in tensors]}")
    widths = [t[0].numel() if b else 0 for t in tensors]
    flat = torch.cat([t.reshape(b, -1).float() for t in tensors], dim=1)  # (B, sum of widths)
    full = gather_with_grad(flat)  # (W B, sum of widths)
    return tuple(part.reshape(-1, *t.shape[1:]) for part, t in zip(full.split(widths, dim=1), tensors))


@torch.no_grad()
def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` (N, ...) concatenated in rank order, (W N, ...), without gradient (labels, RNG states).

    Returned on ``x``'s device; the collective runs on the backend's device.
    """
    if not is_distributed():
        return x
    y = x.detach().to(_comm_device()).contiguous()
    out = y.new_empty((world_size() * y.shape[0], *y.shape[1:]))
    _all_gather_into(out, y)
    return out.to(x.device)


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor, no gradient); ``x`` itself in a single process."""
    if not is_distributed():
        return x
    y = x.detach().to(_comm_device(), copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return (y / world_size()).to(x.device)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (a new tensor, no gradient); ``x`` itself in a single process."""
    if not is_distributed():
        return x
    y = x.detach().to(_comm_device(), copy=True)
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y.to(x.device)


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` (any picklable value) on every rank; other ranks' argument is ignored."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]
