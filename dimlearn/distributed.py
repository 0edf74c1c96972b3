"""Data-parallel training: one fit across several processes, GPUs or machines.

Launch the same script in every process with ``torchrun`` and call
``torch.distributed.init_process_group()`` before ``fit``; the estimator then trains one
model with PyTorch's ``DistributedDataParallel`` (``distributed="auto"``). The objective is
the one of a single process that sees the whole batch:

- every batch of the one-process epoch is cut into one part per process (disjoint, in
  order; :class:`BatchPart`), all processes drawing the same shuffle;
- the critics' image embeddings and all scores are gathered from every process with
  gradients flowing back (an all-gather whose backward sums the gradients of every process,
  not the "GatherLayer" that returns only its own slice), and every process computes the
  whole batch's loss from them; DDP's gradient averaging then yields the one-process
  gradient exactly;
- random draws (code noise, negatives, prior samples, crops) are made for the whole batch
  from generators seeded alike, and each process takes its rows;
- BatchNorm uses the whole batch's statistics: ``torch.nn.SyncBatchNorm`` on CUDA, and on
  the CPU (which ``SyncBatchNorm`` refuses) a hook that gathers the layer's input;
- stopping (time budget, Ctrl-C, early stopping) is decided together, so no process is left
  waiting in a collective.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from ._warn import warn
from .inputs import even_sizes

try:  # torch >= 2.12: functional collectives (also traceable by torch.compile)
    from torch.distributed._functional_collectives import all_gather_single
except ImportError:  # older torch: the autograd-aware all-gather of torch.distributed.nn
    all_gather_single = None


def _all_gather_rows(tensor: torch.Tensor, group) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0, with autograd: the backward
    pass sums the gradients every process computed for each process's rows."""
    if all_gather_single is not None:
        return all_gather_single(tensor.contiguous(), 0, group)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous(), group=group))


class BatchPart:
    """This process's rows of one batch, and how to gather a tensor of every process's.

    The protocol of :class:`~dimlearn.networks.WholeBatch`: ``total``, ``start``, ``rows``
    and ``gather``. Parts follow rank order, so gathering puts the rows back in the order
    of the one-process batch.
    """

    def __init__(self, total: int, rank: int, size: int, group):
        self.total = total
        self.sizes = even_sizes(total, size)
        self.start = int(sum(self.sizes[:rank]))
        self.rows = slice(self.start, self.start + self.sizes[rank])
        self.group = group

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        most = max(self.sizes)
        if tensor.shape[0] < most:  # all-gather needs equal shapes: pad, then drop the pad
            pad = tensor.new_zeros((most - tensor.shape[0], *tensor.shape[1:]))
            tensor = torch.cat([tensor, pad])
        gathered = _all_gather_rows(tensor, self.group)
        if min(self.sizes) == most:
            return gathered
        return torch.cat(
            [gathered[r * most : r * most + n] for r, n in enumerate(self.sizes) if n > 0]
        )


