"""The skorch net that trains a Deep InfoMax module: one training step, one held-out step;
and the net of one training call: built from the settings with the callbacks they ask for
(:func:`build_net`), continued from a fitted state, trained Ctrl-C-safe, alone or
data-parallel, and its result collected (:func:`train_net`).

The net's extra settings are constructor arguments (skorch's way of adding parameters to a
net).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring, ProgressBar
from skorch.history import History
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._warn import warn
from .callbacks import (
    BestEpochEarlyStopping,
    CosineSchedule,
    StopAtBatchEnd,
    StopRequest,
    TimeBudget,
    WholeBatchSize,
    deferred_sigint,
    finish_history,
)
from .distributed import data_parallel
from .infomax import keep_parts, kept_parts, trained_parts
from .inputs import ArrayBatches, OrderedBatches, ShuffledBatches
from .objectives import DeepInfomaxLoss
from .optimizer_state import (
    named_optimizer_state,
    optimizer_class,
    set_named_optimizer_state,
)
from .settings import Settings
from .views import default_view, two_views

if TYPE_CHECKING:
    from .distributed import Ranks
    from .fitted import FittedState


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss and was stopped.

    Raised by ``fit`` and ``partial_fit`` at the first batch whose loss is not finite,
    before the optimiser step that would spread it into the weights. A first fit leaves the
    estimator unfitted; a continued fit leaves it exactly as it was before the call. The
    message names the epoch, the batch, each term's value and what to try (a lower ``lr``,
    the input scale).

    Examples
    --------
    >>> import numpy as np
    >>> from dimlearn import DeepInfomaxTransformer, NonFiniteLossError
    >>> X = np.random.default_rng(0).random((64, 8, 8))
    >>> dim = DeepInfomaxTransformer(lr=1e6, max_epochs=2, width=4, latent_dim=8, random_state=0)
    >>> try:
    ...     dim.fit(X)
    ... except NonFiniteLossError:
    ...     print("stopped; fitted:", hasattr(dim, "module_"))
    stopped; fitted: False
    """


class FixedSplit:
    """skorch ``train_split`` that keeps the training data whole and validates on a held-out
    dataset chosen beforehand (the estimator draws the split, reproducibly)."""

    def __init__(self, valid_dataset):
        self.valid_dataset = valid_dataset

    def __call__(self, dataset, y=None, **fit_params):
        return dataset, self.valid_dataset


class DeepInfomaxNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a :class:`~dimlearn.infomax.DeepInfomaxModule`.

    Batches arrive standardised on the net's device (the iterators of
    :mod:`dimlearn.inputs`); the module returns the loss terms of a batch, the criterion
    weighs them, and the terms are recorded per batch so that
    :class:`~skorch.callbacks.PassthroughScoring` reports their epoch means in the history
    next to ``train_loss``. A loss that is not finite stops training at once with
    :class:`NonFiniteLossError`.

    Parameters (beyond skorch's)
    ----------------------------
    augment : bool
        One augmented view of every training batch (views=1).
    views : {1, 2}
        2: the module gets two augmented views of every training batch, stacked
        (:func:`~dimlearn.views.two_views`); held-out batches are given as two identical views.
    augmentation : callable or None
        What draws a view: ``augmentation(batch, generator, part, flip)`` (the estimator's
        parameter); None: :func:`~dimlearn.views.default_view` of ``kind`` and ``views``.
    flip : bool
        Whether augmented images are mirrored at random (half of them).
    kind : {"image", "tabular"}
        What the samples are (which views suit them).
    channels_last : bool
        Image batches in NHWC memory order (faster convolutions on CUDA).
    generator : torch.Generator or None
        The training call's generator on the device: augmentation draws, and the module's
        (code samples, negatives, prior samples), passed to its ``forward`` in every step.
    precision : {"float32", "bfloat16", "float16"}
        Autocast of the forward pass; float16 adds a gradient scaler.
    ranks : dimlearn.distributed.Ranks or None
        The processes training together (data-parallel), or None.
    stop_request : dimlearn.callbacks.StopRequest or None
        Set by a Ctrl-C; read by the callback that stops at a batch's end.
    epochs_before : int
        Epochs that earlier calls ran (numbers epochs in error messages).
    """

    def __init__(
        self,
        module,
        *args,
        augment: bool = False,
        views: int = 1,
        augmentation=None,
        flip: bool = True,
        kind: str = "image",
        channels_last: bool = False,
        generator: torch.Generator | None = None,
        precision: str = "float32",
        ranks=None,
        stop_request=None,
        epochs_before: int = 0,
        **kwargs,
    ):
        super().__init__(module, *args, **kwargs)
        self.augment = augment
        self.views = views
        self.augmentation = augmentation
        self.flip = flip
        self.kind = kind
        self.channels_last = channels_last
        self.generator = generator
        self.precision = precision
        self.ranks = ranks
        self.stop_request = stop_request
        self.epochs_before = epochs_before

    def initialize(self):
        super().initialize()
        device_type = torch.device(self.device).type
        use_scaler = self.precision == "float16"
        self.scaler_ = torch.amp.GradScaler(device_type) if use_scaler else None
        return self

    def model_input(self, x: torch.Tensor, training: bool, part=None) -> torch.Tensor:
        """A standardised batch as the module's input: augmented in training, in the memory
        order the device prefers. ``part``: which rows of the whole batch these are
        (data-parallel training), so that augmentation draws for the whole batch."""
        if self.views == 2:
            if not training:
                return x.expand(2, *x.shape)
            return two_views(x, self.kind, self.generator, part, self.flip, self._view)
        if training and self.augment:
            x = self._view(x, self.generator, part, self.flip)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _view(self, batch: torch.Tensor, generator, part, flip: bool) -> torch.Tensor:
        """One view of a batch by the augmentation, checked to keep the batch's shape."""
        view = (self.augmentation or default_view(self.kind, self.views))(
            batch, generator, part, flip
        )
        if not isinstance(view, torch.Tensor) or view.shape != batch.shape:
            got = tuple(view.shape) if isinstance(view, torch.Tensor) else type(view).__name__
            raise ValueError(
                f"the augmentation returned {got} for a batch of shape {tuple(batch.shape)}; "
                "it must return one view of the batch, a tensor of the same shape."
            )
        return view

    def autocast(self):
        """Mixed precision for the forward pass and the loss, or nothing for float32."""
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def train_step_single(self, batch, **fit_params):
        """One batch's forward and backward pass. In data-parallel training ``batch[1]`` is
        this process's part of the batch (passed to the module's ``forward``); the loss is
        the whole batch's."""
        self._set_training(True)
        part = batch[1]
        Xi = self.model_input(batch[0], training=True, part=part)
        with self.autocast():
            terms = self.module_(
                Xi, self.criterion_.active_terms, part=part, generator=self.generator
            )
            loss = self.criterion_(terms)
        values = {name: value.item() for name, value in terms.items()}
        self._check_finite(loss, values, "training")
        (loss if self.scaler_ is None else self.scaler_.scale(loss)).backward()
        for name, value in values.items():
            self.history.record_batch(f"train_{name}", value)
        return {"loss": loss, "y_pred": None}

    def train_step(self, batch, **fit_params):
        """skorch's step, or, in float16, the same with the gradient scaler's step."""
        if self.scaler_ is None:
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        self.scaler_.step(self.optimizer_)
        self.scaler_.update()
        return step

    def validation_step(self, batch, **fit_params):
        """The same weighted objective on a held-out batch, without gradients (eval mode)."""
        self._set_training(False)
        with torch.no_grad(), self.autocast():
            Xi = self.model_input(batch[0], training=False)
            # every process scores whole held-out batches: no part
            terms = self.module_(Xi, self.criterion_.active_terms, generator=self.generator)
            loss = self.criterion_(terms)
        if self.ranks is not None:  # the same in every process: early stopping agrees
            loss = self.ranks.mean(loss)
        self._check_finite(loss, {n: v.item() for n, v in terms.items()}, "held-out")
        return {"loss": loss, "y_pred": None}

    def _check_finite(self, loss: torch.Tensor, terms: dict, where: str) -> None:
        value = loss.item()
        if math.isfinite(value):
            return
        epoch = self.epochs_before + len(self.history)
        batch = len(self.history[-1]["batches"])
        shown = ", ".join(f"{name}={term:.4g}" for name, term in terms.items())
        raise NonFiniteLossError(
            f"The {where} loss became {value} at epoch {epoch}, batch {batch} ({shown}); "
            "training stopped before the step that would spread it into the weights, and "
            "no weights of this call are kept. Try a lower lr (it is "
            f"{self.lr:g}; the default is 1e-3), and check the input scale: inputs are "
            "standardised per channel with the statistics of the first fit, so values far "
            "outside the range of that data, or a nearly constant channel, are the usual "
            "causes."
        )


def plain_module(net: DeepInfomaxNet) -> nn.Module:
    """The net's module without the ``torch.compile`` and ``DistributedDataParallel``
    wrappers (whose weights' names carry ``_orig_mod.`` and ``module.`` prefixes)."""
    module = getattr(net.module_, "_orig_mod", net.module_)
    return module.module if isinstance(module, DistributedDataParallel) else module


# -- the net of one training call: built from the settings, trained, its result -----------


DEVICE_MEMORY_SHARE = 0.5
"""``data_on_device="auto"`` copies the training set to a CUDA device when it takes at most
this share of the device's free memory."""


def build_net(
    module: nn.Module,
    config: Settings,
    dataset: ArrayBatches,
    *,
    max_epochs: int,
    device: torch.device,
    valid_dataset: ArrayBatches | None = None,
    generators=(None, None),
    ranks: Ranks | None = None,
) -> DeepInfomaxNet:
    """A :class:`~dimlearn.net.DeepInfomaxNet` around an already built module, ready for
    ``fit(dataset)``, with the callbacks ``config`` asks for.

    With ``valid_dataset``, the weighted objective is also computed on it after every epoch
    (``valid_loss``) and training stops once it has not improved by ``tol`` for
    ``n_iter_no_change`` epochs, restoring the weights and optimiser state of the best epoch
    (:class:`~dimlearn.callbacks.BestEpochEarlyStopping`). ``lr_schedule="cosine"`` anneals
    the learning rate to 0 batch by batch over ``max_time`` when set, else over
    ``max_epochs`` (:class:`~dimlearn.callbacks.CosineSchedule`). ``max_time`` stops
    training at a batch's or an epoch's end (:class:`~dimlearn.callbacks.TimeBudget`), and so
    does a Ctrl-C during :func:`_fit_net` (``net.stop_request``). With ``ranks`` each process
    trains on its part of every batch and only rank 0 prints. The ``callbacks`` parameter's
    run after those that score and schedule, before those that stop; the optimiser is the
    ``optimizer`` parameter's, given ``lr`` and the routed keywords.
    """
    criterion = DeepInfomaxLoss(config.objective.weights)
    callbacks = [
        (f"train_{name}", PassthroughScoring(name=f"train_{name}", on_train=True))
        for name in criterion.active_terms
    ]
    if config.optimisation.lr_schedule == "cosine":
        callbacks.append(("lr_schedule", CosineSchedule(max_epochs, config.optimisation.max_time)))
    callbacks.extend(config.runtime.callbacks or [])  # checked by resolved()
    if valid_dataset is not None:
        stopping = BestEpochEarlyStopping(
            monitor="valid_loss",
            patience=config.optimisation.n_iter_no_change,
            threshold=config.optimisation.tol,
            threshold_mode="abs",
            load_best=True,
        )
        callbacks.append(("early_stopping", stopping))
    if config.optimisation.max_time is not None:
        callbacks.append(("time_budget", TimeBudget(config.optimisation.max_time)))
    stop_request = StopRequest()
    callbacks.append(("stop_request", StopAtBatchEnd(stop_request)))
    verbose = int(config.runtime.verbose) if ranks is None or ranks.rank == 0 else 0
    if ranks is not None:
        callbacks.append(("whole_batch_size", WholeBatchSize()))
    if verbose:
        callbacks.append(("progress_bar", ProgressBar()))
    on_cuda = device.type == "cuda"
    resident = keeps_data_on_device(dataset, config, device)
    return DeepInfomaxNet(
        module,
        criterion=criterion,
        optimizer=optimizer_class(config.optimisation.optimizer),
        **{f"optimizer__{key}": value for key, value in config.optimizer_options.items()},
        lr=config.optimisation.lr,
        max_epochs=max_epochs,
        batch_size=config.optimisation.batch_size,
        iterator_train=ShuffledBatches,
        iterator_train__device=device,
        iterator_train__pin_memory=on_cuda,
        iterator_train__resident_on=device if resident else None,
        iterator_train__generator=generators[0],
        iterator_train__parts=None if ranks is None else ranks.part,
        iterator_valid=OrderedBatches,
        iterator_valid__device=device,
        compile=bool(config.runtime.compile),
        train_split=None if valid_dataset is None else FixedSplit(valid_dataset),
        callbacks=callbacks,
        device=device,
        verbose=verbose,
        augment=bool(config.views.augment),
        views=config.views.views,
        augmentation=config.views.augmentation,
        flip=bool(config.views.flip),
        kind=dataset.layout.kind,
        channels_last=on_cuda and dataset.layout.kind == "image",
        generator=generators[1],
        precision=config.runtime.precision,
        ranks=ranks,
        stop_request=stop_request,
    )


def keeps_data_on_device(dataset: ArrayBatches, config: Settings, device) -> bool:
    """Whether the whole training set goes to the device once (``data_on_device``)."""
    if config.runtime.data_on_device != "auto":
        return bool(config.runtime.data_on_device)
    if device.type != "cuda":
        return False  # on the CPU a resident copy is only a second copy of X
    free, _ = torch.cuda.mem_get_info(device)
    return dataset.nbytes <= DEVICE_MEMORY_SHARE * free


def restore_training_state(net: DeepInfomaxNet, fitted: FittedState, trained: set[str]) -> None:
    """Load fitted weights and the name-keyed optimiser state (Adam's moments) into a
    freshly initialised net (:func:`~dimlearn.training.train` has checked that its class
    is the fitted one).

    Every fitted weight must have a place of the same shape in the new module (else a
    ``ValueError`` names the differing weights). The optimiser keeps its own, current,
    learning rate. Parts of the new module that the fitted one lacks keep their fresh
    weights; if the loss trains one of them (``trained``), or the optimiser state is
    missing, a warning says so.
    """
    fitted_state = fitted.module.state_dict()
    fresh = plain_module(net).state_dict()
    mismatched = sorted(
        key
        for key in fitted_state
        if key not in fresh or fresh[key].shape != fitted_state[key].shape
    )
    if mismatched:
        raise ValueError(
            "warm_start / partial_fit continues the fitted networks, but the current "
            "parameters build different ones (latent_dim, width, critic, critic_width or image "
            f"size changed; differing weights: {', '.join(mismatched[:4])}"
            f"{', ...' if len(mismatched) > 4 else ''}). Restore those parameters, or set "
            "warm_start=False to train afresh."
        )
    plain_module(net).load_state_dict(fitted_state, strict=False)
    if fitted.optimizer_state is not None:
        set_named_optimizer_state(net.optimizer_, plain_module(net), fitted.optimizer_state)
    net.epochs_before = fitted.n_iter
    new_parts = {key.split(".")[0] for key in fresh if key not in fitted_state}
    notes = []
    untrained = sorted(new_parts & trained)
    if untrained:
        notes.append(
            f"the fitted model has no trained {', '.join(untrained)} (its term was off when "
            "it was trained: weight 0, or local_scales=1 for the conv_local_critic; or the "
            "model was saved without include_training_state=True, so it was not kept): a "
            "new one, randomly initialised, is trained from here on next to the fitted "
            "encoder"
        )
    if fitted.optimizer_state is None:
        notes.append(
            "the model holds no optimiser state (it was loaded from a file saved without "
            f"include_training_state=True): {type(net.optimizer_).__name__} starts afresh"
        )
    if notes:
        warn(f"Continuing training: {'; '.join(notes)}.")


def _fit_net(net: DeepInfomaxNet, dataset: ArrayBatches) -> dict | None:
    """Train ``net`` on ``dataset`` (one call of skorch's ``partial_fit``), Ctrl-C-safe.

    A first Ctrl-C stops training at the end of the running batch (see
    :func:`~dimlearn.callbacks.deferred_sigint`); an epoch cut short by it or by the time
    budget is completed in the history (:func:`~dimlearn.callbacks.finish_history`), and a
    warning says where a Ctrl-C stopped. A second Ctrl-C stops training at once (skorch's
    ``partial_fit`` swallows its ``KeyboardInterrupt`` and keeps the batches that finished);
    in data-parallel training it abandons the call instead, raising ``KeyboardInterrupt``
    again: the other processes may be waiting in a collective of the step it cut, so this
    process cannot stop alone (:meth:`~dimlearn.distributed.Ranks.training` ends theirs).
    Returns the description of an epoch cut short, or None.
    """
    with deferred_sigint(net.stop_request):
        net.partial_fit(dataset, None)
        if net.stop_request.forced and net.ranks is not None:
            raise KeyboardInterrupt  # that skorch took for a stop of this process alone
    timer = dict(net.callbacks_).get("epoch_timer")
    if len(net.history) and "dur" not in net.history[-1] and timer is not None:
        net.history.record("dur", time.time() - timer.epoch_start_time_)
    planned = -(-len(dataset) // net.batch_size)  # ceil: inputs.split_batches's count
    cut = finish_history(net.history, planned)
    by_time = len(net.history) and net.history[-1].get("stopped_by_time", False)
    if net.stop_request.requested or (cut is not None and not by_time):
        _warn_interrupted(net, cut)
    return cut


def _warn_interrupted(net: DeepInfomaxNet, cut: dict | None) -> None:
    if cut is None:
        where = f"at the end of epoch {net.epochs_before + len(net.history)}"
    elif cut["batches"] == 0:
        where = f"before the first batch of epoch {net.epochs_before + cut['epoch']} ended"
    else:
        where = (
            f"in epoch {net.epochs_before + cut['epoch']}, after batch {cut['batches']} "
            f"of {cut['planned']}"
        )
    warn(
        f"Training was interrupted (Ctrl-C) {where}. The model keeps the weights trained "
        "so far (with early_stopping, those of the best epoch); history_, n_iter_ and "
        "loss_curve_ count an epoch cut short as one. Call fit with warm_start=True, or "
        "partial_fit, to go on training."
    )


@contextlib.contextmanager
def _data_parallel(net: DeepInfomaxNet, compile: bool, frozen: set[str]):
    """Within the block, with ``net.ranks``, the net's module is wrapped in
    ``DistributedDataParallel`` (compiled around the wrapper with ``compile=True``); the
    ``frozen`` parts, which no term trains, take no gradient, and a failure in one process
    ends the others' fits with its error (:meth:`~dimlearn.distributed.Ranks.training`).
    Unwrapped again on leaving. Without ranks, the block runs as it is."""
    if net.ranks is None:
        yield
        return
    before = net.module_
    device = torch.device(net.device)
    with (
        net.ranks.training(),
        data_parallel(plain_module(net), net.ranks, device, frozen) as wrapped,
    ):
        net.module_ = net.torch_compile(wrapped, "module") if compile else wrapped
        try:
            yield
        finally:
            net.module_ = before


@dataclass
class TrainingCall:
    """The outcome of :func:`train_net`: the trained module (on the CPU, without the parts
    no term trains), its Adam moments by weight name, the history of this call."""

    module: nn.Module
    optimizer_state: dict
    history: History


def train_net(net: DeepInfomaxNet, dataset: ArrayBatches, config: Settings, fitted=None):
    """Train an initialised net on ``dataset`` (continuing from ``fitted``, a
    :class:`~dimlearn.fitted.FittedState`, if given), alone or data-parallel (``net.ranks``),
    Ctrl-C-safe, and collect the result (:class:`TrainingCall`)."""
    trained = trained_parts(config)
    if fitted is not None:
        restore_training_state(net, fitted, trained)
    frozen = {name for name, _ in plain_module(net).named_children()} - trained
    with _data_parallel(net, config.runtime.compile, frozen):
        _fit_net(net, dataset)
    module = keep_parts(plain_module(net).to("cpu").eval(), kept_parts(config))
    kept = dict(module.named_parameters())
    state = named_optimizer_state(net.optimizer_, plain_module(net))
    return TrainingCall(module, {k: v for k, v in state.items() if k in kept}, net.history)
