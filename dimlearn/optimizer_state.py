"""The optimiser: which class a training call builds, the keywords routed to it, and its
state as plain name-keyed tensors, so that it outlives one training call.

The optimiser's state (Adam's moments) is kept per parameter *name*
(``"encoder.to_local.0.weight"``), not by the position of the parameter in the optimiser, so
that it survives networks gaining or losing a part between calls (a critic that a zero weight
made useless is not kept) and can be written to a safetensors file. Its hyperparameters
(``lr``, betas) are not kept: a continued fit uses the estimator's current ``lr``, schedule and
routed keywords, and the state is only carried to an optimiser of the class that made it
(:func:`check_continued_optimizer`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import nn

from .settings import OPTIMIZERS, ROUTED_PREFIX


def optimizer_class(optimizer) -> type:
    """The ``torch.optim.Optimizer`` class that the ``optimizer`` parameter names.

    Examples
    --------
    >>> optimizer_class("adamw").__name__, optimizer_class(torch.optim.SGD).__name__
    ('AdamW', 'SGD')
    """
    return OPTIMIZERS[optimizer] if isinstance(optimizer, str) else optimizer


def optimizer_name(optimizer) -> str:
    """The name under which a model records the class of its optimiser state: the
    parameter's name (``"adam"``, also for ``torch.optim.Adam`` itself), else the class's
    import path.

    Examples
    --------
    >>> optimizer_name(torch.optim.Adam), optimizer_name(torch.optim.NAdam)
    ('adam', 'torch.optim.nadam.NAdam')
    """
    cls = optimizer_class(optimizer)
    for name, builtin in OPTIMIZERS.items():
        if cls is builtin:
            return name
    return f"{cls.__module__}.{cls.__qualname__}"


def check_optimizer_options(optimizer, options: Mapping) -> None:
    """Raise ``ValueError`` naming the fix if the keywords routed to the optimiser
    (``optimizer__<keyword>``) are ones its constructor does not take, or ``lr`` or
    ``params``, which dimlearn passes itself.

    Examples
    --------
    >>> check_optimizer_options("adamw", {"weight_decay": 1e-4})
    >>> try:
    ...     check_optimizer_options("sgd", {"betas": (0.9, 0.99)})
    ... except ValueError as error:
    ...     print(str(error)[:60])
    optimizer__betas is routed to SGD(...), which takes no keywo
    """
    cls = optimizer_class(optimizer)
    for own, instead in (("lr", "Set lr instead"), ("params", "Leave it out")):
        if own in options:
            raise ValueError(
                f"{ROUTED_PREFIX}{own} is given, but dimlearn passes the optimiser its "
                f"{'learning rate, the estimator parameter lr' if own == 'lr' else 'weights'} "
                f"itself. {instead}."
            )
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: its constructor will say
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return
    taken = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("params", "lr")
    ]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(
            f"{ROUTED_PREFIX}{unknown[0]} is routed to {cls.__name__}(...), which takes no "
            f"keyword {unknown[0]!r}; it takes {', '.join(taken) or 'none but lr'}. Build the "
            "estimator without it (set_params cannot remove a parameter), or choose an "
            "optimizer that takes it."
        )


def check_continued_optimizer(fitted: str | None, optimizer) -> None:
    """Raise ``ValueError`` if a continued fit would carry the optimiser state of class
    ``fitted`` (:func:`optimizer_name`; None reads as ``"adam"``, the only optimiser of
    older models) to another optimiser class."""
    fitted = fitted or "adam"
    if fitted != optimizer_name(optimizer):
        raise ValueError(
            f"warm_start / partial_fit continues the fitted optimiser state, which is "
            f"{fitted!r}'s, but optimizer={optimizer_name(optimizer)!r} builds another "
            f"optimiser, whose state means something else. Set optimizer back to the "
            "fitted one, or warm_start=False to train afresh."
        )


def named_optimizer_state(
    optimizer: torch.optim.Optimizer, module: nn.Module, device: str | None = "cpu"
) -> dict:
    """Per-parameter optimiser state keyed by parameter name, copied to ``device`` (None:
    copied where it is, e.g. for a checkpoint kept during training).

    Parameters that never received a gradient (parts of unused terms) have no state and
    are left out.
    """
    names = {id(param): name for name, param in module.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state:
                out[names[id(param)]] = {
                    key: value.detach().clone()
                    if device is None
                    else value.detach().to(device, copy=True)
                    for key, value in _tensors(state).items()
                }
    return out


def set_named_optimizer_state(
    optimizer: torch.optim.Optimizer, module: nn.Module, state: dict
) -> list[str]:
    """Load name-keyed state (:func:`named_optimizer_state`) into ``optimizer``, by copy.

    The optimiser's own hyperparameters (``lr``, betas) are left as they are. Parameters
    without saved state start fresh; their names are returned.
    """
    params = dict(module.named_parameters())
    fresh = []
    for name, param in params.items():
        optimizer.state.pop(param, None)
        saved = state.get(name)
        if saved is None:
            fresh.append(name)
            continue
        optimizer.state[param] = {
            # Adam keeps `step` on the CPU unless capturable/fused: keep each value's device
            key: value.clone() if key == "step" else value.to(param.device, copy=True)
            for key, value in saved.items()
        }
    return fresh


def _tensors(state: dict) -> dict:
    """An optimiser's state of one parameter as tensors: numbers (a step count that an
    optimiser of your own keeps as an int) become 0-d tensors, None values are left out."""
    return {
        key: value if isinstance(value, torch.Tensor) else torch.tensor(value)
        for key, value in state.items()
        if value is not None
    }
