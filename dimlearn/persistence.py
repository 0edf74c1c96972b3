"""Model files: ``save`` and ``load`` a fitted extractor as safetensors + JSON, never pickle.

A model file is one safetensors file. Its tensors are the network weights (and, with
``include_training_state=True``, every critic in use and Adam's moments); its header's
metadata holds one JSON document with everything else: the estimator's parameters, the
fitted input statistics and sample layout, the training history as plain numbers, the
versions that wrote it, a format version, and a SHA-256 over the description and the
weights. Reading it checks that checksum before anything is built, parses JSON and copies
raw numbers into tensors: nothing in a model file can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from .estimator import DeepInfomaxTransformer
from .inputs import Layout
from .networks import fold_biases_into_batch_norm
from .state import OPTIONAL_PARTS
from .training import build_module

FORMAT_NAME = "dimlearn.model"
FORMAT_VERSION = 2
"""Written into every file; :func:`load` reads files of this version and older.

1 (dimlearn 0.2): the checksum covers the weights only; the encoder's layers before a
BatchNorm have biases, which :func:`load` folds into the BatchNorm's running mean.
2 (dimlearn 0.3): the checksum covers the description (JSON) and the weights."""

ALWAYS_SAVED = ("encoder", "local_critic")
"""What ``transform`` (the encoder) and ``score`` (the local critic) need."""

_HEADER_LIMIT = 100_000_000  # the safetensors format's own limit on its JSON header


class ModelFileError(ValueError):
    """A file that :func:`dimlearn.load` cannot read as a dimlearn model, and why.

    Raised for truncated or damaged files, files written by a newer dimlearn, files that
    are not dimlearn models (pickle and joblib files included), and files whose description
    (JSON) or weights were edited into something inconsistent.
    """


def save(estimator: DeepInfomaxTransformer, path, *, include_training_state: bool = False) -> Path:
    """Write a fitted :class:`DeepInfomaxTransformer` to ``path`` as one safetensors file.

    By default the file holds what ``transform`` and ``score`` need: the encoder, the local
    critic, the input statistics, the parameters and the history. With
    ``include_training_state=True`` it also holds every critic in use, Adam's moments and
    the training RNG stream, so that ``load(path).set_params(warm_start=True).fit(X)``
    continues exactly as the in-memory estimator would. The file is written to a temporary
    name and renamed, so an interrupted save never leaves half a file at ``path``.

    Parameters
    ----------
    estimator : DeepInfomaxTransformer
        A fitted estimator.
    path : str or os.PathLike
        Where to write (``.safetensors`` is a fitting suffix; any name works).
    include_training_state : bool, default=False
        Also store what continued training needs.

    Returns
    -------
    path : pathlib.Path

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dimlearn import DeepInfomaxTransformer, save, load
    >>> X = np.random.default_rng(0).random((40, 8, 8))
    >>> dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = load(save(dim, f"{folder}/dim.safetensors"))
    >>> bool(np.array_equal(loaded.transform(X), dim.transform(X)))
    True
    """
    from safetensors.torch import save as to_bytes

    check_is_fitted(estimator)
    if include_training_state and not hasattr(estimator, "random_state_"):
        raise ValueError(
            "include_training_state=True, but this model holds no training state: it was "
            "loaded from a file saved without it, so Adam's moments, the critics of other "
            "terms and the training RNG stream are not here to save. Save it without "
            "include_training_state, or train it on (warm_start=True, or partial_fit), "
            "which starts that state afresh, and save it then."
        )
    tensors = {
        f"module.{key}": value.detach().to("cpu").contiguous()
        for key, value in estimator.module_.state_dict().items()
        if include_training_state or key.split(".")[0] in ALWAYS_SAVED
    }
    payload = _describe(estimator)
    if include_training_state:
        for name, state in getattr(estimator, "_optimizer_state", {}).items():
            for key, value in state.items():
                tensors[f"optimizer.{name}.{key}"] = value.detach().to("cpu").contiguous()
        payload["random_state_"] = _rng_to_json(estimator.random_state_)
    payload["training_state"] = include_training_state
    description = json.dumps(payload, default=_plain)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "dimlearn": description,
        "sha256": _digest(tensors, f"{FORMAT_VERSION}|{description}"),
    }
    data = to_bytes(tensors, metadata=metadata)
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path, *, device: str | None = None) -> DeepInfomaxTransformer:
    """Read a model file written by :func:`save`; never unpickles anything.

    The result is a fitted :class:`DeepInfomaxTransformer` on the CPU, whatever device it
    was fitted on; ``transform`` runs where its ``device`` parameter says (set ``device``
    here to override it, e.g. ``"cpu"`` for a model fitted on a GPU server).

    Parameters
    ----------
    path : str or os.PathLike
    device : str or None, default=None
        If given, replaces the saved ``device`` parameter.

    Returns
    -------
    estimator : DeepInfomaxTransformer

    Raises
    ------
    ModelFileError
        If the file is not a dimlearn model, is truncated or damaged, was written by a newer
        dimlearn, or holds a description and weights that do not agree.
    """
    path = Path(path)
    data = path.read_bytes()
    header = _split_file(data, path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{path} is a safetensors file but not a dimlearn model (its metadata has no "
            f"format={FORMAT_NAME!r}). dimlearn.load reads files written by dimlearn.save."
        )
    version = metadata.get("format_version", "")
    if not (isinstance(version, str) and re.fullmatch("[1-9][0-9]{0,5}", version)):
        raise ModelFileError(f"{path}: the format version {version!r} is not a version number.")
    if int(version) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer dimlearn (model format {version}; this dimlearn "
            f"{_dimlearn_version()} reads up to {FORMAT_VERSION}). Upgrade dimlearn to load it."
        )
    version = int(version)
    tensors = _read_tensors(data, path)
    description = metadata.get("dimlearn")
    if version >= 2:  # the checksum covers everything that decides what the model computes
        signed = isinstance(description, str) and metadata.get("sha256") == _digest(
            tensors, f"{version}|{description}"
        )
        if not signed:
            raise ModelFileError(
                f"{path}: the description or the weights do not match the checksum written "
                "with them: the file was altered or damaged after it was saved. Save or copy "
                "the model again."
            )
    try:
        payload = json.loads(description)
    except (TypeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            f"{path}: the model description (JSON) is missing or not valid JSON ({error}). "
            "The file was edited or damaged; save the model again."
        ) from None
    if version == 1 and (
        not isinstance(payload, dict) or payload.get("weights_sha256") != _digest(tensors)
    ):
        raise ModelFileError(
            f"{path}: the weights do not match the checksum written with them: the file was "
            "altered or damaged after it was saved. Save or copy the model again."
        )
    try:
        estimator = _rebuild(payload, tensors, version)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ModelFileError(
            f"{path}: the model description does not make sense ({problem}). It was edited or "
            "damaged; save the model again."
        ) from None
    if device is not None:
        estimator.set_params(device=device)
    return estimator


# -- writing ----------------------------------------------------------------------------


def _describe(estimator) -> dict:
    params = estimator.get_params(deep=False)
    if not (params["random_state"] is None or isinstance(params["random_state"], int)):
        params["random_state"] = None  # a RandomState instance: its stream is the fitted one
    params["device"] = str(params["device"])
    if params["image_shape"] is not None:
        params["image_shape"] = [int(s) for s in params["image_shape"]]
    layout = estimator.layout_
    fitted = {
        "sample_shape_": list(estimator.sample_shape_),
        "input_mean_": np.asarray(estimator.input_mean_, dtype=np.float64).tolist(),
        "input_scale_": np.asarray(estimator.input_scale_, dtype=np.float64).tolist(),
        "n_iter_": int(estimator.n_iter_),
        "loss_curve_": [float(v) for v in estimator.loss_curve_],
        "layout": {
            "kind": layout.kind,
            "sample_shape": list(layout.sample_shape),
            "image_shape": None if layout.image_shape is None else list(layout.image_shape),
            "channels_last": bool(layout.channels_last),
        },
    }
    if hasattr(estimator, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(name) for name in estimator.feature_names_in_]
    return {
        "estimator": type(estimator).__name__,
        "versions": {
            "dimlearn": _dimlearn_version(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "params": params,
        "fitted": fitted,
        "history": [dict(entry) for entry in estimator.history_],
    }


def _plain(value):
    """JSON fallback for numpy and torch scalars and arrays in the history."""
    if isinstance(value, np.generic | torch.Tensor):
        return value.tolist() if getattr(value, "ndim", 0) else value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a model file")


def _rng_to_json(rng: np.random.RandomState) -> dict:
    name, keys, pos, has_gauss, cached = rng.get_state()
    return {
        "bit_generator": name,
        "keys": keys.tolist(),
        "pos": pos,
        "has_gauss": has_gauss,
        "cached_gaussian": cached,
    }


def _digest(tensors: dict, description: str | None = None) -> str:
    """SHA-256 over ``description`` (when given) and every tensor's name, dtype, shape and
    bytes, in name order."""
    digest = hashlib.sha256()
    if description is not None:
        text = description.encode("utf-8", "surrogatepass")
        digest.update(len(text).to_bytes(8, "little") + text)
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def _dimlearn_version() -> str:
    from . import __version__

    return __version__


# -- reading ----------------------------------------------------------------------------


def _split_file(data: bytes, path: Path) -> dict:
    """The safetensors header (parsed JSON), once the file is known to be whole."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise ModelFileError(
            f"{path} is a pickle file (what joblib.dump and pickle.dump write), not a dimlearn "
            "model file. dimlearn.load never unpickles: unpickling runs code the file "
            "chooses. If you made this file yourself, open it with joblib.load; to share a "
            "model, write it with dimlearn.save."
        )
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    looks_like_header = data[8:9] == b"{"
    if not looks_like_header or not 0 < header_len <= _HEADER_LIMIT:
        raise ModelFileError(
            f"{path} is not a dimlearn model file (it is not in the safetensors format that "
            "dimlearn.save writes)."
        )
    if 8 + header_len > len(data):
        raise ModelFileError(
            f"{path} is truncated: its header alone needs {8 + header_len} bytes, the file has "
            f"{len(data)} (an interrupted copy or download?). Copy or save it again."
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError, IndexError):
        raise ModelFileError(
            f"{path}: the safetensors header is not valid JSON of the expected form; the file "
            "is damaged or not a dimlearn model."
        ) from None
    needed = 8 + header_len + max(ends, default=0)
    if needed > len(data):
        raise ModelFileError(
            f"{path} is truncated: it has {len(data)} bytes, its header promises {needed} (an "
            "interrupted copy or download?). Copy or save it again."
        )
    return header


