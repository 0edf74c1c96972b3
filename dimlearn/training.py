"""The skorch side: one DIM training step, the callbacks wiring, and a training call from
start to end (build, restore, fit, collect)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import LRScheduler, PassthroughScoring, ProgressBar
from skorch.history import History
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._warn import warn
from .callbacks import (
    BestEpochEarlyStopping,
    StopAtBatchEnd,
    StopRequest,
    TimeBudget,
    WholeBatchSize,
    deferred_sigint,
    finish_history,
)
from .distributed import Ranks, data_parallel
from .infomax import DeepInfomaxModule
from .inputs import (
    ArrayBatches,
    Layout,
    OrderedBatches,
    ShuffledBatches,
    random_crop_flip,
    split_batches,
)
from .networks import ConvEncoder, MLPEncoder, fold_biases_into_batch_norm
from .state import (
    OPTIONAL_PARTS,
    drop_unused_parts,
    named_optimizer_state,
    parts_in_use,
    set_named_optimizer_state,
)

TERM_NAMES = ("global", "local", "prior", "local_local")


class DeepInfomaxLoss(nn.Module):
    """``alpha * global + beta * local + gamma * prior + delta * local_local``; terms with
    weight 0 are skipped."""

    def __init__(self, alpha: float, beta: float, gamma: float, delta: float = 0.0):
        super().__init__()
        self.weights = dict(zip(TERM_NAMES, (alpha, beta, gamma, delta), strict=True))

    @property
    def active_terms(self) -> tuple[str, ...]:
        return tuple(name for name, weight in self.weights.items() if weight > 0)

    def forward(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * value for name, value in terms.items())


class FixedSplit:
    """skorch ``train_split`` that keeps the training data whole and validates on a held-out
    dataset chosen beforehand (the estimator draws the split, reproducibly)."""

    def __init__(self, valid_dataset: ArrayBatches):
        self.valid_dataset = valid_dataset

    def __call__(self, dataset, y=None, **fit_params):
        return dataset, self.valid_dataset


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss and was stopped.

    Raised by ``fit`` and ``partial_fit`` at the first batch whose loss is not finite,
    before the optimiser step that would spread it into the weights. A first fit leaves the
    estimator unfitted; a continued fit leaves it exactly as it was before the call.
    """


class DeepInfomaxNet(NeuralNet):
    """skorch ``NeuralNet`` that trains a :class:`~dimlearn.infomax.DeepInfomaxModule`.

    The module returns the loss terms of a batch, the criterion weighs them, and the terms are
    recorded per batch so that :class:`~skorch.callbacks.PassthroughScoring` reports their
    epoch means in the history next to ``train_loss``. A loss that is not finite stops
    training at once with :class:`NonFiniteLossError`. ``epochs_before`` (epochs that
    earlier calls ran) only numbers epochs in that error's message.
    """

    epochs_before = 0
    prepare = None  # ArrayBatches.prepare of the training data: standardises on the device
    augment = False
    channels_last = False  # image batches in NHWC memory order (convolutions on CUDA)
    generator = None  # the training call's generator on the device (augmentation)
    ranks = None  # the processes training together (data-parallel), or None

    def model_input(self, raw: torch.Tensor, training: bool, part=None) -> torch.Tensor:
        """A raw batch (stored dtype, on the host) as model input on the net's device:
        copied as it is stored, then standardised (and augmented) there. ``part``: which
        rows of the whole batch these are (data-parallel training)."""
        x = self.prepare(raw.to(self.device, non_blocking=True))
        x = random_crop_flip(x, self.generator, part) if training and self.augment else x
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    precision = "float32"
    scaler = None  # a GradScaler when training in float16

    def autocast(self):
        """Mixed precision for the forward pass and the loss, or nothing for float32."""
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def train_step_single(self, batch, **fit_params):
        """One batch's forward and backward pass. In data-parallel training ``batch[1]`` is
        this process's part of the batch; the loss is the whole batch's."""
        self._set_training(True)
        part = batch[1]
        plain_module(self).part = part
        Xi = self.model_input(batch[0], training=True, part=part)
        with self.autocast():
            terms = self.module_(Xi, self.criterion_.active_terms)
            loss = self.criterion_(terms)
        values = {name: value.item() for name, value in terms.items()}
        self._check_finite(loss, values, "training")
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        for name, value in values.items():
            self.history.record_batch(f"train_{name}", value)
        return {"loss": loss, "y_pred": None}

    def train_step(self, batch, **fit_params):
        """skorch's step, or, in float16, the same with the gradient scaler's step."""
        if self.scaler is None:
            return super().train_step(batch, **fit_params)
        self._zero_grad_optimizer()
        step = self.train_step_single(batch, **fit_params)
        self.scaler.step(self.optimizer_)
        self.scaler.update()
        return step

    def validation_step(self, batch, **fit_params):
        """The same weighted objective on a held-out batch, without gradients (eval mode)."""
        self._set_training(False)
        plain_module(self).part = None  # every process scores whole held-out batches
        with torch.no_grad(), self.autocast():
            Xi = self.model_input(batch[0], training=False)
            terms = self.module_(Xi, self.criterion_.active_terms)
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


