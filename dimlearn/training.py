"""One training call, start to end: read the data, make the settings' ``"auto"`` choices,
build the networks, wire skorch's callbacks, continue from a fitted state, train (alone or
data-parallel), and return the fitted state it leaves behind (:func:`train`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from skorch.callbacks import PassthroughScoring, ProgressBar
from skorch.history import History
from torch import nn

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
from .config import resolved
from .devices import native_bfloat16, resolve_device
from .distributed import Ranks, data_parallel, training_ranks
from .fitted import FittedState, loss_curve
from .infomax import build_module, keep_parts, kept_parts, trained_parts
from .inputs import (
    ArrayBatches,
    OrderedBatches,
    ShuffledBatches,
    channel_stats,
    holdout_rows,
    resolve_layout,
)
from .net import DeepInfomaxNet, FixedSplit, plain_module
from .objectives import DeepInfomaxLoss
from .optimizer_state import (
    check_continued_optimizer,
    named_optimizer_state,
    optimizer_class,
    optimizer_name,
    set_named_optimizer_state,
)
from .settings import Settings

DEVICE_MEMORY_SHARE = 0.5
"""``data_on_device="auto"`` copies the training set to a CUDA device when it takes at most
this share of the device's free memory."""

_INITIAL_WEIGHTS_LOCK = threading.Lock()
"""Fits in several threads draw their initial weights one at a time (nn.Module draws them
from the global CPU generator, which each fit seeds under a fork)."""


@dataclass
class TrainingCall:
    """The outcome of :func:`train_networks`: the trained module (on the CPU, without the
    parts no term trains), its optimiser state (Adam's moments) by weight name, the history
    of this call."""

    module: nn.Module
    optimizer_state: dict
    history: History


def train(
    X: np.ndarray,
    settings: Settings,
    *,
    seed: int,
    max_epochs: int,
    previous: FittedState | None = None,
    partial: bool = False,
    feature_names_in=None,
) -> FittedState:
    """One training call of the estimator on validated ``X``: the fitted state it leaves.

    ``settings`` are the estimator's parameters; their ``"auto"`` choices are made for the
    data and the device here (a continued model, ``previous``, keeps its own where the
    parameter is still ``"auto"``), and impossible combinations are refused before any
    training. ``partial``: one epoch of ``partial_fit`` (no schedule, nothing held out).
    All randomness comes from ``seed``. Nothing outside the returned state is changed.
    """
    ranks = training_ranks(settings.runtime.distributed)
    device = resolve_device(settings.runtime.device, strict=True)
    if ranks is not None:
        device = ranks.device(device)
        seed = ranks.agree(seed, X)  # rank 0's, once every process holds the same X
    if previous is None:
        layout = resolve_layout(X.shape[1:], settings.data.image_shape, settings.data.image_layout)
    else:
        layout = previous.layout
        if len(X) < 2:
            raise ValueError(
                f"Found array with {len(X)} sample(s); training needs at least 2 "
                "(a batch of one has no negatives)."
            )
    if previous is not None:  # a continued model keeps what its "auto" settings chose
        params = settings.params()
        for name, value in previous.chosen.items():
            if name != "device" and params[name] == "auto" and value is not None:
                params[name] = value
        settings = Settings.from_params(params)
    if previous is not None and previous.optimizer_state is not None:
        check_continued_optimizer(previous.optimizer_name, settings.optimisation.optimizer)
    config = resolved(
        settings, layout, native_bfloat16=native_bfloat16(device), device_type=device.type
    )
    chosen = {
        "precision": config.runtime.precision,
        "views": config.views.views,
        "flip": config.views.flip,
        "device": str(device),
    }
    if previous is None:  # a pass over X: after every check of the settings
        stats = channel_stats(X, layout)
    else:
        stats = (previous.input_mean, previous.input_scale)
    if partial:  # one epoch a call, on a stream: no schedule within it
        config = replace(config, optimisation=replace(config.optimisation, lr_schedule="constant"))
    train_rows, valid_rows = None, None
    if config.optimisation.early_stopping and not partial:
        train_rows, valid_rows = holdout_rows(len(X), config.optimisation.validation_fraction, seed)
    run = train_networks(
        ArrayBatches(X, layout, *stats, rows=train_rows),
        None if valid_rows is None else ArrayBatches(X, layout, *stats, valid_rows),
        config,
        seed=seed,
        device=device,
        max_epochs=max_epochs,
        fitted=previous,
        ranks=ranks,
    )
    for entry in run.history:  # what this call's epochs ran with
        entry.update(chosen)
    optimizer = optimizer_name(config.optimisation.optimizer)
    if previous is not None:
        return previous.continued_by(
            run.module, run.optimizer_state, run.history, optimizer_name=optimizer, **chosen
        )
    return FittedState(
        module=run.module,
        history=run.history,
        loss_curve=loss_curve(run.history),
        n_iter=len(run.history),
        input_mean=stats[0],
        input_scale=stats[1],
        sample_shape=tuple(X.shape[1:]),
        layout=layout,
        n_features_in=int(np.prod(X.shape[1:])),
        feature_names_in=feature_names_in,
        optimizer_state=run.optimizer_state,
        optimizer_name=optimizer,
        **chosen,
    )


