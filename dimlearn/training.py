"""One training call, start to end: agree with the other processes, read the data's layout,
make the settings' ``"auto"`` choices, build the networks, standardise and split the data,
train (:mod:`dimlearn.net`), and return the fitted state it leaves behind (:func:`train`)."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import torch

from .config import resolved
from .devices import native_bfloat16, resolve_device
from .distributed import training_ranks
from .fitted import FittedState, loss_curve
from .infomax import build_module
from .inputs import resolve_layout, training_data
from .net import build_net, train_net
from .optimizer_state import check_continued_optimizer, optimizer_name
from .settings import Settings

_INITIAL_WEIGHTS_LOCK = threading.Lock()
"""Fits in several threads draw their initial weights one at a time (nn.Module draws them
from the global CPU generator, which each fit seeds under a fork)."""


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
    training (and before the pass over X for its statistics). ``partial``: one epoch of
    ``partial_fit`` (no schedule, nothing held out). All randomness comes from ``seed``,
    through generators this call owns; only the initial weights, which ``nn.Module`` draws
    from the global generator, are drawn under a fork of the CPU one, so torch's global RNG
    is left as it was.

    Raises :class:`~dimlearn.net.NonFiniteLossError` if the loss stops being finite;
    nothing outside the returned state is changed, so a caller that does not keep it is left
    as it was. In data-parallel training (``distributed``, :mod:`dimlearn.distributed`)
    every process is passed the same X, settings and seed, trains on its part of every
    batch, and returns the same state.
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
        settings = _as_continued(settings, previous)
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
    if partial:  # one epoch a call, on a stream: no schedule within it
        config = replace(config, optimisation=replace(config.optimisation, lr_schedule="constant"))
    with _INITIAL_WEIGHTS_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        module = build_module(config, layout)
    train_rows, valid_rows, stats = training_data(
        X,
        layout,
        None if previous is None else (previous.input_mean, previous.input_scale),
        config.optimisation,
        seed=seed,
        hold_out=config.optimisation.early_stopping and not partial,
        processes=1 if ranks is None else ranks.size,
    )
    host = torch.Generator().manual_seed(seed)
    on_device = host if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    net = build_net(
        module,
        config,
        train_rows,
        max_epochs=max_epochs,
        device=device,
        valid_dataset=valid_rows,
        generators=(host, on_device),
        ranks=ranks,
    )
    net.initialize()
    if net.channels_last:
        net.module_.to(memory_format=torch.channels_last)
    run = train_net(net, train_rows, config, previous)
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


def _as_continued(settings: Settings, previous: FittedState) -> Settings:
    """The settings of a call that continues ``previous``: where a parameter is still
    ``"auto"``, what it resolved to when that model was trained."""
    params = settings.params()
    for name, value in previous.chosen.items():
        if name != "device" and params[name] == "auto" and value is not None:
            params[name] = value
    return Settings.from_params(params)
