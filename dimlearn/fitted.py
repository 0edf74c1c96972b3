"""The fitted state: everything ``fit`` leaves behind, listed once, as objects or as plain data.

:class:`FittedState` is the one list of the estimator's fitted attributes. The estimator
writes itself from it after a training call and clears it when a first fit fails; model
files (:mod:`dimlearn.persistence`) and pickles store it as plain values and numpy arrays
(:meth:`FittedState.to_plain`) and rebuild it, networks included, through one reader
(:meth:`FittedState.from_plain`) that checks every field and builds the networks with
:func:`~dimlearn.infomax.module_from_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from skorch.history import History
from torch import nn

from . import upgrades
from .infomax import ALWAYS_KEPT, OPTIONAL_PARTS, module_from_state
from .inputs import Layout, positive_ints
from .settings import DEVICE_NAME, Settings

ATTRIBUTES = {
    "module": "module_",
    "history": "history_",
    "loss_curve": "loss_curve_",
    "n_iter": "n_iter_",
    "input_mean": "input_mean_",
    "input_scale": "input_scale_",
    "sample_shape": "sample_shape_",
    "layout": "layout_",
    "n_features_in": "n_features_in_",
    "feature_names_in": "feature_names_in_",
    "optimizer_state": "_optimizer_state",
    "optimizer_name": "_optimizer_name",
    "random_state": "random_state_",
    "precision": "precision_",
    "views": "views_",
    "flip": "flip_",
    "device": "device_",
}
"""Each field of :class:`FittedState` and the estimator attribute that holds it."""

RESOLVED = ("precision", "views", "flip", "device")
"""The fields that record what a training call resolved its ``"auto"`` settings to."""

CACHES = ("_device_copy",)
"""Attributes the estimator derives from its fitted state (never stored)."""


@dataclass
class FittedState:
    """What a fitted :class:`~dimlearn.DeepInfomaxTransformer` holds (its ``*_``
    attributes, see its docstring), and what continued training needs on top: the
    optimiser's state (Adam's moments) by weight name, the name of the optimiser class it is
    of (:func:`~dimlearn.optimizer_state.optimizer_name`; None reads as ``"adam"``) and the
    RNG stream each training call draws its seed from. The state and the stream are None
    for a model loaded without its training state. ``precision``,
    ``views``, ``flip`` and ``device`` are what the last training call resolved its
    ``"auto"`` settings to (None where a file or pickle of an older dimlearn does not say).
    """

    module: nn.Module
    history: History
    loss_curve: list
    n_iter: int
    input_mean: np.ndarray
    input_scale: np.ndarray
    sample_shape: tuple
    layout: Layout
    n_features_in: int
    feature_names_in: np.ndarray | None = None
    optimizer_state: dict | None = None
    optimizer_name: str | None = None
    random_state: np.random.RandomState | None = None
    precision: str | None = None
    views: int | None = None
    flip: bool | None = None
    device: str | None = None

    # -- on the estimator --------------------------------------------------------------

    @classmethod
    def of(cls, estimator) -> FittedState:
        """The fitted state ``estimator`` holds."""
        return cls(**{field: getattr(estimator, name, None) for field, name in ATTRIBUTES.items()})

    def write_to(self, estimator) -> None:
        """Set the estimator's fitted attributes (those that are None are removed, but for
        the resolved settings, which are None where unknown)."""
        clear(estimator)
        for field, name in ATTRIBUTES.items():
            value = getattr(self, field)
            if value is not None or field in RESOLVED:
                setattr(estimator, name, value)

    @property
    def has_training_state(self) -> bool:
        return self.optimizer_state is not None and self.random_state is not None

    @property
    def chosen(self) -> dict:
        """What the last training call resolved ``precision``, ``views``, ``flip`` and
        ``device`` to."""
        return {field: getattr(self, field) for field in RESOLVED}

    def continued_by(
        self, module, optimizer_state, history: History, optimizer_name=None, **chosen
    ) -> FittedState:
        """This state after a training call that continued it: its history, loss curve
        and epoch count run on; ``optimizer_name`` is the class of ``optimizer_state``
        (None: this state's own); ``chosen`` (``precision``, ``views``, ``flip``,
        ``device``) are that call's resolved settings."""
        joined = History()
        for entry in [*self.history, *history]:
            entry = dict(entry)
            entry["epoch"] = len(joined) + 1
            joined.append(entry)
        state = {field.name: getattr(self, field.name) for field in fields(self)}
        state.update(module=module, optimizer_state=optimizer_state, history=joined)
        state.update(optimizer_name=optimizer_name or self.optimizer_name)
        state.update(loss_curve=self.loss_curve + loss_curve(history))
        state.update(n_iter=self.n_iter + len(history), **chosen)
        return FittedState(**state)

    # -- as plain data -----------------------------------------------------------------

    def to_plain(self, include_training_state: bool = True) -> dict:
        """Plain Python values and numpy arrays only (no torch or skorch object):
        ``{"fitted": ..., "history": ..., "weights": {name: array}}`` and, with
        ``include_training_state``, ``"optimizer"`` (``{weight name: {key: array}}``),
        ``"optimizer_name"`` and ``"random_state"``. Without it, the weights are those of the parts
        ``transform`` and ``score`` need (:data:`~dimlearn.infomax.ALWAYS_KEPT`).
        Everything but the arrays is JSON-able.
        """
        fitted = {
            "sample_shape_": list(self.sample_shape),
            "input_mean_": np.asarray(self.input_mean, dtype=np.float64).tolist(),
            "input_scale_": np.asarray(self.input_scale, dtype=np.float64).tolist(),
            "n_iter_": int(self.n_iter),
            "loss_curve_": [float(v) for v in self.loss_curve],
            "layout": self.layout.to_plain(),
        }
        if self.feature_names_in is not None:
            fitted["feature_names_in_"] = [str(name) for name in self.feature_names_in]
        for field, value in self.chosen.items():
            if value is not None:
                fitted[ATTRIBUTES[field]] = value
        kept = None if include_training_state else ALWAYS_KEPT
        plain = {
            "fitted": fitted,
            "history": plain_value([dict(entry) for entry in self.history]),
            "weights": {
                key: _array(value)
                for key, value in self.module.state_dict().items()
                if kept is None or key.split(".")[0] in kept
            },
        }
        if include_training_state and self.has_training_state:
            plain["optimizer"] = {
                name: {key: _array(value) for key, value in moments.items()}
                for name, moments in self.optimizer_state.items()
            }
            plain["random_state"] = rng_to_plain(self.random_state)
            plain["optimizer_name"] = self.optimizer_name or "adam"
        return plain

    @classmethod
    def from_plain(
        cls, plain: dict, config: Settings, written_by: tuple[int, ...] = upgrades.CURRENT
    ) -> FittedState:
        """The state :meth:`to_plain` described (by the dimlearn version ``written_by``),
        networks rebuilt from ``config`` and the layout; every field is checked and an
        unknown one refused (``ValueError``, ``KeyError`` or ``TypeError`` name what makes
        no sense)."""
        known = {"fitted", "history", "weights", "optimizer", "random_state", "optimizer_name"}
        unknown = sorted(set(plain) - known)
        fitted = plain["fitted"]
        unknown += sorted(f"fitted.{key}" for key in set(fitted) - FITTED_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        layout = Layout.from_plain(fitted["layout"])
        sample_shape = positive_ints(fitted["sample_shape_"], "sample_shape_")
        if sample_shape != layout.sample_shape:
            raise ValueError(f"sample_shape_ {sample_shape} disagrees with the layout")
        mean = _floats(fitted["input_mean_"], "input_mean_", layout.channels)
        scale = _floats(fitted["input_scale_"], "input_scale_", layout.channels)
        if (scale <= 0).any():
            raise ValueError("input_scale_ holds values <= 0")
        weights = {key: _tensor(value, key) for key, value in plain["weights"].items()}
        parts = {key.split(".")[0] for key in weights}
        if set(ALWAYS_KEPT) - parts:
            raise ValueError(f"the weights of {sorted(set(ALWAYS_KEPT) - parts)} are missing")
        if parts - set(ALWAYS_KEPT) - set(OPTIONAL_PARTS):
            unknown = sorted(parts - set(ALWAYS_KEPT) - set(OPTIONAL_PARTS))
            raise ValueError(f"weights of unknown parts {unknown}")
        folds = upgrades.folds_old_biases(written_by)
        module, folded = module_from_state(config, layout, weights, fold_old_biases=folds)
        n_features = int(np.prod(sample_shape))
        names = fitted.get("feature_names_in_")
        if names is not None:
            names = np.asarray([str(name) for name in names], dtype=object)
            if len(names) != n_features:
                raise ValueError("feature_names_in_ has the wrong length")
        state = cls(
            module=module,
            history=History([dict(entry) for entry in plain["history"]]),
            loss_curve=[float(v) for v in fitted["loss_curve_"]],
            n_iter=_count(fitted["n_iter_"], "n_iter_"),
            input_mean=mean,
            input_scale=scale,
            sample_shape=sample_shape,
            layout=layout,
            n_features_in=n_features,
            feature_names_in=names,
            **_chosen(upgrades.resolved_settings(fitted, config.params(), layout, written_by)),
        )
        if "optimizer" in plain:
            optimizer = plain.get("optimizer_name", "adam")  # the class the state is of
            amsgrad = bool(config.optimizer_options.get("amsgrad", False))
            state.optimizer_state = _optimizer_state(
                module, plain["optimizer"], folded, optimizer, amsgrad
            )
            state.random_state = rng_from_plain(plain["random_state"])
            state.optimizer_name = plain.get("optimizer_name", "adam")  # older: Adam's only
            if not isinstance(state.optimizer_name, str) or len(state.optimizer_name) > 500:
                raise ValueError("optimizer_name is not the name of an optimiser class")
        return state


def restore(estimator, params: dict, fitted, written_by: tuple[int, ...]) -> None:
    """The one way back from saved state: model files (:func:`dimlearn.load`), pickles and
    skops files (``__setstate__``) all end here.

    ``params`` are the estimator's parameters as written by the dimlearn version
    ``written_by``, ``fitted`` its fitted state as plain data (:meth:`FittedState.to_plain`),
    the fields of a dimlearn 0.2 pickle (:func:`~dimlearn.upgrades.fitted_fields_of_0_2`),
    or None for an unfitted estimator. What that version lacked is filled in by
    :mod:`dimlearn.upgrades`; a parameter missing beyond that, or unknown, is refused, the
    parameters are validated, and the fitted state is rebuilt and checked field by field
    before the estimator changes. Raises ``ValueError`` (or ``KeyError`` / ``TypeError``
    for a field of the wrong form), leaving ``estimator`` as it was.
    """
    params = upgrades.parameters(params, written_by, type(estimator)._get_param_names())
    type(estimator)(**params)._validate_params()  # sklearn's InvalidParameterError: ValueError
    config = Settings.from_params(params)
    if fitted is None:
        state = None
    elif "module" in fitted:  # the objects of a 0.2 pickle, its networks rebuilt
        state = FittedState(**fitted)
    else:
        state = FittedState.from_plain(fitted, config, written_by)
    clear(estimator)
    estimator.__dict__.update(params)
    if state is not None:
        state.write_to(estimator)


def clear(estimator) -> None:
    """Remove every fitted attribute (and what is derived from them) from ``estimator``."""
    for name in [*ATTRIBUTES.values(), *CACHES]:
        estimator.__dict__.pop(name, None)


def loss_curve(history: History) -> list[float]:
    """``train_loss`` of every epoch of a history."""
    return [float(v) for v in history[:, "train_loss"]] if len(history) else []


def plain_value(value):
    """``value`` with numpy and torch scalars and arrays turned into Python numbers and
    lists, recursively through dicts, lists and tuples (history entries)."""
    if isinstance(value, dict):
        return {str(key): plain_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(item) for item in value]
    if isinstance(value, np.ndarray | np.generic | torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot store {type(value).__name__} as plain data")


def rng_to_plain(rng: np.random.RandomState) -> dict:
    name, keys, pos, has_gauss, cached = rng.get_state()
    return {
        "bit_generator": name,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def rng_from_plain(raw: dict) -> np.random.RandomState:
    rng = np.random.RandomState()
    keys = np.asarray(raw["keys"], dtype=np.uint32)
    state = (raw["bit_generator"], keys, int(raw["pos"]), int(raw["has_gauss"]))
    rng.set_state((*state, float(raw["cached_gaussian"])))
    return rng


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().numpy().copy()


def _tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(f"weight {name} is a {type(value).__name__}, not an array")
    return torch.from_numpy(value if value.flags.c_contiguous else value.copy())


ADAM_STATE = ("exp_avg", "exp_avg_sq", "step")
"""What ``torch.optim.Adam`` keeps for each weight: two moments of the weight's shape and
dtype, and the step count as a float32 scalar (with ``amsgrad``, :data:`AMSGRAD_STATE`)."""

AMSGRAD_STATE = (*ADAM_STATE, "max_exp_avg_sq")
"""Adam's state with ``optimizer__amsgrad=True``: the largest second moment too."""

OPTIMIZER_STATE = {"adam": ADAM_STATE, "adamw": ADAM_STATE, "sgd": ("momentum_buffer",)}
OPTIONAL_STATE = ("momentum_buffer",)
"""State that an optimiser keeps only with an option (SGD's ``momentum``)."""
"""What each built-in optimiser keeps for a weight (SGD keeps its momentum buffer only with
momentum)."""


def _optimizer_state(
    module: nn.Module, raw: dict, folded=(), optimizer="adam", amsgrad=False
) -> dict:
    """The optimiser's state by weight name, every tensor checked against what the
    optimiser keeps for its weight, so that a continued fit never meets a state it cannot
    use: for the built-in optimisers (:data:`OPTIMIZER_STATE`) exactly their keys, their
    moments of the weight's shape and dtype and a float32 scalar ``step``; for an optimiser
    class of the user's (pickles only), tensors of the weight's shape and dtype or float32
    scalars."""
    params = dict(module.named_parameters())
    keys = OPTIMIZER_STATE.get(optimizer) if isinstance(optimizer, str) else None
    if keys is ADAM_STATE and amsgrad:
        keys = AMSGRAD_STATE
    state: dict = {}
    for name, moments in raw.items():
        if name in folded:  # the optimiser state of a weight that no longer exists
            continue
        if name not in params:
            raise ValueError(f"optimiser state for an unknown weight {name!r}")
        if not isinstance(moments, dict):
            raise TypeError(f"optimiser state of {name} is a {type(moments).__name__}")
        if keys is not None:
            unknown = sorted(str(key) for key in moments if key not in keys)
            missing = [key for key in keys if key not in moments and key not in OPTIONAL_STATE]
            if unknown or missing:
                kind = "Adam" if keys in (ADAM_STATE, AMSGRAD_STATE) else optimizer
                wrong = [f"optimizer.{name}.{key} is not part of {kind}'s state" for key in unknown]
                wrong += [f"optimizer.{name}.{key} is missing" for key in missing]
                raise ValueError(f"optimiser state: {'; '.join(wrong)}")
        for key, value in moments.items():
            value = _tensor(value, f"optimizer.{name}.{key}")
            param = params[name]
            scalar = key == "step" or (keys is None and value.ndim == 0)  # NAdam's mu_product
            shape, dtype = ((), torch.float32) if scalar else (param.shape, param.dtype)
            if value.shape != shape or value.dtype != dtype:
                keeper = "Adam" if keys in (ADAM_STATE, AMSGRAD_STATE) else "the optimiser"
                raise ValueError(
                    f"optimiser state optimizer.{name}.{key} is {tuple(value.shape)} "
                    f"{str(value.dtype).removeprefix('torch.')}; {keeper} keeps it as "
                    f"{tuple(shape)} {str(dtype).removeprefix('torch.')}"
                )
            state.setdefault(name, {})[key] = value
    return state


CHOICES = {
    "precision": ("float32", "bfloat16", "float16"),
    "views": (1, 2),
    "flip": (True, False),
}
"""The values a fitted ``precision_``, ``views_`` and ``flip_`` may take."""


def _chosen(chosen: dict) -> dict:
    """``precision``, ``views``, ``flip`` and ``device`` as a file or pickle records them
    (:func:`~dimlearn.upgrades.resolved_settings`), each checked."""
    for field, allowed in CHOICES.items():
        value = chosen[field]
        kinds = (bool,) if field == "flip" else (str, int)
        if value is not None and (type(value) not in kinds or value not in allowed):
            raise ValueError(f"{ATTRIBUTES[field]} is {value!r}, not one of {list(allowed)}")
    device = chosen["device"]
    if device is not None and not (
        isinstance(device, str) and device != "auto" and DEVICE_NAME.fullmatch(device)
    ):
        raise ValueError(f"device_ is {device!r}, not a device name such as 'cpu' or 'cuda:0'")
    return chosen


FITTED_FIELDS = frozenset(
    {
        "sample_shape_",
        "input_mean_",
        "input_scale_",
        "n_iter_",
        "loss_curve_",
        "layout",
        "feature_names_in_",
        "precision_",
        "views_",
        "flip_",
        "device_",
    }
)
"""The fields of ``to_plain()["fitted"]``; any other is refused on reading."""


def _floats(raw, name: str, length: int) -> np.ndarray:
    if isinstance(raw, list) and any(isinstance(v, bool) or v is None for v in raw):
        raise ValueError(f"{name} must be {length} finite numbers")
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (length,) or not np.isfinite(values).all():
        raise ValueError(f"{name} must be {length} finite numbers")
    return values


def _count(raw, name: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {raw!r}")
    return raw