def build_module(params: Mapping, layout: Layout) -> DeepInfomaxModule:
    """The encoder and critics for samples of ``layout``, from the estimator's parameters.

    ``params`` is ``DeepInfomaxTransformer.get_params()`` (or any mapping with its
    ``latent_dim``, ``width``, ``critic``, ``negatives``, ``mi_estimator``, ``prior`` and
    ``delta``). Weights are drawn from torch's global RNG.

    Examples
    --------
    >>> from dimlearn.inputs import resolve_layout
    >>> params = dict(latent_dim=8, width=4, critic="dot", negatives="all",
    ...               mi_estimator="infonce", prior="kl_mean", delta=0.0)
    >>> build_module(params, resolve_layout((16, 16, 3), None, "auto")).encoder.feature_dims
    {'conv': 64, 'fc': 64, 'code': 8}
    """
    latent_dim, width = params["latent_dim"], params["width"]
    if layout.kind == "tabular":
        encoder = MLPEncoder(layout.channels, latent_dim, width)
    else:
        height, width_px = layout.height_width
        encoder = ConvEncoder(layout.channels, height, width_px, latent_dim, width)
    return DeepInfomaxModule(
        encoder,
        latent_dim,
        critic_hidden=8 * width,
        critic=params["critic"],
        negatives=params["negatives"],
        mi_estimator=params["mi_estimator"],
        prior=params["prior"],
        local_local=params["delta"] > 0,
    )