def train_networks(
    dataset: ArrayBatches,
    valid_dataset: ArrayBatches | None,
    config: Settings,
    *,
    seed: int,
    device: torch.device,
    max_epochs: int,
    fitted: FittedState | None = None,
    ranks: Ranks | None = None,
) -> TrainingCall:
    """One training call: build the networks for the dataset's layout, continue from
    ``fitted`` if given, train for at most ``max_epochs``, and return the result. All
    randomness comes from ``seed``, through generators this call owns.

    Raises :class:`~dimlearn.net.NonFiniteLossError` if the loss stops being finite;
    nothing outside the returned object is changed (torch's global RNG included), so a
    caller that does not keep it is left as it was.

    With ``ranks``, this process is one of several that train the same networks together
    (:mod:`dimlearn.distributed`): each is passed the same dataset, config and seed, trains
    on its part of every batch, and returns the same result.
    """
    if ranks is not None:
        ranks.check_batches(
            dataset.batch_sizes(config.optimisation.batch_size), config.optimisation.batch_size
        )
    # the call's randomness comes from generators it owns (shuffle on the host; code
    # samples, negatives and augmentation on the device); only the initial weights, which
    # nn.Module draws from the global generator, are drawn under a fork of the CPU one
    host = torch.Generator().manual_seed(seed)
    on_device = host if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    with _INITIAL_WEIGHTS_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        module = build_module(config, dataset.layout)
    net = build_net(
        module,
        config,
        dataset,
        max_epochs=max_epochs,
        device=device,
        valid_dataset=valid_dataset,
        generators=(host, on_device),
        ranks=ranks,
    )
    net.initialize()
    if net.channels_last:
        net.module_.to(memory_format=torch.channels_last)
    trained = trained_parts(config)
    if fitted is not None:
        restore_training_state(net, fitted, trained)
    if ranks is None:
        fit_net(net, dataset)
    else:
        frozen = {name for name, _ in module.named_children()} - trained
        _fit_data_parallel(net, dataset, config, ranks, frozen)
    module = keep_parts(plain_module(net).to("cpu").eval(), kept_parts(config))
    kept = dict(module.named_parameters())
    state = named_optimizer_state(net.optimizer_, plain_module(net))
    return TrainingCall(module, {k: v for k, v in state.items() if k in kept}, net.history)


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
    does a Ctrl-C during :func:`fit_net` (``net.stop_request``). With ``ranks`` each process
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
    freshly initialised net (:func:`train` has checked that its class is the fitted one).

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


def fit_net(net: DeepInfomaxNet, dataset: ArrayBatches) -> dict | None:
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
    cut = finish_history(net.history, len(dataset.batch_sizes(net.batch_size)))
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


def _fit_data_parallel(net, dataset, config: Settings, ranks: Ranks, frozen: set[str]):
    """:func:`fit_net` with the module wrapped in ``DistributedDataParallel`` (compiled
    around the wrapper with ``compile=True``), unwrapped again afterwards; the ``frozen``
    parts, which no term trains, take no gradient. A failure in one process ends the
    others' fits with its error (:meth:`~dimlearn.distributed.Ranks.training`)."""
    before = net.module_
    device = torch.device(net.device)
    with ranks.training(), data_parallel(plain_module(net), ranks, device, frozen) as wrapped:
        net.module_ = net.torch_compile(wrapped, "module") if config.runtime.compile else wrapped
        try:
            fit_net(net, dataset)
        finally:
            net.module_ = before