class Ranks:
    """The processes of a ``torch.distributed`` group that train one model together."""

    def __init__(self, group=None):
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))

    def __repr__(self) -> str:
        return f"Ranks(rank={self.rank}, size={self.size}, backend={self.backend!r})"

    # -- where each process trains ----------------------------------------------------

    def device(self, requested: torch.device) -> torch.device:
        """The training device of this process: CUDA without an index means this process's
        own GPU (``LOCAL_RANK``, as torchrun sets it), made the current device."""
        if requested.type == "cuda":
            if requested.index is None:
                local = int(os.environ.get("LOCAL_RANK", self.rank))
                requested = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(requested)
        elif not self._moves_cpu_tensors:
            raise ValueError(
                f"The process group's backend is {self.backend!r}, which moves CUDA tensors "
                "only, but training would run on the CPU. Use device='cuda' (one GPU per "
                "process), or init_process_group('gloo') to train on CPUs."
            )
        return requested

    @property
    def _moves_cpu_tensors(self) -> bool:
        # "nccl" alone moves CUDA tensors only; "gloo", "cpu:gloo,cuda:nccl" and the
        # lazily chosen default of init_process_group() without a backend move both
        return not ("nccl" in self.backend and "gloo" not in self.backend)

    @property
    def _flag_device(self) -> torch.device:
        if self._moves_cpu_tensors:
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    # -- agreeing -------------------------------------------------------------------

    def any(self, flag: bool) -> bool:
        """True in every process if it is True in any (stop decisions)."""
        value = torch.tensor([float(flag)], device=self._flag_device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group)
        return bool(value.item())

    def max(self, value: float) -> float:
        """The largest of every process's ``value`` (elapsed times)."""
        largest = torch.tensor([float(value)], dtype=torch.float64, device=self._flag_device)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.group)
        return float(largest.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a scalar tensor (held-out losses)."""
        total = value.detach().float().reshape(1).to(self._flag_device)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group)
        return (total / self.size).reshape(()).to(value.device)

    def agree(self, seed: int, X: np.ndarray) -> int:
        """Rank 0's seed, after checking that every process holds data of the same shape.

        Every process must pass the same X to ``fit``: the shuffle, the held-out split
        and the batches are drawn from that seed over row numbers.
        """
        shape = [int(side) for side in X.shape]
        mine = torch.tensor(
            [seed, len(shape), *shape, *[0] * (6 - len(shape))],
            dtype=torch.int64,
            device=self._flag_device,
        )
        every = [torch.zeros_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine, group=self.group)
        shapes = [tuple(v[2 : 2 + int(v[1])].tolist()) for v in every]
        if len(set(shapes)) > 1:
            described = ", ".join(f"rank {r}: {s}" for r, s in enumerate(shapes))
            raise ValueError(
                "Data-parallel fit: the processes passed X of different shapes "
                f"({described}). Every process must pass the same whole X to fit; each "
                "trains on its own part of every batch."
            )
        return int(every[0][0].item())

    def check_batches(self, batch_sizes: list[int], batch_size: int) -> None:
        """Every process needs at least one row of every batch."""
        if min(batch_sizes) < self.size:
            raise ValueError(
                f"batch_size={batch_size} gives batches of {min(batch_sizes)} rows, fewer "
                f"than the {self.size} processes training together, so some would get no "
                f"rows. Use batch_size >= {self.size}, or fewer processes."
            )

    def part(self, total: int) -> BatchPart:
        """This process's part of a batch of ``total`` rows."""
        return BatchPart(total, self.rank, self.size, self.group)


def training_ranks(setting) -> Ranks | None:
    """The processes to train with, from the estimator's ``distributed`` parameter.

    ``"auto"``: data-parallel when a ``torch.distributed`` process group of more than one
    process is initialised. ``True``: the same, but an error when there is none. ``False``:
    this process trains alone, whatever the group.
    """
    if setting is False:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if setting is True:
            raise ValueError(
                "distributed=True, but no torch.distributed process group is initialised. "
                "Launch the script with torchrun and call "
                "torch.distributed.init_process_group() before fit, or set "
                "distributed='auto'."
            )
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1:
            warn(
                f"This process was launched as one of {launched} (WORLD_SIZE), but no "
                "torch.distributed process group is initialised, so each process trains "
                "its own model. Call torch.distributed.init_process_group() before fit to "
                "train one model together, or set distributed=False to silence this."
            )
        return None
    ranks = Ranks()
    return ranks if ranks.size > 1 else None


# -- the module while it trains data-parallel ------------------------------------------


def _batch_norm_layers(module: nn.Module):
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, _BatchNorm):
                yield parent, name, child


def _gathering_hooks(owner: nn.Module, layer: _BatchNorm) -> list:
    """Hooks that make a BatchNorm layer normalise with the whole batch's statistics: its
    input is gathered from every process, and each process keeps its own rows of the
    output. In training only (in eval the running statistics are used)."""

    def gather_input(module, args):
        part = owner.part
        if module.training and part is not None:
            return (part.gather(args[0]),)
        return None

    def keep_own_rows(module, args, output):
        part = owner.part
        if module.training and part is not None:
            return output[part.rows]
        return None

    return [
        layer.register_forward_pre_hook(gather_input),
        layer.register_forward_hook(keep_own_rows),
    ]


@contextlib.contextmanager
def synchronised_batch_norm(module: nn.Module, ranks: Ranks, device: torch.device):
    """Within the block, the module's BatchNorm layers use the statistics of the whole batch
    across processes; on leaving it they are the plain layers again, with the same weights
    and running statistics."""
    layers = list(_batch_norm_layers(module))
    undo = []
    if device.type == "cuda":
        for parent, name, layer in layers:
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(layer, ranks.group)
            setattr(parent, name, synced)  # shares the layer's parameters and buffers
            undo.append(lambda p=parent, n=name, original=layer: setattr(p, n, original))
    else:
        for _, _, layer in layers:
            undo.extend(hook.remove for hook in _gathering_hooks(module, layer))
    try:
        yield module
    finally:
        for step in undo:
            step()


@contextlib.contextmanager
def frozen(module: nn.Module, parts: set[str]):
    """Within the block, the named parts of the module take no gradient (DDP expects a
    gradient for every parameter that requires one)."""
    params = [
        p
        for name in parts
        if getattr(module, name, None) is not None
        for p in getattr(module, name).parameters()
        if p.requires_grad
    ]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def data_parallel(module: nn.Module, ranks: Ranks, device: torch.device, untrained: set[str]):
    """``module`` wrapped in ``DistributedDataParallel`` for the block, with synchronised
    BatchNorm and the ``untrained`` parts frozen; everything undone on leaving."""
    with (
        frozen(module, untrained),
        synchronised_batch_norm(module, ranks, device),
        warnings.catch_warnings(),
    ):
        # a convolution over one input channel gets its weight's gradient with another
        # stride on that size-1 axis, which is the same memory order: DDP warns, harmlessly
        warnings.filterwarnings(
            "ignore", r"(?s)Grad strides do not match bucket view.*grad\.sizes\(\) = \[\d+, 1, "
        )
        wrapped = DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            process_group=ranks.group,
            gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets
        )
        yield wrapped
