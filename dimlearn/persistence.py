"""Model files: ``save`` and ``load`` a fitted extractor as safetensors + JSON, never pickle.

A model file is one safetensors file. Its tensors are the network weights (and, with
``include_training_state=True``, every critic in use and Adam's moments); its header's
metadata holds one JSON document with everything else: the estimator's parameters, the
fitted input statistics and sample layout, the training history as plain numbers, the
versions that wrote it, a format version, and a SHA-256 over the description and the
weights. Reading it parses JSON and reads raw numbers into tensors: nothing in a model file
can run code.

What the checksum proves: that the file is the one :func:`save` wrote, byte for byte,
against damage (a bad disk, a cut download, a copy that changed a byte). It proves nothing
about who wrote it: a SHA-256 is no signature, and anyone who edits a file can compute it
anew. So a file is read as hostile input whatever its checksum says: its header is read,
bounded and checked before its tensors (:mod:`dimlearn.model_file`), every field of the
description is checked for type and range, the networks are built on the ``meta`` device
and compared, weight by weight, with the shapes and dtypes of the file's tensors before
any memory is allocated, and the model is made of the file's own tensors, so it never takes
more memory than the file holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path

import sklearn
import torch
from sklearn.utils.validation import check_is_fitted

from . import upgrades
from ._version import __version__
from .estimator import DeepInfomaxTransformer
from .fitted import FittedState, restore
from .model_file import ModelFileError, parse_json, read_header, read_tensors
from .optimizer_state import optimizer_name
from .settings import OPTIMIZERS, routed

FORMAT_NAME = "dimlearn.model"
FORMAT_VERSION = 2
"""Written into every file; :func:`load` reads files of this version and older.