def _read_tensors(data: bytes, path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load as from_bytes

    try:
        return from_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise ModelFileError(
            f"{path}: the weights cannot be read ({error}); the file is damaged. Copy or "
            "save it again."
        ) from None


def _rebuild(payload: dict, tensors: dict, version: int) -> DeepInfomaxTransformer:
    """A fitted estimator from a file's JSON and tensors, every field checked."""
    if payload["estimator"] != DeepInfomaxTransformer.__name__:
        raise ModelFileError(f"it holds a {payload['estimator']!r}, not a DeepInfomaxTransformer")
    params = dict(payload["params"])
    unknown = set(params) - set(DeepInfomaxTransformer().get_params())
    if unknown:
        raise ModelFileError(f"unknown parameters {sorted(unknown)} (written by another version?)")
    if params.get("image_shape") is not None:
        params["image_shape"] = tuple(params["image_shape"])
    estimator = DeepInfomaxTransformer(**params)
    estimator._validate_params()  # sklearn's InvalidParameterError is a ValueError

    fitted = payload["fitted"]
    layout = _layout_from_json(fitted["layout"])
    sample_shape = _positive_ints(fitted["sample_shape_"], "sample_shape_")
    if sample_shape != layout.sample_shape:
        raise ModelFileError(f"sample_shape_ {sample_shape} disagrees with the layout")
    n_stats = layout.channels
    mean = _floats(fitted["input_mean_"], "input_mean_", n_stats)
    scale = _floats(fitted["input_scale_"], "input_scale_", n_stats)
    if (scale <= 0).any():
        raise ModelFileError("input_scale_ holds values <= 0")

    module, folded = _module_from_tensors(params, layout, tensors, version)
    state = {
        "module_": module,
        "sample_shape_": sample_shape,
        "input_mean_": mean,
        "input_scale_": scale,
        "n_features_in_": int(np.prod(sample_shape)),
        "n_iter_": _count(fitted["n_iter_"], "n_iter_"),
        "loss_curve_": [float(v) for v in fitted["loss_curve_"]],
        "history_": History([dict(entry) for entry in payload["history"]]),
        "layout_": layout,
    }
    if "feature_names_in_" in fitted:
        names = [str(name) for name in fitted["feature_names_in_"]]
        if len(names) != state["n_features_in_"]:
            raise ModelFileError("feature_names_in_ has the wrong length")
        state["feature_names_in_"] = np.asarray(names, dtype=object)
    if payload["training_state"]:
        state["_optimizer_state"] = _optimizer_state_from_tensors(module, tensors, folded)
        state["random_state_"] = _rng_from_json(payload["random_state_"])
    estimator.__dict__.update(state)
    return estimator


def _layout_from_json(raw: dict) -> Layout:
    kind = raw["kind"]
    if kind not in ("image", "tabular"):
        raise ModelFileError(f"layout kind {kind!r} is neither 'image' nor 'tabular'")
    sample_shape = _positive_ints(raw["sample_shape"], "layout.sample_shape")
    image_shape = raw["image_shape"]
    if kind == "image":
        image_shape = _positive_ints(image_shape, "layout.image_shape")
        if len(image_shape) != 3 or np.prod(image_shape) != np.prod(sample_shape):
            raise ModelFileError(f"image shape {image_shape} does not fit samples {sample_shape}")
    elif image_shape is not None or len(sample_shape) != 1:
        raise ModelFileError("a tabular layout has one feature axis and no image shape")
    if not isinstance(raw["channels_last"], bool):
        raise ModelFileError("layout.channels_last is not true or false")
    return Layout(kind, sample_shape, image_shape, raw["channels_last"])


def _module_from_tensors(params: dict, layout: Layout, tensors: dict, version: int):
    """Build the networks the parameters describe and fill them with the file's weights;
    also the names of the weights of an older format that were folded into others."""
    weights = {k.removeprefix("module."): v for k, v in tensors.items() if k.startswith("module.")}
    parts = {key.split(".")[0] for key in weights}
    missing_parts = set(ALWAYS_SAVED) - parts
    if missing_parts:
        raise ModelFileError(f"the weights of {sorted(missing_parts)} are missing")
    foreign = parts - set(ALWAYS_SAVED) - set(OPTIONAL_PARTS)
    if foreign:
        raise ModelFileError(f"weights of unknown parts {sorted(foreign)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # every weight is overwritten below
        module = build_module(params, layout)
    for part in OPTIONAL_PARTS:
        if part not in parts:
            setattr(module, part, None)
        elif getattr(module, part, None) is None:
            raise ModelFileError(f"it holds {part} weights that its parameters do not use")
    folded = fold_biases_into_batch_norm(weights, module) if version == 1 else []
    expected = module.state_dict()
    wrong = sorted(
        f"{key} is {tuple(weights[key].shape) if key in weights else 'missing'} in the file, "
        f"{tuple(value.shape)} by the parameters"
        for key, value in expected.items()
        if key not in weights
        or weights[key].shape != value.shape
        or weights[key].dtype != value.dtype
    )
    extra = sorted(set(weights) - set(expected))
    if wrong or extra:
        shown = "; ".join(wrong[:3] + [f"{key} (not in the networks)" for key in extra[:3]])
        raise ModelFileError(
            f"its weights do not fit the networks its parameters describe: {shown}"
            f"{' ...' if len(wrong) + len(extra) > 3 else ''}"
        )
    module.load_state_dict(weights)
    return module.eval(), folded


def _optimizer_state_from_tensors(module, tensors: dict, folded=()) -> dict:
    params = dict(module.named_parameters())
    state: dict = {}
    for key, value in tensors.items():
        if not key.startswith("optimizer."):
            continue
        name, _, field = key.removeprefix("optimizer.").rpartition(".")
        if name in folded:  # Adam's moments of a weight that no longer exists
            continue
        if name not in params:
            raise ModelFileError(f"optimiser state for an unknown weight {name!r}")
        if field != "step" and value.shape != params[name].shape:
            raise ModelFileError(f"optimiser state {key} has the wrong shape")
        state.setdefault(name, {})[field] = value
    return state


def _rng_from_json(raw: dict) -> np.random.RandomState:
    keys = np.asarray(raw["keys"], dtype=np.uint32)
    rng = np.random.RandomState()
    rng.set_state(
        (
            raw["bit_generator"],
            keys,
            int(raw["pos"]),
            int(raw["has_gauss"]),
            float(raw["cached_gaussian"]),
        )
    )
    return rng


def _positive_ints(raw, name: str) -> tuple:
    values = tuple(raw)
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
    ):
        raise ModelFileError(f"{name} must be a list of positive integers, not {raw!r}")
    return values


def _floats(raw, name: str, length: int) -> np.ndarray:
    values = np.asarray(raw, dtype=np.float64)
    if values.shape != (length,) or not np.isfinite(values).all():
        raise ModelFileError(f"{name} must be {length} finite numbers")
    return values


def _count(raw, name: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise ModelFileError(f"{name} must be a non-negative integer, not {raw!r}")
    return raw
