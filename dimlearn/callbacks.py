"""skorch callbacks that decide when training stops: a time budget, Ctrl-C, early stopping;
and the check of the callbacks a user adds (:func:`check_callbacks`).

Each stops training the way skorch's own ``EarlyStopping`` does, by raising
``KeyboardInterrupt`` from a callback, which ``NeuralNet.partial_fit`` catches; all of them
raise it at the end of a training batch, after the optimiser step, or at the end of an
epoch, never during the held-out pass (an epoch is whole, ``valid_loss`` included, or cut
between training batches), so the networks and the optimiser are always left in a
consistent state. In data-parallel training every decision is taken by all processes
together (:func:`_any_process`). :func:`finish_history` then makes the history of an
epoch cut short read like a whole one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

import numpy as np
from skorch.callbacks import Callback, EarlyStopping

from .optimizer_state import named_optimizer_state, set_named_optimizer_state
from .settings import TERM_NAMES

RESERVED_NAMES = (
    "epoch_timer",
    "train_loss",
    "valid_loss",
    "print_log",
    *(f"train_{term}" for term in TERM_NAMES),
    "lr_schedule",
    "early_stopping",
    "time_budget",
    "stop_request",
    "whole_batch_size",
    "progress_bar",
)
"""The names of the callbacks a training call runs of its own (skorch's defaults and
dimlearn's, :func:`dimlearn.training.build_net`): the ``callbacks`` parameter may not use
them, so that none of them is replaced or renamed."""


def _is_callback(value) -> bool:
    return isinstance(value, Callback) or (isinstance(value, type) and issubclass(value, Callback))


def check_callbacks(callbacks) -> None:
    """Raise ``ValueError`` naming the item and the fix unless ``callbacks`` (the
    estimator's parameter) is None or a list of skorch callbacks (instances or classes) and
    ``(name, callback)`` pairs whose names are not in :data:`RESERVED_NAMES`.

    Examples
    --------
    >>> from skorch.callbacks import EpochTimer
    >>> check_callbacks([EpochTimer(), ("timer", EpochTimer())])
    >>> try:
    ...     check_callbacks([("early_stopping", EpochTimer())])
    ... except ValueError as error:
    ...     print(str(error)[:46])
    callbacks: the name 'early_stopping' is one of
    """
    for item in callbacks or []:
        if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str):
            name, callback = item
        else:
            callback = item
            name = getattr(item, "__name__", type(item).__name__)
        if not _is_callback(callback):
            raise ValueError(
                f"callbacks holds {item!r}, which is neither a skorch callback (an instance "
                "or subclass of skorch.callbacks.Callback) nor a (name, callback) pair. "
                "Pass skorch callbacks, as skorch's NeuralNet takes them."
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"callbacks: the name {name!r} is one of dimlearn's own callbacks "
                f"({', '.join(RESERVED_NAMES)}), which it would replace. Give yours "
                f"another name: ('my_{name}', callback)."
            )


clock: Callable[[], float] = time.perf_counter
"""The clock of :class:`TimeBudget` (a module attribute so that tests can replace it)."""


def _any_process(net, flag: bool) -> bool:
    """``flag``, or in data-parallel training whether it holds in any process, so that all
    processes stop at the same batch (one that stopped alone would leave the others waiting
    for it)."""
    ranks = getattr(net, "ranks", None)
    return flag if ranks is None else ranks.any(flag)


class TimeBudget(Callback):
    """Stops training once ``seconds`` have passed, at an epoch's end or inside an epoch.

    At the end of an epoch, training stops if the next one, predicted to take as long as the
    last, would overrun the budget. At the end of every training batch, training stops if
    the budget is spent: an epoch longer than the whole budget is cut at the batch that
    reaches it, so a budget means the same on a large data set as on a small one. A budget
    spent during the held-out pass stops training at the end of that epoch, once its
    ``valid_loss`` is recorded (and early stopping has seen it).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_begin(self, net, **kwargs):
        self.start_ = self.epoch_start_ = clock()

    def on_epoch_begin(self, net, **kwargs):
        self.epoch_start_ = clock()

    def on_batch_end(self, net, training=True, **kwargs):
        if not training:  # never cut the held-out pass (nor all-reduce on each of its batches)
            return
        if _any_process(net, clock() - self.start_ >= self.seconds):
            net.history.record("stopped_by_time", True)
            raise KeyboardInterrupt

    def on_epoch_end(self, net, **kwargs):
        now = clock()
        if _any_process(net, (now - self.start_) + (now - self.epoch_start_) > self.seconds):
            net.history.record("stopped_by_time", True)
            raise KeyboardInterrupt


class CosineSchedule(Callback):
    """The learning rate from ``lr`` down to 0 along a half cosine, set before every
    training batch, after a short linear warm-up.

    The cosine follows the training call's progress: the share of ``max_time`` spent when
    a budget is set (users give minutes, not epochs: the rate reaches its end when the time
    runs out), else the share of the ``max_epochs`` epochs' batches done. The warm-up
    raises the rate linearly over the first ``warmup_steps`` batches (at most a tenth of an
    epoch-counted call). In data-parallel training every process uses the largest elapsed
    time of all, so that they all step at the same rate. The rate of each epoch's first
    batch is recorded as ``event_lr`` in the history.
    """

    def __init__(self, max_epochs: int, max_time: float | None = None, warmup_steps: int = 100):
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.warmup_steps = warmup_steps

    def on_train_begin(self, net, X=None, **kwargs):
        self.start_ = clock()
        self.steps_ = 0
        self.total_steps_ = self.max_epochs * len(X.batch_sizes(net.batch_size))
        self.warmup_ = min(self.warmup_steps, max(1, self.total_steps_ // 10))
        self.base_lrs_ = [group["lr"] for group in net.optimizer_.param_groups]

    def progress(self, net) -> float:
        """The share of the call done, in [0, 1]."""
        if self.max_time is None:
            return min(1.0, self.steps_ / self.total_steps_)
        elapsed = clock() - self.start_
        ranks = getattr(net, "ranks", None)
        elapsed = elapsed if ranks is None else ranks.max(elapsed)
        return min(1.0, elapsed / self.max_time)

    def factor(self, progress: float) -> float:
        warm = min(1.0, (self.steps_ + 1) / self.warmup_)
        return warm * 0.5 * (1.0 + np.cos(np.pi * progress))

    def on_batch_begin(self, net, training=True, **kwargs):
        if not training:
            return
        factor = self.factor(self.progress(net))
        for group, base in zip(net.optimizer_.param_groups, self.base_lrs_, strict=True):
            group["lr"] = base * factor
        if "event_lr" not in net.history[-1]:
            net.history.record("event_lr", net.optimizer_.param_groups[0]["lr"])
        self.steps_ += 1


class StopRequest:
    """Flags that a SIGINT handler sets: ``requested`` (a first Ctrl-C), which
    :class:`StopAtBatchEnd` reads, and ``forced`` (a second one), which
    :func:`~dimlearn.net.train_net` reads."""

    def __init__(self):
        self.requested = False
        self.forced = False


@contextlib.contextmanager
def deferred_sigint(request: StopRequest):
    """Turn the first Ctrl-C (SIGINT) inside the block into a stop request.

    The request is honoured at the end of the running training batch, or of the epoch when
    it comes during the held-out pass (:class:`StopAtBatchEnd`), so training never stops
    half way through an optimiser step. A second Ctrl-C raises ``KeyboardInterrupt`` at
    once, as usual, and sets ``request.forced``: skorch's ``partial_fit`` swallows that
    ``KeyboardInterrupt`` as if it were a stop, which data-parallel training cannot take
    (:func:`~dimlearn.net.train_net` raises it again there, abandoning the fit).
    Only where Python's default handler is in place and only in the main thread (the one
    that receives signals); elsewhere nothing changes.
    """
    install = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if not install:
        yield request
        return

    def handler(signum, frame):
        if request.requested:  # the second Ctrl-C: stop now
            signal.signal(signal.SIGINT, signal.default_int_handler)
            request.forced = True
            raise KeyboardInterrupt
        request.requested = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class StopAtBatchEnd(Callback):
    """Stops training at the end of the training batch during which a stop was requested
    (Ctrl-C), or at the end of the epoch when it was requested during the held-out pass."""

    def __init__(self, request: StopRequest):
        self.request = request

    def on_batch_end(self, net, training=True, **kwargs):
        if training:  # never cut the held-out pass (nor all-reduce on each of its batches)
            self._stop_if_requested(net)

    def on_epoch_end(self, net, **kwargs):
        self._stop_if_requested(net)

    def _stop_if_requested(self, net):
        if _any_process(net, self.request.requested):
            net.history.record("interrupted", True)
            raise KeyboardInterrupt


class WholeBatchSize(Callback):
    """Records the whole batch's size as ``train_batch_size`` in data-parallel training
    (skorch records this process's part), so that epoch means weigh batches as one
    process would."""

    def on_batch_end(self, net, batch=None, training=True, **kwargs):
        if training and batch is not None and batch[1] is not None:
            net.history.record_batch("train_batch_size", batch[1].total)


class BestEpochEarlyStopping(EarlyStopping):
    """skorch's ``EarlyStopping`` that restores the whole training state of the best epoch.

    skorch's ``load_best`` restores the module's weights only. This also restores Adam's
    state as it was after the best epoch and cuts the history there, so that the weights,
    the optimiser, ``history_`` and ``n_iter_`` all describe the same epoch. The last kept
    epoch records how many epochs ran past it (``epochs_after_best``) and their held-out
    losses (``valid_loss_after_best``). In data-parallel training the processes stop
    together when any of them would (they see the same ``valid_loss``, the mean over all).
    """

    def on_epoch_end(self, net, **kwargs):
        best_before = getattr(self, "best_epoch_", None)
        stop = False
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:  # skorch's way of saying: stop here
            stop = True
        finally:
            if self.best_epoch_ != best_before:
                # on the device: a checkpoint, not a result (no copy to the host each epoch)
                self.best_optimizer_state_ = named_optimizer_state(
                    net.optimizer_, net.module_, device=None
                )
        if _any_process(net, stop):
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        best = getattr(self, "best_epoch_", None)
        last = net.history[-1, "epoch"] if len(net.history) else None
        if self.best_model_weights_ is None or best == last:
            return  # no epoch finished, or the last one is the best
        net.module_.load_state_dict(self.best_model_weights_)
        set_named_optimizer_state(net.optimizer_, net.module_, self.best_optimizer_state_)
        after = [entry.get("valid_loss", float("nan")) for entry in net.history[best:]]
        del net.history[best:]
        net.history.record("epochs_after_best", len(after))
        net.history.record("valid_loss_after_best", [float(v) for v in after])


def finish_history(history, planned_batches: int) -> dict | None:
    """Complete the history's last epoch if training stopped inside it; describe the stop.

    An epoch cut short by Ctrl-C or the time budget has batch records but no epoch-level
    ``train_loss``: it gets the means of the batches that ran (weighted by batch size, as
    skorch's ``PassthroughScoring`` computes them) and ``epoch_fraction``, the share of its
    ``planned_batches`` that ran. An epoch in which no batch finished is dropped.
    Returns ``{"epoch", "batches", "planned"}`` for an epoch cut short, else None.
    """
    if not len(history) or "train_loss" in history[-1]:
        return None
    entry = history[-1]
    batches = [b for b in entry.get("batches", []) if "train_batch_size" in b]
    if not batches:
        del history[-1]
        return {"epoch": len(history) + 1, "batches": 0, "planned": planned_batches}
    sizes = np.array([b["train_batch_size"] for b in batches], dtype=float)
    for key in batches[0]:
        if key.startswith("train_") and key != "train_batch_size":
            values = [b[key] for b in batches]
            entry[key] = float(np.average(values, weights=sizes))
    entry["train_batch_count"] = len(batches)
    entry["epoch_fraction"] = len(batches) / planned_batches
    return {"epoch": entry["epoch"], "batches": len(batches), "planned": planned_batches}
