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
  the CPU (which ``SyncBatchNorm`` refuses) a hook that gathers the layer's input, for the
  batch part that the module's forward call was given (:meth:`BatchPart.whole_batch_norm`);
- stopping (time budget, Ctrl-C, early stopping) is decided together, so no process is left
  waiting in a collective;
- a process whose fit fails posts its error to the group's store, so that the others,
  whose collective then fails (at once when that process ends, else at the group's
  timeout), raise an error that names it (:meth:`Ranks.training`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import secrets
import threading
import time
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

    The protocol of :class:`~dimlearn.critics.WholeBatch`: ``total``, ``start``, ``rows``
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

    @contextlib.contextmanager
    def whole_batch_norm(self):
        """Within the block (in this thread or task), the BatchNorm layers that
        :func:`synchronised_batch_norm` hooked on the CPU normalise with the statistics of
        the whole batch of which this is a part. The module's ``forward`` enters it for the
        duration of its call, from its own ``part`` argument; layers not hooked (CUDA's
        ``SyncBatchNorm``, a plain module) are unaffected."""
        token = _NORMALISED_PART.set(self)
        try:
            yield
        finally:
            _NORMALISED_PART.reset(token)


_NORMALISED_PART: contextvars.ContextVar[BatchPart | None] = contextvars.ContextVar(
    "dimlearn_normalised_part", default=None
)
"""The batch part of the forward call running in this context, which the gathering
BatchNorm hooks read (:meth:`BatchPart.whole_batch_norm`); None outside such a call."""


class Ranks:
    """The processes of a ``torch.distributed`` group that train one model together."""

    def __init__(self, group=None):
        self.group = group if group is not None else dist.group.WORLD
        self.rank = dist.get_rank(self.group)
        self.size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group))
        self.call_id = 0  # rank 0's token for this training call (set by agree)

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
        and the batches are drawn from that seed over row numbers. Rank 0 also draws a
        token that names this training call in the group's store (:meth:`training`).
        """
        with _claimed(self.group):
            return self._agree(seed, X)

    def _agree(self, seed: int, X: np.ndarray) -> int:
        shape = [int(side) for side in X.shape]
        mine = torch.tensor(
            [seed, len(shape), *shape, *[0] * (6 - len(shape)), secrets.randbits(62)],
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
        self.call_id = int(every[0][-1].item())
        return int(every[0][0].item())

    def part(self, total: int) -> BatchPart:
        """This process's part of a batch of ``total`` rows."""
        return BatchPart(total, self.rank, self.size, self.group)

    # -- failing together -------------------------------------------------------------

    @contextlib.contextmanager
    def training(self):
        """The block in which this process trains with the others, and fails with them.

        One thread of a process at a time may train on a group (the collectives of two
        would interleave): another gets a ``RuntimeError`` at once, before any collective.
        When the block raises in one process, that process posts its error to the group's
        store. The collective every other process waits in then fails: at once when the
        failing process ends (its connections close), else at the group's timeout
        (``init_process_group(timeout=...)``; 30 minutes by default for gloo), since
        neither destroying nor aborting a gloo group closes its connections while DDP or
        a functional collective has used it. Those processes raise a ``RuntimeError``
        that names the first process and its error; one whose collective failed with no
        error posted (another process was killed, or hung past the timeout) raises one
        that says so. The group is then destroyed in every process: after a failed
        data-parallel fit it is out of step and cannot be used again.
        """
        with _claimed(self.group):
            try:
                yield
            except BaseException as error:
                replacement = self._failed(error)
                if replacement is None:
                    raise
                raise replacement from error

    def _failed(self, error: BaseException) -> BaseException | None:
        """Post this process's own error, or turn a broken collective into the error of
        the process that failed first; end the group. The error to raise instead, or None
        to raise ``error``."""
        posted = None
        if isinstance(error, RuntimeError):  # another process's failure surfaces as one
            posted = self._posted_failure(wait=FAILURE_POST_WAIT if _broken_link(error) else 0)
        if posted is not None:
            rank, message = posted
            replacement = RuntimeError(
                f"Data-parallel training stopped because rank {rank} of {self.size} failed "
                f"with {message}. This process (rank {self.rank}) stopped with it and the "
                f"model is not fitted; rank {rank}'s own output has its traceback."
            )
        elif _broken_link(error):
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            replacement = RuntimeError(
                f"Data-parallel training stopped: rank {self.rank} of {self.size} lost "
                f"contact with the other processes ({type(error).__name__}: {first_line}). "
                "Another process ended without reporting an error (killed, out of memory, "
                "its machine gone) or did not answer within the process group's timeout "
                "(init_process_group(timeout=...)); its own output and torchrun's summary "
                "say which. The model is not fitted."
            )
        else:
            replacement = None
            self._post(error)
        self._end_group()
        return replacement

    def _store(self):
        try:
            return dist.distributed_c10d._get_process_group_store(self.group)
        except Exception:  # a group without a store, or a torch without this accessor
            return None

    @property
    def _failure_key(self) -> str:
        return f"dimlearn/failed/{self.call_id}"

    def _post(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        store = self._store()
        if store is not None:
            with contextlib.suppress(Exception):  # the store may be gone with its host
                store.set(self._failure_key, f"{self.rank}\n{text[:2000]}")

    def _posted_failure(self, wait: float) -> tuple[int, str] | None:
        """(rank, error) that another process posted for this call, waiting up to
        ``wait`` seconds for it; None if there is none (or no store to ask)."""
        store = self._store()
        if store is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                if store.check([self._failure_key]):
                    rank, _, message = store.get(self._failure_key).decode().partition("\n")
                    return None if int(rank) == self.rank else (int(rank), message)
            except Exception:  # the store went down with the process that hosted it
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _end_group(self) -> None:
        with contextlib.suppress(Exception):  # already destroyed, or never usable again
            if "nccl" in self.backend:  # NCCL's destroy can wait for work it launched
                dist.distributed_c10d._abort_process_group(self.group)
            else:
                dist.destroy_process_group(self.group)


FAILURE_POST_WAIT = 1.0
"""Seconds a process whose collective broke waits for the error that broke it to be posted
(a process posts before it leaves the group, so the wait is only spent when none will
come: a process killed)."""

_BROKEN_LINK_MESSAGE = re.compile(
    r"closed by peer|connection reset|broken pipe|timed out|timeout|/gloo/|nccl", re.IGNORECASE
)


def _broken_link(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed (a peer gone, a timeout)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    return isinstance(error, RuntimeError) and bool(_BROKEN_LINK_MESSAGE.search(str(error)))


_TRAINING_THREADS: dict[int, int] = {}
"""Which thread of this process trains on each process group (by ``id`` of the group)."""
_TRAINING_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _claimed(group):
    """The block runs collectives on ``group`` from this thread alone (re-entrant)."""
    key, me = id(group), threading.get_ident()
    with _TRAINING_THREADS_LOCK:
        holder = _TRAINING_THREADS.get(key)
        if holder is not None and holder != me:
            raise RuntimeError(
                "Another thread of this process is training on this torch.distributed "
                "process group, and two fits on one group would interleave their "
                "collectives. Train one model at a time on a group, or pass "
                "distributed=False to the fits in other threads so that each trains alone."
            )
        _TRAINING_THREADS[key] = me
    try:
        yield
    finally:
        if holder is None:
            with _TRAINING_THREADS_LOCK:
                _TRAINING_THREADS.pop(key, None)


def training_ranks(setting) -> Ranks | None:
    """The processes to train with, from the estimator's ``distributed`` parameter.

    ``"auto"``: data-parallel with the initialised ``torch.distributed`` process group when
    it has more than one process, torchrun started this process into it (``RANK`` and
    ``WORLD_SIZE`` in the environment are its rank and size in the group, and
    ``LOCAL_RANK`` is set) and ``fit`` runs in the main thread. Otherwise this process
    trains alone, with a warning when such a group exists: a group that other code set up
    (or a fit in another thread, as under threaded joblib or dask) does not change what
    ``fit`` does. ``True``: data-parallel with whatever group is initialised, from any
    thread (one fit at a time per group), and an error when there is none. ``False``: this
    process trains alone, whatever the group.
    """
    auto = isinstance(setting, str)  # "auto"; else a bool (numpy's too)
    if not auto and not setting:
        return None
    ready = dist.is_available() and dist.is_initialized()
    if not ready:
        if not auto:
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
    size = dist.get_world_size()
    if size == 1:
        return None
    if auto:
        reason = _not_for_auto(dist.get_rank(), size)
        if reason is not None:
            warn(
                f"A torch.distributed process group of {size} processes is initialised, "
                f"but distributed='auto' trains this process alone: {reason}. Pass "
                "distributed=True to train one model with every process of the group (one "
                "fit at a time per group), or distributed=False to train alone without "
                "this warning."
            )
            return None
    return Ranks()


def _not_for_auto(rank: int, size: int) -> str | None:
    """Why ``distributed="auto"`` does not use the initialised group, or None if it does."""
    if threading.current_thread() is not threading.main_thread():
        return (
            "fit runs in a thread other than the main one (fits in several threads of one "
            "process would interleave their collectives on the one group)"
        )
    env = {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if None in env.values():
        unset = ", ".join(name for name, value in env.items() if value is None)
        return f"torchrun did not start this process ({unset} not set)"
    if (env["RANK"].strip(), env["WORLD_SIZE"].strip()) != (str(rank), str(size)):
        return (
            f"the group is not the one torchrun started this process into (this process is "
            f"rank {rank} of {size} in it, but RANK={env['RANK']} and "
            f"WORLD_SIZE={env['WORLD_SIZE']})"
        )
    return None


# -- the module while it trains data-parallel ------------------------------------------


def _batch_norm_layers(module: nn.Module):
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, _BatchNorm):
                yield parent, name, child


def _gathering_hooks(layer: _BatchNorm) -> list:
    """Hooks that make a BatchNorm layer normalise with the whole batch's statistics: its
    input is gathered from every process, and each process keeps its own rows of the
    output. In training only (in eval the running statistics are used), and only within a
    call that was given a batch part (:meth:`BatchPart.whole_batch_norm`)."""

    def gather_input(module, args):
        part = _NORMALISED_PART.get()
        if module.training and part is not None:
            return (part.gather(args[0]),)
        return None

    def keep_own_rows(module, args, output):
        part = _NORMALISED_PART.get()
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
    across processes: on CUDA always (``SyncBatchNorm``), on the CPU in the forward calls
    given a batch part (:meth:`BatchPart.whole_batch_norm`). On leaving it they are the
    plain layers again, with the same weights and running statistics."""
    layers = list(_batch_norm_layers(module))
    undo = []
    if device.type == "cuda":
        for parent, name, layer in layers:
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(layer, ranks.group)
            setattr(parent, name, synced)  # shares the layer's parameters and buffers
            undo.append(lambda p=parent, n=name, original=layer: setattr(p, n, original))
    else:
        for _, _, layer in layers:
            undo.extend(hook.remove for hook in _gathering_hooks(layer))
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