1 (dimlearn 0.2): the checksum covers the weights only; the encoder's layers before a
BatchNorm have biases, which :func:`load` folds into the BatchNorm's running mean.
2 (dimlearn 0.3): the checksum covers the description (JSON) and the weights."""


def save(estimator: DeepInfomaxTransformer, path, *, include_training_state: bool = False) -> Path:
    """Write a fitted :class:`DeepInfomaxTransformer` to ``path`` as one safetensors file.

    By default the file holds what ``transform`` and ``score`` need: the encoder, the local
    critic, the input statistics, the parameters and the history. With
    ``include_training_state=True`` it also holds every critic in use, Adam's moments and
    the training RNG stream, so that ``load(path).set_params(warm_start=True).fit(X)``
    continues exactly as the in-memory estimator would. The file is written to a temporary
    name and renamed, so an interrupted save never leaves half a file at ``path``.

    A model file holds numbers and JSON, never code, so it stores the ``optimizer`` by
    name (a class among dimlearn's, ``torch.optim.Adam`` say, as its name) with the routed
    ``optimizer__*`` keywords as JSON (tuples come back as tuples), and refuses, with a
    :class:`ModelFileError` before writing, a model with an ``encoder`` of your own, another
    optimiser class, an ``augmentation`` or ``callbacks``: joblib or skops store those.

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
    params = _params(estimator)  # refuses what a file cannot rebuild, before anything
    if include_training_state and not FittedState.of(estimator).has_training_state:
        raise ValueError(
            "include_training_state=True, but this model holds no training state: it was "
            "loaded from a file saved without it, so Adam's moments, the critics of other "
            "terms and the training RNG stream are not here to save. Save it without "
            "include_training_state, or train it on (warm_start=True, or partial_fit), "
            "which starts that state afresh, and save it then."
        )
    plain = FittedState.of(estimator).to_plain(include_training_state)
    tensors = {f"module.{key}": torch.from_numpy(value) for key, value in plain["weights"].items()}
    for name, moments in plain.get("optimizer", {}).items():
        for key, value in moments.items():
            tensors[f"optimizer.{name}.{key}"] = torch.from_numpy(value)
    payload = {
        "estimator": type(estimator).__name__,
        "versions": {
            "dimlearn": _dimlearn_version(),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
        },
        "params": params,
        "fitted": plain["fitted"],
        "history": plain["history"],
        "training_state": include_training_state,
    }
    if include_training_state:
        payload["random_state_"] = plain["random_state"]
        payload["optimizer_name"] = plain["optimizer_name"]
    description = json.dumps(payload)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "dimlearn": description,
        "sha256": _digest(tensors, f"{FORMAT_VERSION}|{description}"),
    }
    _write_whole(Path(path), to_bytes(tensors, metadata=metadata))
    return Path(path)


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` holds either its old content or all of
    ``data``, even after a crash or a power cut: written to a temporary name in the same
    folder with the usual permissions (0o666 less the umask, as ``open`` gives), flushed
    to the disk, renamed over ``path``, and the rename made durable."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: the folder's entry for the new file, too
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


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

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from dimlearn import DeepInfomaxTransformer, save, load
    >>> X = np.random.default_rng(0).random((40, 8, 8))
    >>> dim = DeepInfomaxTransformer(max_epochs=1, width=4, latent_dim=8, random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     loaded = load(save(dim, f"{folder}/dim.safetensors"), device="cpu")
    >>> loaded.device, loaded.n_iter_, loaded.transform(X).shape
    ('cpu', 1, (40, 8))
    """
    path = Path(path)
    header = read_header(path)  # the tensors are read once the metadata says what this is
    metadata = header.metadata
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
    tensors = read_tensors(path, header)
    description = metadata.get("dimlearn")
    if version == 1 and "sha256" in metadata:
        # dimlearn 0.2 never wrote this field: a newer file whose label was changed, which
        # would otherwise leave its description out of what the checksum covers
        raise ModelFileError(
            f"{path} is labelled model format 1 (dimlearn 0.2), but carries the checksum "
            "of a newer format: its format label was edited. Save or copy the model again."
        )
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
        payload = parse_json(description)
    except (TypeError, ValueError) as error:
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
    if version == 1 and not str(_get(payload, "versions", "dimlearn")).startswith("0.2."):
        raise ModelFileError(
            f"{path} is labelled model format 1, which only dimlearn 0.2 wrote, but says it "
            f"was written by dimlearn {_get(payload, 'versions', 'dimlearn')!r}: its format "
            "label was edited. Save or copy the model again."
        )
    try:
        estimator = _rebuild(payload, tensors, version)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from None
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        OverflowError,
        RuntimeError,  # PyTorch's, for sizes too large to build even on the meta device
    ) as error:
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise ModelFileError(
            f"{path}: the model description does not make sense ({problem}). It was edited or "
            "damaged; save the model again."
        ) from None
    if device is not None:
        estimator.set_params(device=device)
    if version == 1:
        upgrades.warn_unprotected_description(path)
    return estimator


# -- writing ----------------------------------------------------------------------------


def _params(estimator) -> dict:
    """The estimator's parameters as JSON, or a :class:`ModelFileError` for one that a file
    cannot rebuild (Python code of the user's)."""
    params = estimator.get_params(deep=False)
    if params["encoder"] != "auto":
        raise ModelFileError(
            f"encoder={params['encoder']!r} is a network of your own, which dimlearn cannot "
            "rebuild from a model file. Use joblib or skops to store this model (skops: pass "
            "the encoder's class among trusted when loading), or encoder='auto'."
        )
    for name in ("augmentation", "callbacks"):
        if params[name] is not None and params[name] != []:
            raise ModelFileError(
                f"{name}={params[name]!r} is Python code, which a model file cannot hold. It "
                f"acts in training only: set_params({name}=None) before saving (the fitted "
                "networks stay as they are), or use joblib or skops."
            )
    optimizer = params["optimizer"]
    if not isinstance(optimizer, str):
        if optimizer_name(optimizer) not in OPTIMIZERS:
            raise ModelFileError(
                f"optimizer={optimizer!r} is not one of dimlearn's ({', '.join(OPTIMIZERS)}), "
                "so a model file cannot name it. Use joblib or skops to store this model."
            )
        params["optimizer"] = optimizer_name(optimizer)
    for name, value in routed(params).items():
        params[name] = _json_option(name, value)
    if not (params["random_state"] is None or isinstance(params["random_state"], int)):
        params["random_state"] = None  # a RandomState instance: its stream is the fitted one
    params["device"] = str(params["device"])
    if params["image_shape"] is not None:
        params["image_shape"] = [int(s) for s in params["image_shape"]]
    return params


def _json_option(name: str, value):
    """A keyword routed to the optimiser as JSON: a number, a string, a bool, None, or a
    tuple or list of those (a list in the file, read back as a tuple)."""

    def plain(item) -> bool:
        return item is None or isinstance(item, bool | int | float | str)

    if plain(value):
        return value
    if isinstance(value, tuple | list) and all(plain(item) for item in value):
        return list(value)
    raise ModelFileError(
        f"{name}={value!r} is not a number, a string or a tuple of them, which is all a model "
        "file stores of the keywords routed to the optimiser. Use joblib or skops to store "
        "this model."
    )


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
    return __version__


# -- reading ----------------------------------------------------------------------------


def _get(payload, *keys):
    """``payload[k1][k2]...``, or None where a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


PAYLOAD_FIELDS = frozenset(
    {
        "estimator",
        "versions",
        "params",
        "fitted",
        "history",
        "training_state",
        "random_state_",
        "optimizer_name",
    }
)
"""The fields of a model file's description (JSON); any other is refused."""


def _rebuild(payload: dict, tensors: dict, version: int) -> DeepInfomaxTransformer:
    """A fitted estimator from a file's JSON and tensors, through the one way back
    (:func:`dimlearn.fitted.restore`), every field checked."""
    unknown = sorted(
        set(payload) - PAYLOAD_FIELDS - ({"weights_sha256"} if version == 1 else set())
    )
    if unknown:
        raise ModelFileError(f"unknown fields {unknown} in its description")
    if payload["estimator"] != DeepInfomaxTransformer.__name__:
        raise ModelFileError(f"it holds a {payload['estimator']!r}, not a DeepInfomaxTransformer")
    written_by = (0, 2) if version == 1 else upgrades.version_of(payload["versions"]["dimlearn"])
    params = dict(payload["params"])
    if params.get("image_shape") is not None:  # JSON holds the tuple as a list
        params["image_shape"] = tuple(params["image_shape"])
    for name, value in routed(params).items():  # JSON has lists where tuples were
        params[name] = tuple(_json_option(name, value)) if isinstance(value, list) else value
    if params.get("callbacks") not in (None, []):  # save writes none: JSON is no callback
        raise ModelFileError(f"it holds callbacks, {params['callbacks']!r}, which files never do")
    plain = {"fitted": payload["fitted"], "history": payload["history"], "weights": {}}
    optimizer: dict = {}
    for key, value in tensors.items():
        kind, _, name = key.partition(".")
        if kind == "module":
            plain["weights"][name] = value
        elif kind == "optimizer":
            weight, _, field = name.rpartition(".")
            optimizer.setdefault(weight, {})[field] = value
        else:
            raise ModelFileError(f"it holds a tensor {key!r} of no known kind")
    if payload["training_state"] is True:
        plain["optimizer"] = optimizer
        plain["random_state"] = payload["random_state_"]
        plain["optimizer_name"] = payload.get("optimizer_name", "adam")  # older files: Adam
    elif payload["training_state"] is not False or optimizer or "random_state_" in payload:
        raise ModelFileError("its training state is not what training_state says")
    estimator = DeepInfomaxTransformer.__new__(DeepInfomaxTransformer)
    restore(estimator, params, plain, written_by)
    return estimator