def rebuild_module(params: Mapping, layout: Layout, module_state: dict) -> tuple:
    """The networks of ``params`` and ``layout`` holding ``module_state`` (a ``state_dict``
    that may lack optional parts, or come from dimlearn 0.2, whose layers before a BatchNorm
    had biases: those are folded into the BatchNorm, see
    :func:`~dimlearn.networks.fold_biases_into_batch_norm`). Returns the module (on the CPU,
    in eval mode) and the names of the folded biases."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten below
        module = build_module(params, layout)
    state = dict(module_state)
    present = {key.split(".")[0] for key in state}
    for part in OPTIONAL_PARTS:
        if part not in present:
            setattr(module, part, None)
    folded = fold_biases_into_batch_norm(state, module)
    module.load_state_dict(state)
    return module.eval(), folded


def build_net(
    module,
    params: Mapping,
    *,
    max_epochs: int,
    device,
    valid_dataset=None,
    resident_on=None,
    generators=(None, None),
    ranks=None,
):
    """A :class:`DeepInfomaxNet` around an already built module, ready for ``fit(dataset)``.

    ``params`` is the estimator's ``get_params()``: the loss weights, ``max_time``,
    ``batch_size``, ``lr``, ``lr_schedule``, ``augment``, ``n_iter_no_change``, ``tol`` and
    ``verbose`` are read from it. With ``valid_dataset``, the weighted objective is also
    computed on it after every epoch (``valid_loss``) and training stops once it has not
    improved by ``tol`` for ``n_iter_no_change`` epochs, restoring the weights and optimiser
    state of the best epoch (:class:`~dimlearn.callbacks.BestEpochEarlyStopping`).
    ``lr_schedule="cosine"`` anneals the learning rate to 0 over ``max_epochs`` (skorch's
    ``LRScheduler`` with ``CosineAnnealingLR``). ``net.stop_request``, set by a Ctrl-C
    during :func:`fit_net`, stops training at the end of a batch. With ``ranks``
    (:class:`~dimlearn.distributed.Ranks`) each process trains on its part of every batch
    and only rank 0 prints.
    """
    stop_request = StopRequest()
    criterion = DeepInfomaxLoss(params["alpha"], params["beta"], params["gamma"], params["delta"])
    callbacks = [
        (f"train_{name}", PassthroughScoring(name=f"train_{name}", on_train=True))
        for name in criterion.active_terms
    ]
    if params["lr_schedule"] == "cosine":
        callbacks.append(("lr_schedule", LRScheduler(policy="CosineAnnealingLR", T_max=max_epochs)))
    if valid_dataset is not None:
        stopping = BestEpochEarlyStopping(
            monitor="valid_loss",
            patience=params["n_iter_no_change"],
            threshold=params["tol"],
            threshold_mode="abs",
            load_best=True,
        )
        callbacks.append(("early_stopping", stopping))
    if params["max_time"] is not None:
        callbacks.append(("time_budget", TimeBudget(params["max_time"])))
    callbacks.append(("stop_request", StopAtBatchEnd(stop_request)))
    verbose = int(params["verbose"]) if ranks is None or ranks.rank == 0 else 0
    if ranks is not None:
        callbacks.append(("whole_batch_size", WholeBatchSize()))
    if verbose:
        callbacks.append(("progress_bar", ProgressBar()))
    net = DeepInfomaxNet(
        module,
        criterion=criterion,
        optimizer=torch.optim.Adam,
        lr=params["lr"],
        max_epochs=max_epochs,
        batch_size=params["batch_size"],
        iterator_train=ShuffledBatches,
        iterator_train__pin_memory=torch.device(device).type == "cuda",
        iterator_train__resident_on=resident_on,
        iterator_train__generator=generators[0],
        iterator_train__parts=None if ranks is None else ranks.part,
        compile=bool(params["compile"]),
        iterator_valid=OrderedBatches,
        train_split=None if valid_dataset is None else FixedSplit(valid_dataset),
        callbacks=callbacks,
        device=device,
        verbose=verbose,
    )
    net.stop_request = stop_request
    net.ranks = ranks
    net.augment = bool(params["augment"])
    net.generator = generators[1]
    net.precision = params["precision"]
    if net.precision == "float16":
        net.scaler = torch.amp.GradScaler(torch.device(device).type)
    return net


def restore_training_state(net: DeepInfomaxNet, fitted: FittedState, used: set[str]) -> None:
    """Load fitted weights and name-keyed Adam moments into a freshly initialised net.

    Every fitted weight must have a place of the same shape in the new module (else a
    ``ValueError`` names the differing weights). The optimiser keeps its own, current,
    learning rate. Parts of the new module that the fitted one lacks keep their fresh
    weights; if a term in ``used`` needs one of them, or Adam's moments are missing, a
    warning says so.
    """
    fresh = plain_module(net).state_dict()
    mismatched = sorted(
        key
        for key in fitted.module_state
        if key not in fresh or fresh[key].shape != fitted.module_state[key].shape
    )
    if mismatched:
        raise ValueError(
            "warm_start / partial_fit continues the fitted networks, but the current "
            "parameters build different ones (latent_dim, width, critic or image size "
            f"changed; differing weights: {', '.join(mismatched[:4])}"
            f"{', ...' if len(mismatched) > 4 else ''}). Restore those parameters, or set "
            "warm_start=False to train afresh."
        )
    plain_module(net).load_state_dict(fitted.module_state, strict=False)
    if fitted.optimizer_state is not None:
        set_named_optimizer_state(net.optimizer_, plain_module(net), fitted.optimizer_state)
    net.epochs_before = fitted.epochs
    new_parts = {key.split(".")[0] for key in fresh if key not in fitted.module_state}
    notes = []
    untrained = sorted(new_parts & used)
    if untrained:
        notes.append(
            f"the fitted model has no trained {', '.join(untrained)} (its term had weight 0 "
            "when it was trained, so it was not kept): a new one, randomly initialised, is "
            "trained from here on next to the fitted encoder"
        )
    if fitted.optimizer_state is None:
        notes.append(
            "the model holds no optimiser state (it was loaded from a file saved without "
            "include_training_state=True): Adam starts afresh"
        )
    if notes:
        warn(f"Continuing training: {'; '.join(notes)}.")


def fit_net(net: DeepInfomaxNet, dataset: ArrayBatches) -> dict | None:
    """Train ``net`` on ``dataset`` (one call of skorch's ``partial_fit``), Ctrl-C-safe.

    A first Ctrl-C stops training at the end of the running batch (see
    :func:`~dimlearn.callbacks.deferred_sigint`); an epoch cut short by it or by the time
    budget is completed in the history (:func:`~dimlearn.callbacks.finish_history`), and a
    warning says where a Ctrl-C stopped. Returns the description of an epoch cut short, or
    None.
    """
    with deferred_sigint(net.stop_request):
        net.partial_fit(dataset, None)
    timer = dict(net.callbacks_).get("epoch_timer")
    if len(net.history) and "dur" not in net.history[-1] and timer is not None:
        net.history.record("dur", time.time() - timer.epoch_start_time_)
    cut = finish_history(net.history, len(split_batches(len(dataset), net.batch_size)))
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


_INITIAL_WEIGHTS_LOCK = threading.Lock()
"""Fits in several threads draw their initial weights one at a time (nn.Module draws them
from the global CPU generator, which each fit seeds under a fork)."""


def plain_module(net: DeepInfomaxNet) -> nn.Module:
    """The net's module without the ``torch.compile`` and ``DistributedDataParallel``
    wrappers (whose weights' names carry ``_orig_mod.`` and ``module.`` prefixes)."""
    module = getattr(net.module_, "_orig_mod", net.module_)
    return module.module if isinstance(module, DistributedDataParallel) else module


DEVICE_MEMORY_SHARE = 0.5
"""``data_on_device="auto"`` copies the training set to a CUDA device when it takes at most
this share of the device's free memory."""


def keeps_data_on_device(dataset: ArrayBatches, params: Mapping, device: torch.device) -> bool:
    """Whether the whole training set goes to the device once (``data_on_device``)."""
    choice = params["data_on_device"]
    if choice != "auto":
        return bool(choice)
    if device.type != "cuda":
        return False  # on the CPU a resident copy is only a second copy of X
    free, _ = torch.cuda.mem_get_info(device)
    item = 1 if dataset.X.dtype == np.uint8 else 4
    return len(dataset) * int(np.prod(dataset.X.shape[1:])) * item <= DEVICE_MEMORY_SHARE * free


@dataclass
class FittedState:
    """What a training call continues from, or what it leaves behind.

    ``module_state`` is a module's ``state_dict``; ``optimizer_state`` Adam's moments by
    parameter name (None when unknown); ``epochs`` how many epochs produced them.
    """

    module_state: dict
    optimizer_state: dict | None
    epochs: int


@dataclass
class TrainingCall:
    """The outcome of :func:`train_networks`: the trained module, its Adam moments, the
    history of this call's epochs."""

    module: nn.Module
    optimizer_state: dict
    history: History


def train_networks(
    dataset: ArrayBatches,
    valid_dataset: ArrayBatches | None,
    params: Mapping,
    *,
    seed: int,
    device: torch.device,
    max_epochs: int,
    fitted: FittedState | None = None,
    ranks: Ranks | None = None,
) -> TrainingCall:
    """One training call, start to end: build the networks for the dataset's layout from
    ``params``, continue from ``fitted`` if given, train, and return the module on the CPU
    without the parts that no term uses (:func:`~dimlearn.state.drop_unused_parts`). All
    randomness comes from ``seed``, through generators this call owns.

    Raises :class:`NonFiniteLossError` if the loss stops being finite; nothing outside the
    returned object is changed (torch's global RNG included), so a caller that does not
    keep it is left as it was.

    With ``ranks``, this process is one of several that train the same networks together
    (:mod:`dimlearn.distributed`): each is passed the same dataset, params and seed, trains
    on its part of every batch, and returns the same result.
    """
    used = parts_in_use(params["alpha"], params["gamma"], params["delta"], params["prior"])
    if ranks is not None:
        ranks.check_batches(split_batches(len(dataset), params["batch_size"]), params["batch_size"])
    # the call's randomness comes from generators it owns (shuffle on the host; code
    # samples, negatives and augmentation on the device); only the initial weights, which
    # nn.Module draws from the global generator, are drawn under a fork of the CPU one
    host = torch.Generator().manual_seed(seed)
    on_device = host if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    with _INITIAL_WEIGHTS_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        module = build_module(params, dataset.layout)
    module.generator = on_device
    net = build_net(
        module,
        params,
        max_epochs=max_epochs,
        device=device,
        valid_dataset=valid_dataset,
        resident_on=device if keeps_data_on_device(dataset, params, device) else None,
        generators=(host, on_device),
        ranks=ranks,
    )
    net.prepare = dataset.prepare
    net.initialize()
    if device.type == "cuda" and dataset.layout.kind == "image":
        net.channels_last = True
        net.module_.to(memory_format=torch.channels_last)
    try:
        if fitted is not None:
            restore_training_state(net, fitted, used)
        if ranks is None:
            fit_net(net, dataset)
        else:
            _fit_data_parallel(net, dataset, params, ranks, _untrained_parts(params, used))
    finally:
        module.generator = None  # neither is part of the fitted model
        module.part = None
    module = drop_unused_parts(plain_module(net).to("cpu").eval(), used)
    kept = dict(module.named_parameters())
    state = named_optimizer_state(net.optimizer_, plain_module(net))
    return TrainingCall(module, {k: v for k, v in state.items() if k in kept}, net.history)


def _untrained_parts(params: Mapping, used: set[str]) -> set[str]:
    """Parts of the module that no term of this loss trains."""
    local = {"local_critic"} if params["beta"] == 0 else set()
    return (set(OPTIONAL_PARTS) - used) | local


def _fit_data_parallel(net, dataset, params, ranks: Ranks, untrained: set[str]) -> None:
    """:func:`fit_net` with the module wrapped in ``DistributedDataParallel`` (compiled
    around the wrapper with ``compile=True``), unwrapped again afterwards."""
    before = net.module_
    device = torch.device(net.device)
    with data_parallel(plain_module(net), ranks, device, untrained) as wrapped:
        net.module_ = net.torch_compile(wrapped, "module") if params["compile"] else wrapped
        try:
            fit_net(net, dataset)
        finally:
            net.module_ = before
