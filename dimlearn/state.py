"""The training state that outlives one ``fit`` call, as plain name-keyed tensors.

Adam's state is kept per parameter *name* (``"encoder.to_local.0.weight"``), not by the
position of the parameter in the optimiser, so that it survives networks gaining or losing
a part between calls (a critic that a zero weight made useless is not kept) and can be
written to a safetensors file. Its hyperparameters (``lr``, betas) are not kept: a continued
fit uses the estimator's current ``lr`` and schedule.
"""

from __future__ import annotations

import torch
from torch import nn

OPTIONAL_PARTS = ("global_critic", "local_local_critic", "prior_discriminator")
"""Parts of a :class:`~dimlearn.infomax.DeepInfomaxModule` kept only while a term uses them.
The encoder is what ``transform`` needs and the local critic what ``score`` reads; both are
always kept."""


def parts_in_use(alpha: float, gamma: float, delta: float, prior: str) -> set[str]:
    """The optional parts that the loss with these weights trains."""
    used = set()
    if alpha > 0:
        used.add("global_critic")
    if delta > 0:
        used.add("local_local_critic")
    if gamma > 0 and prior == "adversarial":
        used.add("prior_discriminator")
    return used


def drop_unused_parts(module: nn.Module, used: set[str]) -> nn.Module:
    """Remove (in place) the optional parts not in ``used``; returns the module.

    A part that no term trains keeps its random initial weights, so keeping it would only
    make model files larger.
    """
    for name in OPTIONAL_PARTS:
        if name not in used and getattr(module, name, None) is not None:
            setattr(module, name, None)
    return module


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
