"""Adam's state as plain name-keyed tensors, so that it outlives one training call.

Adam's state is kept per parameter *name* (``"encoder.to_local.0.weight"``), not by the
position of the parameter in the optimiser, so that it survives networks gaining or losing
a part between calls (a critic that a zero weight made useless is not kept) and can be
written to a safetensors file. Its hyperparameters (``lr``, betas) are not kept: a continued
fit uses the estimator's current ``lr`` and schedule.
"""

from __future__ import annotations

import torch
from torch import nn


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
                    for key, value in state.items()
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
