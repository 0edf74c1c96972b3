"""What older dimlearn versions wrote, read as this one: every upgrade of a model file or a
pickle, in one place, keyed by the version that wrote it.

- **0.2** (model format 1, pickles without ``_pickle_format``): none of the parameters
  whose setting says ``since=(0, 3)`` or later; networks with a bias
  before every BatchNorm layer (folded into the running mean on reading); pickles that hold
  the torch modules themselves, whose critics' classes they name in ``dimlearn.networks``.
- **0.3.0** (model format 2, pickle format 2 without ``_dimlearn_version``): some of its
  files lack the parameters whose setting says ``since=(0, 4)`` (``flip``,
  ``reconstruction``, ``local_scales``, ``critic_width`` were added while it was 0.3.0),
  and the fitted ``precision_``, ``views_``, ``flip_`` and ``device_``.
- **0.4** and later write every parameter and every fitted field: nothing is filled in, and a
  missing or unknown one is refused.
"""

from __future__ import annotations

import re

from . import critics, networks
from ._warn import warn
from .infomax import module_from_state
from .settings import SETTINGS, is_routed

READ_AS = {"views": 1, "tabular_encoder": "mlp"}
"""Where an older version behaved otherwise than today's default, the value a parameter
that its files and pickles lack is read with (the others are read with their defaults,
which do what those versions did; each setting's ``since`` says which versions lack it):
0.2 trained one view and the MLP encoder of table rows."""

CURRENT = (0, 4)
"""Files and pickles written by this version or a later one lack nothing."""

LEGACY_NETWORK_NAMES = (
    "GlobalCritic",
    "LocalCritic",
    "GlobalDotCritic",
    "LocalDotCritic",
    "LocalLocalCritic",
    "PriorDiscriminator",
    "split_pairs",
    "WholeBatch",
    "CRITICS",
)
"""What lived in :mod:`dimlearn.networks` before :mod:`dimlearn.critics` had it: pickles of
dimlearn 0.2, which hold the networks themselves, name the critics' classes there, so they
are put back there (the estimator imports this module, so unpickling one finds them)."""

for _name in LEGACY_NETWORK_NAMES:
    setattr(networks, _name, getattr(critics, _name))
del _name


def version_of(text) -> tuple[int, ...]:
    """The release numbers of a version string: ``"0.3.0"`` -> ``(0, 3, 0)``,
    ``"0.4.0.dev0"`` -> ``(0, 4, 0)``; ``ValueError`` for anything else.

    Examples
    --------
    >>> version_of("0.2.1"), version_of("0.4.0.dev0")
    ((0, 2, 1), (0, 4, 0))
    """
    pattern = r"([0-9]{1,4})\.([0-9]{1,4})(?:\.([0-9]{1,4}))?"
    match = isinstance(text, str) and re.match(pattern, text)
    if not match:
        raise ValueError(f"the writer's version {text!r} is not a version number")
    return tuple(int(part) for part in match.groups() if part is not None)


def parameters(params: dict, written_by: tuple[int, ...], names) -> dict:
    """The parameters of a file or pickle written by ``written_by``, those that version's
    files may lack (each setting's ``since``) filled in with :data:`READ_AS` or their
    defaults; ``ValueError`` naming any other that is missing, and any that ``names`` (the
    estimator's parameters) does not know (keywords routed to the optimiser,
    ``optimizer__*``, are known).

    Examples
    --------
    >>> sorted(parameters({}, (0, 2), ["views", "flip"]).items())
    [('flip', 'auto'), ('views', 1)]
    """
    filled = {
        name: READ_AS.get(name, setting.default)
        for name, setting in SETTINGS.items()
        if setting.since is not None and written_by < setting.since and name in names
    }
    filled.update(params)
    unknown = sorted(name for name in set(filled) - set(names) if not is_routed(name))
    missing = sorted(set(names) - set(filled))
    if unknown or missing:
        problem = f"unknown parameters {unknown}" if unknown else ""
        problem += ("; " if unknown and missing else "") + (
            f"no value for the parameters {missing}" if missing else ""
        )
        raise ValueError(problem)
    return filled


def folds_old_biases(written_by: tuple[int, ...]) -> bool:
    """Whether networks of this version had a bias before every BatchNorm layer (0.2), which
    reading folds into the running mean (:func:`~dimlearn.networks.fold_old_biases`); in a
    file of a later version such a bias is refused, not folded."""
    return written_by < (0, 3)


def resolved_settings(fitted: dict, params: dict, layout, written_by: tuple[int, ...]) -> dict:
    """``precision_``, ``views_``, ``flip_`` and ``device_`` of a fitted state; what a file or
    pickle of 0.3.0 or older does not record is what can be known from the parameters (a
    setting that is not ``"auto"``; ``views="auto"``, which depended on the layout alone;
    ``flip``, which those versions mirrored for every augmented image), else None."""
    chosen = {name: fitted.get(f"{name}_") for name in ("precision", "views", "flip", "device")}
    if written_by >= CURRENT:
        return chosen
    images = layout.kind == "image"
    for name in ("precision", "views", "flip"):
        if chosen[name] is not None:
            continue
        value = params[name]
        if name == "views" and value == "auto":
            value = 2 if images else 1
        if name == "flip":  # older files: no flip parameter (read as "auto") and flips
            value = images and value is not False
        chosen[name] = None if value == "auto" else value
    return chosen


def warn_unprotected_description(path) -> None:
    """The warning for a model file of format 1 (dimlearn 0.2), whose checksum covers the
    weights only."""
    warn(
        f"{path} is a model file of dimlearn 0.2 (format 1), whose checksum covers the "
        "weights only: damage to its description (the input statistics, the parameters) "
        "cannot be detected, and a changed byte there gives other codes. Rewrite it once "
        "with dimlearn.save(dimlearn.load(path), path), whose checksum covers both."
    )


FITTED_ATTRIBUTES_OF_0_2 = {
    "module_": "module",
    "history_": "history",
    "loss_curve_": "loss_curve",
    "n_iter_": "n_iter",
    "input_mean_": "input_mean",
    "input_scale_": "input_scale",
    "sample_shape_": "sample_shape",
    "layout_": "layout",
    "n_features_in_": "n_features_in",
    "feature_names_in_": "feature_names_in",
    "_optimizer_state": "optimizer_state",
    "random_state_": "random_state",
}
"""The fitted attributes a dimlearn 0.2 pickle holds (its ``__dict__``), and the field of
:class:`~dimlearn.fitted.FittedState` each becomes."""


def fitted_fields_of_0_2(state: dict, config) -> dict | None:
    """Take the fitted attributes out of a dimlearn 0.2 pickle's ``state`` (in place) and
    return them as :class:`~dimlearn.fitted.FittedState` fields: its networks rebuilt
    without the biases before BatchNorm layers (folded into the running means, the same
    codes up to rounding), their Adam moments dropped, and the settings 0.2 trained with
    (one view, every augmented image mirrored, its precision, an unknown device). None for
    an unfitted estimator."""
    fields = {
        field: state.pop(name) for name, field in FITTED_ATTRIBUTES_OF_0_2.items() if name in state
    }
    if "module" not in fields:
        return None
    module, folded = module_from_state(
        config, fields["layout"], fields["module"].state_dict(), fold_old_biases=True
    )
    moments = fields.get("optimizer_state")
    if moments is not None:
        fields["optimizer_state"] = {k: v for k, v in moments.items() if k not in folded}
    images = fields["layout"].kind == "image"
    fields.update(module=module, views=1, precision=config.runtime.precision, device=None)
    fields.update(flip=images)
    return fields
